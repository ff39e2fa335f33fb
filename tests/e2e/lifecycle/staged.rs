//! Staged rotation through a test provider whose service fails on command: a failure
//! at each of the four steps rolls back (the current key keeps working, the audit and
//! the status say what happened, a signed webhook alert and an SSE event go out), a
//! later attempt succeeds; and an agent killed with SIGKILL in the middle of a rotation
//! finishes it when it starts again, replaying an interrupted step 1 with the same
//! randomness so a password set in place is not lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

use super::service::{bao_blocking, Service};
use crate::harness::wasm::{guest, guest_manifest, sha256_of};
use crate::harness::{Agent, Via};
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{bao_upstream, sync_section, token_auth};

pub(super) const ORIGINAL: &str = "key-original";

pub(super) fn plugin_toml(service: &Service) -> anyhow::Result<String> {
    plugin_toml_with(service, "0s", "")
}

/// [`plugin_toml`] with the given grace window and more provider config (`extra`,
/// e.g. `, in_place = "true"`).
pub(super) fn plugin_toml_with(
    service: &Service,
    grace: &str,
    extra: &str,
) -> anyhow::Result<String> {
    let wasm = guest()?;
    Ok(format!(
        r#"
[[plugin]]
name = "svc"
wasm = {wasm:?}
manifest = {manifest:?}
sha256 = "{sha}"
http = ["{authority}"]
allow_networks = ["127.0.0.0/8"]
deadline = "60s"

[[lifecycle]]
paths = ["svc/*"]
plugin = "svc"
config = {{ mode = "service", service = "{url}"{extra} }}
rotate_every = "24h"
grace = "{grace}"
retry_after = "1h"
max_attempts = 10
"#,
        wasm = wasm.display().to_string(),
        manifest = guest_manifest().display().to_string(),
        sha = sha256_of(&wasm)?,
        authority = service.grant(),
        url = service.url(),
    ))
}

/// An agent configured with `toml` whose `svc/key` holds [`ORIGINAL`].
pub(super) async fn agent_with_key(toml: &str) -> anyhow::Result<Agent> {
    let agent = Agent::builder().append(toml).start().await?;
    let written = agent
        .admin()?
        .write("svc/key", json!({ "key": ORIGINAL }))
        .await?;
    anyhow::ensure!(written.status == 200, "write svc/key: {}", written.body);
    Ok(agent)
}

pub(super) async fn current_key(agent: &Agent) -> anyhow::Result<String> {
    let answer = agent.admin()?.read("svc/key").await?;
    if answer.status != 200 {
        bail!("read svc/key: {} {}", answer.status, answer.body);
    }
    answer.json()["fields"]["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key field")
}

/// Collects the event names an SSE watcher on `prefix` receives.
async fn watch(agent: &Agent, prefix: &str) -> anyhow::Result<Arc<Mutex<Vec<String>>>> {
    let client = latchkey::client::Client::new(
        agent.endpoint(Via::Socket)?,
        agent.tls_for(&agent.admin_identity())?,
    );
    let (status, mut body) = client
        .stream(&format!("/v1/watch?prefix={prefix}"))
        .await
        .map_err(|e| anyhow::anyhow!("watch: {e}"))?;
    if status != 200 {
        bail!("watch answered {status}");
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    for line in block.lines() {
                        if let Some(name) = line.strip_prefix("event:") {
                            out.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(name.trim().to_owned());
                        }
                    }
                }
            }
        }
    });
    Ok(seen)
}

/// Runs `latchkey rotate svc/key`; returns (exit code, stderr).
async fn rotate(agent: &Agent) -> anyhow::Result<(i32, String)> {
    let out = agent.cli(["rotate", "svc/key"]).run().await?;
    Ok((out.code, format!("{}{}", out.stdout, out.stderr)))
}

