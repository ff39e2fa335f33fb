//! The load client: mTLS (rustls, TLS 1.3, ring) over a Unix socket, hyper HTTP/1.1
//! keep-alive, closed loop. The same code drives the agent and the baseline server.
//!
//! Each connection is one task that drives its own hyper connection future and its
//! request loop together (`select!` in one task), so a request costs no cross-task
//! wake-up on the client side: the next request is written as soon as the previous
//! answer's last byte is in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::UnixStream;
use tokio_rustls::TlsConnector;

/// Phases of a measurement, shared by all connection tasks.
pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const STOP: u8 = 2;

/// Largest latency the histograms hold: 60 s, in nanoseconds.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// An empty histogram with 3 significant digits, in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

pub fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("bad PEM in {}", path.display()))?
        .ok_or_else(|| anyhow!("no private key in {}", path.display()))
}

pub fn roots(ca: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).context("cannot use the CA certificate")?;
    }
    Ok(roots)
}

/// TLS 1.3-only client config presenting `cert`/`key`, trusting `ca`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
        .context("cannot use the client certificate")?;
    Ok(Arc::new(config))
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub tls: Arc<rustls::ClientConfig>,
}

type Io = TokioIo<tokio_rustls::client::TlsStream<UnixStream>>;

pub async fn open(target: &Target) -> anyhow::Result<Io> {
    let stream = UnixStream::connect(&target.socket)
        .await
        .with_context(|| format!("cannot connect to {}", target.socket.display()))?;
    let name = ServerName::try_from("localhost").expect("valid server name");
    let tls = TlsConnector::from(target.tls.clone())
        .connect(name, stream)
        .await
        .context("tls handshake failed")?;
    Ok(TokioIo::new(tls))
}

/// A keep-alive connection whose hyper connection future runs as its own task (for
/// set-up work: seeding, health checks; not for the measured loop).
pub async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let io = open(target).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request on a set-up connection; returns status and body.
pub async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost");
    let body = match body {
        Some(b) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(b))
        }
        None => Full::new(Bytes::new()),
    };
    let res = sender.send_request(builder.body(body)?).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Connect, handshake and `GET /v1/health` once; Ok when it answers 200.
pub async fn health_once(target: &Target) -> anyhow::Result<()> {
    let mut sender = connect(target).await?;
    let (status, _) = request(&mut sender, Method::GET, "/v1/health", None).await?;
    if status != StatusCode::OK {
        bail!("health answered {status}");
    }
    Ok(())
}

/// Polls until the server answers a health check over mTLS, or `timeout` passes.
/// Returns the time of the first successful answer.
pub async fn wait_healthy(
    target: &Target,
    poll: Duration,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = health_once(target).await;
        if attempt.is_ok() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(attempt
                .expect_err("failed")
                .context("server did not become healthy"));
        }
        tokio::time::sleep(poll).await;
    }
}

/// `GET uri` on a keep-alive connection; returns the status and the body's length
/// (the body is read and dropped frame by frame, never collected).
pub async fn get(
    sender: &mut SendRequest<Full<Bytes>>,
    uri: &http::Uri,
) -> anyhow::Result<(StatusCode, usize)> {
    sender.ready().await?;
    let req = Request::get(uri.clone())
        .header(header::HOST, "localhost")
        .body(Full::new(Bytes::new()))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let mut body = res.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            len += data.len();
        }
    }
    Ok((status, len))
}

/// What one connection measured.
pub struct ConnResult {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub bad: u64,
}

/// One closed-loop connection: GET `uri` until the phase is [`STOP`]; records the
/// latency of requests started during [`MEASURE`].
pub async fn conn_loop(
    target: Target,
    uri: http::Uri,
    expect_len: usize,
    phase: Arc<AtomicU8>,
) -> anyhow::Result<ConnResult> {
    let io = open(&target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
    let mut out = ConnResult {
        hist: histogram(),
        requests: 0,
        bad: 0,
    };
    let work = async {
        loop {
            let p = phase.load(Ordering::Relaxed);
            if p == STOP {
                return anyhow::Ok(());
            }
            let start = Instant::now();
            let (status, len) = get(&mut sender, &uri).await?;
            let ok = status == StatusCode::OK;
            let took = start.elapsed();
            if p == MEASURE {
                out.requests += 1;
                out.hist
                    .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                if !ok || len != expect_len {
                    out.bad += 1;
                }
            }
        }
    };
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = work => r?,
        r = &mut conn => {
            r?;
            bail!("the server closed the connection");
        }
    }
    Ok(out)
}
