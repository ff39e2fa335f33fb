//! SIGHUP reloads the config: a new policy rule takes effect without a restart, a
//! config that does not validate is refused with its problems logged and the old
//! one keeps serving, and every reload is audited with what changed.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, Agent};

fn hup(agent: &Agent) -> anyhow::Result<()> {
    let pid = agent
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
    Ok(())
}

fn reloads(agent: &Agent, outcome: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(agent
        .audit_records()?
        .into_iter()
        .filter(|r| r["op"] == "reload" && r["outcome"] == outcome)
        .collect())
}

#[tokio::test]
async fn sighup_applies_a_new_policy_and_refuses_a_broken_config() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    agent
        .admin()?
        .write("apps/other/secret", json!({"password": "shared"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    assert_eq!(app.read("apps/other/secret").await?.status, 403);

    let config = agent.config_path();
    let original = std::fs::read_to_string(&config)?;
    let granted = format!(
        "{original}\n[[policy]]\nidentity = \"{}\"\npaths = [\"apps/other/**\"]\noperations = [\"read\"]\n",
        web.id
    );
    std::fs::write(&config, &granted)?;
    hup(&agent)?;
    let applied = eventually(
        "the reload's audit record",
        Duration::from_secs(10),
        || async { reloads(&agent, "ok").ok()?.pop() },
    )
    .await?;
    assert!(
        applied["detail"]
            .as_str()
            .is_some_and(|d| d.contains("policy")),
        "{applied}"
    );
    let now = app.read("apps/other/secret").await?;
    assert_eq!(now.status, 200, "{}", now.body);
    assert!(agent.is_running(), "a reload is not a restart");

    // A config that does not validate changes nothing.
    std::fs::write(
        &config,
        granted.replacen("[listen]", "[listen]\ntcp = \"soon\"", 1),
    )?;
    hup(&agent)?;
    let refused = eventually(
        "the refused reload's audit record",
        Duration::from_secs(10),
        || async { reloads(&agent, "failed").ok()?.pop() },
    )
    .await?;
    assert_eq!(refused["code"], "invalid_config", "{refused}");
    assert!(
        !agent.log_lines_with("reload refused").is_empty(),
        "the problems are logged"
    );
    assert!(agent
        .log_lines_with("reload refused")
        .iter()
        .any(|l| l.contains("listen.tcp")));
    let still = app.read("apps/other/secret").await?;
    assert_eq!(
        still.status, 200,
        "the config in force keeps serving: {}",
        still.body
    );

    // A change only a restart applies is named.
    std::fs::write(
        &config,
        granted.replacen("max_body_bytes = 65536", "max_body_bytes = 4096", 1),
    )?;
    hup(&agent)?;
    eventually(
        "a reload that names the restart",
        Duration::from_secs(10),
        || async {
            reloads(&agent, "ok").ok()?.into_iter().find(|r| {
                r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("needs a restart: limits"))
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn latchkey_reload_says_what_changed_or_every_problem() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let web = agent.issue_cert("web", None).await?;
    let config = agent.config_path();
    let original = std::fs::read_to_string(&config)?;
    let granted = format!(
        "{original}\n[[policy]]\nidentity = \"{}\"\npaths = [\"apps/web/**\"]\noperations = [\"read\"]\n",
        web.id
    );
    std::fs::write(&config, &granted)?;
    let applied = agent.cli(["reload"]).run().await?.success()?;
    assert!(
        applied.stdout.contains("reloaded: policy"),
        "{}",
        applied.stdout
    );
    // The audit writer appends in the background: the answer may come first.
    agent
        .wait_for_audit("the reload, audited as the admin who asked", |r| {
            r["op"] == "reload"
                && r["outcome"] == "ok"
                && r["peer"].as_str().is_some_and(|i| i.contains("admin"))
        })
        .await?;

    // A broken config: exit 64, each problem on stderr with its line, nothing changed.
    std::fs::write(
        &config,
        granted.replacen("[listen]", "[listen]\ntcp = \"soon\"", 1),
    )?;
    let refused = agent.cli(["reload"]).run().await?;
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(refused.stderr.contains("listen.tcp"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("reload refused"),
        "the agent answered: {}",
        refused.stderr
    );
    assert!(agent.is_running());

    // Only an admin may ask.
    std::fs::write(&config, &granted)?;
    let denied = agent.cli(["reload"]).presenting(&web).run().await?;
    assert_eq!(denied.code, 4, "{denied:?}");
    Ok(())
}

#[tokio::test]
async fn sigusr1_reopens_the_audit_file_after_logrotate_moved_it() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/a", json!({"v": "1"})).await?;
    let audit = agent.audit_path();
    eventually(
        "the first write audited",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&audit)
                .ok()?
                .contains("apps/a")
                .then_some(())
        },
    )
    .await?;
    let rotated = audit.with_extension("log.1");
    std::fs::rename(&audit, &rotated)?;
    let pid = agent.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()?;
    anyhow::ensure!(sent.success());
    eventually("the reopen logged", Duration::from_secs(10), || async {
        (!agent.log_lines_with("reopening the audit file").is_empty()).then_some(())
    })
    .await?;
    admin.write("apps/b", json!({"v": "2"})).await?;
    let fresh = eventually("the new file", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&audit).ok()?;
        text.contains("apps/b").then_some(text)
    })
    .await?;
    assert!(!fresh.contains("apps/a"), "{fresh}");
    let old = std::fs::read_to_string(&rotated)?;
    assert!(old.contains("apps/a") && !old.contains("apps/b"), "{old}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&audit)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(agent.is_running());
    Ok(())
}

#[tokio::test]
async fn sigusr1_and_a_reload_reopen_the_log_file_after_logrotate() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("latchkey.log");
    let log_text = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let agent = Agent::builder()
        .env("LATCHKEY_LOG_FILE", &log.display().to_string())
        .start()
        .await?;
    eventually("the log in its file", Duration::from_secs(10), || async {
        log_text(&log).contains("latchkey ready").then_some(())
    })
    .await?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "created private");

    // logrotate moves the file, then signals.
    let first = log.with_extension("log.1");
    std::fs::rename(&log, &first)?;
    let pid = agent.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()?;
    anyhow::ensure!(sent.success());
    eventually(
        "a new file by the same path",
        Duration::from_secs(10),
        || async { log_text(&log).contains("log file reopened").then_some(()) },
    )
    .await?;
    assert!(!log_text(&first).contains("log file reopened"));

    // A reload reopens it too (and the audit file), no second signal needed.
    let second = log.with_extension("log.2");
    std::fs::rename(&log, &second)?;
    agent.cli(["reload"]).run().await?.success()?;
    eventually(
        "the reload logged in a new file",
        Duration::from_secs(10),
        || async { log_text(&log).contains("config reloaded").then_some(()) },
    )
    .await?;
    assert!(!log_text(&second).contains("config reloaded"));
    assert!(agent.is_running());

    // A link where the log file should be is refused before anything starts.
    let elsewhere = logs.path().join("elsewhere.log");
    std::fs::write(&elsewhere, "")?;
    let linked = logs.path().join("linked.log");
    std::os::unix::fs::symlink(&elsewhere, &linked)?;
    let config = agent.config_path();
    let refused = agent
        .cli([
            std::ffi::OsStr::new("run"),
            "--config".as_ref(),
            config.as_os_str(),
        ])
        .env("LATCHKEY_LOG_FILE", &linked)
        .run()
        .await?;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("cannot open the log file"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere)?,
        "",
        "nothing written through the link"
    );
    Ok(())
}

