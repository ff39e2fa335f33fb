//! The agent under test: a temp folder made by `latchkey init`, the `latchkey run`
//! process serving it (stdout and stderr captured to files), and the CLI pointed at it.
//!
//! The process is killed when the [`Agent`] is dropped, and the end of its log is
//! printed then (the test runner shows it only when the test fails): the last
//! [`TAIL_LINES`](super::logs::TAIL_LINES) lines, never all of it, with the path of
//! the whole file. The folder is deleted unless `LATCHKEY_KEEP_TEST_DIRS=1`.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use latchkey::client::{Client, Endpoint};
use latchkey::secret::SecretString;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use super::api::Api;
use super::{binary, eventually, free_port, logs, within};

/// How long the agent may take to answer its first health check (scaled by the
/// machine's pace, like every deadline here: see `harness::pace`).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long one CLI command may take.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// How long an audit record may take to reach the file.
const AUDIT_DEADLINE: Duration = Duration::from_secs(5);
/// Third-party targets stay at this level when a bare `debug` or `trace` is asked for.
const THIRD_PARTY_LEVEL: &str = "info";

/// Variables the binary reads; removed from every child so the developer's shell
/// cannot change what a test does.
const AMBIENT_VARS: &[&str] = &[
    "LATCHKEY_DIR",
    "LATCHKEY_ADDR",
    "LATCHKEY_CERT",
    "LATCHKEY_KEY",
    "LATCHKEY_CACERT",
    "LATCHKEY_CONFIG",
    "LATCHKEY_LOG",
    "LATCHKEY_LOG_FORMAT",
    "LATCHKEY_KEK",
    "RUST_LOG",
];

/// Which listener a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The Unix socket (`DIR/run/latchkey.sock`).
    Socket,
    /// The loopback TCP port (only with [`AgentBuilder::tcp`]).
    Tcp,
}

/// A client certificate and its key, as files.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Its SPIFFE id, e.g. `spiffe://latchkey.local/app/web`.
    pub(crate) id: String,
    /// Certificate (PEM).
    pub(crate) cert: PathBuf,
    /// Private key (PEM).
    pub(crate) key: PathBuf,
    /// Serial number as `cert issue` printed it (none for the admin certificate).
    pub(crate) serial: Option<String>,
}

