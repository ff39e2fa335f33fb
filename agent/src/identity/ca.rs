//! The agent's own small certificate authority (rcgen, ECDSA P-256).
//!
//! `latchkey init` creates it and `latchkey cert issue|revoke` use it; the daemon
//! itself only reads the files it writes (`ca.pem`, `crl.pem`, the server pair) through
//! `tls`. Everything lives under one init directory, see [`Layout`]:
//!
//! ```text
//! DIR/ca/ca.pem  ca.key (0600)  revoked.json  crl.pem  issued.json
//! DIR/server/server.pem  server.key (0600)
//! DIR/clients/<name>.pem  <name>.key (0600)
//! ```
//!
//! Directories are 0700. Private keys are held as [`SecretString`] and never appear in
//! `Debug` output or errors. `revoked.json` is the record of truth for revocations;
//! `crl.pem` is rebuilt from it (with a larger CRL number) on every change and replaced
//! atomically, so a watcher never sees a half-written CRL. `issued.json` lists the
//! certificates issued and not long expired (serial, holder, end of validity), so the
//! daemon can warn before each one expires.
//!
//! Not here: deciding what a certificate may do (`policy`), and the CLI (`cli/cert`).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use super::{serial_hex, SpiffeId, TrustDomain};
use crate::secret::SecretString;

/// How long the CA certificate is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How far ahead a CRL's nextUpdate is set.
const CRL_VALIDITY: time::Duration = time::Duration::days(365);
/// Back-dating of notBefore, so a peer whose clock is slightly behind accepts new certs.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
/// Serial numbers are random, 16 bytes with the top bit clear (127 bits of randomness).
const SERIAL_LEN: usize = 16;
const MODE_DIR: u32 = 0o700;
const MODE_KEY: u32 = 0o600;
const MODE_PUBLIC: u32 = 0o644;

mod rotate;
pub use rotate::RotationState;

/// Errors from creating, loading and using the CA. Messages name files, never keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted (`read`, `write`, `create directory`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Refused to overwrite an existing file.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file's contents are not what we wrote.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// `revoked.json` is not valid.
    #[error("{path}: invalid revocation list")]
    RevokedList {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Certificate, key or CRL generation failed.
    #[error("cannot {action}")]
    Generate {
        /// What was being made.
        action: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A CA rotation step cannot be taken now.
    #[error("ca rotation: {0}")]
    Rotation(String),
    /// A certificate in PEM (given as text) could not be read.
    #[error("not a pem x.509 certificate")]
    BadCertificatePem,
    /// A serial number given by the user is not hex.
    #[error("invalid serial number {value:?}: expected up to 20 bytes of hex")]
    InvalidSerial {
        /// The input (truncated).
        value: String,
    },
    /// A client certificate was requested for an id in another trust domain.
    #[error("cannot issue {id}: the ca is for trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested id.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// Bad input to an issue call.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// An identity error (bad file name segment, bad trust domain).
    #[error(transparent)]
    Identity(#[from] super::Error),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn gen_err(action: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Generate { action, source }
}

/// Paths under an init directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The init directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// `DIR/ca/ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// `DIR/ca/ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.ca_dir().join("ca.key")
    }

    /// `DIR/ca/revoked.json`.
    pub fn revoked(&self) -> PathBuf {
        self.ca_dir().join("revoked.json")
    }

    /// `DIR/ca/issued.json`.
    pub fn issued(&self) -> PathBuf {
        self.ca_dir().join("issued.json")
    }

    /// `DIR/ca/crl.pem`.
    pub fn crl(&self) -> PathBuf {
        self.ca_dir().join("crl.pem")
    }

    /// `DIR/server/server.pem`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server").join("server.pem")
    }

    /// `DIR/server/server.key`.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server").join("server.key")
    }

    /// `DIR/clients/<name>.pem`; `name` must be one SPIFFE path segment.
    pub fn client_cert(&self, name: &str) -> Result<PathBuf, Error> {
        Ok(self
            .clients_dir()
            .join(format!("{}.pem", checked_name(name)?)))
    }

    /// `DIR/clients/<name>.key`; `name` must be one SPIFFE path segment.
    pub fn client_key(&self, name: &str) -> Result<PathBuf, Error> {
        Ok(self
            .clients_dir()
            .join(format!("{}.key", checked_name(name)?)))
    }

    fn clients_dir(&self) -> PathBuf {
        self.dir.join("clients")
    }
}