#[tokio::test]
async fn the_dev_agent_reloads_too() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("dev");
    let bin = crate::harness::binary()?;
    let mut dev = tokio::process::Command::new(&bin)
        .args(["dev", "--dir"])
        .arg(&home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = dev.stdout.take().ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    crate::harness::within("the dev agent to start", Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("dev agent is running") {
                return Ok(());
            }
        }
        anyhow::bail!("the dev agent ended before it ran")
    })
    .await??;
    let reload = tokio::process::Command::new(&bin)
        .args(["reload", "--dir"])
        .arg(&home)
        .output();
    let out = crate::harness::within("latchkey reload", Duration::from_secs(30), reload).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reloaded:"), "{stdout}");
    dev.kill().await?;
    Ok(())
}

#[tokio::test]
async fn sighup_starts_new_templates_and_webhooks_without_a_restart() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/a", json!({"v": "one"})).await?;
    let pid = agent.pid();
    let out = agent.scratch().join("a.txt");
    let (port, mut hooks) = crate::webhook::receiver(0).await?;
    let key = agent.scratch().join("hook.key");
    std::fs::write(&key, crate::webhook::KEY)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;

    let config = agent.config_path();
    let original = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!(
            "{original}\n[[template]]\ncontents = \"a={{{{ secret('apps/a').v }}}}\\n\"\ndestination = {out:?}\n\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"updated\"]\nsecret_file = {key:?}\n",
            out = out.display().to_string(),
            key = key.display().to_string(),
        ),
    )?;
    hup(&agent)?;
    let applied = eventually("the reload", Duration::from_secs(10), || async {
        reloads(&agent, "ok").ok()?.pop()
    })
    .await?;
    let detail = applied["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("templates (1)") && detail.contains("webhooks (1)"),
        "{applied}"
    );
    assert!(!detail.contains("needs a restart"), "{applied}");
    eventually(
        "the new template rendered",
        Duration::from_secs(10),
        || async { (std::fs::read_to_string(&out).ok()? == "a=one\n").then_some(()) },
    )
    .await?;
    // The new webhook hears the next change, and the template follows it.
    admin.write("apps/a", json!({"v": "two"})).await?;
    let got = crate::harness::within("the new webhook", Duration::from_secs(10), hooks.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("receiver closed"))?;
    crate::webhook::verify(&got.signature, &got.body)?;
    let event: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(event["path"], "apps/a", "{event}");
    eventually(
        "the template re-rendered",
        Duration::from_secs(10),
        || async { (std::fs::read_to_string(&out).ok()? == "a=two\n").then_some(()) },
    )
    .await?;

    // Taken away again: the renderer and the webhook stop.
    std::fs::write(&config, &original)?;
    hup(&agent)?;
    eventually("the second reload", Duration::from_secs(10), || async {
        (reloads(&agent, "ok").ok()?.len() == 2).then_some(())
    })
    .await?;
    admin.write("apps/a", json!({"v": "three"})).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(std::fs::read_to_string(&out)?, "a=two\n");
    assert!(
        hooks.try_recv().is_err(),
        "no delivery after the webhook went"
    );
    assert_eq!(agent.pid(), pid, "no restart");
    Ok(())
}

