//! The stores the agent syncs with: the source of truth behind the local cache.
//!
//! Every backend implements [`Upstream`]: read one secret, list what lies under a
//! prefix (paths and versions only, so a poll can find what changed without fetching
//! values), read one secret's version metadata, write with check-and-set, delete.
//! `sync` drives these calls and, when [`Error::is_transient`] says so, retries them on
//! the shared schedule (`crate::backoff`); the cache never talks to an upstream
//! directly.
//!
//! Backends, each one module in the same order (config, client, trait impl):
//! [`openbao`] (OpenBao and HashiCorp Vault, KV v2, also [`openbao::TransitWrapper`] for
//! key wrapping), [`aws`] (AWS Secrets Manager through the official SDK) and [`local`]
//! (the agent's own sealed store: the upstream when none is configured, so there is
//! always one, and every write takes the same path through `sync`). Azure Key
//! Vault or GCP Secret Manager would be one more module here plus one [`config`]
//! variant. [`http`] builds the HTTP clients (one per upstream); [`breaker`] is the
//! per-address circuit breaker; [`template`] maps agent paths to remote names (with a
//! tenant).
//!
//! Nothing in this module logs or formats a secret value: errors name the upstream,
//! the address and the path, never a value or a token.

use std::fmt;

use async_trait::async_trait;

use crate::path::{Prefix, SecretPath};
use crate::secret::Fields;
use crate::store;

pub mod aws;
pub mod breaker;
pub mod config;
pub mod http;
pub mod local;
pub mod meta;
pub mod openbao;
pub mod template;

/// A boxed error cause, kept as `#[source]` so callers can walk the chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One secret as the upstream holds it.
#[derive(Debug, Clone)]
pub struct RemoteSecret {
    /// The agent-side path (the remote name with the template undone).
    pub path: SecretPath,
    /// The upstream's version number; see each backend for how it is assigned.
    pub version: u64,
    /// The values.
    pub fields: Fields,
    /// When this version was written upstream, seconds since the Unix epoch.
    pub updated_at: i64,
    /// Whether `version` orders this version against the secret's other versions
    /// exactly (KV v2 counters, the numbers the agent puts in AWS version ids), rather
    /// than only to the second it was written (a version someone else wrote to
    /// Secrets Manager). `sync` refuses an older ordered version as current; an
    /// unordered one written in the same second as the one held is taken.
    pub ordered: bool,
    /// The kind latchkey recorded with it upstream ([`meta`]), if any.
    pub kind: Option<String>,
    /// The expiry latchkey recorded with it upstream, if any (unix seconds).
    pub expires_at: Option<i64>,
}

/// What a poll needs to decide whether to fetch a secret again: no values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMeta {
    /// The agent-side path.
    pub path: SecretPath,
    /// The current version number (0 for a tombstone).
    pub version: u64,
    /// When the current version was written, seconds since the Unix epoch.
    pub updated_at: i64,
    /// The upstream still lists the secret but its own metadata says it was deleted:
    /// a KV v2 secret whose current version is soft-deleted or destroyed, an AWS
    /// secret scheduled for deletion. `sync` drops such a secret like any other
    /// deletion, but counts it as deleted one by one, so the mass-deletion guard
    /// (which holds back secrets that merely vanished from a listing) lets it through.
    pub deleted: bool,
    /// With `deleted` and a `version`: that version was destroyed, not only deleted.
    pub destroyed: bool,
}

impl RemoteMeta {
    /// A secret whose current version is `version`.
    pub fn live(path: SecretPath, version: u64, updated_at: i64) -> Self {
        RemoteMeta {
            path,
            version,
            updated_at,
            deleted: false,
            destroyed: false,
        }
    }

    /// A secret the upstream lists as deleted, whole.
    pub fn tombstone(path: SecretPath) -> Self {
        RemoteMeta {
            path,
            version: 0,
            updated_at: 0,
            deleted: true,
            destroyed: false,
        }
    }

    /// A secret whose current version `version` the upstream deleted (`destroyed`:
    /// for good) while it keeps older versions: KV v2's soft delete and destroy.
    pub fn deleted_version(path: SecretPath, version: u64, destroyed: bool) -> Self {
        RemoteMeta {
            path,
            version,
            updated_at: 0,
            deleted: true,
            destroyed,
        }
    }
}

/// One address of an upstream and its circuit breaker, for health and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressState {
    /// The address as configured.
    pub address: String,
    /// Its breaker.
    pub breaker: breaker::BreakerState,
}

