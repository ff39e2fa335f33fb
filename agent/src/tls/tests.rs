//! Real handshakes between [`ServerTls`] and [`client_config`] over in-memory pipes
//! and a loopback socket, with certificates from a real [`Ca`].

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::ca::{Ca, WriteMode};
use crate::identity::{Peer, SpiffeId, TrustDomain};

const HOUR: Duration = Duration::from_secs(3600);

fn td() -> TrustDomain {
    TrustDomain::new("latchkey.local").expect("valid trust domain")
}

/// An init directory with a CA and a server certificate written where `TlsFiles` expects.
struct Fixture {
    _tmp: tempfile::TempDir,
    ca: Ca,
    files: TlsFiles,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::create(tmp.path(), &td()).expect("create ca");
    let layout = ca.layout().clone();
    ca.issue_server(
        &["localhost".to_owned()],
        &["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        HOUR,
    )
    .expect("issue server cert")
    .write(
        &layout.server_cert(),
        &layout.server_key(),
        WriteMode::CreateNew,
    )
    .expect("write server cert");
    Fixture {
        files: TlsFiles::from_layout(&layout),
        _tmp: tmp,
        ca,
    }
}

/// A client config for a fresh certificate for `id`, and that certificate's serial.
fn client_for(ca: &Ca, server_ca_pem: &str, id: &SpiffeId) -> (Arc<ClientConfig>, String) {
    let issued = ca.issue_client(id, HOUR).expect("issue client cert");
    let config =
        client_config(server_ca_pem, &issued.cert_pem, &issued.key_pem).expect("client config");
    (config, issued.serial)
}

fn app(name: &str) -> SpiffeId {
    SpiffeId::app(&td(), name).expect("valid id")
}

/// Runs one connection: the server accepts, reads the peer and writes `ok`; the client
/// reads to the end. Returns the peer, or the rustls error the server refused with,
/// after checking both ends agree (in TLS 1.3 the client finishes before the server
/// has checked its certificate, so the client only learns of a rejection on its first
/// read).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Peer, rustls::Error> {
    connect(server, None, client).await
}

/// [`handshake`] as the listener runs it: the server also passes the connection
/// through [`ServerTls::admit`].
async fn admitted_handshake(
    server: &Arc<ServerTls>,
    client: Arc<ClientConfig>,
) -> Result<Peer, rustls::Error> {
    connect(server.config(), Some(server.clone()), client).await
}

async fn connect(
    server: Arc<ServerConfig>,
    admit: Option<Arc<ServerTls>>,
    client: Arc<ClientConfig>,
) -> Result<Peer, rustls::Error> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        let mut stream = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(rustls_error)?;
        let (_, conn) = stream.get_ref();
        if let Some(tls) = admit {
            // Refused like the listener does: the connection is dropped unanswered.
            tls.admit(conn)?;
        }
        assert_eq!(conn.alpn_protocol(), Some(ALPN_HTTP11));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = Peer::from_tls(conn, &td()).expect("peer identity");
        stream.write_all(b"ok").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        Ok::<_, rustls::Error>(peer)
    });
    let client_side = async {
        let mut stream = TlsConnector::from(client)
            .connect(server_name(), client_io)
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        if buf == b"ok" {
            Ok(())
        } else {
            Err(io::Error::other("unexpected reply"))
        }
    }
    .await;
    let server_side = server_side.await.expect("server task");
    match (server_side, client_side) {
        (Ok(peer), Ok(())) => Ok(peer),
        (Err(e), Err(_)) => Err(e),
        (server, client) => panic!("ends disagree: server {server:?}, client {client:?}"),
    }
}

/// The rustls error inside a tokio-rustls I/O error.
fn rustls_error(error: io::Error) -> rustls::Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(inner) => inner.clone(),
        None => panic!("not a tls error: {error}"),
    }
}

#[tokio::test]
async fn issued_client_cert_completes_the_handshake_with_its_identity() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let id = SpiffeId::tenant_app(&td(), "acme", "billing").expect("valid id");
    let (client, serial) = client_for(&fx.ca, fx.ca.cert_pem(), &id);

    let peer = handshake(server.config(), client).await.expect("handshake");
    assert_eq!(&*peer.id, "spiffe://latchkey.local/tenant/acme/app/billing");
    assert_eq!(peer.app.as_deref(), Some("billing"));
    assert_eq!(peer.tenant.as_deref(), Some("acme"));
    assert_eq!(&*peer.serial, serial);
    assert_eq!((peer.uid, peer.gid), (None, None));
}

