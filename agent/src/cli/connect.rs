//! How the client commands find the agent and their certificate.
//!
//! Defaults come from the init folder (`--dir`, `LATCHKEY_DIR`, default `.latchkey`):
//! the admin certificate in `clients/`, the CA in `ca/`, and the socket (or TCP
//! address) named by its `latchkey.toml`. Each can be overridden by a flag or a
//! `LATCHKEY_*` variable. Long-running commands (`exec`, `render` without `--once`)
//! keep their certificate renewed ([`ClientArgs::keep_renewed`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Args;

use crate::client::{Client, Endpoint};
use crate::secret::SecretString;

/// Connection flags shared by `get`, `put`, `list` and `rm`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The folder made by `latchkey init`.
    #[arg(long, env = "LATCHKEY_DIR", default_value = ".latchkey")]
    pub dir: PathBuf,
    /// Agent address: `unix:/path/to.sock` or `127.0.0.1:8443` [default: from DIR/latchkey.toml].
    #[arg(long, env = "LATCHKEY_ADDR")]
    pub addr: Option<String>,
    /// Client certificate (PEM) [default: DIR/clients/admin.pem].
    #[arg(long, env = "LATCHKEY_CERT")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [default: DIR/clients/admin.key].
    #[arg(long, env = "LATCHKEY_KEY")]
    pub key: Option<PathBuf>,
    /// CA that signed the agent's certificate [default: DIR/ca/ca.pem].
    #[arg(long, env = "LATCHKEY_CACERT")]
    pub cacert: Option<PathBuf>,
}

/// The longest wait between two looks at a long-running command's certificate, and
/// the first retry after a failed renewal (doubling up to it).
const RENEW_CHECK_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
const RENEW_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(30);

impl ClientArgs {
    /// The certificate, key and CA files, flags or defaults.
    fn files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let or = |flag: &Option<PathBuf>, default: &str| {
            flag.clone().unwrap_or_else(|| self.dir.join(default))
        };
        (
            or(&self.cert, "clients/admin.pem"),
            or(&self.key, "clients/admin.key"),
            or(&self.cacert, "ca/ca.pem"),
        )
    }

    /// The TLS settings for the files as they are now.
    fn tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let (cert, key, ca) = self.files();
        let ca_pem = read(&ca)?;
        let cert_pem = read(&cert)?;
        let key_pem = SecretString::new(read(&key)?);
        crate::tls::client_config(&ca_pem, &cert_pem, &key_pem)
            .with_context(|| format!("cannot use certificate {}", cert.display()))
    }

    /// Builds a client from the flags and defaults.
    pub fn client(&self) -> anyhow::Result<Client> {
        let endpoint = match &self.addr {
            Some(addr) => addr.parse::<Endpoint>()?,
            None => endpoint_from_config(&self.dir.join("latchkey.toml"))?,
        };
        Ok(Client::new(endpoint, self.tls()?))
    }

    /// Keeps the certificate `client` presents valid while a long-running command
    /// runs: once a third of its lifetime is left it is renewed over the API (a new
    /// key made here, `POST /v1/cert/renew`), written over its files and used for the
    /// next connection. A failure is logged and retried (30 s, doubling to an hour);
    /// an agent without its CA key (`409 no_ca`) ends the task after saying so.
    pub fn keep_renewed(&self, client: std::sync::Arc<Client>) -> tokio::task::JoinHandle<()> {
        let args = self.clone();
        tokio::spawn(async move {
            let (cert, key, _) = args.files();
            let mut retry = RENEW_RETRY_MIN;
            loop {
                let now = crate::clock::unix_now();
                let validity = std::fs::read(&cert)
                    .ok()
                    .and_then(|pem| crate::identity::renew::Validity::of_pem(&pem));
                let Some(validity) = validity else {
                    tracing::warn!(cert = %cert.display(), "cannot read the client certificate; it is not renewed");
                    return;
                };
                if !validity.due(now) {
                    // Due once a third of the lifetime is left.
                    let due_at =
                        validity.not_after - (validity.not_after - validity.not_before) / 3;
                    let wait = u64::try_from(due_at - now).unwrap_or(0).max(1);
                    tokio::time::sleep(std::time::Duration::from_secs(wait).min(RENEW_CHECK_MAX))
                        .await;
                    continue;
                }
                match super::cert::renew_pair(&client, &cert, &key).await {
                    Ok((id, issued)) => match args.tls() {
                        Ok(tls) => {
                            client.set_tls(tls).await;
                            retry = RENEW_RETRY_MIN;
                            tracing::info!(identity = %id, serial = %issued.serial, cert = %cert.display(), "client certificate renewed");
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "renewed, but cannot use the new certificate");
                            return;
                        }
                    },
                    Err(e) => {
                        let text = format!("{e:#}");
                        if text.contains("no_ca") {
                            tracing::warn!(error = %text, "the agent cannot renew certificates; the client certificate is not renewed");
                            return;
                        }
                        tracing::warn!(error = %text, retry_in_s = retry.as_secs(), "client certificate renewal failed; retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RENEW_CHECK_MAX);
                    }
                }
            }
        })
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn endpoint_from_config(path: &Path) -> anyhow::Result<Endpoint> {
    let config = match crate::config::Config::load(path) {
        Ok(config) => config,
        // A config being edited may not validate while the agent still runs on the
        // one it loaded (`latchkey reload` is how the operator finds out): its
        // `[listen]` table is enough to reach the agent.
        Err(invalid) => {
            return listen_only(path).ok_or(invalid).with_context(|| {
                format!(
                    "no --addr given and {} cannot be used to find the agent",
                    path.display()
                )
            })
        }
    };
    if let Some(socket) = config.listen.socket {
        return Ok(Endpoint::Unix(socket));
    }
    config
        .listen
        .tcp
        .map(Endpoint::Tcp)
        .ok_or_else(|| anyhow!("{} names no listener", path.display()))
}

/// The listener named by the `[listen]` table of a config that does not validate as
/// a whole: the socket (anchored at the config's folder) or the TCP address.
fn listen_only(path: &Path) -> Option<Endpoint> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let listen = table.get("listen")?.as_table()?;
    if let Some(socket) = listen.get("socket").and_then(|s| s.as_str()) {
        let base = path.parent().unwrap_or(Path::new("."));
        return Some(Endpoint::Unix(base.join(socket)));
    }
    listen.get("tcp")?.as_str()?.parse().ok().map(Endpoint::Tcp)
}
