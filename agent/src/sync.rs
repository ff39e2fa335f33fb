//! Keeps the local store in step with the upstream, keeps serving when it is down, and
//! owns every write.
//!
//! The upstream is the source of truth; the store is an encrypted copy that apps read
//! from. There is always an upstream: without an `[upstream]` it is the store itself
//! ([`crate::upstream::local`]), which has nothing to poll and is never stale.
//! [`Syncer`] owns every conversation with the upstream and every change of the store:
//!
//! - **Commit.** Every write and delete of a secret — the API's (and so the CLI's and
//!   `latchkey import`'s), the lifecycle engine's promotions and refreshes, and what
//!   polls and misses pull — goes through [`Syncer::commit`] (the agent's own changes)
//!   and its second half `land` (changes the upstream already holds), in one order:
//!
//!   1. **upstream check-and-set** ([`Upstream::put`] / [`Upstream::delete`]; for the
//!      local backend this is the store's own transaction and flush). A lost
//!      check-and-set is a conflict, never a silent overwrite; nothing below happens.
//!   2. **store write** of the version the upstream assigned, on the blocking pool.
//!   3. **flush**: the write is durable (group commit: concurrent writers share one).
//!   4. **cache invalidation** of the path, also when the flush failed (the store
//!      already serves the new value; reads in flight cannot re-insert the old one,
//!      `HotCache::insert_if_unchanged`).
//!   5. **event**, only after the flush succeeded.
//!
//!   So a write is acknowledged (the call returns `Ok`) only once it is durable; a
//!   read that starts after the acknowledgement never gets an older value from the
//!   hot cache; and a subscriber that reads on an event finds the new value. A poll
//!   lands its changes in batches: one store task, one flush, then the invalidations
//!   and the events.
//!
//! - **Pull.** At start (in the background: serving never waits for the upstream) and
//!   then every `poll_interval`, or at once on [`Syncer::sync_now`], it lists each
//!   configured prefix (versions only, no values), fetches what changed through a
//!   bounded pool, and drops what was deleted upstream.
//! - **Deletion guard.** A poll whose listing lacks more than `max_deleted_share`
//!   (default half) of a prefix's cached secrets, or every one of them, drops none of
//!   those: an empty or wrong answer (a restarted dev server, a mis-set mount or path
//!   template, a token that suddenly sees nothing) must not empty every agent of a
//!   fleet. Secrets the upstream lists *as deleted* (a KV v2 soft delete, an AWS
//!   scheduled deletion: [`upstream::RemoteMeta::tombstone`]) are deletions by name
//!   and always go. Held secrets stay served, marked stale; each raises one
//!   `deletion-held` event, health says `degraded`, and the hold ends when the
//!   upstream lists them again or an operator runs `latchkey sync
//!   --accept-deletions` ([`Syncer::poll_accepting_deletions`]). Strays (below) are
//!   checked by name, so one that is gone goes; they are held when several vanish
//!   at once past the share, or when a prefix was held in the same poll.
//! - **Misses.** A read of a path the store lacks asks the upstream once; concurrent
//!   misses for the same path share that one request (single-flight). Cached paths
//!   outside every prefix (from misses or writes) are checked one by one on each
//!   poll, so they follow the upstream too.
//! - **Outages.** A failed poll is retried with exponential backoff and jitter. Until
//!   the grace period has passed since the last good sync, reads are served from the
//!   store marked `stale`; after it, reads fail with `upstream_unavailable`. After a
//!   restart, a cache older than one poll interval is `stale` until a poll succeeds.
//!   A secret the upstream lists but refuses to return (policy) is skipped, not
//!   taken for an outage. The time
//!   of the last good sync is kept on disk, so an agent restarted during an outage
//!   serves from its cache at once and still knows how old that cache is.
//! - **Never backwards.** A pulled version older than the one held, and not written
//!   after it (which would be a secret deleted and created again upstream), is
//!   refused and said once per version: an acknowledged write is never lost to an
//!   upstream that reports a stale current version. (A version numbered only by the
//!   second it was written, [`RemoteSecret::ordered`] false, in the same second as
//!   the one held cannot be ordered, and is taken.)
//! - **Budget.** One semaphore bounds concurrent upstream calls from polls, misses and
//!   writes together, so a large sync cannot flood the upstream.
//! - **Blocking.** Every store call made here runs on the blocking pool through
//!   [`Store::blocking`], the one convention for calling sled from async code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, OnceCell, Semaphore};

use crate::backoff::Backoff;
use crate::cache::HotCache;
use crate::events::{Event, Events, Kind};
use crate::path::{Prefix, SecretPath};
use crate::store::{self, Secret, Selector, Store};
use crate::upstream::{self, RemoteSecret, Upstream};

/// The first delay of the poll's retry schedule (before it doubles).
const POLL_RETRY_BASE: Duration = Duration::from_millis(250);
/// Most pulled changes a poll lands at once (one store task, one flush).
const LAND_BATCH: usize = 64;

/// The default of `[sync] max_deleted_share`: one poll may drop at most half of a
/// prefix's cached secrets for vanishing from the listing.
pub const DEFAULT_MAX_DELETED_SHARE: f64 = 0.5;

