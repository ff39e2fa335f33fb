//! The lifecycle engine: keeps every credential under a `[[lifecycle]]` policy alive.
//!
//! For each such secret it plans the next thing due — a health check
//! (`validate_every`), an OAuth refresh before expiry (`refresh_before`), a rotation
//! (`rotate_every`, `rotate_before_expiry`), retiring the previous credential after a
//! rotation's grace window — and runs it through the secret's provider plugin, at most
//! `[scheduler] concurrency` at a time (operator rotations included) and one operation
//! per secret at a time.
//!
//! - [`rotation`]: the staged four steps (create pending, publish, test, promote) with
//!   rollback, claimed once across agents through the [`ledger`], and crash recovery
//!   from the store's journal.
//! - [`refresh`]: OAuth refresh, before expiry and on the spot when an app reads an
//!   expired token (concurrent reads share one refresh).
//! - [`status`]: each credential's state (active, refreshing, rotating, expired,
//!   invalid, reauth-required, revoked) for the API, the CLI and metrics.
//!
//! The plan is a time-ordered set; the loop sleeps until the earliest entry or until a
//! change to a looked-after secret (an event) asks for a new plan, so thousands of idle
//! policies cost nothing between their due times. Every operation is audited with its
//! outcome and publishes an event (rotated, refreshed, validated, invalid,
//! rotation-failed, reauth-required) that the SSE watchers and webhooks receive.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{watch, Notify, Semaphore};

use crate::audit::{Audit, Outcome, Record};
use crate::backoff::Backoff;
use crate::cache::HotCache;
use crate::clock::unix_now;
use crate::events::{Event, Events, Kind};
use crate::path::{Prefix, SecretPath};
use crate::providers::{Checked, Credential, LifecycleSpec, Providers};
use crate::store::{self, Secret, Selector, Store};
use crate::sync::Syncer;

pub mod ledger;
mod refresh;
mod rotation;
pub mod status;

pub use rotation::Outcome as RotationOutcome;
pub use status::{State, Status};

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
    /// Another operation (here or on another agent) holds the secret.
    #[error("{0} is busy: {1}")]
    Busy(SecretPath, String),
    /// The provider refused (the reason is the provider's, without values).
    #[error("{0}")]
    Refused(String),
    /// The provider or the service could not answer now.
    #[error("{0}")]
    Unavailable(String),
    /// The plugin itself failed: a trap, its deadline, its memory limit.
    #[error(transparent)]
    Plugin(#[from] crate::providers::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The upstream or the sync failed.
    #[error(transparent)]
    Sync(#[from] crate::sync::Error),
    /// The coordination record could not be used.
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
}

/// What the engine needs from the agent.
pub struct Parts {
    /// The plugins and rules.
    pub providers: Arc<Providers>,
    /// The encrypted store.
    pub store: Store,
    /// The hot cache (invalidated on local writes).
    pub cache: Arc<HotCache>,
    /// The event bus.
    pub events: Events,
    /// The upstream sync, when there is an upstream.
    pub sync: Option<Arc<Syncer>>,
    /// The audit trail.
    pub audit: Audit,
    /// Settings.
    pub spec: SchedulerSpec,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Arc<Providers>,
    store: Store,
    cache: Arc<HotCache>,
    events: Events,
    sync: Option<Arc<Syncer>>,
    audit: Audit,
    spec: SchedulerSpec,
    node: String,
    ledger: ledger::Ledger,
    status: status::Table,
    /// One operation per secret at a time.
    locks: Mutex<HashMap<SecretPath, Arc<tokio::sync::Mutex<()>>>>,
    permits: Semaphore,
    /// Bounds concurrent reads of coordination records (`learn_record`).
    reads: Arc<Semaphore>,
    plan: Mutex<Plan>,
    replan: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.inner.node)
            .field("ledger", &self.inner.ledger)
            .finish_non_exhaustive()
    }
}

/// Due times, earliest first.
#[derive(Default)]
struct Plan {
    queue: BTreeSet<(i64, SecretPath)>,
    at: HashMap<SecretPath, i64>,
}

impl Plan {
    fn set(&mut self, path: &SecretPath, when: Option<i64>) {
        if let Some(old) = self.at.remove(path) {
            self.queue.remove(&(old, path.clone()));
        }
        if let Some(when) = when {
            self.queue.insert((when, path.clone()));
            self.at.insert(path.clone(), when);
        }
    }

