//! Small loopback HTTP fixtures standing in for services that have no local server
//! (AI providers, exchanges): a handler sees each request exactly as the plugin sent
//! it (method, path with query, headers, body) and answers with the service's
//! documented response shape. Every request is also recorded for later assertions.
//!
//! The fixture runs on its own thread and runtime, so a test may block on a
//! `latchkey plugin call` child process while the fixture answers it. Each request's
//! handler runs on a blocking thread of its own: like a real service, a fixture that
//! holds one request (a test stalling a step) still answers the others.
//!
//! ```ignore
//! let api = Fixture::start(|req| {
//!     if req.header("authorization") == Some("Bearer sk-good") {
//!         Reply::json(200, json!({"object": "list", "data": []}))
//!     } else {
//!         Reply::json(401, json!({"error": {"message": "Incorrect API key provided"}}))
//!     }
//! })?;
//! // ... call the plugin with base-url = api.url() ...
//! assert_eq!(api.requests().len(), 1);
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request as the fixture received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// `GET`, `POST`, ...
    pub(crate) method: String,
    /// The path without the query.
    pub(crate) path: String,
    /// The raw query string (without `?`), empty if none.
    pub(crate) query: String,
    /// Headers in the order received, names lowercase.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 (lossy).
    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// One query parameter's raw (still percent-encoded) value.
    pub(crate) fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// The fixture's answer to one request.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// HTTP status.
    pub(crate) status: u16,
    /// Extra headers.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A JSON answer.
    pub(crate) fn json(status: u16, body: serde_json::Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A plain-text answer.
    pub(crate) fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync + 'static;

/// A running fixture; stops when dropped.
pub(crate) struct Fixture {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fixture {
    /// Starts a fixture on a free loopback port.
    pub(crate) fn start(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Fixture> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let recorded = Arc::clone(&seen);
        let thread = std::thread::Builder::new()
            .name(format!("fixture-{}", addr.port()))
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        let accepted = tokio::select! {
                            _ = &mut stopped => return,
                            a = listener.accept() => a,
                        };
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        tokio::spawn(async move {
                            let service = service_fn(move |req: Request<Incoming>| {
                                let handler = Arc::clone(&handler);
                                let recorded = Arc::clone(&recorded);
                                async move {
                                    let seen = read(req).await;
                                    let handled = tokio::task::spawn_blocking(move || {
                                        let reply = handler(&seen);
                                        (seen, reply)
                                    })
                                    .await;
                                    let reply = match handled {
                                        Ok((seen, reply)) => {
                                            recorded
                                                .lock()
                                                .unwrap_or_else(|e| e.into_inner())
                                                .push(seen);
                                            reply
                                        }
                                        Err(_) => {
                                            Reply::text(500, "the fixture's handler panicked")
                                        }
                                    };
                                    Ok::<_, Infallible>(respond(reply))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })
            .context("start the fixture thread")?;
        Ok(Fixture {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`: the grant for this plaintext fixture, for
    /// `--grant-http`, `[[plugin]] http` and a manifest's `needs.http` (a grant
    /// without a scheme is HTTPS only).
    pub(crate) fn grant(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn read(req: Request<Incoming>) -> Seen {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