/// Whether dropping `vanished` of a prefix's `cached` secrets, because the upstream's
/// listing no longer names them, looks like an accident rather than deletions: more
/// than `share` of them, or every one (an empty listing where the cache holds
/// secrets is a restarted dev server, a wrong mount or path template, a token that
/// sees nothing, far more often than a team deleting everything). Secrets the
/// upstream lists as deleted (tombstones) are not counted: each was deleted by name.
pub fn suspicious(cached: usize, vanished: usize, share: f64) -> bool {
    vanished > 0 && (vanished >= cached || vanished as f64 > share * cached as f64)
}

/// When every address's circuit is open: how long until the first may be probed.
fn first_probe(addresses: &[upstream::AddressState]) -> Option<Duration> {
    use upstream::breaker::BreakerState;
    addresses
        .iter()
        .map(|a| match a.breaker {
            BreakerState::Open { retry_in } => Some(retry_in),
            BreakerState::Closed | BreakerState::HalfOpen => None,
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// How many of `landed` deleted a secret the store held.
fn deletions(landed: &[Landed]) -> usize {
    landed
        .iter()
        .filter(|l| l.changed && matches!(l.committed, Committed::Deleted { .. }))
        .count()
}

/// How the sync behaves (`[sync]` in the config).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Prefixes pulled at start and on every poll (`""` is everything).
    pub prefixes: Vec<Prefix>,
    /// Time between polls while the upstream answers.
    pub poll_interval: Duration,
    /// How long cached values are served after the last good sync while the upstream
    /// fails.
    pub grace: Duration,
    /// Most concurrent upstream calls.
    pub concurrency: usize,
    /// Longest wait between retries while the upstream fails.
    pub max_backoff: Duration,
    /// The largest share of a prefix's cached secrets one poll may drop because the
    /// listing lacks them ([`suspicious`]); the rest is held until an operator
    /// accepts ([`Syncer::poll_accepting_deletions`]) or the upstream lists them again.
    pub max_deleted_share: f64,
}

#[cfg(test)]
impl SyncConfig {
    /// Everything pulled, a 30 s poll, a five-minute grace period.
    pub(crate) fn for_test() -> Self {
        SyncConfig {
            prefixes: vec![Prefix::all()],
            poll_interval: Duration::from_secs(30),
            grace: Duration::from_secs(300),
            concurrency: 4,
            max_backoff: Duration::from_secs(30),
            max_deleted_share: DEFAULT_MAX_DELETED_SHARE,
        }
    }
}

/// Why a sync operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream said no or could not be reached.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A shared miss fetch failed; the cause is shared with the other waiters.
    #[error("{0}")]
    Shared(Arc<Error>),
}

impl Error {
    /// The upstream error behind this one, if any.
    pub fn upstream(&self) -> Option<&upstream::Error> {
        match self {
            Error::Upstream(e) => Some(e),
            Error::Shared(e) => e.upstream(),
            Error::Store(_) => None,
        }
    }
}

/// How fresh the cached values are, as a read sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The last poll succeeded (or none has failed yet).
    Fresh {
        /// Seconds since the last good sync, when there was one.
        age_seconds: Option<u64>,
    },
    /// The upstream is failing; cached values are still within the grace period.
    Stale {
        /// Seconds since the last good sync, when there was one.
        age_seconds: Option<u64>,
    },
    /// The upstream has been failing for longer than the grace period.
    Expired {
        /// Seconds since the last good sync.
        age_seconds: u64,
    },
}

/// What one poll did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Secrets the upstream listed.
    pub listed: usize,
    /// Secrets fetched because their version changed.
    pub fetched: usize,
    /// Secrets dropped because the upstream no longer has them.
    pub deleted: usize,
    /// Secrets listed but not fetched because the upstream refused them (a policy
    /// that denies reading one path); their cached copies, if any, are kept.
    pub skipped: usize,
    /// Cached secrets the upstream no longer lists but the deletion guard kept,
    /// because the poll would have dropped too many of them at once.
    pub held: usize,
    /// Milliseconds the poll took.
    pub elapsed_ms: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Health {
    /// Unix ms of the last fully successful poll.
    last_success_ms: Option<i64>,
    /// Unix ms of the first failure in the current run of failures.
    #[serde(skip)]
    failing_since_ms: Option<i64>,
    /// Failures in a row.
    #[serde(skip)]
    failures: u32,
    /// Whether a poll has succeeded since this process started. Until one has, a
    /// cache older than a poll interval is not known to be current (a restart during
    /// an outage, or against a hung upstream whose first poll has not failed yet).
    #[serde(skip)]
    confirmed: bool,
}

type MissCell = Arc<OnceCell<Result<bool, Arc<Error>>>>;

/// The sync engine; shared by the API (reads, writes) and its own poll task.
pub struct Syncer {
    /// The upstream client; a reload may replace it with one of the same kind.
    upstream: std::sync::RwLock<Arc<dyn Upstream>>,
    /// Its name and whether it is the store itself (the same for every client a
    /// reload puts in place; read on every request without the lock).
    name: String,
    local: bool,
    store: Store,
    cache: Arc<HotCache>,
    events: Events,
    /// Replaced by a reload ([`Syncer::reconfigure`]).
    config: arc_swap::ArcSwap<SyncConfig>,
    budget: Arc<Semaphore>,
    health: Mutex<Health>,
    misses: Mutex<HashMap<SecretPath, MissCell>>,
    /// Cached secrets no configured prefix covers (fetched on a miss, or written
    /// through the agent): no list sees them, so each poll checks them one by one.
    /// `None` until the first poll has looked for those an earlier run left.
    strays: Mutex<Option<HashSet<SecretPath>>>,
    /// Cached secrets the deletion guard holds, each with the prefix whose listing
    /// lacked it (`None`: a stray, checked alone); replaced by each complete poll.
    held: Mutex<BTreeMap<SecretPath, Option<Prefix>>>,
    /// Whether `held` is non-empty, read on every request without the lock.
    holding: AtomicBool,
    /// Pulled versions refused for going backwards, each said once.
    inconsistent: Mutex<HashSet<(SecretPath, u64)>>,
    backwards: AtomicU64,
    /// Listed secrets the upstream refuses to return, with how many polls in a row.
    refusals: Mutex<HashMap<SecretPath, u64>>,
    wake: Notify,
    state_file: PathBuf,
    /// Where the sync loop counts its polls (`/metrics`), once the agent says.
    polls: std::sync::OnceLock<crate::metrics::SyncPolls>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("upstream", &self.name)
            .field("config", &**self.config.load())
            .finish()
    }
}

