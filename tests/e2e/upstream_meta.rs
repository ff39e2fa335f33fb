//! Latchkey's own metadata travels through the upstream: a kind and an expiry written
//! through one agent are stored in OpenBao's `custom_metadata` and AWS tags (next to
//! a team's own entries, which stay), and a second agent on the same upstream serves
//! them.

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::harness::{eventually, Agent};
use crate::moto::Moto;
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{aws_agent, bao_upstream, sync_section, token_auth};

const EXPIRES: &str = "2031-05-06T07:08:09Z";
const EXPIRES_UNIX: &str = "1935817689";

async fn bao_agent(bao: &OpenBao) -> anyhow::Result<Agent> {
    Agent::builder()
        .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
        .append(&sync_section("1s", "24h", 4))
        .start()
        .await
}

/// Waits until `agent` serves `path` with `kind`; returns the read.
async fn served_kind(agent: &Agent, path: &str, kind: &str) -> anyhow::Result<Value> {
    let admin = agent.admin()?;
    eventually(
        &format!("{path} as {kind}"),
        std::time::Duration::from_secs(15),
        || async {
            let read = admin.read(path).await.ok()?;
            (read.status == 200 && read.json()["kind"] == kind).then(|| read.json())
        },
    )
    .await
}

/// Writes `apps/db` through `agent` as kind `database`, expiring at [`EXPIRES`].
async fn write_database(agent: &Agent) -> anyhow::Result<()> {
    let put = agent
        .admin()?
        .put(
            "apps/db",
            json!({"fields": {"password": "second"}, "kind": "database", "expires_at": EXPIRES}),
        )
        .await?;
    anyhow::ensure!(put.status == 200, "{}", put.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_and_expiry_reach_a_second_agent_through_openbao() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/db", json!({"password": "first"})).await?;
    // A team's own custom_metadata entry, which latchkey must leave alone.
    bao.ok(
        "POST",
        "secret/metadata/apps/db",
        Some(json!({"custom_metadata": {"team": "payments"}})),
    )
    .await?;
    let first = bao_agent(&bao).await?;
    write_database(&first).await?;

    let (_, meta) = bao.api("GET", "secret/metadata/apps/db", None).await?;
    let custom = &meta["data"]["custom_metadata"];
    assert_eq!(custom["latchkey-kind"], "database", "{meta}");
    assert_eq!(custom["latchkey-expires-at"], EXPIRES_UNIX, "{meta}");
    assert_eq!(custom["team"], "payments", "a team's entry stays: {meta}");

    let second = bao_agent(&bao).await?;
    let read = served_kind(&second, "apps/db", "database").await?;
    assert_eq!(read["expires_at"], EXPIRES, "{read}");
    assert_eq!(read["fields"]["password"], "second", "{read}");

    // A write without an expiry removes it upstream too.
    let put = second
        .admin()?
        .put(
            "apps/db",
            json!({"fields": {"password": "third"}, "kind": "database"}),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let (_, meta) = bao.api("GET", "secret/metadata/apps/db", None).await?;
    assert!(
        meta["data"]["custom_metadata"]
            .get("latchkey-expires-at")
            .is_none(),
        "{meta}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_and_expiry_reach_a_second_agent_through_aws_tags() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    moto.ok(
        "CreateSecret",
        json!({"Name": "apps/db", "SecretString": "{\"password\":\"first\"}",
               "Tags": [{"Key": "team", "Value": "payments"}]}),
    )
    .await?;
    let first = aws_agent(&moto.endpoint).await?;
    served_kind(&first, "apps/db", "generic").await?;
    write_database(&first).await?;
    let described = moto
        .ok("DescribeSecret", json!({"SecretId": "apps/db"}))
        .await?;
    let tags: Vec<(String, String)> = described["Tags"]
        .as_array()
        .context("tags")?
        .iter()
        .filter_map(|t| {
            Some((
                t["Key"].as_str()?.to_owned(),
                t["Value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    for want in [
        ("latchkey:kind", "database"),
        ("latchkey:expires-at", EXPIRES_UNIX),
        ("team", "payments"),
    ] {
        assert!(
            tags.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {tags:?}"
        );
    }
    let second = aws_agent(&moto.endpoint).await?;
    let read = served_kind(&second, "apps/db", "database").await?;
    assert_eq!(read["expires_at"], EXPIRES, "{read}");
    Ok(())
}
