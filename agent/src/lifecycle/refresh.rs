//! OAuth refresh: before expiry on schedule, and on the spot when an app reads an
//! expired token.
//!
//! Refreshes of one secret are serialized by the engine's per-secret lock, and a
//! caller that waited re-reads the store before refreshing: so fifty concurrent reads
//! of an expired token cause one refresh at the OAuth server, and all fifty get its
//! result. The fresh token is written like any change (upstream first, with
//! check-and-set on the refreshed version); when another agent refreshed first, its
//! version is fetched instead. A refresh token the server rejects moves the credential
//! to `reauth-required` and raises an alert.

use super::{backoff, unix_now, Engine, Error, State, Status};
use crate::audit::Outcome as AuditOutcome;
use crate::events::Kind;
use crate::path::SecretPath;
use crate::providers::Credential;
use crate::store::{Secret, Selector};

impl Engine {
    /// Refreshes `path`. With `on_read`, only if it has expired (the caller waits for
    /// and gets the fresh version); otherwise, only if its refresh is due.
    pub async fn refresh(&self, path: &SecretPath, on_read: bool) -> Result<Secret, Error> {
        let policy = self
            .policy(path)
            .ok_or_else(|| Error::NoPolicy(path.clone()))?;
        let lock = self.path_lock(path);
        let _guard = lock.lock().await;
        let secret = self
            .inner
            .store
            .get(path, Selector::Current)?
            .ok_or_else(|| Error::NotFound(path.clone()))?;
        let now = unix_now();
        let status = self.status_of(path, &policy, &secret, now);
        let still_needed = if on_read {
            secret.expires_at.is_some_and(|t| t <= now)
        } else {
            super::refresh_due(&policy, &secret, &status, now)
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
            .providers
            .refresh(path, &Credential::of(&secret))
            .await;
        let fresh = match answer {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(e)) if e.code() == "rejected" => {
                let detail = format!("the service rejected the refresh: {}", e.detail());
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
                return Err(Error::Refused(detail));
            }
            Ok(Err(e)) => {
                return Err(self.refresh_failed(
                    path,
                    &policy,
                    &secret,
                    format!("refresh failed: {}: {}", e.code(), e.detail()),
                ))
            }
            Err(e) => {
                return Err(self.refresh_failed(
                    path,
                    &policy,
                    &secret,
                    format!("refresh failed: {e}"),
                ))
            }
        };
        let stored = match self.commit(path, &fresh, secret.version).await {
            Ok(s) => s,
            Err(Error::Sync(e)) if e.upstream().is_some_and(|u| u.is_conflict()) => {
                // Another agent refreshed first: serve its token.
                if let Some(sync) = &self.inner.sync {
                    sync.fetch(path).await?;
                }
                self.inner
                    .store
                    .get(path, Selector::Current)?
                    .ok_or_else(|| Error::NotFound(path.clone()))?
            }
            Err(e) => {
                let detail = format!("refreshed, but storing the new token failed: {e}");
                return Err(self.refresh_failed(path, &policy, &secret, detail));
            }
        };
        let now = unix_now();
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
                s.set(State::Active, "refreshed", now);
            },
        );
        Ok(stored)
    }

    fn refresh_failed(
        &self,
        path: &SecretPath,
        policy: &crate::providers::LifecycleSpec,
        secret: &Secret,
        detail: String,
    ) -> Error {
        let now = unix_now();
        let expired = secret.expires_at.is_some_and(|t| t <= now);
        self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| {
                s.failures += 1;
                s.retry_at = Some(now + backoff(policy.retry_after, s.failures));
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
        tracing::warn!(path = %path, detail = %detail, "refresh failed");
        Error::Unavailable(detail)
    }
}