impl Syncer {
    /// A syncer over `store`. `state_file` keeps the time of the last good sync.
    pub fn new(
        upstream: Arc<dyn Upstream>,
        store: Store,
        cache: Arc<HotCache>,
        events: Events,
        config: SyncConfig,
        state_file: PathBuf,
    ) -> Arc<Self> {
        let health = crate::state_file::read(&state_file)
            .ok()
            .flatten()
            .and_then(|raw| serde_json::from_slice::<Health>(&raw).ok())
            .unwrap_or_default();
        Arc::new(Syncer {
            budget: Arc::new(Semaphore::new(config.concurrency.max(1))),
            name: upstream.name().to_owned(),
            local: upstream.is_local(),
            upstream: std::sync::RwLock::new(upstream),
            store,
            cache,
            events,
            config: arc_swap::ArcSwap::from_pointee(config),
            health: Mutex::new(health),
            misses: Mutex::new(HashMap::new()),
            strays: Mutex::new(None),
            held: Mutex::new(BTreeMap::new()),
            holding: AtomicBool::new(false),
            inconsistent: Mutex::new(HashSet::new()),
            backwards: AtomicU64::new(0),
            refusals: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            state_file,
            polls: std::sync::OnceLock::new(),
        })
    }

    /// A syncer whose upstream is `store` itself ([`crate::upstream::local`]), named
    /// `name`: what the agent runs without an `[upstream]`, and what tests use.
    pub fn over_store(
        name: &str,
        store: Store,
        cache: Arc<HotCache>,
        events: Events,
        config: SyncConfig,
    ) -> Arc<Self> {
        let upstream = Arc::new(crate::upstream::local::Local::new(name, store.clone()));
        let state_file = store.state_file(crate::state_file::SYNC);
        Syncer::new(upstream, store, cache, events, config, state_file)
    }