    fn pop_due(&mut self, now: i64) -> Vec<SecretPath> {
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

    fn next(&self) -> Option<i64> {
        self.queue.first().map(|(when, _)| *when)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// The node id kept beside the store: made once, reused on every start, so a
/// restarted agent recognises its own claims.
fn node_id(spec: &SchedulerSpec, store: &Store) -> String {
    if let Some(id) = &spec.node_id {
        return id.clone();
    }
    let file = store.dir().with_extension("node-id");
    if let Ok(text) = std::fs::read_to_string(&file) {
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
    if let Err(e) = std::fs::write(&file, &id) {
        tracing::warn!(file = %file.display(), error = %e, "cannot keep the node id; it changes on restart");
    }
    id
}

impl Engine {
    /// Builds the engine (nothing runs until [`Engine::spawn`]).
    pub fn new(parts: Parts) -> Engine {
        let node = node_id(&parts.spec, &parts.store);
        let ledger = match &parts.sync {
            Some(sync) => ledger::Ledger::Upstream(sync.upstream()),
            None => ledger::Ledger::Local(parts.store.clone()),
        };
        Engine {
            inner: Arc::new(Inner {
                permits: Semaphore::new(parts.spec.concurrency.max(1)),
                reads: Arc::new(Semaphore::new(parts.spec.concurrency.max(1))),
                providers: parts.providers,
                store: parts.store,
                cache: parts.cache,
                events: parts.events,
                sync: parts.sync,
                audit: parts.audit,
                spec: parts.spec,
                node,
                ledger,
                status: status::Table::default(),
                locks: Mutex::new(HashMap::new()),
                plan: Mutex::new(Plan::default()),
                replan: Notify::new(),
            }),
        }
    }

    /// This agent's node id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The policy covering `path`, if any.
    pub fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        self.inner.providers.policy(path)
    }

    /// Whether reading `secret` must first refresh it: a refresh policy covers it
    /// and it has expired.
    pub fn refreshes_on_read(&self, path: &SecretPath, expires_at: Option<i64>) -> bool {
        expires_at.is_some_and(|t| t <= unix_now())
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

    /// Recovers rotations a crash interrupted, plans every looked-after secret and
    /// runs until `stop`.
    pub fn spawn(&self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        let mut events = self.inner.events.subscribe();
        tokio::spawn(async move {
            engine.recover().await;
            engine.plan_all();
            // Open grace windows from before a restart: read in the background, so a
            // large fleet of policies does not delay the first plan.
            let learning = engine.clone();
            tokio::spawn(async move { learning.learn_grace_windows().await });
            loop {
                let now = unix_now();
                let due = lock(&engine.inner.plan).pop_due(now);
                for path in due {
                    let engine = engine.clone();
                    tokio::spawn(async move { engine.tick(path).await });
                }
                let sleep_for =
                    lock(&engine.inner.plan)
                        .next()
                        .map_or(Duration::from_secs(3600), |when| {
                            Duration::from_millis(
                                u64::try_from((when - unix_now()).max(0) * 1000).unwrap_or(0),
                            )
                            .max(Duration::from_millis(200))
                        });
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = engine.inner.replan.notified() => {}
                    event = events.recv() => engine.on_event(event),
                }
            }
        })
    }

    fn on_event(&self, event: Result<Event, tokio::sync::broadcast::error::RecvError>) {
        match event {
            Ok(e) if matches!(e.kind, Kind::Updated | Kind::Deleted | Kind::Rotated) => {
                let Some(policy) = self.policy(&e.path) else {
                    return;
                };
                if e.kind == Kind::Deleted {
                    self.inner.status.remove(&e.path);
                    lock(&self.inner.plan).set(&e.path, None);
                    return;
                }
                self.plan_path(&e.path);
                if e.kind == Kind::Updated && rotates(&policy) {
                    // Maybe another agent's rotation, synced in: learn its grace window.
                    let engine = self.clone();
                    let path = e.path.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = engine.inner.reads.acquire().await else {
                            return;
                        };
                        engine.learn_record(&path, &policy).await;
                    });
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.plan_all(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
        }
    }

    /// Plans every looked-after secret in the store.
    fn plan_all(&self) {
        if !self.inner.providers.has_rules() {
            return;
        }
        let entries = match self.inner.store.list(&Prefix::all()) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the store to plan the lifecycle");
                return;
            }
        };
        for entry in entries {
            if !entry
                .path
                .as_str()
                .starts_with(&self.inner.spec.ledger_prefix)
            {
                self.plan_path(&entry.path);
            }
        }
    }

    /// Works out when `path` next needs the engine.
    fn plan_path(&self, path: &SecretPath) {
        let Some(policy) = self.policy(path) else {
            return;
        };
        let secret = match self.inner.store.get(path, Selector::Current) {
            Ok(Some(s)) => s,
            _ => {
                lock(&self.inner.plan).set(path, None);
                return;
            }
        };
        let now = unix_now();
        let when = self.inner.status.update(
            path,
            || Status::new(&plugin_name(&policy), secret.version, now),
            |s| {
                s.version = secret.version;
                let when = next_due(&policy, &secret, s, now)
                    .map(|t| s.not_before.map_or(t, |floor| t.max(floor)));
                s.next_check_at = when;
                when
            },
        );
        lock(&self.inner.plan).set(path, when);
        self.inner.replan.notify_one();
    }

    fn path_lock(&self, path: &SecretPath) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.inner.locks);
        Arc::clone(locks.entry(path.clone()).or_default())
    }

