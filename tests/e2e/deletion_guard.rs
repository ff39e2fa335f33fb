//! The mass-deletion guard against a real OpenBao: a dev server restarted empty, or a
//! mount replaced under a running agent, must not empty the agent's cache; single
//! deletions (by metadata, or a soft delete) still go at once; an operator accepts a
//! held mass deletion with `latchkey sync --accept-deletions`.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::harness::api::Api;
use crate::harness::{eventually, Agent};
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{bao_upstream, sync_section, token_auth};

/// How long a poll-driven change may take here (1 s polls).
const WITHIN: Duration = Duration::from_secs(15);

async fn agent_on(bao: &OpenBao) -> anyhow::Result<Agent> {
    Agent::builder()
        .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
        .append(&sync_section("1s", "24h", 8))
        .start()
        .await
}

/// Waits until `path` answers `status` (and, for 200, `field` is `value`).
async fn wait_read(
    api: &Api,
    path: &str,
    status: u16,
    field: &str,
    value: &str,
) -> anyhow::Result<Value> {
    eventually(&format!("{path} to answer {status}"), WITHIN, || async {
        let got = api.read(path).await.ok()?;
        let ok =
            got.status == status && (status != 200 || got.field(field).as_deref() == Some(value));
        ok.then(|| got.json())
    })
    .await
}

/// Waits until health reports `held` held deletions; returns the health body.
async fn wait_held(admin: &Api, held: u64) -> anyhow::Result<Value> {
    eventually(&format!("{held} held deletions"), WITHIN, || async {
        let health = admin.health().await.ok()?;
        let body = health.json();
        (body
            .pointer("/upstream/held_deletions")
            .and_then(Value::as_u64)
            == Some(held))
        .then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_server_restarted_empty_does_not_empty_the_agent() -> anyhow::Result<()> {
    let mut bao = OpenBao::start().await?;
    for (name, pw) in [("db", "pw-db"), ("api", "pw-api"), ("cache", "pw-cache")] {
        bao.put_kv(&format!("apps/web/{name}"), json!({"password": pw}))
            .await?;
    }
    let agent = agent_on(&bao).await?;
    let admin = agent.admin()?;
    wait_read(&admin, "apps/web/cache", 200, "password", "pw-cache").await?;
    let before = admin.health().await?;
    assert_eq!(before.json()["status"], "ok", "{}", before.body);

    bao.restart_empty().await?;

    let health = wait_held(&admin, 3).await?;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["upstream"]["sync"], "stale", "{health}");
    let mut held: Vec<&str> = health["upstream"]["held"]
        .as_array()
        .context("held paths for an admin")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    held.sort_unstable();
    assert_eq!(held, ["apps/web/api", "apps/web/cache", "apps/web/db"]);
    // Still served, marked stale.
    let served = admin.read("apps/web/db").await?;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.field("password").as_deref(), Some("pw-db"));
    assert_eq!(served.json()["stale"], true, "{}", served.body);
    // Said once in the log, with what to do about it.
    let said = agent.log_lines_with("--accept-deletions");
    assert_eq!(said.len(), 1, "one warning for one hold: {said:#?}");
    let metrics = admin.get("/metrics").await?;
    assert!(
        metrics.body.contains("latchkey_upstream_held_deletions 3"),
        "{}",
        metrics.body
    );
    // The peer that is not admin sees the count, not the paths.
    let web = agent.issue_cert("web", None).await?;
    let seen = agent.client_for(&web)?.health().await?;
    assert_eq!(
        seen.json()["upstream"]["held_deletions"],
        3,
        "{}",
        seen.body
    );
    assert!(
        seen.json()["upstream"].get("held").is_none(),
        "{}",
        seen.body
    );

    // An operator accepts: the deletions apply, health is ok again.
    let out = agent
        .cli(["sync", "--accept-deletions"])
        .run()
        .await?
        .success()?;
    let report: Value = serde_json::from_str(out.stdout.trim()).context("report")?;
    assert_eq!(
        (report["deleted"].as_u64(), report["held"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );
    assert_eq!(admin.read("apps/web/db").await?.status, 404);
    let after = admin.health().await?;
    assert_eq!(after.json()["status"], "ok", "{}", after.body);
    let audit = agent.audit_text();
    assert!(audit.contains("accept deletions (3 held)"), "{audit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_replaced_under_the_agent_is_held_while_single_deletions_go() -> anyhow::Result<()>
{
    let bao = OpenBao::start().await?;
    for name in ["a", "b", "c", "d"] {
        bao.put_kv(&format!("apps/{name}"), json!({"v": name}))
            .await?;
    }
    let agent = agent_on(&bao).await?;
    let admin = agent.admin()?;
    wait_read(&admin, "apps/d", 200, "v", "d").await?;

    // One deleted with its metadata (it goes at once), one soft-deleted (at once
    // too: its current version answers 410).
    bao.ok("DELETE", "secret/metadata/apps/a", None).await?;
    bao.ok("DELETE", "secret/data/apps/b", None).await?;
    wait_read(&admin, "apps/a", 404, "", "").await?;
    wait_read(&admin, "apps/b", 410, "", "").await?;
    assert_eq!(admin.health().await?.json()["status"], "ok");

    // The mount the agent reads is moved away and an empty one takes its name.
    bao.ok(
        "POST",
        "sys/remount",
        Some(json!({"from": "secret", "to": "moved"})),
    )
    .await?;
    // The move runs in the background: enable the new mount once the path is free.
    eventually("the new mount at secret/", WITHIN, || async {
        bao.ok(
            "POST",
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await
        .ok()
    })
    .await?;

    // b, c and d vanish from the new mount's listing: all of them, held.
    let health = wait_held(&admin, 3).await?;
    assert_eq!(health["status"], "degraded", "{health}");
    for name in ["c", "d"] {
        let served = admin.read(&format!("apps/{name}")).await?;
        assert_eq!(served.field("v").as_deref(), Some(name), "{}", served.body);
        assert_eq!(served.json()["stale"], true, "{}", served.body);
    }
    // A plain `latchkey sync` keeps holding them.
    let out = agent.cli(["sync"]).run().await?.success()?;
    let report: Value = serde_json::from_str(out.stdout.trim()).context("report")?;
    assert_eq!(
        (report["deleted"].as_u64(), report["held"].as_u64()),
        (Some(0), Some(3)),
        "{report}"
    );

    // Moved back: the agent follows again and the hold ends by itself.
    bao.ok("DELETE", "sys/mounts/secret", None).await?;
    eventually("the move back to secret/", WITHIN, || async {
        bao.ok(
            "POST",
            "sys/remount",
            Some(json!({"from": "moved", "to": "secret"})),
        )
        .await
        .ok()
    })
    .await?;
    let healed = eventually("the hold to end", WITHIN, || async {
        let body = admin.health().await.ok()?.json();
        (body["status"] == "ok").then_some(body)
    })
    .await?;
    assert_eq!(healed["upstream"]["held_deletions"], 0, "{healed}");
    let fresh = admin.read("apps/c").await?;
    assert_eq!(fresh.json()["stale"], false, "{}", fresh.body);
    Ok(())
}
