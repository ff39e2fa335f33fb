//! Hand-written HTTP/1.1 over the agent's mTLS listeners, for requests a
//! well-behaved client never sends (too many headers, a body length it then does not
//! send, chunked bodies) and for answers whose headers matter (`Allow`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use latchkey::client::Endpoint;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// The longest one raw exchange may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// An answer read off the wire.
#[derive(Debug)]
pub(crate) struct RawReply {
    /// Status code.
    pub(crate) status: u16,
    /// Headers, names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    /// Body bytes.
    pub(crate) body: Vec<u8>,
}

impl RawReply {
    /// The first header with this (lowercase) name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `error.code` of a JSON error answer.
    pub(crate) fn code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .pointer("/error/code")?
            .as_str()
            .map(str::to_owned)
    }
}

/// A request head (`Host` and `Connection: close` added) followed by `body`.
pub(crate) fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Connects with `tls`, sends `request` as it is and reads one answer.
pub(crate) async fn exchange(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> anyhow::Result<RawReply> {
    let connector = TlsConnector::from(tls);
    let name = ServerName::try_from("localhost")?.to_owned();
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("cannot connect to {}", path.display()))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .context("tls handshake")?;
                talk(tls, request).await
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .context("tls handshake")?;
                talk(tls, request).await
            }
        }
    };
    super::within(&format!("an answer from {endpoint}"), DEADLINE, work).await?
}

async fn talk<S>(mut stream: S, request: &[u8]) -> anyhow::Result<RawReply>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The agent may answer (and close) before it has read all of a request it
    // refuses; whatever it answered is what counts.
    let wrote = async {
        stream.write_all(request).await?;
        stream.flush().await
    }
    .await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = parse(&buf)? {
            return Ok(reply);
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => {
                return Err(anyhow!(e).context(match &wrote {
                    Ok(()) => "reading the answer failed".to_owned(),
                    Err(w) => format!("writing the request failed ({w}), and no answer came"),
                }))
            }
            Err(_) => break,
        }
    }
    match parse(&buf)? {
        Some(reply) => Ok(reply),
        None if buf.is_empty() => bail!("the connection closed without an answer"),
        None => bail!(
            "the connection closed in the middle of an answer: {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
}

/// A complete answer in `buf`, if there is one yet (bodies framed by content-length).
fn parse(buf: &[u8]) -> anyhow::Result<Option<RawReply>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let body = &buf[end + 4..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(RawReply {
        status,
        headers,
        body: body[..length].to_vec(),
    }))
}

/// A TLS 1.3 client config that trusts `ca_pem` and presents no certificate.
pub(crate) fn without_client_cert(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.context("bad CA PEM")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects (with TLS when `tls` is given), sends `partial` and then nothing more,
/// and waits up to `wait` (scaled by the pace) for the agent to close the connection. Returns how long
/// that took and whatever the agent sent before closing.
pub(crate) async fn until_closed(
    endpoint: &Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    partial: &[u8],
    wait: Duration,
) -> anyhow::Result<(Duration, Vec<u8>)> {
    let started = tokio::time::Instant::now();
    let plain: Box<dyn Io> = match endpoint {
        Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
    };
    let mut stream: Box<dyn Io> = match tls {
        Some(tls) => {
            let name = ServerName::try_from("localhost")?.to_owned();
            Box::new(
                TlsConnector::from(tls)
                    .connect(name, plain)
                    .await
                    .context("tls handshake")?,
            )
        }
        None => plain,
    };
    if !partial.is_empty() {
        stream.write_all(partial).await?;
        stream.flush().await?;
    }
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    super::within("the agent to close the connection", wait, read_all).await?;
    Ok((started.elapsed(), received))
}
