//! `latchkey init`: a folder with everything the agent needs, ready to run.
//!
//! Creates (directories 0700, private files 0600): a key-encryption key, a small CA, a
//! server certificate for `localhost`, an admin client certificate, an empty
//! revocation list, and a commented `latchkey.toml` that works as it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use super::Failure;
use crate::crypto::LocalKek;
use crate::identity::ca::{Ca, WriteMode};
use crate::identity::{SpiffeId, TrustDomain};

/// Server and admin certificates made by `init` last this long.
const INIT_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `latchkey init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to create (must not hold a latchkey.toml yet).
    #[arg(long, env = "LATCHKEY_DIR")]
    pub dir: PathBuf,
    /// SPIFFE trust domain of the identities this agent issues and accepts.
    #[arg(long, default_value = "latchkey.local")]
    pub trust_domain: String,
    /// Also listen on this loopback TCP address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
}

/// `latchkey init`.
pub(super) fn run(args: InitArgs) -> Result<ExitCode, Failure> {
    let td = TrustDomain::new(&args.trust_domain)?;
    initialise(&args.dir, &td, args.tcp)?;
    println!("initialised {}", args.dir.display());
    println!(
        "  config:       {}",
        args.dir.join("latchkey.toml").display()
    );
    println!(
        "  admin cert:   {}",
        args.dir.join("clients/admin.pem").display()
    );
    println!(
        "  start with:   latchkey run --config {}",
        args.dir.join("latchkey.toml").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates the folder's contents. Refuses to touch a folder that already has a config.
pub(super) fn initialise(
    dir: &Path,
    td: &TrustDomain,
    tcp: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let config_path = dir.join("latchkey.toml");
    if config_path.exists() {
        bail!(
            "{} exists already; refusing to overwrite it",
            config_path.display()
        );
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["", "keys", "data", "clients", "server"] {
        let d = dir.join(sub);
        builder
            .create(&d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    LocalKek::generate_file(dir.join("keys/kek"))
        .context("cannot create the key-encryption key")?;
    let ca = Ca::create(dir, td).context("cannot create the CA")?;
    let server = ca
        .issue_server(
            &["localhost".to_owned()],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            INIT_CERT_TTL,
        )
        .context("cannot issue the server certificate")?;
    server
        .write(
            &dir.join("server/server.pem"),
            &dir.join("server/server.key"),
            WriteMode::CreateNew,
        )
        .context("cannot write the server certificate")?;
    let admin_id = SpiffeId::admin(td, "admin")?;
    let admin = ca
        .issue_client(&admin_id, INIT_CERT_TTL)
        .context("cannot issue the admin certificate")?;
    admin
        .write(
            &dir.join("clients/admin.pem"),
            &dir.join("clients/admin.key"),
            WriteMode::CreateNew,
        )
        .context("cannot write the admin certificate")?;
    let text = config_template(td, tcp);
    write_private(&config_path, text.as_bytes())?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The commented config `init` writes.
pub(super) fn config_template(td: &TrustDomain, tcp: Option<SocketAddr>) -> String {
    let tcp_line = match tcp {
        Some(addr) => format!("tcp = \"{addr}\""),
        None => "# tcp = \"127.0.0.1:8443\"".to_owned(),
    };
    format!(
        r#"# latchkey agent configuration, written by `latchkey init`.
# Relative paths are relative to the folder of this file.
# Check it with `latchkey check --config latchkey.toml`.

# Client certificates must carry a URI SAN spiffe://<trust_domain>/...
trust_domain = "{td}"

[listen]
# Unix socket for local apps; its mode leaves nothing for others.
socket = "run/latchkey.sock"
socket_mode = "0660"
# socket_group = "apps"     # group of the socket (default: the agent's own)
# Loopback TCP listener, also mTLS (TLS 1.3, client certificate required).
{tcp_line}

[tls]
ca = "ca/ca.pem"            # signs app certificates: latchkey cert issue --app NAME
cert = "server/server.pem"  # the agent's certificate (DNS localhost, 127.0.0.1, ::1)
key = "server/server.key"
crl = "ca/crl.pem"          # latchkey cert revoke ... takes effect within a second

[storage]
path = "data"               # sled database; values sealed with AES-256-GCM
versions = 10               # versions kept per secret (labelled ones are always kept)
hot_cache_entries = 10000   # secrets kept ready to serve without decrypting
# Key-encryption key: wraps the data key. Or {{ source = "env", var = "LATCHKEY_KEK" }}.
kek = {{ source = "file", path = "keys/kek" }}

[limits]
max_body_bytes = 65536
max_headers = 64
handshake_timeout = "5s"
header_timeout = "5s"
body_timeout = "10s"
max_connections = 1024      # past the handshake, all clients together
max_handshakes = 256        # in the TLS handshake at once; more cut the oldest
max_connections_per_identity = 64
max_connections_per_uid = 256   # Unix socket peers, handshakes included
max_watchers_per_identity = 32
max_connection_age = "1h"   # then closed; never past the client certificate's expiry

[audit]
path = "audit.log"          # JSON lines: who, what, which path, outcome; never values
reads = true                # successful reads: first of each version per reader, then counted repeats ("each": every one)

# Access policy. Rules only allow; everything else is denied with 403 and audited.
# Patterns match whole segments: * is one segment, ** any number, {{app}} and
# {{tenant}} the caller's own names.

# The admin certificate made by init.
[[policy]]
identity = "spiffe://{td}/admin/*"
paths = ["**"]
operations = ["read", "write", "list", "admin"]

# Every app reads its own subtree: apps/<app>/...
[[policy]]
identity = "spiffe://{td}/app/*"
paths = ["apps/{{app}}/**"]
operations = ["read", "list"]

# Tenant apps: their own subtree and their tenant's shared secrets.
[[policy]]
identity = "spiffe://{td}/tenant/*/app/*"
paths = ["tenants/{{tenant}}/apps/{{app}}/**", "tenants/{{tenant}}/shared/**"]
operations = ["read", "list"]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_is_valid() {
        let td = TrustDomain::new("latchkey.local").expect("td");
        for tcp in [None, Some("127.0.0.1:8443".parse().expect("addr"))] {
            let text = config_template(&td, tcp);
            let cfg = crate::config::Config::from_toml(Path::new("/x/latchkey.toml"), &text)
                .expect("template parses");
            assert_eq!(cfg.listen.tcp, tcp);
        }
    }
}
