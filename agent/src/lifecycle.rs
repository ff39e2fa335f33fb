//! The lifecycle engine: keeps every credential under a `[[lifecycle]]` policy alive.
//!
//! For each such secret it plans the next thing due — a health check
//! (`validate_every`), an OAuth refresh before expiry (`refresh_before`), a rotation
//! (`rotate_every`, `rotate_before_expiry`), retiring the previous credential after a
//! rotation's grace window — and runs it through the secret's provider, at most
//! `[scheduler] concurrency` at a time (operator rotations included) and one operation
//! per secret at a time.
//!
//! - [`plan`]: the due-time arithmetic (pure: a policy, a secret and its status in, a
//!   time out) and the time-ordered queue.
//! - `scheduler`: the loop that runs what is due, and the orderly stop.
//! - [`rotation`]: the staged four steps (create pending, publish, test, promote) with
//!   rollback, claimed once across agents through the [`ledger`], and crash recovery
//!   from the store's journal.
//! - [`refresh`]: OAuth refresh, before expiry and on the spot when an app reads an
//!   expired token (concurrent reads share one refresh).
//! - `validation`: the health check, and the check of a credential an admin is about
//!   to write.
//! - [`next`]: the one table from a provider's answer to what the engine does next
//!   (retry with backoff, roll back and stop, invalid, revoked, reauth-required,
//!   configuration error), which all of the above follow.
//! - [`status`]: each credential's state (active, refreshing, rotating, expired,
//!   invalid, reauth-required, revoked) for the API, the CLI and metrics.
//!
//! The engine reaches the plugins only through the [`Provider`] trait and plans by the
//! time of its [`Clock`]; both come in through [`Parts`], so the state machine is
//! unit-tested with a scripted provider and a clock moved by hand (`lifecycle/tests.rs`).
//! A new version of a secret (a promotion, a refresh) is written by one function,
//! `Engine::commit`, which hands it to the sync's commit ([`crate::sync::Syncer::commit`]),
//! like every other write of the agent. Every operation is audited with its outcome and publishes an
//! event (rotated, refreshed, validated, invalid, rotation-failed, reauth-required)
//! that the SSE watchers and webhooks receive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};

use crate::audit::{Audit, Outcome, Record};
use crate::clock::Clock;
use crate::events::{Event, Events, Kind};
use crate::path::{PathError, Prefix, SecretPath};
use crate::providers::{Credential, Failure, LifecycleSpec, Provider};
use crate::store::{self, Secret, Store};
use crate::sync::{Change, Committed, Syncer};

pub mod ledger;
pub mod next;
pub mod plan;
mod refresh;
mod rotation;
mod scheduler;
pub mod status;
mod validation;

pub use rotation::Outcome as RotationOutcome;
pub use scheduler::Stopped;
pub use status::{State, Status};
pub use validation::{Checked, Refusal};

use plan::Plan;

/// The audit trail's name for the engine.
const ACTOR: &str = "latchkey:lifecycle";

