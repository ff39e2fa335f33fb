//! An mTLS client for the agent's API, over the Unix socket or TCP.
//!
//! Used by the CLI (`latchkey get/put/list/rm`), the end-to-end tests and the benchmark.
//! One [`Client`] holds one keep-alive connection and reconnects when it is closed.
//! Response bodies can carry secret values, so they come back as [`SecretBytes`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::secret::SecretBytes;

/// The name the agent's server certificate carries for local connections.
pub const SERVER_NAME: &str = "localhost";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "https://{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;
    /// `unix:/run/latchkey.sock`, `/run/latchkey.sock`, `127.0.0.1:8443` or
    /// `https://127.0.0.1:8443`.
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let addr = s
            .strip_prefix("https://")
            .unwrap_or(s)
            .trim_end_matches('/');
        addr.parse()
            .map(Endpoint::Tcp)
            .map_err(|_| Error::BadEndpoint(s.to_owned()))
    }
}

/// Why a request failed before an HTTP answer came back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a socket path or address.
    #[error("{0:?} is not a socket path (unix:/path) or an address (127.0.0.1:8443)")]
    BadEndpoint(String),
    /// Could not connect.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, refused or revoked certificate, …).
    #[error("tls handshake with {endpoint} failed")]
    Tls {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request to {endpoint} failed")]
    Http {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// A request could not be built (bad path characters).
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body (may hold secret values).
    pub body: SecretBytes,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(self.body.expose())
    }

    /// `error.code` of an error answer.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .ok()?
            .pointer("/error/code")?
            .as_str()
            .map(str::to_owned)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One keep-alive connection to the agent.
pub struct Client {
    endpoint: Endpoint,
    /// Replaced by [`Client::set_tls`] (a renewed client certificate).
    connector: std::sync::RwLock<TlsConnector>,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Client {
    /// A client; it connects on the first request.
    pub fn new(endpoint: Endpoint, tls: Arc<rustls::ClientConfig>) -> Self {
        Client {
            endpoint,
            connector: std::sync::RwLock::new(TlsConnector::from(tls)),
            sender: Mutex::new(None),
        }
    }

    /// Uses `tls` (a renewed certificate) from the next connection on; the kept-alive
    /// connection is dropped, so the next request makes one. Open streams keep
    /// theirs.
    pub async fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.connector.write().unwrap_or_else(|e| e.into_inner()) = TlsConnector::from(tls);
        self.sender.lock().await.take();
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let endpoint = self.endpoint.to_string();
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| Error::Request(e.to_string()))?
            .to_owned();
        let connect_err = |source| Error::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(connect_err)?;
                self.handshake(stream, name, &endpoint).await
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                self.handshake(stream, name, &endpoint).await
            }
        }
    }

    /// TLS, then HTTP/1.1, over a connected stream; the connection task runs on its own.
    async fn handshake<S>(
        &self,
        stream: S,
        name: ServerName<'static>,
        endpoint: &str,
    ) -> Result<SendRequest<Full<Bytes>>, Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let connector = self
            .connector
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|source| Error::Tls {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| Error::Http {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends one request; `path_and_query` starts with `/v1/`.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<SecretBytes>,
    ) -> Result<Reply, Error> {
        let mut guard = self.sender.lock().await;
        let mut sender = match guard.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, SERVER_NAME);
        let payload = match body {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from_owner(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = builder
            .body(payload)
            .map_err(|e| Error::Request(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|source| Error::Http {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        let status = res.status().as_u16();
        let collected = res
            .into_body()
            .collect()
            .await
            .map_err(|source| Error::Http {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        *guard = Some(sender);
        Ok(Reply {
            status,
            body: SecretBytes::new(collected.to_bytes().to_vec()),
        })
    }

    /// `GET` a path.
    pub async fn get(&self, path_and_query: &str) -> Result<Reply, Error> {
        self.request(Method::GET, path_and_query, None).await
    }

    /// Opens a dedicated connection for a long-lived `GET` (the `/v1/watch` event
    /// stream) and returns the status and the body as it arrives.
    pub async fn stream(
        &self,
        path_and_query: &str,
    ) -> Result<(u16, hyper::body::Incoming), Error> {
        let mut sender = self.connect().await?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .header(header::HOST, SERVER_NAME)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Request(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|source| Error::Http {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        Ok((res.status().as_u16(), res.into_body()))
    }
}

/// Percent-encodes a query value (for `?prefix=`).
pub fn encode_query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, NOT_UNRESERVED).to_string()
}

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped.
pub const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(encode_query_value("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(
            encode_query_value("a b&c=d/é+%"),
            "a%20b%26c%3Dd%2F%C3%A9%2B%25"
        );
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/run/l.sock".parse::<Endpoint>().expect("ok"),
            Endpoint::Unix("/run/l.sock".into())
        );
        assert_eq!(
            "https://127.0.0.1:8443".parse::<Endpoint>().expect("ok"),
            Endpoint::Tcp("127.0.0.1:8443".parse().expect("addr"))
        );
        assert!("nonsense".parse::<Endpoint>().is_err());
    }
}
