//! Exponential backoff with jitter: the retry schedule the sync, the lifecycle engine
//! and the webhooks share.
//!
//! Three loops retry through it: `sync` after a failed poll, `lifecycle` after a
//! failed rotation, refresh or retirement (in whole seconds, kept in its status and
//! coordination record), and `webhook` after a failed delivery. Retry number `n`
//! (1-based) waits `base * 2^(n-1)`, capped at `max`, plus up to a fifth more drawn at
//! random. The jitter only ever adds: many agents that failed together do not come
//! back in step, and no retry comes sooner than its schedule says (the lifecycle's
//! `retry_after` is the first delay, as the README promises).
//!
//! Not here: deciding *whether* to retry. That is each caller's typed error
//! (`upstream::Error::is_transient`, the lifecycle's outcome table).

use std::time::Duration;

use rand::Rng;

/// A retry schedule: `base` doubled on each retry, capped at `max`, plus jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub base: Duration,
    /// The longest delay before jitter.
    pub max: Duration,
}

impl Backoff {
    /// A schedule from `base` doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before retry `retry` (1-based; 0 counts as 1) without jitter.
    pub fn nominal(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(30);
        self.base
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.base))
    }

    /// The delay before retry `retry`: [`Backoff::nominal`] plus up to 20%.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut rand::thread_rng())
    }

    /// [`Backoff::delay`] drawing the jitter from `rng`.
    pub fn delay_with(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(retry);
        let spread = u64::try_from(nominal.as_nanos() / 5).unwrap_or(u64::MAX);
        nominal.saturating_add(Duration::from_nanos(rng.gen_range(0..=spread)))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_only_adds_a_fifth() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let nominal: Vec<u128> = (1..=6).map(|n| backoff.nominal(n).as_millis()).collect();
        assert_eq!(nominal, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.nominal(0), backoff.nominal(1));
        for n in 1..=40 {
            let floor = backoff.nominal(n);
            let delay = backoff.delay_with(n, &mut rng);
            assert!(
                delay >= floor && delay <= floor + floor / 5,
                "retry {n}: {delay:?} outside [{floor:?}, +20%]"
            );
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| backoff.delay_with(1, &mut rng)).collect();
        assert!(delays.len() > 15, "delays should differ: {delays:?}");
    }

    #[test]
    fn huge_retry_counts_and_bases_saturate_instead_of_overflowing() {
        let backoff = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert!(backoff.delay(u32::MAX) >= Duration::from_secs(u64::MAX / 2));
        let capped = Backoff::new(Duration::from_secs(10), Duration::from_secs(3600));
        assert_eq!(capped.nominal(u32::MAX), Duration::from_secs(3600));
    }
}
