//! `latchkey exec`: the child gets its secrets in the environment, signals reach it,
//! its exit code comes back, and a rotation restarts or signals it only when a value
//! it received changed — not on an unrelated change.
//!
//! The children are small `sh` scripts that write what they see into files in the
//! test's scratch folder.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::io::AsyncReadExt as _;

use crate::harness::{binary, eventually, within, Agent};

const WAIT: Duration = Duration::from_secs(15);

/// `latchkey exec ARGS` as a long-running process, a client of `agent`.
fn spawn_exec(agent: &Agent, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(binary()?);
    cmd.arg("exec")
        .args(args)
        .env("LATCHKEY_DIR", agent.dir())
        .env("LATCHKEY_LOG", "latchkey=debug")
        .env_remove("LATCHKEY_ADDR")
        .env_remove("LATCHKEY_CERT")
        .env_remove("LATCHKEY_KEY")
        .env_remove("LATCHKEY_CACERT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().context("cannot start latchkey exec")
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn wait_lines(path: &Path, n: usize, what: &str) -> anyhow::Result<Vec<String>> {
    eventually(what, WAIT, || async move {
        let l = read_lines(path);
        (l.len() >= n).then_some(l)
    })
    .await
}

/// What `latchkey exec` logs (at `debug`) when a change reaches it that no value the
/// child received is part of: proof that it has handled that change and all before.
const IGNORED: &str = "a watched secret changed, but no value the child received did";

/// `latchkey exec`'s stderr (its log), collected as it is written.
struct ExecLog {
    text: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl ExecLog {
    fn follow(exec: &mut tokio::process::Child) -> anyhow::Result<Self> {
        let mut stderr = exec.stderr.take().context("no stderr pipe")?;
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Ok(Self { text, reader })
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `line` has been logged `n` times.
    async fn wait_for(&self, line: &str, n: usize, what: &str) -> anyhow::Result<()> {
        eventually(what, WAIT, || async move {
            (self.text().matches(line).count() >= n).then_some(())
        })
        .await
        .with_context(|| format!("latchkey exec's log:\n{}", self.text()))
    }

    /// Everything it wrote, once it has exited.
    async fn finish(self) -> anyhow::Result<String> {
        let Self { text, reader } = self;
        reader.await?;
        let text = text.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(text)
    }
}

fn term(child: &tokio::process::Child) -> anyhow::Result<()> {
    let pid = child.id().context("exec has exited")?;
    let pid = rustix::process::Pid::from_raw(pid as i32).context("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

#[tokio::test]
async fn exec_passes_env_and_returns_the_exit_code() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write(
            "apps/web/db",
            json!({"user": "alice", "password": "s3cret-exec-value"}),
        )
        .await?;
    admin
        .write("apps/web/token", json!({"token": "tok-1"}))
        .await?;
    let out = agent
        .cli([
            "exec",
            "--env",
            "DB_USER=apps/web/db#user",
            "--env",
            "DB_PASSWORD=apps/web/db#password",
            "--env",
            "TOKEN=apps/web/token",
            "--",
            "sh",
            "-c",
            "test \"$DB_USER:$DB_PASSWORD:$TOKEN\" = alice:s3cret-exec-value:tok-1 && exit 42; exit 9",
        ])
        .run()
        .await?;
    assert_eq!(out.code, 42, "{out:?}");

    let missing = agent
        .cli(["exec", "--env", "X=apps/web/db#nope", "--", "true"])
        .run()
        .await?;
    // Not found, as `get --field nope` says it (3), not a generic failure.
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("secret apps/web/db has no field \"nope\""),
        "{missing:?}"
    );
    assert!(!agent.logs().contains("s3cret-exec-value"));
    Ok(())
}

#[tokio::test]
async fn exec_forwards_sigterm_and_passes_the_code_back() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    agent.admin()?.write("apps/x", json!({"v": "1"})).await?;
    let dir = agent.scratch();
    let ready = dir.join("ready");
    let got = dir.join("got");
    let script = format!(
        "trap 'echo term > {got}; exit 3' TERM; echo up > {ready}; while :; do sleep 0.05; done",
        got = got.display(),
        ready = ready.display()
    );
    let mut exec = spawn_exec(&agent, &["--env", "V=apps/x#v", "--", "sh", "-c", &script])?;
    wait_lines(&ready, 1, "the child to start").await?;
    term(&exec)?;
    let status = within("exec to exit", WAIT, exec.wait()).await??;
    assert_eq!(status.code(), Some(3));
    assert_eq!(read_lines(&got), ["term"]);

    // Killed by a signal it does not handle: 128 + 9.
    let script = format!("echo up >> {ready}; kill -9 $$", ready = ready.display());
    let out = agent
        .cli(["exec", "--env", "V=apps/x#v", "--", "sh", "-c", &script])
        .run()
        .await?;
    assert_eq!(out.code, 137, "{out:?}");
    Ok(())
}

#[tokio::test]
async fn exec_restarts_only_when_a_value_it_received_changed() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/db", json!({"password": "pw-1", "note": "a"}))
        .await?;
    admin.write("apps/unrelated", json!({"v": "1"})).await?;
    let starts = agent.scratch().join("starts");
    let script = format!(
        "echo \"$$ $PW\" >> {starts}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        starts = starts.display()
    );
    let mut exec = spawn_exec(
        &agent,
        &[
            "--env",
            "PW=apps/db#password",
            "--grace",
            "5s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )?;
    let log = ExecLog::follow(&mut exec)?;
    let first = wait_lines(&starts, 1, "the first start").await?;
    assert!(first[0].ends_with(" pw-1"), "{first:?}");

    // Not restarted: another secret changes; a field the child does not use changes.
    // Changes reach exec in order, so once it has logged that the second one changed
    // nothing it passed on, it has handled the first too.
    admin.write("apps/unrelated", json!({"v": "2"})).await?;
    admin
        .write("apps/db", json!({"password": "pw-1", "note": "b"}))
        .await?;
    log.wait_for(IGNORED, 1, "exec to handle the changes it does not use")
        .await?;
    assert_eq!(
        read_lines(&starts),
        first,
        "restarted without a change it uses"
    );

    // Restarted: the value it received changed.
    admin
        .write("apps/db", json!({"password": "pw-2", "note": "b"}))
        .await?;
    let after = wait_lines(&starts, 2, "the restart").await?;
    assert!(after[1].ends_with(" pw-2"), "{after:?}");
    assert_ne!(
        after[0].split(' ').next(),
        after[1].split(' ').next(),
        "a new process"
    );
    // Restarted once: a later change is handled, and still two starts.
    admin
        .write("apps/db", json!({"password": "pw-2", "note": "c"}))
        .await?;
    log.wait_for(IGNORED, 2, "exec to handle a change after the restart")
        .await?;
    assert_eq!(read_lines(&starts), after, "restarted once");

    term(&exec)?;
    let status = within("exec to exit", WAIT, exec.wait()).await??;
    assert_eq!(status.code(), Some(0));
    let stderr = log.finish().await?;
    assert!(
        !stderr.contains("pw-1") && !stderr.contains("pw-2"),
        "{stderr}"
    );
    assert!(!agent.logs().contains("pw-2"));
    Ok(())
}

#[tokio::test]
async fn exec_signals_the_child_when_its_rendered_file_changes() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/cfg", json!({"key": "k1"})).await?;
    let dir = agent.scratch();
    let src = dir.join("app.tmpl");
    let dest = dir.join("app.conf");
    let events = dir.join("events");
    std::fs::write(&src, "key={{ secret('apps/cfg').key }}\n")?;
    let script = format!(
        "trap 'echo \"hup $(cat {dest})\" >> {events}' HUP; echo \"start $$ $(cat {dest})\" >> {events}; while :; do sleep 0.05; done",
        dest = dest.display(),
        events = events.display()
    );
    let template = format!("{}:{}", src.display(), dest.display());
    let mut exec = spawn_exec(
        &agent,
        &[
            "--template",
            &template,
            "--on-change",
            "signal:SIGHUP",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )?;
    let first = wait_lines(&events, 1, "the child to start").await?;
    assert!(first[0].ends_with(" key=k1"), "{first:?}");
    admin.write("apps/cfg", json!({"key": "k2"})).await?;
    let lines = wait_lines(&events, 2, "the SIGHUP").await?;
    assert_eq!(lines[1], "hup key=k2");
    assert!(
        lines.iter().filter(|l| l.starts_with("start")).count() == 1,
        "{lines:?}"
    );
    term(&exec)?;
    let status = within("exec to exit", WAIT, exec.wait()).await??;
    assert_eq!(status.code(), Some(128 + 15));
    Ok(())
}

#[tokio::test]
async fn exec_exits_like_get_when_a_secret_is_missing_or_denied() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let get = agent.cli(["get", "apps/web/none"]).run().await?;
    let exec = agent
        .cli(["exec", "--env", "DB=apps/web/none#password", "--", "true"])
        .run()
        .await?;
    assert_eq!(get.code, 3, "get: {}", get.stderr);
    assert_eq!(
        exec.code, 3,
        "exec, one table of exit codes: {}",
        exec.stderr
    );
    Ok(())
}

#[tokio::test]
async fn exec_renews_its_certificate_and_keeps_working_past_the_old_ones_end() -> anyhow::Result<()>
{
    let agent = Agent::builder()
        .allow(
            "spiffe://latchkey.local/app/runner",
            &["apps/**"],
            &["read"],
        )
        .start()
        .await?;
    let admin = agent.admin()?;
    admin.write("apps/db", json!({"password": "pw-1"})).await?;
    // Nine seconds: renewed once a third is left, after about six.
    agent
        .cli(["cert", "issue", "--app", "runner", "--ttl", "9s"])
        .run()
        .await?
        .success()?;
    let cert = agent.dir().join("clients/runner.pem");
    let key = agent.dir().join("clients/runner.key");
    let serial_of = |p: &Path| -> Option<String> {
        latchkey::identity::ca::serial_of_pem(&std::fs::read_to_string(p).ok()?).ok()
    };
    let first = serial_of(&cert).context("a certificate")?;
    let starts = agent.scratch().join("starts");
    let script = format!(
        "echo \"$PW\" >> {starts}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        starts = starts.display()
    );
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let mut exec = spawn_exec(
        &agent,
        &[
            "--cert",
            &cert_s,
            "--key",
            &key_s,
            "--env",
            "PW=apps/db#password",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )?;
    let log = ExecLog::follow(&mut exec)?;
    wait_lines(&starts, 1, "the first start").await?;
    let renewed = eventually("the certificate renewed", WAIT, || async {
        serial_of(&cert).filter(|s| *s != first)
    })
    .await?;
    // Past the first certificate's end, a change still reaches the child: exec
    // fetched it with the renewed certificate.
    tokio::time::sleep(Duration::from_secs(4)).await;
    admin.write("apps/db", json!({"password": "pw-2"})).await?;
    let lines = wait_lines(&starts, 2, "the restart with the new value").await?;
    assert_eq!(lines, ["pw-1", "pw-2"]);
    assert_ne!(renewed, first);
    term(&exec)?;
    within("exec to exit", WAIT, exec.wait()).await??;
    let stderr = log.finish().await?;
    assert!(stderr.contains("client certificate renewed"), "{stderr}");
    Ok(())
}
