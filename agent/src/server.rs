//! Puts the agent together from a [`Config`] and runs it until told to stop.
//!
//! Order matters for a safe start: the key-encryption key is loaded and the store
//! opened (its data key unwrapped) before any socket is bound, so an agent that
//! cannot decrypt never accepts a connection; listeners are bound before the ready
//! line is logged, so anything waiting for that line can connect at once.
//!
//! And for a safe stop ([`Running::stop`]): the listeners stop accepting and every
//! loop stops taking new work; the lifecycle engine lets a rotation in flight finish
//! its step and journal itself (for at most [`LIFECYCLE_GRACE`]); open requests finish
//! (for at most [`DRAIN`]); the sync, expiry and render loops end their round; the
//! webhooks deliver what was published before the stop; only then is the store
//! flushed and the audit trail closed. Each wait is bounded, so a hung plugin or
//! upstream cannot keep the agent from exiting; what a cut-off rotation had done is
//! in its journal, and the next start finishes it or rolls it back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::State;
use crate::audit::Audit;
use crate::cache::HotCache;
use crate::config::Config;
use crate::crypto::{KekSource, TransitKek};
use crate::listener::{self, Context};
use crate::providers::Provider;
use crate::store::Store;
use crate::sync::Syncer;
use crate::tls::ServerTls;
use crate::upstream::aws::AwsSecretsManager;
use crate::upstream::config::UpstreamConfig;
use crate::upstream::openbao::OpenBao;
use crate::upstream::Upstream;
use crate::{crypto, store, tls};

