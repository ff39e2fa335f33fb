//! Outgoing HTTP for plugins: wasi:http behind an allow-list, checked twice.
//!
//! Every request a guest sends goes through [`HttpPolicy::send_request`], the one
//! wasi:http hook. It
//! 1. normalizes the request to `scheme://host:port` (only `http` and `https`;
//!    lowercase, no trailing dot, IP literals in canonical form, the scheme's default
//!    port made explicit) and fails closed unless the plugin's [`HttpGrant`] lists
//!    exactly that. The scheme is part of the grant: a bare `host[:port]` entry
//!    grants HTTPS only, plaintext needs an explicit `http://` entry;
//! 2. resolves the host itself and refuses a *name* unless every address it resolves
//!    to is public (`is_public`: loopback, private, link-local, IPv4-mapped,
//!    6to4, Teredo, NAT64 of a private address, … are not) or inside a network the
//!    grant allows — so a granted name cannot be pointed at an internal service by
//!    DNS. An IP literal in the grant is taken as the operator's explicit choice;
//! 3. connects to exactly the checked addresses (no second lookup, so a name cannot
//!    rebind between the check and the connect), with TLS for `https` (webpki
//!    roots), bounded by the call's deadline and a response body cap. Redirects are
//!    not followed by the host: a guest that follows one sends a new request, which
//!    is checked like the first.
//!
//! Allowed networks are canonical ([`IpNet`]): an IPv4-mapped entry is the IPv4
//! network it maps, and a prefix longer than its address, or an address with bits
//! below its prefix, is refused when the configuration is read.
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

/// A grant entry that is not a valid `[scheme://]host[:port]` or network.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Not `[http://|https://]host[:port]`.
    #[error("http grant entry {entry:?} is not [http://|https://]host[:port]")]
    Authority {
        /// The entry as written.
        entry: String,
    },
    /// A scheme other than `http://` or `https://`.
    #[error("http grant entry {entry:?}: only http:// and https:// can be granted")]
    Scheme {
        /// The entry as written.
        entry: String,
    },
    /// Not a network that can be allowed.
    #[error("network {entry:?}: {problem}")]
    Network {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        problem: NetworkProblem,
    },
}

/// Why an `allow_networks` entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkProblem {
    /// Not `address/prefix` (or a bare address).
    #[error("not address/prefix")]
    Syntax,
    /// The prefix is longer than the address.
    #[error("prefix /{prefix} is longer than the {bits}-bit address")]
    PrefixTooLong {
        /// The prefix as written.
        prefix: u32,
        /// 32 or 128.
        bits: u32,
    },
    /// An IPv4-mapped network (`::ffff:a.b.c.d/N`) with `N < 96`: it would reach
    /// beyond the IPv4-mapped range, which cannot be what was meant.
    #[error("an IPv4-mapped network needs a prefix of at least /96, not /{prefix}")]
    MappedPrefixTooShort {
        /// The prefix as written.
        prefix: u32,
    },
    /// Bits are set below the prefix (`10.0.0.1/8`): most likely a typo in the
    /// prefix, which would allow a much wider network than meant.
    #[error("address has bits set below the prefix (the network is {network})")]
    HostBits {
        /// The network the entry would have meant.
        network: String,
    },
}

/// An IP network, `address/prefix` (e.g. `10.0.0.0/8`, `::1/128`).
///
/// Always canonical: an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is held as
/// the IPv4 network it is (`10.0.0.0/8`), and the prefix is never longer than the
/// address (parsing refuses anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// The netmask of a `prefix`-bit IPv4 network; `None` for a prefix over 32.
fn mask_v4(prefix: u8) -> Option<u32> {
    let shift = 32u32.checked_sub(u32::from(prefix))?;
    Some(u32::MAX.checked_shl(shift).unwrap_or(0))
}

/// The netmask of a `prefix`-bit IPv6 network; `None` for a prefix over 128.
fn mask_v6(prefix: u8) -> Option<u128> {
    let shift = 128u32.checked_sub(u32::from(prefix))?;
    Some(u128::MAX.checked_shl(shift).unwrap_or(0))
}

