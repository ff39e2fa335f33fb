//! Driving the `latchkey` binary: one-shot commands, `latchkey init`, `latchkey run`,
//! and an admin client for the folder `latchkey init` made.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};
use latchkey::client::{Client, Endpoint};
use latchkey::secret::SecretString;

/// Runs `bin ARGS` to completion; returns its stdout.
pub fn latchkey(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env_remove("LATCHKEY_DIR")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "latchkey {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `latchkey init` in `dir`; returns the config it wrote (`dir/latchkey.toml`).
pub fn init(bin: &Path, dir: &Path) -> anyhow::Result<String> {
    latchkey(bin, &["init", "--dir", dir.to_str().context("utf-8 path")?])?;
    Ok(std::fs::read_to_string(dir.join("latchkey.toml"))?)
}

/// `latchkey run --config CONFIG`, not started yet.
pub fn run_command(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(config);
    cmd
}

/// An mTLS client with the admin certificate `latchkey init` made in `dir`.
pub fn admin_client(dir: &Path) -> anyhow::Result<Client> {
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).with_context(|| p.to_owned());
    let tls = latchkey::tls::client_config(
        &read("ca/ca.pem")?,
        &read("clients/admin.pem")?,
        &SecretString::new(read("clients/admin.key")?),
    )
    .map_err(|e| anyhow!("client TLS: {e}"))?;
    Ok(Client::new(
        Endpoint::Unix(dir.join("run/latchkey.sock")),
        tls,
    ))
}

/// Waits up to `timeout` for the agent made in `dir` to answer `/v1/health` to its
/// admin certificate; fails at once if the process exits first (the error holds its
/// `log`).
pub async fn wait_ready(
    dir: &Path,
    agent: &mut super::process::Proc,
    log: &Path,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let client = admin_client(dir)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(reply) = client.get("/v1/health").await {
            if reply.status == 200 {
                return Ok(());
            }
        }
        agent.check_alive(Some(log))?;
        if std::time::Instant::now() > deadline {
            bail!(
                "the agent did not answer /v1/health within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