/// The host's test guest as `basic`, and a rule sending `paths` to it.
fn plugin_section(paths: &str, sha256: &str) -> anyhow::Result<String> {
    let wasm = crate::harness::wasm::guest()?;
    Ok(format!(
        "{}\n[[lifecycle]]\npaths = [\"{paths}\"]\nplugin = \"basic\"\nconfig = {{ mode = \"key\" }}\n",
        crate::harness::wasm::guest_section(&wasm, sha256)
    ))
}

#[tokio::test]
async fn a_reload_loads_plugins_and_moves_lifecycle_rules_and_refuses_a_wrong_digest(
) -> anyhow::Result<()> {
    let sha256 = crate::harness::wasm::sha256_of(&crate::harness::wasm::guest()?)?;
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    for path in ["keys/good", "other/good"] {
        assert_eq!(admin.write(path, json!({"key": "good"})).await?.status, 200);
    }
    let validate = |path: &'static str| {
        let admin = agent.admin();
        async move {
            admin?
                .request(http::Method::POST, &format!("/v1/validate/{path}"), None)
                .await
        }
    };
    let before = validate("keys/good").await?;
    assert_eq!(before.status, 422, "no plugin yet: {}", before.body);

    // The first plugin and rule, in a running agent started without any.
    let config = agent.config_path();
    let original = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!("{original}{}", plugin_section("keys/**", &sha256)?),
    )?;
    let applied = agent.cli(["reload"]).run().await?.success()?;
    assert!(
        applied.stdout.contains("plugins (basic)"),
        "{}",
        applied.stdout
    );
    let valid = validate("keys/good").await?;
    assert_eq!(valid.status, 200, "{}", valid.body);
    assert_eq!(valid.json()["valid"], true, "{}", valid.body);

    // The rule moves: the old paths have no provider any more, the new ones do.
    let moved = format!("{original}{}", plugin_section("other/**", &sha256)?);
    std::fs::write(&config, &moved)?;
    agent.cli(["reload"]).run().await?.success()?;
    assert_eq!(validate("keys/good").await?.status, 422);
    assert_eq!(validate("other/good").await?.json()["valid"], true);

    // A component that does not match its digest: refused, the rules in force stay.
    std::fs::write(
        &config,
        format!("{original}{}", plugin_section("keys/**", &"0".repeat(64))?),
    )?;
    let refused = agent.cli(["reload"]).run().await?;
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(refused.stderr.contains("plugins:"), "{}", refused.stderr);
    assert_eq!(validate("keys/good").await?.status, 422);
    let still = validate("other/good").await?;
    assert_eq!(still.json()["valid"], true, "{}", still.body);
    assert!(agent.is_running());
    Ok(())
}

