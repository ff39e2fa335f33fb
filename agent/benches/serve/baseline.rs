//! The baseline: the smallest server on the agent's transport. rustls (ring, TLS 1.3
//! only, client certificate required and verified against the same CA), the agent's
//! server certificate, hyper HTTP/1.1 keep-alive over a Unix socket, a tokio
//! multi-thread runtime with the default worker count (as the agent's), and one fixed
//! body (the agent's own answer for the benchmark secret, byte for byte) with the same
//! headers, for every request. No routing, policy, audit, timers or cache.
//!
//! Runs in its own process (the bench binary re-executed with `--baseline-server`) so
//! its CPU time and RSS are read from /proc exactly as the agent's are.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use tokio::net::UnixListener;
use tokio_rustls::TlsAcceptor;

use crate::load::{read_certs, read_key, ring, roots};

/// `--baseline-server SOCKET CERT KEY CA BODY_FILE`: serves until killed.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [socket, cert, key, ca, body] = args else {
        anyhow::bail!("usage: --baseline-server SOCKET CERT KEY CA BODY_FILE");
    };
    let body = Bytes::from(std::fs::read(body).with_context(|| format!("cannot read {body}"))?);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(Path::new(ca))?), ring())
            .build()
            .context("client verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(Path::new(cert))?, read_key(Path::new(key))?)
        .context("server certificate")?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).with_context(|| format!("cannot bind {socket}"))?;
        loop {
            let (stream, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let mut res = Response::new(Full::new(body));
                        res.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        res.headers_mut()
                            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}
