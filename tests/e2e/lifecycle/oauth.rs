//! OAuth refresh through the agent and the real `oauth2-mock-server`: an expired
//! access token read by 50 concurrent requests is refreshed once at the server and all
//! 50 get the fresh token; a refresh token the server rejects moves the credential to
//! `reauth-required`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::harness::oauth_server::{OAuthServer, Settings};
use crate::harness::wasm::sha256_of;
use crate::harness::Agent;

fn rfc3339_ago(seconds: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    latchkey::api::rfc3339(now - seconds)
}

async fn agent_for(server: &OAuthServer) -> anyhow::Result<(Agent, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let wasm = server.install_plugin(dir.path())?;
    let agent = Agent::builder()
        .append(&format!(
            r#"
[[plugin]]
name = "oauth2"
wasm = {wasm:?}
sha256 = "{sha}"
http = ["{authority}"]
allow_networks = ["127.0.0.0/8"]

[[lifecycle]]
paths = ["oauth/*"]
plugin = "oauth2"
config = {{ token-endpoint = "{endpoint}", client-auth = "basic" }}
refresh_before = "30s"
retry_after = "1h"
"#,
            wasm = wasm.display().to_string(),
            sha = sha256_of(&wasm)?,
            authority = server.grant(),
            endpoint = server.token_endpoint(),
        ))
        .start()
        .await?;
    Ok((agent, dir))
}

#[tokio::test]
async fn fifty_concurrent_reads_of_an_expired_token_share_one_refresh() -> anyhow::Result<()> {
    let server = OAuthServer::start().await?;
    // Slow token answers widen the window in which the reads overlap the refresh.
    server
        .set(Settings {
            delay_ms: Some(500),
            expires_in: Some(3600),
            ..Settings::default()
        })
        .await?;
    let (agent, _plugin_dir) = agent_for(&server).await?;
    let admin = agent.admin()?;
    let put = admin
        .put(
            "oauth/reports",
            json!({
                "kind": "oauth2",
                "fields": {
                    "access-token": "expired-access-token",
                    "refresh-token": "refresh-1",
                    "client-id": "reports",
                    "client-secret": "reports-secret",
                    "token-type": "Bearer",
                },
                "expires_at": rfc3339_ago(60),
            }),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let mut reads = Vec::new();
    for _ in 0..50 {
        let api = agent.admin()?;
        reads.push(tokio::spawn(async move { api.read("oauth/reports").await }));
    }
    let mut tokens = Vec::new();
    for read in reads {
        let answer = read.await??;
        assert_eq!(answer.status, 200, "{}", answer.body);
        tokens.push(
            answer.json()["fields"]["access-token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "one fresh token for all"
    );
    assert_ne!(tokens[0], "expired-access-token");
    assert!(!tokens[0].is_empty());
    assert_eq!(
        server.token_requests("refresh_token").await?,
        1,
        "one refresh"
    );
    let status = super::status(&agent, "oauth/reports").await?;
    assert_eq!(status["state"], "active", "{status}");
    assert!(status["refreshed_at"].is_string(), "{status}");
    agent
        .wait_for_audit("the refresh", |r| {
            r["op"] == "refresh" && r["outcome"] == "ok"
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rejected_refresh_token_requires_reauthentication() -> anyhow::Result<()> {
    let server = OAuthServer::start().await?;
    let (agent, _plugin_dir) = agent_for(&server).await?;
    let admin = agent.admin()?;
    let put = admin
        .put(
            "oauth/revoked",
            json!({
                "kind": "oauth2",
                "fields": {
                    "access-token": "expired-access-token",
                    "refresh-token": "revoked-by-the-user",
                    "client-id": "reports",
                    "client-secret": "reports-secret",
                },
                "expires_at": rfc3339_ago(60),
            }),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let answer = admin.read("oauth/revoked").await?;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("invalid_grant"), "{}", answer.body);
    assert!(
        !answer.body.contains("revoked-by-the-user"),
        "{}",
        answer.body
    );
    crate::spawn::wait_until("reauth-required", Duration::from_secs(10), || async {
        super::status(&agent, "oauth/revoked")
            .await
            .is_ok_and(|s| s["state"] == "reauth-required")
    })
    .await?;
    agent
        .wait_for_audit("the failed refresh", |r| {
            r["op"] == "refresh" && r["outcome"] == "failed"
        })
        .await?;
    Ok(())
}