    /// The upstream itself, for the lifecycle engine's coordination records and
    /// re-reads (calls made through it bypass the sync's concurrency budget).
    pub fn upstream(&self) -> Arc<dyn Upstream> {
        Arc::clone(&self.upstream.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts a reloaded `[sync]` in force, and `upstream` (the client built from a
    /// reloaded `[upstream]` of the same kind) when given; calls in flight finish on
    /// the old client. The next poll starts at once and lists the new prefixes; the
    /// paths outside them are looked for again. The concurrency budget stays as at
    /// start.
    pub fn reconfigure(&self, config: SyncConfig, upstream: Option<Arc<dyn Upstream>>) {
        self.config.store(Arc::new(config));
        if let Some(upstream) = upstream {
            *self.upstream.write().unwrap_or_else(|e| e.into_inner()) = upstream;
        }
        *self.strays.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.wake.notify_one();
    }

    /// The upstream's addresses and their circuit breakers.
    pub fn addresses(&self) -> Vec<upstream::AddressState> {
        self.upstream().addresses()
    }

    /// The upstream's name.
    pub fn upstream_name(&self) -> &str {
        &self.name
    }

    /// Whether the upstream is the agent's own store (no `[upstream]`, or `kind =
    /// "local"`): nothing to poll, nothing ever stale.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether the first poll since start has ended, well or badly (always, for the
    /// store itself): from then on reads know whether they serve fresh or stale.
    pub fn first_poll_decided(&self) -> bool {
        if self.is_local() {
            return true;
        }
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.confirmed || health.failing_since_ms.is_some()
    }

    /// How fresh the cached values are right now; `None` when the upstream is the
    /// store itself, which is always current.
    pub fn freshness(&self) -> Option<Freshness> {
        if self.is_local() {
            return None;
        }
        Some(self.remote_freshness())
    }

    fn remote_freshness(&self) -> Freshness {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::now_ms();
        let age_ms = health
            .last_success_ms
            .map(|t| now.saturating_sub(t).max(0) as u64);
        let age_seconds = age_ms.map(|ms| ms / 1000);
        let unconfirmed = !health.confirmed
            && age_ms
                .is_some_and(|ms| Duration::from_millis(ms) > self.config.load().poll_interval);
        if health.failing_since_ms.is_none() && !unconfirmed {
            if self.holding.load(Ordering::Relaxed) {
                // The upstream answers, but its listing disagrees with the cache
                // (held deletions): what is served is not vouched for.
                return Freshness::Stale { age_seconds };
            }
            return Freshness::Fresh { age_seconds };
        }
        match age_seconds {
            Some(age) if Duration::from_secs(age) > self.config.load().grace => {
                Freshness::Expired { age_seconds: age }
            }
            _ => Freshness::Stale { age_seconds },
        }
    }

    /// Counts the sync loop's polls in `polls` from now on.
    pub fn count_polls_in(&self, polls: crate::metrics::SyncPolls) {
        let _ = self.polls.set(polls);
    }

    /// Asks the poll task to sync now.
    pub fn sync_now(&self) {
        self.wake.notify_one();
    }

    /// Runs polls until `shutdown` turns true: first at once, then every poll interval,
    /// or sooner with backoff after a failure, or when woken. Nothing runs (`None`)
    /// when the upstream is the store itself.
    pub fn spawn(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.is_local() {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let polled = this.poll().await;
                if let Some(polls) = this.polls.get() {
                    polls.count(polled.is_ok());
                }
                let wait = match polled {
                    Ok(report) => {
                        tracing::debug!(
                            upstream = this.name.as_str(),
                            listed = report.listed,
                            fetched = report.fetched,
                            deleted = report.deleted,
                            elapsed_ms = report.elapsed_ms,
                            "sync done"
                        );
                        this.config.load().poll_interval
                    }
                    Err(e) => this.backoff(&e),
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = this.wake.notified() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }))
    }

    fn backoff(&self, error: &Error) -> Duration {
        let failures = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures;
        let cap = self
            .config
            .load()
            .max_backoff
            .min(self.config.load().poll_interval)
            .max(Duration::from_millis(100));
        // `failures` counts this one: the first retry waits 500 ms.
        let mut wait = Backoff::new(POLL_RETRY_BASE, cap).delay(failures.saturating_add(1));
        // With every address's circuit open, a poll before the first cool-down ends
        // would fail without trying, and one long after it would leave a recovered
        // upstream unused: retry the moment the first address may be probed.
        if let Some(probe) = first_probe(&self.upstream().addresses()) {
            wait = probe + Duration::from_millis(10);
        }
        tracing::warn!(
            upstream = self.name.as_str(),
            error = %error,
            failures,
            retry_in_ms = wait.as_millis() as u64,
            "sync failed; serving cached values"
        );
        wait
    }

    fn record_success(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.failing_since_ms.is_some() {
            tracing::info!(upstream = self.name.as_str(), "upstream reachable again");
        }
        health.last_success_ms = Some(crate::clock::now_ms());
        health.failing_since_ms = None;
        health.failures = 0;
        health.confirmed = true;
        if let Ok(raw) = serde_json::to_vec(&*health) {
            drop(health);
            if let Err(e) = crate::state_file::replace(&self.state_file, &raw) {
                tracing::warn!(file = %self.state_file.display(), error = %e, "cannot save the sync state");
            }
        }
    }

    fn record_failure(&self, error: &Error) {
        let transient = error.upstream().is_none_or(upstream::Error::is_transient);
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.failures = health.failures.saturating_add(1);
        if health.failing_since_ms.is_none() {
            health.failing_since_ms = Some(crate::clock::now_ms());
            if !transient {
                tracing::error!(upstream = self.name.as_str(), error = %error, "sync refused by the upstream");
            }
        }
    }

    /// One poll over every configured prefix, with the deletion guard on.
    pub async fn poll(&self) -> Result<Report, Error> {
        self.poll_with(false).await
    }

    /// One poll that drops every secret the upstream no longer lists, however many:
    /// what an operator runs (`latchkey sync --accept-deletions`) after checking
    /// that the deletions the guard held are meant.
    pub async fn poll_accepting_deletions(&self) -> Result<Report, Error> {
        self.poll_with(true).await
    }

    /// The secrets the deletion guard holds now: cached, served (marked stale), but
    /// no longer listed by the upstream.
    pub fn held(&self) -> Vec<SecretPath> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.keys().cloned().collect()
    }

    async fn poll_with(&self, accept: bool) -> Result<Report, Error> {
        let started = std::time::Instant::now();
        let mut report = Report::default();
        let mut held = BTreeMap::new();
        let result = self.poll_prefixes(&mut report, accept, &mut held).await;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                report.held = held.len();
                self.replace_held(held);
                self.record_success();
                Ok(report)
            }
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// Fetches one listed secret within the budget, as a task of its own.
    fn fetch_task(
        &self,
        path: SecretPath,
    ) -> impl std::future::Future<Output = (SecretPath, Result<Option<RemoteSecret>, upstream::Error>)>
           + Send
           + 'static {
        let budget = self.budget.clone();
        let upstream = self.upstream();
        async move {
            let _permit = budget.acquire_owned().await;
            let read = upstream.read(&path).await;
            (path, read)
        }
    }

