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
//! Each request: parse and check the path, ask `policy`, serve from the hot cache or
//! the store, record in `audit`. Error answers come from [`error`] only.

pub mod body;
pub mod error;
pub mod exact;
mod lifecycle;
pub mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, Outcome, Record};
use crate::cache::{Cached, HotCache};
use crate::events::Events;
use crate::identity::Peer;
use crate::path::{Prefix, SecretPath};
use crate::policy::{Decision, Operation, PeerPolicy};
use crate::secret::{Fields, SecretBytes};
use crate::store::{self, Secret, Selector, Store};
use crate::sync::{Change, Committed, Freshness, Syncer};

pub use body::Body;
pub use error::ApiError;
use error::{sync_error, Code};

/// The end of every secret read's body. The cached part stops before it, so a
/// response can say whether it is stale without copying the cached bytes.
const FRESH_TAIL: &[u8] = b",\"stale\":false}";
/// The tail while the store reports damage: what is served may not be all there is.
const DAMAGED_TAIL: &[u8] = b",\"stale\":false,\"store_damaged\":true}";

const SECRETS: &str = "/v1/secrets";

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
    /// Provider plugins and the secrets they look after.
    pub providers: Arc<crate::providers::Providers>,
    /// The lifecycle engine, when any `[[lifecycle]]` rule exists.
    pub engine: Option<crate::lifecycle::Engine>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline for receiving a body.
    pub body_timeout: Duration,
    /// Watch streams open per identity.
    pub watchers: Arc<watch::Watchers>,
}

/// One authenticated connection: who, and which rules apply to them.
#[derive(Debug)]
pub struct Conn {
    /// The caller.
    pub peer: Peer,
    /// Rules picked for the caller.
    pub policy: PeerPolicy,
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
    let op = op_name(req.method(), req.uri().path());
    let res = route(&state, &conn, req)
        .await
        .unwrap_or_else(ApiError::into_response);
    state.metrics.request(op, res.status().as_u16());
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

async fn route<B>(
    state: &Arc<State>,
    conn: &Arc<Conn>,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri = req.uri().clone();
    let path = uri.path();
    if let Some(rest) = path.strip_prefix(SECRETS) {
        if rest.is_empty() || rest == "/" {
            return match *req.method() {
                Method::GET => list(state, conn, req.uri().query()).await,
                _ => Err(ApiError::method_not_allowed("GET")),
            };
        }
        if let Some(raw) = rest.strip_prefix('/') {
            return secret_route(state, conn, raw, req).await;
        }
    }
    if let Some(raw) = path.strip_prefix("/v1/validate/") {
        return match *req.method() {
            Method::POST => validate(state, conn, raw).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        };
    }
    if let Some(raw) = path.strip_prefix("/v1/rotate/") {
        return match *req.method() {
            Method::POST => lifecycle::rotate(state, conn, raw).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        };
    }
    if path == "/v1/status" || path.starts_with("/v1/status/") {
        let raw = path.strip_prefix("/v1/status/").filter(|r| !r.is_empty());
        return match *req.method() {
            Method::GET => lifecycle::status(state, conn, raw, uri.query()).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        };
    }
    match (req.method(), path) {
        (&Method::GET, "/v1/health") => Ok(health(state, conn)),
        (&Method::POST, "/v1/store/acknowledge") => acknowledge(state, conn).await,
        (&Method::GET, "/v1/whoami") => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({
                "id": &*conn.peer.id,
                "app": conn.peer.app.as_deref(),
                "tenant": conn.peer.tenant.as_deref(),
                "uid": conn.peer.uid,
            }),
        )),
        (&Method::GET, "/v1/watch") => watch::watch(state, conn, req.uri().query()).await,
        (&Method::POST, "/v1/sync") => sync_now(state, conn).await,
        (&Method::GET, "/metrics") => metrics(state, conn).await,
        (_, "/metrics") => Err(ApiError::method_not_allowed("GET")),
        (_, "/v1/sync" | "/v1/store/acknowledge") => Err(ApiError::method_not_allowed("POST")),
        (_, "/v1/health" | "/v1/whoami" | "/v1/watch") => Err(ApiError::method_not_allowed("GET")),
        _ => Err(ApiError::no_route(path)),
    }
}

