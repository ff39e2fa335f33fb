//! The operations the soak bench runs against the agent on a schedule: a SIGHUP
//! reload between two policies, a rotation through the `postgres` provider, an app
//! certificate renewal over the API, and a reissue of the server certificate.
//!
//! Each operation checks its own effect (the audit record and the new policy, the
//! new version, a read with the renewed pair, the new certificate served to a new
//! handshake) and fails with what it saw; the scheduler in `soak.rs` counts the
//! failures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use http::Method;
use latchkey::client::{Client, Endpoint};
use latchkey::secret::SecretString;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::common::agent;
use crate::load;

/// What the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reload,
    Rotate,
    Renew,
    ServerReissue,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reload => "reload",
            Kind::Rotate => "rotation",
            Kind::Renew => "app renewal",
            Kind::ServerReissue => "server reissue",
        }
    }
}

/// The path the `[[lifecycle]]` rule covers and the bench rotates.
pub const ROTATED: &str = "apps/soak/rotated";
/// Readable by the app under the second policy only.
pub const TOGGLE: &str = "shared/toggle";
/// A secret the app reads with each renewed pair.
pub const STATIC: &str = "apps/soak/db";

/// How long an operation may take to show its effect.
const EFFECT_DEADLINE: Duration = Duration::from_secs(5);

/// The agent and the files the operations act on.
pub struct Ops {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pid: u32,
    /// `latchkey.toml`, rewritten before each reload.
    pub config: PathBuf,
    /// The two configs reloads alternate between; the second lets the app read
    /// [`TOGGLE`].
    pub texts: [String; 2],
    /// Which of `texts` is in force.
    pub current: usize,
    /// Rotates, as admin, over one keep-alive connection.
    pub admin: Client,
    /// The app's original certificate over one keep-alive connection opened before
    /// the first reload: it must follow each new policy.
    pub probe: Client,
    /// The app pair renewals start from, then the last renewed one.
    pub app_cert: String,
    pub app_key: SecretString,
    /// Where new handshakes are tried after a server reissue.
    pub target: load::Target,
    /// How far `audit.log` has been read.
    pub audit_read: u64,
    /// The last version a rotation answered.
    pub version: u64,
}