    /// Runs whatever is due for `path`, then plans it again.
    async fn tick(&self, path: SecretPath) {
        let Ok(_permit) = self.inner.permits.acquire().await else {
            return;
        };
        if let Some(policy) = self.policy(&path) {
            if let Err(e) = self.run_due(&path, &policy).await {
                tracing::debug!(path = %path, error = %e, "lifecycle step did not complete");
            }
        }
        self.plan_path(&path);
    }

    async fn run_due(&self, path: &SecretPath, policy: &LifecycleSpec) -> Result<(), Error> {
        let Some(secret) = self.inner.store.get(path, Selector::Current)? else {
            return Ok(());
        };
        let now = unix_now();
        if self.inner.store.journal_get(path)?.is_some() {
            // A rotation this agent could not finish earlier: finish or roll it back.
            return self.resume(path).await;
        }
        let status = self.status_of(path, policy, &secret, now);
        if status.retire_at.is_some_and(|t| t <= now) {
            self.finish_grace(path).await?;
        }
        if rotation_due(policy, &secret, &status, now) {
            if let RotationOutcome::Busy { .. } = self.rotate(path, false).await? {
                // Held elsewhere: look again when its lease may have lapsed.
                let floor = now + secs(self.inner.spec.lease).clamp(1, 5);
                self.inner
                    .status
                    .update(path, || status.clone(), |s| s.not_before = Some(floor));
            }
            return Ok(());
        }
        if refresh_due(policy, &secret, &status, now) && status.state != State::ReauthRequired {
            self.refresh(path, false).await?;
            return Ok(());
        }
        if validation_due(policy, &status, now) {
            self.validate_now(path).await?;
        }
        if secret.expires_at.is_some_and(|t| t <= now)
            && !matches!(status.state, State::ReauthRequired | State::Invalid)
        {
            self.set_state(path, policy, &secret, State::Expired, "past its expiry");
        }
        Ok(())
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
            || Status::new(&plugin_name(policy), secret.version, now),
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
        let now = unix_now();
        self.inner.status.update(
            path,
            || Status::new(&plugin_name(policy), secret.version, now),
            |s| s.set(state, detail, now),
        );
    }

