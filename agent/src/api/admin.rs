//! The routes about the agent rather than a secret: who am I, health, metrics, the
//! store's problems, validating a secret with its provider, and syncing now.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | GET | `/v1/whoami`, `/v1/health` | any authenticated peer |
//! | GET | `/metrics` | admin |
//! | POST | `/v1/store/acknowledge`, `/v1/sync`, `/v1/reload` | admin |
//! | POST | `/v1/cert/renew` | any authenticated peer, for its own identity |
//! | POST | `/v1/validate/{path}` | admin of that path |

use http::{header, HeaderValue, Response, StatusCode};

use super::error::{engine_error, sync_error, Code};
use super::reply::json_response;
use super::trail::{admin_only, authorize, failed, record};
use super::{secrets, ApiError, Body, Conn, State};
use crate::path::SecretPath;
use crate::policy::Operation;
use crate::store::Selector;

/// `GET /v1/whoami`: the caller's identity as the agent sees it.
pub(super) fn whoami(conn: &Conn) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "id": &*conn.peer.id,
            "app": conn.peer.app.as_deref(),
            "tenant": conn.peer.tenant.as_deref(),
            "uid": conn.peer.uid,
        }),
    )
}

/// `GET /v1/health`: the agent's status and each component's, worst first decides:
///
/// | status | HTTP | when |
/// | --- | --- | --- |
/// | `ok` | 200 | the store is sound, the upstream current, the certificates and credentials in date |
/// | `degraded` | 429 | still serving, but: the upstream is failing (reads are served stale within the grace period), deletions are held, an address's circuit breaker is open, a certificate expires within 7 days (or an app's has expired), a template's last render failed, or a credential is expired, invalid, revoked or needs a new login |
/// | `failing` | 503 | the upstream has failed past the grace period (reads of cached secrets fail), or the server's or the CA's certificate has expired |
/// | `damaged` | 503 | the store reports problems |
///
/// Like Vault's `sys/health`, `?degradedcode=N` and `?failingcode=N` choose other
/// codes (e.g. `degradedcode=200` for a load balancer that should keep a degraded
/// agent in rotation). Every peer sees the statuses and counts; admin peers also
/// see what names paths or addresses (the store's problem messages, the held
/// paths, the breakers).
pub(super) fn health(
    state: &State,
    conn: &Conn,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    health_view(state, conn.policy().allows_any(Operation::Admin), query)
}

/// The HTTP codes health answers with, from the query.
struct HealthCodes {
    degraded: StatusCode,
    failing: StatusCode,
}

impl HealthCodes {
    fn parse(query: Option<&str>) -> Result<HealthCodes, ApiError> {
        let mut codes = HealthCodes {
            degraded: StatusCode::TOO_MANY_REQUESTS,
            failing: StatusCode::SERVICE_UNAVAILABLE,
        };
        for (key, value) in crate::api::query::query_pairs(query) {
            let value = value?;
            let slot = match key {
                "degradedcode" => &mut codes.degraded,
                "failingcode" => &mut codes.failing,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?} (expected degradedcode or failingcode)"
                    )))
                }
            };
            *slot = value
                .parse::<u16>()
                .ok()
                .filter(|c| (200..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{key} {value:?} is not an HTTP status code"))
                })?;
        }
        Ok(codes)
    }
}

/// One component's status, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    Degraded,
    Failing,
    Damaged,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Failing => "failing",
            Status::Damaged => "damaged",
        }
    }
}

/// The health answer; what names paths and addresses only when `admin`.
pub(super) fn health_view(
    state: &State,
    admin: bool,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let codes = HealthCodes::parse(query)?;
    let (store_status, store) = store_health(state, admin);
    let (upstream_status, upstream) = upstream_health(state, admin);
    let (cert_status, certificates) = certificate_health(state);
    let (lifecycle_status, lifecycle) = lifecycle_health(state);
    let failing_templates = state.metrics.template_renders().failing();
    let template_status = if failing_templates.is_empty() {
        Status::Ok
    } else {
        Status::Degraded
    };
    let status = store_status
        .max(upstream_status)
        .max(cert_status)
        .max(lifecycle_status)
        .max(template_status);
    let code = match status {
        Status::Ok => StatusCode::OK,
        Status::Degraded => codes.degraded,
        Status::Failing | Status::Damaged => codes.failing,
    };
    let mut body = serde_json::json!({
        "status": status.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
        "store": store,
        "upstream": upstream,
        "certificates": certificates,
        "templates": {
            "status": template_status.as_str(),
            "failing": failing_templates,
        },
    });
    if let Some(lifecycle) = lifecycle {
        body["lifecycle"] = lifecycle;
    }
    Ok(json_response(code, &body))
}

