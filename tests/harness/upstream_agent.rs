//! Upstream pieces for the sync end-to-end tests (`tests/e2e/sync.rs`):
//!
//! - [`DurableBao`]: a real OpenBao server (`bao server`, not `-dev`) with raft
//!   storage in a temp folder, initialised and unsealed by the harness, which can be
//!   killed and restarted on the same port with the same data: an honest outage.
//!   It is started and called with the shared pieces in `openbao.rs`.
//! - [`CountingProxy`]: a small HTTP/1.1 proxy in front of an upstream that records
//!   every request it forwards and the most requests in flight at once, and can add
//!   latency, so tests count what the agent really sends.
//! - TOML for the agent's `[upstream]` and `[sync]` tables.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

use crate::openbao::{spawn_bao, start_with_retries, BaoApi};
use crate::spawn::{free_port_pair, wait_until};

/// An agent caching the `moto_server` at `endpoint` (AWS Secrets Manager, deletes
/// without a recovery window) with 1 s polls, given the SDK's test credentials.
pub(crate) async fn aws_agent(endpoint: &str) -> anyhow::Result<crate::harness::Agent> {
    aws_builder(endpoint).start().await
}

/// The builder of [`aws_agent`], for tests that add to it.
pub(crate) fn aws_builder(endpoint: &str) -> crate::harness::AgentBuilder {
    let upstream = format!(
        "[upstream]\nkind = \"aws\"\nregion = {:?}\nendpoint_url = {endpoint:?}\n\
         recovery_window_days = 0\n",
        crate::moto::REGION
    );
    crate::harness::Agent::builder()
        .append(&upstream)
        .append(&sync_section("1s", "24h", 8))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// `[upstream]` for an OpenBao at `address`; `auth` is the inline table, `extra`
/// more lines of the table (e.g. `transit = { key = "latchkey" }`).
pub(crate) fn bao_upstream(address: &str, auth: &str, extra: &str) -> String {
    format!(
        "[upstream]\nkind = \"openbao\"\naddresses = [{address:?}]\n\
         connect_timeout = \"1s\"\nrequest_timeout = \"5s\"\nauth = {auth}\n{extra}\n"
    )
}

/// The inline `auth` table for a token.
pub(crate) fn token_auth(token: &str) -> String {
    format!("{{ method = \"token\", token = {token:?} }}")
}

/// `[sync]` with the given poll interval, grace period and concurrency.
pub(crate) fn sync_section(poll: &str, grace: &str, concurrency: usize) -> String {
    format!(
        "[sync]\nprefixes = [\"\"]\npoll_interval = {poll:?}\ngrace = {grace:?}\n\
         concurrency = {concurrency}\nmax_backoff = \"1s\"\n"
    )
}

/// A `bao server` with raft storage that survives a kill and a restart; [`BaoApi`]
/// (by deref) calls it with the root token.
pub(crate) struct DurableBao {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    api: BaoApi,
    unseal_key: String,
}

impl DurableBao {
    /// Starts, initialises (one unseal key), unseals, and mounts KV v2 at `secret/`.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        start_with_retries("openbao", Self::start_once).await
    }

    async fn start_once() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port_pair()?;
        std::fs::create_dir_all(dir.path().join("raft"))?;
        let config = format!(
            "storage \"raft\" {{\n  path = {:?}\n  node_id = \"n1\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
             cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\n\
             cluster_addr = \"http://127.0.0.1:{}\"\n",
            dir.path().join("raft").display().to_string(),
            port + 1,
            port + 1
        );
        std::fs::write(dir.path().join("bao.hcl"), config)?;
        let mut bao = Self {
            dir,
            port,
            child: None,
            api: BaoApi::new(format!("http://127.0.0.1:{port}"), None, "")?,
            unseal_key: String::new(),
        };
        bao.spawn().await?;
        let (status, init) = bao
            .call(
                None,
                "PUT",
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await?;
        if status != 200 {
            bail!("sys/init answered {status}: {init}");
        }
        bao.api
            .set_token(init["root_token"].as_str().context("init: no root_token")?);
        bao.unseal_key = init["keys_base64"][0]
            .as_str()
            .context("init: no key")?
            .to_owned();
        bao.unseal().await?;
        bao.ok(
            "POST",
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await?;
        // A fresh KV v2 mount upgrades itself for a moment; wait until it takes writes.
        let probe = json!({"data": {"ready": "yes"}});
        let this = &bao;
        wait_until("the kv mount", Duration::from_secs(30), || {
            let probe = probe.clone();
            async move {
                matches!(
                    this.api("POST", "secret/data/harness/ready", Some(probe))
                        .await,
                    Ok((200, _))
                )
            }
        })
        .await?;
        bao.ok("DELETE", "secret/metadata/harness/ready", None)
            .await?;
        Ok(bao)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let config = format!("-config={}", self.dir.path().join("bao.hcl").display());
        let child = self.child.insert(spawn_bao(self.dir.path(), [config])?);
        self.api
            .wait_started(child, "openbao to listen", |_| true)
            .await
    }

    async fn unseal(&self) -> anyhow::Result<()> {
        let (status, body) = self
            .call(
                None,
                "PUT",
                "sys/unseal",
                Some(json!({"key": self.unseal_key})),
            )
            .await?;
        if status != 200 {
            bail!("sys/unseal answered {status}: {body}");
        }
        self.wait_health("openbao to become active", |status| status == 200)
            .await
    }

    /// The root token from `sys/init`.
    pub(crate) fn root_token(&self) -> &str {
        self.token()
    }

    /// The port it listens on (the same after a restart).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): an outage.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data, and unseals it.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("openbao is running already");
        }
        self.spawn().await?;
        self.unseal().await?;
        let this = &*self;
        wait_until("kv reads after the restart", Duration::from_secs(30), || async move {
            matches!(this.api("LIST", "secret/metadata", None).await, Ok((s, _)) if s == 200 || s == 404)
        })
        .await
    }
}

