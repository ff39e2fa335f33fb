//! A private, throwaway PostgreSQL server with real password authentication.
//!
//! The machine's PostgreSQL on 127.0.0.1:5432 trusts every loopback login (`trust`
//! in `pg_hba.conf`), so any password works there and a rotation cannot be proven on
//! it. [`PgServer::start`] runs a cluster of its own instead:
//!
//! - `initdb --auth=scram-sha-256 -U postgres` with a random admin password, so every
//!   login (TCP and Unix socket) must present the right password;
//! - `postgres -p PORT -c listen_addresses=127.0.0.1` on a free loopback port, with
//!   its Unix socket inside the data folder, `log_statement=ddl` (every `ALTER ROLE`
//!   and `CREATE ROLE` lands in [`PgServer::log`]) and durability off (`fsync=off`:
//!   the data is thrown away);
//! - as the `postgres` system user when the tests run as root (initdb and postgres
//!   refuse to run as root), with the folders made traversable for it.
//!
//! `initdb` takes 1.5 to 2.5 s, so it runs once: the initialized cluster is kept as a
//! template in `$TMPDIR/latchkey-e2e-pg-<major>-<uid>/` (reused by later test runs) and
//! each server starts on a copy. A server then starts in about 0.25 s (copying the
//! 39 MB template 0.15 s, start and first login 0.1 s). Dropping the [`PgServer`] asks for a fast shutdown
//! (SIGINT), kills the server if it has not stopped within 5 s, and deletes its folder
//! (kept with `LATCHKEY_KEEP_TEST_DIRS=1`, with its `server.log`). Servers whose test
//! process died without dropping them are stopped (and their folders deleted, unless
//! kept) by the next test process's first [`PgServer::start`]. Deadlines are scaled by
//! the machine's pace (`harness::pace`); failures show the end of the server's log.
//!
//! The binaries come from `$LATCHKEY_PG_BINDIR`, or the newest
//! `/usr/lib/postgresql/<major>/bin` (Debian's layout).
//!
//! ```ignore
//! use crate::harness::postgres::PgServer;
//!
//! let pg = PgServer::start().await?;
//! pg.execute("CREATE ROLE app LOGIN PASSWORD 'first-password'").await?;
//! assert!(pg.can_login("app", "first-password").await?);
//! assert!(!pg.can_login("app", "wrong").await?);          // scram: passwords are checked
//!
//! // Give the agent (or `latchkey plugin call --sql db=env:DB_URL`) the admin URL…
//! let admin = pg.admin_url();                              // postgres://postgres:…@127.0.0.1:PORT/postgres
//! // …and the app its own:
//! let app = pg.url_for("app", "first-password", "postgres");
//!
//! // Count password changes as the server saw them.
//! let changes = pg.statements().iter().filter(|s| s.starts_with("ALTER ROLE \"app\"")).count();
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;

/// How long a server may take to accept its first login (scaled by the pace).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running private PostgreSQL server (see the module docs). Stops on drop.
pub(crate) struct PgServer {
    child: Child,
    port: u16,
    password: String,
    log_path: PathBuf,
    started_in: Duration,
    // Last: removed after the server has stopped.
    _dir: tempfile::TempDir,
}

/// The initialized cluster every server starts from.
struct Template {
    bindir: PathBuf,
    data: PathBuf,
    password: String,
    /// `(uid, gid)` of the `postgres` system user when running as root.
    owner: Option<(u32, u32)>,
}