impl IpNet {
    /// Whether `ip` is inside this network (IPv4-mapped addresses count as the IPv4
    /// address they carry).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(self.prefix).is_some_and(|m| u32::from(net) & m == u32::from(ip) & m)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(self.prefix).is_some_and(|m| u128::from(net) & m == u128::from(ip) & m)
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |problem| GrantError::Network {
            entry: s.to_owned(),
            problem,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad(NetworkProblem::Syntax))?;
        let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u32 = match prefix {
            // Digits only: `u32::from_str` also takes a leading `+`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad(NetworkProblem::Syntax))?
            }
            Some(_) => return Err(bad(NetworkProblem::Syntax)),
            None => bits,
        };
        if prefix > bits {
            return Err(bad(NetworkProblem::PrefixTooLong { prefix, bits }));
        }
        // Canonicalise first: an IPv4-mapped network is the IPv4 network it maps,
        // with 96 bits less of prefix.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    let Some(p) = prefix.checked_sub(96) else {
                        return Err(bad(NetworkProblem::MappedPrefixTooShort { prefix }));
                    };
                    (IpAddr::V4(v4), p)
                }
                None => (addr, prefix),
            },
            v4 => (v4, prefix),
        };
        let prefix = u8::try_from(prefix).map_err(|_| bad(NetworkProblem::Syntax))?;
        let network = match addr {
            IpAddr::V4(v4) => mask_v4(prefix)
                .map(|m| IpAddr::V4((u32::from(v4) & m).into()))
                .ok_or_else(|| bad(NetworkProblem::Syntax))?,
            IpAddr::V6(v6) => mask_v6(prefix)
                .map(|m| IpAddr::V6((u128::from(v6) & m).into()))
                .ok_or_else(|| bad(NetworkProblem::Syntax))?,
        };
        if network != addr {
            return Err(bad(NetworkProblem::HostBits {
                network: format!("{network}/{prefix}"),
            }));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What one plugin may reach over HTTP.
///
/// Each granted entry is a scheme, a host and a port, held as
/// `scheme://host:port` in canonical form. A request matches only an entry with the
/// same scheme: a grant of `api.example.com` (https, port 443) does not let a
/// credential leave in plaintext over `http://api.example.com:443`.
#[derive(Clone, Debug, Default)]
pub struct HttpGrant {
    targets: HashSet<String>,
    allowed_networks: Vec<IpNet>,
}

impl HttpGrant {
    /// Builds a grant from `[scheme://]host[:port]` entries and the non-public
    /// networks that granted *names* may resolve into.
    ///
    /// `https://host[:port]` and a bare `host[:port]` grant HTTPS (default port
    /// 443); only `http://host[:port]` grants plaintext HTTP (default port 80).
    pub fn new<I, S>(entries: I, allowed_networks: Vec<IpNet>) -> Result<Self, GrantError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut targets = HashSet::new();
        for entry in entries {
            targets.insert(grant_target(entry.as_ref())?);
        }
        Ok(Self {
            targets,
            allowed_networks,
        })
    }

    /// The entries in both grants, with this grant's allowed networks.
    pub fn intersect(&self, other: &HttpGrant) -> HttpGrant {
        HttpGrant {
            targets: self.targets.intersection(&other.targets).cloned().collect(),
            allowed_networks: self.allowed_networks.clone(),
        }
    }

    /// Whether `target` (`scheme://host:port`, normalized as requests are) is
    /// granted.
    pub fn allows(&self, target: &str) -> bool {
        self.targets.contains(target)
    }

    /// Whether a granted name may connect to `ip`.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// The granted `scheme://host:port` entries, sorted.
    pub fn authorities(&self) -> Vec<String> {
        let mut v: Vec<String> = self.targets.iter().cloned().collect();
        v.sort();
        v
    }
}

/// Checks that `entry` can be an `http` grant (or manifest `needs.http`) entry, as
/// [`HttpGrant::new`] will: for validating configuration before anything loads.
pub fn check_grant_entry(entry: &str) -> Result<(), GrantError> {
    grant_target(entry).map(drop)
}

