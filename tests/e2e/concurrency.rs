//! Concurrent writers: many PUTs at once all complete and all land (regression test
//! for a lock-up in the store's flush under concurrent transactions).

use std::time::Duration;

use serde_json::json;

use crate::harness::Agent;

#[tokio::test]
async fn concurrent_puts_all_complete_and_land() -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().start().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let api = agent.admin()?;
        tasks.spawn(async move {
            let mut versions = Vec::new();
            for round in 0..5 {
                let answer = api
                    .write(
                        &format!("load/s{:02}", i % 8),
                        json!({ "value": format!("v-{i}-{round}") }),
                    )
                    .await?;
                anyhow::ensure!(answer.status == 200, "{}", answer.body);
                versions.push(answer.version().unwrap_or(0));
            }
            Ok::<_, anyhow::Error>(versions)
        });
    }
    let all = crate::harness::within(
        "the concurrent writes to finish (a lock-up if not)",
        Duration::from_secs(60),
        async {
            let mut all = Vec::new();
            while let Some(done) = tasks.join_next().await {
                all.extend(done??);
            }
            Ok::<_, anyhow::Error>(all)
        },
    )
    .await??;
    assert_eq!(all.len(), 160);
    // 8 secrets, 20 writes each: every version 1..=20 handed out exactly once per path.
    let listed = agent.admin()?.list("load/").await?;
    assert_eq!(listed.paths().len(), 8, "{}", listed.body);
    for s in 0..8 {
        let read = agent.admin()?.read(&format!("load/s{s:02}")).await?;
        assert_eq!(read.version(), Some(20), "{}", read.body);
    }
    // The agent still stops cleanly.
    let mut agent = agent;
    let status = agent.stop().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
