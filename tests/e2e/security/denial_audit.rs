//! Denials are audited without a flood of them flooding the trail: repeated
//! denials coalesce into one record a second per client and reason, with counts.
//!
//! Each denied request used to write a record of its own: 3,000 records in 0.7 s
//! from one client. Certificate refusals were coalesced already; every denial now is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, foreign, Agent};

const DENIED: u64 = 3000;
const OUTSIDE: u64 = 300;
/// Clients sending at once, each over its own keep-alive connection.
const CLIENTS: u64 = 4;

/// Sum of `count` (absent: one) over the records `select` picks, and how many there are.
fn tally(agent: &Agent, select: impl Fn(&Value) -> bool) -> anyhow::Result<(u64, usize)> {
    let records: Vec<Value> = agent.audit_records()?.into_iter().filter(select).collect();
    let sum = records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    Ok((sum, records.len()))
}

#[tokio::test]
async fn r11_thousands_of_denials_make_a_few_records_whose_counts_add_up() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    agent
        .admin()?
        .write("apps/b/secret", json!({"password": "b-only"}))
        .await?;
    let a = agent.issue_cert("a", None).await?;
    let outsider = foreign::from_agent_ca(
        agent.dir(),
        &agent.scratch().join("outsider"),
        "outsider",
        "spiffe://evil.example/app/a",
    )?;

    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        let api = agent.client_for(&a)?;
        tasks.spawn(async move {
            let mut statuses = BTreeMap::new();
            for i in 0..DENIED / CLIENTS {
                // Varying the path does not open a new group.
                let path = format!("apps/b/secret{}", (i + n) % 7);
                let status = api.read(&path).await?.status;
                *statuses.entry(status).or_insert(0u64) += 1;
            }
            anyhow::Ok(statuses)
        });
    }
    let api = agent.client_for(&outsider)?;
    tasks.spawn(async move {
        let mut statuses = BTreeMap::new();
        for _ in 0..OUTSIDE {
            let status = api.read("apps/a/x").await?.status;
            *statuses.entry(status + 1000).or_insert(0u64) += 1;
        }
        anyhow::Ok(statuses)
    });
    let mut statuses = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (status, n) in done?? {
            *statuses.entry(status).or_insert(0u64) += n;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        statuses,
        BTreeMap::from([(403, DENIED), (1403, OUTSIDE)]),
        "every request was denied (outside the trust domain: +1000)"
    );

    let forbidden = |r: &Value| {
        r["outcome"] == "denied" && r["peer"] == a.id.as_str() && r["code"] == "forbidden"
    };
    let bad_identity = |r: &Value| r["outcome"] == "denied" && r["code"] == "bad_identity";
    // The held counts are written once their window closes: wait for them.
    eventually(
        "the coalesced counts to add up",
        Duration::from_secs(10),
        || async {
            let (denied, _) = tally(&agent, forbidden).ok()?;
            let (outside, _) = tally(&agent, bad_identity).ok()?;
            (denied == DENIED && outside == OUTSIDE).then_some(())
        },
    )
    .await?;
    // At most about one record a second per group (a first one, then one summary a
    // second, a few more at the edges).
    let bound = 2 * (took.as_secs() as usize + 3);
    let (_, records) = tally(&agent, forbidden)?;
    assert!(
        records <= bound,
        "{records} records for {DENIED} denials in {took:?} (at most {bound})"
    );
    let (_, records) = tally(&agent, bad_identity)?;
    assert!(
        records <= bound,
        "{records} records for {OUTSIDE} refused identities in {took:?} (at most {bound})"
    );
    // Every record still says who, what and why; a summary holds one of its paths.
    let all: Vec<Value> = agent
        .audit_records()?
        .into_iter()
        .filter(forbidden)
        .collect();
    assert!(
        all.iter().all(|r| r["op"] == "read"
            && r["status"] == 403
            && r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("apps/b/secret"))),
        "{all:#?}"
    );
    // The metric counts every denial.
    let metrics = agent.admin()?.get("/metrics").await?.body;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("latchkey_denials_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        counted >= (DENIED + OUTSIDE) as f64,
        "{counted} denials counted:\n{metrics}"
    );
    Ok(())
}