async fn secret_route<B>(
    state: &State,
    conn: &Conn,
    raw: &str,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let op = match *req.method() {
        Method::GET => Operation::Read,
        Method::PUT | Method::DELETE => Operation::Write,
        _ => return Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
    };
    let path = SecretPath::parse(raw)?;
    authorize(state, conn, op, &path).await?;
    let result = match *req.method() {
        Method::GET => read(state, &path, req.uri().query()).await,
        Method::PUT => write(state, &path, req).await,
        _ => delete(state, &path).await,
    };
    if matches!(&result, Err(e) if e.code == Code::IntegrityError) {
        state.metrics.integrity_error();
    }
    // Writes and failures are always recorded; successful reads unless turned off.
    let audited = op != Operation::Read || state.audit.records_reads() || result.is_err();
    if audited {
        let mut record = Record::now(
            conn.peer.id.clone(),
            conn.peer.uid,
            op.as_str(),
            Some(path.as_str()),
        );
        match &result {
            Ok((res, version)) => {
                record.status = res.status().as_u16();
                record.version = *version;
            }
            Err(e) => {
                record.outcome = Outcome::Failed;
                record.status = e.status.as_u16();
                record.code = Some(e.code.as_str());
            }
        }
        // A failed read changes nothing: a client reading missing paths in a loop is
        // coalesced like a denied one. Writes, and damaged records (each path
        // matters), are recorded one by one.
        let repeatable = matches!(&result, Err(e) if e.code != Code::IntegrityError);
        if op == Operation::Read && repeatable {
            state.audit.record_coalesced(record).await;
        } else {
            state.audit.record(record).await;
        }
    }
    result.map(|(res, _)| res)
}

async fn authorize(
    state: &State,
    conn: &Conn,
    op: Operation,
    path: &SecretPath,
) -> Result<(), ApiError> {
    if conn.policy.check(&conn.peer, op, path) == Decision::Allow {
        return Ok(());
    }
    let err = ApiError::forbidden(op.as_str(), path.as_str());
    deny(state, conn, op, path.as_str(), &err).await;
    Err(err)
}

async fn deny(state: &State, conn: &Conn, op: Operation, what: &str, err: &ApiError) {
    let mut record = Record::now(conn.peer.id.clone(), conn.peer.uid, op.as_str(), Some(what));
    record.outcome = Outcome::Denied;
    record.status = err.status.as_u16();
    record.code = Some(err.code.as_str());
    state.metrics.denial(op.as_str());
    state.audit.record_coalesced(record).await;
}

type Answer = (Response<Body>, Option<u64>);

/// Whether a read of `path` must refresh it first (expired, under a refresh policy).
fn refreshes_on_read(state: &State, path: &SecretPath, expires_at: Option<i64>) -> bool {
    state
        .engine
        .as_ref()
        .is_some_and(|e| e.refreshes_on_read(path, expires_at))
}

