//! Accepts connections on the Unix socket and the loopback TCP port, completes the
//! mTLS handshake, works out the peer, and hands each request to [`crate::api`].
//!
//! Everything a client could hold open is bounded: the number of connections, the
//! time to finish the handshake, the time to send headers, the number and size of
//! headers (hyper), and the time to send a body (`api`). A connection whose
//! certificate is valid but carries no usable identity gets `403 bad_identity` on every
//! request, and each is audited.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::api::{self, ApiError, Body, Conn, State};
use crate::audit::{Outcome, Record};
use crate::config::Limits;
use crate::identity::{Peer, TrustDomain};
use crate::policy::Policy;
use crate::tls::ServerTls;


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
    /// Access policy.
    pub policy: Policy,
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
        Some(path) => Some((bind_unix(path, listen.socket_mode).await?, path.clone())),
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
/// there, and renamed into place, which also replaces a stale socket atomically.
async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, Error> {
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
    drain: std::time::Duration,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    let socket_path = bound.unix.as_ref().map(|(_, p)| p.clone());
    if let Some((listener, _)) = bound.unix {
        tasks.spawn(accept_loop(
            UnixAccept(listener),
            ctx.clone(),
            slots.clone(),
            graceful.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(listener) = bound.tcp {
        tasks.spawn(accept_loop(
            TcpAccept(listener),
            ctx.clone(),
            slots.clone(),
            graceful.clone(),
            shutdown.clone(),
        ));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    while tasks.join_next().await.is_some() {}
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(drain, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the drain time; closing them");
            }
        }
        Err(_) => tracing::warn!("listener tasks still hold the shutdown handle"),
    }
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

async fn accept_loop<A: Accept>(
    listener: A,
    ctx: Arc<Context>,
    slots: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, cred) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            serve_conn(stream, cred, ctx, watcher).await;
            drop(permit);
        });
    }
}

async fn serve_conn<S>(
    stream: S,
    cred: Option<(u32, u32)>,
    ctx: Arc<Context>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = match tokio::time::timeout(ctx.limits.handshake_timeout, ctx.acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(refused) if is_certificate_refusal(refused) => {
                    refuse_certificate(&ctx, refused, cred).await;
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
        refuse_certificate(&ctx, &e, cred).await;
        return;
    }
    let identity = {
        let (_, session) = tls.get_ref();
        match session.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => {
                Peer::from_certificate(cert.as_ref(), &ctx.trust_domain).map_err(|e| e.to_string())
            }
            None => Err("no client certificate".to_owned()),
        }
    };
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
            let conn = Arc::new(Conn {
                policy: ctx.policy.for_peer(&peer),
                peer,
            });
            let state = ctx.state.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                api::handle(state.clone(), conn.clone(), req)
            });
            let _ = watcher.watch(builder.serve_connection(io, svc)).await;
        }
        Err(reason) => {
            tracing::debug!(reason = %reason, "client certificate carries no usable identity");
            let ctx = ctx.clone();
            let reason: Arc<str> = reason.into();
            let svc = service_fn(move |req: Request<Incoming>| {
                refuse_identity(ctx.clone(), reason.clone(), cred, req)
            });
            let _ = watcher.watch(builder.serve_connection(io, svc)).await;
        }
    }
}

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
/// ([`Audit::record_denial`](crate::audit::Audit::record_denial)).
async fn refuse_certificate(ctx: &Context, refused: &rustls::Error, cred: Option<(u32, u32)>) {
    let uid = cred.map(|c| c.0);
    let reason = refused.to_string();
    ctx.state.metrics.denial("connect");
    tracing::debug!(error = %reason, ?uid, "client certificate refused");
    let mut record = connect_denied(uid, None, 0, "certificate_refused");
    record.detail = Some(reason.into());
    ctx.state.audit.record_denial(record).await;
}

async fn refuse_identity(
    ctx: Arc<Context>,
    reason: Arc<str>,
    cred: Option<(u32, u32)>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let err = ApiError::new(
        StatusCode::FORBIDDEN,
        "bad_identity",
        format!("client certificate refused: {reason}"),
    );
    let record = connect_denied(
        cred.map(|c| c.0),
        Some(req.uri().path()),
        err.status.as_u16(),
        err.code,
    );
    ctx.state.metrics.denial("connect");
    ctx.state.audit.record_denial(record).await;
    Ok(err.into_response())
}

/// The audit record of a connection denied before it had an identity.
fn connect_denied(uid: Option<u32>, path: Option<&str>, status: u16, code: &'static str) -> Record {
    let mut record = Record::now("(unidentified)".into(), uid, "connect", path);
    record.outcome = Outcome::Denied;
    record.status = status;
    record.code = Some(code);
    record
}