/// `[scheduler]`: how the lifecycle engine runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSpec {
    /// This agent's name in coordination records [default: a random id kept beside
    /// the store]. Agents sharing an upstream must have different names.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where coordination records live, in the upstream's path space.
    #[serde(default = "default_ledger_prefix")]
    pub ledger_prefix: String,
    /// How long a claim on a rotation holds without being renewed.
    #[serde(default = "default_lease", with = "crate::config::duration::required")]
    pub lease: Duration,
    /// Operations running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        SchedulerSpec {
            node_id: None,
            ledger_prefix: default_ledger_prefix(),
            lease: default_lease(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_ledger_prefix() -> String {
    "_latchkey/lifecycle".to_owned()
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_concurrency() -> usize {
    4
}

/// Why an operation could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No policy covers the path.
    #[error("no [[lifecycle]] rule covers {0}")]
    NoPolicy(SecretPath),
    /// The secret does not exist.
    #[error("secret {0} not found")]
    NotFound(SecretPath),
    /// The provider does not accept a credential an admin is about to write.
    #[error("the provider refused the credential for {path}")]
    Refused {
        /// The secret.
        path: SecretPath,
        /// Why (the provider's words; never values).
        reason: Refusal,
    },
    /// The provider did not give the answer asked for: its `provider-error`, or a
    /// fault in the plugin host (trap, deadline, memory limit). The engine has acted
    /// on it as [`next::decide`] says.
    #[error(transparent)]
    Provider(#[from] Failure),
    /// The engine is stopping: the operation did not start, or a rotation stopped
    /// between two steps with its progress journalled (the next start finishes it or
    /// rolls it back).
    #[error("the lifecycle engine is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The upstream or the sync failed.
    #[error(transparent)]
    Sync(#[from] crate::sync::Error),
    /// The coordination record could not be used.
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    /// The coordination record of a secret has no valid path under `ledger_prefix`.
    #[error("no coordination record path for {path}")]
    LedgerPath {
        /// The secret.
        path: SecretPath,
        /// Why.
        #[source]
        source: PathError,
    },
}

/// What the engine needs from the agent.
pub struct Parts {
    /// The plugins and rules (the plugin host in the agent, a fake in tests).
    pub providers: Arc<dyn Provider>,
    /// The encrypted store.
    pub store: Store,
    /// The event bus.
    pub events: Events,
    /// The upstream sync (the store itself without an `[upstream]`), through whose
    /// commit the engine writes.
    pub sync: Arc<Syncer>,
    /// The audit trail.
    pub audit: Audit,
    /// Settings.
    pub spec: SchedulerSpec,
    /// The time the plan is made by.
    pub clock: Clock,
    /// Where finished operations are counted for `/metrics`.
    pub outcomes: crate::metrics::LifecycleOutcomes,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn Provider>,
    store: Store,
    events: Events,
    sync: Arc<Syncer>,
    audit: Audit,
    spec: SchedulerSpec,
    clock: Clock,
    outcomes: crate::metrics::LifecycleOutcomes,
    node: String,
    ledger: ledger::Ledger,
    status: status::Table,
    /// One operation per secret at a time.
    locks: Mutex<HashMap<SecretPath, Arc<tokio::sync::Mutex<()>>>>,
    /// `[scheduler] concurrency`; closed when the engine stops.
    permits: Semaphore,
    /// Bounds concurrent reads of coordination records (`learn_record`).
    reads: Arc<Semaphore>,
    plan: Mutex<Plan>,
    replan: Notify,
    /// Operations running now, and whether the engine is stopping.
    running: scheduler::Running,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.inner.node)
            .field("ledger", &self.inner.ledger)
            .finish_non_exhaustive()
    }
}

/// The node id kept in the state folder: made once, reused on every start, so a
/// restarted agent recognises its own claims.
fn node_id(spec: &SchedulerSpec, store: &Store) -> String {
    if let Some(id) = &spec.node_id {
        return id.clone();
    }
    let file = store.state_file(crate::state_file::NODE_ID);
    if let Ok(Some(raw)) = crate::state_file::read(&file) {
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim();
        if !text.is_empty() {
            return text.to_owned();
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut bytes = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let id = format!(
        "{}-{}",
        if host.is_empty() { "agent" } else { &host },
        hex::encode(bytes)
    );
    if let Err(e) = crate::state_file::replace(&file, id.as_bytes()) {
        tracing::warn!(file = %file.display(), error = %e, "cannot keep the node id; it changes on restart");
    }
    id
}

impl Engine {
    /// Builds the engine (nothing runs until [`Engine::spawn`]).
    pub fn new(parts: Parts) -> Engine {
        let node = node_id(&parts.spec, &parts.store);
        let status = status::Table::kept_in(parts.store.state_file(crate::state_file::LIFECYCLE));
        let ledger = ledger::Ledger::new(parts.sync.clone());
        Engine {
            inner: Arc::new(Inner {
                permits: Semaphore::new(parts.spec.concurrency.max(1)),
                reads: Arc::new(Semaphore::new(parts.spec.concurrency.max(1))),
                provider: parts.providers,
                store: parts.store,
                events: parts.events,
                sync: parts.sync,
                audit: parts.audit,
                spec: parts.spec,
                clock: parts.clock,
                outcomes: parts.outcomes,
                node,
                ledger,
                status,
                locks: Mutex::new(HashMap::new()),
                plan: Mutex::new(Plan::default()),
                replan: Notify::new(),
                running: scheduler::Running::default(),
            }),
        }
    }

    /// This agent's node id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The policy covering `path`, if any.
    pub fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        self.inner.provider.policy(path)
    }

    /// Whether reading `secret` must first refresh it: a refresh policy covers it
    /// and it has expired.
    pub fn refreshes_on_read(&self, path: &SecretPath, expires_at: Option<i64>) -> bool {
        expires_at.is_some_and(|t| t <= self.now())
            && self
                .policy(path)
                .is_some_and(|p| p.refresh_before.is_some())
    }

    /// Statuses under `prefix`.
    pub fn statuses(&self, prefix: &Prefix) -> Vec<(SecretPath, Status)> {
        self.inner.status.list(prefix)
    }

    /// One status.
    pub fn status(&self, path: &SecretPath) -> Option<Status> {
        self.inner.status.get(path)
    }

    /// Credentials per state, for metrics.
    pub fn state_counts(&self) -> std::collections::BTreeMap<State, usize> {
        self.inner.status.counts()
    }

    /// Unix seconds by the engine's clock.
    fn now(&self) -> i64 {
        self.inner.clock.unix()
    }

    /// `path` at `selector`, read on the blocking pool (the one way async code calls
    /// into the store).
    async fn stored(
        &self,
        path: &SecretPath,
        selector: store::Selector,
    ) -> Result<Option<Secret>, store::Error> {
        let path = path.clone();
        self.inner
            .store
            .blocking(move |store| store.get(&path, selector))
            .await
    }

    /// The current version of `path`, which must exist.
    async fn required(&self, path: &SecretPath) -> Result<Secret, Error> {
        self.stored(path, store::Selector::Current)
            .await?
            .ok_or_else(|| Error::NotFound(path.clone()))
    }

    fn path_lock(&self, path: &SecretPath) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.inner.locks);
        Arc::clone(locks.entry(path.clone()).or_default())
    }

    fn status_of(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
        secret: &Secret,
        now: i64,
    ) -> Status {
        self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| s.clone(),
        )
    }

    fn set_state(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
        secret: &Secret,
        state: State,
        detail: &str,
    ) {
        let now = self.now();
        self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| s.set(state, detail, now),
        );
    }

    /// Writes a new current version (a promoted rotation, a refreshed token) through
    /// the sync's commit: upstream first (with check-and-set on `cas`), then the store,
    /// the cache and the event. The engine's only write of a secret.
    async fn commit(
        &self,
        path: &SecretPath,
        cred: &Credential,
        cas: u64,
    ) -> Result<Secret, Error> {
        let write = Self::write_of(cred, cas);
        Self::written(
            path,
            self.inner.sync.commit(path, Change::Write(write)).await?,
        )
    }

    /// [`Engine::commit`] of a credential the upstream already holds as its pending
    /// version `staged` (a rotation staged on AWS): the upstream promotes it.
    async fn commit_staged(
        &self,
        path: &SecretPath,
        cred: &Credential,
        cas: u64,
        staged: u64,
    ) -> Result<Secret, Error> {
        let committed = self
            .inner
            .sync
            .commit_staged(path, Self::write_of(cred, cas), staged)
            .await?;
        Self::written(path, committed)
    }

    fn write_of(cred: &Credential, cas: u64) -> store::Write {
        store::Write {
            fields: cred.fields.clone(),
            kind: Some(cred.kind.clone()),
            expires_at: cred.expires_at,
            cas: Some(cas),
        }
    }

    fn written(path: &SecretPath, committed: Committed) -> Result<Secret, Error> {
        match committed {
            Committed::Written(secret) => Ok(secret),
            Committed::Deleted { .. } => Err(Error::NotFound(path.clone())),
        }
    }

    /// Records how an operation ended: the status change, the event (if any) and the
    /// audit record, all for `version`.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        path: &SecretPath,
        plugin: &str,
        version: u64,
        event: Option<Kind>,
        op: &'static str,
        outcome: Outcome,
        detail: &str,
        change: impl FnOnce(&mut Status),
    ) {
        let now = self.now();
        self.inner
            .status
            .update(path, || Status::new(plugin, version, now), change);
        if let Some(kind) = event {
            self.inner
                .events
                .publish(Event::now(kind, path.clone(), Some(version)));
        }
        self.audit(op, path, Some(version), outcome, detail);
    }

    fn audit(
        &self,
        op: &'static str,
        path: &SecretPath,
        version: Option<u64>,
        outcome: Outcome,
        detail: &str,
    ) {
        // Every finished operation is audited here, so it is counted here too.
        if let Some(policy) = self.policy(path) {
            self.inner
                .outcomes
                .count(&policy.plugin, op, outcome == Outcome::Ok);
        }
        let mut record = Record::now(ACTOR.into(), None, op, Some(path.as_str()));
        record.outcome = outcome;
        record.version = version;
        if outcome != Outcome::Ok {
            record.status = 500;
            record.code = Some("lifecycle_failed");
        }
        if !detail.is_empty() {
            record.detail = Some(detail.into());
        }
        self.inner.audit.try_record(record);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