#[tokio::test]
async fn a_reload_moves_the_tls_files_and_refuses_a_missing_one() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let dir = agent.dir().to_owned();
    let alt = dir.join("alt");
    std::fs::create_dir(&alt)?;
    // `fs::copy` keeps the key's 0600.
    std::fs::copy(dir.join("server/server.pem"), alt.join("server.pem"))?;
    std::fs::copy(dir.join("server/server.key"), alt.join("server.key"))?;
    // A new certificate where the old one was (put in place by the file watcher),
    // so the copy is what changes when the config moves to it.
    agent
        .cli(["cert", "issue", "--server", "--ttl", "90d"])
        .run()
        .await?
        .success()?;
    let config = agent.config_path();
    let original = std::fs::read_to_string(&config)?;
    anyhow::ensure!(original.contains("cert = \"server/server.pem\""));
    eventually(
        "the reissued server certificate in place",
        Duration::from_secs(10),
        || async {
            (!agent
                .log_lines_with("server certificate reloaded")
                .is_empty())
            .then_some(())
        },
    )
    .await?;

    let moved = original
        .replacen(
            "cert = \"server/server.pem\"",
            "cert = \"alt/server.pem\"",
            1,
        )
        .replacen("key = \"server/server.key\"", "key = \"alt/server.key\"", 1);
    std::fs::write(&config, &moved)?;
    let applied = agent.cli(["reload"]).run().await?.success()?;
    assert!(
        applied.stdout.contains("tls files") && applied.stdout.contains("server certificate"),
        "{}",
        applied.stdout
    );
    // New handshakes get the moved certificate and still verify.
    assert_eq!(agent.admin()?.health().await?.status, 200);

    // A file that is not there: refused before anything changes.
    std::fs::write(
        &config,
        moved.replacen("key = \"alt/server.key\"", "key = \"alt/missing.key\"", 1),
    )?;
    let refused = agent.cli(["reload"]).run().await?;
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(
        refused.stderr.contains("tls:") && refused.stderr.contains("missing.key"),
        "{}",
        refused.stderr
    );
    assert_eq!(agent.admin()?.health().await?.status, 200);
    Ok(())
}
