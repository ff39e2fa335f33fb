//! The certificates whose expiry the agent watches: its own server certificate, the
//! CA's, and every client or server certificate the CA recorded issuing
//! (`ca/issued.json`, when the CA lives on this host), each holder's newest one
//! only (an older one was renewed), revoked ones left out.
//!
//! What is read here is public (certificates, serials, dates); nothing secret.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::identity::ca::{read_issued, revoked_serials};
use crate::identity::renew::Validity;
use crate::identity::serial_hex;

/// Where the certificates are.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The agent's server certificate (`tls.cert`).
    pub server: PathBuf,
    /// The CA certificate (`tls.ca`).
    pub ca: PathBuf,
    /// The CA's folder, when its records (`issued.json`, `revoked.json`) are here.
    pub records: Option<PathBuf>,
}

/// One certificate being watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Whose: `server`, `ca`, or a client's SPIFFE id.
    pub holder: String,
    /// A number that changes when the certificate is replaced (from its serial).
    pub id: u64,
    /// Start and end of validity, unix seconds (`not_before` is 0 when unknown).
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl Watched {
    /// Whether a warning `days` before expiry applies: only in the last third of
    /// the lifetime (where renewal should already have happened), so a 30-day app
    /// certificate warns at 7 days and not at issue.
    pub fn warns_at(&self, days: i64) -> bool {
        self.not_before == 0 || (self.not_after - self.not_before) > 3 * days * 24 * 3600
    }
}

impl Certificates {
    /// Every certificate to watch now. Unreadable files are skipped (and said at
    /// debug): the TLS layer reports a broken server certificate loudly already.
    pub fn watched(&self) -> Vec<Watched> {
        let mut out = Vec::new();
        for (holder, path) in [("server", &self.server), ("ca", &self.ca)] {
            match std::fs::read(path) {
                Ok(pem) => match of_pem(&pem) {
                    Some((id, v)) => out.push(Watched {
                        holder: holder.to_owned(),
                        id,
                        not_before: v.not_before,
                        not_after: v.not_after,
                    }),
                    None => tracing::debug!(file = %path.display(), "not a certificate"),
                },
                Err(e) => tracing::debug!(file = %path.display(), error = %e, "cannot read"),
            }
        }
        if let Some(dir) = &self.records {
            out.extend(self.issued(dir));
        }
        out
    }

    /// The newest unrevoked certificate of each client holder in `issued.json`.
    fn issued(&self, dir: &std::path::Path) -> Vec<Watched> {
        let issued = match read_issued(&dir.join("issued.json")) {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the issued certificates");
                return Vec::new();
            }
        };
        let revoked: HashSet<String> =
            revoked_serials(&dir.join("revoked.json")).unwrap_or_default();
        let mut newest: HashMap<&str, &crate::identity::ca::IssuedRecord> = HashMap::new();
        for record in &issued {
            // The server's certificate is watched from its file.
            if record.holder == "server" || revoked.contains(&record.serial) {
                continue;
            }
            let slot = newest.entry(record.holder.as_str()).or_insert(record);
            if record.not_after > slot.not_after {
                *slot = record;
            }
        }
        let mut out: Vec<Watched> = newest
            .into_values()
            .map(|r| Watched {
                holder: r.holder.clone(),
                id: id_of(&r.serial),
                not_before: r.issued_at,
                not_after: r.not_after,
            })
            .collect();
        out.sort_by(|a, b| a.holder.cmp(&b.holder));
        out
    }
}

/// The serial-derived id and validity of a PEM certificate.
fn of_pem(pem: &[u8]) -> Option<(u64, Validity)> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem).ok()?;
    let validity = Validity::of_der(&der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((id_of(&serial_hex(cert.raw_serial())), validity))
}

/// The first 16 hex digits of a serial, as a number.
fn id_of(serial: &str) -> u64 {
    let head: String = serial.chars().take(16).collect();
    u64::from_str_radix(&head, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::Ca;
    use crate::identity::{SpiffeId, TrustDomain};
    use std::time::Duration;

    #[test]
    fn watches_the_newest_unrevoked_certificate_of_each_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = TrustDomain::new("example.org").expect("td");
        let ca = Ca::create(dir.path(), &td).expect("ca");
        let web = SpiffeId::parse("spiffe://example.org/app/web").expect("id");
        let api = SpiffeId::parse("spiffe://example.org/app/api").expect("id");
        ca.issue_client(&web, Duration::from_secs(3600))
            .expect("issue");
        let newer = ca
            .issue_client(&web, Duration::from_secs(7200))
            .expect("issue");
        let revoked = ca
            .issue_client(&api, Duration::from_secs(3600))
            .expect("issue");
        ca.revoke(&revoked.serial).expect("revoke");
        let server = ca
            .issue_server(&["localhost".to_owned()], &[], Duration::from_secs(900))
            .expect("server");
        let layout = ca.layout();
        server
            .write(
                &layout.server_cert(),
                &layout.server_key(),
                crate::identity::ca::WriteMode::CreateNew,
            )
            .expect("write");
        let certs = Certificates {
            server: layout.server_cert(),
            ca: layout.ca_cert(),
            records: Some(layout.ca_dir()),
        };
        let watched = certs.watched();
        let holders: Vec<&str> = watched.iter().map(|w| w.holder.as_str()).collect();
        assert_eq!(holders, ["server", "ca", "spiffe://example.org/app/web"]);
        assert_eq!(watched[0].not_after, server.not_after);
        assert_eq!(watched[2].not_after, newer.not_after);
        assert_eq!(watched[2].id, id_of(&newer.serial));
        assert!(watched[0].warns_at(0) && !watched[0].warns_at(1));
    }

    #[test]
    fn a_short_lived_certificate_warns_only_in_the_last_third_of_its_life() {
        let day = 24 * 3600;
        let app = Watched {
            holder: "spiffe://example.org/app/web".into(),
            id: 1,
            not_before: 1_000,
            not_after: 1_000 + 30 * day,
        };
        assert!(app.warns_at(7) && !app.warns_at(14) && !app.warns_at(30));
        let server = Watched {
            not_after: 1_000 + 365 * day,
            ..app
        };
        assert!(server.warns_at(30));
    }
}
