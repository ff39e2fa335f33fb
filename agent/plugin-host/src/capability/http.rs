//! Outgoing HTTP for plugins: wasi:http behind an allow-list, checked twice.
//!
//! Every request a guest sends goes through [`HttpPolicy::send_request`], the one
//! wasi:http hook. It
//! 1. normalizes the request's authority to `host:port` (lowercase, no trailing dot,
//!    the scheme's default port made explicit) and fails closed unless the plugin's
//!    [`HttpGrant`] lists it;
//! 2. resolves the host itself and refuses a *name* whose addresses are not public
//!    (loopback, private, link-local, …) unless they are inside a network the grant
//!    allows — so a granted name cannot be pointed at an internal service by DNS. An
//!    IP literal in the grant is taken as the operator's explicit choice;
//! 3. connects to exactly the checked addresses (no second lookup), with TLS for
//!    `https` (webpki roots), bounded by the call's deadline and a response body cap.
//!
//! Denials return `error-code.HTTP-request-denied` to the guest and are audited.
//! Header values and bodies are never logged.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::audit::{AuditEvent, AuditSink, Capability, DenyReason};

/// Timeout for one TCP connect (further bounded by the call's deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A grant entry that is not a valid `host[:port]` or network.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Not `host[:port]`.
    #[error("http grant entry {entry:?} is not host[:port]")]
    Authority {
        /// The entry as written.
        entry: String,
    },
    /// Not `address/prefix`.
    #[error("network {entry:?} is not address/prefix")]
    Network {
        /// The entry as written.
        entry: String,
    },
}

/// An IP network, `address/prefix` (e.g. `10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GrantError::Network {
            entry: s.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self {
            addr: canonical(addr),
            prefix,
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What one plugin may reach over HTTP.
#[derive(Clone, Debug, Default)]
pub struct HttpGrant {
    authorities: HashSet<String>,
    allowed_networks: Vec<IpNet>,
}

impl HttpGrant {
    /// Builds a grant from `host[:port]` entries (no port means 443) and the
    /// non-public networks that granted *names* may resolve into.
    pub fn new<I, S>(authorities: I, allowed_networks: Vec<IpNet>) -> Result<Self, GrantError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = HashSet::new();
        for entry in authorities {
            let entry = entry.as_ref();
            let bad = || GrantError::Authority {
                entry: entry.to_owned(),
            };
            let authority = http::uri::Authority::from_str(entry).map_err(|_| bad())?;
            if authority.as_str().contains('@') {
                return Err(bad());
            }
            let port = authority.port_u16().unwrap_or(443);
            set.insert(normalize(authority.host(), port).ok_or_else(bad)?);
        }
        Ok(Self {
            authorities: set,
            allowed_networks,
        })
    }

    /// The authorities in both grants, with this grant's allowed networks.
    pub fn intersect(&self, other: &HttpGrant) -> HttpGrant {
        HttpGrant {
            authorities: self
                .authorities
                .intersection(&other.authorities)
                .cloned()
                .collect(),
            allowed_networks: self.allowed_networks.clone(),
        }
    }

    /// Whether the normalized `host:port` is granted.
    pub fn allows_authority(&self, normalized: &str) -> bool {
        self.authorities.contains(normalized)
    }

    /// Whether a granted name may connect to `ip`.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// The granted authorities, normalized, sorted.
    pub fn authorities(&self) -> Vec<String> {
        let mut v: Vec<String> = self.authorities.iter().cloned().collect();
        v.sort();
        v
    }
}

/// `host:port` in canonical form: lowercase, no trailing dot, IPv6 in brackets.
fn normalize(host: &str, port: u16) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    Some(format!("{host}:{port}"))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a public unicast address (what a granted *name* may resolve to).
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b))
        }
    }
}

/// The per-call wasi:http hooks object.
pub(crate) struct HttpPolicy {
    pub(crate) plugin: Arc<str>,
    pub(crate) grant: Arc<HttpGrant>,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) max_body: u64,
    pub(crate) deadline: Instant,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

