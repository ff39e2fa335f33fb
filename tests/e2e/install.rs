//! The install layout as shipped: `latchkey init --user U --group G`, the systemd
//! unit in `examples/deploy/`, and the agent running as an unprivileged user with
//! only the unit's `ReadWritePaths=` writable.
//!
//! The unprivileged tests need root (to make users and to start the agent as one):
//! they make an agent user, an app user in the socket's group and a stranger, each
//! with a name unique to the run, and remove them at the end. Without root or
//! `useradd` they are skipped with a message. The writable paths are taken from the
//! unit itself and enforced as systemd does (`ProtectSystem=strict`): in a private
//! mount namespace the folder is bound read-only and each writable path is bound
//! back read-write; where no mount namespace can be made, the other paths are made
//! read-only by their modes instead.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::harness::{binary, eventually, logs};

/// The unit as shipped.
const UNIT: &str = include_str!("../../examples/deploy/latchkey.service");
/// The Kubernetes manifest as shipped.
const MANIFEST: &str = include_str!("../../examples/deploy/kubernetes-sidecar.yaml");
/// The folder the unit's paths are in.
const UNIT_DIR: &str = "/etc/latchkey";
/// How long the agent may take to answer after it starts.
const START: Duration = Duration::from_secs(20);

#[allow(clippy::print_stderr)]
fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// The unit's `ReadWritePaths=` entries, relative to [`UNIT_DIR`].
fn unit_writable_paths() -> anyhow::Result<Vec<String>> {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .context("the unit has no ReadWritePaths=")?;
    line.split_whitespace()
        .map(|p| {
            p.strip_prefix(UNIT_DIR)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(str::to_owned)
                .with_context(|| format!("{p} is not under {UNIT_DIR}"))
        })
        .collect()
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_systemd_unit_verifies() -> anyhow::Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        skip("systemd-analyze is not installed");
        return Ok(());
    }
    // `verify` checks that ExecStart's binary exists: point it at the built one.
    let bin = binary()?;
    let dir = logs::tempdir("latchkey-unit-")?;
    let unit = dir.path().join("latchkey.service");
    let text = UNIT.replace(
        "ExecStart=/usr/local/bin/latchkey ",
        &format!("ExecStart={} ", bin.display()),
    );
    anyhow::ensure!(
        text != UNIT,
        "the unit's ExecStart is not /usr/local/bin/latchkey"
    );
    std::fs::write(&unit, text)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("latchkey.service"),
        "warnings about the unit: {stderr}"
    );
    Ok(())
}

#[test]
fn the_unit_writable_paths_are_what_init_makes() -> anyhow::Result<()> {
    let root = logs::tempdir("latchkey-layout-")?;
    let dir = root.path().join("latchkey");
    run_ok(Command::new(binary()?).arg("init").arg("--dir").arg(&dir))?;
    let paths = unit_writable_paths()?;
    for must in ["data", "state", "audit", "run"] {
        assert!(paths.iter().any(|p| p == must), "{must} not in {paths:?}");
    }
    for rel in &paths {
        assert!(
            dir.join(rel).is_dir(),
            "ReadWritePaths= names {UNIT_DIR}/{rel}, which init does not make"
        );
    }
    // The unit's config is the one init writes, at the path the unit runs.
    assert!(UNIT.contains(&format!("run --config {UNIT_DIR}/latchkey.toml")));
    Ok(())
}

#[test]
fn the_kubernetes_config_is_valid_and_writes_only_to_its_empty_dirs() -> anyhow::Result<()> {
    // The ConfigMap's `latchkey.toml: |` block, unindented.
    let mut lines = MANIFEST
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("latchkey.toml: |"));
    lines.next().context("the manifest has no latchkey.toml")?;
    let text: String = lines
        .take_while(|l| *l != "---")
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let cfg =
        latchkey::config::Config::from_toml(Path::new("/etc/latchkey-config/latchkey.toml"), &text)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    for written in [
        cfg.store.path.clone(),
        cfg.store.state_dir.folder(),
        cfg.audit.path.clone(),
        cfg.listen.socket.clone().context("a socket")?,
    ] {
        assert!(
            written.starts_with("/var/lib/latchkey") || written.starts_with("/run/latchkey"),
            "{} is outside the emptyDirs",
            written.display()
        );
    }
    for dir in [
        "/var/lib/latchkey",
        "/run/latchkey",
        "/etc/latchkey-config",
        "/etc/latchkey",
    ] {
        assert!(
            MANIFEST.contains(&format!("mountPath: {dir}")),
            "{dir} is not mounted"
        );
    }
    Ok(())
}