/// `scheme://host:port` for one grant entry.
fn grant_target(entry: &str) -> Result<String, GrantError> {
    let bad = || GrantError::Authority {
        entry: entry.to_owned(),
    };
    let (scheme, rest) = match entry.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::HTTPS, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::HTTP, rest),
        Some(_) => {
            return Err(GrantError::Scheme {
                entry: entry.to_owned(),
            })
        }
        None => (Scheme::HTTPS, entry),
    };
    // `https://api.example.com/` is written often enough; any other path is not a
    // grant (the grant is per authority, not per path).
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority = http::uri::Authority::from_str(rest).map_err(|_| bad())?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let port = authority.port_u16().unwrap_or(default_port(&scheme));
    normalize(&scheme, authority.host(), port).ok_or_else(bad)
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTP {
        80
    } else {
        443
    }
}

/// `scheme://host:port` for a request URI: `None` unless the scheme is `http` or
/// `https` and the authority is a plain `host[:port]`. Also returns the host as
/// written and the port.
pub(crate) fn request_target(uri: &http::Uri) -> Option<(String, String, u16)> {
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => Scheme::HTTPS,
        Some(s) if *s == Scheme::HTTP => Scheme::HTTP,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let port = authority.port_u16().unwrap_or(default_port(&scheme));
    let target = normalize(&scheme, authority.host(), port)?;
    Some((target, authority.host().to_owned(), port))
}

/// `scheme://host:port` in canonical form: lowercase, no trailing dot, an IP
/// literal in its canonical text form (IPv6 in brackets).
fn normalize(scheme: &Scheme, host: &str, port: u16) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ', '%']) {
        return None;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let host = match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if host.starts_with('[') => format!("[{v6}]"),
        Ok(IpAddr::V4(v4)) if !host.starts_with('[') => v4.to_string(),
        Ok(_) => return None,
        Err(_) if host.contains(['[', ']', ':']) => return None,
        Err(_) => host,
    };
    Some(format!("{}://{host}:{port}", scheme.as_str()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a public unicast address (what a granted *name* may resolve to).
///
/// IPv4: everything but this-network (0/8), private (10/8, 172.16/12, 192.168/16),
/// shared (100.64/10), loopback, link-local (169.254/16), IETF (192.0.0/24),
/// documentation, the 6to4 relay (192.88.99/24), benchmarking (198.18/15),
/// multicast, reserved (240/4) and broadcast.
///
/// IPv6: only global unicast (2000::/3) counts, less the special blocks inside it:
/// IETF protocol assignments (2001::/23, which holds Teredo 2001::/32), documentation
/// (2001:db8::/32, 3fff::/20) and 6to4 (2002::/16), all of which can embed or reach
/// an IPv4 address the IPv4 rules would refuse. So everything outside 2000::/3 is
/// refused: unspecified and loopback, IPv4-compatible (::/96) and IPv4-mapped
/// (::ffff:0:0/96), discard (100::/64), unique local, site-local (fec0::/10),
/// link-local and multicast. The one exception is NAT64 (64:ff9b::/96), which is
/// judged by the IPv4 address it embeds.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            let global_unicast = (s[0] & 0xe000) == 0x2000;
            let special = match s[0] {
                // 2001::/23 (Teredo among it) and 2001:db8::/32.
                0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
                // 6to4.
                0x2002 => true,
                // 3fff::/20.
                0x3fff => s[1] < 0x1000,
                _ => false,
            };
            global_unicast && !special
        }
    }
}

fn is_public_v4(v4: std::net::Ipv4Addr) -> bool {
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
        || (o[0] == 192 && o[1] == 88 && o[2] == 99)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240)
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
    deny_resolved(audit, plugin, target, reason, Vec::new())
}