async fn expect_rolled_back(
    agent: &Agent,
    service: &Service,
    step: &str,
    hooks: &mut tokio::sync::mpsc::Receiver<crate::webhook::Received>,
) -> anyhow::Result<()> {
    let (code, text) = rotate(agent).await?;
    assert_eq!(code, 1, "a failed step exits 1: {text}");
    assert!(text.contains(step), "the outcome names {step}: {text}");
    assert!(
        service.is_live(ORIGINAL),
        "the current key still works after {step}"
    );
    assert_eq!(
        current_key(agent).await?,
        ORIGINAL,
        "current untouched after {step}"
    );
    agent
        .wait_for_audit(&format!("a failed rotation at {step}"), |r| {
            r["op"] == "rotate"
                && r["outcome"] == "failed"
                && r["detail"].as_str().is_some_and(|d| d.contains(step))
        })
        .await?;
    let status = super::status(agent, "svc/key").await?;
    assert_eq!(status["state"], "active", "{status}");
    assert!(
        status["detail"].as_str().is_some_and(|d| d.contains(step)),
        "{status}"
    );
    // A signed alert reaches the webhook.
    let got = crate::harness::within(
        "the rotation-failed webhook",
        Duration::from_secs(10),
        hooks.recv(),
    )
    .await?
    .context("webhook receiver closed")?;
    crate::webhook::verify(&got.signature, &got.body)?;
    let body: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(body["kind"], "rotation-failed", "{body}");
    assert_eq!(body["path"], "svc/key", "{body}");
    Ok(())
}

#[tokio::test]
async fn a_rotation_failing_at_each_step_rolls_back_and_a_later_attempt_succeeds(
) -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    let service = Service::start(ORIGINAL)?;
    let (hook_port, mut hooks) = crate::webhook::receiver(0).await?;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("hook.key");
    std::fs::write(&key_file, crate::webhook::KEY)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let agent = Agent::builder()
        .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
        .append(&sync_section("1s", "24h", 8))
        .append(&plugin_toml(&service)?)
        .append(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nevents = [\"rotation-failed\"]\nsecret_file = {:?}\n",
            key_file.display().to_string()
        ))
        .start()
        .await?;
    let admin = agent.admin()?;
    assert_eq!(
        admin
            .write("svc/key", json!({ "key": ORIGINAL }))
            .await?
            .status,
        200
    );
    let events = watch(&agent, "svc/").await?;

    // Step 1: the service cannot create a key.
    service.fail_create(1);
    expect_rolled_back(&agent, &service, "step 1", &mut hooks).await?;

    // Step 2: the coordination record changes underneath (its history is deleted
    // in OpenBao while the key is being created), so publishing loses its
    // check-and-set; the created key is retired.
    let address = bao.address.clone();
    service.on_create(Box::new(move || {
        bao_blocking(
            &address,
            ROOT_TOKEN,
            "DELETE",
            "secret/metadata/_latchkey/lifecycle/svc/key",
            None,
        );
    }));
    let retired_before = service.retired().len();
    expect_rolled_back(&agent, &service, "step 2", &mut hooks).await?;
    assert_eq!(
        service.retired().len(),
        retired_before + 1,
        "pending retired"
    );

    // Step 3: the service rejects the new key.
    service.fail_check_of_new_keys(1);
    expect_rolled_back(&agent, &service, "step 3", &mut hooks).await?;
    assert_eq!(
        service.retired().len(),
        retired_before + 2,
        "pending retired"
    );

    // Step 4: someone writes the secret in OpenBao while the new key is tested, so
    // the promotion loses its check-and-set.
    let address = bao.address.clone();
    service.on_check_of_new_key(Box::new(move || {
        bao_blocking(
            &address,
            ROOT_TOKEN,
            "PUT",
            "secret/data/svc/key",
            Some(json!({ "data": { "key": ORIGINAL } })),
        );
    }));
    expect_rolled_back(&agent, &service, "step 4", &mut hooks).await?;
    assert_eq!(
        service.retired().len(),
        retired_before + 3,
        "pending retired"
    );

    // A later attempt succeeds, and the old key is retired (no grace window).
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 0, "{text}");
    let new_key = current_key(&agent).await?;
    assert_ne!(new_key, ORIGINAL);
    assert!(service.is_live(&new_key));
    crate::spawn::wait_until(
        "the old key to be retired",
        Duration::from_secs(10),
        || async { !service.is_live(ORIGINAL) },
    )
    .await?;
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["failures"], 0, "{status}");
    // OpenBao holds the new key too.
    let (_, remote) = bao.api("GET", "secret/data/svc/key", None).await?;
    assert_eq!(remote["data"]["data"]["key"], new_key.as_str(), "{remote}");
    crate::spawn::wait_until("SSE events", Duration::from_secs(10), || async {
        let seen = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        seen.iter().filter(|e| *e == "rotation-failed").count() >= 4
            && seen.iter().any(|e| e == "rotated")
    })
    .await
    .with_context(|| format!("events seen: {:?}", events.lock().map(|e| e.clone())))?;
    Ok(())
}