async fn read(state: &State, path: &SecretPath, query: Option<&str>) -> Result<Answer, ApiError> {
    let mut selector = Selector::Current;
    for (key, value) in query_pairs(query) {
        let value = value?;
        selector = match key {
            "version" => Selector::Version(value.parse().map_err(|_| {
                ApiError::bad_request(format!("version {value:?} is not a whole number"))
            })?),
            "label" => {
                if value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_')
                {
                    return Err(ApiError::bad_request(format!(
                        "label {value:?} is not valid"
                    )));
                }
                Selector::Label(value)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected version or label)"
                )))
            }
        };
    }
    let tail = freshness_tail(state)?;
    if matches!(selector, Selector::Current) {
        if let Some(hit) = state.cache.get(path) {
            if !refreshes_on_read(state, path, hit.expires_at) {
                state.metrics.cache(true);
                return Ok((secret_response(hit.body.clone(), tail), Some(hit.version)));
            }
        }
    }
    state.metrics.cache(false);
    let seen = state.cache.generation();
    let is_current = matches!(selector, Selector::Current);
    let mut secret = lookup(state, path, selector.clone()).await?;
    // A miss: ask the upstream once (shared with concurrent misses).
    if secret.is_none() && is_current && state.sync.fetch(path).await.map_err(sync_error)? {
        secret = lookup(state, path, selector).await?;
    }
    let Some(secret) = secret else {
        if let Some(fields) = is_current.then(|| state.fallback.get(path)).flatten() {
            let stand_in = Secret {
                path: path.clone(),
                version: 0,
                labels: vec!["env-fallback".to_owned()],
                kind: "env-fallback".to_owned(),
                fields: fields.clone(),
                created_at: state.fallback.loaded_at,
                updated_at: state.fallback.loaded_at,
                expires_at: None,
            };
            let body = render(&stand_in)?;
            return Ok((secret_response(body, tail), Some(0)));
        }
        return Err(ApiError::not_found(format_args!("secret {path}")));
    };
    let secret = match &state.engine {
        // An expired OAuth token: refresh it now (concurrent reads share one refresh).
        Some(engine) if is_current && refreshes_on_read(state, path, secret.expires_at) => engine
            .refresh(path, true)
            .await
            .map_err(lifecycle::engine_error)?,
        _ => secret,
    };
    let body = render(&secret)?;
    if is_current {
        state.cache.insert_if_unchanged(
            path.clone(),
            Arc::new(Cached {
                version: secret.version,
                expires_at: secret.expires_at,
                body: body.clone(),
            }),
            seen,
        );
    }
    Ok((secret_response(body, tail), Some(secret.version)))
}

async fn lookup(
    state: &State,
    path: &SecretPath,
    selector: Selector,
) -> Result<Option<Secret>, ApiError> {
    let path = path.clone();
    Ok(state
        .store
        .blocking(move |store| store.get(&path, selector))
        .await?)
}

/// The end of a read's body: whether the value may be out of date, and how long ago
/// it was last confirmed with the upstream. Past the grace period, reads fail.
fn freshness_tail(state: &State) -> Result<Bytes, ApiError> {
    let damaged = state.store.is_damaged();
    let Some(freshness) = state.sync.freshness() else {
        return Ok(Bytes::from_static(if damaged {
            DAMAGED_TAIL
        } else {
            FRESH_TAIL
        }));
    };
    let mark = if damaged {
        ",\"store_damaged\":true"
    } else {
        ""
    };
    let (stale, age) = match freshness {
        Freshness::Fresh { age_seconds } => (false, age_seconds),
        Freshness::Stale { age_seconds } => (true, age_seconds),
        Freshness::Expired { age_seconds } => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::UpstreamUnavailable,
                format!(
                    "upstream {} has been unreachable past the grace period; last good sync {age_seconds}s ago",
                    state.sync.upstream_name()
                ),
            ))
        }
    };
    Ok(Bytes::from(match age {
        Some(age) => format!(",\"stale\":{stale},\"age_seconds\":{age}{mark}}}"),
        None => format!(",\"stale\":{stale},\"age_seconds\":null{mark}}}"),
    }))
}

/// `GET /v1/health`: 200 `{"status":"ok"}`, or 503 `{"status":"damaged"}` while the
/// store reports problems: their kinds for every peer, and their messages (which name
/// paths) for admin peers only.
fn health(state: &State, conn: &Conn) -> Response<Body> {
    let version = env!("CARGO_PKG_VERSION");
    if !state.store.is_damaged() {
        return json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "version": version }),
        );
    }
    let admin = conn.policy.allows_any(Operation::Admin);
    let problems: Vec<serde_json::Value> = state
        .store
        .problems()
        .iter()
        .map(|p| {
            let mut shown = serde_json::to_value(p).unwrap_or_default();
            match shown.as_object_mut() {
                Some(fields) if admin => {
                    fields.insert("message".into(), p.to_string().into());
                }
                Some(fields) => fields.retain(|k, _| k == "kind"),
                None => {}
            }
            shown
        })
        .collect();
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "status": "damaged",
            "version": version,
            "store": { "problems": problems },
        }),
    )
}

