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

/// Parses OpenMetrics text with the Python `prometheus_client` parser (not ours),
/// printing `name value` for every sample.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(sample.name, sample.value)
"#;

#[tokio::test]
async fn the_plain_http_listener_serves_metrics_and_health_to_scrapers_and_nothing_else(
) -> anyhow::Result<()> {
    let port = crate::harness::free_port()?;
    let agent = Agent::builder()
        .append(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
        .start()
        .await?;
    let admin = agent.admin()?;
    admin
        .write("apps/web/db", json!({ "password": "scraped-secret-value" }))
        .await?;
    assert_eq!(admin.read("apps/web/db").await?.status, 200);

    // A scraper with no certificate at all, over plain HTTP (a test client, not an
    // upstream one).
    #[allow(clippy::disallowed_methods)]
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let metrics = http.get(format!("{base}/metrics")).send().await?;
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text")));
    let text = metrics.text().await?;
    assert!(!text.contains("scraped-secret-value"), "{text}");
    assert!(!text.contains("apps/web/db"), "no paths: {text}");

    let mut parser = tokio::process::Command::new(crate::spawn::tool("python3"))
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = parser
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdin"))?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await?;
    drop(stdin);
    let parsed = parser.wait_with_output().await?;
    let samples = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert!(
        samples
            .lines()
            .any(|l| l.starts_with("latchkey_requests_total")),
        "the request counter is among the parsed samples: {samples}"
    );

    let health = http.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await?;
    assert_eq!(body["status"], "ok", "{body}");

    // Nothing else is served here: no secrets, no admin routes, GET only.
    for path in ["/v1/secrets/apps/web/db", "/v1/whoami", "/v1/sync", "/"] {
        let res = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(res.status(), 404, "{path}");
    }
    let post = http.post(format!("{base}/metrics")).send().await?;
    assert_eq!(post.status(), 405);
    Ok(())
}
