//! Who is calling: SPIFFE-style identities and the [`Peer`] of one connection.
//!
//! Every connection is mutual TLS. The listener hands the verified leaf certificate
//! (already checked by `tls` against our CA and CRL) to [`Peer::from_certificate`],
//! which reads the one `spiffe://` URI SAN, checks it is in our [`TrustDomain`] and
//! splits it into the parts `policy` matches on. On a Unix socket the listener adds the
//! peer's uid/gid with [`Peer::with_unix_cred`].
//!
//! Identity layout (what [`ca::Ca`] issues):
//!
//! ```text
//! spiffe://<td>/app/<name>                      an app
//! spiffe://<td>/tenant/<tenant>/app/<name>      an app of a tenant
//! spiffe://<td>/admin/<name>                    an administrator (made by `latchkey init`)
//! ```
//!
//! Other paths in our trust domain are accepted as identities (an external CA may
//! issue them) but carry no app or tenant. This module decides nothing: `policy` does.
//! [`ca`] issues and revokes certificates; [`renew`] keeps the agent's and apps'
//! certificates from expiring.

pub mod ca;
pub mod renew;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;

/// The longest SPIFFE ID we accept, in bytes (the SPIFFE spec's limit for URIs in SANs).
const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name we accept, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// How much of an invalid input an error message repeats.
const MAX_ECHO: usize = 128;
const SCHEME: &str = "spiffe://";

/// Errors from parsing identities and reading them from certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A trust domain name that is not a lowercase DNS-like name.
    #[error("invalid trust domain {value:?}: {reason}")]
    InvalidTrustDomain {
        /// The input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A string that is not a valid `spiffe://<td>/<path>` id.
    #[error("invalid spiffe id {value:?}: {reason}")]
    InvalidSpiffeId {
        /// The input (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The peer's certificate could not be parsed.
    #[error("peer certificate is not a valid x.509 certificate")]
    BadCertificate,
    /// The peer presented no certificate at all.
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The certificate carries no `spiffe://` URI SAN.
    #[error("peer certificate has no spiffe:// uri san")]
    NoSpiffeId,
    /// The certificate carries more than one `spiffe://` URI SAN.
    #[error("peer certificate has {count} spiffe:// uri sans, expected exactly one")]
    MultipleSpiffeIds {
        /// How many it has.
        count: usize,
    },
    /// The id is valid but belongs to another trust domain.
    #[error("spiffe id {id} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// The id found.
        id: SpiffeId,
        /// Our trust domain.
        expected: TrustDomain,
    },
}

fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO).collect()
}

