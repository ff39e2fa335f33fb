//! Where a rotation is claimed and its progress recorded, so that it happens once
//! across every agent sharing an upstream, and can be finished or rolled back after a
//! crash.
//!
//! Each secret under a rotation policy has one coordination record at
//! `{ledger_prefix}/{path}` in the upstream (the embedded store when no other is
//! configured). It is an ordinary secret whose fields hold the [`Entry`]: the step
//! reached, the owner and its lease, the version being rotated, and — between the
//! steps that need them — the pending and previous credentials. Every change is a
//! check-and-set write on the record's version: two agents claiming the same rotation
//! both read version `v`, both write with `cas = v`, and the upstream accepts exactly
//! one. A winner that crashes stops renewing its lease; once the lease lapses another
//! agent (or the same one, restarted) may take the record over.
//!
//! The record holds credentials while a rotation is in flight, so it lives in the same
//! store, with the same protection, as the secret itself.

use std::sync::Arc;

use latchkey_plugin_host::Seed;

use crate::path::SecretPath;
use crate::providers::Credential;
use crate::secret::{Fields, SecretString};
use crate::store;
use crate::upstream;

/// How far a rotation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing in flight. `rotated_at` says when the last rotation finished.
    Idle,
    /// Claimed: the provider is creating the pending credential (step 1).
    Claimed,
    /// The pending credential is recorded here (step 2); it is being tested (step 3)
    /// or promoted (step 4).
    Published,
    /// Promoted; the previous credential stays valid until `retire_at`.
    Grace,
    /// The previous credential is being retired at the service.
    Retiring,
    /// The last attempt failed and was rolled back; retried at `next_attempt_at`, or
    /// not on schedule at all when `stopped`.
    Failed,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::Claimed => "claimed",
            Step::Published => "published",
            Step::Grace => "grace",
            Step::Retiring => "retiring",
            Step::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Step> {
        Some(match text {
            "idle" => Step::Idle,
            "claimed" => Step::Claimed,
            "published" => Step::Published,
            "grace" => Step::Grace,
            "retiring" => Step::Retiring,
            "failed" => Step::Failed,
            _ => return None,
        })
    }

    /// Whether an owner is working on it (and its lease matters).
    pub fn in_flight(self) -> bool {
        matches!(self, Step::Claimed | Step::Published | Step::Retiring)
    }
}

/// One coordination record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The step reached.
    pub step: Step,
    /// The node working on it (or that last did).
    pub owner: String,
    /// Until when the owner's claim holds (unix seconds).
    pub lease_until: i64,
    /// The version of the secret being rotated (the check-and-set base of step 4).
    pub base_version: u64,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When the last rotation was promoted (unix seconds).
    pub rotated_at: Option<i64>,
    /// When the previous credential is to be retired.
    pub retire_at: Option<i64>,
    /// When a failed rotation may be tried again.
    pub next_attempt_at: Option<i64>,
    /// Why the last attempt failed (no values).
    pub detail: String,
    /// The last attempt failed in a way retrying cannot help (the provider's
    /// `rejected`, `denied`, `unsupported`, `invalid-config`): no agent tries again on
    /// schedule until the secret changes or an operator rotates it.
    pub stopped: bool,
    /// The randomness step 1 draws from, from the claim until step 1's result is
    /// recorded: an interrupted step 1 is run again with it, so a provider that
    /// changed a password in place makes the same password again (see
    /// [`latchkey_plugin_host::Seed`]).
    pub seed: Option<Seed>,
    /// The pending credential (steps 2–4).
    pub pending: Option<Credential>,
    /// The number of the pending version step 2 staged upstream, where the upstream
    /// has stages of its own (AWS's `AWSPENDING`); step 4 promotes that version.
    pub staged: Option<u64>,
    /// The previous credential (grace and retiring).
    pub previous: Option<Credential>,
}

