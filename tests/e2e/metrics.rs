//! `GET /metrics`: Prometheus text for admin peers, counting requests, denials and
//! cache use, with no paths or values in it.

use serde_json::json;

use crate::harness::Agent;

#[tokio::test]
async fn metrics_count_requests_denials_and_cache_use_without_values() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write(
            "apps/web/db",
            json!({ "password": "metric-secret-value-1" }),
        )
        .await?;
    for _ in 0..3 {
        assert_eq!(admin.read("apps/web/db").await?.status, 200);
    }
    let web = agent.issue_cert("web", None).await?;
    let api = agent.client_for(&web)?;
    assert_eq!(api.read("demo/other").await?.status, 403);
    // Apps may not scrape.
    assert_eq!(api.get("/metrics").await?.status, 403);

    let scrape = admin.get("/metrics").await?;
    assert_eq!(scrape.status, 200);
    let text = scrape.body;
    assert!(
        text.contains("latchkey_requests_total{op=\"read\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("latchkey_requests_total{op=\"write\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("latchkey_denials_total{op=\"read\"} 1"),
        "{text}"
    );
    assert!(text.contains("latchkey_cache_hits_total 2"), "{text}");
    assert!(text.contains("latchkey_secrets 1"), "{text}");
    assert!(!text.contains("metric-secret-value-1"));
    assert!(!text.contains("apps/web"), "no paths in labels: {text}");
    Ok(())
}
