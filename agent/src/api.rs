//! The HTTP API apps and the CLI speak, behind the listener's mTLS.
//!
//! Routes (all JSON):
//!
//! | method | path | operation |
//! | --- | --- | --- |
//! | GET | `/v1/secrets/{path}[?version=N \| ?label=L]` | read |
//! | PUT | `/v1/secrets/{path}` body `{"fields":{..},"kind":..,"expires_at":..,"cas":N}` | write |
//! | DELETE | `/v1/secrets/{path}` | write |
//! | GET | `/v1/secrets?prefix=P` | list |
//! | GET | `/v1/watch?prefix=P` | read or list (server-sent events) |
//! | POST | `/v1/sync` | admin: poll the upstream now |
//! | POST | `/v1/validate/{path}` | admin: ask the secret's provider plugin |
//! | POST | `/v1/rotate/{path}` | admin: rotate now ([`lifecycle`]) |
//! | GET | `/v1/status[/{path}][?prefix=P]` | admin: lifecycle states |
//! | GET | `/metrics` | admin: Prometheus text |
//! | POST | `/v1/store/acknowledge` | admin: forget the store's reported problems |
//! | GET | `/v1/health`, `/v1/whoami` | any authenticated peer |
//!
//! Along a request: [`handle`] opens a `request` span (peer, op, method, and the
//! secret path once parsed — never a value), `router` picks the handler, the
//! handlers in `secrets`, `admin`, `lifecycle` and `watch` ask `policy` (through
//! `trail`, which also builds every audit record), read bodies through
//! `request_body` and queries through `query`, and answer through `reply`. Error
//! answers come from [`error`] only.

mod admin;
pub mod body;
pub mod error;
pub mod exact;
mod lifecycle;
mod query;
mod reply;
mod request_body;
mod router;
pub mod scrape;
mod secrets;
mod trail;
pub mod watch;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tracing::Instrument;

use crate::audit::Audit;
use crate::cache::HotCache;
use crate::events::Events;
use crate::identity::Peer;
use crate::policy::{ConnPolicy, LivePolicy, PeerPolicy};
use crate::store::Store;
use crate::sync::Syncer;

pub use body::Body;
pub use error::ApiError;
pub use reply::rfc3339;

/// What every request needs, shared by all connections.
#[derive(Debug)]
pub struct State {
    /// The encrypted store.
    pub store: Store,
    /// Rendered current-version reads.
    pub cache: Arc<HotCache>,
    /// Audit trail.
    pub audit: Audit,
    /// Change notifications.
    pub events: Events,
    /// The upstream sync (the store itself without an `[upstream]`): every write and
    /// delete goes through its commit.
    pub sync: Arc<Syncer>,
    /// Environment variables served for missing secrets.
    pub fallback: crate::fallback::EnvFallback,
    /// Counters and gauges for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Provider plugins and the secrets they look after (replaced by a reload).
    pub providers: Arc<crate::providers::Live>,
    /// The lifecycle engine, once any `[[lifecycle]]` rule exists (at start or from
    /// the reload that brought the first one).
    pub engine: std::sync::OnceLock<crate::lifecycle::Engine>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline for receiving a body.
    pub body_timeout: Duration,
    /// Watch streams open per identity.
    pub watchers: Arc<watch::Watchers>,
    /// The folder of the CA whose key the agent may sign with (`POST
    /// /v1/cert/renew`); `None` without one.
    pub ca_root: Option<std::path::PathBuf>,
    /// Where `POST /v1/reload` asks the daemon's loop to reload; `None` when nothing
    /// reloads (tests, a library embedding).
    pub reloads: Option<tokio::sync::mpsc::Sender<crate::server::ReloadRequest>>,
}

/// One authenticated connection: who, and which rules apply to them.
#[derive(Debug)]
pub struct Conn {
    /// The caller.
    pub peer: Peer,
    /// Rules picked for the caller, kept in step with reloads.
    policy: ConnPolicy,
}

impl Conn {
    /// A connection of `peer` under the policy in force.
    pub fn new(peer: Peer, live: &Arc<LivePolicy>) -> Self {
        let policy = ConnPolicy::new(Arc::clone(live), &peer);
        Conn { peer, policy }
    }

    /// The caller's rules under the policy in force now.
    pub fn policy(&self) -> PeerPolicy {
        self.policy.get(&self.peer)
    }
}

/// Handles one request. Never fails: every error becomes a JSON answer.
pub async fn handle<B>(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<B>,
) -> Result<Response<Body>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = std::time::Instant::now();
    let op = op_name(req.method(), req.uri().path());
    let span = tracing::debug_span!(
        "request",
        peer = %conn.peer.id,
        op,
        method = %req.method(),
        path = tracing::field::Empty,
    );
    let res = router::route(&state, &conn, req)
        .instrument(span)
        .await
        .unwrap_or_else(ApiError::into_response);
    state
        .metrics
        .request(op, res.status().as_u16(), started.elapsed().as_secs_f64());
    Ok(res)
}

/// The operation a request is counted under in metrics.
fn op_name(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::GET, p) if p.starts_with("/v1/secrets/") => "read",
        (&Method::PUT | &Method::DELETE, p) if p.starts_with("/v1/secrets/") => "write",
        (_, "/v1/secrets" | "/v1/secrets/") => "list",
        (_, "/v1/watch") => "watch",
        (_, "/v1/sync") => "sync",
        (_, p) if p.starts_with("/v1/validate/") => "validate",
        (_, p) if p.starts_with("/v1/rotate/") => "rotate",
        (_, p) if p.starts_with("/v1/status") => "status",
        (_, "/v1/health" | "/v1/whoami") => "health",
        (_, "/metrics") => "metrics",
        _ => "other",
    }
}