impl Entry {
    /// A fresh claim by `owner`.
    pub fn claim(owner: &str, lease_until: i64, base_version: u64, before: Option<&Entry>) -> Self {
        Entry {
            step: Step::Claimed,
            owner: owner.to_owned(),
            lease_until,
            base_version,
            attempts: before.map_or(0, |b| b.attempts),
            rotated_at: before.and_then(|b| b.rotated_at),
            retire_at: None,
            next_attempt_at: None,
            detail: String::new(),
            stopped: false,
            seed: Some(Seed::from_bytes(rand::random())),
            pending: None,
            staged: None,
            previous: None,
        }
    }

    /// Whether someone other than `node` holds a live claim at `now`.
    pub fn held_by_other(&self, node: &str, now: i64) -> bool {
        self.step.in_flight() && self.owner != node && self.lease_until > now
    }

    /// The record as secret fields.
    pub fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        let mut put = |k: &str, v: String| f.insert(k, SecretString::new(v));
        put("step", self.step.as_str().to_owned());
        put("owner", self.owner.clone());
        put("lease_until", self.lease_until.to_string());
        put("base_version", self.base_version.to_string());
        put("attempts", self.attempts.to_string());
        if let Some(t) = self.rotated_at {
            put("rotated_at", t.to_string());
        }
        if let Some(t) = self.retire_at {
            put("retire_at", t.to_string());
        }
        if let Some(t) = self.next_attempt_at {
            put("next_attempt_at", t.to_string());
        }
        if !self.detail.is_empty() {
            put("detail", self.detail.clone());
        }
        if self.stopped {
            put("stopped", "true".to_owned());
        }
        if let Some(v) = self.staged {
            put("staged", v.to_string());
        }
        if let Some(seed) = &self.seed {
            put("seed", hex::encode(seed.expose()));
        }
        for (prefix, cred) in [("pending", &self.pending), ("previous", &self.previous)] {
            if let Some(c) = cred {
                put(&format!("{prefix}.kind"), c.kind.clone());
                if let Some(t) = c.expires_at {
                    put(&format!("{prefix}.expires_at"), t.to_string());
                }
                for (name, value) in c.fields.iter() {
                    put(&format!("{prefix}.field.{name}"), value.expose().to_owned());
                }
            }
        }
        f
    }

    /// Reads a record back; `None` if it is not one (a hand-written secret in the way).
    pub fn from_fields(f: &Fields) -> Option<Entry> {
        let text = |k: &str| f.get(k).map(|v| v.expose().to_owned());
        let num = |k: &str| text(k).and_then(|v| v.parse::<i64>().ok());
        let cred = |prefix: &str| -> Option<Credential> {
            let kind = text(&format!("{prefix}.kind"))?;
            let field_prefix = format!("{prefix}.field.");
            let fields: Fields = f
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(&field_prefix)
                        .map(|name| (name.to_owned(), v.clone()))
                })
                .collect();
            Some(Credential {
                kind,
                fields,
                expires_at: num(&format!("{prefix}.expires_at")),
            })
        };
        Some(Entry {
            step: Step::parse(&text("step")?)?,
            owner: text("owner")?,
            lease_until: num("lease_until")?,
            base_version: text("base_version")?.parse().ok()?,
            attempts: text("attempts")?.parse().ok()?,
            rotated_at: num("rotated_at"),
            retire_at: num("retire_at"),
            next_attempt_at: num("next_attempt_at"),
            detail: text("detail").unwrap_or_default(),
            stopped: text("stopped").is_some_and(|v| v == "true"),
            seed: f.get("seed").and_then(|v| {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(v.expose(), bytes.as_mut_slice()).ok()?;
                Some(Seed::from_bytes(*bytes))
            }),
            pending: cred("pending"),
            staged: text("staged").and_then(|v| v.parse().ok()),
            previous: cred("previous"),
        })
    }

    /// The record as a sealed-journal blob (JSON of the fields).
    pub fn to_blob(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let fields = self.to_fields();
        zeroize::Zeroizing::new(serde_json::to_vec(&fields.exposed()).unwrap_or_default())
    }

    /// Reads a journal blob back.
    pub fn from_blob(blob: &[u8]) -> Option<Entry> {
        let map: std::collections::BTreeMap<String, SecretString> =
            serde_json::from_slice(blob).ok()?;
        Entry::from_fields(&map.into_iter().collect())
    }
}