/// Days left below which a certificate makes the agent `degraded`.
const CERT_WARN_DAYS: i64 = 7;

/// The watched certificates: `failing` once the server's or the CA's has expired
/// (no new connection can succeed), `degraded` when one ends within a week or an
/// app's has expired. Holders and dates are not secret.
fn certificate_health(state: &State) -> (Status, serde_json::Value) {
    let now = crate::clock::unix_now();
    let mut status = Status::Ok;
    let mut expiring = Vec::new();
    let ends = state.metrics.certificate_expiry().ends(now);
    for (holder, not_after) in &ends {
        let left = not_after - now;
        let this = if left <= 0 && (holder == "server" || holder == "ca") {
            Status::Failing
        } else if left <= CERT_WARN_DAYS * 24 * 3600 {
            Status::Degraded
        } else {
            Status::Ok
        };
        if this > Status::Ok {
            expiring.push(serde_json::json!({
                "certificate": holder,
                "expires_in_seconds": left,
            }));
        }
        status = status.max(this);
    }
    let mut shown = serde_json::json!({
        "status": status.as_str(),
        "watched": ends.len(),
        "expiring": expiring,
    });
    if let Some(server) = ends.get("server") {
        shown["server_expires_in_seconds"] = (server - now).into();
    }
    (status, shown)
}

/// Credentials under lifecycle rules: `degraded` while any is expired, invalid,
/// revoked or waiting for a new login. `None` without rules.
fn lifecycle_health(state: &State) -> (Status, Option<serde_json::Value>) {
    use crate::lifecycle::State as Life;
    let Some(engine) = state.engine.get() else {
        return (Status::Ok, None);
    };
    let counts = engine.state_counts();
    let attention: usize = [
        Life::Expired,
        Life::Invalid,
        Life::Revoked,
        Life::ReauthRequired,
    ]
    .iter()
    .map(|s| counts.get(s).copied().unwrap_or(0))
    .sum();
    let status = if attention > 0 {
        Status::Degraded
    } else {
        Status::Ok
    };
    let by_state: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
        .collect();
    (
        status,
        Some(serde_json::json!({
            "status": status.as_str(),
            "credentials": by_state,
            "need_attention": attention,
        })),
    )
}

fn store_health(state: &State, admin: bool) -> (Status, serde_json::Value) {
    if !state.store.is_damaged() {
        return (Status::Ok, serde_json::json!({ "status": "ok" }));
    }
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
    (
        Status::Damaged,
        serde_json::json!({ "status": "damaged", "problems": problems }),
    )
}

fn upstream_health(state: &State, admin: bool) -> (Status, serde_json::Value) {
    use crate::sync::Freshness;
    let name = state.sync.upstream_name();
    let Some(freshness) = state.sync.freshness() else {
        return (
            Status::Ok,
            serde_json::json!({ "status": "ok", "name": name, "kind": "local" }),
        );
    };
    let held = state.sync.held();
    let addresses = state.sync.addresses();
    let open = addresses
        .iter()
        .filter(|a| a.breaker != crate::upstream::breaker::BreakerState::Closed)
        .count();
    let (mut status, sync, age) = match freshness {
        Freshness::Fresh { age_seconds } => (Status::Ok, "fresh", age_seconds),
        Freshness::Stale { age_seconds } => (Status::Degraded, "stale", age_seconds),
        Freshness::Expired { age_seconds } => (Status::Failing, "expired", Some(age_seconds)),
    };
    if !held.is_empty() || open > 0 {
        status = status.max(Status::Degraded);
    }
    let mut shown = serde_json::json!({
        "status": status.as_str(),
        "name": name,
        "sync": sync,
        "age_seconds": age,
        "held_deletions": held.len(),
        "open_breakers": open,
    });
    if admin {
        shown["held"] = held.iter().map(|p| p.as_str()).collect();
        shown["addresses"] = addresses
            .iter()
            .map(|a| {
                let mut one = serde_json::json!({
                    "address": a.address,
                    "breaker": a.breaker.as_str(),
                });
                if let crate::upstream::breaker::BreakerState::Open { retry_in } = a.breaker {
                    one["retry_in_ms"] = (retry_in.as_millis() as u64).into();
                }
                one
            })
            .collect();
    }
    (status, shown)
}

