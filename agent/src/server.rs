//! Puts the agent together from a [`Config`] and runs it until told to stop.
//!
//! Order matters for a safe start: the key-encryption key is loaded and the store
//! opened (its data key unwrapped) before any socket is bound, so an agent that
//! cannot decrypt never accepts a connection; listeners are bound before the ready
//! line is logged, so anything waiting for that line can connect at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::State;
use crate::audit::Audit;
use crate::cache::HotCache;
use crate::config::Config;
use crate::listener::{self, Context};
use crate::store::Store;
use crate::tls::ServerTls;
use crate::{crypto, store, tls};

/// How often the revocation list is checked for changes.
const CRL_POLL: Duration = Duration::from_secs(1);
/// How long open requests may finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}

/// A started agent: listeners bound, serving in the background.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    store: Store,
    writer: crate::audit::Writer,
    state: Arc<State>,
    renderer: Option<tokio::task::JoinHandle<()>>,
    /// Where it listens (`unix:PATH`, `tcp:ADDR`).
    pub addresses: Vec<String>,
}

impl Running {
    /// The store, e.g. to seed a secret in dev mode.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting, lets open requests finish, flushes the store and the audit trail.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(renderer) = self.renderer {
            let _ = renderer.await;
        }
        drop(self.state);
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        self.writer.finish().await;
    }
}

/// Opens everything and starts serving.
pub async fn start(config: Config) -> Result<Running, Error> {
    let kek = config.kek.load().map_err(Error::Kek)?;
    let store = Store::open(&config.store, kek.as_ref())
        .await
        .map_err(Error::Store)?;
    let tls = Arc::new(ServerTls::load(&config.tls).map_err(Error::Tls)?);
    if config.tls.crl.is_some() {
        tls.clone().spawn_crl_watcher(CRL_POLL);
    }
    let (audit, writer) = Audit::open(&config.audit.path, config.audit.reads).await?;
    let state = Arc::new(State {
        store: store.clone(),
        cache: HotCache::new(config.hot_cache_entries),
        audit,
        events: crate::events::Events::new(),
        max_body_bytes: config.limits.max_body_bytes,
        body_timeout: config.limits.body_timeout,
    });
    let bound = listener::bind(&config.listen).await?;
    let addresses = bound.describe();
    let ctx = Arc::new(Context {
        state: state.clone(),
        acceptor: TlsAcceptor::from(tls.config()),
        trust_domain: config.trust_domain.clone(),
        policy: config.policy.clone(),
        limits: config.limits.clone(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let renderer = (!config.templates.is_empty()).then(|| {
        crate::render::spawn(
            config.templates.clone(),
            store.clone(),
            &state.events,
            stop_rx.clone(),
        )
    });
    let task = tokio::spawn(listener::serve(bound, ctx, stop_rx, DRAIN));
    tracing::info!(listen = ?addresses, store = %config.store.path.display(), "latchkey ready");
    Ok(Running {
        stop,
        task,
        store,
        writer,
        state,
        renderer,
        addresses,
    })
}

/// Runs until SIGTERM or SIGINT, then stops cleanly.
pub async fn run(config: Config) -> Result<(), Error> {
    let running = start(config).await?;
    wait_for_signal().await;
    tracing::info!("stopping");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
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
