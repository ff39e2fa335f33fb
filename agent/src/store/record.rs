//! What the store keeps per secret, before sealing: the index entry and the record.
//!
//! The index entry (serde JSON, one per path) lists the versions kept, the labels and
//! the per-version metadata that `list` needs, so listing never touches a value. The
//! record (one per version) holds the fields and is encoded by hand into a buffer of
//! exactly the right size, so no partial copy of a value is left behind in freed memory
//! by a growing `Vec`. Both are sealed by `store` with `crypto`; nothing here does I/O.

use std::collections::BTreeMap;

use zeroize::{Zeroize, Zeroizing};

use super::Selector;
use crate::secret::{Fields, SecretString};

/// The label that always points at the version `get(Current)` returns.
pub(super) const LABEL_CURRENT: &str = "current";
/// The label `put` moves to the version that was current before it.
pub(super) const LABEL_PREVIOUS: &str = "previous";

/// Versions, labels and metadata of one secret; the value of the `index` tree.
///
/// `path` and `epoch` are absent from entries written before format 2 (they were
/// implied by the key); the migration fills them in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IndexEntry {
    /// The secret's path: the `index` key is only a tag of it.
    #[serde(default)]
    pub(super) path: String,
    /// Drawn at random when the entry is created, bound into every record's associated
    /// data: a record sealed before a delete does not open after the path is reused.
    #[serde(default)]
    pub(super) epoch: u64,
    /// Versions kept, ascending by number.
    pub(super) versions: Vec<VersionMeta>,
    /// Label name -> version; always holds [`LABEL_CURRENT`].
    pub(super) labels: BTreeMap<String, u64>,
    /// The number the next `put` gets.
    pub(super) next_version: u64,
    /// When the secret's first version was written (unix seconds).
    pub(super) created_at: i64,
    /// The upstream deleted the secret's current version (a KV v2 soft delete or
    /// destroy) while older versions remain: the current version is not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) deleted: Option<Deletion>,
}

/// A current version the upstream deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deletion {
    /// The upstream's version number that was current and is deleted.
    pub version: u64,
    /// Destroyed (its data gone for good), not only deleted (which can be undone).
    pub destroyed: bool,
}

/// What the index knows about one version without opening its record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionMeta {
    pub(super) version: u64,
    pub(super) kind: String,
    pub(super) updated_at: i64,
    pub(super) expires_at: Option<i64>,
}

impl IndexEntry {
    /// The entry of a secret that has no version yet, with a fresh epoch.
    pub(super) fn new(path: &str, created_at: i64) -> Self {
        Self {
            path: path.to_owned(),
            epoch: rand::random(),
            versions: Vec::new(),
            labels: BTreeMap::new(),
            next_version: 1,
            created_at,
            deleted: None,
        }
    }

    /// Parses an opened index entry; `None` if it is malformed or breaks an invariant.
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let entry: Self = serde_json::from_slice(bytes).ok()?;
        entry.is_consistent().then_some(entry)
    }

    /// JSON bytes for sealing.
    pub(super) fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn is_consistent(&self) -> bool {
        let ascending = self
            .versions
            .windows(2)
            .all(|w| w[0].version < w[1].version);
        let below_next = self
            .versions
            .last()
            .is_some_and(|m| m.version < self.next_version);
        let labels_kept = self.labels.values().all(|v| self.meta(*v).is_some());
        ascending && below_next && labels_kept && self.labels.contains_key(LABEL_CURRENT)
    }

    /// The current version (0 only for an entry that has no version yet).
    pub(super) fn current(&self) -> u64 {
        self.labels.get(LABEL_CURRENT).copied().unwrap_or(0)
    }

    /// Metadata of a kept version.
    pub(super) fn meta(&self, version: u64) -> Option<&VersionMeta> {
        self.versions
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.versions[i])
    }

    /// Which kept version a selector names, if any. While the current version is
    /// deleted upstream ([`IndexEntry::deleted`]), `current` names none, and neither
    /// does anything naming the deleted version.
    pub(super) fn resolve(&self, sel: &Selector) -> Option<u64> {
        let deleted = self.deleted.map(|d| d.version);
        let version = match sel {
            Selector::Current if deleted.is_some() => return None,
            Selector::Current => self.labels.get(LABEL_CURRENT).copied(),
            Selector::Version(v) => self.meta(*v).map(|m| m.version),
            Selector::Label(label) => self.labels.get(label.as_str()).copied(),
        };
        version.filter(|v| Some(*v) != deleted)
    }

    /// The labels pointing at `version`, in name order.
    pub(super) fn labels_of(&self, version: u64) -> Vec<String> {
        self.labels
            .iter()
            .filter(|(_, v)| **v == version)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Adds the next version and makes it current; the old current becomes previous.
    /// Returns the new version number.
    pub(super) fn push_version(
        &mut self,
        kind: &str,
        updated_at: i64,
        expires_at: Option<i64>,
    ) -> u64 {
        let version = self.next_version;
        self.next_version += 1;
        self.deleted = None;
        if let Some(old) = self.labels.insert(LABEL_CURRENT.to_owned(), version) {
            self.labels.insert(LABEL_PREVIOUS.to_owned(), old);
        }
        self.versions.push(VersionMeta {
            version,
            kind: kind.to_owned(),
            updated_at,
            expires_at,
        });
        version
    }

    /// Drops versions beyond the newest `max` unless a label points at them; returns
    /// the dropped version numbers so their records can be removed.
    pub(super) fn prune(&mut self, max: usize) -> Vec<u64> {
        let keep_from = self.versions.len().saturating_sub(max);
        let mut dropped = Vec::new();
        let mut i = 0;
        self.versions.retain(|m| {
            let keep = i >= keep_from || self.labels.values().any(|v| *v == m.version);
            i += 1;
            if !keep {
                dropped.push(m.version);
            }
            keep
        });
        dropped
    }
}

