//! Accepts connections on the Unix socket and the loopback TCP port, completes the
//! mTLS handshake, works out the peer, and hands each request to [`crate::api`].
//!
//! Everything a client could hold open is bounded: connections in their handshake, in
//! total, per identity and per Unix-socket uid ([`budget`]), the time to finish the
//! handshake, the time to send headers, the number and size of headers (hyper), the
//! time to send a body (`api`), watch streams per identity (`api::watch`) and the age
//! of a connection. After each CRL change, open connections whose certificate is now
//! refused are cut. A connection whose
//! certificate is valid but carries no usable identity gets `403 bad_identity` on every
//! request, and each is audited.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use crate::api::{self, ApiError, Body, Conn, State};
use crate::audit::{Outcome, Record};
use crate::config::Limits;
use crate::identity::{Peer, TrustDomain};
use crate::policy::LivePolicy;
use crate::tls::ServerTls;

mod budget;
use budget::{Budget, Established, Handshake, Sizes};

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process answers on the socket already.
    #[error("socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// Binding or preparing a socket failed.
    #[error("cannot listen on {what}")]
    Bind {
        /// The socket path or address.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What every connection needs.
pub struct Context {
    /// Shared request state.
    pub state: Arc<State>,
    /// TLS acceptor (its config reloads revocation lists by itself).
    pub acceptor: TlsAcceptor,
    /// The TLS state behind the acceptor, for checking resumed sessions.
    pub tls: Arc<ServerTls>,
    /// Trust domain of accepted identities.
    pub trust_domain: TrustDomain,
    /// Access policy (replaced by a reload).
    pub policy: Arc<LivePolicy>,
    /// Connection bounds.
    pub limits: Limits,
}

/// Bound listeners, ready to serve.
pub struct Bound {
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
}

impl Bound {
    /// Where the listeners are, for the log and the ready message.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((_, path)) = &self.unix {
            out.push(format!("unix:{}", path.display()));
        }
        if let Some(tcp) = &self.tcp {
            if let Ok(addr) = tcp.local_addr() {
                out.push(format!("tcp:{addr}"));
            }
        }
        out
    }
}

/// Binds the configured socket (created with its final mode, see [`bind_unix`]) and
/// TCP address.
pub async fn bind(listen: &crate::config::Listen) -> Result<Bound, Error> {
    let unix = match &listen.socket {
        Some(path) => Some((
            bind_unix(path, listen.socket_mode, listen.socket_group).await?,
            path.clone(),
        )),
        None => None,
    };
    let tcp = match listen.tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    what: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    Ok(Bound { unix, tcp })
}

/// Binds the socket so that it appears at `path` with its final mode, never wider or
/// narrower for a moment: it is bound inside a fresh folder only the agent can enter
/// (0700, in the socket's own folder so a setgid group carries over), given its mode
/// there (and its group, if configured), and renamed into place, which also replaces
/// a stale socket atomically.
async fn bind_unix(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, Error> {
    let err = |source| Error::Bind {
        what: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(err)?;
        // Widen past the umask so the socket's group can reach the socket.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::InUse(path.to_owned()));
        }
    }
    let name = path.file_name().unwrap_or(std::ffi::OsStr::new("socket"));
    let staging = dir.join(format!(
        ".{}.bind-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    // `create`, not `create_dir_all`: fails on anything already there, link or not.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(err)?;
    let bound = (|| {
        let inside = staging.join(name);
        let listener = UnixListener::bind(&inside)?;
        if let Some(gid) = group {
            rustix::fs::chown(&inside, None, Some(rustix::fs::Gid::from_raw(gid)))?;
        }
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inside, path)?;
        Ok(listener)
    })();
    let cleaned = std::fs::remove_dir_all(&staging);
    let listener = bound.map_err(err)?;
    cleaned.map_err(err)?;
    Ok(listener)
}

/// Serves until `shutdown` turns true, then lets open requests finish (for at most
/// `drain` time) and removes the socket file.
pub async fn serve(
    bound: Bound,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let budget = Budget::new(Sizes {
        handshakes: ctx.limits.max_handshakes,
        connections: ctx.limits.max_connections,
        per_identity: ctx.limits.max_connections_per_identity,
        per_uid: ctx.limits.max_connections_per_uid,
    });
    // Every connection task holds a clone; the drain waits until all are dropped.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let serving = Serving {
        ctx: ctx.clone(),
        budget: budget.clone(),
        _open: open,
        shutdown: shutdown.clone(),
        drain,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let socket_path = bound.unix.as_ref().map(|(_, p)| p.clone());
    if let Some((listener, _)) = bound.unix {
        tasks.spawn(accept_loop(UnixAccept(listener), serving.clone()));
    }
    if let Some(listener) = bound.tcp {
        tasks.spawn(accept_loop(TcpAccept(listener), serving.clone()));
    }
    drop(serving);
    let revocations = tokio::spawn(cut_revoked(ctx.clone(), budget, shutdown.clone()));
    let _ = shutdown.wait_for(|stop| *stop).await;
    while tasks.join_next().await.is_some() {}
    let _ = revocations.await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain time; closing them");
    }
}