/// A store that `sync` pulls from and writes back to.
///
/// Implementations are shared (`Arc<dyn Upstream>`) across the sync loop, the admin
/// API and the rotation scheduler, so every method takes `&self` and may run
/// concurrently with any other. None of them retries a transient failure by itself
/// (beyond failing over between addresses of one upstream): the caller decides.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// A short name for logs, metrics and errors (the config's `name`).
    fn name(&self) -> &str;

    /// Whether this upstream is the agent's own store ([`local`]). Asked by `sync`:
    /// nothing changes it behind the agent's back, so there is nothing to poll, a
    /// miss in the store is a miss, and what the store serves is never stale.
    fn is_local(&self) -> bool {
        false
    }

    /// The addresses this upstream fails over between, each with its circuit
    /// breaker; empty for backends that keep no breakers (the AWS SDK retries and
    /// fails over by itself; the local store has no address).
    fn addresses(&self) -> Vec<AddressState> {
        Vec::new()
    }

    /// Fetches the current version of one secret with its values.
    ///
    /// Called by `sync` for each path whose version changed since the last poll, on a
    /// cache miss, and by rotation to re-read after a lost check-and-set. `Ok(None)`
    /// means the secret does not exist (or its current version is deleted).
    async fn read(&self, path: &SecretPath) -> Result<Option<RemoteSecret>, Error>;

    /// The version of one secret that carries `label` upstream, for a labelled read
    /// the store cannot answer (the agent pulls current versions only). `Ok(None)`:
    /// no version carries it, or the backend has no labels of its own (the default).
    async fn read_label(
        &self,
        path: &SecretPath,
        label: &str,
    ) -> Result<Option<RemoteSecret>, Error> {
        let _ = (path, label);
        Ok(None)
    }

    /// Lists every secret under `prefix` with its current version, without values.
    ///
    /// Called by `sync` at start and on every poll, once per configured prefix; the
    /// result is compared with the cache to decide what to fetch and what to drop.
    /// The order is unspecified. A secret the upstream's metadata marks deleted is
    /// listed as a [`RemoteMeta::tombstone`] where the upstream tells it (so `sync`
    /// can tell one deletion from a listing that suddenly lacks everything); one it
    /// no longer knows at all is not listed.
    async fn list(&self, prefix: &Prefix) -> Result<Vec<RemoteMeta>, Error>;

    /// The current version of one secret, without values.
    ///
    /// Called before a write to learn the version for check-and-set, and by `sync`
    /// to refresh one path (an admin "sync now" for a single secret). A deleted
    /// secret is `None`, never a tombstone.
    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, Error>;

    /// Writes a new version and returns its number.
    ///
    /// Called through [`Upstream::put`] by `sync`'s commit (an admin put, a rotation's
    /// promotion, a refresh), always before the store and the cache are updated, and
    /// by the lifecycle's coordination records (a rotation publishing its pending
    /// credential).
    /// `cas: Some(v)` writes only if
    /// the current version is `v` (`Some(0)`: only if the secret does not exist) and
    /// fails with [`Error::Conflict`] otherwise; `None` writes unconditionally.
    async fn write(
        &self,
        path: &SecretPath,
        fields: &Fields,
        cas: Option<u64>,
    ) -> Result<u64, Error>;

    /// Writes a new version from a whole [`store::Write`] and returns its number.
    ///
    /// What `sync`'s commit calls, first, for every write the agent makes. The remote
    /// backends keep the fields and honour `cas` ([`Upstream::write`], the default);
    /// the kind and the expiry live in the agent's store, which [`local`] is, so it
    /// keeps them too. Returns once the upstream holds the version durably.
    async fn put(&self, path: &SecretPath, write: &store::Write) -> Result<u64, Error> {
        self.write(path, &write.fields, write.cas).await
    }

    /// The number this backend gives the version it identifies as `id` (AWS's
    /// `VersionId`), so a check-and-set can name a version the way the upstream's own
    /// clients see it. `Ok(None)`: the backend has no version ids besides its numbers
    /// (the default). A version the secret does not have gets a number no current
    /// version has, so a check-and-set on it is a conflict.
    async fn version_of(&self, path: &SecretPath, id: &str) -> Result<Option<u64>, Error> {
        let _ = (path, id);
        Ok(None)
    }

    /// Adds `fields` as a *pending* version of `path`, one that readers of the current
    /// version do not get yet, provided the current version is still `base`
    /// ([`Error::Conflict`] otherwise). Returns the pending version's number, or
    /// `Ok(None)` when the backend has no stages of its own (the default: a rotation
    /// then keeps its pending credential in its coordination record only).
    ///
    /// Called by a rotation's step 2 (publish), so the upstream's own rotation tools
    /// see latchkey's rotation as one of theirs: on AWS Secrets Manager this is a
    /// version labelled `AWSPENDING`, what a rotation function's `createSecret` makes.
    /// A pending version someone else staged that is still in flight (another
    /// rotation) is [`Error::Busy`].
    async fn stage(
        &self,
        path: &SecretPath,
        fields: &Fields,
        base: u64,
    ) -> Result<Option<u64>, Error> {
        let _ = (path, fields, base);
        Ok(None)
    }

    /// Makes the version [`Upstream::stage`] returned the current one, provided the
    /// current version is still `base` ([`Error::Conflict`] otherwise); `base` becomes
    /// the previous version and the pending mark goes. Done already is success.
    /// Called by a rotation's step 4 (AWS: `finishSecret`'s label move).
    async fn promote(&self, path: &SecretPath, staged: u64, base: u64) -> Result<(), Error> {
        let _ = (path, staged, base);
        Err(Error::Invalid {
            upstream: self.name().to_owned(),
            what: format!("promotion of {path}"),
            reason: "this upstream has no stages".to_owned(),
        })
    }

    /// Records latchkey's metadata of `write` (kind, expiry; [`meta`]) for a version
    /// that reached the upstream without [`Upstream::put`]: a promoted pending
    /// version. Best effort: a failure is logged, never fatal. Nothing by default.
    async fn record_meta(&self, path: &SecretPath, write: &store::Write) {
        let _ = (path, write);
    }

    /// Drops the pending mark of a version [`Upstream::stage`] made (a rotation rolled
    /// back). A version that lost it already is success.
    async fn unstage(&self, path: &SecretPath, staged: u64) -> Result<(), Error> {
        let _ = (path, staged);
        Ok(())
    }

    /// Deletes a secret and all its versions. Deleting a missing secret succeeds.
    /// Returns whether the secret existed, when the backend can tell (`None`: it
    /// cannot; [`local`] can).
    ///
    /// Called by `sync`'s commit for every delete, before the cached copy is dropped.
    async fn delete(&self, path: &SecretPath) -> Result<Option<bool>, Error>;
}

