//! Keeps the audit trail readable when a client repeats a denied (or failing) request
//! in a loop.
//!
//! Denials (and failed reads) are grouped by who (identity and uid), what (operation, code and detail,
//! but not the path, so varying it does not help) and a one-second window. The first
//! denial of a group is written at once; the ones after it in the same window are held
//! back and written as one record, the last of them, whose `count` says how many it
//! stands for. The counts of a group's records add up to the number of denials; the
//! denial metric counts every one as well.
//!
//! Held counts are written by [`Coalescer::due`] (called every window by the audit's
//! flush task) once their window has closed, and by [`Coalescer::drain`] when the trail
//! closes, so none is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Record;

/// The shortest time between two records of the same group.
pub(super) const WINDOW: Duration = Duration::from_secs(1);
/// Groups tracked at once. Past that, denials of new groups are counted together in
/// one overflow record per window.
const MAX_TRACKED: usize = 1024;
/// What the overflow record names as the peer.
const VARIOUS: &str = "(various)";

type Key = (
    Arc<str>,
    Option<u32>,
    &'static str,
    Option<&'static str>,
    Option<Box<str>>,
);

fn key(record: &Record) -> Key {
    (
        record.peer.clone(),
        record.uid,
        record.op,
        record.code,
        record.detail.clone(),
    )
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    held: u64,
    last: Option<Record>,
}

impl Window {
    fn open(now: Instant) -> Self {
        Self {
            opened: now,
            held: 0,
            last: None,
        }
    }

    fn hold(&mut self, record: Record) {
        self.held += 1;
        self.last = Some(record);
    }

    /// The record standing for the held denials, if any; the window starts again.
    fn summary(&mut self, now: Instant) -> Option<Record> {
        let held = std::mem::take(&mut self.held);
        self.opened = now;
        let mut last = self.last.take()?;
        last.count = Some(held);
        Some(last)
    }
}

/// Which denials to write now and which to hold (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Coalescer {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    groups: HashMap<Key, Window>,
    overflow: Option<Window>,
}

impl Coalescer {
    /// The records to write for a denial at `now`: none (held), the denial itself, or
    /// the summary of its group's last window followed by the denial.
    pub(super) fn admit(&self, record: Record, now: Instant) -> Vec<Record> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(&record);
        if !inner.groups.contains_key(&key) && inner.groups.len() >= MAX_TRACKED {
            inner
                .groups
                .retain(|_, w| w.held > 0 || now.duration_since(w.opened) < WINDOW);
            if inner.groups.len() >= MAX_TRACKED {
                let mut record = record;
                record.peer = VARIOUS.into();
                record.uid = None;
                record.path = None;
                record.detail = Some("denials of more clients than are tracked".into());
                let overflow = inner.overflow.get_or_insert_with(|| Window::open(now));
                overflow.hold(record);
                return Vec::new();
            }
        }
        match inner.groups.get_mut(&key) {
            Some(w) if now.duration_since(w.opened) < WINDOW => {
                w.hold(record);
                Vec::new()
            }
            Some(w) => {
                let mut out: Vec<Record> = w.summary(now).into_iter().collect();
                out.push(record);
                out
            }
            None => {
                inner.groups.insert(key, Window::open(now));
                vec![record]
            }
        }
    }

    /// Summaries of the windows that closed by `now` with denials held; groups that
    /// had nothing more to say are forgotten.
    pub(super) fn due(&self, now: Instant) -> Vec<Record> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        inner.groups.retain(|_, w| {
            if now.duration_since(w.opened) < WINDOW {
                return true;
            }
            match w.summary(now) {
                Some(summary) => {
                    out.push(summary);
                    true
                }
                None => false,
            }
        });
        if let Some(w) = &mut inner.overflow {
            if now.duration_since(w.opened) >= WINDOW {
                out.extend(w.summary(now));
            }
        }
        out
    }

    /// Every held summary, whatever its window (when the trail closes).
    pub(super) fn drain(&self) -> Vec<Record> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut out: Vec<Record> = inner
            .groups
            .drain()
            .filter_map(|(_, mut w)| w.summary(now))
            .collect();
        out.extend(inner.overflow.take().and_then(|mut w| w.summary(now)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    fn denial(peer: &str, path: &str) -> Record {
        let mut r = Record::now(peer.into(), Some(1000), "read", Some(path));
        r.outcome = Outcome::Denied;
        r.status = 403;
        r.code = Some("forbidden");
        r
    }

    fn total(records: &[Record]) -> u64 {
        records.iter().map(|r| r.count.unwrap_or(1)).sum()
    }

    #[test]
    fn repeats_within_a_window_are_held_and_written_as_one_counted_record() {
        let c = Coalescer::default();
        let t = Instant::now();
        let mut written = c.admit(denial("a", "x/0"), t);
        assert_eq!(written.len(), 1);
        for i in 1..=500u32 {
            let at = t + WINDOW / 1000 * i;
            written.extend(c.admit(denial("a", &format!("x/{i}")), at));
        }
        assert_eq!(written.len(), 1, "the path does not open a new group");
        // Another peer is a group of its own.
        written.extend(c.admit(denial("b", "x/0"), t));
        assert_eq!(written.len(), 2);
        assert!(c.due(t + WINDOW / 2).is_empty(), "the window is still open");
        let due = c.due(t + WINDOW);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, Some(500));
        assert_eq!(due[0].path.as_deref(), Some("x/500"), "the last one held");
        written.extend(due);
        assert_eq!(total(&written), 502);
        // Nothing more held: the groups are forgotten after their next window.
        assert!(c.due(t + WINDOW * 3).is_empty());
        assert!(c.inner.lock().map(|i| i.groups.is_empty()).unwrap_or(false));
    }

    #[test]
    fn a_denial_after_the_window_brings_the_held_summary_along() {
        let c = Coalescer::default();
        let t = Instant::now();
        let mut written = c.admit(denial("a", "x"), t);
        written.extend(c.admit(denial("a", "x"), t + WINDOW / 2));
        written.extend(c.admit(denial("a", "x"), t + WINDOW / 2));
        let next = c.admit(denial("a", "y"), t + WINDOW * 2);
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(next[0].count, Some(2));
        assert_eq!(next[1].count, None);
        written.extend(next);
        assert_eq!(total(&written), 4);
        assert!(c.drain().is_empty());
    }

    #[test]
    fn tracking_stays_bounded_and_the_rest_is_counted_together() {
        let c = Coalescer::default();
        let t = Instant::now();
        let mut written = Vec::new();
        let peers = MAX_TRACKED + 300;
        for i in 0..peers {
            written.extend(c.admit(denial(&format!("p{i}"), "x"), t));
            written.extend(c.admit(denial(&format!("p{i}"), "x"), t));
        }
        assert_eq!(written.len(), MAX_TRACKED);
        assert!(c.inner.lock().map(|i| i.groups.len()).unwrap_or(0) <= MAX_TRACKED);
        written.extend(c.drain());
        assert_eq!(total(&written), 2 * peers as u64);
        assert!(written.iter().any(|r| &*r.peer == VARIOUS));
    }
}
