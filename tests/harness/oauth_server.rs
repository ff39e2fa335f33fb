//! The real OAuth 2 server for the tests: npm `oauth2-mock-server` (installed by
//! `.ci/install-tools.sh` into `target/tools/node`), started on a free loopback port
//! through `tests/harness/oauth-server.mjs`, which drives the library's API and adds a
//! control API on the same port. The process is killed when the [`OAuthServer`] drops.
//!
//! What the server does (details in the script's header):
//! - issues real signed JWT access tokens at `POST /token` for the `refresh_token`
//!   and `client_credentials` grants (any client id and secret are accepted);
//! - answers `400 {"error":"invalid_grant",...}` for a refresh token that starts with
//!   `revoked-`, and `401 {"error":"invalid_client",...}` for a client secret that
//!   starts with `wrong-`;
//! - serves discovery (`/.well-known/openid-configuration`), `/userinfo` (401 for
//!   access tokens it did not issue) and `/introspect` (`active` only for its own);
//! - records every answered token request, exactly: the record is made before the
//!   answer is written, so once a client has its answer, [`OAuthServer::token_requests`]
//!   counts it. Requests the library refuses as malformed (no `grant_type`) are not
//!   token requests and are not counted.
//!
//! ```ignore
//! let oauth = OAuthServer::start().await?;
//! oauth.set(Settings { expires_in: Some(60), issue_refresh_token: Some(false), ..Default::default() }).await?;
//! // ... call the oauth2 plugin with {"token-endpoint": oauth.token_endpoint()} and
//! //     --grant-http oauth.grant() --allow-network 127.0.0.0/8 ...
//! assert_eq!(oauth.token_requests("refresh_token").await?, 1);
//! let seen = oauth.requests().await?;
//! assert_eq!(seen[0].auth, "basic");
//! ```
//!
//! The oauth2 plugin has no fixed HTTP authority in its manifest (the operator names
//! the server), so [`OAuthServer::install_plugin`] installs it with a manifest that
//! needs this server's authority, the way an operator would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long the server may take to print its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One token request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRequest {
    /// `refresh_token`, `client_credentials`, ...
    pub(crate) grant_type: String,
    /// How the client authenticated: `basic` (Authorization header), `body`
    /// (`client_secret` in the form) or `none` (public client or no client).
    pub(crate) auth: String,
    /// The client id as sent: for `basic`, still form-urlencoded (RFC 6749 §2.3.1).
    pub(crate) client_id: Option<String>,
    /// The client secret as sent (for `basic`, still form-urlencoded).
    pub(crate) client_secret: Option<String>,
    /// The `refresh_token` parameter.
    pub(crate) refresh_token: Option<String>,
    /// The `scope` parameter.
    pub(crate) scope: Option<String>,
    /// The `audience` parameter.
    pub(crate) audience: Option<String>,
    /// The HTTP status the server answered with.
    pub(crate) status: u16,
}

/// Behaviour changes for later token requests; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// `expires_in` of issued tokens, seconds (default 3600); also their JWT `exp`.
    pub(crate) expires_in: Option<u64>,
    /// Whether a refresh_token grant returns a new refresh token (default true).
    pub(crate) issue_refresh_token: Option<bool>,
    /// Delay before the token endpoint handles a request, ms (default 0): widens the
    /// window in which concurrent refreshes could overlap.
    pub(crate) delay_ms: Option<u64>,
    /// Answer every token request `503 {"error":"temporarily_unavailable"}`.
    pub(crate) unavailable: Option<bool>,
}

/// A running `oauth2-mock-server`; killed on drop.
pub(crate) struct OAuthServer {
    _child: Child,
    port: u16,
    client: reqwest::Client,
}

/// The `oauth2-mock-server` package folder: `$LATCHKEY_TOOLS_DIR/node/...` or
/// `target/tools/node/...`.
fn package_dir() -> anyhow::Result<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("LATCHKEY_TOOLS_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools"));
    roots
        .iter()
        .map(|root| root.join("node/node_modules/oauth2-mock-server"))
        .find(|dir| dir.join("package.json").is_file())
        .context("oauth2-mock-server is not installed: run .ci/install-tools.sh")
}

