//! A provider written in Python with the SDK (`examples/plugins/python`), in the real
//! agent: loaded from its folder with its manifest, it validates a credential on
//! schedule (`validate_every`) and refreshes it ahead of expiry (`refresh_before`)
//! against a loopback token service, and the agent serves the refreshed token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latchkey_guest_build::Lang;
use serde_json::json;

use crate::harness::wasm::{self, sha256_of};
use crate::harness::{eventually, token_service, Agent};

#[tokio::test]
async fn a_python_sdk_provider_validates_and_refreshes_on_schedule() -> anyhow::Result<()> {
    let service = token_service::start()?;
    let wasm = wasm::example(Lang::Python)?;
    let agent = Agent::builder()
        .append(&format!(
            r#"
[[plugin]]
name = "example-python"
wasm = {wasm:?}
sha256 = "{sha}"
http = ["{grant}"]

[[lifecycle]]
paths = ["tokens/*"]
plugin = "example-python"
config = {{ base-url = "{base}", timeout = "5" }}
validate_every = "2s"
refresh_before = "30s"
retry_after = "1h"
"#,
            wasm = wasm.display().to_string(),
            sha = sha256_of(&wasm)?,
            grant = service.grant(),
            base = service.url(),
        ))
        .start()
        .await?;
    let admin = agent.admin()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    // Due for refresh 4 s from now (expiry 34 s away, refreshed 30 s before): the
    // schedule refreshes it, not a read of an expired token.
    let put = admin
        .put(
            "tokens/reports",
            json!({
                "kind": "access-token",
                "fields": { "access-token": "good", "refresh-token": "refresh-1" },
                "expires_at": latchkey::api::rfc3339(now + 34),
            }),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);

    // Validated on schedule: the service saw the token, the status says when.
    let validated = eventually(
        "a scheduled validation",
        Duration::from_secs(20),
        || async {
            let status = crate::lifecycle::status(&agent, "tokens/reports")
                .await
                .ok()?;
            status["validated_at"].is_string().then_some(status)
        },
    )
    .await?;
    assert_eq!(validated["state"], "active", "{validated}");
    let introspected = service
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/token/introspect")
        .expect("an introspection request");
    assert_eq!(introspected.header("authorization"), Some("Bearer good"));

    // Refreshed on schedule: the agent serves the token the service handed out.
    let served = eventually("the refreshed token", Duration::from_secs(30), || async {
        let read = admin.read("tokens/reports").await.ok()?;
        let token = read.json()["fields"]["access-token"].as_str()?.to_owned();
        (token != "good").then_some(read.json())
    })
    .await?;
    assert_eq!(served["fields"]["access-token"], "fresh-9", "{served}");
    assert_eq!(served["fields"]["refresh-token"], "refresh-2", "{served}");
    let refreshes: Vec<_> = service
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/token/refresh")
        .collect();
    assert_eq!(refreshes.len(), 1, "one refresh");
    let length = refreshes[0].body.len().to_string();
    assert_eq!(refreshes[0].header("content-length"), Some(length.as_str()));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&refreshes[0].body)?,
        json!({ "refresh_token": "refresh-1" })
    );
    let status = crate::lifecycle::status(&agent, "tokens/reports").await?;
    assert_eq!(status["state"], "active", "{status}");
    assert!(status["refreshed_at"].is_string(), "{status}");
    agent
        .wait_for_audit("the refresh", |r| {
            r["op"] == "refresh" && r["outcome"] == "ok"
        })
        .await?;
    Ok(())
}