/// `POST /v1/store/acknowledge`: an operator has dealt with the store's problems;
/// health answers ok again. Audited.
async fn acknowledge(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if !conn.policy.allows_any(Operation::Admin) {
        let err = ApiError::forbidden("acknowledge", "the store's problems");
        deny(state, conn, Operation::Admin, "store", &err).await;
        return Err(err);
    }
    let cleared = state.store.acknowledge_problems().await?;
    tracing::warn!(peer = %conn.peer.id, problems = cleared, "store problems acknowledged");
    let mut record = Record::now(conn.peer.id.clone(), conn.peer.uid, "acknowledge", None);
    record.outcome = Outcome::Ok;
    state.audit.record(record).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "acknowledged": cleared }),
    ))
}

async fn metrics(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if !conn.policy.allows_any(Operation::Admin) {
        let err = ApiError::forbidden("read", "metrics");
        deny(state, conn, Operation::Admin, "metrics", &err).await;
        return Err(err);
    }
    if let Some(engine) = &state.engine {
        state.metrics.lifecycle(&engine.state_counts());
    }
    state.metrics.store_problems(state.store.problems().len());
    let text = state
        .metrics
        .render(state.store.len(), state.sync.freshness());
    let mut res = Response::new(Body::full(text));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

/// `POST /v1/validate/{path}`: asks the secret's provider plugin whether it works.
async fn validate(state: &State, conn: &Conn, raw: &str) -> Result<Response<Body>, ApiError> {
    let path = SecretPath::parse(raw)?;
    authorize(state, conn, Operation::Admin, &path).await?;
    let Some(secret) = lookup(state, &path, Selector::Current).await? else {
        return Err(ApiError::not_found(format_args!("secret {path}")));
    };
    // The engine records the state and publishes `validated` / `invalid`.
    let engine = state
        .engine
        .as_ref()
        .ok_or_else(|| ApiError::no_plugin_for(&path))?;
    let mut record = Record::now(
        conn.peer.id.clone(),
        conn.peer.uid,
        "validate",
        Some(path.as_str()),
    );
    record.version = Some(secret.version);
    let checked = match engine.validate_now(&path).await {
        Ok(checked) => checked,
        Err(e) => {
            let err = lifecycle::engine_error(e);
            record.outcome = Outcome::Failed;
            record.status = err.status.as_u16();
            record.code = Some(err.code.as_str());
            state.audit.record(record).await;
            return Err(err);
        }
    };
    record.code = checked.undecided().map(|_| "provider_error");
    state.audit.record(record).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "path": path.as_str(),
            "version": secret.version,
            "plugin": checked.plugin,
            "valid": checked.valid,
            "detail": checked.detail,
            "permissions": checked.permissions,
            "expires_at": checked.expires_at,
            "error": checked.undecided(),
        }),
    ))
}

async fn sync_now(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if !conn.policy.allows_any(Operation::Admin) {
        let err = ApiError::forbidden("sync", "the upstream");
        deny(state, conn, Operation::Admin, "sync", &err).await;
        return Err(err);
    }
    if state.sync.is_local() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::NoUpstream,
            "this agent has no upstream; its embedded store is the source of truth",
        ));
    }
    let report = state.sync.poll().await.map_err(sync_error)?;
    let mut record = Record::now(conn.peer.id.clone(), conn.peer.uid, "sync", None);
    record.outcome = Outcome::Ok;
    state.audit.record(record).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(&report).unwrap_or_default(),
    ))
}

/// The body of a secret read, as JSON.
#[derive(Serialize)]
struct SecretView<'a> {
    path: &'a str,
    version: u64,
    labels: &'a [String],
    kind: &'a str,
    fields: crate::secret::ExposedFields<'a>,
    created_at: String,
    updated_at: String,
    expires_at: Option<String>,
}