    /// Validates the current version now (the health check, `latchkey validate` and
    /// `POST /v1/validate`), records the state and publishes `validated` or `invalid`.
    pub async fn validate_now(&self, path: &SecretPath) -> Result<Checked, Error> {
        let policy = self
            .policy(path)
            .ok_or_else(|| Error::NoPolicy(path.clone()))?;
        let secret = self
            .inner
            .store
            .get(path, Selector::Current)?
            .ok_or_else(|| Error::NotFound(path.clone()))?;
        let checked = self.inner.providers.validate(&secret).await?;
        let forbidden = forbidden(&policy, &checked);
        let now = unix_now();
        let (state, detail) = match (&checked.error, &forbidden) {
            (Some(code), _) => (
                None,
                format!("validation failed: {code}: {}", checked.detail),
            ),
            (None, Some(p)) => (
                Some(State::Invalid),
                format!("holds forbidden permission {p}"),
            ),
            (None, None) if checked.valid => (Some(State::Active), checked.detail.clone()),
            (None, None) if checked.rejected => (
                Some(State::Revoked),
                format!("the service refused the credential: {}", checked.detail),
            ),
            (None, None) => (Some(State::Invalid), checked.detail.clone()),
        };
        self.inner.status.update(
            path,
            || Status::new(&plugin_name(&policy), secret.version, now),
            |s| {
                s.version = secret.version;
                s.checked_at = Some(now);
                s.permissions = checked.permissions.clone();
                match state {
                    Some(State::Active) => {
                        s.validated_at = Some(now);
                        let keep = matches!(s.state, State::Rotating | State::Refreshing);
                        if !keep {
                            s.set(State::Active, &detail, now);
                        }
                    }
                    Some(other) => s.set(other, &detail, now),
                    // Could not tell: keep the state, say why, look again later.
                    None => s.detail = detail.clone(),
                }
            },
        );
        if let Some(state) = state {
            let kind = if state == State::Active {
                Kind::Validated
            } else {
                Kind::Invalid
            };
            self.inner
                .events
                .publish(Event::now(kind, path.clone(), Some(secret.version)));
        }
        self.audit(
            "validate",
            path,
            Some(secret.version),
            if state == Some(State::Active) {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            &detail,
        );
        Ok(checked)
    }

    /// Checks a credential an admin is about to write, when the policy asks for it
    /// (`validate_on_write`) or the writer does. `Err(Refused)` carries the reason.
    pub async fn check_before_write(
        &self,
        path: &SecretPath,
        cred: &Credential,
        asked: bool,
    ) -> Result<(), Error> {
        let Some(policy) = self.policy(path) else {
            if asked {
                return Err(Error::NoPolicy(path.clone()));
            }
            return Ok(());
        };
        if !(asked || policy.validate_on_write) {
            return Ok(());
        }
        let checked = self.inner.providers.validate_credential(path, cred).await?;
        let refused = match (&checked.error, forbidden(&policy, &checked)) {
            (Some(code), _) => {
                return Err(Error::Unavailable(format!(
                    "the provider could not check the credential: {code}: {}",
                    checked.detail
                )))
            }
            (None, Some(p)) => Some(format!("the credential holds forbidden permission {p}")),
            (None, None) if !checked.valid => Some(format!(
                "the provider rejected the credential: {}",
                checked.detail
            )),
            (None, None) => None,
        };
        match refused {
            Some(reason) => {
                self.audit("validate-write", path, None, Outcome::Denied, &reason);
                Err(Error::Refused(reason))
            }
            None => Ok(()),
        }
    }

    /// Writes a new current version: upstream first (with `cas`), then the cache.
    async fn commit(
        &self,
        path: &SecretPath,
        cred: &Credential,
        cas: u64,
    ) -> Result<Secret, Error> {
        let write = store::Write {
            fields: cred.fields.clone(),
            kind: Some(cred.kind.clone()),
            expires_at: cred.expires_at,
            cas: Some(cas),
        };
        match &self.inner.sync {
            Some(sync) => Ok(sync.write(path, write).await?),
            None => {
                let secret = self.inner.store.put(path, write)?;
                self.inner.store.flush().await?;
                self.inner.cache.invalidate(path);
                self.inner.events.publish(Event::now(
                    Kind::Updated,
                    path.clone(),
                    Some(secret.version),
                ));
                Ok(secret)
            }
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
        let now = unix_now();
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

fn plugin_name(policy: &LifecycleSpec) -> String {
    policy.plugin.clone()
}

/// The first forbidden permission the validation reports as granted.
fn forbidden(policy: &LifecycleSpec, checked: &Checked) -> Option<String> {
    checked
        .permissions
        .iter()
        .find(|(name, granted)| {
            *granted
                && policy
                    .forbid_permissions
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name))
        })
        .map(|(name, _)| name.clone())
}

/// Whether `policy` rotates at all.
fn rotates(policy: &LifecycleSpec) -> bool {
    policy.rotate_every.is_some() || policy.rotate_before_expiry.is_some()
}

fn rotation_due(policy: &LifecycleSpec, secret: &Secret, status: &Status, now: i64) -> bool {
    rotation_at(policy, secret, status).is_some_and(|t| t <= now)
}

/// When the next rotation is due: the earlier of `rotate_every` after the last
/// rotation (or write) and `rotate_before_expiry` before expiry; after failures, not
/// before the retry time; never after the attempts are used up.
fn rotation_at(policy: &LifecycleSpec, secret: &Secret, status: &Status) -> Option<i64> {
    if policy.rotate_every.is_none() && policy.rotate_before_expiry.is_none() {
        return None;
    }
    if status.failures >= policy.max_attempts {
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

fn refresh_due(policy: &LifecycleSpec, secret: &Secret, status: &Status, now: i64) -> bool {
    refresh_at(policy, secret, status).is_some_and(|t| t <= now)
}

/// `refresh_before` ahead of expiry; after failures, not before the retry time.
fn refresh_at(policy: &LifecycleSpec, secret: &Secret, status: &Status) -> Option<i64> {
    let due = policy
        .refresh_before
        .zip(secret.expires_at)
        .map(|(before, exp)| exp - secs(before))?;
    Some(match status.retry_at {
        Some(retry) if status.failures > 0 => due.max(retry),
        _ => due,
    })
}

fn validation_due(policy: &LifecycleSpec, status: &Status, now: i64) -> bool {
    validation_at(policy, status).is_some_and(|t| t <= now)
}

fn validation_at(policy: &LifecycleSpec, status: &Status) -> Option<i64> {
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
fn next_due(policy: &LifecycleSpec, secret: &Secret, status: &Status, now: i64) -> Option<i64> {
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
fn backoff(base: Duration, failures: u32) -> i64 {
    let schedule = Backoff::new(base.max(Duration::from_secs(1)), Duration::from_secs(3600));
    secs(schedule.delay(failures))
}

#[cfg(test)]
mod tests;