/// How often the revocation list is checked for changes.
const CRL_POLL: Duration = Duration::from_secs(1);
/// How often expiry times are checked (also after every write).
const EXPIRY_CHECK: Duration = Duration::from_secs(60);
/// How long open requests may finish after a stop signal.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long the lifecycle engine's operations in flight may take to finish their
/// step after a stop signal: one plugin call at its default deadline, and the write.
pub const LIFECYCLE_GRACE: Duration = Duration::from_secs(15);
/// How long the sync, expiry and webhook loops may take to end after a stop signal.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store, state folder, audit file or socket folder is not writable.
    #[error(transparent)]
    Unwritable(#[from] crate::preflight::Error),
    /// The key-encryption key could not be loaded.
    #[error("cannot load the key-encryption key")]
    Kek(#[source] crypto::Error),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[source] store::Error),
    /// Certificates or keys could not be loaded.
    #[error("cannot set up TLS")]
    Tls(#[source] tls::Error),
    /// The audit file could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::Error),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] listener::Error),
    /// A provider plugin could not be loaded.
    #[error(transparent)]
    Providers(#[from] crate::providers::Error),
    /// The upstream's configuration cannot work.
    #[error("cannot set up the upstream")]
    Upstream(#[source] crate::upstream::Error),
    /// The `[metrics] listen` address could not be bound.
    #[error("cannot listen on {addr} for [metrics]")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reloaded {
    /// The config validated; `changed` says what is in force now (and what waits
    /// for a restart).
    Applied {
        /// In words.
        changed: String,
    },
    /// The config did not validate: nothing changed.
    Refused {
        /// Each problem, with its line and key.
        problems: Vec<String>,
    },
}

/// Logs and audits a refused reload; the answer to give.
fn refused(
    path: &std::path::Path,
    record: &mut crate::audit::Record,
    problems: Vec<String>,
) -> Reloaded {
    tracing::error!(
        config = %path.display(),
        problems = %problems.join("; ").replace('\n', " "),
        "reload refused; the config in force keeps serving"
    );
    record.outcome = crate::audit::Outcome::Failed;
    record.status = 0;
    record.code = Some("invalid_config");
    record.detail = Some(format!("{} problem(s), in the log", problems.len()).into());
    Reloaded::Refused { problems }
}

/// Background tasks that a reload replaces as a set (the renderer, the webhooks),
/// with the switch that stops them.
struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Starts a set: `spawn` gets the receiver its tasks stop on.
    fn start(spawn: impl FnOnce(watch::Receiver<bool>) -> Vec<JoinHandle<()>>) -> Tasks {
        let (stop, rx) = watch::channel(false);
        Tasks {
            stop,
            handles: spawn(rx),
        }
    }

    /// Stops the set and waits for each task (up to the background grace).
    async fn finish(self, name: &str) {
        let _ = self.stop.send(true);
        for task in self.handles {
            join_within(name, task, BACKGROUND_GRACE).await;
        }
    }

    /// Puts `new` in place of the set in `slot` and lets the old one finish in the
    /// background (the new one is running already, so nothing published between
    /// the two is missed; it may be handled by both).
    fn replace(slot: &std::sync::Mutex<Tasks>, new: Tasks, name: &'static str) {
        let old = std::mem::replace(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()), new);
        tokio::spawn(old.finish(name));
    }
}

/// A reload asked for over the API: who asks, and where the answer goes.
pub type ReloadRequest = (String, tokio::sync::oneshot::Sender<Reloaded>);

/// A started agent: listeners bound, serving in the background.
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    store: Store,
    writer: crate::audit::Writer,
    state: Arc<State>,
    /// The lifecycle engine's loop (the engine itself is `state.engine`).
    engine_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    sync: Option<JoinHandle<()>>,
    expiry: JoinHandle<()>,
    /// The template renderer, replaced when a reload changes `[[template]]`.
    renderer: std::sync::Mutex<Tasks>,
    /// The webhooks, replaced when a reload changes `[[webhook]]`; stopped last:
    /// they deliver what the others published.
    webhooks: std::sync::Mutex<Tasks>,
    /// Held for the agent's lifetime: the CRL watcher stops once this is dropped.
    tls: Arc<ServerTls>,
    /// Where it listens (`unix:PATH`, `tcp:ADDR`).
    pub addresses: Vec<String>,
    /// The service manager, told when the agent stops and reloads.
    notifier: crate::notify::Notifier,
    /// The policy in force, replaced by a reload.
    policy: Arc<crate::policy::LivePolicy>,
    /// The config in force, to tell what a reload changes.
    config: std::sync::Mutex<Config>,
    /// Reloads asked for over the API, until [`run`] takes them.
    reload_requests: std::sync::Mutex<Option<mpsc::Receiver<ReloadRequest>>>,
}

impl Running {
    /// Re-reads the config at `path` and applies what changes while running: the
    /// policy (open connections follow it from their next request), the TLS files
    /// (CA, server certificate and key, revocation list; at new paths too), the
    /// plugins and lifecycle rules (calls in flight finish on the old plugin), the
    /// sync prefixes and intervals and the upstream's settings (a client of the same
    /// kind), the templates and the webhooks. A section that only a restart applies
    /// is named in the log and the audit record. A config that does not validate,
    /// or whose plugins, upstream client or TLS files cannot be loaded, changes
    /// nothing: its problems are logged and the old config keeps serving. Audited
    /// either way.
    pub async fn reload(&self, path: &std::path::Path) {
        self.reload_as(path, "(operator: SIGHUP)").await;
    }

    /// [`Running::reload`] on behalf of `who` (audited as them); says what came of it.
    pub async fn reload_as(&self, path: &std::path::Path, who: &str) -> Reloaded {
        self.notifier
            .send("RELOADING=1\nSTATUS=reloading the config");
        // As SIGUSR1 does: a reload after logrotate needs no second signal.
        crate::telemetry::reopen();
        self.state.audit.reopen();
        let mut record = crate::audit::Record::now(who.into(), None, "reload", None);
        let outcome;
        match Config::load(path) {
            Err(e) => {
                let problems = match &e {
                    crate::config::Error::Invalid { problems, .. } => problems.clone(),
                    other => vec![other.to_string()],
                };
                outcome = refused(path, &mut record, problems);
            }
            Ok(new) => match self.apply(new).await {
                Ok(changed) => {
                    tracing::info!(config = %path.display(), changed = %changed, "config reloaded");
                    record.detail = Some(changed.clone().into());
                    outcome = Reloaded::Applied { changed };
                }
                Err(problems) => outcome = refused(path, &mut record, problems),
            },
        }
        self.state.audit.record(record).await;
        self.notifier
            .ready(&format!("serving on {}", self.addresses.join(", ")));
        outcome
    }

    /// Asks to reload from the API (`POST /v1/reload`), answered by [`run`]'s loop.
    fn take_reload_requests(&self) -> Option<mpsc::Receiver<ReloadRequest>> {
        self.reload_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Puts `new` in force where it can be; what changed, in words. What can fail —
    /// loading changed plugins, building a changed upstream client, reading the TLS
    /// files — is done first, and a failure of any of them changes nothing: the
    /// problems come back and the config in force keeps serving.
    async fn apply(&self, new: Config) -> Result<String, Vec<String>> {
        let old = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut problems = Vec::new();
        let providers = if differs(
            &(&old.plugins, &old.lifecycle, &old.sql),
            &(&new.plugins, &new.lifecycle, &new.sql),
        ) {
            let loaded = self
                .state
                .providers
                .current()
                .reload(
                    &new.plugins,
                    &new.lifecycle,
                    &new.sql,
                    new.store.state_dir.file(crate::state_file::PLUGINS),
                    self.state.audit.clone(),
                )
                .await;
            match loaded {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(format!("plugins: {}", crate::telemetry::chain(&e)));
                    None
                }
            }
        } else {
            None
        };
        let same_kind =
            old.upstream.as_ref().map(|u| u.name()) == new.upstream.as_ref().map(|u| u.name());
        let upstream = match &new.upstream {
            Some(u) if same_kind && differs(&old.upstream, &new.upstream) => {
                match connect_upstream(u, &new.sync).await {
                    Ok(built) => built.map(|b| b.client),
                    Err(e) => {
                        problems.push(format!("upstream: {}", crate::telemetry::chain(&e)));
                        None
                    }
                }
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        // Last of what can fail, and all or nothing by itself.
        let tls = match self.tls.reload_files(&new.tls) {
            Ok(changed) => changed,
            Err(e) => return Err(vec![format!("tls: {}", crate::telemetry::chain(&e))]),
        };
        let mut said: Vec<String> = tls.iter().map(|t| (*t).to_owned()).collect();
        if differs(&old.policy, &new.policy) {
            self.policy.replace(new.policy.clone());
            said.push(format!("policy ({} rules)", new.policy.len()));
        }
        if let Some(providers) = providers {
            let names = providers.names().join(", ");
            self.state.providers.replace(providers);
            said.push(format!(
                "plugins ({names}) and lifecycle rules ({})",
                new.lifecycle.len()
            ));
            match self.state.engine.get() {
                Some(engine) => engine.rules_changed().await,
                None if self.state.providers.has_rules() => {
                    self.start_engine(&new.scheduler);
                }
                None => {}
            }
        }
        if differs(&old.sync, &new.sync) || upstream.is_some() {
            self.state
                .sync
                .reconfigure(new.sync.clone(), upstream.clone());
            said.push(if upstream.is_some() {
                "upstream and sync".to_owned()
            } else {
                format!("sync ({} prefixes)", new.sync.prefixes.len())
            });
        }
        if differs(&old.templates, &new.templates) {
            let templates = new.templates.clone();
            let (store, events) = (self.store.clone(), self.state.events.clone());
            let renders = self.state.metrics.template_renders();
            Tasks::replace(
                &self.renderer,
                Tasks::start(|stop| {
                    renders.reset();
                    if templates.is_empty() {
                        Vec::new()
                    } else {
                        vec![crate::render::spawn(
                            templates, store, &events, renders, stop,
                        )]
                    }
                }),
                "renderer",
            );
            said.push(format!("templates ({})", new.templates.len()));
        }
        if differs(&old.webhooks, &new.webhooks) {
            let (hooks, events) = (new.webhooks.clone(), self.state.events.clone());
            let agent: Arc<str> = old.trust_domain.as_str().into();
            Tasks::replace(
                &self.webhooks,
                Tasks::start(|stop| crate::webhook::spawn(hooks, &events, agent, stop)),
                "webhook",
            );
            said.push(format!("webhooks ({})", new.webhooks.len()));
        }
        let restart: Vec<&str> = [
            ("listen", differs(&old.listen, &new.listen)),
            (
                "storage",
                differs(
                    &(&old.store, &old.kek, old.hot_cache_entries),
                    &(&new.store, &new.kek, new.hot_cache_entries),
                ),
            ),
            ("upstream kind", !same_kind),
            (
                "sync concurrency",
                old.sync.concurrency != new.sync.concurrency,
            ),
            ("scheduler", differs(&old.scheduler, &new.scheduler)),
            ("limits", differs(&old.limits, &new.limits)),
            ("audit", differs(&old.audit, &new.audit)),
            ("metrics", old.metrics_listen != new.metrics_listen),
            (
                "env_fallback",
                differs(&old.env_fallback, &new.env_fallback),
            ),
            (
                "trust_domain",
                differs(&old.trust_domain, &new.trust_domain),
            ),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(sections = ?restart, "reload: these sections changed and apply at the next restart");
            said.push(format!("needs a restart: {}", restart.join(", ")));
        }
        // What is in force: the new sections that apply live, the old everything else.
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        config.policy = new.policy;
        config.templates = new.templates;
        config.webhooks = new.webhooks;
        config.tls = new.tls;
        config.plugins = new.plugins;
        config.lifecycle = new.lifecycle;
        config.sql = new.sql;
        let concurrency = config.sync.concurrency;
        config.sync = new.sync;
        config.sync.concurrency = concurrency;
        if same_kind {
            config.upstream = new.upstream;
        }
        Ok(if said.is_empty() {
            "nothing".to_owned()
        } else {
            said.join("; ")
        })
    }

    /// Starts the lifecycle engine when a reload brought the first `[[lifecycle]]`
    /// rule (the agent started without one).
    fn start_engine(&self, spec: &crate::lifecycle::SchedulerSpec) {
        if let Some(task) = spawn_engine(&self.state, spec) {
            *self.engine_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
    }

    /// The store, e.g. to seed a secret in dev mode.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops in order (see the module docs): new work, then the lifecycle engine's
    /// operations in flight, open requests, the background loops and the webhooks, and
    /// flushes the store and the audit trail last.
    pub async fn stop(self) {
        self.notifier.stopping();
        let _ = self.stop.send(true);
        // Watch streams never end by themselves: each gets `shutdown` and ends, so
        // the drain waits only for requests.
        self.state.watchers.close();
        let engine_task = self
            .engine_task
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        if let (Some(engine), Some(task)) = (self.state.engine.get(), engine_task) {
            let stopped = engine.shutdown(LIFECYCLE_GRACE).await;
            if stopped.cut_off > 0 {
                tracing::warn!(operations = stopped.cut_off, "lifecycle operations cut off by the stop; the next start finishes or rolls them back");
            }
            join_within("lifecycle", task, BACKGROUND_GRACE).await;
        }
        let _ = self.task.await;
        if let Some(sync) = self.sync {
            join_within("sync", sync, BACKGROUND_GRACE).await;
        }
        join_within("expiry", self.expiry, BACKGROUND_GRACE).await;
        let take =
            |slot: std::sync::Mutex<Tasks>| slot.into_inner().unwrap_or_else(|e| e.into_inner());
        take(self.renderer).finish("renderer").await;
        take(self.webhooks).finish("webhook").await;
        drop(self.state);
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        self.writer.finish().await;
    }
}

/// Waits up to `grace` for `task` to end; aborts it after.
async fn join_within(name: &str, task: JoinHandle<()>, grace: Duration) {
    let abort = task.abort_handle();
    if tokio::time::timeout(grace, task).await.is_err() {
        tracing::warn!(
            task = name,
            grace_ms = grace.as_millis() as u64,
            "task did not stop in time; cut off"
        );
        abort.abort();
    }
}

/// Builds the upstream client named by the config (no network I/O yet: logins
/// happen on first use, so an agent starts while its upstream is down).
async fn connect_upstream(
    config: &UpstreamConfig,
    sync: &crate::sync::SyncConfig,
) -> Result<Option<Upstreams>, Error> {
    Ok(match config {
        UpstreamConfig::OpenBao(c) => {
            let bao = OpenBao::from_config(c)
                .map_err(Error::Upstream)?
                .with_list_concurrency(sync.concurrency);
            let transit = match &c.transit {
                Some(t) => Some(TransitKek::new(
                    &t.mount,
                    bao.transit(&t.mount, &t.key).map_err(Error::Upstream)?,
                )),
                None => None,
            };
            Some(Upstreams {
                client: Arc::new(bao),
                transit,
            })
        }
        UpstreamConfig::Aws(c) => Some(Upstreams {
            client: Arc::new(
                AwsSecretsManager::from_config(c)
                    .await
                    .map_err(Error::Upstream)?,
            ),
            transit: None,
        }),
        UpstreamConfig::Local(_) => None,
    })
}

struct Upstreams {
    client: Arc<dyn Upstream>,
    transit: Option<TransitKek>,
}

/// Opens the store named by the config with its key-encryption key, and nothing else
/// (for `latchkey store`, with the agent stopped).
pub async fn open_store(config: &Config) -> Result<Store, Error> {
    let upstream = match &config.upstream {
        Some(u) => connect_upstream(u, &config.sync).await?,
        None => None,
    };
    open_with(config, upstream.as_ref()).await
}

async fn open_with(config: &Config, upstream: Option<&Upstreams>) -> Result<Store, Error> {
    match (&config.kek, upstream.and_then(|u| u.transit.as_ref())) {
        (KekSource::Transit, Some(transit)) => Store::open(&config.store, transit).await,
        (KekSource::Transit, None) => return Err(Error::Kek(crypto::Error::TransitNeedsUpstream)),
        (source, _) => {
            let kek = source.load().map_err(Error::Kek)?;
            Store::open(&config.store, kek.as_ref()).await
        }
    }
    .map_err(Error::Store)
}

/// Opens everything and starts serving.
pub async fn start(config: Config) -> Result<Running, Error> {
    for warning in config.warnings() {
        tracing::warn!(config = %config.source.display(), "{warning}");
    }
    crate::preflight::check(&config)?;
    let upstream = match &config.upstream {
        Some(u) => connect_upstream(u, &config.sync).await?,
        None => None,
    };
    let store = open_with(&config, upstream.as_ref()).await?;
    let tls = Arc::new(ServerTls::load(&config.tls).map_err(Error::Tls)?);
    // The CRL and the server certificate and key: reloaded when they change.
    tls.clone().spawn_file_watcher(CRL_POLL);
    let renewal = crate::identity::renew::ServerRenewal::new(
        &config.tls.ca,
        &config.tls.cert,
        &config.tls.key,
    );
    if renewal.is_none() {
        tracing::info!(ca = %config.tls.ca.display(), "the CA's key is not beside its certificate: the agent does not renew its own or apps' certificates (renew them where they are issued)");
    }
    let (audit, writer) = Audit::open(&config.audit.path, config.audit.reads).await?;
    let providers = crate::providers::Providers::load(
        &config.plugins,
        &config.lifecycle,
        &config.sql,
        config.store.state_dir.file(crate::state_file::PLUGINS),
        audit.clone(),
    )
    .await?;
    let metrics = crate::metrics::Metrics::new();
    let providers = Arc::new(crate::providers::Live::new(
        providers.with_metrics(metrics.plugin_calls()),
    ));
    let cache = Arc::new(HotCache::new(config.hot_cache_entries));
    let events = crate::events::Events::new();
    let (stop, stop_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    // There is always an upstream: without one, the store itself.
    let sync = match upstream {
        Some(u) => Syncer::new(
            u.client,
            store.clone(),
            cache.clone(),
            events.clone(),
            config.sync.clone(),
            config.store.state_dir.file(crate::state_file::SYNC),
        ),
        None => Syncer::over_store(
            config.upstream.as_ref().map_or("local", |u| u.name()),
            store.clone(),
            cache.clone(),
            events.clone(),
            config.sync.clone(),
        ),
    };
    sync.count_polls_in(metrics.sync_polls());
    let sync_task = sync.spawn(stop_rx.clone());
    let state = Arc::new(State {
        engine: std::sync::OnceLock::new(),
        store: store.clone(),
        cache,
        audit,
        events,
        sync,
        // The variables were taken out of the process environment at start.
        fallback: crate::fallback::EnvFallback::load(&config.env_fallback, |var| {
            crate::environment::var_string(var).map(|v| v.to_string())
        }),
        metrics,
        providers,
        max_body_bytes: config.limits.max_body_bytes,
        body_timeout: config.limits.body_timeout,
        watchers: crate::api::watch::Watchers::new(config.limits.max_watchers_per_identity),
        ca_root: renewal.as_ref().map(|r| r.root().to_owned()),
        reloads: Some(reload_tx),
    });
    let live_policy = crate::policy::LivePolicy::new(config.policy.clone());
    let bound = listener::bind(&config.listen).await?;
    let addresses = bound.describe();
    let ctx = Arc::new(Context {
        state: state.clone(),
        acceptor: TlsAcceptor::from(tls.config()),
        tls: tls.clone(),
        trust_domain: config.trust_domain.clone(),
        policy: live_policy.clone(),
        limits: config.limits.clone(),
    });
    let renderer = Tasks::start(|stop| {
        if config.templates.is_empty() {
            Vec::new()
        } else {
            vec![crate::render::spawn(
                config.templates.clone(),
                store.clone(),
                &state.events,
                state.metrics.template_renders(),
                stop,
            )]
        }
    });
    let webhooks = Tasks::start(|stop| {
        crate::webhook::spawn(
            config.webhooks.clone(),
            &state.events,
            config.trust_domain.as_str().into(),
            stop,
        )
    });
    let engine_task = if state.providers.has_rules() {
        spawn_engine(&state, &config.scheduler)
    } else {
        None
    };
    // After the webhooks subscribed, so warnings due at start reach them.
    let expiry = crate::expiry::Expiry::new(
        store.clone(),
        state.events.clone(),
        config.store.state_dir.file(crate::state_file::EXPIRY),
    )
    .with_audit(state.audit.clone())
    .with_certificates(
        crate::expiry::Certificates {
            server: config.tls.cert.clone(),
            ca: config.tls.ca.clone(),
            records: renewal
                .as_ref()
                .map(|r| crate::identity::ca::Layout::new(r.root()).ca_dir()),
        },
        state.metrics.certificate_expiry(),
    )
    .spawn(EXPIRY_CHECK, stop_rx.clone());
    if let Some(addr) = config.metrics_listen {
        let scrape = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
        tracing::info!(listen = %addr, "serving /metrics and /health over plain HTTP");
        tokio::spawn(crate::api::scrape::serve(
            scrape,
            state.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(renewal) = renewal {
        tokio::spawn(renewal.keep_renewed(tls.clone(), stop_rx.clone()));
    }
    let task = tokio::spawn(listener::serve(bound, ctx, stop_rx.clone(), DRAIN));
    tracing::info!(listen = ?addresses, store = %config.store.path.display(), "latchkey ready");
    let notifier = crate::notify::Notifier::from_env();
    tokio::spawn(notify_ready(
        notifier.clone(),
        state.sync.clone(),
        addresses.join(", "),
        stop_rx.clone(),
    ));
    tokio::spawn(notifier.clone().keep_alive(stop_rx));
    Ok(Running {
        stop,
        task,
        store,
        writer,
        state,
        engine_task: std::sync::Mutex::new(engine_task),
        sync: sync_task,
        expiry,
        renderer: std::sync::Mutex::new(renderer),
        webhooks: std::sync::Mutex::new(webhooks),
        tls,
        addresses,
        notifier,
        policy: live_policy,
        config: std::sync::Mutex::new(config),
        reload_requests: std::sync::Mutex::new(Some(reload_rx)),
    })
}

/// Builds the lifecycle engine over what `state` holds, puts it in `state.engine` and
/// starts its loop; `None` when an engine is there already (the agent has one engine
/// for its lifetime, made at start or by the first reload with a rule).
fn spawn_engine(state: &State, spec: &crate::lifecycle::SchedulerSpec) -> Option<JoinHandle<()>> {
    let engine = crate::lifecycle::Engine::new(crate::lifecycle::Parts {
        providers: Arc::clone(&state.providers) as Arc<dyn Provider>,
        store: state.store.clone(),
        events: state.events.clone(),
        sync: state.sync.clone(),
        audit: state.audit.clone(),
        spec: spec.clone(),
        clock: crate::clock::Clock::system(),
        outcomes: state.metrics.lifecycle_outcomes(),
    });
    state.engine.set(engine.clone()).ok()?;
    tracing::info!(node = engine.node(), "lifecycle engine running");
    Some(engine.spawn())
}

/// Whether two config sections differ, by what they hold (the sections have no
/// `PartialEq`; their `Debug` shows every field). Compared only, never logged.
fn differs(old: &impl std::fmt::Debug, new: &impl std::fmt::Debug) -> bool {
    format!("{old:?}") != format!("{new:?}")
}

/// Tells the service manager `READY=1` once the first poll of the upstream has
/// ended (at once without one): the store is open and the listeners are bound
/// already.
async fn notify_ready(
    notifier: crate::notify::Notifier,
    sync: Arc<Syncer>,
    addresses: String,
    stop: watch::Receiver<bool>,
) {
    if !sync.is_local() {
        notifier.status(&format!("first sync with {}", sync.upstream_name()));
    }
    while !sync.first_poll_decided() {
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let freshness = match sync.freshness() {
        None | Some(crate::sync::Freshness::Fresh { .. }) => "",
        Some(_) => " (upstream unreachable: serving cached values)",
    };
    notifier.ready(&format!("serving on {addresses}{freshness}"));
}

/// Runs until SIGTERM or SIGINT, then stops cleanly; SIGHUP reloads the config.
pub async fn run(config: Config) -> Result<(), Error> {
    let path = config.source.clone();
    let running = start(config).await?;
    serve(running, &path).await;
    Ok(())
}

/// Serves a started agent until SIGTERM or SIGINT, then stops it cleanly: SIGHUP and
/// `POST /v1/reload` reload the config at `path`, SIGUSR1 reopens the audit file.
pub async fn serve(running: Running, path: &std::path::Path) {
    let mut requests = running.take_reload_requests();
    loop {
        let asked = async {
            match requests.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = next_signal() => match signal {
                Signal::Reload => {
                    running.reload(path).await;
                }
                Signal::Reopen => {
                    tracing::info!("SIGUSR1: reopening the audit file and the log file");
                    running.state.audit.reopen();
                    crate::telemetry::reopen();
                }
                Signal::Stop => break,
            },
            Some((who, answer)) = asked => {
                let _ = answer.send(running.reload_as(path, &who).await);
            }
        }
    }
    tracing::info!("stopping");
    running.stop().await;
    tracing::info!("stopped");
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
    /// SIGUSR1: open the audit file again (after logrotate moved it).
    Reopen,
}

/// Waits for SIGTERM, SIGINT, SIGHUP or SIGUSR1.
pub async fn next_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!("cannot watch SIGHUP and SIGUSR1; reload by restarting");
        wait_for_signal().await;
        return Signal::Stop;
    };
    tokio::select! {
        _ = hup.recv() => Signal::Reload,
        _ = usr1.recv() => Signal::Reopen,
        () = wait_for_signal() => Signal::Stop,
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