/// The body of a read without its closing brace (the per-request tail closes it), in
/// a zeroizing buffer of exactly its length.
fn render(secret: &Secret) -> Result<Bytes, ApiError> {
    let view = SecretView {
        path: secret.path.as_str(),
        version: secret.version,
        labels: &secret.labels,
        kind: &secret.kind,
        fields: secret.fields.exposed(),
        created_at: rfc3339(secret.created_at),
        updated_at: rfc3339(secret.updated_at),
        expires_at: secret.expires_at.map(rfc3339),
    };
    // Exactly sized, so the buffer holding values is never reallocated (a reallocation
    // would leave a copy behind that nothing zeroizes).
    let body = Bytes::from_owner(exact::to_secret_bytes(&view).map_err(|_| ApiError::internal())?);
    if body.last() != Some(&b'}') {
        return Err(ApiError::internal());
    }
    Ok(body.slice(..body.len() - 1))
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn parse_time(key: &str, text: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| ApiError::bad_request(format!("{key}: {text:?} is not an RFC 3339 time")))
}

/// The body of `PUT /v1/secrets/{path}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    fields: Fields,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    cas: Option<u64>,
}

async fn write<B>(state: &State, path: &SecretPath, req: Request<B>) -> Result<Answer, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut cas = None;
    let mut validate = false;
    for (key, value) in query_pairs(req.uri().query()) {
        let value = value?;
        match key {
            "cas" => {
                cas = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("cas {value:?} is not a whole number"))
                })?)
            }
            "validate" => {
                validate = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "validate {value:?} is not true or false"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected cas or validate)"
                )))
            }
        }
    }
    let body = read_body(state, req).await?;
    let put: PutBody = serde_json::from_slice(body.expose()).map_err(|e| error::json_error(&e))?;
    drop(body);
    if put.fields.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::Invalid,
            "fields must hold at least one field",
        ));
    }
    let expires_at = match put.expires_at.as_deref() {
        Some(text) => Some(parse_time("expires_at", text)?),
        None => None,
    };
    let write = store::Write {
        fields: put.fields,
        kind: put.kind,
        expires_at,
        cas: put.cas.or(cas),
    };
    // Validation before storage: a credential the provider rejects is not stored.
    match &state.engine {
        Some(engine) => {
            let candidate = crate::providers::Credential {
                kind: write
                    .kind
                    .clone()
                    .unwrap_or_else(|| store::DEFAULT_KIND.to_owned()),
                fields: write.fields.clone(),
                expires_at: write.expires_at,
            };
            engine
                .check_before_write(path, &candidate, validate)
                .await
                .map_err(lifecycle::engine_error)?;
        }
        None if validate => return Err(ApiError::no_plugin_for(path)),
        None => {}
    }
    // Upstream first; the commit stores, flushes, invalidates and publishes.
    let secret = match state
        .sync
        .commit(path, Change::Write(write))
        .await
        .map_err(sync_error)?
    {
        Committed::Written(secret) => secret,
        Committed::Deleted { .. } => return Err(ApiError::internal()),
    };
    let res = json_response(
        StatusCode::OK,
        &serde_json::json!({
            "path": secret.path.as_str(),
            "version": secret.version,
            "labels": secret.labels,
            "kind": secret.kind,
            "created_at": rfc3339(secret.created_at),
            "updated_at": rfc3339(secret.updated_at),
            "expires_at": secret.expires_at.map(rfc3339),
        }),
    );
    Ok((res, Some(secret.version)))
}

/// The most of an oversized body read and thrown away before answering 413, so a
/// client still sending sees the answer instead of a reset connection.
const DRAIN_LIMIT: u64 = 1024 * 1024;

async fn drain<B>(body: B, timeout: Duration)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drained = Limited::new(body, DRAIN_LIMIT as usize).collect();
    let _ = tokio::time::timeout(timeout, drained).await;
}

