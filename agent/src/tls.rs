//! rustls configurations for both ends of the agent's mutual TLS.
//!
//! The server side ([`ServerTls`]) is what the listener accepts with: TLS 1.3 only, the
//! `ring` provider, ALPN `http/1.1`, and a client certificate that is **required** and
//! must be issued directly by our CA (no intermediate, whatever the client presents)
//! and not be on our CRL. Revocation takes effect without a
//! restart: the client-certificate verifier is a thin wrapper around a
//! [`WebPkiClientVerifier`] held in an [`ArcSwap`], and [`ServerTls::reload_crl`] (or
//! the polling task from [`ServerTls::spawn_file_watcher`]) swaps in a verifier built
//! from the new CRL. A reload also empties the session-resumption cache, because a
//! resumed TLS 1.3 session skips certificate verification and would otherwise let a
//! revoked client back in. The server's own certificate is swappable the same way:
//! [`ServerTls::reload_cert`] (run by the same watcher when the certificate or key
//! file changes) puts a renewed certificate in place for new handshakes.
//!
//! The client side ([`client_config`]) is what the CLI and tests connect with: TLS 1.3,
//! trusting only our CA, presenting an app certificate. Over the Unix socket clients
//! use server name [`SERVER_NAME`] (`localhost`), which every server certificate the
//! CA issues carries.
//!
//! Who the peer is, once the handshake is done, is `identity`'s job
//! (`Peer::from_tls`). Errors name files, never key material.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    VerifierBuilderError, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, HandshakeKind, RootCertStore,
    ServerConfig, ServerConnection, SignatureScheme,
};

use crate::identity::ca::Layout;
use crate::secret::{SecretBytes, SecretString};

/// The one ALPN protocol both ends speak.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// The server name clients use on the Unix socket (and on loopback unless told otherwise).
pub const SERVER_NAME: &str = "localhost";
/// Resumable sessions the server remembers.
const SESSION_CACHE_SIZE: usize = 1024;
/// The shortest CRL polling period; `tokio::time::interval` panics on zero.
const MIN_POLL: Duration = Duration::from_millis(50);

/// Errors from building TLS configurations. Messages name files, never keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No usable PEM section of the expected kind.
    #[error("{origin}: no valid pem {kind} found")]
    Pem {
        /// The file, or which argument.
        origin: String,
        /// What was expected (`certificate`, `private key`, `crl`).
        kind: &'static str,
    },
    /// A CA certificate that rustls cannot use as a trust anchor.
    #[error("{origin}: not a usable ca certificate")]
    Ca {
        /// The file, or which argument.
        origin: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The CRL is not signed by any of the trusted CAs.
    #[error("{origin}: crl is not signed by a trusted ca")]
    CrlSignature {
        /// The file.
        origin: String,
    },
    /// The client verifier could not be built (for example, an unparsable CRL).
    #[error("cannot build the client certificate verifier from {ca} and {crl}")]
    Verifier {
        /// The CA file.
        ca: String,
        /// The CRL file, or `no crl`.
        crl: String,
        /// The cause.
        #[source]
        source: VerifierBuilderError,
    },
    /// rustls refused the certificate and key (for example, they do not match).
    #[error("cannot use certificate {cert} with key {key}")]
    CertKey {
        /// The certificate file, or which argument.
        cert: String,
        /// The key file, or which argument.
        key: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol settings (a bug rather than bad input).
    #[error("invalid tls settings")]
    Settings(#[source] rustls::Error),
}

/// The files a [`ServerTls`] is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) client certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server private key (PEM).
    pub key: PathBuf,
    /// The CRL (PEM), re-read by [`ServerTls::reload_crl`]. Without one, no revocation.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The server files of an init directory, with its CRL.
    pub fn from_layout(layout: &Layout) -> Self {
        Self {
            ca: layout.ca_cert(),
            cert: layout.server_cert(),
            key: layout.server_key(),
            crl: Some(layout.crl()),
        }
    }
}

/// The server-side TLS state: the rustls config and the swappable client verifier.
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    /// The files in force and the CA read from them; replaced by
    /// [`ServerTls::reload_files`].
    trust: ArcSwap<Trust>,
    verifier: Arc<ReloadingVerifier>,
    sessions: Arc<SessionCache>,
    config: Arc<ServerConfig>,
    /// The CRL bytes the current verifier was built from; the lock also serializes reloads.
    crl: Mutex<Option<Vec<u8>>>,
    /// Counts changes of what clients are verified against (CRL, CA), so live
    /// connections can be checked again.
    reloads: tokio::sync::watch::Sender<u64>,
    /// The server's certificate and key, swapped by [`ServerTls::reload_cert`].
    server_cert: Arc<SwappableCert>,
    /// The certificate bytes in place (public), to tell a change; the lock also
    /// serializes reloads.
    cert_pem: Mutex<Vec<u8>>,
}