fn checked_name(name: &str) -> Result<&str, Error> {
    if super::is_valid_segment(name) {
        Ok(name)
    } else {
        Err(Error::InvalidRequest {
            reason: format!(
                "client name {:?} must be non-empty [A-Za-z0-9._-]",
                super::echo(name)
            ),
        })
    }
}

/// The CA: its certificate, its key (in a [`SecretString`]) and its directory.
pub struct Ca {
    layout: Layout,
    trust_domain: TrustDomain,
    /// The issuing CA's certificate.
    cert_pem: String,
    /// Every trusted CA certificate (`ca.pem`): the issuing one and, during a
    /// rotation, the one before or after it.
    bundle_pem: String,
    key_pem: SecretString,
    not_after: i64,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.layout.dir)
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate and key just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: SecretString,
    /// The serial number, lowercase hex (see [`serial_hex`]).
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// Whether [`Issued::write`] may replace existing files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`Error::Exists`] if either file exists.
    CreateNew,
    /// Replace existing files atomically.
    Replace,
}

impl Issued {
    /// Writes the certificate (0644) and key (0600), creating missing parent directories
    /// with mode 0700.
    pub fn write(&self, cert_path: &Path, key_path: &Path, mode: WriteMode) -> Result<(), Error> {
        for path in [cert_path, key_path] {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.exists() {
                    create_private_dir(parent)?;
                }
            }
        }
        match mode {
            WriteMode::CreateNew => {
                for path in [cert_path, key_path] {
                    if path.exists() {
                        return Err(Error::Exists {
                            path: path.to_owned(),
                        });
                    }
                }
                write_new(key_path, self.key_pem.expose().as_bytes(), MODE_KEY)?;
                write_new(cert_path, self.cert_pem.as_bytes(), MODE_PUBLIC)
            }
            WriteMode::Replace => {
                write_atomic(key_path, self.key_pem.expose().as_bytes(), MODE_KEY)?;
                write_atomic(cert_path, self.cert_pem.as_bytes(), MODE_PUBLIC)
            }
        }
    }
}

