//! `latchkey init`: a folder with everything the agent needs, ready to run.
//!
//! Creates a key-encryption key, a small CA, a server certificate for `localhost`, an
//! admin client certificate, an empty revocation list, a commented `latchkey.toml`
//! that works as it is, and the folders the agent writes: `data/` (the store),
//! `state/` (its state files), `audit/` (the audit trail) and `run/` (the socket).
//! Folders are `0700` and files `0600`, except `run/`, `0750`: the only one others
//! may enter, and only the socket's group.
//!
//! With `--user U` (init run as root) the agent runs as `U`: what it reads and writes
//! (config, `keys/`, `ca/`, `server/`, `data/`, `state/`, `audit/`, `run/`) belongs to
//! `U`, the admin certificate in `clients/` stays with the operator, and the folder
//! itself stays the operator's, `0711`, so `U` and the apps can pass through it but
//! not list it. With `--group G`, `run/` is group `G` and setgid, so the socket the
//! agent binds there is group `G` too and apps in `G` can connect. Folders are made
//! and handed over through a descriptor opened without following links; files the
//! CA and key code write are handed over the same way before the folder opens up.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
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
    /// The user the agent runs as (name or uid; init runs as root): it owns what the
    /// agent reads and writes.
    #[arg(long)]
    pub user: Option<String>,
    /// The group whose members may connect to the socket (name or gid).
    #[arg(long)]
    pub group: Option<String>,
}

/// Who owns what `init` makes, from `--user` and `--group`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Owners {
    /// The agent's uid and its primary gid.
    agent: Option<(u32, u32)>,
    /// The group that may reach the socket.
    apps: Option<u32>,
}

impl Owners {
    fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Owners> {
        let agent = match user {
            None => None,
            Some(u) => Some(lookup_user(u).with_context(|| format!("--user: no user {u:?}"))?),
        };
        let apps = match group {
            None => None,
            Some(g) => Some(
                crate::render::spec::lookup_id("/etc/group", g)
                    .with_context(|| format!("--group: no group {g:?}"))?,
            ),
        };
        Ok(Owners { agent, apps })
    }
}

/// `name` (or a uid) in `/etc/passwd`: its uid and primary gid.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        let entry = parts.next()?;
        let _password = parts.next()?;
        let uid = parts.next()?;
        let gid = parts.next()?;
        if entry != name && uid != name {
            return None;
        }
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// `latchkey init`.
pub(super) fn run(args: InitArgs) -> Result<ExitCode, Failure> {
    let td = TrustDomain::new(&args.trust_domain)?;
    let owners = Owners::resolve(args.user.as_deref(), args.group.as_deref())?;
    initialise_for(&args.dir, &td, args.tcp, owners)?;
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

/// Creates the folder's contents, owned by the current user. Refuses to touch a
/// folder that already has a config.
pub(super) fn initialise(
    dir: &Path,
    td: &TrustDomain,
    tcp: Option<SocketAddr>,
) -> anyhow::Result<()> {
    initialise_for(dir, td, tcp, Owners::default())
}

fn initialise_for(
    dir: &Path,
    td: &TrustDomain,
    tcp: Option<SocketAddr>,
    owners: Owners,
) -> anyhow::Result<()> {
    let config_path = dir.join("latchkey.toml");
    if config_path.exists() {
        bail!(
            "{} exists already; refusing to overwrite it",
            config_path.display()
        );
    }
    // Private while it is filled; opened up (for --user/--group) only at the end.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let top = make_dir(dir, 0o700, None)?;
    let agent = owners.agent;
    for sub in ["keys", "ca", "server", "data", "state", "audit"] {
        make_dir(&dir.join(sub), 0o700, agent)?;
    }
    make_dir(&dir.join("clients"), 0o700, None)?;
    let run_owner = match (agent, owners.apps) {
        (_, None) => agent,
        (Some((uid, _)), Some(apps)) => Some((uid, apps)),
        (None, Some(apps)) => Some((rustix::process::getuid().as_raw(), apps)),
    };
    // setgid: the socket bound inside gets the folder's group.
    let run_mode = if owners.apps.is_some() { 0o2750 } else { 0o750 };
    make_dir(&dir.join("run"), run_mode, run_owner)?;

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
    write_private(&config_path, text.as_bytes(), agent)?;
    if let Some(owner) = agent {
        for sub in ["keys", "ca", "server"] {
            hand_over_files(&dir.join(sub), owner)?;
        }
    }
    if agent.is_some() || owners.apps.is_some() {
        // Passable, not listable: the agent reaches its files, apps reach run/.
        set_mode(&top, dir, 0o711)?;
    }
    Ok(())
}

/// Opens `path` as a folder without following a link.
fn open_dir(path: &Path) -> anyhow::Result<OwnedFd> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open the folder {}", path.display()))?;
    Ok(file.into())
}

fn set_mode(fd: &OwnedFd, path: &Path, mode: u32) -> anyhow::Result<()> {
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn set_owner(fd: &OwnedFd, path: &Path, (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("cannot give {} to {uid}:{gid}", path.display()))
}

/// Creates the folder `path` (or takes the one there, never through a link), gives
/// it to `owner` and sets `mode` exactly (the umask only narrows, and setgid is not
/// set by `mkdir`), all through one descriptor.
fn make_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> anyhow::Result<OwnedFd> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let fd = open_dir(path)?;
    if let Some(owner) = owner {
        set_owner(&fd, path, owner)?;
    }
    // After the owner: chown clears setgid.
    set_mode(&fd, path, mode)?;
    Ok(fd)
}

/// Gives every regular file in `dir` to `owner`, each opened without following a
/// link. Runs while the top folder is still the operator's alone (`0700`), so
/// nothing can be swapped in between.
fn hand_over_files(dir: &Path, owner: (u32, u32)) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .is_file()
        {
            set_owner(&file.into(), &path, owner)?;
        }
    }
    Ok(())
}

/// Creates `path` (`0600`, never through a link), owned by `owner` from the start.
fn write_private(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if let Some(owner) = owner {
        let fd: OwnedFd = file
            .try_clone()
            .with_context(|| format!("cannot write {}", path.display()))?
            .into();
        set_owner(&fd, path, owner)?;
    }
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
# Unix socket for local apps; its mode leaves nothing for others. Its folder run/ is
# the only one apps enter: with `init --group G` it is group G and setgid, so the
# socket is group G too.
socket = "run/latchkey.sock"
socket_mode = "0660"
# socket_group = "apps"     # group of the socket (default: run/'s, or the agent's own)
# Loopback TCP listener, also mTLS (TLS 1.3, client certificate required).
{tcp_line}

[tls]
ca = "ca/ca.pem"            # signs app certificates: latchkey cert issue --app NAME
cert = "server/server.pem"  # the agent's certificate (DNS localhost, 127.0.0.1, ::1)
key = "server/server.key"
crl = "ca/crl.pem"          # latchkey cert revoke ... takes effect within a second

[storage]
path = "data"               # sled database; values sealed with AES-256-GCM
state_dir = "state"         # last sync, expiry warnings sent, node id, lifecycle states, plugin cache
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
path = "audit/audit.log"    # JSON lines: who, what, which path, outcome; never values
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
