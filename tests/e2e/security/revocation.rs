//! Revocation reaches connections that were open before it: keep-alive
//! connections and watch streams of a revoked certificate are closed.
//!
//! A revocation used to stop new handshakes only: a keep-alive connection opened
//! before `cert revoke` went on being served, and a watch stream went on receiving
//! events. Every connection is also closed at its age limit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use http_body_util::BodyExt;
use serde_json::json;

use super::{KeepAlive, REVOCATION_DEADLINE};
use crate::harness::{eventually, within, Agent, Via};

#[tokio::test]
async fn r11_revocation_cuts_keep_alive_connections_and_watch_streams_opened_before_it(
) -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/web/db", json!({"password": "pw"}))
        .await?;
    admin
        .write("apps/other/db", json!({"password": "pw"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let other = agent.issue_cert("other", None).await?;

    let kept: Vec<(Via, KeepAlive)> = vec![
        (
            Via::Socket,
            KeepAlive::open(&agent, &web, Via::Socket).await?,
        ),
        (Via::Tcp, KeepAlive::open(&agent, &web, Via::Tcp).await?),
    ];
    for (via, conn) in &kept {
        assert_eq!(conn.get("/v1/secrets/apps/web/db").await?, 200, "{via:?}");
    }
    let bystander = KeepAlive::open(&agent, &other, Via::Socket).await?;
    assert_eq!(bystander.get("/v1/secrets/apps/other/db").await?, 200);

    // A watch stream of the same certificate, which sees an event before the revocation.
    let watcher = latchkey::client::Client::new(agent.endpoint(Via::Socket)?, agent.tls_for(&web)?);
    let (status, mut body) = watcher
        .stream("/v1/watch?prefix=apps/web/")
        .await
        .map_err(|e| anyhow::anyhow!("watch: {e}"))?;
    assert_eq!(status, 200);
    admin
        .write("apps/web/db", json!({"password": "pw2"}))
        .await?;
    let mut text = String::new();
    within(
        "the event before the revocation",
        Duration::from_secs(10),
        async {
            while !text.contains("event: updated") {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            text.push_str(&String::from_utf8_lossy(data));
                        }
                    }
                    _ => bail!("the stream ended early: {text}"),
                }
            }
            anyhow::Ok(())
        },
    )
    .await??;

    agent.revoke(&web).await?;
    let stream_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended = stream_ended.clone();
    tokio::spawn(async move {
        // Anything but more data (an end or an error) means the stream was cut.
        while let Some(Ok(_)) = body.frame().await {}
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    for (via, conn) in &kept {
        eventually(
            &format!("the keep-alive connection over {via:?} to be cut"),
            REVOCATION_DEADLINE,
            || async move {
                conn.get("/v1/secrets/apps/web/db")
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await?;
    }
    eventually("the watch stream to be cut", REVOCATION_DEADLINE, || {
        let ended = stream_ended.clone();
        async move {
            ended
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some(())
        }
    })
    .await?;
    // Another app's connection opened before the revocation is not affected.
    assert_eq!(bystander.get("/v1/secrets/apps/other/db").await?, 200);
    assert!(agent
        .logs()
        .contains("cut connections whose certificate is now refused"));
    Ok(())
}

#[tokio::test]
async fn r11_a_connection_is_closed_at_its_age_limit() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .setting("max_connection_age", "\"2s\"")
        .start()
        .await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "pw"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let conn = &KeepAlive::open(&agent, &web, Via::Socket).await?;
    let opened = tokio::time::Instant::now();
    // Kept busy, so no idle timeout can be what closes it.
    eventually(
        "the connection to reach its age limit",
        Duration::from_secs(15),
        || async move {
            match conn.get("/v1/secrets/apps/web/db").await {
                Ok(status) => {
                    assert_eq!(status, 200, "every request before the close is served");
                    None
                }
                Err(_) => Some(()),
            }
        },
    )
    .await?;
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(1500),
        "closed after {lived:?}"
    );
    // A new connection is served as before.
    assert_eq!(
        agent.client_for(&web)?.read("apps/web/db").await?.status,
        200
    );
    Ok(())
}