/// One revoked certificate, as recorded in `revoked.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial, lowercase hex (see [`serial_hex`]).
    pub serial: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// One certificate the CA issued, as recorded in `issued.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Whose: the SPIFFE id of a client certificate, `server` for a server one.
    pub holder: String,
    /// When it was issued, Unix seconds.
    #[serde(default)]
    pub issued_at: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The serial of the CA that issued it (absent in records from before CA
    /// rotation existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// How long an expired certificate stays in `issued.json` (so its `expired` warning
/// can still be sent after a long stop).
const ISSUED_KEPT_EXPIRED: i64 = 30 * 24 * 3600;

/// The records of `issued.json` (none when it does not exist yet).
pub fn read_issued(path: &Path) -> Result<Vec<IssuedRecord>, Error> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| Error::Invalid {
            path: path.to_owned(),
            reason: "not a list of issued certificates",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The revoked serials recorded in `revoked.json` at `path` (none when it does not
/// exist).
pub fn revoked_serials(path: &Path) -> Result<std::collections::HashSet<String>, Error> {
    match fs::read(path) {
        Ok(bytes) => {
            let list: RevokedList =
                serde_json::from_slice(&bytes).map_err(|source| Error::RevokedList {
                    path: path.to_owned(),
                    source,
                })?;
            Ok(list.revoked.into_iter().map(|r| r.serial).collect())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedList {
    /// The number of the last CRL written.
    crl_number: u64,
    revoked: Vec<Revoked>,
}

impl Ca {
    /// Creates a new CA for `trust_domain` under `dir` (see [`Layout`]) and writes an
    /// empty CRL. Refuses if any of `DIR/ca/{ca.pem,ca.key,revoked.json,crl.pem}` exists.
    pub fn create(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, Error> {
        let layout = Layout::new(dir);
        // A leftover revocation list or CRL belongs to an earlier CA: never mix them.
        for path in [
            layout.ca_cert(),
            layout.ca_key(),
            layout.revoked(),
            layout.crl(),
        ] {
            if path.exists() {
                return Err(Error::Exists { path });
            }
        }
        if !dir.exists() {
            create_private_dir(dir)?;
        }
        for sub in [
            layout.ca_dir(),
            layout.dir.join("server"),
            layout.clients_dir(),
        ] {
            create_private_dir(&sub)?;
        }

        let made = MadeCa::new(trust_domain, format!("latchkey CA {trust_domain}"))?;
        let ca = Self {
            trust_domain: trust_domain.clone(),
            cert_pem: made.cert_pem.clone(),
            bundle_pem: made.cert_pem.clone(),
            key_pem: made.key_pem,
            not_after: made.not_after,
            layout,
        };
        write_new(
            &ca.layout.ca_key(),
            ca.key_pem.expose().as_bytes(),
            MODE_KEY,
        )?;
        write_new(&ca.layout.ca_cert(), ca.cert_pem.as_bytes(), MODE_PUBLIC)?;
        ca.write_crl()?;
        Ok(ca)
    }
}

/// A new CA certificate and key (self-signed, ten years, path length 0).
pub(crate) struct MadeCa {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: SecretString,
    pub(crate) not_after: i64,
}

impl MadeCa {
    /// A CA for `trust_domain` named `common_name` (CAs trusted side by side during a
    /// rotation need different names: CRLs are matched to certificates by issuer).
    pub(crate) fn new(trust_domain: &TrustDomain, common_name: String) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(gen_err("generate the ca key"))?;
        let now = now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The trust domain's own SPIFFE id, so `load` can tell which domain this CA serves.
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(gen_err("encode the trust domain"))?,
        )];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("sign the ca certificate"))?;
        Ok(MadeCa {
            cert_pem: cert.pem(),
            key_pem: SecretString::new(key.serialize_pem()),
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

/// The PEM certificate blocks of `text`, each with its BEGIN and END lines.
pub fn pem_blocks(text: &str) -> Vec<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    blocks
}

impl Ca {
    /// Loads the CA under `dir`: `ca.pem` is the bundle of trusted CA certificates
    /// (more than one during a rotation, see `rotate`), and the one `ca.key` belongs
    /// to is the CA that issues. Fails when none does.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let layout = Layout::new(dir);
        let cert_path = layout.ca_cert();
        let key_path = layout.ca_key();
        let bundle_pem = fs::read_to_string(&cert_path).map_err(io_err("read", &cert_path))?;
        let key_pem =
            SecretString::new(fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?);
        warn_if_readable_by_others(&key_path);
        let key = KeyPair::from_pem(key_pem.expose()).map_err(|_| Error::Invalid {
            path: key_path.clone(),
            reason: "not a pem private key",
        })?;
        let blocks = pem_blocks(&bundle_pem);
        if blocks.is_empty() {
            return Err(Error::Invalid {
                path: cert_path,
                reason: "no pem certificate",
            });
        }
        for block in blocks {
            let (trust_domain, not_after, matches) = ca_cert_facts(block, &cert_path, &key)?;
            if matches {
                return Ok(Self {
                    not_after,
                    trust_domain,
                    cert_pem: format!("{block}\n"),
                    bundle_pem: bundle_pem.clone(),
                    layout,
                    key_pem,
                });
            }
        }
        Err(Error::Invalid {
            path: key_path,
            reason: "key does not match the ca certificate",
        })
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The file layout this CA lives in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Issues a server certificate (serverAuth) for the given DNS names and IPs. The
    /// caller passes the defaults (`localhost`, `127.0.0.1`, `::1`); clients connecting
    /// over the Unix socket use server name `localhost`.
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<Issued, Error> {
        if dns.is_empty() && ips.is_empty() {
            return Err(Error::InvalidRequest {
                reason: "a server certificate needs at least one dns name or ip".to_owned(),
            });
        }
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for name in dns {
            let invalid = || Error::InvalidRequest {
                reason: format!("{:?} is not a valid dns name", super::echo(name)),
            };
            // The same syntax check clients apply to the name they connect with.
            rustls::pki_types::DnsName::try_from(name.as_str()).map_err(|_| invalid())?;
            let ia5 = name.as_str().try_into().map_err(|_| invalid())?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "latchkey agent");
        let issued = self.issue(dn, sans, ExtendedKeyUsagePurpose::ServerAuth, ttl)?;
        self.record_issued("server", &issued);
        Ok(issued)
    }

    /// Issues a client certificate (clientAuth) whose URI SAN is `id`.
    pub fn issue_client(&self, id: &SpiffeId, ttl: Duration) -> Result<Issued, Error> {
        let (dn, sans) = self.client_names(id)?;
        let issued = self.issue(dn, sans, ExtendedKeyUsagePurpose::ClientAuth, ttl)?;
        self.record_issued(&id.to_string(), &issued);
        Ok(issued)
    }

    /// Adds `issued` to `issued.json` (and forgets certificates long expired). Best
    /// effort: the certificate is valid whether or not it is recorded, so a failure
    /// (a read-only CA folder) is logged, not returned.
    fn record_issued(&self, holder: &str, issued: &Issued) {
        let recorded = (|| -> Result<(), Error> {
            let _lock = self.lock()?;
            let path = self.layout.issued();
            let mut list = read_issued(&path)?;
            let now = crate::clock::unix_now();
            list.retain(|r| r.not_after > now - ISSUED_KEPT_EXPIRED);
            list.push(IssuedRecord {
                serial: issued.serial.clone(),
                holder: holder.to_owned(),
                issued_at: now,
                not_after: issued.not_after,
                issuer: serial_of_pem(&self.cert_pem).ok(),
            });
            let bytes = serde_json::to_vec_pretty(&list).map_err(|_| Error::Invalid {
                path: path.clone(),
                reason: "cannot encode the issued list",
            })?;
            write_atomic(&path, &bytes, MODE_KEY)
        })();
        if let Err(e) = recorded {
            tracing::warn!(holder, serial = %issued.serial, error = %e,
                "cannot record the issued certificate; no expiry warning will be sent for it");
        }
    }

    /// The subject and SANs of a client certificate for `id`, in this CA's domain.
    fn client_names(&self, id: &SpiffeId) -> Result<(DistinguishedName, Vec<SanType>), Error> {
        if id.trust_domain() != &self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let text = id.to_string();
        let mut dn = DistinguishedName::new();
        // X.520 caps a common name at 64 characters; the SAN is what counts anyway.
        if text.len() <= 64 {
            dn.push(DnType::CommonName, text.as_str());
        }
        let uri = text.try_into().map_err(gen_err("encode the spiffe id"))?;
        Ok((dn, vec![SanType::URI(uri)]))
    }

    /// Issues a client certificate whose URI SAN is `id` for the public key of a
    /// certificate signing request (PEM), whose signature must verify; nothing else
    /// of the request is taken. The private key never reaches the CA: the answer's
    /// `key_pem` is empty.
    pub fn issue_client_for_csr(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        csr_pem: &str,
    ) -> Result<Issued, Error> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| {
            Error::InvalidRequest {
                reason: "the certificate signing request does not parse or its signature does not verify".to_owned(),
            }
        })?;
        let (dn, sans) = self.client_names(id)?;
        let (params, serial, not_after) =
            self.params(dn, sans, ExtendedKeyUsagePurpose::ClientAuth, ttl)?;
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer()?)
            .map_err(gen_err("sign the certificate"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: SecretString::default(),
            serial: serial_hex(serial.as_ref()),
            not_after: not_after.unix_timestamp(),
        };
        self.record_issued(&id.to_string(), &issued);
        Ok(issued)
    }

    fn issue(
        &self,
        dn: DistinguishedName,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        ttl: Duration,
    ) -> Result<Issued, Error> {
        let (params, serial, not_after) = self.params(dn, sans, eku, ttl)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(gen_err("generate a key"))?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(gen_err("sign the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: SecretString::new(key.serialize_pem()),
            serial: serial_hex(serial.as_ref()),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// The parameters of a leaf certificate: names, usage, a fresh serial, validity
    /// from now (less the clock-skew allowance) for `ttl`, never past the CA's.
    fn params(
        &self,
        dn: DistinguishedName,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        ttl: Duration,
    ) -> Result<(CertificateParams, SerialNumber, OffsetDateTime), Error> {
        let ttl = time::Duration::try_from(ttl)
            .ok()
            .filter(|ttl| ttl.is_positive())
            .ok_or_else(|| Error::InvalidRequest {
                reason: "ttl must be positive and finite".to_owned(),
            })?;
        let now = now_utc();
        let ca_not_after =
            OffsetDateTime::from_unix_timestamp(self.not_after).map_err(|_| Error::Invalid {
                path: self.layout.ca_cert(),
                reason: "ca notAfter out of range",
            })?;
        // Never outlive the CA: a chain with an expired root fails anyway.
        let not_after = now
            .checked_add(ttl)
            .map_or(ca_not_after, |t| t.min(ca_not_after));
        if not_after <= now {
            return Err(Error::InvalidRequest {
                reason: "the ca has expired".to_owned(),
            });
        }

        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        Ok((params, serial, not_after))
    }

    /// The signer, built from the PEM key for each use so the only long-lived copy of the
    /// key is the zeroizing [`SecretString`].
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, Error> {
        let key = KeyPair::from_pem(self.key_pem.expose()).map_err(|_| Error::Invalid {
            path: self.layout.ca_key(),
            reason: "not a pem private key",
        })?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|_| Error::Invalid {
            path: self.layout.ca_cert(),
            reason: "not a valid ca certificate",
        })
    }

    /// The trust bundle (`ca.pem`): the issuing CA and any other trusted beside it.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Revokes the certificate with this serial (hex, colons allowed) and rewrites the
    /// CRL. Revoking an already revoked serial changes nothing.
    pub fn revoke(&self, serial: &str) -> Result<(), Error> {
        let serial = normalize_serial(serial)?;
        let _lock = self.lock()?;
        let mut list = self.read_revoked()?;
        if list.revoked.iter().any(|r| r.serial == serial) {
            return Ok(());
        }
        list.revoked.push(Revoked {
            serial,
            revoked_at: crate::clock::unix_now(),
        });
        self.write_crl_from(list)
    }

    /// The revoked certificates recorded in `revoked.json`.
    pub fn revoked(&self) -> Result<Vec<Revoked>, Error> {
        Ok(self.read_revoked()?.revoked)
    }

    /// Rewrites `crl.pem` from `revoked.json` (empty if missing) with the next CRL number
    /// and a nextUpdate one year ahead. Run it at least yearly to keep the CRL fresh.
    pub fn write_crl(&self) -> Result<(), Error> {
        let _lock = self.lock()?;
        let list = self.read_revoked()?;
        self.write_crl_from(list)
    }

    /// An exclusive lock on `DIR/ca/.lock`, so two `latchkey cert revoke` runs cannot
    /// lose each other's update of `revoked.json`. Released when the file is dropped.
    fn lock(&self) -> Result<fs::File, Error> {
        let path = self.layout.ca_dir().join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(MODE_KEY)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(file)
    }

    fn read_revoked(&self) -> Result<RevokedList, Error> {
        let path = self.layout.revoked();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::RevokedList { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RevokedList::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_crl_from(&self, mut list: RevokedList) -> Result<(), Error> {
        list.crl_number = list.crl_number.saturating_add(1);
        let now = now_utc();
        let revoked_path = self.layout.revoked();
        let mut revoked_certs = Vec::with_capacity(list.revoked.len());
        for entry in &list.revoked {
            let bytes = hex::decode(&entry.serial).map_err(|_| Error::Invalid {
                path: revoked_path.clone(),
                reason: "serial is not hex",
            })?;
            let revocation_time =
                OffsetDateTime::from_unix_timestamp(entry.revoked_at).map_err(|_| {
                    Error::Invalid {
                        path: revoked_path.clone(),
                        reason: "revocation time out of range",
                    }
                })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(bytes),
                revocation_time,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(list.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer()?)
            .map_err(gen_err("sign the crl"))?;
        let mut pem = crl.pem().map_err(gen_err("encode the crl"))?;
        // During a rotation's overlap the previous CA's certificates are still
        // trusted, so their revocations need a CRL signed by that CA too.
        if let Some(previous) = self.previous_issuer()? {
            let crl = params
                .signed_by(&previous)
                .map_err(gen_err("sign the previous ca's crl"))?;
            pem.push_str(&crl.pem().map_err(gen_err("encode the crl"))?);
        }
        let json = serde_json::to_vec_pretty(&list).map_err(|source| Error::RevokedList {
            path: revoked_path.clone(),
            source,
        })?;
        // The list first: it is the record of truth, and the CRL can be rebuilt from it.
        write_atomic(&revoked_path, &json, MODE_KEY)?;
        write_atomic(&self.layout.crl(), pem.as_bytes(), MODE_PUBLIC)
    }
}

/// A CA certificate's trust domain, end of validity, and whether `key` is its key.
fn ca_cert_facts(
    block: &str,
    path: &Path,
    key: &KeyPair,
) -> Result<(TrustDomain, i64, bool), Error> {
    let invalid = |reason| Error::Invalid {
        path: path.to_owned(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(block.as_bytes())
        .map_err(|_| invalid("no pem certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| invalid("not a valid x.509 certificate"))?;
    if !cert.is_ca() {
        return Err(invalid("not a ca certificate"));
    }
    let trust_domain =
        ca_trust_domain(&cert).ok_or_else(|| invalid("no spiffe://<trust-domain> uri san"))?;
    let matches = key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref();
    Ok((trust_domain, cert.validity().not_after.timestamp(), matches))
}

/// The trust domain of a CA certificate, from its `spiffe://<td>` URI SAN.
fn ca_trust_domain(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<TrustDomain> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => TrustDomain::new(uri.strip_prefix("spiffe://")?).ok(),
        _ => None,
    })
}

/// The serial number of a PEM certificate, in the spelling [`Ca::revoke`] and
/// `Peer::serial` use.
pub fn serial_of_pem(cert_pem: &str) -> Result<String, Error> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| Error::BadCertificatePem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| Error::BadCertificatePem)?;
    Ok(serial_hex(cert.raw_serial()))
}

/// Normalizes a serial typed by a user (`0A:BC`, `0x0abc`, `abc`) to the spelling of
/// [`serial_hex`] (`0abc`).
pub fn normalize_serial(input: &str) -> Result<String, Error> {
    let invalid = || Error::InvalidSerial {
        value: super::echo(input),
    };
    let trimmed = input.trim();
    let trimmed = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let mut digits: String = trimmed.chars().filter(|&c| c != ':').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(digits.to_ascii_lowercase()).map_err(|_| invalid())?;
    let serial = serial_hex(&bytes);
    if serial.len() > 40 {
        return Err(invalid());
    }
    Ok(serial)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive, and no leading zero byte, so the DER integer is exactly these bytes.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE_DIR)
        .create(path)
        .map_err(io_err("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(MODE_DIR))
        .map_err(io_err("set permissions on", path))
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_new_owned(path, bytes, mode, None)
}

/// [`write_new`], the new file given to `owner` (uid, gid) through its descriptor
/// before anything is written to it.
fn write_new_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists {
                path: path.to_owned(),
            },
            _ => io_err("create", path)(e),
        })?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    // The umask can only narrow `mode`; set it exactly anyway.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", path))
}

/// Replaces a file atomically: write a temporary file beside it, then rename. The
/// new file keeps the owner of the one it replaces (root reissuing or revoking for
/// an agent that runs as its own user must not leave it a file it cannot read).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| (m.uid(), m.gid()));
    let name = path.file_name().ok_or_else(|| Error::Invalid {
        path: path.to_owned(),
        reason: "not a file path",
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a crashed run of this same pid number: safe to discard.
    let _ = fs::remove_file(&tmp);
    write_new_owned(&tmp, bytes, mode, owner)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("replace", path)(e)
    })
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key is readable by group or others");
        }
    }
}

/// The wall clock as certificate validity needs it: [`crate::clock`]'s seconds.
fn now_utc() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(crate::clock::unix_now())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("latchkey.local").expect("valid trust domain")
    }

    #[test]
    fn a_replaced_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crl.pem");
        write_new(&path, b"one", MODE_PUBLIC).expect("write");
        // Only root can give a file away; as anyone else the owner is ours anyway.
        let nobody = 65534;
        if std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).is_err() {
            return;
        }
        write_atomic(&path, b"two", MODE_PUBLIC).expect("replace");
        let meta = fs::metadata(&path).expect("metadata");
        assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
        assert_eq!(fs::read(&path).expect("read"), b"two");
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn create_writes_the_layout_with_private_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("init");
        let ca = Ca::create(&dir, &td()).expect("create ca");
        let layout = ca.layout().clone();
        assert_eq!(mode(&layout.ca_key()), 0o600);
        assert_eq!(mode(&layout.ca_dir()), 0o700);
        assert_eq!(mode(&dir.join("clients")), 0o700);
        assert_eq!(mode(&dir.join("server")), 0o700);
        assert!(layout.crl().exists());
        assert!(ca.revoked().expect("revoked list").is_empty());

        let (_, cert) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).expect("pem");
        let cert = cert.parse_x509().expect("x509");
        assert!(cert.is_ca());
        let bc = cert
            .basic_constraints()
            .expect("one basic constraints")
            .expect("present");
        assert_eq!(bc.value.path_len_constraint, Some(0));
        assert!(cert
            .subject()
            .to_string()
            .contains("latchkey CA latchkey.local"));

        let loaded = Ca::load(&dir).expect("load ca");
        assert_eq!(loaded.trust_domain(), &td());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn create_refuses_to_overwrite_an_existing_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let before = fs::read(ca.layout().ca_key()).expect("key");
        assert!(matches!(
            Ca::create(tmp.path(), &td()),
            Err(Error::Exists { .. })
        ));
        assert_eq!(fs::read(ca.layout().ca_key()).expect("key"), before);

        // Leftovers of an earlier CA (its revocations) also stop a new one.
        fs::remove_file(ca.layout().ca_key()).expect("remove key");
        fs::remove_file(ca.layout().ca_cert()).expect("remove cert");
        assert!(matches!(
            Ca::create(tmp.path(), &td()),
            Err(Error::Exists { .. })
        ));
    }

    #[test]
    fn load_rejects_a_key_that_does_not_match() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let other = KeyPair::generate().expect("key");
        fs::write(ca.layout().ca_key(), other.serialize_pem()).expect("write key");
        assert!(matches!(Ca::load(tmp.path()), Err(Error::Invalid { .. })));
    }

    #[test]
    fn issued_client_cert_carries_the_id_and_client_auth() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let id = SpiffeId::tenant_app(&td(), "acme", "billing").expect("id");
        let issued = ca
            .issue_client(&id, Duration::from_secs(3600))
            .expect("issue");
        assert_eq!(
            serial_of_pem(&issued.cert_pem).expect("serial"),
            issued.serial
        );
        assert_eq!(issued.serial.len(), 2 * SERIAL_LEN);

        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        let peer = crate::identity::Peer::from_certificate(&der, &td()).expect("peer");
        assert_eq!(&*peer.id, "spiffe://latchkey.local/tenant/acme/app/billing");
        assert_eq!(peer.app.as_deref(), Some("billing"));
        assert_eq!(peer.tenant.as_deref(), Some("acme"));
        assert_eq!(&*peer.serial, issued.serial);

        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert!(!cert.is_ca());
        let now = crate::clock::unix_now();
        assert!((issued.not_after - now - 3600).abs() < 10);
    }

    #[test]
    fn issue_refuses_foreign_ids_and_bad_requests() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let other = TrustDomain::new("other.local").expect("td");
        let id = SpiffeId::app(&other, "x").expect("id");
        assert!(matches!(
            ca.issue_client(&id, Duration::from_secs(60)),
            Err(Error::ForeignTrustDomain { .. })
        ));
        let id = SpiffeId::app(&td(), "x").expect("id");
        assert!(ca.issue_client(&id, Duration::ZERO).is_err());
        assert!(ca.issue_server(&[], &[], Duration::from_secs(60)).is_err());
        for bad in ["bad\u{e9}", "/run/latchkey.sock", "a b", ""] {
            assert!(
                ca.issue_server(&[bad.to_owned()], &[], Duration::from_secs(60))
                    .is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn issued_write_uses_0600_for_keys_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let issued = ca
            .issue_server(
                &["localhost".to_owned()],
                &["127.0.0.1".parse().expect("ip")],
                Duration::from_secs(3600),
            )
            .expect("issue");
        let layout = ca.layout();
        issued
            .write(
                &layout.server_cert(),
                &layout.server_key(),
                WriteMode::CreateNew,
            )
            .expect("write");
        assert_eq!(mode(&layout.server_key()), 0o600);
        assert!(matches!(
            issued.write(
                &layout.server_cert(),
                &layout.server_key(),
                WriteMode::CreateNew
            ),
            Err(Error::Exists { .. })
        ));
        let again = ca
            .issue_server(&["localhost".to_owned()], &[], Duration::from_secs(3600))
            .expect("issue");
        again
            .write(
                &layout.server_cert(),
                &layout.server_key(),
                WriteMode::Replace,
            )
            .expect("replace");
        assert_eq!(mode(&layout.server_key()), 0o600);
        assert_eq!(
            fs::read_to_string(layout.server_cert()).expect("cert"),
            again.cert_pem
        );

        let client_key = layout.client_key("billing").expect("path");
        let id = SpiffeId::app(&td(), "billing").expect("id");
        ca.issue_client(&id, Duration::from_secs(60))
            .expect("issue")
            .write(
                &layout.client_cert("billing").expect("path"),
                &client_key,
                WriteMode::CreateNew,
            )
            .expect("write");
        assert_eq!(mode(&client_key), 0o600);
        assert!(layout.client_cert("../etc").is_err());
    }

    #[test]
    fn debug_output_contains_no_key_material() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let ca_key = fs::read_to_string(ca.layout().ca_key()).expect("key");
        let ca_debug = format!("{ca:?}");
        assert!(!ca_debug.contains("PRIVATE KEY"));
        assert!(!ca_debug.contains(ca_key.lines().nth(1).expect("key body")));

        let id = SpiffeId::app(&td(), "billing").expect("id");
        let issued = ca
            .issue_client(&id, Duration::from_secs(60))
            .expect("issue");
        let debug = format!("{issued:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        let body = issued.key_pem.expose().lines().nth(1).expect("key body");
        assert!(!debug.contains(body));
    }

    #[test]
    fn revoke_records_the_serial_and_bumps_the_crl_number() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(tmp.path(), &td()).expect("create ca");
        let crl_number = |ca: &Ca| {
            let pem = fs::read(ca.layout().crl()).expect("crl");
            let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem)
                .expect("crl pem");
            let (_, crl) = x509_parser::parse_x509_crl(&der).expect("crl der");
            let serials: Vec<String> = crl
                .iter_revoked_certificates()
                .map(|r| serial_hex(r.raw_serial()))
                .collect();
            (crl.crl_number().expect("crl number").clone(), serials)
        };
        let (first, serials) = crl_number(&ca);
        assert!(serials.is_empty());

        let id = SpiffeId::app(&td(), "billing").expect("id");
        let issued = ca
            .issue_client(&id, Duration::from_secs(60))
            .expect("issue");
        // The user may paste the serial in openssl's spelling.
        let pasted = issued
            .serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        ca.revoke(&pasted).expect("revoke");
        ca.revoke(&issued.serial).expect("revoke twice is fine");
        let (second, serials) = crl_number(&ca);
        assert!(second > first);
        assert_eq!(serials, vec![issued.serial.clone()]);
        assert_eq!(ca.revoked().expect("list").len(), 1);
        assert!(!tmp.path().join("ca").join(".crl.pem.tmp").exists());
    }

    #[test]
    fn normalize_serial_accepts_common_spellings() {
        assert_eq!(normalize_serial("0A:BC").expect("ok"), "0abc");
        assert_eq!(normalize_serial("0x0abc").expect("ok"), "0abc");
        assert_eq!(normalize_serial("abc").expect("ok"), "0abc");
        assert_eq!(normalize_serial("00:00:ab").expect("ok"), "ab");
        for bad in ["", "xyz", "0x", &"ab".repeat(21)] {
            assert!(normalize_serial(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serial_of_pem("garbage").is_err());
    }
}