#[tokio::test]
async fn client_config_from_files_works_over_loopback_tcp() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let layout = fx.ca.layout();
    let cert = layout.client_cert("admin").expect("path");
    let key = layout.client_key("admin").expect("path");
    fx.ca
        .issue_client(&SpiffeId::admin(&td(), "admin").expect("id"), HOUR)
        .expect("issue")
        .write(&cert, &key, WriteMode::CreateNew)
        .expect("write");
    let client = client_config_from_files(&layout.ca_cert(), &cert, &key).expect("client config");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(server.config());
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let stream = acceptor.accept(tcp).await.expect("server handshake");
        Peer::from_tls(stream.get_ref().1, &td()).expect("peer")
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _stream = TlsConnector::from(client)
        .connect(server_name(), tcp)
        .await
        .expect("client handshake");
    let peer = server_side.await.expect("server task");
    assert_eq!(&*peer.id, "spiffe://latchkey.local/admin/admin");
    assert!(peer.is_admin());
    assert_eq!(peer.app, None);
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(fx.ca.cert_pem().as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();

    let err = handshake(server.config(), Arc::new(client))
        .await
        .expect_err("anonymous client accepted");
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let other_dir = tempfile::tempdir().expect("tempdir");
    // Same trust domain, different key: only the chain tells them apart.
    let other = Ca::create(other_dir.path(), &td()).expect("other ca");
    let (client, _) = client_for(&other, fx.ca.cert_pem(), &app("billing"));

    let err = handshake(server.config(), client)
        .await
        .expect_err("foreign client accepted");
    // Both CAs are named `latchkey CA latchkey.local`, so webpki finds the issuer by
    // name and then fails its signature; a differently named CA gives UnknownIssuer.
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            )
        ),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn revoked_client_is_refused_after_reload_and_others_still_work() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let (billing, billing_serial) = client_for(&fx.ca, fx.ca.cert_pem(), &app("billing"));
    let (search, _) = client_for(&fx.ca, fx.ca.cert_pem(), &app("search"));
    handshake(server.config(), billing.clone())
        .await
        .expect("billing before revocation");
    handshake(server.config(), search.clone())
        .await
        .expect("search before revocation");
    assert!(!server.reload_crl().expect("reload"), "nothing changed yet");

    fx.ca.revoke(&billing_serial).expect("revoke");
    assert!(server.reload_crl().expect("reload"));
    assert!(
        !server.reload_crl().expect("reload"),
        "second reload is a no-op"
    );

    // `billing` still holds a resumable session from before; it must not get back in.
    let err = handshake(server.config(), billing)
        .await
        .expect_err("revoked client accepted");
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
    );
    handshake(server.config(), search)
        .await
        .expect("search after revocation");
}

#[tokio::test]
async fn bad_crl_is_refused_and_the_previous_one_kept() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let (billing, billing_serial) = client_for(&fx.ca, fx.ca.cert_pem(), &app("billing"));
    let (search, _) = client_for(&fx.ca, fx.ca.cert_pem(), &app("search"));
    fx.ca.revoke(&billing_serial).expect("revoke");
    assert!(server.reload_crl().expect("reload"));
    let crl_path = fx.ca.layout().crl();

    fs::write(
        &crl_path,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .expect("write garbage");
    assert!(matches!(server.reload_crl(), Err(Error::Pem { .. })));

    // A valid CRL, but from another CA (it would fail every handshake if accepted).
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Ca::create(other_dir.path(), &td()).expect("other ca");
    fs::copy(other.layout().crl(), &crl_path).expect("copy crl");
    assert!(matches!(
        server.reload_crl(),
        Err(Error::CrlSignature { .. })
    ));

    fs::remove_file(&crl_path).expect("remove crl");
    assert!(matches!(server.reload_crl(), Err(Error::Read { .. })));

    // The previous verifier is still in force: revoked stays out, others get in.
    assert_eq!(
        handshake(server.config(), billing).await,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );
    handshake(server.config(), search)
        .await
        .expect("search with the previous crl");
}

/// The race a reload can lose: a handshake that resumed from a session taken before
/// the cache was emptied gets a new ticket after it, so the client keeps resuming past
/// the revocation. Reproduced here by swapping the verifier while keeping the
/// sessions; `admit` must still refuse the resumed connection.
#[tokio::test]
async fn resumed_session_is_refused_once_its_certificate_is_revoked() {
    let fx = fixture();
    let server = Arc::new(ServerTls::load(&fx.files).expect("load server tls"));
    let (billing, billing_serial) = client_for(&fx.ca, fx.ca.cert_pem(), &app("billing"));
    let (search, _) = client_for(&fx.ca, fx.ca.cert_pem(), &app("search"));
    admitted_handshake(&server, billing.clone())
        .await
        .expect("billing before revocation");
    admitted_handshake(&server, search.clone())
        .await
        .expect("search before revocation");

    fx.ca.revoke(&billing_serial).expect("revoke");
    let crls = crls_from_pem(&read(&fx.ca.layout().crl()).expect("crl"), "crl").expect("crls");
    let inner = build_verifier(
        &server.trust.load().roots,
        &server.provider,
        crls,
        &fx.files,
    )
    .expect("verifier");
    server.verifier.inner.store(Arc::new(inner));

    // Without `admit` the resumed session still gets in: this is the hole.
    handshake(server.config(), billing.clone())
        .await
        .expect("a resumed session skips verification");
    assert_eq!(
        admitted_handshake(&server, billing).await,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );
    admitted_handshake(&server, search)
        .await
        .expect("a resumed session of a good certificate is admitted");
}

