//! Three agents sharing one OpenBao, with the same rotation due: exactly one of them
//! rotates (counted as password changes at the PostgreSQL server), and all three serve
//! the new password after their next sync. And when the agent that rotated dies in
//! the grace window, another one retires the previous credential.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::postgres::{credential, postgres_toml, roles};
use super::service::Service;
use super::staged::plugin_toml_with;
use super::status;
use crate::harness::pace;
use crate::harness::postgres::PgServer;
use crate::harness::{eventually, Agent};
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{bao_upstream, sync_section, token_auth, CountingProxy};

fn password_changes(pg: &PgServer) -> usize {
    pg.statements()
        .iter()
        // A new password set on a role (retiring sets `PASSWORD NULL`); not the
        // test's own setup.
        .filter(|s| s.contains("PASSWORD '") && !s.starts_with("CREATE ROLE"))
        .count()
}

/// The audit records of `op` with `outcome` on `agent`.
fn audited(agent: &Agent, op: &str, outcome: &str) -> Vec<Value> {
    agent
        .audit_records()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["op"] == op && r["outcome"] == outcome)
        .collect()
}

#[tokio::test]
async fn three_agents_sharing_one_openbao_rotate_once() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let initial = "initial-Password-0002";
    roles(&pg, initial).await?;
    let bao = OpenBao::start().await?;
    bao.put_kv("db/app", json!({"username": "app_a", "password": initial}))
        .await?;
    // The next rotation is due one period after the first: the checks below must end
    // before it, however slow the machine.
    let every = pace::scaled_setting(Duration::from_secs(8));
    let toml = postgres_toml(&every, "1h")?;
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(
            Agent::builder()
                .env("LK_PG_ADMIN_URL", &pg.admin_url())
                .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
                .append(&sync_section("1s", "24h", 8))
                .append(&toml)
                .start()
                .await?,
        );
    }
    // A rotation is done when its new credential is promoted upstream (the password is
    // set at the server before that, in step 1).
    let (new_user, new_password) = eventually(
        "a rotation promoted upstream",
        Duration::from_secs(40),
        || async {
            let (_, remote) = bao.api("GET", "secret/data/db/app", None).await.ok()?;
            let fields = &remote["data"]["data"];
            let user = fields["username"].as_str()?.to_owned();
            let password = fields["password"].as_str()?.to_owned();
            (password != initial).then_some((user, password))
        },
    )
    .await?;
    assert!(pg.can_login(&new_user, &new_password).await?);
    // Every agent has seen the rotation: it serves the new password, knows from the
    // coordination record when it happened (so it is not due again for a period),
    // and has no rotation of its own running. A second rotation would have been
    // started before that.
    for (i, agent) in agents.iter().enumerate() {
        let what = format!("agent {i} to serve the new password and know of the rotation");
        let (new_user, new_password) = (&new_user, &new_password);
        eventually(&what, Duration::from_secs(20), || async move {
            let answer = agent.admin().ok()?.read("db/app").await.ok()?;
            let served = credential(&answer.json())?;
            let status = status(agent, "db/app").await.ok()?;
            (served == (new_user.clone(), new_password.clone())
                && status["rotated_at"].is_string()
                && status["state"] != "rotating")
                .then_some(())
        })
        .await?;
    }
    assert_eq!(
        password_changes(&pg),
        1,
        "exactly one password change at the server: {:#?}",
        pg.statements()
    );
    let rotations: Vec<usize> = agents
        .iter()
        .map(|a| audited(a, "rotate", "ok").len())
        .collect();
    assert_eq!(
        rotations.iter().sum::<usize>(),
        1,
        "one agent rotated (successful rotations by agent: {rotations:?})"
    );
    Ok(())
}

#[tokio::test]
async fn a_surviving_agent_retires_the_previous_key_when_the_rotating_one_dies(
) -> anyhow::Result<()> {
    const ORIGINAL: &str = "key-original";
    // The winner retires the previous key when its grace window ends; the survivor
    // steps in one lease after that, if the winner is gone. The test kills the
    // winner inside the window, so the window must outlast the test's own steps on
    // this machine.
    let (grace, lease) = (Duration::from_secs(4), Duration::from_secs(2));
    let service = Service::start(ORIGINAL)?;
    let bao = OpenBao::start().await?;
    bao.put_kv("svc/key", json!({ "key": ORIGINAL })).await?;
    let toml = plugin_toml_with(&service, &pace::scaled_setting(grace), "")?;
    // The survivor reaches OpenBao through a proxy: once the winner is dead, every
    // upstream call of the survivor's takes half a second, as on a busy OpenBao.
    let proxy = CountingProxy::start(&bao.address).await?;
    let mut agents = Vec::new();
    for upstream in [&bao.address, &proxy.address] {
        agents.push(
            Agent::builder()
                .append(&bao_upstream(upstream, &token_auth(ROOT_TOKEN), ""))
                .append(&sync_section("1s", "24h", 8))
                .append(&toml)
                .append(&format!(
                    "[scheduler]\nlease = \"{}\"\n",
                    pace::scaled_setting(lease)
                ))
                .start()
                .await?,
        );
    }
    let key_served_by = |agent: &Agent| {
        let admin = agent.admin();
        async move {
            let answer = admin?.read("svc/key").await?;
            anyhow::Ok(answer.json()["fields"]["key"].as_str().map(str::to_owned))
        }
    };
    let (winner, survivor) = (&agents[0], &agents[1]);
    crate::spawn::wait_until("the survivor to sync", Duration::from_secs(20), || async {
        key_served_by(survivor).await.ok().flatten().as_deref() == Some(ORIGINAL)
    })
    .await?;

    let rotating = Instant::now();
    let out = winner.cli(["rotate", "svc/key"]).run().await?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let new_key = key_served_by(winner).await?.context("the new key")?;
    assert_ne!(new_key, ORIGINAL);
    agents[0].sigkill().await?;
    proxy.set_delay(Duration::from_millis(500));
    let killed_after = rotating.elapsed();
    if !service.is_live(ORIGINAL) || !audited(&agents[0], "retire", "ok").is_empty() {
        bail!(
            "the winner retired the previous key itself before it was killed, \
             {killed_after:.1?} after the rotation began: the grace window of {:.1?} \
             ({grace:?} {}) was too short for this machine",
            pace::scaled(grace),
            pace::describe()
        );
    }

    let survivor = &agents[1];
    crate::spawn::wait_until(
        "the survivor to serve the new key",
        Duration::from_secs(20),
        || async {
            key_served_by(survivor).await.ok().flatten().as_deref() == Some(new_key.as_str())
        },
    )
    .await?;
    // The audit record of the retirement comes after the service has retired the key
    // and the coordination record is updated upstream (slow here), then through the
    // audit writer: wait for the record, not for the service.
    survivor
        .wait_for_audit_within(
            "the survivor's retirement of the previous key",
            Duration::from_secs(30),
            |r| r["op"] == "retire" && r["outcome"] == "ok",
        )
        .await?;
    assert_eq!(
        service.retired(),
        vec![ORIGINAL.to_owned()],
        "retired once, and only the previous key"
    );
    assert!(!service.is_live(ORIGINAL));
    assert!(service.is_live(&new_key));
    let retirements = audited(survivor, "retire", "ok");
    assert_eq!(
        retirements.len(),
        1,
        "the survivor retired it once: {retirements:#?}"
    );
    Ok(())
}