/// `POST /v1/store/acknowledge`: an operator has dealt with the store's problems;
/// health answers ok again. Audited.
pub(super) async fn acknowledge(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    admin_only(state, conn, "acknowledge", "the store's problems", "store").await?;
    let cleared = state.store.acknowledge_problems().await?;
    tracing::warn!(peer = %conn.peer.id, problems = cleared, "store problems acknowledged");
    state.audit.record(record(conn, "acknowledge", None)).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "acknowledged": cleared }),
    ))
}

/// `GET /metrics`: Prometheus text (OpenMetrics).
pub(super) async fn metrics(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    admin_only(state, conn, "read", "metrics", "metrics").await?;
    Ok(metrics_text(state))
}

/// The metrics, as OpenMetrics text.
pub(super) fn metrics_text(state: &State) -> Response<Body> {
    if let Some(engine) = state.engine.get() {
        state.metrics.lifecycle(&engine.state_counts());
    }
    state.metrics.store_problems(state.store.problems().len());
    state
        .metrics
        .certificate_expiry()
        .ends(crate::clock::unix_now());
    state
        .metrics
        .upstream(state.sync.held().len(), &state.sync.addresses());
    let text = state
        .metrics
        .render(state.store.len(), state.sync.freshness());
    let mut res = Response::new(Body::full(text));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}

/// `POST /v1/validate/{path}`: asks the secret's provider plugin whether it works.
/// The engine records the state and publishes `validated` / `invalid`.
pub(super) async fn validate(
    state: &State,
    conn: &Conn,
    raw: &str,
) -> Result<Response<Body>, ApiError> {
    let path = SecretPath::parse(raw)?;
    authorize(state, conn, Operation::Admin, &path).await?;
    let Some(secret) = secrets::lookup(state, &path, Selector::Current).await? else {
        return Err(ApiError::not_found(format_args!("secret {path}")));
    };
    let engine = state
        .engine
        .get()
        .ok_or_else(|| ApiError::no_plugin_for(&path))?;
    let mut audited = record(conn, "validate", Some(path.as_str()));
    audited.version = Some(secret.version);
    let checked = match engine.validate_now(&path).await {
        Ok(checked) => checked,
        Err(e) => {
            let err = engine_error(e);
            failed(&mut audited, &err);
            state.audit.record(audited).await;
            return Err(err);
        }
    };
    audited.code = checked.undecided().map(|_| "provider_error");
    state.audit.record(audited).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "path": path.as_str(),
            "version": secret.version,
            "plugin": checked.plugin,
            "valid": checked.valid,
            "outcome": checked.outcome,
            "state": checked.state.as_str(),
            "detail": checked.detail,
            "permissions": super::reply::permissions(&checked.permissions),
            "expires_at": checked
                .expires_at
                .and_then(|t| i64::try_from(t).ok())
                .map(super::reply::rfc3339),
            "error": checked.undecided(),
        }),
    ))
}

/// `POST /v1/reload`: the same reload as SIGHUP, answered with its outcome: 200
/// `{"outcome":"applied","changed":…}` or 422 `invalid_config` with every problem
/// (nothing changed). Audited as the caller by the reload itself.
pub(super) async fn reload(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    admin_only(state, conn, "reload", "the config", "reload").await?;
    let unavailable = || {
        ApiError::new(
            StatusCode::CONFLICT,
            Code::Invalid,
            "this agent does not reload (it is not running as a daemon)",
        )
    };
    let requests = state.reloads.as_ref().ok_or_else(unavailable)?;
    let (answer, outcome) = tokio::sync::oneshot::channel();
    requests
        .send((conn.peer.id.to_string(), answer))
        .await
        .map_err(|_| unavailable())?;
    // Answered by the daemon's loop between two signals; never waited on forever.
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), outcome)
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    let status = match outcome {
        crate::server::Reloaded::Applied { .. } => StatusCode::OK,
        crate::server::Reloaded::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Ok(json_response(
        status,
        &serde_json::to_value(&outcome).unwrap_or_default(),
    ))
}