/// What a CLI command did.
#[derive(Debug)]
pub(crate) struct CliOutput {
    /// Exit code (-1 when killed by a signal).
    pub(crate) code: i32,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

impl CliOutput {
    /// Fails unless the command exited 0.
    pub(crate) fn success(self) -> anyhow::Result<Self> {
        if self.code != 0 {
            bail!(
                "command exited {}\n--- stdout\n{}--- stderr\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Sets up an agent; [`AgentBuilder::start`] initialises, starts and waits for it.
#[derive(Debug, Default)]
pub(crate) struct AgentBuilder {
    tcp: bool,
    log_level: Option<String>,
    json_logs: bool,
    settings: Vec<(String, String)>,
    appended: String,
    env: Vec<(String, String)>,
}

impl AgentBuilder {
    /// Appends raw TOML (e.g. an `[upstream]` table) to the generated config.
    pub(crate) fn append(mut self, toml: &str) -> Self {
        self.appended.push('\n');
        self.appended.push_str(toml);
        self.appended.push('\n');
        self
    }

    /// Sets a variable in the environment of every `latchkey run` of this agent
    /// (e.g. AWS credentials for the SDK's chain).
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Also listen on a free loopback TCP port.
    pub(crate) fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// `--log-level` for the agent. A bare `debug` or `trace` applies to latchkey's own
    /// targets (`latchkey`, `latchkey_plugin_host`, …) while every other crate stays at
    /// `info`: at `trace`, Cranelift and wasmtime alone log about a gigabyte compiling
    /// one guest, and sled, hyper and rustls megabytes more. Anything else (`warn`, or
    /// directives) is passed as written; [`AgentBuilder::log_filter`] for all crates.
    pub(crate) fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(own_targets_at(level));
        self
    }

    /// `--log-level` exactly as given (RUST_LOG syntax), third-party crates included:
    /// `.log_filter("trace")` logs everything wasmtime does.
    pub(crate) fn log_filter(mut self, directives: &str) -> Self {
        self.log_level = Some(directives.to_owned());
        self
    }

    /// Logs as JSON lines.
    pub(crate) fn json_logs(mut self) -> Self {
        self.json_logs = true;
        self
    }

    /// Replaces the value of `key` (the first line of the generated config that sets
    /// it) with `value`, written as TOML: `.setting("max_body_bytes", "1024")`.
    pub(crate) fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Appends a `[[policy]]` rule to the generated config.
    pub(crate) fn allow(mut self, identity: &str, paths: &[&str], operations: &[&str]) -> Self {
        let list = |items: &[&str]| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.appended.push_str(&format!(
            "\n[[policy]]\nidentity = {identity:?}\npaths = [{}]\noperations = [{}]\n",
            list(paths),
            list(operations)
        ));
        self
    }

    /// Runs `latchkey init` on a new temp folder, applies the config changes, starts
    /// `latchkey run` and waits until it answers `/v1/health` over mTLS.
    pub(crate) async fn start(self) -> anyhow::Result<Agent> {
        let bin = binary()?;
        let root = logs::tempdir("latchkey-e2e-")?;
        let dir = root.path().join("agent");
        let tcp = if self.tcp {
            Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        } else {
            None
        };
        let mut run_flags = Vec::new();
        if let Some(level) = &self.log_level {
            run_flags.extend(["--log-level".to_owned(), level.clone()]);
        }
        if self.json_logs {
            run_flags.extend(["--log-format".to_owned(), "json".to_owned()]);
        }
        let mut agent = Agent {
            root,
            dir,
            bin,
            tcp,
            run_flags,
            run_env: self.env.clone(),
            child: Mutex::new(None),
            log_shown: AtomicBool::new(false),
        };
        let mut init: Vec<OsString> = vec!["init".into(), "--dir".into(), agent.dir.clone().into()];
        if let Some(addr) = tcp {
            init.extend(["--tcp".into(), addr.to_string().into()]);
        }
        agent
            .cli(init)
            .without_dir()
            .run()
            .await?
            .success()
            .context("latchkey init failed")?;
        let config_path = agent.config_path();
        let mut text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        for (key, value) in &self.settings {
            text = set_key(&text, key, value)?;
        }
        text.push_str(&self.appended);
        std::fs::write(&config_path, text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        agent.start().await?;
        Ok(agent)
    }
}

/// `trace` → `info,latchkey=trace`; see [`AgentBuilder::log_level`].
fn own_targets_at(level: &str) -> String {
    if level.eq_ignore_ascii_case("trace") || level.eq_ignore_ascii_case("debug") {
        format!("{THIRD_PARTY_LEVEL},latchkey={level}")
    } else {
        level.to_owned()
    }
}

fn set_key(text: &str, key: &str, value: &str) -> anyhow::Result<String> {
    let mut done = false;
    let mut out = String::with_capacity(text.len() + value.len());
    for line in text.lines() {
        let sets_key = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if sets_key && !done {
            out.push_str(&format!("{key} = {value}"));
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !done {
        bail!("the generated config sets no {key:?}");
    }
    Ok(out)
}

/// A running (or stopped) agent on its own temp folder.
pub(crate) struct Agent {
    root: TempDir,
    dir: PathBuf,
    bin: PathBuf,
    tcp: Option<SocketAddr>,
    run_flags: Vec<String>,
    run_env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    /// Whether a failure message carried the end of the log already.
    log_shown: AtomicBool,
}

impl Agent {
    /// A builder: `Agent::builder().tcp().start().await?`.
    pub(crate) fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The folder made by `latchkey init`.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/latchkey.toml`.
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join("latchkey.toml")
    }

    /// The Unix socket the agent listens on.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("run/latchkey.sock")
    }

    /// The loopback TCP address, when started with [`AgentBuilder::tcp`].
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The sled database folder.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The CA certificate (PEM file).
    pub(crate) fn ca_path(&self) -> PathBuf {
        self.dir.join("ca/ca.pem")
    }

    /// A scratch folder outside the agent's folder, for test files.
    pub(crate) fn scratch(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    /// The admin certificate made by `init`.
    pub(crate) fn admin_identity(&self) -> Identity {
        Identity {
            id: "spiffe://latchkey.local/admin/admin".to_owned(),
            cert: self.dir.join("clients/admin.pem"),
            key: self.dir.join("clients/admin.key"),
            serial: None,
        }
    }

    /// Where a client connects.
    pub(crate) fn endpoint(&self, via: Via) -> anyhow::Result<Endpoint> {
        match via {
            Via::Socket => Ok(Endpoint::Unix(self.socket())),
            Via::Tcp => self
                .tcp
                .map(Endpoint::Tcp)
                .ok_or_else(|| anyhow!("this agent was started without .tcp()")),
        }
    }

    /// A TLS client config presenting `identity` and trusting the agent's CA.
    pub(crate) fn tls_for(&self, identity: &Identity) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let ca = read(&self.ca_path())?;
        let cert = read(&identity.cert)?;
        let key = SecretString::new(read(&identity.key)?);
        latchkey::tls::client_config(&ca, &cert, &key)
            .map_err(|e| anyhow!("cannot build a TLS config for {}: {e}", identity.id))
    }

    /// An API client with the admin certificate, over the Unix socket.
    pub(crate) fn admin(&self) -> anyhow::Result<Api> {
        self.client_for(&self.admin_identity())
    }

    /// An API client with `identity`'s certificate, over the Unix socket.
    pub(crate) fn client_for(&self, identity: &Identity) -> anyhow::Result<Api> {
        self.client_via(identity, Via::Socket)
    }

    /// An API client with `identity`'s certificate, over the given listener.
    pub(crate) fn client_via(&self, identity: &Identity, via: Via) -> anyhow::Result<Api> {
        let tls = self.tls_for(identity)?;
        Ok(Api::new(Client::new(self.endpoint(via)?, tls)))
    }

    /// `latchkey cert issue --app APP [--tenant T]`.
    pub(crate) async fn issue_cert(
        &self,
        app: &str,
        tenant: Option<&str>,
    ) -> anyhow::Result<Identity> {
        let mut args = vec!["cert", "issue", "--app", app];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        let out = self.cli(args).run().await?.success()?;
        let line = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| anyhow!("`cert issue` printed no {name:?} line:\n{}", out.stdout))
        };
        let stem = match tenant {
            Some(t) => format!("{t}.{app}"),
            None => app.to_owned(),
        };
        Ok(Identity {
            id: line("identity:")?,
            cert: self.dir.join(format!("clients/{stem}.pem")),
            key: self.dir.join(format!("clients/{stem}.key")),
            serial: Some(line("serial:")?),
        })
    }

    /// `latchkey cert revoke --serial S`.
    pub(crate) async fn revoke(&self, identity: &Identity) -> anyhow::Result<()> {
        let serial = identity
            .serial
            .as_deref()
            .ok_or_else(|| anyhow!("{} has no serial to revoke", identity.id))?;
        self.cli(["cert", "revoke", "--serial", serial])
            .run()
            .await?
            .success()?;
        Ok(())
    }

    /// A `latchkey` command line run as a client of this agent (`LATCHKEY_DIR` set to
    /// its folder, so `get`/`put`/`list`/`rm`/`cert` use the admin certificate and the
    /// socket unless told otherwise).
    pub(crate) fn cli<I, S>(&self, args: I) -> CliCall<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        CliCall {
            agent: self,
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            env: Vec::new(),
            set_dir: true,
            cwd: None,
        }
    }

    /// Starts `latchkey run` (again) and waits until it serves (health 200, 429 or 503
    /// with a damaged store).
    pub(crate) async fn start(&mut self) -> anyhow::Result<()> {
        {
            let mut guard = self.lock_child();
            if let Some(child) = guard.as_mut() {
                if child.try_wait()?.is_none() {
                    bail!("the agent is running already");
                }
            }
            let out = self.log_file("agent.stdout")?;
            let err = self.log_file("agent.stderr")?;
            let mut cmd = Command::new(&self.bin);
            cmd.args(&self.run_flags)
                .arg("run")
                .arg("--config")
                .arg(self.config_path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for var in AMBIENT_VARS {
                cmd.env_remove(var);
            }
            cmd.envs(self.run_env.iter().map(|(k, v)| (k, v)));
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", self.bin.display()))?;
            *guard = Some(child);
        }
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let admin = self.admin_identity();
        let mut vias = vec![Via::Socket];
        if self.tcp.is_some() {
            vias.push(Via::Tcp);
        }
        let admin = &admin;
        for via in vias {
            let what = format!("the agent to answer /v1/health via {via:?}");
            let result = eventually(&what, START_DEADLINE, || async move {
                if let Some(status) = self.exit_status() {
                    return Some(Err(anyhow!("the agent exited early ({status})")));
                }
                let api = self.client_via(admin, via).ok()?;
                // 429: serving, degraded (a short-lived certificate, an upstream
                // down); 503: serving, with a damaged store (the tests check the
                // report).
                match api.health().await {
                    Ok(answer) if matches!(answer.status, 200 | 429 | 503) => Some(Ok(())),
                    _ => None,
                }
            })
            .await
            .and_then(|r| r);
            if let Err(e) = result {
                return Err(e.context(self.log_tail_for_failure()));
            }
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the process to exit; returns how it exited.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| anyhow!("bad pid"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot send SIGTERM to the agent")?;
        let this: &Agent = self;
        let status = eventually(
            "the agent to exit after SIGTERM",
            STOP_DEADLINE,
            || async move { this.exit_status() },
        )
        .await;
        match status {
            Ok(status) => Ok(status),
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// Kills the process with SIGKILL — a crash, no cleanup — and waits until it is gone.
    pub(crate) async fn sigkill(&mut self) -> anyhow::Result<()> {
        self.kill();
        let this: &Agent = self;
        eventually(
            "the agent to die after SIGKILL",
            STOP_DEADLINE,
            || async move { this.exit_status() },
        )
        .await?;
        Ok(())
    }

    /// Stops the agent (which must exit cleanly) and starts it again.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        let status = self.stop().await?;
        if !status.success() {
            bail!(
                "the agent did not stop cleanly ({status})\n{}",
                self.log_tail_for_failure()
            );
        }
        self.start().await
    }

    /// The process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut guard = self.lock_child();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Whether the process is running.
    pub(crate) fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// How the process exited, once it has.
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.lock_child();
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&self) {
        let mut guard = self.lock_child();
        if let Some(child) = guard.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.root.path().join(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// The agent's log file (its stderr, over all its runs).
    pub(crate) fn log_path(&self) -> PathBuf {
        self.root.path().join("agent.stderr")
    }

    /// The end of the agent's log (and of its stdout, if it wrote any), with the path
    /// of the whole file: what a failure message shows. Never the whole log.
    pub(crate) fn log_tail(&self) -> String {
        let mut text = logs::tail(&self.log_path());
        if text.is_empty() {
            text = format!(
                "--- the agent's log is empty: {}\n",
                logs::whereabouts(&self.log_path())
            );
        }
        text.push_str(&logs::tail(&self.root.path().join("agent.stdout")));
        text
    }

    /// [`Agent::log_tail`], remembered so that dropping the agent does not print it again.
    fn log_tail_for_failure(&self) -> String {
        self.log_shown.store(true, Ordering::Relaxed);
        self.log_tail()
    }

    /// The first 20 lines of the agent's log that contain `needle`: what a failure
    /// message shows of lines that should not be there (`"panicked"`).
    pub(crate) fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(needle))
            .take(20)
            .map(str::to_owned)
            .collect()
    }

    /// Everything the agent wrote to stderr (its log) and stdout, over all its runs: for
    /// searching. A failure message shows [`Agent::log_tail`] instead.
    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["agent.stderr", "agent.stdout"] {
            if let Ok(part) = std::fs::read_to_string(self.root.path().join(name)) {
                text.push_str(&part);
            }
        }
        text
    }

    /// The audit file `latchkey init`'s config names: `DIR/audit/audit.log`.
    pub(crate) fn audit_path(&self) -> PathBuf {
        self.dir.join("audit/audit.log")
    }

    /// The raw audit file.
    pub(crate) fn audit_text(&self) -> String {
        std::fs::read_to_string(self.audit_path()).unwrap_or_default()
    }

    /// The audit records written so far.
    pub(crate) fn audit_records(&self) -> anyhow::Result<Vec<Value>> {
        self.audit_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| format!("audit line is not JSON: {l}"))
            })
            .collect()
    }

    /// Waits for an audit record that `matches`, and returns it.
    pub(crate) async fn wait_for_audit(
        &self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_for_audit_within(what, AUDIT_DEADLINE, matches)
            .await
    }

    /// [`Agent::wait_for_audit`] for a record of something the agent does later on its
    /// own (a retirement after a grace window): waits up to `deadline` (scaled).
    pub(crate) async fn wait_for_audit_within(
        &self,
        what: &str,
        deadline: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let matches = &matches;
        let found = eventually(
            &format!("an audit record: {what}"),
            deadline,
            || async move { self.audit_records().ok()?.into_iter().find(|r| matches(r)) },
        )
        .await;
        found.with_context(|| logs::tail(&self.audit_path()))
    }
}

impl Drop for Agent {
    // Printed to the test's captured output: shown only when the test fails.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        self.kill();
        if self.log_shown.load(Ordering::Relaxed) {
            eprintln!("--- agent log: {}", logs::whereabouts(&self.log_path()));
        } else {
            eprint!("{}", self.log_tail());
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// One `latchkey` command line; see [`Agent::cli`].
pub(crate) struct CliCall<'a> {
    agent: &'a Agent,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    set_dir: bool,
    cwd: Option<PathBuf>,
}

impl CliCall<'_> {
    /// Runs it in this working directory (otherwise the test's own).
    pub(crate) fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Feeds these bytes on standard input.
    pub(crate) fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets a variable for this command only.
    pub(crate) fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Presents `identity`'s certificate (`--cert`, `--key`).
    pub(crate) fn presenting(mut self, identity: &Identity) -> Self {
        self.args.extend([
            "--cert".into(),
            identity.cert.clone().into(),
            "--key".into(),
            identity.key.clone().into(),
        ]);
        self
    }

    /// Does not set `LATCHKEY_DIR`.
    pub(crate) fn without_dir(mut self) -> Self {
        self.set_dir = false;
        self
    }

    /// Runs it to completion (within a deadline).
    pub(crate) async fn run(self) -> anyhow::Result<CliOutput> {
        let shown = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = tokio::process::Command::new(&self.agent.bin);
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in AMBIENT_VARS {
            cmd.env_remove(var);
        }
        if self.set_dir {
            cmd.env("LATCHKEY_DIR", &self.agent.dir);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run latchkey {shown}"))?;
        if let Some(bytes) = self.stdin {
            let mut input = child.stdin.take().context("no stdin pipe")?;
            input
                .write_all(&bytes)
                .await
                .context("cannot write stdin")?;
            drop(input);
        }
        let output = within(
            &format!("latchkey {shown} to finish"),
            CLI_DEADLINE,
            child.wait_with_output(),
        )
        .await?
        .with_context(|| format!("latchkey {shown}"))?;
        Ok(CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
