//! The routes about the agent rather than a secret: who am I, health, metrics, the
//! store's problems, validating a secret with its provider, and syncing now.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | GET | `/v1/whoami`, `/v1/health` | any authenticated peer |
//! | GET | `/metrics` | admin |
//! | POST | `/v1/store/acknowledge`, `/v1/sync` | admin |
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

/// `GET /v1/health`: 200 `{"status":"ok"}`, or 503 `{"status":"damaged"}` while the
/// store reports problems: their kinds for every peer, and their messages (which name
/// paths) for admin peers only.
pub(super) fn health(state: &State, conn: &Conn) -> Response<Body> {
    health_view(state, conn.policy().allows_any(Operation::Admin))
}

/// The health answer; problem messages only when `admin`.
pub(super) fn health_view(state: &State, admin: bool) -> Response<Body> {
    let version = env!("CARGO_PKG_VERSION");
    if !state.store.is_damaged() {
        return json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "version": version }),
        );
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
        .as_ref()
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
            "detail": checked.detail,
            "permissions": checked.permissions,
            "expires_at": checked.expires_at,
            "error": checked.undecided(),
        }),
    ))
}

/// `POST /v1/sync`: polls the upstream now and answers with what changed.
pub(super) async fn sync_now(state: &State, conn: &Conn) -> Result<Response<Body>, ApiError> {
    admin_only(state, conn, "sync", "the upstream", "sync").await?;
    if state.sync.is_local() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::NoUpstream,
            "this agent has no upstream; its embedded store is the source of truth",
        ));
    }
    let mut audited = record(conn, "sync", None);
    let report = match state.sync.poll().await.map_err(sync_error) {
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
