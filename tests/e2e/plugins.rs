//! Provider plugins inside the real agent: `[[plugin]]` and `[[lifecycle]]` load a
//! WebAssembly provider (the host's test guest), `POST /v1/validate/{path}` calls it,
//! and a plugin that loops, allocates without end or traps fails its own call while
//! the agent keeps serving secrets during and after. A tampered component is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::harness::pace;
use crate::harness::wasm::{self, guest, sha256_of};
use crate::harness::Agent;

fn plugin_config(wasm: &Path, sha256: &str) -> String {
    let mut text = wasm::guest_section(wasm, sha256);
    text.push_str(
        r#"
[[lifecycle]]
paths = ["keys/**"]
plugin = "basic"
config = { mode = "key" }

[[lifecycle]]
paths = ["bad/leak"]
plugin = "basic"
config = { mode = "leak" }

[[lifecycle]]
paths = ["bad/leak-rejected"]
plugin = "basic"
config = { mode = "leak", answer = "rejected" }

[[lifecycle]]
paths = ["bad/loop"]
plugin = "basic"
config = { mode = "loop" }

[[lifecycle]]
paths = ["bad/alloc"]
plugin = "basic"
config = { mode = "alloc" }

[[lifecycle]]
paths = ["bad/trap"]
plugin = "basic"
config = { mode = "trap" }
"#,
    );
    text
}

#[tokio::test]
async fn a_runaway_plugin_fails_its_call_while_the_agent_keeps_serving() -> anyhow::Result<()> {
    let wasm = &guest()?;
    let agent = Agent::builder()
        .append(&plugin_config(wasm, &sha256_of(wasm)?))
        .start()
        .await?;
    let admin = agent.admin()?;
    for (path, key) in [
        ("keys/good", "good"),
        ("keys/bad", "nope"),
        ("bad/loop", "x"),
        ("bad/alloc", "x"),
        ("bad/trap", "x"),
    ] {
        assert_eq!(admin.write(path, json!({ "key": key })).await?.status, 200);
    }
    admin
        .write("apps/web/db", json!({ "password": "served-meanwhile" }))
        .await?;

    let good = admin
        .request(http::Method::POST, "/v1/validate/keys/good", None)
        .await?;
    assert_eq!(good.status, 200, "{}", good.body);
    assert_eq!(good.json()["valid"], true, "{}", good.body);
    let bad = admin
        .request(http::Method::POST, "/v1/validate/keys/bad", None)
        .await?;
    assert_eq!(bad.json()["valid"], false, "{}", bad.body);

    for path in ["bad/loop", "bad/alloc", "bad/trap"] {
        // Reads keep being answered while the plugin runs away. Time bounds are scaled
        // by the machine's pace: on a busy machine every read is slower.
        let reader = {
            let api = agent.admin()?;
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut served = 0;
                let until = Instant::now() + pace::scaled(Duration::from_millis(900));
                while Instant::now() < until {
                    let started = Instant::now();
                    let answer = api.read("apps/web/db").await?;
                    anyhow::ensure!(answer.status == 200, "read failed: {}", answer.body);
                    slowest = slowest.max(started.elapsed());
                    served += 1;
                }
                Ok::<_, anyhow::Error>((served, slowest))
            })
        };
        let started = Instant::now();
        let answer = admin
            .request(http::Method::POST, &format!("/v1/validate/{path}"), None)
            .await?;
        let took = started.elapsed();
        assert_eq!(answer.status, 502, "{path}: {}", answer.body);
        assert_eq!(
            answer.code().as_deref(),
            Some("plugin_failed"),
            "{path}: {}",
            answer.body
        );
        let bound = pace::scaled(Duration::from_secs(5));
        assert!(
            took < bound,
            "{path}: the call took {took:?}, expected under {bound:?} (its deadline is 1 s; {})",
            pace::describe()
        );
        let (served, slowest) = reader.await??;
        assert!(
            served > 10,
            "{path}: only {served} reads answered meanwhile"
        );
        let bound = pace::scaled(Duration::from_millis(500));
        assert!(
            slowest < bound,
            "{path}: a read took {slowest:?} meanwhile, expected under {bound:?} ({})",
            pace::describe()
        );
        // And after: the agent and the plugin both still work.
        assert_eq!(
            admin
                .read("apps/web/db")
                .await?
                .field("password")
                .as_deref(),
            Some("served-meanwhile")
        );
        let again = admin
            .request(http::Method::POST, "/v1/validate/keys/good", None)
            .await?;
        assert_eq!(again.json()["valid"], true, "after {path}: {}", again.body);
    }
    // The guest's own panic message is logged as plugin output; the agent never panics.
    let logs = agent.logs();
    let agent_panics: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("panicked") && !l.contains("plugin output"))
        .take(20)
        .collect();
    assert!(
        agent_panics.is_empty(),
        "the agent panicked: {agent_panics:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tampered_plugin_is_refused_at_start() -> anyhow::Result<()> {
    let wasm = &guest()?;
    let wrong = "0".repeat(64);
    let started = Agent::builder()
        .append(&plugin_config(wasm, &wrong))
        .start()
        .await;
    let Err(e) = started else {
        bail!("an agent with a wrong plugin digest must not start");
    };
    let text = format!("{e:#}");
    assert!(text.contains("sha256") || text.contains("digest"), "{text}");
    Ok(())
}