#[tokio::test]
async fn a_rejected_step_1_is_not_retried_and_an_unavailable_one_is() -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    let agent = agent_with_key(&plugin_toml(&service)?).await?;
    let events = watch(&agent, "svc/").await?;

    // The service refuses: rolled back, the credential marked, nothing planned again.
    service.reject_create(1);
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("step 1") && text.contains("rejected"),
        "{text}"
    );
    assert_eq!(current_key(&agent).await?, ORIGINAL);
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "invalid", "{status}");
    assert_eq!(status["stopped"], true, "{status}");
    assert!(
        status.get("retry_at").is_none(),
        "no retry planned: {status}"
    );
    crate::spawn::wait_until(
        "one rotation-failed event",
        Duration::from_secs(10),
        || async {
            let seen = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
            seen.iter().filter(|e| *e == "rotation-failed").count() == 1
        },
    )
    .await?;

    // The service is unavailable: rolled back, and retried after `retry_after`.
    service.fail_create(1);
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unavailable"), "{text}");
    let status = super::status(&agent, "svc/key").await?;
    assert!(status.get("stopped").is_none(), "{status}");
    assert!(
        status["retry_at"].is_string(),
        "a retry is planned: {status}"
    );
    assert_eq!(service.created().len(), 0);
    Ok(())
}

/// Starts `latchkey rotate svc/key`, waits until the service holds the stalled
/// request of `step`, kills the agent with SIGKILL, lets the service answer, and
/// starts the agent again on the same folder.
async fn crash_during_rotation(
    agent: &mut Agent,
    (reached, release): (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>),
    step: &str,
) -> anyhow::Result<()> {
    let cli = rotate_in_background(agent, "svc/key")?;
    let deadline = crate::harness::pace::scaled(Duration::from_secs(30));
    tokio::task::spawn_blocking(move || reached.recv_timeout(deadline))
        .await?
        .with_context(|| format!("the rotation never reached {step}"))?;
    agent.sigkill().await?;
    let _ = release.send(());
    let _ = cli.await;
    agent.start().await
}

