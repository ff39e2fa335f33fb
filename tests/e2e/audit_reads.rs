//! Successful reads are accounted for without one audit line per request: the
//! first read of each version by each reader is a record of its own, its repeats
//! are counted once a window, and every read is in some record's count.

use serde_json::{json, Value};

use crate::harness::agent::AgentBuilder;
use crate::harness::api::Api;
use crate::harness::{Agent, Identity};

const READS: u64 = 400;

fn reads_of(records: &[Value], peer: &str, version: u64) -> Vec<Value> {
    records
        .iter()
        .filter(|r| {
            r["op"] == "read"
                && r["outcome"] == "ok"
                && r["peer"] == peer
                && r["path"] == "apps/web/db"
                && r["version"] == version
        })
        .cloned()
        .collect()
}

fn total(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

/// An agent holding version 1 of `apps/web/db`, and app `web`'s client.
async fn agent_with_reader(builder: AgentBuilder) -> anyhow::Result<(Agent, Api, Api, Identity)> {
    let agent = builder.start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/web/db", json!({"password": "v1"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    Ok((agent, admin, app, web))
}

#[tokio::test]
async fn repeated_reads_are_counted_and_a_new_version_is_recorded_on_its_own() -> anyhow::Result<()>
{
    let (mut agent, admin, app, web) = agent_with_reader(Agent::builder()).await?;
    for _ in 0..READS {
        let answer = app.read("apps/web/db").await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    admin
        .write("apps/web/db", json!({"password": "v2"}))
        .await?;
    let first_of_v2 = app.read("apps/web/db").await?;
    assert_eq!(first_of_v2.field("password").as_deref(), Some("v2"));
    // Stopping writes what is still being counted.
    agent.stop().await?;

    let records = agent.audit_records()?;
    let v1 = reads_of(&records, web.id.as_str(), 1);
    assert_eq!(
        total(&v1),
        READS,
        "every read of version 1 is counted: {v1:?}"
    );
    assert!(
        v1.len() < 10,
        "{READS} reads in {} records: {v1:?}",
        v1.len()
    );
    assert_eq!(
        v1[0].get("count"),
        None,
        "the first read stands alone: {}",
        v1[0]
    );
    for counted in &v1[1..] {
        let (first, last) = (counted["time_ms"].as_i64(), counted["last_ms"].as_i64());
        assert!(
            first.zip(last).is_some_and(|(f, l)| f <= l),
            "a counted record spans its first and last read: {counted}"
        );
    }
    let v2 = reads_of(&records, web.id.as_str(), 2);
    assert_eq!(
        v2.len(),
        1,
        "the first read of a new version is its own record: {v2:?}"
    );
    assert!(
        !agent.audit_text().contains("v1\"") && !agent.audit_text().contains("v2\""),
        "no value reaches the trail"
    );
    Ok(())
}

#[tokio::test]
async fn reads_each_keeps_one_record_per_read() -> anyhow::Result<()> {
    let (mut agent, _admin, app, web) =
        agent_with_reader(Agent::builder().setting("reads", "\"each\"")).await?;
    for _ in 0..50 {
        app.read("apps/web/db").await?;
    }
    agent.stop().await?;
    let v1 = reads_of(&agent.audit_records()?, web.id.as_str(), 1);
    assert_eq!(v1.len(), 50, "{v1:?}");
    assert!(v1.iter().all(|r| r.get("count").is_none()));
    Ok(())
}