/// One version as stored, after opening.
pub(super) struct Record {
    pub(super) kind: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) fields: Fields,
}

/// Layout of a record whose fields are all strings (what every earlier version wrote).
const RECORD_V1: u8 = 1;
/// Layout with a type byte per field: written when a field holds another JSON value.
const RECORD_V2: u8 = 2;

/// A field's type byte in [`RECORD_V2`].
const FIELD_STRING: u8 = 0;
const FIELD_JSON: u8 = 1;

/// Encodes a record plaintext:
///
/// ```text
/// u8 layout (1 or 2) | u8 kind len | kind | i64 created_at | i64 updated_at
/// | u8 has_expiry | [i64 expires_at] | u32 field count
/// | per field: u16 name len | name | [u8 type: 0 string, 1 JSON (layout 2 only)]
///              | u32 value len | value                          (integers big-endian)
/// ```
///
/// Layout 1 when every field is a string, so a record of strings reads the same in
/// every version of the agent; layout 2 otherwise. `None` if a length does not fit
/// its prefix; `store` validates sizes first.
pub(super) fn encode_record(
    kind: &str,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    fields: &Fields,
) -> Option<Zeroizing<Vec<u8>>> {
    let typed = !fields.all_strings();
    let mut len = 1 + 1 + kind.len() + 8 + 8 + 1 + 4;
    if expires_at.is_some() {
        len += 8;
    }
    for (name, value) in fields.iter() {
        len += 2 + name.len() + usize::from(typed) + 4 + value.len();
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(if typed { RECORD_V2 } else { RECORD_V1 });
    out.push(u8::try_from(kind.len()).ok()?);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(&created_at.to_be_bytes());
    out.extend_from_slice(&updated_at.to_be_bytes());
    match expires_at {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_be_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&u32::try_from(fields.len()).ok()?.to_be_bytes());
    for (name, value) in fields.iter() {
        out.extend_from_slice(&u16::try_from(name.len()).ok()?.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        if typed {
            out.push(if fields.is_json(name) {
                FIELD_JSON
            } else {
                FIELD_STRING
            });
        }
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_be_bytes());
        out.extend_from_slice(value.expose().as_bytes());
    }
    debug_assert_eq!(out.len(), len);
    Some(out)
}

/// Decodes a record plaintext; `None` on any malformed byte, never a panic.
pub(super) fn decode_record(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader(bytes);
    let typed = match r.u8()? {
        RECORD_V1 => false,
        RECORD_V2 => true,
        _ => return None,
    };
    let kind_len = usize::from(r.u8()?);
    let kind = std::str::from_utf8(r.take(kind_len)?).ok()?.to_owned();
    let created_at = r.i64()?;
    let updated_at = r.i64()?;
    let expires_at = match r.u8()? {
        0 => None,
        1 => Some(r.i64()?),
        _ => return None,
    };
    let count = r.u32()?;
    let mut fields = Fields::new();
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = std::str::from_utf8(r.take(name_len)?).ok()?.to_owned();
        let json = match typed.then(|| r.u8()).flatten() {
            None if typed => return None,
            None | Some(FIELD_STRING) => false,
            Some(FIELD_JSON) => true,
            Some(_) => return None,
        };
        let value_len = usize::try_from(r.u32()?).ok()?;
        let raw = r.take(value_len)?;
        let mut value = Vec::with_capacity(raw.len());
        value.extend_from_slice(raw);
        let value = match String::from_utf8(value) {
            Ok(value) => value,
            Err(e) => {
                e.into_bytes().zeroize();
                return None;
            }
        };
        let value = SecretString::new(value);
        if json {
            fields.insert_json(name, value).ok()?;
        } else {
            fields.insert(name, value);
        }
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Record {
        kind,
        created_at,
        updated_at,
        expires_at,
        fields,
    })
}

