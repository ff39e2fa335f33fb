//! `latchkey cert issue | renew | revoke`: certificates for apps, admins and the agent.
//!
//! `issue` signs a certificate whose only identity is a SPIFFE-style URI SAN,
//! `spiffe://<trust-domain>/app/<name>` (or `.../tenant/<tenant>/app/<name>`, or
//! `.../admin/<name>` with `--admin`); `issue --server` reissues the agent's server
//! certificate with the names of the one it replaces (a running agent serves it
//! within a second). A reissue keeps the owner of the files it replaces (see
//! `identity::ca`). `revoke` adds its serial to the revocation list, which a running
//! agent reloads within a second, refusing the certificate from then on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use super::Failure;
use crate::identity::ca::{self, Ca, WriteMode};
use crate::identity::SpiffeId;

/// `latchkey cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a client certificate for an app.
    Issue {
        /// App name (letters, digits, `.`, `_`, `-`).
        #[arg(long, required_unless_present_any = ["admin", "server"], conflicts_with_all = ["admin", "server"])]
        app: Option<String>,
        /// Reissue (or add) an admin certificate: `spiffe://TD/admin/NAME`, written
        /// over `DIR/clients/NAME.pem` and `.key`.
        #[arg(long, conflicts_with_all = ["server", "tenant"])]
        admin: Option<String>,
        /// Reissue the agent's server certificate (`DIR/server/server.pem` and
        /// `.key`) with the names of the one it replaces.
        #[arg(long, conflicts_with = "tenant")]
        server: bool,
        /// Tenant the app belongs to.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. `30d`, `12h` [default: 30d for apps, 365d for admins and
        /// the server].
        #[arg(long)]
        ttl: Option<String>,
        /// The folder made by `latchkey init`.
        #[arg(long, env = "LATCHKEY_DIR", default_value = ".latchkey")]
        dir: PathBuf,
        /// Where to write NAME.pem and NAME.key [default: DIR/clients].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Renew an app certificate that is still valid: a new key is made here, and the
    /// running agent certifies it for the same identity and lifetime; both are
    /// written over `--cert` and `--key`.
    Renew {
        #[command(flatten)]
        client: super::connect::ClientArgs,
    },
    /// Revoke a client certificate by serial or by its file.
    Revoke {
        /// Serial number (hex), as printed by `issue`.
        #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
        serial: Option<String>,
        /// The certificate file.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The folder made by `latchkey init`.
        #[arg(long, env = "LATCHKEY_DIR", default_value = ".latchkey")]
        dir: PathBuf,
    },
}

/// Runs a `cert` subcommand.
pub(super) async fn run(cmd: CertCommand) -> Result<ExitCode, Failure> {
    match cmd {
        CertCommand::Renew { client } => renew(client).await,
        other => Ok(run_offline(other)?),
    }
}

/// `latchkey cert renew`: asks the agent over mTLS, presenting the pair to renew, and
/// replaces both files atomically (key `0600`) once the new pair is in hand.
async fn renew(args: super::connect::ClientArgs) -> Result<ExitCode, Failure> {
    let (Some(cert_path), Some(key_path)) = (args.cert.clone(), args.key.clone()) else {
        return Err(anyhow::anyhow!(
            "give --cert and --key: the pair to renew (rewritten in place)"
        )
        .into());
    };
    let client = args.client()?;
    let (id, issued) = renew_pair(&client, &cert_path, &key_path).await?;
    print_issued(&id, &issued, &cert_path, &key_path);
    Ok(ExitCode::SUCCESS)
}

/// Renews the pair `client` presents: a new key made here (it never leaves this
/// process), a signing request for it certified by the agent for the same identity
/// and lifetime, both written over `cert_path` and `key_path` atomically. Returns the
/// identity and the new pair.
pub(super) async fn renew_pair(
    client: &crate::client::Client,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(String, ca::Issued)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate a key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("cannot make a certificate signing request")?;
    let body = serde_json::to_vec(&serde_json::json!({ "csr": csr }))
        .context("cannot encode the request")?;
    let reply = client
        .request(
            http::Method::POST,
            "/v1/cert/renew",
            Some(crate::secret::SecretBytes::new(body)),
        )
        .await?;
    super::secrets::check(&reply).map_err(|f| f.error)?;
    #[derive(serde::Deserialize)]
    struct Renewed {
        id: String,
        serial: String,
        not_after: i64,
        cert_pem: String,
    }
    let renewed: Renewed = serde_json::from_slice(reply.body.expose())
        .context("the agent's answer is not a renewed certificate")?;
    let issued = ca::Issued {
        cert_pem: renewed.cert_pem,
        key_pem: crate::secret::SecretString::new(key.serialize_pem()),
        serial: renewed.serial,
        not_after: renewed.not_after,
    };
    issued
        .write(cert_path, key_path, WriteMode::Replace)
        .map_err(anyhow::Error::from)?;
    Ok((renewed.id, issued))
}