/// Why an upstream call failed. Messages name the upstream, address and path; they
/// never carry a value, a token or a server response body that could hold one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream could not be reached or answered with a server error (5xx, 429,
    /// a timeout, a refused connection, every address's circuit open). Retry later.
    #[error("upstream {upstream} unavailable at {address}")]
    Unavailable {
        /// The upstream's name.
        upstream: String,
        /// The address tried last (or `all addresses`).
        address: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A check-and-set write lost: the secret is not at the expected version.
    #[error("check-and-set conflict on {path}: expected version {expected}, current {}", current.map_or_else(|| "unknown".to_owned(), |v| v.to_string()))]
    Conflict {
        /// The secret.
        path: SecretPath,
        /// The version the writer based its change on (0: must not exist).
        expected: u64,
        /// The version found upstream, when known (0: does not exist).
        current: Option<u64>,
    },
    /// The upstream refused our credentials or policy forbids the operation.
    #[error("upstream {upstream} denied {operation}")]
    Denied {
        /// The upstream's name.
        upstream: String,
        /// What was refused, e.g. `read billing/db` or `login`.
        operation: String,
    },
    /// Something the operation needs does not exist (a Transit key, a secret that a
    /// staged write refers to). Reads of a missing secret return `Ok(None)` instead.
    #[error("upstream {upstream}: {what} not found")]
    NotFound {
        /// The upstream's name.
        upstream: String,
        /// What is missing.
        what: String,
    },
    /// The upstream refused the request as malformed, or answered with something we
    /// cannot understand. Not retried: the same request would fail again.
    #[error("upstream {upstream}: invalid {what}: {reason}")]
    Invalid {
        /// The upstream's name.
        upstream: String,
        /// The request or response concerned, e.g. `response to read billing/db`.
        what: String,
        /// Why, in a few words (never a value).
        reason: String,
    },
    /// Logging in failed for a reason other than reachability: bad credentials, an
    /// unreadable credential file, a login answer without a token.
    #[error("upstream {upstream}: {method} login failed: {reason}")]
    Login {
        /// The upstream's name.
        upstream: String,
        /// `token`, `approle` or `jwt`.
        method: &'static str,
        /// Why, in a few words.
        reason: String,
        /// The cause, if any (an I/O error reading a file).
        #[source]
        source: Option<BoxError>,
    },
    /// Someone else is changing the secret in a way that must finish first: a
    /// rotation outside latchkey has a pending version in flight. Try again later.
    #[error("upstream {upstream}: {path} is busy: {detail}")]
    Busy {
        /// The upstream's name.
        upstream: String,
        /// The secret.
        path: SecretPath,
        /// What is in flight (no values).
        detail: String,
    },
    /// The agent's own store failed, as the [`local`] upstream. Carries the store's
    /// error whole, so callers answer exactly as they would for the store.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The upstream's configuration cannot work (bad address, unreadable CA file).
    #[error("upstream {upstream}: bad configuration: {reason}")]
    Config {
        /// The upstream's name.
        upstream: String,
        /// What is wrong, naming the key.
        reason: String,
        /// The cause, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether `sync` should retry with backoff (and serve stale meanwhile) rather
    /// than give up: only reachability problems are transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Whether this is a lost check-and-set (the admin API answers 409).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. } | Self::Store(store::Error::Conflict { .. })
        )
    }
}

/// A status code or short reason, used as the `source` of [`Error::Unavailable`]
/// when there is no lower-level error (a 503, an open circuit).
#[derive(Debug)]
pub struct Reason(pub String);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_transient() {
        let unavailable = Error::Unavailable {
            upstream: "bao".into(),
            address: "http://127.0.0.1:1".into(),
            source: Box::new(Reason("connection refused".into())),
        };
        assert!(unavailable.is_transient());
        let conflict = Error::Conflict {
            path: SecretPath::parse("a/b").expect("valid"),
            expected: 3,
            current: Some(4),
        };
        assert!(!conflict.is_transient());
        assert!(conflict.is_conflict());
        assert_eq!(
            conflict.to_string(),
            "check-and-set conflict on a/b: expected version 3, current 4"
        );
    }
}
