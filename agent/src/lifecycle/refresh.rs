//! OAuth refresh: before expiry on schedule, and on the spot when an app reads an
//! expired token.
//!
//! Refreshes of one secret are serialized by the engine's per-secret lock, and a
//! caller that waited re-reads the store before refreshing: so fifty concurrent reads
//! of an expired token cause one refresh at the OAuth server, and all fifty get its
//! result. The fresh token is written like any change (upstream first, with
//! check-and-set on the refreshed version); when another agent refreshed first, its
//! version is fetched instead. What a failed refresh leads to is [`super::next`]'s to
//! say: a refresh token the server rejects moves the credential to `reauth-required`
//! and raises an alert; an unavailable server is retried with backoff; a plugin that
//! cannot refresh (`denied`, `unsupported`, `invalid-config`) is not retried on
//! schedule until the secret changes.

use super::next::{self, Answer, Call, Next};
use super::plan::{backoff, refresh_due};
use super::{Engine, Error, State, Status};
use crate::audit::Outcome as AuditOutcome;
use crate::events::Kind;
use crate::path::SecretPath;
use crate::providers::Credential;
use crate::store::Secret;

impl Engine {
    /// Refreshes `path`. With `on_read`, only if it has expired (the caller waits for
    /// and gets the fresh version); otherwise, only if its refresh is due.
    pub async fn refresh(&self, path: &SecretPath, on_read: bool) -> Result<Secret, Error> {
        let _op = self.begin()?;
        let policy = self
            .policy(path)
            .ok_or_else(|| Error::NoPolicy(path.clone()))?;
        let lock = self.path_lock(path);
        let _guard = lock.lock().await;
        let secret = self.required(path).await?;
        let now = self.now();
        let status = self.status_of(path, &policy, &secret, now);
        let still_needed = if on_read {
            secret.expires_at.is_some_and(|t| t <= now)
        } else {
            refresh_due(&policy, &secret, &status, now)
        };
        if !still_needed {
            return Ok(secret);
        }
        if status.state == State::ReauthRequired && !on_read {
            return Ok(secret);
        }
        self.set_state(path, &policy, &secret, State::Refreshing, "refreshing");
        let answer = self
            .inner
            .provider
            .refresh(path, &Credential::of(&secret))
            .await;
        let fresh = match answer {
            Ok(fresh) => fresh,
            Err(failure) => {
                let next = next::decide(Call::Refresh, Answer::Failed(&failure));
                if next == Next::ReauthRequired {
                    let detail = format!(
                        "the service rejected the refresh: {}",
                        failure.answer().map_or("", |e| e.detail())
                    );
                    self.conclude(
                        path,
                        &policy.plugin,
                        secret.version,
                        Some(Kind::ReauthRequired),
                        "refresh",
                        AuditOutcome::Failed,
                        &detail,
                        |s| s.set(State::ReauthRequired, &detail, now),
                    );
                    return Err(failure.into());
                }
                let detail = format!("refresh failed: {}", next::describe_failure(&failure));
                return Err(self.refresh_failed(path, &policy, &secret, next, detail, failure));
            }
        };
        let stored = match self.commit(path, &fresh, secret.version).await {
            Ok(s) => s,
            Err(Error::Sync(e)) if e.upstream().is_some_and(|u| u.is_conflict()) => {
                // Another agent refreshed first: serve its token.
                self.inner.sync.fetch(path).await?;
                self.required(path).await?
            }
            Err(e) => {
                let detail = format!("refreshed, but storing the new token failed: {e}");
                return Err(self.refresh_failed(path, &policy, &secret, Next::Retry, detail, e));
            }
        };
        let now = self.now();
        self.conclude(
            path,
            &policy.plugin,
            stored.version,
            Some(Kind::Refreshed),
            "refresh",
            AuditOutcome::Ok,
            "refreshed",
            |s| {
                s.version = stored.version;
                s.refreshed_at = Some(now);
                s.failures = 0;
                s.retry_at = None;
                s.stopped = false;
                s.set(State::Active, "refreshed", now);
            },
        );
        Ok(stored)
    }

    /// Records a failed refresh (retried with backoff, or not on schedule at all as
    /// `next` says) and hands back `error` for the caller.
    fn refresh_failed(
        &self,
        path: &SecretPath,
        policy: &crate::providers::LifecycleSpec,
        secret: &Secret,
        next: Next,
        detail: String,
        error: impl Into<Error>,
    ) -> Error {
        let now = self.now();
        let expired = secret.expires_at.is_some_and(|t| t <= now);
        let retried = next.retries();
        let detail = if retried {
            detail
        } else {
            format!("{detail}; not retried until the secret changes")
        };
        self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| {
                s.failures += 1;
                s.retry_at = retried.then(|| now + backoff(policy.retry_after, s.failures));
                s.stopped = !retried;
                let state = if expired {
                    State::Expired
                } else {
                    State::Active
                };
                s.set(state, &detail, now);
            },
        );
        self.audit(
            "refresh",
            path,
            Some(secret.version),
            AuditOutcome::Failed,
            &detail,
        );
        if next == Next::ConfigError {
            tracing::error!(path = %path, plugin = %policy.plugin, detail = %detail, "refresh failed: configuration error");
        } else {
            tracing::warn!(path = %path, detail = %detail, "refresh failed");
        }
        error.into()
    }
}
