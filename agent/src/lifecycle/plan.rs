//! When each operation on a looked-after secret is due: the engine's pure arithmetic.
//!
//! Every function here takes a policy, a secret and its [`Status`] (and the time) and
//! answers with a unix time or a yes/no; nothing here reads a clock, the store or a
//! plugin. The scheduler (`super::scheduler`) turns the answers into a [`Plan`]: the
//! time-ordered queue it sleeps on.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::status::{State, Status};
use crate::backoff::Backoff;
use crate::path::SecretPath;
use crate::providers::LifecycleSpec;
use crate::store::Secret;

/// Due times, earliest first.
#[derive(Default)]
pub(super) struct Plan {
    queue: BTreeSet<(i64, SecretPath)>,
    at: HashMap<SecretPath, i64>,
}

impl Plan {
    /// Plans `path` at `when` (replacing its earlier time), or not at all.
    pub(super) fn set(&mut self, path: &SecretPath, when: Option<i64>) {
        if let Some(old) = self.at.remove(path) {
            self.queue.remove(&(old, path.clone()));
        }
        if let Some(when) = when {
            self.queue.insert((when, path.clone()));
            self.at.insert(path.clone(), when);
        }
    }

    /// Takes every path due at `now`, earliest first.
    pub(super) fn pop_due(&mut self, now: i64) -> Vec<SecretPath> {
        let mut due = Vec::new();
        while let Some((when, _)) = self.queue.first() {
            if *when > now {
                break;
            }
            if let Some((_, path)) = self.queue.pop_first() {
                self.at.remove(&path);
                due.push(path);
            }
        }
        due
    }

    /// The earliest planned time.
    pub(super) fn next(&self) -> Option<i64> {
        self.queue.first().map(|(when, _)| *when)
    }
}

/// Whole seconds of `d`, as unix-time arithmetic needs them.
pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Whether `policy` rotates at all.
pub(super) fn rotates(policy: &LifecycleSpec) -> bool {
    policy.rotate_every.is_some() || policy.rotate_before_expiry.is_some()
}

pub(super) fn rotation_due(
    policy: &LifecycleSpec,
    secret: &Secret,
    status: &Status,
    now: i64,
) -> bool {
    rotation_at(policy, secret, status).is_some_and(|t| t <= now)
}

/// When the next rotation is due: the earlier of `rotate_every` after the last
/// rotation (or write) and `rotate_before_expiry` before expiry; after failures, not
/// before the retry time; never after the attempts are used up, or after a failure
/// that retrying cannot help ([`Status::stopped`]).
pub(super) fn rotation_at(policy: &LifecycleSpec, secret: &Secret, status: &Status) -> Option<i64> {
    if !rotates(policy) {
        return None;
    }
    if status.failures >= policy.max_attempts || status.stopped {
        return None;
    }
    let last = status.rotated_at.unwrap_or(0).max(secret.updated_at);
    let by_age = policy.rotate_every.map(|every| last + secs(every));
    let by_expiry = policy
        .rotate_before_expiry
        .zip(secret.expires_at)
        .map(|(before, exp)| exp - secs(before));
    let due = match (by_age, by_expiry) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(match status.retry_at {
        Some(retry) if status.failures > 0 => due.max(retry),
        _ => due,
    })
}

pub(super) fn refresh_due(
    policy: &LifecycleSpec,
    secret: &Secret,
    status: &Status,
    now: i64,
) -> bool {
    refresh_at(policy, secret, status).is_some_and(|t| t <= now)
}

/// `refresh_before` ahead of expiry; after failures, not before the retry time; not
/// after a failure that retrying cannot help.
pub(super) fn refresh_at(policy: &LifecycleSpec, secret: &Secret, status: &Status) -> Option<i64> {
    if status.stopped {
        return None;
    }
    let due = policy
        .refresh_before
        .zip(secret.expires_at)
        .map(|(before, exp)| exp - secs(before))?;
    Some(match status.retry_at {
        Some(retry) if status.failures > 0 => due.max(retry),
        _ => due,
    })
}

pub(super) fn validation_due(policy: &LifecycleSpec, status: &Status, now: i64) -> bool {
    validation_at(policy, status).is_some_and(|t| t <= now)
}

pub(super) fn validation_at(policy: &LifecycleSpec, status: &Status) -> Option<i64> {
    let every = secs(policy.validate_every?);
    Some(match status.checked_at {
        Some(last) => last + every,
        // Never validated since start: soon, spread over the first minute so a large
        // fleet of policies does not hit the services at once.
        None => status.since + (spread(&status.plugin, status.version) % every.clamp(1, 60)),
    })
}

fn spread(plugin: &str, version: u64) -> i64 {
    let mut h: u64 = 1469598103934665603;
    for b in plugin.bytes().chain(version.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    i64::try_from(h % 60).unwrap_or(0)
}

/// The earliest time anything is due for this secret.
pub(super) fn next_due(
    policy: &LifecycleSpec,
    secret: &Secret,
    status: &Status,
    now: i64,
) -> Option<i64> {
    let retry = (status.failures > 0 && status.failures < policy.max_attempts)
        .then_some(status.retry_at)
        .flatten();
    [
        rotation_at(policy, secret, status),
        (status.state != State::ReauthRequired)
            .then(|| refresh_at(policy, secret, status))
            .flatten(),
        validation_at(policy, status),
        status.retire_at,
        retry,
        secret.expires_at.filter(|t| *t > now),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Delay in seconds before retry number `failures` (1-based): `base` (at least a
/// second) doubled each time, capped at an hour, with up to 20% jitter.
pub(super) fn backoff(base: Duration, failures: u32) -> i64 {
    let schedule = Backoff::new(base.max(Duration::from_secs(1)), Duration::from_secs(3600));
    secs(schedule.delay(failures))
}

#[cfg(test)]
pub(super) mod tests;