#[tokio::test]
async fn values_a_plugin_logs_prints_or_answers_never_leave_the_host() -> anyhow::Result<()> {
    let wasm = &guest()?;
    // latchkey's own targets at trace (the plugin's log lines among them); wasmtime and
    // Cranelift at info, or compiling the guest logs a gigabyte of IR.
    let agent = Agent::builder()
        .log_level("trace")
        .append(&plugin_config(wasm, &sha256_of(wasm)?))
        .start()
        .await?;
    let admin = agent.admin()?;
    let value = "leaky-plugin-secret-4f1d9c";
    assert_eq!(
        admin
            .write("bad/leak", json!({ "key": value }))
            .await?
            .status,
        200
    );
    assert_eq!(
        admin
            .write("bad/leak-rejected", json!({ "key": value }))
            .await?
            .status,
        200
    );
    let answer = admin
        .request(http::Method::POST, "/v1/validate/bad/leak", None)
        .await?;
    assert_eq!(answer.json()["valid"], true, "{}", answer.body);
    // What the plugin answers is scrubbed too: the detail, the permission names and
    // an error message, wherever they go next (the answer, the status, the audit).
    assert_eq!(
        answer.json()["detail"],
        "leaked [REDACTED]",
        "{}",
        answer.body
    );
    assert!(!answer.body.contains(value), "{}", answer.body);
    let rejected = admin
        .request(http::Method::POST, "/v1/validate/bad/leak-rejected", None)
        .await?;
    assert_eq!(rejected.json()["valid"], false, "{}", rejected.body);
    assert_eq!(
        rejected.json()["detail"],
        "leaked [REDACTED]",
        "{}",
        rejected.body
    );
    let status = admin
        .request(http::Method::GET, "/v1/status/bad/leak-rejected", None)
        .await?;
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(
        status.body.contains("[REDACTED]") && !status.body.contains(value),
        "{}",
        status.body
    );
    assert!(
        !agent.audit_text().contains(value),
        "a plugin put a value into the audit log"
    );
    let logs = agent.logs();
    assert!(
        logs.contains("[REDACTED]"),
        "the plugin's lines are logged, scrubbed; the log has no [REDACTED]:\n{}",
        agent.log_tail()
    );
    assert!(
        !logs.contains(value),
        "a plugin put a value into the agent's log"
    );
    Ok(())
}

/// A copy of the test guest's manifest that says less than its `info`: an older
/// version, one kind of two, one operation of three, and no `[needs]`.
fn terse_manifest(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("terse.toml");
    std::fs::write(
        &path,
        "name = \"basic\"\nversion = \"0.0.9\"\nkinds = [\"api-key\"]\noperations = [\"validate\"]\n",
    )?;
    Ok(path)
}