/// After each CRL change, cuts the established connections whose certificate no
/// longer passes (revoked, or expired since): keep-alive connections and watch
/// streams alike, not only new handshakes.
async fn cut_revoked(ctx: Arc<Context>, budget: Arc<Budget>, mut shutdown: watch::Receiver<bool>) {
    let mut reloads = ctx.tls.reloads();
    loop {
        tokio::select! {
            changed = reloads.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let cut = budget.cut_if(|cert| ctx.tls.still_valid(cert).is_err());
        if cut > 0 {
            tracing::info!(
                connections = cut,
                "cut connections whose certificate is now refused"
            );
        }
    }
}

/// What every accept loop and connection task shares.
#[derive(Clone)]
struct Serving {
    ctx: Arc<Context>,
    budget: Arc<Budget>,
    /// Held by every connection task, so the drain knows when all are gone.
    _open: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
}

/// The uid and gid of a Unix-socket peer.
type Cred = Option<(u32, u32)>;

trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Cred)>> + Send;
}

struct UnixAccept(UnixListener);
struct TcpAccept(TcpListener);

impl Accept for UnixAccept {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<(UnixStream, Option<(u32, u32)>)> {
        let (stream, _) = self.0.accept().await?;
        let cred = stream.peer_cred().ok().map(|c| (c.uid(), c.gid()));
        Ok((stream, cred))
    }
}

impl Accept for TcpAccept {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(tokio::net::TcpStream, Option<(u32, u32)>)> {
        let (stream, _) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, None))
    }
}

/// Accepts without waiting on any budget: a full handshake budget cuts its oldest
/// handshake, and the other budgets refuse the connection that is over them, so
/// what one client holds never stalls the accept of another's.
async fn accept_loop<A: Accept>(listener: A, serving: Serving) {
    let mut shutdown = serving.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, cred) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let uid_slot = match cred {
            Some((uid, _)) => match serving.budget.peer_uid(uid) {
                Some(slot) => Some(slot),
                None => {
                    drop(stream);
                    let ctx = serving.ctx.clone();
                    tokio::spawn(async move {
                        refuse_busy(&ctx, Some(uid), None, "too_many_connections_for_uid").await;
                    });
                    continue;
                }
            },
            None => None,
        };
        let handshake = serving.budget.handshake();
        let serving = serving.clone();
        tokio::spawn(async move {
            serve_conn(stream, cred, handshake, &serving).await;
            drop(uid_slot);
            drop(serving);
        });
    }
}

async fn serve_conn<S>(stream: S, cred: Option<(u32, u32)>, handshake: Handshake, serving: &Serving)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = &serving.ctx;
    // The ClientHello first, then the rest: a handshake that has spoken outlives
    // silent ones when the budget is full (listener::budget).
    let handshaking = async {
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        handshake.spoke();
        hello.into_stream(ctx.acceptor.config().clone()).await
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(ctx.limits.handshake_timeout, handshaking) => accepted,
        _ = handshake.cut() => {
            tracing::debug!("tls handshake cut: the handshake budget is full and it was the oldest");
            return;
        }
    };
    drop(handshake);
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(refused) if is_certificate_refusal(refused) => {
                    refuse_certificate(ctx, refused, cred).await;
                }
                _ => tracing::debug!(error = %e, "tls handshake failed"),
            }
            return;
        }
        Err(_) => {
            tracing::debug!("tls handshake timed out");
            return;
        }
    };
    if let Err(e) = ctx.tls.admit(tls.get_ref().1) {
        refuse_certificate(ctx, &e, cred).await;
        return;
    }
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let identity = match &leaf {
        Some(cert) => {
            Peer::from_certificate(cert.as_ref(), &ctx.trust_domain).map_err(|e| e.to_string())
        }
        None => Err("no client certificate".to_owned()),
    };
    let uid = cred.map(|c| c.0);
    let who: Arc<str> = match &identity {
        Ok(peer) => peer.id.clone(),
        Err(_) => UNIDENTIFIED.into(),
    };
    let slot = match serving.budget.establish(who.clone(), leaf.clone()) {
        Ok(slot) => slot,
        Err(full) => {
            refuse_busy(ctx, uid, Some(who), full.code()).await;
            return;
        }
    };
    // Closed gracefully at its age limit, and never served past its certificate's
    // expiry.
    let mut lifetime = ctx.limits.max_connection_age;
    if let Some(left) = leaf.as_ref().and_then(|c| valid_for(c.as_ref())) {
        lifetime = lifetime.min(left);
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_headers(ctx.limits.max_headers)
        .max_buf_size(64 * 1024);
    let io = TokioIo::new(tls);
    match identity {
        Ok(mut peer) => {
            if let Some((uid, gid)) = cred {
                peer = peer.with_unix_cred(uid, gid);
            }
            let conn = Arc::new(Conn::new(peer, &ctx.policy));
            let state = ctx.state.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                api::handle(state.clone(), conn.clone(), req)
            });
            run_conn(builder.serve_connection(io, svc), &slot, lifetime, serving).await;
        }
        Err(reason) => {
            tracing::debug!(reason = %reason, "client certificate carries no usable identity");
            let ctx = ctx.clone();
            let reason: Arc<str> = reason.into();
            let svc = service_fn(move |req: Request<Incoming>| {
                refuse_identity(ctx.clone(), reason.clone(), cred, req)
            });
            run_conn(builder.serve_connection(io, svc), &slot, lifetime, serving).await;
        }
    }
}

