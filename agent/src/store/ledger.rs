//! The store's count of its own changes, kept twice: sealed inside sled (the `state`
//! key of `meta`, written in the same transaction as every change, so it survives or
//! is lost with them) and in a sealed state file beside sled's files, brought up to
//! date after every flush, so it survives whatever happens to sled's log.
//!
//! The state file is a sequence of sealed frames, each a whole [`Ledger`]; the last
//! complete one counts. A flush appends one frame and syncs its data (one device
//! flush, ≈3 ms here, where replacing the file cost a file sync, a rename and a folder
//! sync, ≈12 ms); past [`COMPACT_AT`] bytes, and whenever the store opens, the file is
//! replaced atomically by one holding a single frame. A frame cut short at the end (a
//! crash while appending, before the flush was acknowledged) is ignored; a complete
//! frame that does not open is a damaged state file.
//!
//! When the store opens, the two are compared (`store/check.rs`): a state file that
//! counts more changes than the database holds means acknowledged writes were lost,
//! and the state file's list of its most recent changes names them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;

use super::health::{Missing, Op, Problem};
use super::{abort, Error, TxResult};
use crate::crypto::DataKey;

/// The `meta` key of the counters.
pub(super) const STATE_KEY: &[u8] = b"state";
const STATE_AAD: &[u8] = b"latchkey/state/v1\0";
/// The state file, in the store folder.
pub const STATE_FILE: &str = "latchkey.state";
const STATE_FILE_TMP: &str = "latchkey.state.tmp";
const STATE_FILE_AAD: &[u8] = b"latchkey/state-file/v1\0";
/// A file that is one sealed ledger (written before frames).
const STATE_FILE_MAGIC_V1: &[u8] = b"LKSTATE1";
/// A file of frames: `u32` big-endian length, then that many sealed bytes.
const STATE_FILE_MAGIC: &[u8] = b"LKSTATE2";
/// A state file that grew past this is replaced by one frame at the next flush.
pub(super) const COMPACT_AT: u64 = 1 << 20;
/// How many recent changes the state file names.
pub(super) const RECENT: usize = 256;
/// A state file larger than this is not one.
const MAX_STATE_FILE: u64 = 16 << 20;

/// Changes made and secrets held, as of one change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Counters {
    /// Changes committed since the store was created (or migrated).
    pub(super) generation: u64,
    /// Secrets held.
    pub(super) secrets: u64,
}

impl Counters {
    pub(super) fn seal(&self, key: &DataKey) -> Result<Vec<u8>, Error> {
        let mut plain = [0u8; 16];
        plain[..8].copy_from_slice(&self.generation.to_be_bytes());
        plain[8..].copy_from_slice(&self.secrets.to_be_bytes());
        key.seal(STATE_AAD, &plain).map_err(Error::Crypto)
    }

    /// `None` if the sealed counters do not open.
    pub(super) fn open(key: &DataKey, raw: &[u8]) -> Option<Self> {
        let plain = key.open(STATE_AAD, raw).ok()?;
        let bytes = plain.expose();
        if bytes.len() != 16 {
            return None;
        }
        Some(Counters {
            generation: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            secrets: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }

    /// Inside a transaction: counts one more change and `delta` more secrets.
    pub(super) fn bump(meta: &TransactionalTree, key: &DataKey, delta: i64) -> TxResult<Self> {
        let now = match meta.get(STATE_KEY)? {
            Some(raw) => Self::open(key, &raw).ok_or_else(|| abort(Error::CountersUnreadable))?,
            None => Self::default(),
        };
        let next = Counters {
            generation: now.generation + 1,
            secrets: now.secrets.saturating_add_signed(delta),
        };
        meta.insert(STATE_KEY, next.seal(key).map_err(abort)?)?;
        Ok(next)
    }
}

/// One committed change, as the state file names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Change {
    pub(super) generation: u64,
    pub(super) path: String,
    #[serde(flatten)]
    pub(super) op: Op,
}

/// What the state file holds (sealed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Ledger {
    /// As of the newest change committed.
    pub(super) counters: Counters,
    /// The most recent changes, oldest first, at most [`RECENT`].
    pub(super) recent: VecDeque<Change>,
    /// Problems not yet acknowledged.
    pub(super) problems: Vec<Problem>,
}