/// The files in force and the CA certificates read from them.
struct Trust {
    files: TlsFiles,
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    root_ders: Vec<CertificateDer<'static>>,
}

impl Trust {
    fn read(files: &TlsFiles) -> Result<Self, Error> {
        let ca_pem = read(&files.ca)?;
        let (roots, root_ders) = roots_from_pem(&ca_pem, &origin(&files.ca))?;
        Ok(Trust {
            files: files.clone(),
            ca_pem,
            roots: Arc::new(roots),
            root_ders,
        })
    }
}

/// The CRL at `files.crl` (none without one), checked against `root_ders`.
fn read_crl(
    files: &TlsFiles,
    root_ders: &[CertificateDer<'static>],
) -> Result<(Option<Vec<u8>>, Vec<CertificateRevocationListDer<'static>>), Error> {
    let Some(path) = &files.crl else {
        return Ok((None, Vec::new()));
    };
    let bytes = read(path)?;
    let crls = crls_from_pem(&bytes, &origin(path))?;
    check_crl_signatures(&crls, root_ders, &origin(path))?;
    Ok((Some(bytes), crls))
}

/// The server certificate handed to every handshake, replaceable while serving.
#[derive(Debug)]
struct SwappableCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server's certificate chain and key from their files, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    files: &TlsFiles,
) -> Result<(CertifiedKey, Vec<u8>), Error> {
    let cert_bytes = read(&files.cert)?;
    let chain = certs_from_pem(&cert_bytes, &origin(&files.cert))?;
    let key = key_from_pem(read_secret(&files.key)?.expose(), &origin(&files.key))?;
    let mismatch = |source| Error::CertKey {
        cert: origin(&files.cert),
        key: origin(&files.key),
        source,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(mismatch)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(mismatch)?;
    Ok((certified, cert_bytes))
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.trust.load().files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the CA, server certificate, key and (if configured) CRL, and builds the
    /// server config. A configured CRL must exist and be signed by the CA.
    pub fn load(files: &TlsFiles) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let trust = Trust::read(files)?;
        let (certified, cert_pem) = certified_key(&provider, files)?;
        let server_cert = Arc::new(SwappableCert(ArcSwap::from_pointee(certified)));
        let (crl_bytes, crls) = read_crl(files, &trust.root_ders)?;
        let inner = build_verifier(&trust.roots, &provider, crls, files)?;
        let verifier = Arc::new(ReloadingVerifier {
            hints: ArcSwap::from_pointee(hints_of(&trust.roots)),
            inner: ArcSwap::from_pointee(inner),
        });
        let sessions = Arc::new(SessionCache::new());

        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::Settings)?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(server_cert.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.session_storage = sessions.clone();

        Ok(Self {
            provider,
            trust: ArcSwap::from_pointee(trust),
            verifier,
            sessions,
            config: Arc::new(config),
            crl: Mutex::new(crl_bytes),
            reloads: tokio::sync::watch::Sender::new(0),
            server_cert,
            cert_pem: Mutex::new(cert_pem),
        })
    }

    /// Re-reads the server certificate and key and, if the certificate changed, puts
    /// them in place for every handshake from now on (connections already open keep
    /// theirs). Returns whether anything changed. On any error — a half-written pair,
    /// a key that does not match — the previous certificate stays in place.
    pub fn reload_cert(&self) -> Result<bool, Error> {
        let mut current = self.cert_pem.lock().unwrap_or_else(PoisonError::into_inner);
        let (certified, bytes) = certified_key(&self.provider, &self.trust.load().files)?;
        if *current == bytes {
            return Ok(false);
        }
        self.server_cert.0.store(Arc::new(certified));
        *current = bytes;
        Ok(true)
    }

    /// Changes each time a reload put a new CRL in place: whoever holds connections
    /// checks their certificates again ([`ServerTls::still_valid`]).
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Whether a client certificate accepted earlier still passes now, against the
    /// current CRL (and its validity period).
    pub fn still_valid(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        self.verifier
            .verify_client_cert(end_entity, &[], UnixTime::now())
            .map(|_| ())
    }

    /// The rustls server config to accept with (e.g. `tokio_rustls::TlsAcceptor::from`).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The files in force.
    pub fn files(&self) -> TlsFiles {
        self.trust.load().files.clone()
    }

    /// Re-reads every file — the CA, the server certificate and key, the CRL — at
    /// `files` (a reload may name other paths), checks them all together, and only
    /// then puts what changed in place: the server certificate for new handshakes,
    /// and a verifier over the new CA and CRL (connections already open are checked
    /// again against it, and resumable sessions are forgotten). On any error nothing
    /// changes. Returns what changed, in words.
    pub fn reload_files(&self, files: &TlsFiles) -> Result<Vec<&'static str>, Error> {
        let mut crl_in_place = self.crl.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cert_in_place = self.cert_pem.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.trust.load_full();
        let trust = Trust::read(files)?;
        let (certified, cert_pem) = certified_key(&self.provider, files)?;
        let (crl_bytes, crls) = read_crl(files, &trust.root_ders)?;
        let ca_changed = trust.ca_pem != old.ca_pem;
        let crl_changed = crl_bytes != *crl_in_place;
        let verifier = if ca_changed || crl_changed {
            Some(build_verifier(&trust.roots, &self.provider, crls, files)?)
        } else {
            None
        };
        let mut changed = Vec::new();
        if files != &old.files {
            changed.push("tls files");
        }
        if cert_pem != *cert_in_place {
            self.server_cert.0.store(Arc::new(certified));
            *cert_in_place = cert_pem;
            changed.push("server certificate");
        }
        if ca_changed {
            self.verifier.hints.store(Arc::new(hints_of(&trust.roots)));
            changed.push("ca");
        }
        if crl_changed {
            changed.push("revocation list");
        }
        self.trust.store(Arc::new(trust));
        if let Some(verifier) = verifier {
            self.verifier.inner.store(Arc::new(verifier));
            self.sessions.clear();
            *crl_in_place = crl_bytes;
            self.reloads.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// Checks a finished handshake's client certificate against the current CRL when
    /// the session was resumed. A resumed TLS 1.3 handshake skips certificate
    /// verification, and a connection that resumed while a reload was emptying the
    /// session cache can hand its client a new ticket that outlives the reload. Checking
    /// here makes a revocation final for every connection accepted after it, however
    /// the session got there; an expired certificate is refused the same way. Full
    /// handshakes were verified by rustls already and pass straight through.
    pub fn admit(&self, conn: &ServerConnection) -> Result<(), rustls::Error> {
        if conn.handshake_kind() != Some(HandshakeKind::Resumed) {
            return Ok(());
        }
        let (end_entity, intermediates) = conn
            .peer_certificates()
            .and_then(<[CertificateDer<'static>]>::split_first)
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }

    /// Re-reads the CRL file and, if it changed, swaps in a verifier built from it and
    /// forgets resumable sessions. Returns whether anything changed. On any error the
    /// previous verifier stays in place. Without a configured CRL, does nothing.
    pub fn reload_crl(&self) -> Result<bool, Error> {
        let mut current = self.crl.lock().unwrap_or_else(PoisonError::into_inner);
        let trust = self.trust.load_full();
        let Some(path) = &trust.files.crl else {
            return Ok(false);
        };
        let bytes = read(path)?;
        if current.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        let crls = crls_from_pem(&bytes, &origin(path))?;
        check_crl_signatures(&crls, &trust.root_ders, &origin(path))?;
        let inner = build_verifier(&trust.roots, &self.provider, crls, &trust.files)?;
        self.verifier.inner.store(Arc::new(inner));
        // Sessions established before the change would resume without a certificate
        // check; make every client do a full handshake against the new CRL.
        self.sessions.clear();
        *current = Some(bytes);
        self.reloads.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Polls the CRL file's, the server certificate's and its key's modification time,
    /// length and inode every `every` (at least 50 ms) and calls
    /// [`reload_crl`](Self::reload_crl) or [`reload_cert`](Self::reload_cert) when they
    /// change. Logs reloads at `info` and failures at `error`/`warn` (keeping what is in
    /// place); a failure is logged once per change of the file. The task ends at the
    /// first tick after the last other reference to this `ServerTls` is dropped, or
    /// when aborted.
    pub fn spawn_file_watcher(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            // `None` until the first check, so a CRL written between `load` and this
            // task starting is still picked up (`reload_crl` is a no-op if unchanged).
            let mut last = None;
            let mut last_cert = None;
            let mut last_ca = None;
            let mut ticker = tokio::time::interval(every.max(MIN_POLL));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(files) = weak.upgrade().map(|tls| tls.files()) else {
                    return;
                };
                // A changed CA bundle (a CA rotation's new or dropped CA): everything
                // is read again together, since the CRL and the server certificate
                // may have changed with it.
                let ca_stamp = Some(file_stamp(&files.ca));
                if ca_stamp != last_ca {
                    let first = last_ca.is_none();
                    last_ca = ca_stamp;
                    if !first {
                        if let Some(tls) = weak.upgrade() {
                            reload_files_logged(tls, files.clone()).await;
                        }
                    }
                }
                let (path, cert_files) = (files.crl, [files.cert, files.key]);
                let cert_stamp = Some(cert_files.iter().map(|f| file_stamp(f)).collect::<Vec<_>>());
                if cert_stamp != last_cert {
                    let first = last_cert.is_none();
                    last_cert = cert_stamp;
                    if !first {
                        if let Some(tls) = weak.upgrade() {
                            reload_cert_logged(tls).await;
                        }
                    }
                }
                let Some(path) = path.clone() else {
                    continue;
                };
                let stamp = Some(file_stamp(&path));
                if stamp == last {
                    continue;
                }
                last = stamp;
                let Some(tls) = weak.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || tls.reload_crl()).await {
                    Ok(Ok(true)) => tracing::info!(path = %path.display(), "crl reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => tracing::error!(
                        path = %path.display(),
                        error = %error_chain(&error),
                        "crl reload failed; keeping the previous crl"
                    ),
                    Err(error) => tracing::error!(
                        path = %path.display(),
                        %error,
                        "crl reload task failed; keeping the previous crl"
                    ),
                }
            }
        })
    }
}