/// Issue 15, item 4: `latchkey check` did not load plugins, so a wrong sha256 passed;
/// item 3: a manifest that cuts a grant or disagrees with `info` was accepted silently.
#[tokio::test]
async fn latchkey_check_loads_every_plugin_and_says_what_its_manifest_cuts() -> anyhow::Result<()> {
    let wasm = &guest()?;
    let mut agent = Agent::builder()
        .append(&plugin_config(wasm, &sha256_of(wasm)?))
        .start()
        .await?;
    assert!(agent.stop().await?.success());
    let config = agent.config_path();
    let path = config.to_string_lossy().into_owned();
    let check = || agent.cli(["check", "--config", path.as_str()]).run();
    let ok = check().await?.success()?;
    assert!(
        !ok.stderr.contains("is cut") && !ok.stderr.contains("disagree"),
        "{ok:?}"
    );

    let text = std::fs::read_to_string(&config)?;
    let digest = sha256_of(wasm)?;
    std::fs::write(&config, text.replace(&digest, &"0".repeat(64)))?;
    let wrong = check().await?;
    assert_eq!(wrong.code, 64, "{wrong:?}");
    assert!(
        wrong.stderr.contains("sha256") || wrong.stderr.contains("digest"),
        "{wrong:?}"
    );
    assert!(
        wrong.stderr.contains("basic"),
        "names the plugin: {wrong:?}"
    );

    // A terse manifest and an HTTP grant it does not list: loads, with warnings.
    let terse = terse_manifest(agent.dir())?;
    let manifest = wasm::guest_manifest().display().to_string();
    std::fs::write(
        &config,
        text.replace(
            &format!("manifest = {manifest:?}"),
            &format!(
                "manifest = {:?}\nhttp = [\"https://api.example.com\"]",
                terse.display().to_string()
            ),
        ),
    )?;
    let warned = check().await?.success()?;
    for said in [
        "plugin basic: http grant https://api.example.com:443 is cut",
        "disagree on version: the manifest says 0.0.9, info 0.1.0",
        "disagree on kinds",
        "disagree on operations",
    ] {
        assert!(warned.stderr.contains(said), "{said}: {}", warned.stderr);
    }
    Ok(())
}

/// Issue 15, item 3: "plugin loaded" was logged before the host refused the plugin,
/// and a credential of a kind the plugin does not declare reached it.
#[tokio::test]
async fn a_refused_plugin_is_never_said_loaded_and_undeclared_kinds_never_reach_one(
) -> anyhow::Result<()> {
    let wasm = &guest()?;
    let dir = tempfile::tempdir()?;
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        "name = \"other\"\nversion = \"0.1.0\"\nkinds = [\"api-key\"]\noperations = [\"validate\"]\n",
    )?;
    let other = other.display().to_string();
    let cred = json!({"kind": "api-key", "fields": {"key": "good"}});
    let call = |op: &str, cred: &serde_json::Value, manifest: &str| {
        wasm::call(
            wasm,
            op,
            &json!({"mode": "key"}),
            cred,
            &["--manifest", manifest],
        )
    };
    let refused = call("info", &cred, &other)?;
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        refused.stderr.contains("disagree on name"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("plugin loaded"),
        "{}",
        refused.stderr
    );

    // The terse manifest declares `api-key` only: `db-password`, which the guest's
    // own `info` lists, is stopped by the host.
    let terse = terse_manifest(dir.path())?.display().to_string();
    let accepted = call("validate", &cred, &terse)?;
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    assert!(
        accepted.stderr.contains("plugin loaded"),
        "{}",
        accepted.stderr
    );
    assert!(
        accepted.stderr.contains("disagree on kinds"),
        "{}",
        accepted.stderr
    );
    let inspected = std::process::Command::new(crate::harness::binary()?)
        .args(["plugin", "inspect"])
        .arg(wasm)
        .args(["--manifest", &terse])
        .output()?;
    assert!(inspected.status.success(), "{inspected:?}");
    let inspection: serde_json::Value = serde_json::from_slice(&inspected.stdout)?;
    let warnings = inspection["warnings"].to_string();
    assert!(warnings.contains("disagree on kinds"), "{inspection}");
    assert!(warnings.contains("disagree on operations"), "{inspection}");
    assert_eq!(
        inspection["manifest"]["kinds"],
        json!(["api-key"]),
        "{inspection}"
    );
    let db = json!({"kind": "db-password", "fields": {"key": "good"}});
    let stopped = call("validate", &db, &terse)?;
    assert_eq!(stopped.code, Some(10), "{stopped:?}");
    assert!(
        stopped
            .stderr
            .contains("does not declare credential kind db-password"),
        "{}",
        stopped.stderr
    );
    Ok(())
}