/// A validated trust domain name, e.g. `latchkey.local`.
///
/// Lowercase ASCII letters, digits, `-` and `_`, in dot-separated non-empty labels of at
/// most 63 bytes, 255 bytes in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidTrustDomain {
            value: echo(name),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(invalid("longer than 255 bytes"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(invalid("empty label"));
            }
            if label.len() > 63 {
                return Err(invalid("label longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "only lowercase letters, digits, '-', '_' and '.' are allowed",
                ));
            }
        }
        Ok(Self(name.into()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// Whether `segment` is a valid SPIFFE path segment: `[A-Za-z0-9._-]+`, not `.` or `..`.
pub fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A workload identity `spiffe://<trust-domain>/<path>`, with at least one path segment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Starts with `/`; segments already validated.
    path: Arc<str>,
}

impl SpiffeId {
    /// Parses `spiffe://<td>/<seg>/<seg>...`. The scheme must be lowercase; there is no
    /// query, fragment, port or user part, and no trailing slash.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidSpiffeId {
            value: echo(value),
            reason,
        };
        if value.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = value
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("does not start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => return Err(invalid("has no path")),
        };
        let trust_domain = TrustDomain::new(td).map_err(|_| invalid("bad trust domain"))?;
        let segments: Vec<&str> = path[1..].split('/').collect();
        Self::from_segments(trust_domain, &segments).map_err(|_| invalid("bad path segment"))
    }

    /// Builds an id from a trust domain and path segments, validating each segment.
    pub fn from_segments(trust_domain: TrustDomain, segments: &[&str]) -> Result<Self, Error> {
        if segments.is_empty() {
            return Err(Error::InvalidSpiffeId {
                value: format!("{SCHEME}{trust_domain}"),
                reason: "has no path",
            });
        }
        let mut path = String::new();
        for segment in segments {
            if !is_valid_segment(segment) {
                return Err(Error::InvalidSpiffeId {
                    value: echo(&format!("{SCHEME}{trust_domain}/{}", segments.join("/"))),
                    reason: "path segments must be non-empty [A-Za-z0-9._-] and not '.' or '..'",
                });
            }
            path.push('/');
            path.push_str(segment);
        }
        if SCHEME.len() + trust_domain.as_str().len() + path.len() > MAX_ID_LEN {
            return Err(Error::InvalidSpiffeId {
                value: echo(&path),
                reason: "longer than 2048 bytes",
            });
        }
        Ok(Self {
            trust_domain,
            path: path.into(),
        })
    }

    /// `spiffe://<td>/app/<name>`.
    pub fn app(trust_domain: &TrustDomain, name: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain.clone(), &["app", name])
    }

    /// `spiffe://<td>/tenant/<tenant>/app/<name>`.
    pub fn tenant_app(trust_domain: &TrustDomain, tenant: &str, name: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain.clone(), &["tenant", tenant, "app", name])
    }

    /// `spiffe://<td>/admin/<name>`.
    pub fn admin(trust_domain: &TrustDomain, name: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain.clone(), &["admin", name])
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path[1..].split('/')
    }

    /// What the id names under our layout.
    pub fn role(&self) -> Role<'_> {
        let segments: Vec<&str> = self.segments().collect();
        match segments.as_slice() {
            ["app", name] => Role::App { tenant: None, name },
            ["tenant", tenant, "app", name] => Role::App {
                tenant: Some(tenant),
                name,
            },
            ["admin", name] => Role::Admin { name },
            _ => Role::Other,
        }
    }
}

/// What an id names under the layout in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// `app/<name>` or `tenant/<tenant>/app/<name>`.
    App {
        /// The tenant, if any.
        tenant: Option<&'a str>,
        /// The app name.
        name: &'a str,
    },
    /// `admin/<name>`.
    Admin {
        /// The administrator's name.
        name: &'a str,
    },
    /// Any other path.
    Other,
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

/// The caller of one connection, built once when the handshake completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The full SPIFFE id, e.g. `spiffe://latchkey.local/app/billing`.
    pub id: Arc<str>,
    /// The app name, for `.../app/<name>` ids.
    pub app: Option<Arc<str>>,
    /// The tenant, for `.../tenant/<tenant>/app/<name>` ids.
    pub tenant: Option<Arc<str>>,
    /// The certificate's serial number, lowercase hex (see [`serial_hex`]).
    pub serial: Arc<str>,
    /// The peer process's uid (Unix socket only).
    pub uid: Option<u32>,
    /// The peer process's gid (Unix socket only).
    pub gid: Option<u32>,
    /// The certificate's lifetime (end minus start of validity), for renewal; 0 when
    /// not known.
    pub cert_lifetime_secs: i64,
}

