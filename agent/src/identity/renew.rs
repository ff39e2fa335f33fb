//! Certificates that renew themselves, as SPIRE's SVIDs do.
//!
//! - **The agent's server certificate.** When the CA that `latchkey init` made sits
//!   beside the agent's files (its key readable by the agent), the agent checks its
//!   own server certificate at start and then periodically, and once less than a
//!   third of its lifetime is left issues a new one with the same names and the same
//!   lifetime, writes it over the old pair (atomically, key `0600`) and puts it in
//!   place for new handshakes ([`crate::tls::ServerTls::reload_cert`]). Without the CA
//!   key (an external CA) it says so once and leaves renewal to whoever issues.
//! - **App certificates.** An app whose certificate is still valid asks `POST
//!   /v1/cert/renew` (or runs `latchkey cert renew`) and gets a new certificate for
//!   the same identity with the same lifetime, and a new key; see [`renew_client`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::ca::{Ca, Issued, WriteMode};
use super::SpiffeId;

/// The longest wait between two checks of the server certificate.
const MAX_CHECK: Duration = Duration::from_secs(600);

/// What renewal needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// DNS names in its subject alternative names.
    pub dns: Vec<String>,
    /// IP addresses in its subject alternative names.
    pub ips: Vec<IpAddr>,
}

impl Validity {
    /// Reads a PEM certificate's validity and names.
    pub fn of_pem(pem: &[u8]) -> Option<Validity> {
        let der = CertificateDer::from_pem_slice(pem).ok()?;
        Validity::of_der(&der)
    }

    /// Reads a DER certificate's validity and names.
    pub fn of_der(der: &[u8]) -> Option<Validity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    GeneralName::IPAddress(raw) => match raw.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*raw).ok()?)),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*raw).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns,
            ips,
        })
    }

    /// The whole lifetime.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.not_after - self.not_before).unwrap_or(0))
    }

    /// Whether less than a third of the lifetime is left at `now`.
    pub fn due(&self, now: i64) -> bool {
        let left = self.not_after - now;
        left * 3 < self.not_after - self.not_before
    }
}

/// Keeps the agent's server certificate valid from the CA under `root` (the folder
/// `latchkey init` made).
#[derive(Debug, Clone)]
pub struct ServerRenewal {
    root: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl ServerRenewal {
    /// Renewal of the pair `cert`/`key` by the CA whose certificate is `ca_cert`
    /// (`ROOT/ca/ca.pem`); `None` when that CA's key is not there to sign with.
    pub fn new(ca_cert: &Path, cert: &Path, key: &Path) -> Option<ServerRenewal> {
        let root = ca_cert.parent()?.parent()?.to_owned();
        let layout = super::ca::Layout::new(&root);
        if layout.ca_cert() != ca_cert || !layout.ca_key().is_file() {
            return None;
        }
        Some(ServerRenewal {
            root,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Renews the certificate if it is due at `now`; returns the new one's end of
    /// validity, or `None` when it was not due. Blocking (files, signing).
    pub fn renew_if_due(&self, now: i64) -> Result<Option<i64>, super::ca::Error> {
        let pem = std::fs::read(&self.cert).map_err(|e| super::ca::Error::Io {
            action: "read",
            path: self.cert.clone(),
            source: e,
        })?;
        let Some(validity) = Validity::of_pem(&pem) else {
            return Err(super::ca::Error::Invalid {
                path: self.cert.clone(),
                reason: "not a valid x.509 certificate",
            });
        };
        if !validity.due(now) {
            return Ok(None);
        }
        let ca = Ca::load(&self.root)?;
        let issued = ca.issue_server(&validity.dns, &validity.ips, validity.lifetime())?;
        issued.write(&self.cert, &self.key, WriteMode::Replace)?;
        Ok(Some(issued.not_after))
    }

    /// How long until the next check: a tenth of what is left, within a second and
    /// [`MAX_CHECK`].
    pub fn next_check(&self, now: i64) -> Duration {
        let left = std::fs::read(&self.cert)
            .ok()
            .and_then(|pem| Validity::of_pem(&pem))
            .map_or(0, |v| v.not_after - now);
        Duration::from_secs(u64::try_from(left / 10).unwrap_or(1).max(1)).min(MAX_CHECK)
    }
}

/// A new certificate for `id`, with `lifetime` (that of the certificate it replaces,
/// less the clock-skew allowance the issuer adds again), from the CA under `root`:
/// for the key of `csr_pem` when given, else with a new key. Blocking (files,
/// signing).
pub fn renew_client(
    root: &Path,
    id: &SpiffeId,
    lifetime: Duration,
    csr_pem: Option<&str>,
) -> Result<Issued, super::ca::Error> {
    let ca = Ca::load(root)?;
    let lifetime = lifetime
        .saturating_sub(Duration::from_secs(300))
        .max(Duration::from_secs(60));
    match csr_pem {
        Some(csr) => ca.issue_client_for_csr(id, lifetime, csr),
        None => ca.issue_client(id, lifetime),
    }
}

impl ServerRenewal {
    /// The folder of the CA this renews from (`ROOT` of `ROOT/ca/ca.pem`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks now and then, renews when due, and puts a renewed certificate in place
    /// in `tls`, until `stop` turns true.
    pub async fn keep_renewed(
        self,
        tls: std::sync::Arc<crate::tls::ServerTls>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let now = crate::clock::unix_now();
            let this = self.clone();
            let renewed = tokio::task::spawn_blocking(move || {
                let renewed = this.renew_if_due(now)?;
                Ok::<_, super::ca::Error>((renewed, this.next_check(now)))
            })
            .await;
            let wait = match renewed {
                Ok(Ok((Some(not_after), wait))) => {
                    tracing::info!(cert = %self.cert.display(), not_after, "server certificate renewed");
                    let swap = tls.clone();
                    match tokio::task::spawn_blocking(move || swap.reload_cert()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "the renewed server certificate did not load; keeping the previous one")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "server certificate reload task failed")
                        }
                    }
                    wait
                }
                Ok(Ok((None, wait))) => wait,
                Ok(Err(e)) => {
                    tracing::error!(cert = %self.cert.display(), error = %e, "cannot renew the server certificate; trying again in a minute");
                    Duration::from_secs(60)
                }
                Err(e) => {
                    tracing::error!(error = %e, "server certificate renewal task failed");
                    Duration::from_secs(60)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_a_third_of_the_lifetime_is_left() {
        let v = Validity {
            not_before: 0,
            not_after: 300,
            dns: vec![],
            ips: vec![],
        };
        assert!(!v.due(100));
        assert!(!v.due(200));
        assert!(v.due(201));
        assert!(v.due(400), "expired is due");
        assert_eq!(v.lifetime(), Duration::from_secs(300));
    }
}
