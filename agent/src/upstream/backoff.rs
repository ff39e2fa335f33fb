//! Exponential backoff with full jitter, and the one retry helper for upstream calls.
//!
//! `sync` (and anything else that calls an [`Upstream`](super::Upstream)) retries
//! through [`retry`], which retries only what [`Error::is_transient`] says is worth
//! retrying, so a denial or a conflict comes back at once. Delays follow "full
//! jitter": a random delay between zero and `base * 2^attempt`, capped, so many
//! agents that lost the same upstream do not come back in lockstep.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::Error;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// The delays of one run of retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    /// Starts at the first delay.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.policy.base.saturating_mul(factor).min(self.policy.max)
    }

    /// The next delay: uniform in `[0, ceiling]`; each call doubles the ceiling.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs `op` until it succeeds, fails with a non-transient error, or has been tried
/// `attempts` times (at least once), sleeping with [`Backoff`] in between.
pub async fn retry<T, F, Fut>(policy: BackoffPolicy, attempts: u32, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = Backoff::new(policy);
    let mut tried = 0;
    loop {
        tried += 1;
        match op().await {
            Err(e) if e.is_transient() && tried < attempts.max(1) => {
                let delay = backoff.next_delay(&mut rand::thread_rng());
                tracing::debug!(error = %e, attempt = tried, delay_ms = delay.as_millis() as u64, "upstream call failed; retrying");
                tokio::time::sleep(delay).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rand::SeedableRng;

    use super::*;
    use crate::upstream::Reason;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let policy = BackoffPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let mut backoff = Backoff::new(policy);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay(&mut rng);
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                ceiling.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let policy = BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|_| Backoff::new(policy).next_delay(&mut rng))
            .collect();
        assert!(delays.len() > 15, "delays should differ: {delays:?}");
    }

    fn unavailable() -> Error {
        Error::Unavailable {
            upstream: "bao".into(),
            address: "http://127.0.0.1:1".into(),
            source: Box::new(Reason("refused".into())),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_only() {
        let policy = BackoffPolicy {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let result = retry(policy, 5, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(unavailable())
            } else {
                Ok(42)
            }
        })
        .await;
        assert_eq!(result.ok(), Some(42));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(policy, 5, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Denied {
                upstream: "bao".into(),
                operation: "read a".into(),
            })
        })
        .await;
        assert!(matches!(result, Err(Error::Denied { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a denial is not retried");

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(policy, 3, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert!(result.is_err_and(|e| e.is_transient()));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "gives up after the attempts"
        );
    }
}