    /// Keeps what a complete poll held: logs, audits and publishes each newly held
    /// secret once (`deletion-held`), and says when a hold ends.
    fn replace_held(&self, now: BTreeMap<SecretPath, Option<Prefix>>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let new: Vec<(SecretPath, Option<Prefix>)> = now
            .iter()
            .filter(|(path, _)| !held.contains_key(*path))
            .map(|(p, prefix)| (p.clone(), prefix.clone()))
            .collect();
        let ended = !held.is_empty() && now.is_empty();
        *held = now;
        self.holding.store(!held.is_empty(), Ordering::Relaxed);
        let total = held.len();
        drop(held);
        if ended {
            tracing::info!(
                upstream = self.name.as_str(),
                "no deletions held any more: the upstream lists every cached secret again, or they were accepted"
            );
        }
        let mut by_prefix: BTreeMap<String, usize> = BTreeMap::new();
        for (path, prefix) in &new {
            let group = prefix.as_ref().map_or_else(
                || "(secrets outside the prefixes)".to_owned(),
                |p| format!("{:?}", p.as_str()),
            );
            *by_prefix.entry(group).or_default() += 1;
            self.events
                .publish(Event::now(Kind::DeletionHeld, path.clone(), None));
        }
        for (group, count) in by_prefix {
            tracing::warn!(
                upstream = self.name.as_str(),
                prefix = %group,
                newly_held = count,
                held = total,
                "the upstream no longer lists more cached secrets than one poll may drop; keeping and serving them as stale. If the deletions are meant, run `latchkey sync --accept-deletions`"
            );
        }
    }

