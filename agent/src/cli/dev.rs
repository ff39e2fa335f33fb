//! `latchkey dev`: a working agent in one command, like `vault server -dev`.
//!
//! Initialises a local folder on first use (same contents as `latchkey init`), starts
//! the agent in the foreground on the embedded store, seeds one example secret if it
//! is missing, and prints the exact `curl` and `latchkey get` commands that fetch it
//! over mTLS. Data persists in the folder between runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::Failure;
use crate::identity::TrustDomain;
use crate::path::SecretPath;
use crate::secret::{Fields, SecretString};
use crate::store::{Selector, Write};

/// The example secret dev mode seeds.
pub(super) const DEMO_PATH: &str = "demo/database";

/// `latchkey dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder for keys, certificates and data (created on first use).
    #[arg(long, default_value = ".latchkey-dev")]
    pub dir: PathBuf,
    /// Also listen on this loopback TCP address.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
}

/// `latchkey dev`.
pub(super) async fn run(args: DevArgs) -> Result<ExitCode, Failure> {
    let config_path = args.dir.join("latchkey.toml");
    if !config_path.exists() {
        let td = TrustDomain::new("latchkey.local")?;
        super::init::initialise(&args.dir, &td, args.tcp)?;
    }
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let config_path = dir.join("latchkey.toml");
    let config = crate::config::Config::load(&config_path)?;
    let socket = config.listen.socket.clone();
    let tcp = config.listen.tcp;
    let running = crate::server::start(config).await?;
    seed(running.store()).await?;

    // Fetch the secret once over the socket, as an app would, to show it is served.
    let demo = super::ClientArgs {
        dir: dir.clone(),
        addr: None,
        cert: None,
        key: None,
        cacert: None,
    }
    .client()?
    .get(&format!("/v1/secrets/{DEMO_PATH}"))
    .await?;
    println!(
        "GET /v1/secrets/{DEMO_PATH} over mTLS -> {} {}",
        demo.status,
        String::from_utf8_lossy(demo.body.expose())
    );

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "latchkey".to_owned());
    let d = dir.display();
    println!();
    println!("latchkey dev agent is running (Ctrl-C to stop); data in {d}");
    println!();
    if let Some(socket) = &socket {
        println!("Fetch the example secret with curl over the Unix socket (mTLS):");
        println!(
            "  curl --unix-socket {} --cacert {d}/ca/ca.pem --cert {d}/clients/admin.pem --key {d}/clients/admin.key https://localhost/v1/secrets/{DEMO_PATH}",
            socket.display()
        );
    }
    if let Some(tcp) = tcp {
        println!("or over TCP:");
        println!(
            "  curl --cacert {d}/ca/ca.pem --cert {d}/clients/admin.pem --key {d}/clients/admin.key https://localhost:{}/v1/secrets/{DEMO_PATH}",
            tcp.port()
        );
    }
    println!("or with the CLI:");
    println!("  {exe} get {DEMO_PATH} --dir {d}");
    println!("  {exe} get {DEMO_PATH} --field password --dir {d}");
    println!("Issue a certificate for an app:");
    println!("  {exe} cert issue --app web --dir {d}");
    println!();
    crate::server::serve(running, &config_path).await;
    Ok(ExitCode::SUCCESS)
}

async fn seed(store: &crate::store::Store) -> anyhow::Result<()> {
    let path = SecretPath::parse(DEMO_PATH)?;
    if store.get(&path, Selector::Current)?.is_some() {
        return Ok(());
    }
    let mut fields = Fields::new();
    fields.insert("username", SecretString::from("demo_app"));
    fields.insert("password", SecretString::new(random_password()));
    fields.insert("host", SecretString::from("127.0.0.1:5432"));
    store.put(
        &path,
        Write {
            fields,
            kind: Some("database".to_owned()),
            expires_at: None,
            cas: Some(0),
        },
    )?;
    store.flush().await?;
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