/// Runs [`ServerTls::reload_files`] on the blocking pool and says what came of it.
async fn reload_files_logged(tls: Arc<ServerTls>, files: TlsFiles) {
    let ca = files.ca.clone();
    match tokio::task::spawn_blocking(move || tls.reload_files(&files)).await {
        Ok(Ok(changed)) if changed.is_empty() => {}
        Ok(Ok(changed)) => {
            tracing::info!(path = %ca.display(), changed = ?changed, "ca bundle reloaded")
        }
        Ok(Err(error)) => tracing::error!(
            path = %ca.display(),
            error = %error_chain(&error),
            "ca bundle reload failed; keeping the previous trust (retried on its next change)"
        ),
        Err(error) => tracing::error!(%error, "ca bundle reload task failed"),
    }
}

/// Runs [`ServerTls::reload_cert`] on the blocking pool and says what came of it.
async fn reload_cert_logged(tls: Arc<ServerTls>) {
    let file = tls.files().cert;
    match tokio::task::spawn_blocking(move || tls.reload_cert()).await {
        Ok(Ok(true)) => tracing::info!(path = %file.display(), "server certificate reloaded"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(
            path = %file.display(),
            error = %error_chain(&error),
            "server certificate reload failed; keeping the previous certificate (a pair being written is retried on its next change)"
        ),
        Err(error) => tracing::error!(%error, "server certificate reload task failed"),
    }
}

/// A rustls client config for talking to the agent: TLS 1.3, ring, ALPN `http/1.1`,
/// trusting only `ca_pem`, presenting `cert_pem` with `key_pem`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &SecretString,
) -> Result<Arc<ClientConfig>, Error> {
    build_client_config(
        ca_pem.as_bytes(),
        "ca pem",
        cert_pem.as_bytes(),
        "certificate pem",
        key_pem.expose().as_bytes(),
        "key pem",
    )
}