fn deny(audit: &Arc<dyn AuditSink>, plugin: &str, target: String, reason: DenyReason) -> HttpError {
    audit.record(AuditEvent {
        plugin: plugin.to_owned(),
        capability: Capability::Http,
        target,
        reason,
    });
    HttpError::HttpRequestDenied
}

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let _ = fut;
        let uri = request.uri();
        let use_tls = uri.scheme() == Some(&Scheme::HTTPS);
        let target = uri.authority().and_then(|a| {
            if a.as_str().contains('@') {
                return None;
            }
            let port = a.port_u16().unwrap_or(if use_tls { 443 } else { 80 });
            normalize(a.host(), port).map(|n| (n, a.host().to_owned(), port))
        });
        let Some((normalized, host, port)) = target else {
            let err = deny(
                &self.audit,
                &self.plugin,
                String::new(),
                DenyReason::MalformedRequest,
            );
            return Box::new(async move { Err(err) });
        };
        if !self.grant.allows_authority(&normalized) {
            let err = deny(
                &self.audit,
                &self.plugin,
                normalized,
                DenyReason::AuthorityNotGranted,
            );
            return Box::new(async move { Err(err) });
        }
        tracing::debug!(plugin = %self.plugin, authority = %normalized, "plugin http request");
        let grant = self.grant.clone();
        let audit = self.audit.clone();
        let plugin = self.plugin.clone();
        let max_body = self.max_body;
        let deadline = tokio::time::Instant::from_std(self.deadline);
        Box::new(async move {
            let work = async {
                let addrs = resolve(&host, port).await?;
                let literal = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok();
                if !literal && !addrs.iter().all(|a| grant.allows_address(a.ip())) {
                    return Err(deny(
                        &audit,
                        &plugin,
                        normalized,
                        DenyReason::AddressProhibited,
                    ));
                }
                send_to(addrs, request, options, use_tls, &host, max_body, deadline).await
            };
            match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result,
                Err(_) => Err(HttpError::ConnectionTimeout),
            }
        })
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|_| HttpError::DnsError {
            rcode: None,
            info_code: None,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    Ok(addrs)
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        })
        .clone()
        .ok_or(HttpError::ConfigurationError)
}

/// Sends `req` over a connection to one of `addrs` (already checked).
async fn send_to(
    addrs: Vec<SocketAddr>,
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    use_tls: bool,
    host: &str,
    max_body: u64,
    deadline: tokio::time::Instant,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT)
        .min(CONNECT_TIMEOUT);
    let mut last = HttpError::ConnectionRefused;
    let mut tcp = None;
    for addr in addrs {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    let tcp = tcp.ok_or(last)?;
    let stream: Box<dyn Stream> = if use_tls {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = match bare.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(bare.to_owned())?,
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        Box::new(connector.connect(name, tcp).await.map_err(HttpError::Tls)?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;

    // The request carries scheme and authority; on the wire only the path is sent.
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let mut send = std::pin::pin!(sender.send_request(req));
    let mut conn = Some(conn);
    // Drive the connection while waiting for the response head.
    let response = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r.map_err(HttpError::from)),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx).map_err(HttpError::from),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;

    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(HttpError::HttpResponseBodySize(declared));
    }
    let response = response.map(|incoming| {
        CappedBody {
            incoming,
            remaining: max_body,
            limit: max_body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
        .boxed_unsync()
    });
    let io = async move {
        match conn {
            Some(c) => c.await.map_err(HttpError::from),
            None => Ok(()),
        }
    };
    Ok((response, Box::new(io)))
}

/// A response body that fails once it exceeds the size cap or the call's deadline.
struct CappedBody {
    incoming: hyper::body::Incoming,
    remaining: u64,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            self.limit,
                        )))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_grants_and_requests_alike() {
        let g = HttpGrant::new(["API.Example.com.", "127.0.0.1:8080", "[::1]:9"], vec![])
            .expect("valid grants");
        assert!(g.allows_authority("api.example.com:443"));
        assert!(g.allows_authority("127.0.0.1:8080"));
        assert!(g.allows_authority("[::1]:9"));
        assert!(!g.allows_authority("api.example.com:80"));
        assert!(HttpGrant::new(["user@host"], vec![]).is_err());
        assert!(HttpGrant::new(["a b"], vec![]).is_err());
    }

    #[test]
    fn names_may_not_resolve_to_internal_addresses() {
        let g = HttpGrant::new(["x.test"], vec![]).expect("valid");
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!g.allows_address(ip.parse().expect("ip")), "{ip}");
        }
        assert!(g.allows_address("93.184.216.34".parse().expect("ip")));
        let net: IpNet = "127.0.0.0/8".parse().expect("net");
        let g = HttpGrant::new(["x.test"], vec![net]).expect("valid");
        assert!(g.allows_address("127.0.0.1".parse().expect("ip")));
        assert!(!g.allows_address("10.0.0.1".parse().expect("ip")));
    }
}