async fn read_body<B>(state: &State, req: Request<B>) -> Result<SecretBytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit as u64 {
            if len <= DRAIN_LIMIT {
                drain(req.into_body(), state.body_timeout).await;
            }
            return Err(ApiError::too_large(limit));
        }
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
    }
    // Sized up front (at most the limit), so the buffer holding values is never
    // reallocated and no copy is left behind unzeroized.
    let capacity = declared.unwrap_or(limit as u64).min(limit as u64) as usize;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(capacity));
    let mut body = std::pin::pin!(req.into_body());
    let mut seen: u64 = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > limit as u64 || bytes.len() + data.len() > capacity {
                // Keep reading (up to a bound) so the client sees the 413.
                if seen > DRAIN_LIMIT {
                    break;
                }
                continue;
            }
            bytes.extend_from_slice(&data);
        }
        Ok::<(), ApiError>(())
    };
    let outcome = tokio::time::timeout(state.body_timeout, read).await;
    let bytes = SecretBytes::from(bytes);
    match outcome {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Code::BodyTimeout,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if seen > limit as u64 => Err(ApiError::too_large(limit)),
        Ok(Ok(())) => Ok(bytes),
    }
}

async fn delete(state: &State, path: &SecretPath) -> Result<Answer, ApiError> {
    let committed = state
        .sync
        .commit(path, Change::Delete)
        .await
        .map_err(sync_error)?;
    if matches!(
        committed,
        Committed::Deleted {
            existed: Some(false)
        }
    ) {
        return Err(ApiError::not_found(format_args!("secret {path}")));
    }
    Ok((
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "path": path.as_str(), "deleted": true }),
        ),
        None,
    ))
}

#[derive(Serialize)]
struct ListEntry<'a> {
    path: &'a str,
    version: u64,
    kind: &'a str,
    updated_at: String,
    expires_at: Option<String>,
}

async fn list(state: &State, conn: &Conn, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let prefix = prefix_param(query)?;
    if !conn.policy.may_list_under(&conn.peer, &prefix) {
        let err = ApiError::forbidden("list", &format!("prefix {:?}", prefix.as_str()));
        deny(state, conn, Operation::List, prefix.as_str(), &err).await;
        return Err(err);
    }
    let scan = prefix.clone();
    let entries = state.store.blocking(move |store| store.list(&scan)).await?;
    let visible: Vec<ListEntry<'_>> = entries
        .iter()
        .filter(|e| conn.policy.check(&conn.peer, Operation::List, &e.path) == Decision::Allow)
        .map(|e| ListEntry {
            path: e.path.as_str(),
            version: e.current_version,
            kind: &e.kind,
            updated_at: rfc3339(e.updated_at),
            expires_at: e.expires_at.map(rfc3339),
        })
        .collect();
    if state.audit.records_reads() {
        let record = Record::now(
            conn.peer.id.clone(),
            conn.peer.uid,
            "list",
            Some(prefix.as_str()),
        );
        state.audit.record(record).await;
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "prefix": prefix.as_str(), "secrets": visible }),
    ))
}

fn secret_response(head: Bytes, tail: Bytes) -> Response<Body> {
    with_json_headers(Response::new(Body::two(head, tail)))
}

fn with_json_headers(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut res = with_json_headers(Response::new(Body::full(bytes)));
    *res.status_mut() = status;
    res
}

/// `key=value` pairs of a query string, values percent-decoded. A value that does
/// not decode to UTF-8 is an error.
/// The `?prefix=P` of a listing query (everything when absent); any other parameter
/// is refused.
pub(crate) fn prefix_param(query: Option<&str>) -> Result<Prefix, ApiError> {
    let mut prefix = Prefix::all();
    for (key, value) in query_pairs(query) {
        let value = value?;
        match key {
            "prefix" => prefix = Prefix::parse(&value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected prefix)"
                )))
            }
        }
    }
    Ok(prefix)
}

pub(crate) fn query_pairs(
    query: Option<&str>,
) -> impl Iterator<Item = (&str, Result<String, ApiError>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key, percent_decode(value))
        })
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("malformed percent-encoding in the query")
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("query is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").expect("ok"), "a/b");
        assert_eq!(percent_decode("a+b").expect("ok"), "a b");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }
}