/// [`client_config`] from files.
pub fn client_config_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, Error> {
    build_client_config(
        &read(ca)?,
        &origin(ca),
        &read(cert)?,
        &origin(cert),
        read_secret(key)?.expose(),
        &origin(key),
    )
}

/// The server name clients present: [`SERVER_NAME`].
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(SERVER_NAME)
            .unwrap_or_else(|_| unreachable!("`localhost` is a valid dns name")),
    )
}

fn build_client_config(
    ca: &[u8],
    ca_origin: &str,
    cert: &[u8],
    cert_origin: &str,
    key: &[u8],
    key_origin: &str,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, _) = roots_from_pem(ca, ca_origin)?;
    let chain = certs_from_pem(cert, cert_origin)?;
    let key = key_from_pem(key, key_origin)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Settings)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| Error::CertKey {
            cert: cert_origin.to_owned(),
            key: key_origin.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Delegates to the current [`WebPkiClientVerifier`], which [`ServerTls::reload_crl`]
/// replaces. Client authentication is always offered and always mandatory.
#[derive(Debug)]
struct ReloadingVerifier {
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
    /// The CA names suggested to clients; replaced when the CA file changes.
    hints: ArcSwap<&'static [DistinguishedName]>,
}

/// The subjects of `roots`, as [`ClientCertVerifier::root_hint_subjects`] hands them
/// out: borrowed for as long as the verifier lives. Made once at start and once per
/// change of the CA file, so what this keeps is bounded by the CA changes made.
fn hints_of(roots: &RootCertStore) -> &'static [DistinguishedName] {
    Box::leak(roots.subjects().into_boxed_slice())
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        **self.hints.load()
    }

    /// Verifies `end_entity` alone, as issued directly by one of the roots: the
    /// intermediates a client presents are never used to build a path. webpki does not
    /// enforce a root's path length, so an intermediate CA signed by our CA (by
    /// mistake, or with a stolen CA key and no CRL naming it) could otherwise vouch for
    /// any identity; and without a CRL no revocation check would catch it. A client that
    /// sends its issuer along anyway (a redundant copy of the root) is still accepted.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.load().verify_client_cert(end_entity, &[], now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}