impl PgServer {
    /// Starts a server on a free loopback port and waits until the admin can log in.
    /// A port taken between picking and binding is retried with another.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        static REAPED: OnceLock<()> = OnceLock::new();
        REAPED.get_or_init(reap_orphans);
        let begun = Instant::now();
        let template = tokio::task::spawn_blocking(template)
            .await
            .context("template task failed")??;
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(template, begun).await {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("postgres did not start")))
    }

    async fn start_once(template: &'static Template, begun: Instant) -> anyhow::Result<Self> {
        let dir = super::logs::tempdir(SERVER_PREFIX)?;
        fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
        // The postgres user must reach its data folder inside this root-owned one.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        let copied = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(&template.data)
            .arg(&data)
            .status()
            .await
            .context("run cp")?;
        if !copied.success() {
            bail!(
                "cannot copy the postgres template {}",
                template.data.display()
            );
        }
        let port = super::free_port()?;
        let log_path = dir.path().join("server.log");
        let log = fs::File::create(&log_path)?;
        let mut command = Command::new(template.bindir.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .args(["-c", "log_statement=ddl"])
            .args(["-c", "logging_collector=off"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=40"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = template.owner {
            // std drops the supplementary groups too when switching from root.
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().context("start postgres")?;
        let mut server = PgServer {
            child,
            port,
            password: template.password.clone(),
            log_path,
            started_in: Duration::ZERO,
            _dir: dir,
        };
        server.wait_ready(&data).await?;
        server.started_in = begun.elapsed();
        Ok(server)
    }

    /// Waits until the admin can log in to *this* server: another test's server
    /// (same template, same password) may hold the port if two picked it at once, so
    /// the data folder it reports must be ours.
    async fn wait_ready(&mut self, data: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + super::pace::scaled(START_TIMEOUT);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("postgres exited with {status}\n{}", self.log_tail());
            }
            match PgConnection::connect_with(&self.admin_options()).await {
                Ok(mut conn) => {
                    let served: String =
                        sqlx::query_scalar("SELECT current_setting('data_directory')")
                            .fetch_one(&mut conn)
                            .await?;
                    let _ = conn.close().await;
                    let ours = fs::canonicalize(data)?;
                    if fs::canonicalize(&served).ok().as_deref() != Some(ours.as_path()) {
                        bail!("port {} is another server's ({served})", self.port);
                    }
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} (last error: {e})\n{}",
                        super::timed_out("postgres to accept logins", START_TIMEOUT),
                        self.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// The loopback port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
    /// How long `start` took (template copy, start, first login).
    pub(crate) fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The superuser's password (random per template).
    pub(crate) fn admin_password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`: what the agent's SQL
    /// connection (or `latchkey plugin call --sql NAME=env:VAR`) gets.
    pub(crate) fn admin_url(&self) -> String {
        self.url_for("postgres", &self.password, "postgres")
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DB`, user and password percent-encoded.
    pub(crate) fn url_for(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            encode(user),
            encode(password),
            self.port,
            encode(db)
        )
    }

    fn admin_options(&self) -> PgConnectOptions {
        self.options("postgres", &self.password)
    }

    fn options(&self, user: &str, password: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(user)
            .password(password)
            .database("postgres")
    }

    /// Runs admin SQL (one or more statements, simple protocol) as `postgres` on a
    /// fresh connection; returns the rows affected.
    pub(crate) async fn execute(&self, sql: &str) -> anyhow::Result<u64> {
        let mut conn = PgConnection::connect_with(&self.admin_options())
            .await
            .context("connect as postgres")?;
        let done = sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("run {sql:?}"))?;
        let _ = conn.close().await;
        Ok(done.rows_affected())
    }

    /// The first column of every row of an admin query, as text (cast in SQL:
    /// `SELECT rolcanlogin::text FROM pg_roles …`).
    pub(crate) async fn query_column(&self, sql: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = PgConnection::connect_with(&self.admin_options())
            .await
            .context("connect as postgres")?;
        let rows: Vec<Option<String>> = sqlx::query_scalar(sql)
            .fetch_all(&mut conn)
            .await
            .with_context(|| format!("run {sql:?}"))?;
        let _ = conn.close().await;
        Ok(rows.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Whether `user` / `password` can log in to database `postgres`, over TCP with
    /// SCRAM. `false` when the server refuses the login (SQLSTATE class 28: wrong
    /// password, no such role, `NOLOGIN`); other failures are errors.
    pub(crate) async fn can_login(&self, user: &str, password: &str) -> anyhow::Result<bool> {
        match PgConnection::connect_with(&self.options(user, password)).await {
            Ok(conn) => {
                let _ = conn.close().await;
                Ok(true)
            }
            Err(e) => {
                let refused = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c.starts_with("28"));
                if refused {
                    Ok(false)
                } else {
                    Err(anyhow!(e).context(format!("log in as {user}")))
                }
            }
        }
    }

    /// The server's log so far (stderr: startup, errors, and with `log_statement=ddl`
    /// every DDL statement as `LOG:  statement: …`).
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The end of the server's log with its path, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        super::logs::tail(&self.log_path)
    }

    /// The statements the server logged, in order (`log_statement=ddl`: role and
    /// schema changes), without the log line prefix. A simple query is logged as
    /// `LOG:  statement: …`, one sent through the extended protocol (how the plugin
    /// host sends every statement) as `LOG:  execute <name>: …`.
    pub(crate) fn statements(&self) -> Vec<String> {
        self.log().lines().filter_map(logged_statement).collect()
    }
}

/// The statement of one server log line, if it logs one.
fn logged_statement(line: &str) -> Option<String> {
    if let Some((_, statement)) = line.split_once("LOG:  statement: ") {
        return Some(statement.to_owned());
    }
    let (_, rest) = line.split_once("LOG:  execute ")?;
    let (_name, statement) = rest.split_once(": ")?;
    Some(statement.to_owned())
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT = fast shutdown: ends sessions, checkpoints, exits.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + super::pace::scaled(STOP_TIMEOUT);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prefix of every server's folder in `$TMPDIR`.
const SERVER_PREFIX: &str = "latchkey-pg-";
/// The file in a server's folder naming the test process that started it.
const OWNER_FILE: &str = "owner.pid";

/// Stops the servers of test processes that died without dropping their
/// [`PgServer`] (killed by a signal or a CI timeout), and deletes their folders. A
/// server is killed only if its owner is gone and its postmaster's command line names
/// that server's own data folder, so a reused pid is never hit.
fn reap_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_server = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(SERVER_PREFIX));
        let owner = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let Some(owner) = owner.filter(|_| is_server) else {
            continue;
        };
        if is_running(owner) {
            continue;
        }
        let data = dir.join("data");
        let postmaster = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = postmaster {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let names_ours = String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy());
            if let (true, Some(pid)) = (names_ours, rustix::process::Pid::from_raw(pid)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if !super::logs::keep_dirs() {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Whether process `pid` exists and is not a zombie (a killed process nobody has
/// waited for yet still has its `/proc` entry).
fn is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z')
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The template cluster, made once per machine and user (and found again by later
/// runs), under a lock for the tests of this process.
fn template() -> anyhow::Result<&'static Template> {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    if let Some(t) = TEMPLATE.get() {
        return Ok(t);
    }
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = TEMPLATE.get() {
        return Ok(t);
    }
    let made = make_template()?;
    Ok(TEMPLATE.get_or_init(|| made))
}

fn make_template() -> anyhow::Result<Template> {
    let bindir = bindir()?;
    let major = bindir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pg".into());
    let owner = if rustix::process::geteuid().is_root() {
        Some(system_user("postgres")?)
    } else {
        None
    };
    let uid = rustix::process::geteuid().as_raw();
    let root = std::env::temp_dir().join(format!("latchkey-e2e-pg-{major}-{uid}"));
    if root.join("ready").is_file() {
        return load_template(bindir, &root, owner);
    }

    // Build beside the final place, then rename: other test processes either see
    // nothing or a complete template.
    let build = std::env::temp_dir().join(format!(
        "latchkey-e2e-pg-{major}-{uid}.{}.build",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)?;
    fs::set_permissions(&build, fs::Permissions::from_mode(0o755))?;
    let password = random_password()?;
    let pwfile = build.join("password");
    fs::write(&pwfile, &password)?;
    fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
    let data = build.join("data");
    fs::create_dir(&data)?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        for path in [&pwfile, &data] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
    }
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "--auth=scram-sha-256",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--no-sync", "--no-instructions"])
        .stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        initdb.uid(uid).gid(gid);
    }
    let out = initdb.output().context("run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(build.join("ready"), "")?;
    if let Err(e) = fs::rename(&build, &root) {
        // Another process finished first: use its template.
        let _ = fs::remove_dir_all(&build);
        if !root.join("ready").is_file() {
            return Err(anyhow!(e).context(format!("cannot place {}", root.display())));
        }
    }
    load_template(bindir, &root, owner)
}

fn load_template(
    bindir: PathBuf,
    root: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Template> {
    let password = fs::read_to_string(root.join("password"))
        .with_context(|| format!("read {}/password", root.display()))?;
    Ok(Template {
        bindir,
        data: root.join("data"),
        password: password.trim().to_owned(),
        owner,
    })
}

/// `$LATCHKEY_PG_BINDIR`, or the newest `/usr/lib/postgresql/<major>/bin` with initdb.
fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LATCHKEY_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let base = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir(base)
        .with_context(|| {
            format!(
                "no PostgreSQL in {} (set LATCHKEY_PG_BINDIR)",
                base.display()
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!(
            "no {}/<major>/bin/initdb (set LATCHKEY_PG_BINDIR)",
            base.display()
        )
    })
}

/// `(uid, gid)` of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| anyhow!("no {name} user: initdb and postgres refuse to run as root"))
}

/// 24 random alphanumerics from the OS.
fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow!("no randomness"))?;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}