impl Deref for DurableBao {
    type Target = BaoApi;

    fn deref(&self) -> &BaoApi {
        &self.api
    }
}

impl Drop for DurableBao {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// `GET`, `LIST`, ...
    pub(crate) method: String,
    /// The path without the query.
    pub(crate) path: String,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay_ms: AtomicU64,
}

/// An HTTP/1.1 proxy on a loopback port that forwards to `upstream` and counts.
pub(crate) struct CountingProxy {
    /// `http://127.0.0.1:PORT`.
    pub(crate) address: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    // A third party between the agent and the server: not the agent's client.
    #[allow(clippy::disallowed_methods)]
    pub(crate) async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(state, stream).await;
                });
            }
        });
        Ok(Self {
            address,
            state,
            task,
        })
    }

    /// Holds every request this long before forwarding it.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every request forwarded so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests with this method and path forwarded so far.
    pub(crate) fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    /// The most requests that were in flight at once.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets what was seen (counts and the in-flight maximum).
    pub(crate) fn reset(&self) {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client connection: requests one after another (keep-alive).
async fn serve(state: Arc<ProxyState>, stream: TcpStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            bail!("bad request line {line:?}");
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
            match name.as_str() {
                "content-length" => length = value.parse().context("content-length")?,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "host" | "transfer-encoding" => {}
                _ => headers.push((name, value)),
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;

        let path = target
            .split_once('?')
            .map_or(&*target, |(p, _)| p)
            .to_owned();
        state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen {
                method: method.clone(),
                path,
            });
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let forwarded = forward(&state, &method, &target, headers, body).await;
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (status, reply_headers, reply) = match forwarded {
            Ok(r) => r,
            // The upstream is down: look like it (the client sees a closed connection).
            Err(_) => return Ok(()),
        };
        let mut head = format!("HTTP/1.1 {status} X\r\n");
        for (name, value) in reply_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", reply.len()));
        write.write_all(head.as_bytes()).await?;
        write.write_all(&reply).await?;
        write.flush().await?;
        if close {
            return Ok(());
        }
    }
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

async fn forward(
    state: &ProxyState,
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> anyhow::Result<Reply> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = state
        .client
        .request(method, format!("{}{target}", state.upstream))
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let reply_headers = response
        .headers()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            )
        })
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let bytes = response.bytes().await?;
    Ok((status, reply_headers, bytes.to_vec()))
}
