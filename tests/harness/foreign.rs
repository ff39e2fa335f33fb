//! Client certificates the agent should not accept as they are: one from a CA it has
//! never seen (same names, same SPIFFE id as a real one), ones signed by its own CA
//! key but naming an identity outside its trust domain, and ones issued by an
//! intermediate CA that the agent's CA signed.

use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::Identity;

/// A client certificate for `spiffe_id` from a brand-new CA that calls itself what the
/// agent's CA calls itself, written as `DIR/NAME.pem|.key`.
pub(crate) fn from_another_ca(dir: &Path, name: &str, spiffe_id: &str) -> anyhow::Result<Identity> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "latchkey CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    write_client(dir, name, spiffe_id, &ca)
}

/// A client certificate for `spiffe_id` signed by the agent's own CA (`AGENT_DIR/ca`),
/// bypassing `latchkey cert issue` and its checks.
pub(crate) fn from_agent_ca(
    agent_dir: &Path,
    out: &Path,
    name: &str,
    spiffe_id: &str,
) -> anyhow::Result<Identity> {
    let ca_pem = std::fs::read_to_string(agent_dir.join("ca/ca.pem")).context("read ca.pem")?;
    let key_pem = std::fs::read_to_string(agent_dir.join("ca/ca.key")).context("read ca.key")?;
    let key = KeyPair::from_pem(&key_pem).context("ca.key is not a PEM private key rcgen reads")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).context("ca.pem does not parse")?;
    write_client(out, name, spiffe_id, &issuer)
}

/// A client certificate for `spiffe_id` issued by a new intermediate CA that the
/// agent's own CA key signed; `DIR/NAME.pem` holds the leaf and then the intermediate,
/// so a client presents the whole chain.
pub(crate) fn via_intermediate(
    agent_dir: &Path,
    out: &Path,
    name: &str,
    spiffe_id: &str,
) -> anyhow::Result<Identity> {
    let ca_pem = std::fs::read_to_string(agent_dir.join("ca/ca.pem")).context("read ca.pem")?;
    let key_pem = std::fs::read_to_string(agent_dir.join("ca/ca.key")).context("read ca.key")?;
    let key = KeyPair::from_pem(&key_pem).context("ca.key is not a PEM private key rcgen reads")?;
    let root = Issuer::from_ca_cert_pem(&ca_pem, key).context("ca.pem does not parse")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "latchkey intermediate");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let intermediate_key = KeyPair::generate()?;
    let intermediate = params.signed_by(&intermediate_key, &root)?;
    let issuer = Issuer::new(params, intermediate_key);
    let identity = write_client(out, name, spiffe_id, &issuer)?;
    let mut chain = std::fs::read_to_string(&identity.cert)?;
    chain.push_str(&intermediate.pem());
    std::fs::write(&identity.cert, chain)?;
    Ok(identity)
}

fn write_client(
    dir: &Path,
    name: &str,
    spiffe_id: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<Identity> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer)?;
    std::fs::create_dir_all(dir)?;
    let identity = Identity {
        id: spiffe_id.to_owned(),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        serial: None,
    };
    std::fs::write(&identity.cert, cert.pem())?;
    std::fs::write(&identity.key, key.serialize_pem())?;
    Ok(identity)
}