impl Ops {
    /// Switches `latchkey.toml` to the other policy, sends SIGHUP, waits for the
    /// audit record of the reload (outcome ok, the policy changed) and checks that
    /// the app's open connection sees the new policy.
    pub async fn reload(&mut self) -> anyhow::Result<()> {
        let next = 1 - self.current;
        let tmp = self.config.with_extension("toml.next");
        std::fs::write(&tmp, &self.texts[next])?;
        std::fs::rename(&tmp, &self.config)?;
        let pid = rustix::process::Pid::from_raw(self.pid as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .context("cannot send SIGHUP")?;
        let record = self.next_audit("reload").await?;
        let outcome = record["outcome"].as_str().unwrap_or_default();
        let detail = record["detail"].as_str().unwrap_or_default();
        if outcome != "ok" || !detail.contains("policy") {
            bail!("the reload was audited as {outcome:?} with detail {detail:?}");
        }
        self.current = next;
        let want = if next == 1 { 200 } else { 403 };
        let got = self
            .probe
            .get(&format!("/v1/secrets/{TOGGLE}"))
            .await
            .context("read after the reload")?
            .status;
        if got != want {
            bail!("after the reload the app's open connection read {TOGGLE} with {got}, expected {want}");
        }
        Ok(())
    }

    /// Reads `audit.log` past what was read until a record with `op` appears.
    async fn next_audit(&mut self, op: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.dir.join("audit/audit.log");
        let deadline = Instant::now() + EFFECT_DEADLINE;
        loop {
            let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            let start = usize::try_from(self.audit_read)
                .unwrap_or(usize::MAX)
                .min(text.len());
            let mut consumed = start;
            for line in text[start..].split_inclusive(|&b| b == b'\n') {
                if line.last() != Some(&b'\n') {
                    break; // a record still being written
                }
                consumed += line.len();
                let record: serde_json::Value =
                    serde_json::from_slice(line).context("an audit line is not JSON")?;
                if record["op"] == op {
                    self.audit_read = consumed as u64;
                    return Ok(record);
                }
            }
            self.audit_read = consumed as u64;
            if Instant::now() > deadline {
                bail!(
                    "no {op} record in the audit trail within {} s",
                    EFFECT_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `POST /v1/rotate/{ROTATED}` as admin; the answer's version must be newer.
    pub async fn rotate(&mut self) -> anyhow::Result<()> {
        let reply = self
            .admin
            .request(Method::POST, &format!("/v1/rotate/{ROTATED}"), None)
            .await?;
        if reply.status != 200 {
            bail!(
                "rotate answered {}: {}",
                reply.status,
                String::from_utf8_lossy(reply.body.expose())
            );
        }
        let version = reply.json()?["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("the rotation's answer has no version"))?;
        if version <= self.version {
            bail!("rotated to version {version}, not past {}", self.version);
        }
        self.version = version;
        Ok(())
    }

    fn app_client(&self, cert: &str, key: &SecretString) -> anyhow::Result<Client> {
        let ca = std::fs::read_to_string(self.dir.join("ca/ca.pem"))?;
        let tls = latchkey::tls::client_config(&ca, cert, key)
            .map_err(|e| anyhow!("client TLS with the app pair: {e}"))?;
        Ok(Client::new(
            Endpoint::Unix(self.dir.join("run/latchkey.sock")),
            tls,
        ))
    }

    /// `POST /v1/cert/renew` (no body: the agent makes the key) on a new connection
    /// with the current app pair, then a read on a new connection with the new pair,
    /// which becomes the current one.
    pub async fn renew(&mut self) -> anyhow::Result<()> {
        let client = self.app_client(&self.app_cert, &self.app_key)?;
        let reply = client.request(Method::POST, "/v1/cert/renew", None).await?;
        if reply.status != 200 {
            bail!(
                "renew answered {}: {}",
                reply.status,
                String::from_utf8_lossy(reply.body.expose())
            );
        }
        #[derive(serde::Deserialize)]
        struct Renewed {
            id: String,
            cert_pem: String,
            key_pem: String,
        }
        let renewed: Renewed = serde_json::from_slice(reply.body.expose())
            .context("the renewal's answer is not a certificate and key")?;
        if !renewed.id.ends_with("/app/soak") {
            bail!("renewed for {}, not the app", renewed.id);
        }
        let key = SecretString::new(renewed.key_pem);
        let status = self
            .app_client(&renewed.cert_pem, &key)?
            .get(&format!("/v1/secrets/{STATIC}"))
            .await
            .context("read with the renewed pair")?
            .status;
        if status != 200 {
            bail!("a read with the renewed pair answered {status}");
        }
        self.app_cert = renewed.cert_pem;
        self.app_key = key;
        Ok(())
    }

    /// `latchkey cert issue --server`, then new handshakes until one is served the
    /// new certificate.
    pub async fn reissue_server(&mut self) -> anyhow::Result<()> {
        let (bin, dir) = (self.bin.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || {
            agent::latchkey(
                &bin,
                &[
                    "cert",
                    "issue",
                    "--server",
                    "--dir",
                    dir.to_str().context("utf-8 path")?,
                ],
            )
        })
        .await??;
        let want = server_der(&self.dir)?;
        let deadline = Instant::now() + EFFECT_DEADLINE;
        loop {
            let io = load::open(&self.target).await?;
            let (_, conn) = io.inner().get_ref();
            if conn
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| c.as_ref() == want.as_ref())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "new handshakes were not served the reissued server certificate within {} s",
                    EFFECT_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn server_der(dir: &Path) -> anyhow::Result<CertificateDer<'static>> {
    let path = dir.join("server/server.pem");
    CertificateDer::from_pem_file(&path).with_context(|| format!("read {}", path.display()))
}