fn run_offline(cmd: CertCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCommand::Renew { .. } => bail!("renew runs against the agent"),
        CertCommand::Issue {
            app,
            admin,
            server,
            tenant,
            ttl,
            dir,
            out,
        } => {
            let default_ttl = if app.is_some() { "30d" } else { "365d" };
            let ttl = ttl.as_deref().unwrap_or(default_ttl);
            let ttl = humantime::parse_duration(ttl)
                .with_context(|| format!("--ttl {ttl:?} is not a duration like 30d or 12h"))?;
            if ttl.is_zero() {
                bail!("--ttl must be longer than zero");
            }
            let ca = Ca::load(&dir)
                .with_context(|| format!("cannot load the CA in {}", dir.display()))?;
            if server {
                return reissue_server(&ca, ttl);
            }
            if let Some(name) = admin {
                let id = SpiffeId::admin(ca.trust_domain(), &name)?;
                let out = out.unwrap_or_else(|| dir.join("clients"));
                let cert_path = out.join(format!("{name}.pem"));
                let key_path = out.join(format!("{name}.key"));
                let issued = ca.issue_client(&id, ttl)?;
                issued.write(&cert_path, &key_path, WriteMode::Replace)?;
                print_issued(&id.to_string(), &issued, &cert_path, &key_path);
                return Ok(ExitCode::SUCCESS);
            }
            let app = app.context("give --app, --admin or --server")?;
            let id = match &tenant {
                Some(t) => SpiffeId::tenant_app(ca.trust_domain(), t, &app)?,
                None => SpiffeId::app(ca.trust_domain(), &app)?,
            };
            let issued = ca.issue_client(&id, ttl)?;
            let out = out.unwrap_or_else(|| dir.join("clients"));
            let stem = match &tenant {
                Some(t) => format!("{t}.{app}"),
                None => app.clone(),
            };
            let cert_path = out.join(format!("{stem}.pem"));
            let key_path = out.join(format!("{stem}.key"));
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            issued.write(&cert_path, &key_path, WriteMode::CreateNew)?;
            print_issued(&id.to_string(), &issued, &cert_path, &key_path);
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Revoke { serial, cert, dir } => {
            let serial = match (serial, cert) {
                (Some(s), _) => s,
                (None, Some(cert)) => {
                    let pem = std::fs::read_to_string(&cert)
                        .with_context(|| format!("cannot read {}", cert.display()))?;
                    ca::serial_of_pem(&pem)?
                }
                (None, None) => bail!("give --serial or --cert"),
            };
            let ca = Ca::load(&dir)
                .with_context(|| format!("cannot load the CA in {}", dir.display()))?;
            ca.revoke(&serial)?;
            println!("revoked serial {serial}; a running agent refuses it within a second");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_issued(id: &str, issued: &ca::Issued, cert_path: &Path, key_path: &Path) {
    println!("identity: {id}");
    println!("serial:   {}", issued.serial);
    println!("expires:  {}", crate::api::rfc3339(issued.not_after));
    println!("cert:     {}", cert_path.display());
    println!("key:      {}", key_path.display());
}

/// `cert issue --server`: a new server certificate with the names of the current
/// one (`localhost`, `127.0.0.1`, `::1` when there is none), over the old pair.
pub(super) fn reissue_server(ca: &Ca, ttl: std::time::Duration) -> anyhow::Result<ExitCode> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let layout = ca.layout();
    let (cert_path, key_path) = (layout.server_cert(), layout.server_key());
    let (dns, ips) = match std::fs::read(&cert_path)
        .ok()
        .and_then(|pem| crate::identity::renew::Validity::of_pem(&pem))
    {
        Some(v) if !(v.dns.is_empty() && v.ips.is_empty()) => (v.dns, v.ips),
        _ => (
            vec!["localhost".to_owned()],
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        ),
    };
    let issued = ca.issue_server(&dns, &ips, ttl)?;
    issued.write(&cert_path, &key_path, WriteMode::Replace)?;
    print_issued("server", &issued, &cert_path, &key_path);
    println!("a running agent serves it to new connections within a second");
    Ok(ExitCode::SUCCESS)
}
