//! Which handler answers a request: by path, then by method (405 with `Allow` for a
//! known path asked with the wrong one). Secret routes are authorized and audited
//! here, around the handler, so every read, write and delete is recorded the same
//! way.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};

use super::error::Code;
use super::trail::{authorize, failed, record};
use super::{admin, lifecycle, secrets, watch, ApiError, Body, Conn, State};
use crate::path::SecretPath;
use crate::policy::Operation;

const SECRETS: &str = "/v1/secrets";

/// Answers one request, or says why not.
pub(super) async fn route<B>(
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
    let query = uri.query();
    if let Some(rest) = path.strip_prefix(SECRETS) {
        if rest.is_empty() || rest == "/" {
            return match *req.method() {
                Method::GET => secrets::list(state, conn, query).await,
                _ => Err(ApiError::method_not_allowed("GET")),
            };
        }
        if let Some(raw) = rest.strip_prefix('/') {
            return secret_route(state, conn, raw, req).await;
        }
    }
    if path == "/v1/cert/renew" && req.method() == Method::POST {
        return admin::renew_cert(state, conn, req).await;
    }
    if let Some(raw) = path.strip_prefix("/v1/validate/") {
        return match *req.method() {
            Method::POST => admin::validate(state, conn, raw).await,
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
            Method::GET => lifecycle::status(state, conn, raw, query).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        };
    }
    match (req.method(), path) {
        (&Method::GET, "/v1/health") => admin::health(state, conn, query),
        (&Method::GET, "/v1/whoami") => Ok(admin::whoami(conn)),
        (&Method::GET, "/v1/watch") => watch::watch(state, conn, query).await,
        (&Method::GET, "/metrics") => admin::metrics(state, conn).await,
        (&Method::POST, "/v1/store/acknowledge") => admin::acknowledge(state, conn).await,
        (&Method::POST, "/v1/sync") => admin::sync_now(state, conn, query).await,
        (&Method::POST, "/v1/reload") => admin::reload(state, conn).await,
        (_, "/metrics" | "/v1/health" | "/v1/whoami" | "/v1/watch") => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (_, "/v1/sync" | "/v1/store/acknowledge" | "/v1/cert/renew" | "/v1/reload") => {
            Err(ApiError::method_not_allowed("POST"))
        }
        _ => Err(ApiError::no_route(path)),
    }
}

/// `/v1/secrets/{path}`: parse, authorize, run the handler, audit the outcome.
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
    tracing::Span::current().record("path", path.as_str());
    authorize(state, conn, op, &path).await?;
    let result = match *req.method() {
        Method::GET => secrets::read(state, conn, &path, req.uri().query()).await,
        Method::PUT => secrets::write(state, &path, req).await,
        _ => secrets::delete(state, &path).await,
    };
    if matches!(&result, Err(e) if e.code == Code::IntegrityError) {
        state.metrics.integrity_error();
    }
    // Writes and failures are always recorded; successful reads unless turned off.
    let audited = op != Operation::Read || state.audit.records_reads() || result.is_err();
    if audited {
        let mut done = record(conn, op.as_str(), Some(path.as_str()));
        match &result {
            Ok((res, version)) => {
                done.status = res.status().as_u16();
                done.version = *version;
            }
            Err(e) => failed(&mut done, e),
        }
        // A successful read is recorded as `audit.reads` says (by default its
        // repeats are counted). A failed read changes nothing: a client reading
        // missing paths in a loop is coalesced like a denied one. Writes, and damaged
        // records (each path matters), are recorded one by one.
        match (&result, op) {
            (Ok(_), Operation::Read) => state.audit.record_read(done).await,
            (Err(e), Operation::Read) if e.code != Code::IntegrityError => {
                state.audit.record_coalesced(done).await
            }
            _ => state.audit.record(done).await,
        }
    }
    result.map(|(res, _)| res)
}