/// How long after a graceful close starts the connection is cut anyway (a watch
/// stream never ends by itself).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Drives one HTTP connection until it ends, is cut for its certificate, reaches
/// `lifetime` (then closes gracefully: the request in flight finishes, for at most
/// [`CLOSE_GRACE`]), or the listener stops (the same, for at most the drain time).
async fn run_conn<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    slot: &Established,
    lifetime: Duration,
    serving: &Serving,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut shutdown = serving.shutdown.clone();
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(lifetime);
    tokio::pin!(deadline);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = slot.cut() => {
                tracing::info!("connection cut: its client certificate is no longer accepted");
                return;
            }
            _ = &mut deadline => {
                if closing {
                    return;
                }
                tracing::debug!("connection reached its lifetime; closing");
                conn.as_mut().graceful_shutdown();
                closing = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = shutdown.wait_for(|stop| *stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + serving.drain);
            }
        }
    }
}

/// How long a certificate (DER) is still valid, if it parses and is.
fn valid_for(der: &[u8]) -> Option<Duration> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let left = cert.validity().not_after.timestamp() - crate::clock::now_ms() / 1000;
    u64::try_from(left).ok().map(Duration::from_secs)
}

/// A connection refused because its client holds its share of a budget: counted
/// and audited (coalesced per client, like every denial).
async fn refuse_busy(ctx: &Context, uid: Option<u32>, who: Option<Arc<str>>, code: &'static str) {
    ctx.state.metrics.denial("connect");
    tracing::debug!(?uid, code, "connection refused: over its budget");
    let mut record = connect_denied(uid, None, 0, code);
    if let Some(who) = who {
        record.peer = who;
    }
    ctx.state.audit.record_coalesced(record).await;
}

/// The peer name of connections without a usable identity.
const UNIDENTIFIED: &str = "(unidentified)";

/// Whether a handshake failed because of the client's certificate (revoked, expired,
/// from another CA, missing), as opposed to a broken or abandoned connection.
fn is_certificate_refusal(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
}

/// A connection refused for its certificate: counted, and audited as a denied
/// `connect` (with the uid on the Unix socket), so a revoked or foreign client that
/// keeps trying shows up in the audit log and not only in a debug log. A client that
/// retries in a loop gets one record a second per reason, with a count
/// ([`Audit::record_coalesced`](crate::audit::Audit::record_coalesced)).
async fn refuse_certificate(ctx: &Context, refused: &rustls::Error, cred: Option<(u32, u32)>) {
    let uid = cred.map(|c| c.0);
    let reason = refused.to_string();
    ctx.state.metrics.denial("connect");
    tracing::debug!(error = %reason, ?uid, "client certificate refused");
    let mut record = connect_denied(uid, None, 0, "certificate_refused");
    record.detail = Some(reason.into());
    ctx.state.audit.record_coalesced(record).await;
}

async fn refuse_identity(
    ctx: Arc<Context>,
    reason: Arc<str>,
    cred: Option<(u32, u32)>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let err = ApiError::new(
        StatusCode::FORBIDDEN,
        api::error::Code::BadIdentity,
        format!("client certificate refused: {reason}"),
    );
    let record = connect_denied(
        cred.map(|c| c.0),
        Some(req.uri().path()),
        err.status.as_u16(),
        err.code.as_str(),
    );
    ctx.state.metrics.denial("connect");
    ctx.state.audit.record_coalesced(record).await;
    Ok(err.into_response())
}

/// The audit record of a connection denied before it had an identity.
fn connect_denied(uid: Option<u32>, path: Option<&str>, status: u16, code: &'static str) -> Record {
    let mut record = Record::now(UNIDENTIFIED.into(), uid, "connect", path);
    record.outcome = Outcome::Denied;
    record.status = status;
    record.code = Some(code);
    record
}