/// rustls' in-memory session store, replaceable so a CRL change can empty it.
#[derive(Debug)]
struct SessionCache {
    inner: ArcSwap<ServerSessionMemoryCache>,
}

impl SessionCache {
    fn new() -> Self {
        Self {
            inner: ArcSwap::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)),
        }
    }

    fn clear(&self) {
        self.inner
            .store(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE));
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

fn build_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    files: &TlsFiles,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .only_check_end_entity_revocation();
    // With a CRL every certificate's status must be known (our CRL covers all of the
    // CA's certificates); without one there is nothing to check against.
    let builder = if crls.is_empty() {
        builder.allow_unknown_revocation_status()
    } else {
        builder.with_crls(crls)
    };
    builder.build().map_err(|source| Error::Verifier {
        ca: origin(&files.ca),
        crl: files
            .crl
            .as_deref()
            .map_or_else(|| "no crl".to_owned(), origin),
        source,
    })
}

/// Checks every CRL is signed by one of the roots, so a CRL from another CA (which
/// webpki would only reject at handshake time, failing every client) is refused here.
fn check_crl_signatures(
    crls: &[CertificateRevocationListDer<'static>],
    roots: &[CertificateDer<'static>],
    origin: &str,
) -> Result<(), Error> {
    let bad = || Error::CrlSignature {
        origin: origin.to_owned(),
    };
    for crl in crls {
        let (_, crl) = x509_parser::parse_x509_crl(crl).map_err(|_| Error::Pem {
            origin: origin.to_owned(),
            kind: "crl",
        })?;
        let signed = roots.iter().any(|root| {
            x509_parser::parse_x509_certificate(root).is_ok_and(|(_, root)| {
                root.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(root.public_key()).is_ok()
            })
        });
        if !signed {
            return Err(bad());
        }
    }
    Ok(())
}

fn roots_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), Error> {
    let ders = certs_from_pem(pem, origin)?;
    let mut roots = RootCertStore::empty();
    for der in &ders {
        roots.add(der.clone()).map_err(|source| Error::Ca {
            origin: origin.to_owned(),
            source,
        })?;
    }
    Ok((roots, ders))
}

fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err(origin, "certificate"))?;
    if certs.is_empty() {
        return Err(pem_err(origin, "certificate"));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| pem_err(origin, "private key"))
}

fn crls_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err(origin, "crl"))?;
    if crls.is_empty() {
        return Err(pem_err(origin, "crl"));
    }
    Ok(crls)
}

fn pem_err(origin: &str, kind: &'static str) -> Error {
    Error::Pem {
        origin: origin.to_owned(),
        kind,
    }
}

fn origin(path: &Path) -> String {
    path.display().to_string()
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_secret(path: &Path) -> Result<SecretBytes, Error> {
    read(path).map(SecretBytes::new)
}

/// Modification time, length and inode: what changes when `ca` rewrites the CRL
/// (it replaces the file by rename, so the inode changes even within one mtime tick).
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

use crate::telemetry::chain as error_chain;

#[cfg(test)]
mod tests;
