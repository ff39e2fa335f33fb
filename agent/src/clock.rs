//! The agent's one source of wall-clock time.
//!
//! Everything that stamps or schedules in unix time reads it here: audit records,
//! events, the store's timestamps, the sync's health file, webhook signatures, expiry
//! warnings, the env fallback, the lifecycle plan and the CA's certificate validity.
//! Most callers take the system clock through [`unix_now`] or [`now_ms`]; the
//! lifecycle engine takes a [`Clock`] injected through its parts, so its unit tests
//! run on a clock they move by hand.
//!
//! Not here: monotonic time for timeouts, deadlines and circuit breakers, which stays
//! `std::time::Instant` and tokio's timers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time. Cheap to clone; [`Clock::system`] (the default) reads the
/// system clock. Tests build a manual one that only moves when told.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    #[cfg(test)]
    manual: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch (0 if the system clock is before it).
    pub fn now_ms(&self) -> i64 {
        #[cfg(test)]
        if let Some(ms) = &self.manual {
            return ms.load(std::sync::atomic::Ordering::SeqCst);
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

#[cfg(test)]
impl Clock {
    /// A clock standing at `unix` seconds until [`Clock::advance`] moves it.
    pub fn manual(unix: i64) -> Clock {
        Clock {
            manual: Some(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
                unix.saturating_mul(1000),
            ))),
        }
    }

    /// Moves a manual clock forward (its clones too). A system clock ignores it.
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(ms) = &self.manual {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            ms.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    Clock::system().now_ms()
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    Clock::system().unix()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_system_clock_agrees_with_std() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let now = u64::try_from(unix_now()).expect("positive");
        assert!(now >= before && now <= before + 1, "{now} vs {before}");
        let ms = u64::try_from(now_ms()).expect("positive");
        assert!(
            ms >= before * 1000 && ms < (before + 2) * 1000,
            "{ms} vs {before}"
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let clock = Clock::manual(1_000);
        let clone = clock.clone();
        assert_eq!(clock.unix(), 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!((clone.unix(), clone.now_ms()), (1_001, 1_001_500));
    }
}
