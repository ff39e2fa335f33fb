//! Keeps the audit trail of refused certificates readable when a client retries in a
//! loop: for each (uid, reason) at most one record per second is written, and the next
//! record says how many refusals like it were left out in between. The denial metric
//! still counts every one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between two audit records of the same refusal.
const WINDOW: Duration = Duration::from_secs(1);
/// Distinct refusals tracked at once; beyond that, expired ones are dropped first.
const MAX_TRACKED: usize = 1024;

/// Which certificate refusals to audit (see the module docs).
#[derive(Debug, Default)]
pub struct Refusals {
    seen: Mutex<HashMap<(Option<u32>, String), Window>>,
}

#[derive(Debug)]
struct Window {
    recorded_at: Instant,
    left_out: u64,
}

impl Refusals {
    /// Whether the refusal of a client with `uid` for `reason` at `now` gets an audit
    /// record: `Some(n)` with the number left out since the last record, or `None`.
    pub fn record(&self, uid: Option<u32>, reason: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED {
            seen.retain(|_, w| now.duration_since(w.recorded_at) < WINDOW);
        }
        let key = (uid, reason.to_owned());
        match seen.get_mut(&key) {
            Some(w) if now.duration_since(w.recorded_at) < WINDOW => {
                w.left_out += 1;
                None
            }
            Some(w) => {
                let left_out = w.left_out;
                *w = Window {
                    recorded_at: now,
                    left_out: 0,
                };
                Some(left_out)
            }
            None => {
                seen.insert(
                    key,
                    Window {
                        recorded_at: now,
                        left_out: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_second_per_client_and_reason_with_a_count_of_the_rest() {
        let r = Refusals::default();
        let t = Instant::now();
        assert_eq!(r.record(Some(1000), "revoked", t), Some(0));
        for i in 1..=5 {
            assert_eq!(r.record(Some(1000), "revoked", t + WINDOW / 10 * i), None);
        }
        // Another client, or another reason, is recorded on its own.
        assert_eq!(r.record(Some(1001), "revoked", t), Some(0));
        assert_eq!(r.record(None, "revoked", t), Some(0));
        assert_eq!(r.record(Some(1000), "unknown issuer", t), Some(0));
        assert_eq!(r.record(Some(1000), "revoked", t + WINDOW), Some(5));
        assert_eq!(r.record(Some(1000), "revoked", t + WINDOW * 3), Some(0));
    }

    #[test]
    fn tracking_stays_bounded() {
        let r = Refusals::default();
        let t = Instant::now();
        for uid in 0..u32::try_from(MAX_TRACKED).unwrap_or(u32::MAX) {
            r.record(Some(uid), "revoked", t);
        }
        r.record(Some(u32::MAX), "revoked", t + WINDOW * 2);
        let tracked = r.seen.lock().map(|s| s.len()).unwrap_or_default();
        assert_eq!(tracked, 1, "expired entries were dropped");
    }
}