/// A bounds-checked cursor over a record plaintext.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        let mut f = Fields::new();
        f.insert("password", SecretString::from("hunter2-\u{e9}\"\\"));
        f.insert("username", SecretString::from("app"));
        f
    }

    #[test]
    fn record_round_trips_exactly_sized() {
        let plain = encode_record("db.postgres", 10, 20, Some(30), &fields()).expect("encodes");
        assert_eq!(plain.len(), plain.capacity());
        let rec = decode_record(&plain).expect("decodes");
        assert_eq!(rec.kind, "db.postgres");
        assert_eq!(
            (rec.created_at, rec.updated_at, rec.expires_at),
            (10, 20, Some(30))
        );
        assert_eq!(rec.fields, fields());
        let no_expiry = encode_record("generic", 1, 2, None, &fields()).expect("encodes");
        assert_eq!(decode_record(&no_expiry).expect("decodes").expires_at, None);
    }

    #[test]
    fn typed_fields_use_layout_2_and_strings_stay_on_layout_1() {
        let strings = encode_record("generic", 1, 2, None, &fields()).expect("encodes");
        assert_eq!(strings[0], RECORD_V1);
        let mut typed = fields();
        typed
            .insert_json("port", SecretString::from("5432"))
            .expect("json");
        typed
            .insert_json("nested", SecretString::from(r#"{"a":[1,null,true]}"#))
            .expect("json");
        let plain = encode_record("generic", 1, 2, None, &typed).expect("encodes");
        assert_eq!(plain[0], RECORD_V2);
        assert_eq!(plain.len(), plain.capacity());
        let rec = decode_record(&plain).expect("decodes");
        assert_eq!(rec.fields, typed);
        assert!(rec.fields.is_json("port") && !rec.fields.is_json("password"));
        for len in 0..plain.len() {
            assert!(decode_record(&plain[..len]).is_none(), "truncated to {len}");
        }
    }

    #[test]
    fn malformed_records_decode_to_none() {
        let plain = encode_record("generic", 1, 2, Some(3), &fields()).expect("encodes");
        for len in 0..plain.len() {
            assert!(decode_record(&plain[..len]).is_none(), "truncated to {len}");
        }
        let mut extra = plain.to_vec();
        extra.push(0);
        assert!(decode_record(&extra).is_none());
        let mut version = plain.to_vec();
        version[0] = 9;
        assert!(decode_record(&version).is_none());
        let huge_count = [
            1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(decode_record(&huge_count).is_none());
    }

    #[test]
    fn push_moves_current_to_previous_and_prune_keeps_labelled() {
        let mut e = IndexEntry::new("a", 5);
        for _ in 0..4 {
            e.push_version("generic", 1, None);
        }
        assert_eq!(e.current(), 4);
        assert_eq!(e.resolve(&Selector::Label("previous".into())), Some(3));
        e.labels.insert("pending".into(), 1);
        assert_eq!(e.prune(2), vec![2]);
        let kept: Vec<u64> = e.versions.iter().map(|m| m.version).collect();
        assert_eq!(kept, vec![1, 3, 4]);
        assert_eq!(e.labels_of(4), vec!["current".to_owned()]);
        assert_eq!(e.next_version, 5);
    }

    #[test]
    fn index_entry_round_trips_and_rejects_inconsistency() {
        let mut e = IndexEntry::new("a", 5);
        e.push_version("generic", 1, Some(9));
        let bytes = e.encode().expect("encodes");
        assert_eq!(IndexEntry::decode(&bytes), Some(e.clone()));
        let mut dangling = e.clone();
        dangling.labels.insert("pending".into(), 7);
        assert!(IndexEntry::decode(&dangling.encode().expect("encodes")).is_none());
        assert!(IndexEntry::decode(b"{not json").is_none());
        assert!(IndexEntry::decode(&IndexEntry::new("a", 1).encode().expect("encodes")).is_none());
    }
}