impl Peer {
    /// Reads the identity from a leaf certificate (DER) that `tls` has already verified.
    ///
    /// The certificate must carry exactly one `spiffe://` URI SAN, in `trust_domain`.
    /// Any bytes are safe to pass: garbage gives [`Error::BadCertificate`].
    pub fn from_certificate(der: &[u8], trust_domain: &TrustDomain) -> Result<Self, Error> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| Error::BadCertificate)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| Error::BadCertificate)?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .filter(|uri| {
                uri.get(..SCHEME.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
            })
            .collect();
        let uri = match uris.as_slice() {
            [] => return Err(Error::NoSpiffeId),
            [one] => *one,
            many => return Err(Error::MultipleSpiffeIds { count: many.len() }),
        };
        let id = SpiffeId::parse(uri)?;
        if id.trust_domain() != trust_domain {
            return Err(Error::ForeignTrustDomain {
                id,
                expected: trust_domain.clone(),
            });
        }
        let mut peer = Self::from_id(&id, &serial_hex(cert.raw_serial()));
        peer.cert_lifetime_secs =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        Ok(peer)
    }

    /// A peer for an already verified id (no Unix credentials yet).
    pub fn from_id(id: &SpiffeId, serial: &str) -> Self {
        let (app, tenant) = match id.role() {
            Role::App { tenant, name } => (Some(Arc::from(name)), tenant.map(Arc::from)),
            Role::Admin { .. } | Role::Other => (None, None),
        };
        Self {
            id: id.to_string().into(),
            app,
            tenant,
            serial: serial.into(),
            uid: None,
            gid: None,
            cert_lifetime_secs: 0,
        }
    }

    /// A peer from an id written as text; panics on a bad id (tests only).
    #[cfg(test)]
    #[allow(clippy::expect_used)]
    pub(crate) fn for_test(id: &str) -> Self {
        Self::from_id(&SpiffeId::parse(id).expect("valid test id"), "01")
    }

    /// Reads the identity from a completed TLS connection's peer certificate chain.
    pub fn from_tls(
        state: &rustls::CommonState,
        trust_domain: &TrustDomain,
    ) -> Result<Self, Error> {
        let leaf = state
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or(Error::NoCertificate)?;
        Self::from_certificate(leaf, trust_domain)
    }

    /// Adds the peer process's credentials (from `SO_PEERCRED` on a Unix socket).
    pub fn with_unix_cred(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }

    /// The parsed id. `id` was produced by [`SpiffeId`]'s `Display`, so this only fails
    /// if someone built a `Peer` by hand with a bad id.
    pub fn spiffe_id(&self) -> Result<SpiffeId, Error> {
        SpiffeId::parse(&self.id)
    }

    /// Whether this is an `admin/<name>` identity.
    pub fn is_admin(&self) -> bool {
        self.spiffe_id()
            .is_ok_and(|id| matches!(id.role(), Role::Admin { .. }))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A certificate serial (DER integer content bytes) as lowercase hex, two digits per
/// byte, without leading zero bytes (`openssl x509 -serial` in lowercase); `"00"` for
/// zero. The one spelling used by `Peer`, `ca` and revocation.
pub fn serial_hex(raw: &[u8]) -> String {
    match raw.iter().position(|&b| b != 0) {
        Some(i) => hex::encode(&raw[i..]),
        None => "00".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("latchkey.local").expect("valid trust domain")
    }

    #[test]
    fn trust_domain_accepts_lowercase_dns_names_only() {
        assert!(TrustDomain::new("latchkey.local").is_ok());
        assert!(TrustDomain::new("prod-1.example_org").is_ok());
        for bad in [
            "",
            "Latchkey.local",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "a b",
            "ä.local",
        ] {
            assert!(
                matches!(TrustDomain::new(bad), Err(Error::InvalidTrustDomain { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(TrustDomain::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn spiffe_id_round_trips() {
        let id =
            SpiffeId::parse("spiffe://latchkey.local/tenant/acme/app/billing").expect("valid id");
        assert_eq!(id.trust_domain(), &td());
        assert_eq!(id.path(), "/tenant/acme/app/billing");
        assert_eq!(
            id.to_string(),
            "spiffe://latchkey.local/tenant/acme/app/billing"
        );
        assert_eq!(
            id.role(),
            Role::App {
                tenant: Some("acme"),
                name: "billing"
            }
        );
        assert_eq!(
            SpiffeId::app(&td(), "billing").expect("valid").to_string(),
            "spiffe://latchkey.local/app/billing"
        );
        assert_eq!(
            SpiffeId::admin(&td(), "root").expect("valid").role(),
            Role::Admin { name: "root" }
        );
        let other = SpiffeId::parse("spiffe://latchkey.local/ns/x").expect("valid");
        assert_eq!(other.role(), Role::Other);
    }

    #[test]
    fn spiffe_id_rejects_bad_forms() {
        for bad in [
            "spiffe://latchkey.local",
            "spiffe://latchkey.local/",
            "spiffe://latchkey.local/app/",
            "spiffe://latchkey.local/app//x",
            "spiffe://latchkey.local/app/..",
            "spiffe://latchkey.local/./x",
            "spiffe://latchkey.local/app/a?b",
            "spiffe://latchkey.local/app/a#b",
            "spiffe://latchkey.local:8443/app/a",
            "spiffe://user@latchkey.local/app/a",
            "SPIFFE://latchkey.local/app/a",
            "https://latchkey.local/app/a",
            "spiffe:///app/a",
        ] {
            assert!(
                matches!(SpiffeId::parse(bad), Err(Error::InvalidSpiffeId { .. })),
                "{bad:?} accepted"
            );
        }
        let long = format!("spiffe://latchkey.local/{}", "a".repeat(MAX_ID_LEN));
        assert!(SpiffeId::parse(&long).is_err());
        assert!(SpiffeId::app(&td(), "a/b").is_err());
    }

    #[test]
    fn from_certificate_rejects_garbage_without_panicking() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x82\xff\xff",
            b"not a certificate at all",
        ] {
            assert!(matches!(
                Peer::from_certificate(bytes, &td()),
                Err(Error::BadCertificate)
            ));
        }
        // Every prefix of a real certificate must fail cleanly too.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed cert");
        let der = cert.cert.der().to_vec();
        for len in 0..der.len() {
            assert!(Peer::from_certificate(&der[..len], &td()).is_err());
        }
    }

    fn self_signed_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5 string"))
    }

    #[test]
    fn from_certificate_requires_exactly_one_spiffe_uri_in_our_domain() {
        let none = self_signed_with_sans(vec![rcgen::SanType::DnsName(
            "localhost".try_into().expect("ia5 string"),
        )]);
        assert!(matches!(
            Peer::from_certificate(&none, &td()),
            Err(Error::NoSpiffeId)
        ));

        let foreign = self_signed_with_sans(vec![uri("spiffe://evil.example/app/billing")]);
        assert!(matches!(
            Peer::from_certificate(&foreign, &td()),
            Err(Error::ForeignTrustDomain { .. })
        ));

        let two = self_signed_with_sans(vec![
            uri("spiffe://latchkey.local/app/a"),
            uri("spiffe://latchkey.local/app/b"),
        ]);
        assert!(matches!(
            Peer::from_certificate(&two, &td()),
            Err(Error::MultipleSpiffeIds { count: 2 })
        ));

        let malformed = self_signed_with_sans(vec![uri("spiffe://latchkey.local/app/../x")]);
        assert!(matches!(
            Peer::from_certificate(&malformed, &td()),
            Err(Error::InvalidSpiffeId { .. })
        ));

        let ok = self_signed_with_sans(vec![
            uri("https://example.com/other"),
            uri("spiffe://latchkey.local/app/billing"),
        ]);
        let peer = Peer::from_certificate(&ok, &td()).expect("valid peer");
        assert_eq!(&*peer.id, "spiffe://latchkey.local/app/billing");
        assert_eq!(peer.app.as_deref(), Some("billing"));
        assert_eq!(peer.tenant, None);
        assert!(!peer.is_admin());
        let peer = peer.with_unix_cred(1000, 100);
        assert_eq!((peer.uid, peer.gid), (Some(1000), Some(100)));
    }

    #[test]
    fn serial_hex_has_no_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
    }
}
