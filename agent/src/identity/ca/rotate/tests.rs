//! The three steps of a CA rotation, checked the way the agent checks clients: a
//! [`ServerTls`] over the bundle and the CRL as they are after each step.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::*;
use crate::identity::ca::WriteMode;
use crate::identity::{SpiffeId, TrustDomain};
use crate::tls::{ServerTls, TlsFiles};

const HOUR: Duration = Duration::from_secs(3600);

fn td() -> TrustDomain {
    TrustDomain::new("latchkey.local").expect("trust domain")
}

fn app(name: &str) -> SpiffeId {
    SpiffeId::app(&td(), name).expect("id")
}

/// A CA with a server certificate, in a temp folder.
fn init() -> (tempfile::TempDir, Ca) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::create(tmp.path(), &td()).expect("ca");
    let layout = ca.layout().clone();
    ca.issue_server(&["localhost".to_owned()], &[], HOUR)
        .expect("server")
        .write(
            &layout.server_cert(),
            &layout.server_key(),
            WriteMode::CreateNew,
        )
        .expect("write server");
    (tmp, ca)
}

/// Whether the agent, as the files stand now, accepts `cert_pem`.
fn accepted(layout: &Layout, cert_pem: &str) -> Result<(), String> {
    let tls = ServerTls::load(&TlsFiles::from_layout(layout)).map_err(|e| e.to_string())?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
    tls.still_valid(&der).map_err(|e| e.to_string())
}

fn bundle_len(layout: &Layout) -> usize {
    pem_blocks(&fs::read_to_string(layout.ca_cert()).expect("bundle")).len()
}

#[test]
fn a_rotation_overlaps_the_two_cas_and_revokes_under_both() {
    let (_tmp, ca) = init();
    let layout = ca.layout().clone();
    let old_cert = ca.cert_pem().to_owned();
    let before = ca.issue_client(&app("web"), HOUR).expect("old web");
    assert_eq!(ca.rotation_state().expect("state"), RotationState::None);

    // Stage: trusted, not issuing.
    ca.stage_rotation().expect("stage");
    assert_eq!(bundle_len(&layout), 2);
    let ca = Ca::load(layout.dir()).expect("load");
    assert_eq!(ca.cert_pem(), old_cert, "the old CA still issues");
    assert!(matches!(
        ca.rotation_state().expect("state"),
        RotationState::Staged { .. }
    ));
    let again = ca.stage_rotation().expect_err("staged twice");
    assert!(again.to_string().contains("activate"), "{again}");
    accepted(&layout, &before.cert_pem).expect("old web while staged");

    // Activate: the new CA issues; both are trusted; the CRL is signed by both.
    let ca = ca.activate_rotation().expect("activate");
    assert_ne!(ca.cert_pem(), old_cert, "the new CA issues");
    assert!(!layout.next_key().exists() && layout.previous_key().exists());
    let crl = fs::read_to_string(layout.crl()).expect("crl");
    assert_eq!(crl.matches("BEGIN X509 CRL").count(), 2, "{crl}");
    let after = ca.issue_client(&app("api"), HOUR).expect("new api");
    accepted(&layout, &before.cert_pem).expect("old web in the overlap");
    accepted(&layout, &after.cert_pem).expect("new api");
    match ca.rotation_state().expect("state") {
        RotationState::Overlap { still_valid, .. } => {
            assert_eq!(still_valid, 2, "web and the server, not reissued yet")
        }
        other => panic!("{other:?}"),
    }
    // A certificate of the old CA is revoked by the old CA's CRL.
    ca.revoke(&before.serial).expect("revoke");
    let refused = accepted(&layout, &before.cert_pem).expect_err("revoked");
    assert!(refused.to_lowercase().contains("revoked"), "{refused}");
    accepted(&layout, &after.cert_pem).expect("new api still");
}