impl Ledger {
    /// Notes a committed change (commits may be noted out of order).
    pub(super) fn record(&mut self, counters: Counters, path: &str, op: Op) {
        if counters.generation > self.counters.generation {
            self.counters = counters;
        }
        let change = Change {
            generation: counters.generation,
            path: path.to_owned(),
            op,
        };
        let at = self
            .recent
            .iter()
            .rposition(|c| c.generation < change.generation)
            .map_or(0, |i| i + 1);
        self.recent.insert(at, change);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Adds a problem unless the same one is already known; whether it was new.
    pub(super) fn report(&mut self, problem: Problem) -> bool {
        if self.problems.contains(&problem) {
            return false;
        }
        self.problems.push(problem);
        true
    }

    /// The changes after `generation` that this ledger names, newest per path and
    /// operation kept, in order; and how many changes after `generation` it does not
    /// name.
    pub(super) fn after(&self, generation: u64) -> (Vec<Missing>, u64) {
        let lost: Vec<&Change> = self
            .recent
            .iter()
            .filter(|c| c.generation > generation)
            .collect();
        let total = self.counters.generation.saturating_sub(generation);
        let unnamed = total.saturating_sub(lost.len() as u64);
        let mut missing: Vec<Missing> = Vec::new();
        for change in lost {
            let m = Missing {
                path: change.path.clone(),
                op: change.op.clone(),
            };
            missing.retain(|old| old != &m);
            missing.push(m);
        }
        (missing, unnamed)
    }
}

/// Why the state file could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// It does not open or decode.
    Unreadable,
    /// It could not be read at all.
    Io(std::io::Error),
}

/// Reads the state file of the store in `dir`; `Ok(None)` if there is none.
pub(super) fn read(dir: &Path, key: &DataKey) -> Result<Option<Ledger>, ReadError> {
    let path = dir.join(STATE_FILE);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let mut raw = Vec::new();
    file.take(MAX_STATE_FILE)
        .read_to_end(&mut raw)
        .map_err(ReadError::Io)?;
    let sealed = match raw.strip_prefix(STATE_FILE_MAGIC) {
        Some(frames) => last_frame(frames).ok_or(ReadError::Unreadable)?,
        None => raw
            .strip_prefix(STATE_FILE_MAGIC_V1)
            .ok_or(ReadError::Unreadable)?,
    };
    let plain = key
        .open(STATE_FILE_AAD, sealed)
        .map_err(|_| ReadError::Unreadable)?;
    serde_json::from_slice(plain.expose())
        .map(Some)
        .map_err(|_| ReadError::Unreadable)
}

/// The last complete frame; a frame cut short at the end is not one.
fn last_frame(mut frames: &[u8]) -> Option<&[u8]> {
    let mut last = None;
    while let Some(head) = frames.get(..4) {
        let len = u32::from_be_bytes(head.try_into().ok()?) as usize;
        let Some(frame) = frames.get(4..4 + len) else {
            break;
        };
        last = Some(frame);
        frames = &frames[4 + len..];
    }
    last
}

