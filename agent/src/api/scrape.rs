//! The plain-HTTP loopback endpoint (`[metrics] listen`): `GET /metrics` and
//! `GET /health` for Prometheus and load balancers, which have no client
//! certificate. No identity is asked for, so nothing else is served here — no
//! secret, no path, no admin action; health shows the store's problem kinds only,
//! never their messages. Bound to loopback only (the config refuses anything else).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{admin, ApiError, Body, State};

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one request.
fn answer(state: &State, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => admin::metrics_text(state),
        (&Method::GET, "/health") => admin::health_view(state, false, req.uri().query())
            .unwrap_or_else(ApiError::into_response),
        (_, "/metrics" | "/health") => ApiError::method_not_allowed("GET").into_response(),
        (_, path) => ApiError::no_route(path).into_response(),
    }
}

/// Serves `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<Incoming>| {
                let res = answer(&state, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
