//! Starts a real `moto_server` (PyPI `moto[server]`) on a loopback port the test
//! picked, waits until it answers, and kills it on drop.
//!
//! It runs through `moto-server.py`, which corrects one answer to what AWS sends:
//! moto dates every version in ListSecretVersionIds at the time of the call, so a
//! version someone else wrote would change number (the agent numbers it by its
//! creation time) whenever two calls fall in different seconds.
//!
//! [`Moto::call`] speaks the Secrets Manager JSON protocol directly, so tests create
//! and inspect secrets without the client under test. moto does not check request
//! signatures; the `Authorization` header only tells it the region.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::spawn::{free_port, tool, wait_until};

/// The region every test uses.
pub(crate) const REGION: &str = "us-east-1";

/// A running `moto_server`.
pub(crate) struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`: the endpoint override for the SDK.
    pub(crate) endpoint: String,
    client: reqwest::Client,
}

impl Moto {
    /// Starts a server.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::spawn_once().await {
                Ok(moto) => return Ok(moto),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    // The harness talks to the server as a third party, not through the agent's client.
    #[allow(clippy::disallowed_methods)]
    async fn spawn_once() -> anyhow::Result<Self> {
        let port = free_port()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/moto-server.py");
        let child = Command::new(tool("python3"))
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start `moto_server` (run .ci/install-tools.sh, or set LATCHKEY_TOOLS_DIR)")?;
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(crate::harness::pace::scaled(Duration::from_secs(10)))
                .build()?,
        };
        let probe = format!("{}/moto-api/", moto.endpoint);
        let client = moto.client.clone();
        // A server that could not bind its port exits (and another test's server may
        // answer on that port): stop waiting as soon as ours is gone.
        let mut exited = None;
        let child = &mut moto.child;
        let ready = wait_until("moto", Duration::from_secs(60), || {
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            let gone = exited.is_some();
            let request = client.get(&probe).send();
            async move { gone || matches!(request.await, Ok(r) if r.status().as_u16() < 500) }
        })
        .await;
        if let Some(status) = exited.or_else(|| moto.child.try_wait().ok().flatten()) {
            bail!("moto_server exited early: {status}");
        }
        if let Err(e) = ready {
            let _ = moto.child.start_kill();
            return Err(e);
        }
        Ok(moto)
    }

    /// Calls a Secrets Manager action (`CreateSecret`, `GetSecretValue`, …); returns
    /// the status and the JSON answer.
    pub(crate) async fn call(&self, action: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=test/20240101/{REGION}/secretsmanager/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let response = self
            .client
            .post(&self.endpoint)
            .header("X-Amz-Target", format!("secretsmanager.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", auth)
            .body(serde_json::to_vec(&body)?)
            .send()
            .await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("moto answered non-JSON")?
        };
        Ok((status, json))
    }

    /// Like [`Moto::call`], failing unless the status is 200.
    pub(crate) async fn ok(&self, action: &str, body: Value) -> anyhow::Result<Value> {
        let (status, json) = self.call(action, body).await?;
        if status != 200 {
            bail!("{action} answered {status}: {json}");
        }
        Ok(json)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