#[tokio::test]
async fn an_agent_killed_mid_rotation_finishes_or_rolls_it_back_on_restart() -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    let mut agent = Agent::builder()
        .append(&plugin_toml(&service)?)
        .start()
        .await?;
    assert_eq!(
        agent
            .admin()?
            .write("svc/key", json!({ "key": ORIGINAL }))
            .await?
            .status,
        200
    );

    // Killed in step 1, while the service creates the key: step 1 runs again on
    // restart and the rotation finishes. The key the killed request made is unknown
    // to the agent and stays at the service.
    let stall = service.stall_create();
    crash_during_rotation(&mut agent, stall, "step 1").await?;
    crate::spawn::wait_until(
        "the rotation interrupted in step 1 to complete after restart",
        Duration::from_secs(20),
        || async { current_key(&agent).await.is_ok_and(|k| k != ORIGINAL) },
    )
    .await?;
    let first = current_key(&agent).await?;
    assert!(service.is_live(&first), "the promoted key works");
    assert_eq!(service.created().len(), 2, "{:?}", service.created());
    assert_eq!(service.created().last(), Some(&first));
    crate::spawn::wait_until(
        "the original key to be retired",
        Duration::from_secs(10),
        || async { !service.is_live(ORIGINAL) },
    )
    .await?;

    // Killed in step 3, while the published pending key is tested: finished on restart.
    let stall = service.stall_check_of_new_key();
    crash_during_rotation(&mut agent, stall, "step 3").await?;
    crate::spawn::wait_until(
        "the rotation to complete after restart",
        Duration::from_secs(20),
        || async { current_key(&agent).await.is_ok_and(|k| k != first) },
    )
    .await?;
    let new_key = current_key(&agent).await?;
    assert!(service.is_live(&new_key), "the promoted key works");
    assert_eq!(
        service.created().last().map(String::as_str),
        Some(new_key.as_str()),
        "the pending key created before the crash was promoted, not a new one"
    );
    crate::spawn::wait_until(
        "the old key to be retired",
        Duration::from_secs(10),
        || async { !service.is_live(&first) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_password_set_in_place_before_a_crash_is_made_again_on_restart() -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    let mut agent =
        agent_with_key(&plugin_toml_with(&service, "0s", r#", in_place = "true""#)?).await?;

    // The service takes the new password as the agent dies, before the agent could
    // record it: without a replay the agent would keep a password that no longer
    // works.
    let stall = service.stall_create();
    crash_during_rotation(&mut agent, stall, "step 1").await?;
    crate::spawn::wait_until(
        "the agent to serve the password the service holds",
        Duration::from_secs(20),
        || async {
            current_key(&agent)
                .await
                .is_ok_and(|k| k != ORIGINAL && service.is_live(&k))
        },
    )
    .await?;
    let key = current_key(&agent).await?;
    assert_eq!(
        service.created(),
        vec![key.clone(), key],
        "step 1 ran again with the same randomness and set the same password"
    );
    assert!(!service.is_live(ORIGINAL));
    Ok(())
}

/// Runs `latchkey rotate PATH` against `agent`'s folder in the background.
pub(super) fn rotate_in_background(
    agent: &Agent,
    path: &'static str,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<std::process::Output>>> {
    let bin = crate::harness::binary()?;
    let dir = agent.dir().to_owned();
    Ok(tokio::spawn(async move {
        tokio::process::Command::new(bin)
            .args(["rotate", path, "--dir"])
            .arg(dir)
            .output()
            .await
    }))
}

#[tokio::test]
async fn operator_rotations_count_against_the_scheduler_concurrency() -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    let agent = Agent::builder()
        .append(&plugin_toml(&service)?)
        .append("\n[scheduler]\nconcurrency = 1\n")
        .start()
        .await?;
    for path in ["svc/a", "svc/b"] {
        let written = agent
            .admin()?
            .write(path, json!({ "key": ORIGINAL }))
            .await?;
        assert_eq!(written.status, 200, "{}", written.body);
    }

    let (reached, release) = service.stall_create();
    let first = rotate_in_background(&agent, "svc/a")?;
    let deadline = crate::harness::pace::scaled(Duration::from_secs(30));
    tokio::task::spawn_blocking(move || reached.recv_timeout(deadline))
        .await?
        .context("the first rotation never reached the service")?;
    let second = rotate_in_background(&agent, "svc/b")?;
    // The second rotation waits for the only permit, which the stalled first one holds.
    // Nothing says "waiting", so watch a window: its key creation must not reach the
    // service (which answers other requests while one is stalled), and the command
    // must still be waiting at the end.
    crate::harness::holds_for(
        "no second key creation at the service while the only permit is held",
        Duration::from_millis(1500),
        || async { service.creations_begun() == 1 },
    )
    .await?;
    assert!(
        !second.is_finished(),
        "the second rotation ended while the first held the only permit: {:?}",
        second.await?
    );

    let _ = release.send(());
    for (path, cli) in [("svc/a", first), ("svc/b", second)] {
        let out = cli.await??;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        service.created().len(),
        2,
        "both rotated, one after the other"
    );
    Ok(())
}

#[tokio::test]
async fn the_pending_credential_is_readable_by_a_rotator_while_it_is_tested() -> anyhow::Result<()>
{
    let service = Service::start(ORIGINAL)?;
    let agent = Agent::builder()
        .append(&plugin_toml(&service)?)
        .allow(
            "spiffe://latchkey.local/app/consumer",
            &["svc/**"],
            &["read"],
        )
        .start()
        .await?;
    let admin = agent.admin()?;
    assert_eq!(
        admin
            .write("svc/key", json!({ "key": ORIGINAL }))
            .await?
            .status,
        200
    );
    let consumer = agent.issue_cert("consumer", None).await?;
    let app = agent.client_for(&consumer)?;
    // No rotation: nothing is pending.
    assert_eq!(
        admin.get("/v1/secrets/svc/key?label=pending").await?.status,
        404
    );

    // Held in step 3 (the pending key is being tested).
    let (reached, release) = service.stall_check_of_new_key();
    let cli = rotate_in_background(&agent, "svc/key")?;
    let deadline = crate::harness::pace::scaled(Duration::from_secs(30));
    tokio::task::spawn_blocking(move || reached.recv_timeout(deadline))
        .await?
        .context("the rotation never reached step 3")?;
    let pending = admin.get("/v1/secrets/svc/key?label=pending").await?;
    assert_eq!(pending.status, 200, "{}", pending.body);
    let key = pending.field("key").context("the pending key")?;
    assert_ne!(key, ORIGINAL);
    assert!(
        service.created().contains(&key),
        "the key being tested: {key}"
    );
    assert_eq!(pending.json()["labels"][0], "pending", "{}", pending.body);
    // An app that may only read gets the current key, and not the pending one.
    assert_eq!(
        app.read("svc/key").await?.field("key").as_deref(),
        Some(ORIGINAL)
    );
    assert_eq!(
        app.get("/v1/secrets/svc/key?label=pending").await?.status,
        403
    );
    let _ = release.send(());
    let _ = cli.await;
    crate::spawn::wait_until("the promotion", Duration::from_secs(20), || async {
        current_key(&agent).await.is_ok_and(|k| k == key)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn plugin_calls_and_lifecycle_outcomes_are_metrics() -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    let agent = agent_with_key(&plugin_toml(&service)?).await?;
    let out = agent.cli(["validate", "svc/key"]).run().await?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 0, "{text}");
    let scrape = agent.admin()?.get("/metrics").await?.body;
    for series in [
        "latchkey_plugin_calls_total{plugin=\"svc\",call=\"validate\",outcome=\"ok\"}",
        "latchkey_plugin_calls_total{plugin=\"svc\",call=\"create-pending\",outcome=\"ok\"} 1",
        "latchkey_plugin_call_duration_seconds_count{plugin=\"svc\",call=\"create-pending\"} 1",
        "latchkey_lifecycle_operations_total{plugin=\"svc\",op=\"validate\",outcome=\"ok\"} 1",
        "latchkey_lifecycle_operations_total{plugin=\"svc\",op=\"rotate\",outcome=\"ok\"} 1",
    ] {
        assert!(scrape.contains(series), "{series} in:\n{scrape}");
    }
    assert!(!scrape.contains(ORIGINAL), "no values");
    Ok(())
}