#[tokio::test]
async fn crl_watcher_applies_a_revocation_without_restart() {
    let fx = fixture();
    let server = Arc::new(ServerTls::load(&fx.files).expect("load server tls"));
    let watcher = server.clone().spawn_file_watcher(Duration::from_millis(50));
    let (billing, billing_serial) = client_for(&fx.ca, fx.ca.cert_pem(), &app("billing"));
    handshake(server.config(), billing.clone())
        .await
        .expect("before revocation");

    fx.ca.revoke(&billing_serial).expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match admitted_handshake(&server, billing.clone()).await {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => break,
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert!(Instant::now() < deadline, "watcher never applied the crl");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The task stops by itself once the server is gone.
    drop(server);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stopped")
        .expect("watcher did not panic");
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    // rustls here is built without TLS 1.2, so speak as a TLS 1.2-only client by hand:
    // a ClientHello with version 1.2 and no supported_versions extension.
    let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        TlsAcceptor::from(server.config())
            .accept(server_io)
            .await
            .map(drop)
            .map_err(rustls_error)
    });
    client_io
        .write_all(&tls12_client_hello())
        .await
        .expect("send hello");
    let mut reply = Vec::new();
    client_io.read_to_end(&mut reply).await.expect("read reply");

    let err = server_side
        .await
        .expect("server task")
        .expect_err("tls 1.2 accepted");
    assert_eq!(
        err,
        rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired
        )
    );
    // One fatal alert record: content type 21, level 2 (fatal), protocol_version (70).
    assert_eq!(reply.first(), Some(&21), "reply: {reply:02x?}");
    assert_eq!(reply.get(5..7), Some(&[2u8, 70][..]), "reply: {reply:02x?}");
}

/// A TLS 1.2 ClientHello as an OpenSSL client limited to 1.2 would send it (trimmed).
fn tls12_client_hello() -> Vec<u8> {
    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let mut sni = vec![0x00, 0x0c, 0x00, 0x00, 0x09];
    sni.extend_from_slice(b"localhost");
    let mut extensions = Vec::new();
    extensions.extend(ext(0x0000, &sni));
    extensions.extend(ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])); // x25519, p-256
    extensions.extend(ext(0x000b, &[0x01, 0x00])); // point formats: uncompressed
    extensions.extend(ext(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04])); // ecdsa, rsa-pss
    extensions.extend(ext(0x0017, &[])); // extended master secret

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xcc, 0xa9]); // ECDHE suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    hello.extend_from_slice(
        &u16::try_from(extensions.len())
            .expect("short")
            .to_be_bytes(),
    );
    hello.extend(extensions);

    let len = u32::try_from(hello.len()).expect("short").to_be_bytes();
    let mut handshake = vec![0x01, len[1], len[2], len[3]];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("short").to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn load_errors_name_the_file() {
    let fx = fixture();
    let mut files = fx.files.clone();
    files.key = fx.files.key.with_file_name("missing.key");
    let err = ServerTls::load(&files).expect_err("missing key");
    assert!(err.to_string().contains("missing.key"), "{err}");

    // A key that does not match the certificate: the message names both files and
    // carries no key material.
    let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let wrong = fx.files.key.with_file_name("wrong.key");
    fs::write(&wrong, &other_key).expect("write key");
    files.key = wrong;
    let err = ServerTls::load(&files).expect_err("mismatched key");
    let text = format!("{err} {err:?}");
    assert!(text.contains("wrong.key"), "{text}");
    let body = other_key.lines().nth(1).expect("key body");
    assert!(!text.contains(body), "{text}");

    let mut files = fx.files.clone();
    files.crl = Some(fx.files.ca.with_file_name("no-such-crl.pem"));
    let err = ServerTls::load(&files).expect_err("missing crl");
    assert!(err.to_string().contains("no-such-crl.pem"), "{err}");

    let err = client_config("not pem", "", &SecretString::from("")).expect_err("bad pem");
    assert!(matches!(err, Error::Pem { .. }), "{err}");
}

#[test]
fn server_tls_debug_shows_no_key_material() {
    let fx = fixture();
    let server = ServerTls::load(&fx.files).expect("load server tls");
    let key = fs::read_to_string(&fx.files.key).expect("key");
    let debug = format!("{server:?}");
    assert!(!debug.contains(key.lines().nth(1).expect("key body")));
    assert!(debug.contains("server.key"));
}