/// Why a ledger call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another writer changed the record first.
    #[error("the coordination record of {0} changed underneath (another agent)")]
    Lost(SecretPath),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A record exists but is not a coordination record.
    #[error("{0} holds something that is not a coordination record")]
    Foreign(SecretPath),
}

/// The records' home: the upstream (the embedded store when there is no other).
///
/// Records are written with the upstream's own check-and-set, not through the sync's
/// commit: they coordinate agents and are not served to apps, so they raise no event
/// and, with a remote upstream, are not copied into the store.
#[derive(Clone)]
pub struct Ledger {
    sync: Arc<crate::sync::Syncer>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ledger({})", self.sync.upstream_name())
    }
}

impl Ledger {
    /// The records kept in the upstream of `sync` (the client in force at each call).
    pub fn new(sync: Arc<crate::sync::Syncer>) -> Self {
        Ledger { sync }
    }

    /// The record and its version (for the next check-and-set), if any.
    pub async fn read(&self, key: &SecretPath) -> Result<Option<(u64, Entry)>, Error> {
        let found = self
            .sync
            .upstream()
            .read(key)
            .await?
            .map(|r| (r.version, r.fields));
        match found {
            None => Ok(None),
            Some((version, fields)) => Entry::from_fields(&fields)
                .map(|e| Some((version, e)))
                .ok_or_else(|| Error::Foreign(key.clone())),
        }
    }

    /// Writes `entry` if the record is still at `cas` (0: must not exist); returns the
    /// new version once the upstream holds it durably.
    pub async fn write(&self, key: &SecretPath, entry: &Entry, cas: u64) -> Result<u64, Error> {
        let write = store::Write {
            fields: entry.to_fields(),
            kind: Some(RECORD_KIND.to_owned()),
            expires_at: None,
            cas: Some(cas),
        };
        match self.sync.upstream().put(key, &write).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_conflict() => Err(Error::Lost(key.clone())),
            Err(e) => Err(e.into()),
        }
    }
}

/// The kind a coordination record is stored with.
const RECORD_KIND: &str = "latchkey.lifecycle";

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(password: &str) -> Credential {
        Credential {
            kind: "postgres-password".into(),
            fields: [
                ("username".to_owned(), SecretString::from("app_b")),
                ("password".to_owned(), SecretString::from(password)),
            ]
            .into_iter()
            .collect(),
            expires_at: Some(1_900_000_000),
        }
    }

    #[test]
    fn entries_round_trip_through_fields_and_blobs() {
        let mut e = Entry::claim("node-a", 100, 7, None);
        e.step = Step::Published;
        e.pending = Some(cred("s3cret.with.dots"));
        e.staged = Some(1_763_850_000_123_000);
        e.previous = Some(cred("old"));
        e.rotated_at = Some(50);
        e.detail = "step 3: rejected".into();
        e.stopped = true;
        assert_eq!(Entry::from_fields(&e.to_fields()), Some(e.clone()));
        assert_eq!(Entry::from_blob(&e.to_blob()), Some(e));
    }

    #[test]
    fn a_lease_binds_others_only_while_it_lasts_and_only_in_flight() {
        let e = Entry::claim("node-a", 100, 7, None);
        assert!(e.held_by_other("node-b", 99));
        assert!(!e.held_by_other("node-b", 100));
        assert!(!e.held_by_other("node-a", 99));
        let idle = Entry {
            step: Step::Idle,
            ..e
        };
        assert!(!idle.held_by_other("node-b", 0));
    }

    #[test]
    fn a_foreign_secret_is_not_a_record() {
        let f: Fields = [("password".to_owned(), SecretString::from("x"))]
            .into_iter()
            .collect();
        assert!(Entry::from_fields(&f).is_none());
    }
}