/// One frame: the length, then the sealed ledger.
fn frame(key: &DataKey, ledger: &Ledger) -> Result<Vec<u8>, Error> {
    let plain = serde_json::to_vec(ledger)
        .map_err(|_| Error::Invalid("cannot encode the state file".into()))?;
    let sealed = key.seal(STATE_FILE_AAD, &plain).map_err(Error::Crypto)?;
    let len = u32::try_from(sealed.len())
        .map_err(|_| Error::Invalid("the state file frame is too large".into()))?;
    let mut out = Vec::with_capacity(4 + sealed.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The open state file of a running store, appended to after every flush.
#[derive(Debug)]
pub(super) struct StateFile {
    file: File,
    len: u64,
}

impl StateFile {
    /// Replaces the state file of the store in `dir` with one holding `ledger`,
    /// atomically: a new file (mode 0600, never through a link) is written and synced,
    /// renamed over the old one, and the folder is synced. The file stays open for
    /// [`StateFile::append`].
    pub(super) fn create(dir: &Path, key: &DataKey, ledger: &Ledger) -> Result<Self, Error> {
        let io = |source| Error::StateFile {
            path: dir.join(STATE_FILE),
            source,
        };
        let frame = frame(key, ledger)?;
        let tmp: PathBuf = dir.join(STATE_FILE_TMP);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(STATE_FILE_MAGIC).map_err(io)?;
        file.write_all(&frame).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(StateFile {
            file,
            len: (STATE_FILE_MAGIC.len() + frame.len()) as u64,
        })
    }

    /// Appends `ledger` as the newest frame and syncs its data. Past [`COMPACT_AT`] the
    /// file is replaced by one frame instead ([`StateFile::create`]).
    pub(super) fn append(
        &mut self,
        dir: &Path,
        key: &DataKey,
        ledger: &Ledger,
    ) -> Result<(), Error> {
        if self.len >= COMPACT_AT {
            *self = Self::create(dir, key, ledger)?;
            return Ok(());
        }
        let io = |source| Error::StateFile {
            path: dir.join(STATE_FILE),
            source,
        };
        let frame = frame(key, ledger)?;
        std::os::unix::fs::FileExt::write_all_at(&self.file, &frame, self.len).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len += frame.len() as u64;
        Ok(())
    }
}

/// Replaces the state file of the store in `dir` with `ledger` ([`StateFile::create`]),
/// for a store that is not kept open.
pub(super) fn write(dir: &Path, key: &DataKey, ledger: &Ledger) -> Result<(), Error> {
    StateFile::create(dir, key, ledger).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(generation: u64) -> Counters {
        Counters {
            generation,
            secrets: 1,
        }
    }

    #[test]
    fn ledger_keeps_the_newest_changes_in_order_and_names_what_came_after() {
        let mut ledger = Ledger::default();
        for g in 1..=(RECENT as u64 + 10) {
            ledger.record(
                counters(g),
                &format!("p{}", g % 3),
                Op::Write { version: g },
            );
        }
        // Noted out of order: still sorted.
        ledger.record(counters(RECENT as u64 + 12), "late", Op::Delete);
        ledger.record(counters(RECENT as u64 + 11), "early", Op::Delete);
        assert_eq!(ledger.recent.len(), RECENT);
        assert!(ledger
            .recent
            .iter()
            .zip(ledger.recent.iter().skip(1))
            .all(|(a, b)| a.generation < b.generation));
        assert_eq!(ledger.counters.generation, RECENT as u64 + 12);

        let (missing, unnamed) = ledger.after(RECENT as u64 + 8);
        let names: Vec<&str> = missing.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(names, ["p1", "p2", "early", "late"]);
        assert_eq!(unnamed, 0);
        let (missing, unnamed) = ledger.after(0);
        assert_eq!(unnamed, 12);
        assert!(missing.len() <= RECENT);
    }

    #[test]
    fn appended_frames_read_as_the_newest_and_a_cut_short_one_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DataKey::generate();
        let mut ledger = Ledger::default();
        ledger.record(counters(1), "apps/a", Op::Write { version: 1 });
        let mut file = StateFile::create(dir.path(), &key, &ledger).expect("create");
        ledger.record(counters(2), "apps/b", Op::Write { version: 1 });
        file.append(dir.path(), &key, &ledger).expect("append");
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger.clone()));
        let good = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("stat")
            .len();

        // A crash while appending leaves part of a frame: the last complete one counts.
        let mut newer = ledger.clone();
        newer.record(counters(3), "apps/c", Op::Delete);
        file.append(dir.path(), &key, &newer).expect("append");
        let state = dir.path().join(STATE_FILE);
        let raw = std::fs::read(&state).expect("raw");
        std::fs::write(&state, &raw[..raw.len() - 5]).expect("cut");
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger.clone()));
        std::fs::write(&state, &raw[..good as usize + 2]).expect("cut");
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger.clone()));
        // A file written before frames still reads.
        let plain = serde_json::to_vec(&ledger).expect("json");
        let mut v1 = STATE_FILE_MAGIC_V1.to_vec();
        v1.extend(key.seal(STATE_FILE_AAD, &plain).expect("seal"));
        std::fs::write(&state, v1).expect("v1");
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger));
    }

    #[test]
    fn a_state_file_past_its_limit_is_compacted_to_one_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DataKey::generate();
        let mut ledger = Ledger::default();
        let mut file = StateFile::create(dir.path(), &key, &ledger).expect("create");
        let mut g = 0;
        while file.len < COMPACT_AT {
            g += 1;
            ledger.record(counters(g), &format!("apps/{g}"), Op::Write { version: g });
            file.append(dir.path(), &key, &ledger).expect("append");
        }
        g += 1;
        ledger.record(counters(g), "apps/last", Op::Delete);
        file.append(dir.path(), &key, &ledger).expect("compact");
        let len = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("stat")
            .len();
        assert!(len < COMPACT_AT / 4, "one frame left, {len} bytes");
        assert_eq!(file.len, len);
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger));
    }

    #[test]
    fn state_file_round_trips_and_refuses_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DataKey::generate();
        assert!(matches!(read(dir.path(), &key), Ok(None)));
        let mut ledger = Ledger::default();
        ledger.record(counters(1), "apps/a", Op::Write { version: 1 });
        ledger.report(Problem::CountersUnreadable);
        assert!(!ledger.report(Problem::CountersUnreadable));
        write(dir.path(), &key, &ledger).expect("write");
        write(dir.path(), &key, &ledger).expect("replace");
        assert_eq!(read(dir.path(), &key).expect("read"), Some(ledger));
        let file = dir.path().join(STATE_FILE);
        let raw = std::fs::read(&file).expect("raw");
        assert!(!raw.windows(6).any(|w| w == b"apps/a"), "sealed");
        let mut bad = raw.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&file, bad).expect("tamper");
        assert!(matches!(read(dir.path(), &key), Err(ReadError::Unreadable)));
        assert!(matches!(
            read(dir.path(), &DataKey::generate()),
            Err(ReadError::Unreadable)
        ));
    }
}