/// Users and a group made for one test, removed when dropped.
struct Accounts {
    prefix: String,
    users: Vec<String>,
    group: Option<String>,
}

impl Accounts {
    /// `None` (after saying why) when accounts cannot be made here.
    fn new() -> Option<Accounts> {
        if !rustix::process::geteuid().is_root() {
            skip("not root: cannot make users or start the agent as one");
            return None;
        }
        for tool in ["useradd", "groupadd", "userdel", "groupdel", "setpriv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                skip(&format!("{tool} is not available"));
                return None;
            }
        }
        Some(Accounts {
            prefix: format!("lk{:x}{:x}", std::process::id(), unique()),
            users: Vec::new(),
            group: None,
        })
    }
}

/// A number that differs between runs: the clock's nanoseconds.
fn unique() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

impl Accounts {
    /// `useradd`/`groupadd` lock the account files; tests running at once retry.
    fn retry(cmd: &mut Command) -> anyhow::Result<()> {
        let mut last = String::new();
        for _ in 0..20 {
            match run_ok(cmd) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("{last}")
    }

    fn group(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}{suffix}", self.prefix);
        Self::retry(Command::new("groupadd").args(["--system", &name]))?;
        self.group = Some(name.clone());
        Ok(name)
    }

    /// A system user with its own primary group, and `extra` groups.
    fn user(&mut self, suffix: &str, extra: Option<&str>) -> anyhow::Result<String> {
        let name = format!("{}{suffix}", self.prefix);
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if let Some(g) = extra {
            cmd.args(["--groups", g]);
        }
        Self::retry(cmd.arg(&name))?;
        self.users.push(name.clone());
        Ok(name)
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Self::retry(Command::new("userdel").arg(user));
        }
        if let Some(group) = &self.group {
            let _ = Self::retry(Command::new("groupdel").arg(group));
        }
    }
}

/// A folder others may pass through (the harness's temp folders may be 0700).
fn open_root() -> anyhow::Result<tempfile::TempDir> {
    let root = logs::tempdir("latchkey-install-")?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(root)
}

/// `setpriv` into `user` (its own groups), then `args`.
fn as_user(user: &str, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--init-groups"])
        .arg(program);
    cmd
}

/// Whether this process can make a private mount namespace with bind mounts.
fn mount_namespaces() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind / /mnt 2>/dev/null || mount -t tmpfs none /mnt")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The agent, started as `user` on `dir` with only the unit's writable paths
/// writable.
struct Confined {
    child: std::process::Child,
    log: PathBuf,
}

/// What confines the agent to the unit's writable paths.
#[derive(Clone, Copy)]
enum Confinement {
    /// A read-only bind of the folder with the writable paths bound back.
    Mounts,
    /// The agent's own files elsewhere made read-only by their modes (done once).
    Modes,
}