    async fn poll_prefixes(
        &self,
        report: &mut Report,
        accept: bool,
        held: &mut BTreeMap<SecretPath, Option<Prefix>>,
    ) -> Result<(), Error> {
        let mut first_error = None;
        let config = self.config.load_full();
        for prefix in &config.prefixes {
            let remote = {
                let _permit = self.budget.acquire().await;
                self.upstream().list(prefix).await?
            };
            report.listed += remote.len();
            let scan = prefix.clone();
            let listed = self.store.blocking(move |store| store.list(&scan)).await?;
            let marks: HashMap<SecretPath, Option<store::Deletion>> =
                listed.iter().map(|e| (e.path.clone(), e.deleted)).collect();
            let local: HashMap<SecretPath, u64> = listed
                .into_iter()
                .map(|e| (e.path, e.current_version))
                .collect();
            let mut seen = HashSet::with_capacity(remote.len());
            let mut fetches = tokio::task::JoinSet::new();
            let mut batch = Vec::new();
            for meta in remote {
                seen.insert(meta.path.clone());
                let Some(mark) = marks.get(&meta.path) else {
                    if meta.deleted {
                        continue;
                    }
                    // Not cached yet: fetched below.
                    fetches.spawn(self.fetch_task(meta.path));
                    continue;
                };
                match (meta.deleted, meta.version) {
                    // The whole secret is gone (an AWS scheduled deletion).
                    (true, 0) => batch.push(Landing::Gone {
                        path: meta.path,
                        upstream: Some(true),
                    }),
                    // Its current version is deleted or destroyed; older ones stay.
                    (true, version) => {
                        let now = store::Deletion {
                            version,
                            destroyed: meta.destroyed,
                        };
                        if *mark != Some(now) {
                            batch.push(Landing::CurrentDeleted {
                                path: meta.path,
                                deletion: now,
                            });
                        }
                    }
                    // Undeleted upstream: the version the store holds is current again.
                    (false, version) if local.get(&meta.path) == Some(&version) => {
                        if mark.is_some() {
                            batch.push(Landing::Undeleted { path: meta.path });
                        }
                    }
                    (false, _) => {
                        fetches.spawn(self.fetch_task(meta.path));
                    }
                }
            }
            while let Some(joined) = fetches.join_next().await {
                let Ok((path, result)) = joined else { continue };
                match result {
                    Ok(Some(remote)) => {
                        self.answered(&path);
                        batch.push(Landing::Pulled(remote));
                        report.fetched += 1;
                    }
                    Ok(None) => batch.push(Landing::Gone {
                        path,
                        upstream: None,
                    }),
                    // The upstream answered but refused this one secret: that says
                    // nothing about its health, so the poll goes on without it.
                    Err(e) if !e.is_transient() => {
                        self.refused(&path, &e);
                        report.skipped += 1;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
                if batch.len() >= LAND_BATCH {
                    report.deleted += deletions(&self.land(std::mem::take(&mut batch)).await?);
                }
            }
            let vanished: Vec<SecretPath> = local
                .keys()
                .filter(|p| !seen.contains(*p))
                .cloned()
                .collect();
            if !accept
                && suspicious(
                    local.len(),
                    vanished.len(),
                    self.config.load().max_deleted_share,
                )
            {
                held.extend(vanished.into_iter().map(|p| (p, Some(prefix.clone()))));
            } else {
                batch.extend(vanished.into_iter().map(|path| Landing::Gone {
                    path,
                    upstream: None,
                }));
            }
            report.deleted += deletions(&self.land(batch).await?);
        }
        match self.poll_strays(report, accept, held).await {
            Err(Error::Upstream(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn covered(&self, path: &SecretPath) -> bool {
        self.config.load().prefixes.iter().any(|p| p.matches(path))
    }

    /// Remembers a cached path outside the prefixes, so polls keep it current.
    fn note_stray(&self, path: &SecretPath) {
        if !self.covered(path) {
            let mut strays = self.strays.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = strays.as_mut() {
                set.insert(path.clone());
            }
        }
    }

    /// Refreshes cached secrets that no configured prefix covers: each one's version
    /// is asked for, and it is fetched again when it changed or dropped when it is
    /// gone upstream. The first poll of a run finds those an earlier run left with one
    /// scan of the local index; later polls only check the ones known.
    async fn poll_strays(
        &self,
        report: &mut Report,
        accept: bool,
        held: &mut BTreeMap<SecretPath, Option<Prefix>>,
    ) -> Result<(), Error> {
        if self
            .config
            .load()
            .prefixes
            .iter()
            .any(|p| p.as_str().is_empty())
        {
            return Ok(());
        }
        let known = self
            .strays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let paths: Vec<SecretPath> = match known {
            Some(set) => set.into_iter().collect(),
            None => {
                let found: HashSet<SecretPath> = self
                    .store
                    .blocking(|store| store.list(&Prefix::all()))
                    .await?
                    .into_iter()
                    .map(|e| e.path)
                    .filter(|p| !self.covered(p))
                    .collect();
                let mut strays = self.strays.lock().unwrap_or_else(|e| e.into_inner());
                strays.get_or_insert_with(HashSet::new).extend(found);
                strays.iter().flatten().cloned().collect()
            }
        };
        let mut gone = Vec::new();
        let mut checks = tokio::task::JoinSet::new();
        let locals = self
            .store
            .blocking(move |store| {
                paths
                    .into_iter()
                    .map(|path| Ok((store.get(&path, Selector::Current)?, path)))
                    .collect::<Result<Vec<_>, store::Error>>()
            })
            .await?;
        for (local, path) in locals {
            let Some(local) = local else {
                gone.push(path);
                continue;
            };
            let budget = self.budget.clone();
            let upstream = self.upstream();
            checks.spawn(async move {
                let _permit = budget.acquire_owned().await;
                let changed = match upstream.metadata(&path).await {
                    Ok(Some(meta)) if meta.version == local.version => return Ok(None),
                    Ok(Some(_)) => upstream.read(&path).await,
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                changed.map(|remote| Some((path, remote)))
            });
        }
        let checked = checks.len();
        let mut first_error = None;
        let mut batch = Vec::new();
        let mut vanished = Vec::new();
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok(Ok(Some((_, Some(remote))))) => {
                    batch.push(Landing::Pulled(remote));
                    report.fetched += 1;
                }
                Ok(Ok(Some((path, None)))) => vanished.push(path),
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(e)) if !e.is_transient() => report.skipped += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Checked by name, so "gone" is said of each one; but an empty or wrong
        // upstream says it of all of them alike. Held when a prefix was held in this
        // same poll, or when several vanish at once past the share.
        let prefix_held = !held.is_empty();
        let group = checked >= 2
            && suspicious(
                checked,
                vanished.len(),
                self.config.load().max_deleted_share,
            );
        if !accept && !vanished.is_empty() && (prefix_held || group) {
            held.extend(vanished.into_iter().map(|p| (p, None)));
        } else {
            for path in vanished {
                batch.push(Landing::Gone {
                    path: path.clone(),
                    upstream: None,
                });
                gone.push(path);
            }
        }
        report.deleted += deletions(&self.land(batch).await?);
        if let Some(set) = self
            .strays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            for path in &gone {
                set.remove(path);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Fills a cache miss from the upstream; concurrent misses for one path share one
    /// request. Returns whether the upstream has the secret (it is then in the store).
    /// With the local upstream a miss in the store is final: `Ok(false)` at once.
    pub async fn fetch(&self, path: &SecretPath) -> Result<bool, Error> {
        if self.local {
            return Ok(false);
        }
        let cell = {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            misses.entry(path.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let fetched = async {
                    let remote = {
                        let _permit = self.budget.acquire().await;
                        self.upstream().read(path).await?
                    };
                    match remote {
                        Some(remote) => {
                            self.land(vec![Landing::Pulled(remote)]).await?;
                            self.note_stray(path);
                            Ok(true)
                        }
                        None => Ok(false),
                    }
                }
                .await;
                fetched.map_err(Arc::new)
            })
            .await
            .clone();
        {
            let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            if misses.get(path).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                misses.remove(path);
            }
        }
        result.map_err(Error::Shared)
    }

    /// Reads the version of `path` that carries `label` upstream (a staging label of
    /// AWS Secrets Manager), within the budget; not stored. `None` for the local
    /// upstream and for backends without labels of their own.
    pub async fn read_label(
        &self,
        path: &SecretPath,
        label: &str,
    ) -> Result<Option<RemoteSecret>, Error> {
        if self.local {
            return Ok(None);
        }
        let _permit = self.budget.acquire().await;
        Ok(self.upstream().read_label(path, label).await?)
    }

    /// Writes or deletes one secret for the agent (the API, the CLI through it, the
    /// lifecycle engine): the only way a change the agent makes reaches the store.
    ///
    /// Upstream first, with the write's check-and-set; then the store holds the
    /// version the upstream assigned, durably, the hot cache has forgotten the path
    /// and the event is out (the order in the module doc). `Ok` is the acknowledgement.
    pub async fn commit(&self, path: &SecretPath, change: Change) -> Result<Committed, Error> {
        let landing = {
            let _permit = self.budget.acquire().await;
            match change {
                Change::Write(write) => {
                    let version = self.upstream().put(path, &write).await?;
                    Landing::Written {
                        path: path.clone(),
                        version,
                        write,
                    }
                }
                Change::Delete => Landing::Gone {
                    path: path.clone(),
                    upstream: self.upstream().delete(path).await?,
                },
            }
        };
        self.land_one(path, landing).await
    }

    /// The version number of the upstream version `id` names (an AWS `VersionId`),
    /// within the budget; `None` when the upstream has no such ids.
    pub async fn version_of(&self, path: &SecretPath, id: &str) -> Result<Option<u64>, Error> {
        let _permit = self.budget.acquire().await;
        Ok(self.upstream().version_of(path, id).await?)
    }

    /// Stages `fields` as a pending version of `path` upstream, based on version
    /// `base` ([`Upstream::stage`]), within the budget; the store is not touched (apps
    /// keep the current version). `None`: the upstream has no stages (the local
    /// store, OpenBao).
    pub async fn stage(
        &self,
        path: &SecretPath,
        fields: &crate::secret::Fields,
        base: u64,
    ) -> Result<Option<u64>, Error> {
        let _permit = self.budget.acquire().await;
        Ok(self.upstream().stage(path, fields, base).await?)
    }

    /// Drops the pending mark of a version [`Syncer::stage`] made (a rotation rolled
    /// back).
    pub async fn unstage(&self, path: &SecretPath, staged: u64) -> Result<(), Error> {
        let _permit = self.budget.acquire().await;
        Ok(self.upstream().unstage(path, staged).await?)
    }

    /// [`Syncer::commit`] for a write whose value the upstream already holds as the
    /// pending version `staged`: the upstream promotes it (check-and-set on the
    /// write's `cas`), then the store takes `write` as version `staged`, and the
    /// rest of the commit follows as for any write.
    pub async fn commit_staged(
        &self,
        path: &SecretPath,
        write: store::Write,
        staged: u64,
    ) -> Result<Committed, Error> {
        {
            let _permit = self.budget.acquire().await;
            let base = write.cas.unwrap_or(0);
            self.upstream().promote(path, staged, base).await?;
            self.upstream().record_meta(path, &write).await;
        }
        let landing = Landing::Written {
            path: path.clone(),
            version: staged,
            write,
        };
        self.land_one(path, landing).await
    }

    /// The store's half of a commit, for one change the upstream holds.
    async fn land_one(&self, path: &SecretPath, landing: Landing) -> Result<Committed, Error> {
        let landed = self.land(vec![landing]).await?;
        self.note_stray(path);
        landed
            .into_iter()
            .next()
            .map(|l| l.committed)
            .ok_or_else(|| Error::Store(store::Error::Invalid("the commit landed nothing".into())))
    }

    /// A listed secret the upstream refused to return: said at `warn` the first time,
    /// then counted quietly until it answers again, so a permanent problem (a policy
    /// that denies one path) does not fill the log on every poll.
    fn refused(&self, path: &SecretPath, error: &upstream::Error) {
        let times = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let times = refusals.entry(path.clone()).or_insert(0);
            *times += 1;
            *times
        };
        if times == 1 {
            tracing::warn!(
                upstream = self.name.as_str(),
                path = %path,
                error = %error,
                "cannot fetch a listed secret; keeping the cached copy (said once until it answers again)"
            );
        } else {
            tracing::debug!(upstream = self.name.as_str(), path = %path, times, error = %error, "still cannot fetch a listed secret");
        }
    }

    /// A secret refused before answers again.
    fn answered(&self, path: &SecretPath) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(times) = refusals.remove(path) {
            tracing::info!(upstream = self.name.as_str(), path = %path, refused = times, "a secret the upstream refused answers again");
        }
    }

    /// Says once per path and pulled version that the upstream reported an older
    /// version than the one held (and counts every time, for metrics).
    fn upstream_went_backwards(&self, path: &SecretPath, pulled: u64, held: u64) {
        self.backwards.fetch_add(1, Ordering::Relaxed);
        let first = self
            .inconsistent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((path.clone(), pulled));
        if first {
            tracing::warn!(
                upstream = self.name.as_str(),
                path = %path,
                pulled,
                held,
                "upstream inconsistency: it reports an older version as current; keeping the newer one the agent holds"
            );
        }
    }

    /// How many pulled versions were refused for being older than the one held.
    pub fn backwards_refused(&self) -> u64 {
        self.backwards.load(Ordering::Relaxed)
    }

    /// Steps 2 to 5 of the commit for changes the upstream already holds: the store
    /// writes (one blocking task for the batch), one flush, then each changed path's
    /// invalidation and event. A store error stops the batch; what landed before it is
    /// flushed, invalidated and published, then the error is returned.
    async fn land(&self, batch: Vec<Landing>) -> Result<Vec<Landed>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (landed, failed) = self
            .store
            .blocking(move |store| {
                let mut landed = Vec::with_capacity(batch.len());
                for landing in batch {
                    match landing.apply(store) {
                        Ok(l) => landed.push(l),
                        Err(e) => return Ok((landed, Some(e))),
                    }
                }
                Ok((landed, None))
            })
            .await?;
        for l in &landed {
            if let Some((pulled, held)) = l.backwards {
                self.upstream_went_backwards(&l.path, pulled, held);
            }
        }
        let flushed = if landed.iter().any(|l| l.changed) {
            self.store.flush().await
        } else {
            Ok(())
        };
        for l in landed.iter().filter(|l| l.changed) {
            self.cache.invalidate(&l.path);
        }
        flushed?;
        for l in landed.iter().filter(|l| l.changed) {
            let event = match &l.committed {
                Committed::Written(secret) => {
                    Event::now(Kind::Updated, l.path.clone(), Some(secret.version))
                }
                Committed::Deleted {
                    existed: Some(true),
                } => Event::now(Kind::Deleted, l.path.clone(), None),
                Committed::Deleted { .. } => continue,
            };
            self.events.publish(event);
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(landed),
        }
    }
}

/// A change the agent makes to one secret ([`Syncer::commit`]).
#[derive(Debug, Clone)]
pub enum Change {
    /// A new version; `cas` in the write is checked upstream.
    Write(store::Write),
    /// The secret and all its versions go.
    Delete,
}

/// What a commit did.
#[derive(Debug, Clone)]
pub enum Committed {
    /// The version now stored (as the upstream numbered it).
    Written(Secret),
    /// The secret is gone. `existed`: whether it existed, when the upstream or the
    /// store could tell (`Some(false)`: neither had it).
    Deleted {
        /// See above.
        existed: Option<bool>,
    },
}

/// A change the upstream already holds, for the store to take.
enum Landing {
    /// Pulled from the upstream (a poll, a miss): replaces the local copy. A version
    /// below the local one written after it means the secret was recreated upstream:
    /// the local copy is replaced whole; one written before it is refused (the
    /// upstream went backwards; never applied silently).
    Pulled(RemoteSecret),
    /// Written upstream by the agent, which numbered it `version`.
    Written {
        path: SecretPath,
        version: u64,
        write: store::Write,
    },
    /// Gone upstream; `upstream` is whether it existed there, when known.
    Gone {
        path: SecretPath,
        upstream: Option<bool>,
    },
    /// The upstream deleted (or destroyed) the current version; older ones stay.
    CurrentDeleted {
        path: SecretPath,
        deletion: store::Deletion,
    },
    /// The upstream undeleted the current version the store holds.
    Undeleted { path: SecretPath },
}

/// One landing's outcome.
struct Landed {
    path: SecretPath,
    /// Whether the store changed (a pulled version it already had did not).
    changed: bool,
    committed: Committed,
    /// A pulled version older than the one held, refused: (pulled, held).
    backwards: Option<(u64, u64)>,
}

impl Landing {
    /// Step 2: the store write. Runs on the blocking pool.
    fn apply(self, store: &Store) -> Result<Landed, store::Error> {
        match self {
            Landing::Pulled(remote) => {
                let kind = match store.get(&remote.path, Selector::Current) {
                    Ok(Some(local)) if local.version == remote.version => {
                        return Ok(Landed {
                            path: remote.path,
                            changed: false,
                            committed: Committed::Written(local),
                            backwards: None,
                        })
                    }
                    // An older version reported as current, and not written after the
                    // one held (so not a secret deleted and created again upstream):
                    // an inconsistent upstream (AWS with two `AWSCURRENT` versions, a
                    // replica behind its primary). What was acknowledged stays.
                    Ok(Some(local))
                        if remote.version < local.version
                            && (remote.updated_at < local.updated_at
                                || (remote.updated_at == local.updated_at && remote.ordered)) =>
                    {
                        return Ok(Landed {
                            path: remote.path,
                            changed: false,
                            backwards: Some((remote.version, local.version)),
                            committed: Committed::Written(local),
                        })
                    }
                    Ok(Some(local)) => Some(local.kind),
                    _ => None,
                };
                // What latchkey recorded upstream wins; a secret without it keeps
                // the kind the store gave it.
                let kind = remote.kind.clone().or(kind);
                let write = || store::Write {
                    fields: remote.fields.clone(),
                    kind: kind.clone(),
                    expires_at: remote.expires_at,
                    cas: None,
                };
                let stored = match store.put_at(&remote.path, remote.version, write()) {
                    Err(store::Error::Conflict { .. }) => {
                        store.delete(&remote.path)?;
                        store.put_at(&remote.path, remote.version, write())?
                    }
                    other => other?,
                };
                Ok(Landed {
                    path: remote.path,
                    changed: true,
                    committed: Committed::Written(stored),
                    backwards: None,
                })
            }
            Landing::Written {
                path,
                version,
                write,
            } => {
                let local = store::Write { cas: None, ..write };
                let stored = match store.put_at(&path, version, local.clone()) {
                    Ok(stored) => stored,
                    // A poll already pulled this very version (or a newer one), or the
                    // upstream is this store (the local backend): keep that.
                    Err(store::Error::Conflict { current, .. }) if current >= version => store
                        .get(&path, Selector::Version(version))?
                        .ok_or_else(|| {
                            store::Error::Invalid(format!("version {version} of {path} vanished"))
                        })?,
                    Err(store::Error::Conflict { .. }) => {
                        store.delete(&path)?;
                        store.put_at(&path, version, local)?
                    }
                    Err(e) => return Err(e),
                };
                Ok(Landed {
                    path,
                    changed: true,
                    committed: Committed::Written(stored),
                    backwards: None,
                })
            }
            Landing::CurrentDeleted { path, deletion } => {
                let changed = store.mark_deleted(&path, deletion.version, deletion.destroyed)?;
                Ok(Landed {
                    path,
                    changed,
                    committed: Committed::Deleted {
                        existed: Some(changed),
                    },
                    backwards: None,
                })
            }
            Landing::Undeleted { path } => {
                let changed = store.clear_deleted(&path)?;
                let current = store.get(&path, Selector::Current)?.ok_or_else(|| {
                    store::Error::Invalid(format!("{path} has no current version to undelete"))
                })?;
                Ok(Landed {
                    path,
                    changed,
                    committed: Committed::Written(current),
                    backwards: None,
                })
            }
            Landing::Gone { path, upstream } => {
                let existed = if store.delete(&path)? {
                    Some(true)
                } else {
                    upstream
                };
                Ok(Landed {
                    path,
                    changed: existed == Some(true),
                    committed: Committed::Deleted { existed },
                    backwards: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