/// `POST /v1/cert/renew`: a new certificate for the caller's own identity, with the
/// lifetime of the certificate it connected with (which must still be valid: the
/// handshake checked it, and the CRL). With a body `{"csr": PEM}` it certifies the
/// request's key, which never leaves the app; without one it also answers a new
/// key. Audited. 409 `no_ca` when the agent has no CA key to sign with.
pub(super) async fn renew_cert<B>(
    state: &State,
    conn: &Conn,
    req: http::Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RenewBody {
        csr: Option<String>,
    }
    let body = super::request_body::read(state, req).await?;
    let csr = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<RenewBody>(body.expose())
            .map_err(|e| super::error::json_error(&e))?
            .csr
    };
    let Some(root) = state.ca_root.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::NoCa,
            "this agent has no CA key to sign with; renew the certificate where it was issued",
        ));
    };
    let id = crate::identity::SpiffeId::parse(&conn.peer.id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Code::BadIdentity,
            "the presented identity cannot be renewed",
        )
    })?;
    let lifetime =
        std::time::Duration::from_secs(u64::try_from(conn.peer.cert_lifetime_secs).unwrap_or(0));
    let mut audited = record(conn, "cert-renew", None);
    let issued = tokio::task::spawn_blocking(move || {
        crate::identity::renew::renew_client(&root, &id, lifetime, csr.as_deref())
    })
    .await;
    let issued = match issued {
        Ok(Ok(issued)) => issued,
        Ok(Err(e @ crate::identity::ca::Error::InvalidRequest { .. })) => {
            let err = ApiError::new(StatusCode::BAD_REQUEST, Code::BadRequest, e.to_string());
            failed(&mut audited, &err);
            state.audit.record(audited).await;
            return Err(err);
        }
        Ok(Err(e)) => {
            let err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                format!("cannot issue a certificate: {e}"),
            );
            failed(&mut audited, &err);
            state.audit.record(audited).await;
            return Err(err);
        }
        Err(_) => {
            let err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "the signing task failed",
            );
            failed(&mut audited, &err);
            state.audit.record(audited).await;
            return Err(err);
        }
    };
    audited.detail =
        Some(format!("new serial {} (was {})", issued.serial, conn.peer.serial).into());
    state.audit.record(audited).await;
    #[derive(serde::Serialize)]
    struct Renewed<'a> {
        id: &'a str,
        serial: &'a str,
        not_after: i64,
        cert_pem: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        key_pem: &'a str,
    }
    // The key goes out in an exactly sized, zeroizing buffer, like a secret's value.
    let body = super::exact::to_secret_bytes(&Renewed {
        id: &conn.peer.id,
        serial: &issued.serial,
        not_after: issued.not_after,
        cert_pem: &issued.cert_pem,
        key_pem: issued.key_pem.expose(),
    })
    .map_err(|_| ApiError::internal())?;
    Ok(super::reply::with_json_headers(Response::new(Body::full(
        bytes::Bytes::from_owner(body),
    ))))
}

/// `POST /v1/sync[?accept_deletions=true]`: polls the upstream now and answers with
/// what changed; with `accept_deletions`, the poll also drops what the deletion guard
/// held (audited with how many were held).
pub(super) async fn sync_now(
    state: &State,
    conn: &Conn,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let accept = accept_deletions_param(query)?;
    admin_only(state, conn, "sync", "the upstream", "sync").await?;
    if state.sync.is_local() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::NoUpstream,
            "this agent has no upstream; its embedded store is the source of truth",
        ));
    }
    let mut audited = record(conn, "sync", None);
    let held = state.sync.held();
    let polled = if accept {
        audited.detail = Some(format!("accept deletions ({} held)", held.len()).into());
        state.sync.poll_accepting_deletions().await
    } else {
        state.sync.poll().await
    };
    let report = match polled.map_err(sync_error) {
        Ok(report) => report,
        Err(err) => {
            failed(&mut audited, &err);
            state.audit.record(audited).await;
            return Err(err);
        }
    };
    state.audit.record(audited).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(&report).unwrap_or_default(),
    ))
}

/// `?accept_deletions=true|false` (false when absent); nothing else.
fn accept_deletions_param(query: Option<&str>) -> Result<bool, ApiError> {
    let mut accept = false;
    for (key, value) in super::query::query_pairs(query) {
        let value = value?;
        match (key, value.as_str()) {
            ("accept_deletions", "true" | "1" | "") => accept = true,
            ("accept_deletions", "false" | "0") => accept = false,
            ("accept_deletions", other) => {
                return Err(ApiError::bad_request(format!(
                    "accept_deletions={other:?}: expected true or false"
                )))
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected accept_deletions)"
                )))
            }
        }
    }
    Ok(accept)
}