fn confine(dir: &Path, writable: &[String]) -> anyhow::Result<Confinement> {
    if mount_namespaces() {
        return Ok(Confinement::Mounts);
    }
    // No mount namespace: every path the agent owns outside the writable ones loses
    // its write bits (the folder itself is root's already).
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| writable.contains(&n)) {
            continue;
        }
        let mut stack = vec![path];
        while let Some(p) = stack.pop() {
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                stack.extend(
                    std::fs::read_dir(&p)?
                        .map(|e| e.map(|e| e.path()))
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
            let mode = meta.permissions().mode() & 0o7777 & !0o222;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(Confinement::Modes)
}

impl Confined {
    fn start(
        how: Confinement,
        dir: &Path,
        writable: &[String],
        user: &str,
        log: PathBuf,
    ) -> anyhow::Result<Confined> {
        let bin = binary()?;
        let config = dir.join("latchkey.toml");
        let out = std::fs::File::create(&log)?;
        let mut cmd = match how {
            Confinement::Mounts => {
                // As systemd does for ProtectSystem=strict with ReadWritePaths=.
                let script = r#"set -e
dir=$1; user=$2; bin=$3; shift 3
mount --bind "$dir" "$dir"
mount -o remount,bind,ro "$dir"
for p in "$@"; do
  mount --bind "$dir/$p" "$dir/$p"
  mount -o remount,bind,rw "$dir/$p"
done
exec setpriv --reuid "$user" --regid "$user" --init-groups "$bin" run --config "$dir/latchkey.toml"
"#;
                let mut cmd = Command::new("unshare");
                cmd.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                ])
                .arg(dir)
                .arg(user)
                .arg(&bin)
                .args(writable);
                cmd
            }
            Confinement::Modes => {
                let mut cmd = as_user(user, &bin);
                cmd.arg("run").arg("--config").arg(&config);
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start the agent")?;
        Ok(Confined { child, log })
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("bad pid")?;
        // The agent is the mount namespace's `exec`ed process: it gets the signal.
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(self.child.wait()?)
    }

    fn log(&self) -> String {
        logs::tail(&self.log)
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// curl over the socket as `user`, with the app's certificate, key and the CA in
/// `certs`: the exit code, and the body with the HTTP status on the last line of
/// stdout, then curl's verbose account of the connection.
fn curl_as(user: &str, socket: &Path, certs: &Path, app: &str, path: &str) -> (i32, String) {
    let out = as_user(user, Path::new("/usr/bin/env"))
        .arg("curl")
        .args([
            "-v",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{app}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{app}.key")))
        .arg(format!("https://localhost/v1/secrets/{path}"))
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (-1, e.to_string()),
    }
}

/// `latchkey init --dir DIR --user U --group G` under a passable folder.
fn init_for(root: &Path, user: &str, group: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join("latchkey");
    run_ok(
        Command::new(binary()?)
            .arg("init")
            .arg("--dir")
            .arg(&dir)
            .args(["--user", user, "--group", group]),
    )?;
    Ok(dir)
}

/// The operator's CLI (root, admin certificate) against the agent in `dir`.
fn cli(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_ok(Command::new(binary()?).args(args).arg("--dir").arg(dir))
}

/// Waits until the operator's CLI reads `path` from the agent in `dir`.
async fn wait_serving(agent: &mut Confined, dir: &Path, path: &str) -> anyhow::Result<String> {
    let log = agent.log.clone();
    let child = std::sync::Mutex::new(&mut agent.child);
    let child = &child;
    let found = eventually("the agent to serve over its socket", START, || async move {
        let exited = child.lock().ok()?.try_wait().ok().flatten();
        if let Some(status) = exited {
            return Some(Err(anyhow::anyhow!("the agent exited ({status})")));
        }
        cli(dir, &["get", path, "--field", "password"]).ok().map(Ok)
    })
    .await
    .and_then(|r| r);
    found.with_context(|| logs::tail(&log))
}

#[tokio::test]
async fn an_unprivileged_agent_with_only_the_unit_paths_writable_serves_and_persists(
) -> anyhow::Result<()> {
    let Some(mut accounts) = Accounts::new() else {
        return Ok(());
    };
    let group = accounts.group("apps")?;
    let agent_user = accounts.user("agent", None)?;
    let app_user = accounts.user("app", Some(&group))?;
    let stranger = accounts.user("other", None)?;

    let root = open_root()?;
    let dir = init_for(root.path(), &agent_user, &group)?;
    let writable = unit_writable_paths()?;
    let how = confine(&dir, &writable)?;

    // Nothing but run/ and the socket is open to the group or others.
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        if path.ends_with("run") {
            assert_eq!(mode & 0o007, 0, "run/ is open to others: {mode:o}");
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }

    let log = root.path().join("agent.log");
    let mut agent = Confined::start(how, &dir, &writable, &agent_user, log.clone())?;
    eventually("the socket", START, || async {
        dir.join("run/latchkey.sock").exists().then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    // A secret that expires within a week: its warning is kept in state/.
    let soon = run_ok(Command::new("date").args(["-u", "-d", "+3 days", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let soon = soon.trim();
    let put = eventually("the first write", START, || async {
        cli(
            &dir,
            &[
                "put",
                "apps/web/db",
                "password=hunter2",
                "--expires-at",
                soon,
            ],
        )
        .ok()
    })
    .await;
    put.with_context(|| agent.log())?;
    assert_eq!(
        wait_serving(&mut agent, &dir, "apps/web/db").await?.trim(),
        "hunter2"
    );
    let expiry = dir.join("state/expiry.json");
    eventually("the expiry warning kept in state/", START, || async {
        expiry.is_file().then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    let kept = std::fs::read(&expiry)?;

    // The app's certificate, handed to the app user alone.
    cli(&dir, &["cert", "issue", "--app", "web"])?;
    let certs = root.path().join("web-certs");
    std::fs::create_dir(&certs)?;
    for (from, to) in [
        ("clients/web.pem", "web.pem"),
        ("clients/web.key", "web.key"),
        ("ca/ca.pem", "ca.pem"),
    ] {
        std::fs::copy(dir.join(from), certs.join(to))?;
    }
    run_ok(Command::new("chown").arg("-R").arg(&app_user).arg(&certs))?;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o700))?;

    let socket = dir.join("run/latchkey.sock");
    let (code, out) = curl_as(&app_user, &socket, &certs, "web", "apps/web/db");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\n200") && out.contains("hunter2"), "{out}");

    // A user outside the group cannot even reach the socket (the certificate is
    // made readable to it, so only the socket's permissions stand in the way).
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755))?;
    for f in ["web.pem", "web.key", "ca.pem"] {
        std::fs::set_permissions(certs.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    let (code, out) = curl_as(&stranger, &socket, &certs, "web", "apps/web/db");
    assert_eq!(code, 7, "curl connected: {out}");
    assert!(
        out.contains("connect fail") && out.contains("Permission denied"),
        "{out}"
    );

    // Restart: the secret and the state survive.
    let status = agent.stop()?;
    assert!(
        status.success(),
        "the agent did not stop cleanly ({status})\n{}",
        agent.log()
    );
    let mut agent = Confined::start(how, &dir, &writable, &agent_user, log)?;
    assert_eq!(
        wait_serving(&mut agent, &dir, "apps/web/db").await?.trim(),
        "hunter2"
    );
    let (code, out) = curl_as(&app_user, &socket, &certs, "web", "apps/web/db");
    assert!(code == 0 && out.contains("\n200"), "{out}");
    assert_eq!(
        std::fs::read(&expiry)?,
        kept,
        "state/expiry.json after a restart"
    );
    let logged = std::fs::read_to_string(root.path().join("agent.log"))?;
    assert!(!logged.contains("cannot keep"), "{logged}");
    let status = agent.stop()?;
    assert!(status.success(), "{}", agent.log());
    // Everything the agent wrote is in the writable paths and the agent's own.
    let owner = rustix::fs::stat(&expiry)?.st_uid;
    assert_ne!(owner, 0, "state/expiry.json is root's");
    Ok(())
}

#[tokio::test]
async fn the_agent_refuses_to_start_when_its_state_folder_is_not_writable() -> anyhow::Result<()> {
    let Some(mut accounts) = Accounts::new() else {
        return Ok(());
    };
    let group = accounts.group("apps")?;
    let agent_user = accounts.user("agent", None)?;
    let root = open_root()?;
    let dir = init_for(root.path(), &agent_user, &group)?;
    // The state folder taken back by root: the agent could not persist its state.
    let state = dir.join("state");
    std::os::unix::fs::chown(&state, Some(0), Some(0))?;
    let out = as_user(&agent_user, &binary()?)
        .arg("run")
        .arg("--config")
        .arg(dir.join("latchkey.toml"))
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(stderr.contains("storage.state_dir"), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("needs write and search permission"),
        "{stderr}"
    );
    assert!(
        !dir.join("run/latchkey.sock").exists(),
        "the socket was bound before the refusal"
    );
    Ok(())
}