fn text(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl OAuthServer {
    /// Starts a server on a free loopback port and waits until it accepts requests.
    // The harness talks to the server as a third party, not through the agent's client.
    #[allow(clippy::disallowed_methods)]
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/oauth-server.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .arg(package_dir()?)
            // The script exits when stdin closes, so it cannot outlive the test process.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start node (oauth2-mock-server)")?;
        let stdout = child.stdout.take().context("no stdout from node")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = crate::harness::within(
            "oauth2-mock-server to listen",
            START_TIMEOUT,
            lines.next_line(),
        )
        .await?
        .context("read oauth2-mock-server's output")?;
        let Some(line) = first else {
            bail!(
                "oauth2-mock-server exited before listening: {:?}",
                child.try_wait()
            );
        };
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("unexpected first line from oauth-server.mjs: {line}"))?;
        let port = ready
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("no port in {line}"))?;
        let client = reqwest::Client::builder()
            .timeout(crate::harness::pace::scaled(Duration::from_secs(10)))
            .build()?;
        Ok(OAuthServer {
            _child: child,
            port,
            client,
        })
    }

    /// `http://127.0.0.1:PORT`: the issuer, for discovery.
    pub(crate) fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/token`.
    pub(crate) fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// `http://127.0.0.1:PORT/userinfo`.
    pub(crate) fn userinfo_endpoint(&self) -> String {
        format!("{}/userinfo", self.issuer())
    }

    /// `http://127.0.0.1:PORT/introspect` (RFC 7662).
    pub(crate) fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.issuer())
    }

    /// `http://127.0.0.1:PORT`: the grant for this plaintext server, for
    /// `--grant-http`, `[[plugin]] http` and a manifest's `needs.http` (a grant
    /// without a scheme is HTTPS only).
    pub(crate) fn grant(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes how later token requests are answered.
    pub(crate) async fn set(&self, settings: Settings) -> anyhow::Result<()> {
        let mut body = serde_json::Map::new();
        if let Some(v) = settings.expires_in {
            body.insert("expires_in".into(), v.into());
        }
        if let Some(v) = settings.issue_refresh_token {
            body.insert("issue_refresh_token".into(), v.into());
        }
        if let Some(v) = settings.delay_ms {
            body.insert("delay_ms".into(), v.into());
        }
        if let Some(v) = settings.unavailable {
            body.insert("unavailable".into(), v.into());
        }
        let res = self
            .client
            .post(format!("{}/__control/config", self.issuer()))
            .json(&Value::Object(body))
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("oauth server refused the settings: {}", res.text().await?);
        }
        Ok(())
    }

    /// Every token request answered so far, oldest first.
    pub(crate) async fn requests(&self) -> anyhow::Result<Vec<TokenRequest>> {
        let all: Vec<Value> = self
            .client
            .get(format!("{}/__control/requests", self.issuer()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(all
            .iter()
            .map(|r| TokenRequest {
                grant_type: text(r, "grant_type").unwrap_or_default(),
                auth: text(r, "auth").unwrap_or_default(),
                client_id: text(r, "client_id"),
                client_secret: text(r, "client_secret"),
                refresh_token: text(r, "refresh_token"),
                scope: text(r, "scope"),
                audience: text(r, "audience"),
                status: r
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// How many token requests with `grant_type = grant` were answered (any status).
    pub(crate) async fn token_requests(&self, grant: &str) -> anyhow::Result<usize> {
        Ok(self
            .requests()
            .await?
            .iter()
            .filter(|r| r.grant_type == grant)
            .count())
    }

    /// Forgets the recorded requests.
    pub(crate) async fn reset(&self) -> anyhow::Result<()> {
        self.client
            .post(format!("{}/__control/reset", self.issuer()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Installs the built `oauth2` plugin into `dir` as `oauth2.wasm` beside an
    /// `oauth2.toml` manifest that needs this server's authority (the shipped manifest
    /// needs none: the operator names the server). Returns the `.wasm` path.
    pub(crate) fn install_plugin(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        // `wasm::plugin` copies through a per-process temp name: one caller at a time.
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        let built = crate::harness::wasm::plugin("oauth2")?;
        let shipped = built.with_extension("toml");
        let mut manifest: toml::Table = toml::from_str(
            &std::fs::read_to_string(&shipped)
                .with_context(|| format!("read {}", shipped.display()))?,
        )?;
        let mut needs = toml::Table::new();
        needs.insert(
            "http".into(),
            toml::Value::Array(vec![toml::Value::String(self.grant())]),
        );
        manifest.insert("needs".into(), toml::Value::Table(needs));
        std::fs::create_dir_all(dir)?;
        let wasm = dir.join("oauth2.wasm");
        std::fs::copy(&built, &wasm)?;
        std::fs::write(dir.join("oauth2.toml"), toml::to_string(&manifest)?)?;
        Ok(wasm)
    }
}
