//! Successful reads, every one accounted for without one line per request.
//!
//! Under `audit.reads = true` (or `"aggregate"`, the default) a read is written as a
//! record of its own when it is the first read of that version of that path by that
//! identity (and uid) that the trail knows of; the repeats after it are counted per
//! (identity, uid, path, version) and written as one record per window
//! (`audit.read_window`, default 1s) carrying `count` and the time of the first
//! (`time_ms`) and last (`last_ms`) read it stands for. Listings are tallied the same
//! way per prefix.
//!
//! What an auditor can reconstruct: who read which version of which path, when each
//! identity first read each version, and how many reads each made in each window,
//! with the window's first and last time. What not: the exact time of each repeat
//! within a window, or the order of repeats of different paths within one window.
//! `audit.reads = "each"` writes every read as its own record.
//!
//! Memory is bounded: past [`MAX_HELD`] counted keys the tally writes everything it
//! holds at once, and past [`MAX_SEEN`] remembered (identity, uid, path) keys it
//! forgets them all, so the next read of each is written on its own again: bounds
//! only ever add records, never lose a read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Record;

/// Counted keys held at once before the tally writes all it holds.
const MAX_HELD: usize = 16 * 1024;
/// (identity, uid, path) pairs whose last individually recorded version is kept.
const MAX_SEEN: usize = 64 * 1024;

type Who = (Arc<str>, Option<u32>, Box<str>);

#[derive(Debug)]
struct Held {
    opened: Instant,
    first: Record,
    last_ms: i64,
    count: u64,
}

impl Held {
    fn summary(self) -> Record {
        let mut record = self.first;
        record.count = Some(self.count);
        record.last_ms = Some(self.last_ms);
        record
    }
}

#[derive(Debug, Default)]
struct Tally {
    seen: HashMap<Who, u64>,
    held: HashMap<(Who, u64), Held>,
}

/// Which successful reads to write now and which to count (see the module docs).
#[derive(Debug)]
pub(super) struct ReadTally {
    window: Duration,
    inner: Mutex<Tally>,
}

impl ReadTally {
    /// A tally writing counted reads every `window`.
    pub(super) fn new(window: Duration) -> Self {
        ReadTally {
            window,
            inner: Mutex::new(Tally::default()),
        }
    }

    /// The window counted reads are written after.
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// The records to write for a successful read at `now`: the read itself (the
    /// first of its version by its reader), nothing (counted), or — when the tally
    /// is full — everything held, then nothing.
    pub(super) fn admit(&self, record: Record, now: Instant) -> Vec<Record> {
        let mut tally = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let who: Who = (
            record.peer.clone(),
            record.uid,
            record.path.clone().unwrap_or_default(),
        );
        let version = record.version.unwrap_or(0);
        if tally.seen.get(&who) != Some(&version) {
            if tally.seen.len() >= MAX_SEEN {
                tally.seen.clear();
            }
            tally.seen.insert(who, version);
            return vec![record];
        }
        let mut out = Vec::new();
        let key = (who, version);
        if !tally.held.contains_key(&key) && tally.held.len() >= MAX_HELD {
            out.extend(tally.held.drain().map(|(_, held)| held.summary()));
        }
        let time_ms = record.time_ms;
        let held = tally.held.entry(key).or_insert_with(|| Held {
            opened: now,
            first: record,
            last_ms: time_ms,
            count: 0,
        });
        held.count += 1;
        held.last_ms = time_ms;
        out
    }

    /// The counted records whose window closed by `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<Record> {
        let mut tally = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        tally
            .held
            .extract_if(|_, held| now.duration_since(held.opened) >= self.window)
            .map(|(_, held)| held.summary())
            .collect()
    }

    /// Everything counted, whatever its window (when the trail closes).
    pub(super) fn drain(&self) -> Vec<Record> {
        let mut tally = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        tally.held.drain().map(|(_, held)| held.summary()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(1);

    fn read(peer: &str, path: &str, version: u64, time_ms: i64) -> Record {
        let mut r = Record::now(peer.into(), Some(1000), "read", Some(path));
        r.version = Some(version);
        r.time_ms = time_ms;
        r
    }

    fn total(records: &[Record]) -> u64 {
        records.iter().map(|r| r.count.unwrap_or(1)).sum()
    }

    #[test]
    fn the_first_read_of_a_version_is_its_own_record_and_repeats_are_counted() {
        let tally = ReadTally::new(WINDOW);
        let t = Instant::now();
        let mut written = tally.admit(read("a", "db", 1, 1_000), t);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].count, None);
        for i in 1..=999 {
            written.extend(tally.admit(read("a", "db", 1, 1_000 + i), t));
        }
        assert_eq!(written.len(), 1, "repeats are held");
        // A new version, another reader, another path: each first read is written.
        written.extend(tally.admit(read("a", "db", 2, 2_000), t));
        written.extend(tally.admit(read("b", "db", 1, 2_000), t));
        written.extend(tally.admit(read("a", "web", 1, 2_000), t));
        assert_eq!(written.len(), 4);
        assert!(tally.due(t + WINDOW / 2).is_empty(), "the window is open");
        let due = tally.due(t + WINDOW);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, Some(999));
        assert_eq!((due[0].time_ms, due[0].last_ms), (1_001, Some(1_999)));
        assert_eq!(due[0].version, Some(1));
        written.extend(due);
        assert_eq!(total(&written), 1_003, "every read is accounted for");
        assert!(tally.drain().is_empty());
    }

    #[test]
    fn going_back_to_an_old_version_is_a_first_read_again() {
        let tally = ReadTally::new(WINDOW);
        let t = Instant::now();
        assert_eq!(tally.admit(read("a", "db", 1, 1), t).len(), 1);
        assert_eq!(tally.admit(read("a", "db", 2, 2), t).len(), 1);
        assert_eq!(tally.admit(read("a", "db", 1, 3), t).len(), 1);
    }

    #[test]
    fn a_full_tally_writes_what_it_holds_and_loses_no_read() {
        let tally = ReadTally::new(WINDOW);
        let t = Instant::now();
        let mut written = Vec::new();
        let paths = MAX_HELD + 10;
        for round in 0..2 {
            for p in 0..paths {
                written.extend(tally.admit(read("a", &format!("p/{p}"), 1, round), t));
            }
        }
        written.extend(tally.drain());
        assert_eq!(total(&written), 2 * paths as u64);
    }
}
