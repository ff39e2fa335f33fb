//! Three agents sharing one OpenBao, with the same rotation due: exactly one of them
//! rotates (counted as password changes at the PostgreSQL server), and all three serve
//! the new password after their next sync. And when the agent that rotated dies in
//! the grace window, another one retires the previous credential.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::postgres::{credential, postgres_toml, roles};
use super::service::Service;
use super::staged::plugin_toml_with;
use crate::harness::postgres::PgServer;
use crate::harness::Agent;
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{bao_upstream, sync_section, token_auth};

fn password_changes(pg: &PgServer) -> usize {
    pg.statements()
        .iter()
        // A new password set on a role (retiring sets `PASSWORD NULL`); not the
        // test's own setup.
        .filter(|s| s.contains("PASSWORD '") && !s.starts_with("CREATE ROLE"))
        .count()
}

#[tokio::test]
async fn three_agents_sharing_one_openbao_rotate_once() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let initial = "initial-Password-0002";
    roles(&pg, initial).await?;
    let bao = OpenBao::start().await?;
    bao.put_kv("db/app", json!({"username": "app_a", "password": initial}))
        .await?;
    let toml = postgres_toml("8s", "1h")?;
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
    // Wait for the first rotation anywhere, then past every agent's due time.
    crate::spawn::wait_until("a rotation", Duration::from_secs(40), || async {
        password_changes(&pg) > 0
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        password_changes(&pg),
        1,
        "exactly one password change at the server: {:#?}",
        pg.statements()
    );
    let (_, remote) = bao.api("GET", "secret/data/db/app", None).await?;
    let new_user = remote["data"]["data"]["username"]
        .as_str()
        .context("username upstream")?
        .to_owned();
    let new_password = remote["data"]["data"]["password"]
        .as_str()
        .context("password upstream")?
        .to_owned();
    assert_ne!(new_password, initial);
    assert!(pg.can_login(&new_user, &new_password).await?);
    for agent in &agents {
        let mut served = None;
        for _ in 0..50 {
            let answer = agent.admin()?.read("db/app").await?;
            served = credential(&answer.json());
            if served.as_ref().is_some_and(|(_, p)| p == &new_password) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            served,
            Some((new_user.clone(), new_password.clone())),
            "every agent serves the new password"
        );
    }
    let rotations: usize = agents
        .iter()
        .map(|a| {
            a.audit_records()
                .unwrap_or_default()
                .iter()
                .filter(|r| r["op"] == "rotate" && r["outcome"] == "ok")
                .count()
        })
        .sum();
    assert_eq!(rotations, 1, "one agent rotated");
    Ok(())
}

#[tokio::test]
async fn a_surviving_agent_retires_the_previous_key_when_the_rotating_one_dies(
) -> anyhow::Result<()> {
    const ORIGINAL: &str = "key-original";
    let service = Service::start(ORIGINAL)?;
    let bao = OpenBao::start().await?;
    bao.put_kv("svc/key", json!({ "key": ORIGINAL })).await?;
    let toml = plugin_toml_with(&service, "4s", "")?;
    let mut agents = Vec::new();
    for _ in 0..2 {
        agents.push(
            Agent::builder()
                .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
                .append(&sync_section("1s", "24h", 8))
                .append(&toml)
                .append("[scheduler]\nlease = \"2s\"\n")
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

    let out = winner.cli(["rotate", "svc/key"]).run().await?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let new_key = key_served_by(winner).await?.context("the new key")?;
    assert_ne!(new_key, ORIGINAL);
    agents[0].sigkill().await?;
    assert!(
        service.is_live(ORIGINAL),
        "the previous key works through the grace window"
    );

    let survivor = &agents[1];
    crate::spawn::wait_until(
        "the survivor to serve the new key",
        Duration::from_secs(20),
        || async {
            key_served_by(survivor).await.ok().flatten().as_deref() == Some(new_key.as_str())
        },
    )
    .await?;
    crate::spawn::wait_until(
        "the survivor to retire the previous key",
        Duration::from_secs(30),
        || async { !service.is_live(ORIGINAL) },
    )
    .await
    .with_context(|| survivor.logs())?;
    assert_eq!(
        service.retired(),
        vec![ORIGINAL.to_owned()],
        "retired once, and only the previous key"
    );
    assert!(service.is_live(&new_key));
    let retirements = survivor
        .audit_records()?
        .into_iter()
        .filter(|r| r["op"] == "retire" && r["outcome"] == "ok")
        .count();
    assert_eq!(retirements, 1, "the survivor did it");
    Ok(())
}
