//! A small circuit breaker, one per upstream address.
//!
//! After `threshold` consecutive failures the address is skipped ("open") for a
//! cool-down that doubles on each trip up to a ceiling; when the cool-down is over,
//! requests are let through again ("half-open") and the first success closes the
//! circuit. This keeps a dead node from costing every request a connect timeout
//! while the live nodes of the same upstream answer. Time is passed in, so the logic
//! is tested without sleeping. Shared by the backends that talk HTTP to several
//! addresses (`openbao`); it does no I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub threshold: u32,
    /// The first cool-down.
    pub open_for: Duration,
    /// The longest cool-down after repeated trips.
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            threshold: 3,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    trips: u32,
    open_until: Option<Instant>,
}

/// Where a breaker stands, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go through.
    Closed,
    /// Requests are skipped for `retry_in` more.
    Open {
        /// Until the next request may probe the address.
        retry_in: Duration,
    },
    /// The cool-down is over: the next request probes the address.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The breaker of one address.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent in a
        // way that matters; keep going with whatever is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may be sent to this address now.
    pub fn allows(&self, now: Instant) -> bool {
        match self.lock().open_until {
            Some(until) => now >= until,
            None => true,
        }
    }

    /// Where the breaker stands at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        let s = self.lock();
        match s.open_until {
            Some(until) if now < until => BreakerState::Open {
                retry_in: until - now,
            },
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }

    /// Whether the circuit is open (requests are being skipped) at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        !self.allows(now)
    }

    /// Records a successful request: the circuit closes. Whether it had been open
    /// (tripped at least once since the last success), for the caller to say so.
    pub fn record_success(&self) -> bool {
        let mut s = self.lock();
        let was_open = s.trips > 0;
        s.failures = 0;
        s.trips = 0;
        s.open_until = None;
        was_open
    }

    /// Records a failed request at `now`; may open the circuit. The cool-down when
    /// this failure opened it (or a failed half-open probe opened it again).
    pub fn record_failure(&self, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        let half_open_probe_failed = s.open_until.is_some();
        if s.failures >= self.settings.threshold || half_open_probe_failed {
            let factor = 1u32 << s.trips.min(16);
            let open_for = self
                .settings
                .open_for
                .saturating_mul(factor)
                .min(self.settings.max_open_for);
            s.open_until = Some(now + open_for);
            s.trips = s.trips.saturating_add(1);
            return Some(open_for);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            threshold: 2,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(3),
        }
    }

    #[test]
    fn opens_after_threshold_and_half_opens_after_cool_down() {
        let b = Breaker::new(settings());
        let t0 = Instant::now();
        assert_eq!(b.record_failure(t0), None);
        assert!(b.allows(t0), "one failure is below the threshold");
        assert_eq!(
            b.record_failure(t0),
            Some(Duration::from_secs(1)),
            "the failure that opens it says for how long"
        );
        assert!(b.is_open(t0));
        assert!(b.is_open(t0 + Duration::from_millis(999)));
        assert_eq!(
            b.state(t0 + Duration::from_millis(400)),
            BreakerState::Open {
                retry_in: Duration::from_millis(600)
            }
        );
        assert_eq!(b.state(t0 + Duration::from_secs(1)), BreakerState::HalfOpen);
        assert!(
            b.allows(t0 + Duration::from_secs(1)),
            "half-open after cool-down"
        );
    }

    #[test]
    fn failed_probe_reopens_for_longer_and_success_closes() {
        let b = Breaker::new(settings());
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.record_failure(t1), Some(Duration::from_secs(2)));
        assert!(
            b.is_open(t1 + Duration::from_millis(1999)),
            "doubled cool-down"
        );
        let t2 = t1 + Duration::from_secs(2);
        assert!(b.allows(t2));
        b.record_failure(t2);
        assert!(b.is_open(t2 + Duration::from_millis(2999)), "capped at max");
        assert!(b.allows(t2 + Duration::from_secs(3)));
        assert!(b.record_success(), "closing an open circuit is reported");
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert!(b.allows(t2));
        assert!(!b.record_success(), "a closed one is not");
        b.record_failure(t2);
        assert!(b.allows(t2), "counters were reset by the success");
    }
}