/// [`deny`], with the addresses a granted name resolved to that were refused.
fn deny_resolved(
    audit: &Arc<dyn AuditSink>,
    plugin: &str,
    target: String,
    reason: DenyReason,
    resolved: Vec<IpAddr>,
) -> HttpError {
    audit.record(AuditEvent {
        plugin: plugin.to_owned(),
        capability: Capability::Http,
        target,
        reason,
        resolved,
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
        let use_tls = request.uri().scheme() == Some(&Scheme::HTTPS);
        let Some((normalized, host, port)) = request_target(request.uri()) else {
            let err = deny(
                &self.audit,
                &self.plugin,
                String::new(),
                DenyReason::MalformedRequest,
            );
            return Box::new(async move { Err(err) });
        };
        if !self.grant.allows(&normalized) {
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
                    let mut refused: Vec<IpAddr> = addrs
                        .iter()
                        .map(|a| a.ip())
                        .filter(|ip| !grant.allows_address(*ip))
                        .collect();
                    refused.dedup();
                    return Err(deny_resolved(
                        &audit,
                        &plugin,
                        normalized,
                        DenyReason::AddressProhibited,
                        refused,
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    fn target(uri: &str) -> Option<String> {
        request_target(&uri.parse().expect("uri")).map(|(t, _, _)| t)
    }

    #[test]
    fn normalizes_grants_and_requests_alike() {
        let g = HttpGrant::new(
            [
                "API.Example.com.",
                "http://127.0.0.1:8080",
                "https://[0:0::1]:9",
            ],
            vec![],
        )
        .expect("valid grants");
        for (uri, allowed) in [
            ("https://api.example.com/v1", true),
            ("https://API.example.com.:443/", true),
            ("http://api.example.com/", false),
            ("http://api.example.com:443/", false),
            ("https://api.example.com:80/", false),
            ("http://127.0.0.1:8080/x", true),
            ("https://127.0.0.1:8080/x", false),
            ("https://[::1]:9/", true),
            ("https://[0000::0001]:9/", true),
            ("http://[::1]:9/", false),
        ] {
            let t = target(uri).expect("a valid target");
            assert_eq!(g.allows(&t), allowed, "{uri} as {t}");
        }
        assert!(HttpGrant::new(["user@host"], vec![]).is_err());
        assert!(HttpGrant::new(["a b"], vec![]).is_err());
        assert!(HttpGrant::new(["https://host/path"], vec![]).is_err());
        assert!(matches!(
            HttpGrant::new(["ftp://host"], vec![]),
            Err(GrantError::Scheme { .. })
        ));
        assert!(target("ftp://host/").is_none());
        assert!(target("http://user@host/").is_none());
    }

    #[test]
    fn r7_a_grant_without_a_scheme_is_https_only() {
        let g = HttpGrant::new(["api.example.com", "proxy.internal:8443"], vec![]).expect("valid");
        assert_eq!(
            g.authorities(),
            vec![
                "https://api.example.com:443".to_owned(),
                "https://proxy.internal:8443".to_owned()
            ]
        );
        for uri in [
            "http://api.example.com:443/",
            "http://api.example.com/",
            "http://proxy.internal:8443/",
        ] {
            let t = target(uri).expect("valid target");
            assert!(!g.allows(&t), "{uri} must not be granted");
        }
        assert!(g.allows(&target("https://api.example.com/").expect("valid")));
        let plain = HttpGrant::new(["http://api.example.com"], vec![]).expect("valid");
        assert!(plain.allows(&target("http://api.example.com/").expect("valid")));
        assert!(!plain.allows(&target("https://api.example.com/").expect("valid")));
        // The manifest's needs intersect by scheme too.
        let needs = HttpGrant::new(["api.example.com"], vec![]).expect("valid");
        assert!(plain.intersect(&needs).authorities().is_empty());
    }

    #[test]
    fn names_may_not_resolve_to_internal_addresses() {
        let g = HttpGrant::new(["x.test"], vec![]).expect("valid");
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!g.allows_address(ip(a)), "{a}");
        }
        assert!(g.allows_address(ip("93.184.216.34")));
        let g = HttpGrant::new(["x.test"], vec![net("127.0.0.0/8")]).expect("valid");
        assert!(g.allows_address(ip("127.0.0.1")));
        assert!(!g.allows_address(ip("10.0.0.1")));
    }

    #[test]
    fn r7_special_address_ranges_are_not_public() {
        let g = HttpGrant::new(["x.test"], vec![]).expect("valid");
        for a in [
            // IPv4: this network, private, shared, loopback, link-local, IETF,
            // documentation, 6to4 relay, benchmarking, multicast, reserved, broadcast.
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv4-compatible (::/96) and IPv4-mapped (::ffff:0:0/96), of private
            // and of public addresses alike.
            "::",
            "::1",
            "::a00:1",
            "::7f00:1",
            "::5db8:d822",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::ffff:93.184.216.34",
            // 6to4 (of a private and of a public address), Teredo, the rest of
            // 2001::/23, documentation.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:5db8:d822::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            // Site-local, discard, unique local, link-local, multicast.
            "fec0::1",
            "feff::1",
            "100::1",
            "100::ffff:ffff:ffff:ffff",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            // NAT64 of private addresses, and NAT64 local use.
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::5db8:d822",
        ] {
            assert!(!g.allows_address(ip(a)), "{a} must not count as public");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "64:ff9b::5db8:d822",
        ] {
            assert!(g.allows_address(ip(a)), "{a} is public");
        }
    }

    #[test]
    fn r7_an_ipv4_mapped_network_is_the_ipv4_network_it_maps() {
        // Used to take its maximum prefix from the IPv6 family: `32 - 104`
        // underflowed, panicking in a debug build and matching every IPv4 address in
        // a release build.
        let mapped = net("::ffff:10.0.0.0/104");
        assert_eq!(mapped, net("10.0.0.0/8"));
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        for outside in [
            "127.0.0.1",
            "169.254.169.254",
            "11.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!mapped.contains(ip(outside)), "{outside}");
        }
        let g = HttpGrant::new(["x.test"], vec![mapped]).expect("valid");
        assert!(g.allows_address(ip("10.9.9.9")));
        for a in ["127.0.0.1", "169.254.169.254", "192.168.0.1", "::1"] {
            assert!(!g.allows_address(ip(a)), "{a}");
        }
        assert_eq!(net("::ffff:127.0.0.1"), net("127.0.0.1/32"));
        assert_eq!(net("::ffff:0:0/96"), net("0.0.0.0/0"));
        assert_eq!(net("::ffff:169.254.0.0/112"), net("169.254.0.0/16"));
    }

    #[test]
    fn r7_invalid_networks_are_refused_with_the_reason() {
        let problem = |s: &str| match s.parse::<IpNet>() {
            Err(GrantError::Network { problem, .. }) => problem,
            other => panic!("{s}: expected a network error, got {other:?}"),
        };
        assert_eq!(
            problem("10.0.0.0/33"),
            NetworkProblem::PrefixTooLong {
                prefix: 33,
                bits: 32
            }
        );
        assert_eq!(
            problem("::1/129"),
            NetworkProblem::PrefixTooLong {
                prefix: 129,
                bits: 128
            }
        );
        assert_eq!(
            problem("::ffff:10.0.0.0/95"),
            NetworkProblem::MappedPrefixTooShort { prefix: 95 }
        );
        assert_eq!(
            problem("10.0.0.1/8"),
            NetworkProblem::HostBits {
                network: "10.0.0.0/8".into()
            }
        );
        assert_eq!(
            problem("::ffff:10.0.0.1/104"),
            NetworkProblem::HostBits {
                network: "10.0.0.0/8".into()
            }
        );
        for syntax in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/1000",
            "10/8",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(problem(syntax), NetworkProblem::Syntax, "{syntax:?}");
        }
        let text = "10.0.0.0/33"
            .parse::<IpNet>()
            .expect_err("invalid")
            .to_string();
        assert!(
            text.contains("10.0.0.0/33") && text.contains("/33"),
            "{text}"
        );
    }

    #[test]
    fn every_prefix_length_masks_without_overflow() {
        for prefix in 0..=32u8 {
            let n = net(&format!("0.0.0.0/{prefix}"));
            assert!(n.contains(ip("0.0.0.0")));
            assert_eq!(n.contains(ip("255.255.255.255")), prefix == 0, "/{prefix}");
        }
        for prefix in 0..=128u8 {
            let n = net(&format!("::/{prefix}"));
            assert!(n.contains(ip("::")));
            assert_eq!(n.contains(ip("ffff::")), prefix == 0, "/{prefix}");
        }
        assert_eq!(mask_v4(33), None);
        assert_eq!(mask_v6(129), None);
        assert_eq!(mask_v4(0), Some(0));
        assert_eq!(mask_v6(0), Some(0));
    }
}