#[test]
fn finishing_waits_for_the_old_cas_certificates_unless_forced() {
    let (_tmp, ca) = init();
    let layout = ca.layout().clone();
    let old = ca.issue_client(&app("web"), HOUR).expect("old web");
    ca.stage_rotation().expect("stage");
    let ca = Ca::load(layout.dir())
        .expect("load")
        .activate_rotation()
        .expect("activate");
    // As `latchkey ca rotate --activate` does.
    ca.issue_server(&["localhost".to_owned()], &[], HOUR)
        .expect("server by the new CA");

    let refused = Ca::load(layout.dir())
        .expect("load")
        .finish_rotation(false)
        .expect_err("web's certificate is still valid");
    assert!(refused.to_string().contains("1 certificate"), "{refused}");

    // web renews into the new CA: its old certificate no longer holds the finish up.
    let renewed = ca.issue_client(&app("web"), HOUR).expect("renewed web");
    let ca = Ca::load(layout.dir())
        .expect("load")
        .finish_rotation(false)
        .expect("finish");
    assert_eq!(bundle_len(&layout), 1);
    assert!(!layout.previous_key().exists() && !layout.previous_cert().exists());
    assert_eq!(ca.rotation_state().expect("state"), RotationState::None);
    accepted(&layout, &renewed.cert_pem).expect("renewed web");
    let gone = accepted(&layout, &old.cert_pem).expect_err("the old CA is not trusted");
    assert!(!gone.is_empty());
    let crl = fs::read_to_string(layout.crl()).expect("crl");
    assert_eq!(crl.matches("BEGIN X509 CRL").count(), 1, "{crl}");

    // And with --force, without waiting for a certificate of the old CA.
    ca.issue_client(&app("straggler"), HOUR).expect("straggler");
    ca.stage_rotation().expect("stage again");
    Ca::load(layout.dir())
        .expect("load")
        .activate_rotation()
        .expect("activate again")
        .issue_server(&["localhost".to_owned()], &[], HOUR)
        .expect("server by the newest CA");
    Ca::load(layout.dir())
        .expect("load")
        .finish_rotation(false)
        .expect_err("the straggler holds it up");
    Ca::load(layout.dir())
        .expect("load")
        .finish_rotation(true)
        .expect("forced");
    assert_eq!(bundle_len(&layout), 1);
}

#[test]
fn an_activation_cut_short_loads_and_runs_again() {
    let (_tmp, ca) = init();
    let layout = ca.layout().clone();
    ca.stage_rotation().expect("stage");
    // A crash right after the switch of `ca.key`, before the staged files went.
    let ca = Ca::load(layout.dir()).expect("load");
    let next_key = fs::read(layout.next_key()).expect("next key");
    fs::write(layout.previous_cert(), ca.cert_pem()).expect("previous cert");
    fs::copy(layout.ca_key(), layout.previous_key()).expect("previous key");
    fs::write(layout.ca_key(), &next_key).expect("switch");
    let ca = Ca::load(layout.dir()).expect("a half-done activation loads");
    let staged = fs::read_to_string(layout.next_cert()).expect("next cert");
    assert_eq!(pem_blocks(ca.cert_pem()), pem_blocks(&staged));
    let ca = ca.activate_rotation().expect("activate again");
    assert!(!layout.next_key().exists());
    assert_eq!(
        fs::read_to_string(layout.crl())
            .expect("crl")
            .matches("BEGIN X509 CRL")
            .count(),
        2
    );
    drop(ca);
}

#[test]
fn a_key_that_belongs_to_no_certificate_of_the_bundle_is_refused() {
    let (_tmp, ca) = init();
    let layout = ca.layout().clone();
    ca.stage_rotation().expect("stage");
    let other = MadeCa::new(&td(), "other".to_owned()).expect("other");
    fs::write(layout.ca_key(), other.key_pem.expose()).expect("foreign key");
    let refused = Ca::load(layout.dir()).expect_err("no certificate for this key");
    assert!(refused.to_string().contains("does not match"), "{refused}");
}
