//! How the client commands find the agent and their certificate.
//!
//! Defaults come from the init folder (`--dir`, `LATCHKEY_DIR`, default `.latchkey`):
//! the admin certificate in `clients/`, the CA in `ca/`, and the socket (or TCP
//! address) named by its `latchkey.toml`. Each can be overridden by a flag or a
//! `LATCHKEY_*` variable.

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

impl ClientArgs {
    /// Builds a client from the flags and defaults.
    pub fn client(&self) -> anyhow::Result<Client> {
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| self.dir.join("clients/admin.pem"));
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| self.dir.join("clients/admin.key"));
        let ca = self
            .cacert
            .clone()
            .unwrap_or_else(|| self.dir.join("ca/ca.pem"));
        let endpoint = match &self.addr {
            Some(addr) => addr.parse::<Endpoint>()?,
            None => endpoint_from_config(&self.dir.join("latchkey.toml"))?,
        };
        let ca_pem = read(&ca)?;
        let cert_pem = read(&cert)?;
        let key_pem = SecretString::new(read(&key)?);
        let tls = crate::tls::client_config(&ca_pem, &cert_pem, &key_pem)
            .with_context(|| format!("cannot use certificate {}", cert.display()))?;
        Ok(Client::new(endpoint, tls))
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
