//! Format 1 (every version before format 2) to format 2, once, when a store opens.
//!
//! Format 1 keyed `index` and `journal` by the path in clear and `records` by path,
//! `0x00`, version, with associated data `latchkey/{index,record,journal}/v1\0` plus
//! that key. Each secret is moved in one transaction: its entry gets its path and a
//! fresh epoch and goes under the path's tag; each record is opened and sealed again
//! for its new place; the old keys are removed. A crash part-way leaves every secret
//! either moved or not, and the next open goes on. What does not open under format 1
//! (damaged before the move) is kept, unopened, in the `quarantine` tree, so nothing
//! is lost and no path stays in clear in the trees the store reads; each such item is
//! reported as a problem of the store.

use std::path::Path;

use sled::Transactional;

use super::health::Problem;
use super::layout::Layout;
use super::ledger::{self, Counters, Ledger, STATE_KEY};
use super::record::IndexEntry;
use super::{seal_index, Error, Trees};
use crate::crypto::DataKey;
use crate::path::SecretPath;

const V1_INDEX_AAD: &[u8] = b"latchkey/index/v1\0";
const V1_RECORD_AAD: &[u8] = b"latchkey/record/v1\0";
const V1_JOURNAL_AAD: &[u8] = b"latchkey/journal/v1\0";
/// Where items that did not open under format 1 are kept.
pub(super) const QUARANTINE_TREE: &str = "quarantine";

/// Moves every format-1 item to its format-2 place, then sets the counters and
/// writes the state file. The caller records the format once this returns.
pub(super) fn to_format_2(
    trees: &Trees<'_>,
    key: &DataKey,
    layout: &Layout,
    dir: &Path,
) -> Result<(), Error> {
    let quarantine = trees.db.open_tree(QUARANTINE_TREE)?;
    let mut problems = Vec::new();
    let mut moved = 0usize;

    for item in trees.index.iter() {
        let (old_key, raw) = item?;
        let Some(path) = v1_path(&old_key) else {
            continue; // already format 2
        };
        let entry = key
            .open(&[V1_INDEX_AAD, &old_key[..]].concat(), &raw)
            .ok()
            .and_then(|plain| IndexEntry::decode(plain.expose()));
        let Some(mut entry) = entry else {
            set_aside(&quarantine, trees.index, b"index\0", &old_key, &raw)?;
            problems.push(quarantined(&path, "its index entry"));
            continue;
        };
        entry.path = path.as_str().to_owned();
        entry.epoch = rand::random();
        let tag = layout.tag(&path);
        (trees.index, trees.records, &quarantine).transaction(|(index, records, q)| {
            for meta in &entry.versions {
                let old = v1_record_key(&path, meta.version);
                let Some(sealed) = records.get(&old)? else {
                    continue;
                };
                let opened = key.open(&[V1_RECORD_AAD, &old[..]].concat(), &sealed);
                match opened {
                    Ok(plain) => {
                        let resealed = key
                            .seal(&tag.record_aad(meta.version, entry.epoch), plain.expose())
                            .map_err(|e| super::abort(Error::Crypto(e)))?;
                        records.insert(&tag.record_key(meta.version)[..], resealed)?;
                    }
                    Err(_) => {
                        q.insert([b"record\0".as_slice(), &old].concat(), sealed)?;
                    }
                }
                records.remove(old)?;
            }
            let sealed = seal_index(key, &tag, &entry).map_err(super::abort)?;
            index.insert(tag.key(), sealed)?;
            index.remove(old_key.clone())?;
            Ok(())
        })?;
        moved += 1;
    }

    // Records no entry names (left by a damaged entry): quarantined, not dropped.
    for item in trees.records.iter() {
        let (old_key, sealed) = item?;
        let Some((path, _)) = v1_record_parts(&old_key) else {
            continue;
        };
        set_aside(&quarantine, trees.records, b"record\0", &old_key, &sealed)?;
        problems.push(quarantined(&path, "a record"));
    }

    for item in trees.journal.iter() {
        let (old_key, raw) = item?;
        let Some(path) = v1_path(&old_key) else {
            continue;
        };
        let tag = layout.tag(&path);
        let blob = key.open(&[V1_JOURNAL_AAD, &old_key[..]].concat(), &raw);
        (trees.journal, &quarantine).transaction(|(journal, q)| {
            match &blob {
                Ok(blob) => {
                    let name = path.as_str().as_bytes();
                    let len = u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes();
                    let plain = zeroize::Zeroizing::new([&len[..], name, blob.expose()].concat());
                    let sealed = key
                        .seal(&tag.journal_aad(), &plain)
                        .map_err(|e| super::abort(Error::Crypto(e)))?;
                    journal.insert(tag.key(), sealed)?;
                }
                Err(_) => {
                    q.insert([b"journal\0".as_slice(), &old_key].concat(), raw.clone())?;
                }
            }
            journal.remove(old_key.clone())?;
            Ok(())
        })?;
        if blob.is_err() {
            problems.push(quarantined(&path, "its journal entry"));
        }
    }

    let counters = Counters {
        generation: 0,
        secrets: trees.index.len() as u64,
    };
    trees.meta.insert(STATE_KEY, counters.seal(key)?)?;
    trees.db.flush()?;
    let mut ledger = Ledger {
        counters,
        ..Ledger::default()
    };
    for problem in problems {
        tracing::error!(store = %dir.display(), problem = %problem, "store damaged");
        ledger.report(problem);
    }
    ledger::write(dir, key, &ledger)?;
    tracing::info!(store = %dir.display(), secrets = moved, "store moved to format 2: no path is kept in clear");
    Ok(())
}

/// Moves one item from `tree` into the quarantine, under `kind` and its old key.
fn set_aside(
    quarantine: &sled::Tree,
    tree: &sled::Tree,
    kind: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(), Error> {
    (quarantine, tree).transaction(|(q, tree)| {
        q.insert([kind, key].concat(), value)?;
        tree.remove(key)?;
        Ok(())
    })?;
    Ok(())
}

fn quarantined(path: &SecretPath, what: &str) -> Problem {
    Problem::Unreadable {
        path: Some(path.as_str().to_owned()),
        detail: format!(
            "{what} failed its integrity check before the move to format 2; kept unopened in the {QUARANTINE_TREE} tree"
        ),
    }
}

/// The path a format-1 `index` or `journal` key names.
fn v1_path(key: &[u8]) -> Option<SecretPath> {
    SecretPath::parse(std::str::from_utf8(key).ok()?).ok()
}

fn v1_record_key(path: &SecretPath, version: u64) -> Vec<u8> {
    [path.as_str().as_bytes(), &[0], &version.to_be_bytes()].concat()
}

/// The path and version a format-1 `records` key names.
fn v1_record_parts(key: &[u8]) -> Option<(SecretPath, u64)> {
    let split = key.len().checked_sub(9).filter(|&i| key[i] == 0)?;
    let path = v1_path(&key[..split])?;
    let version = u64::from_be_bytes(key[split + 1..].try_into().ok()?);
    Some((path, version))
}

#[cfg(test)]
pub(super) mod tests;
