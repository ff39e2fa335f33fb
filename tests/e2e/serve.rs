//! Serving secrets: put/get round trips over the Unix socket and TCP, versions and
//! labels, listing, deleting, and data surviving a restart.

use std::collections::BTreeSet;

use serde_json::json;

use crate::harness::{Agent, Via};

#[tokio::test]
async fn put_then_get_round_trips_over_the_socket_and_over_tcp() -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().start().await?;
    let admin = agent.admin_identity();
    let unix = agent.client_via(&admin, Via::Socket)?;
    let tcp = agent.client_via(&admin, Via::Tcp)?;

    let put = unix
        .write(
            "apps/web/db",
            json!({"username": "web", "password": "pw-one"}),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.version(), Some(1), "{}", put.body);
    assert_eq!(put.json()["path"], "apps/web/db");

    let got = tcp.read("apps/web/db").await?;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.field("password").as_deref(), Some("pw-one"));
    assert_eq!(got.field("username").as_deref(), Some("web"));
    let body = got.json();
    assert_eq!(body["path"], "apps/web/db");
    assert_eq!(body["version"], 1);
    assert_eq!(body["stale"], false);
    assert!(
        body["labels"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("current"))),
        "labels: {}",
        body["labels"]
    );
    for key in ["created_at", "updated_at"] {
        assert!(
            body[key].as_str().is_some_and(|t| t.contains('T')),
            "{key}: {}",
            body[key]
        );
    }

    let put = tcp
        .put(
            "apps/web/api",
            json!({"fields": {"token": "tok-one"}, "kind": "api-key"}),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let got = unix.read("apps/web/api").await?;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.field("token").as_deref(), Some("tok-one"));
    assert_eq!(got.json()["kind"], "api-key");

    let health = tcp.health().await?;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    Ok(())
}

#[tokio::test]
async fn whoami_names_the_certificate_identity() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let web = agent.issue_cert("web", None).await?;
    assert_eq!(web.id, "spiffe://latchkey.local/app/web");
    let me = agent.client_for(&web)?.get("/v1/whoami").await?;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["id"], "spiffe://latchkey.local/app/web");
    assert_eq!(me.json()["app"], "web");

    let tenant_app = agent.issue_cert("api", Some("acme")).await?;
    assert_eq!(tenant_app.id, "spiffe://latchkey.local/tenant/acme/app/api");
    let me = agent.client_for(&tenant_app)?.get("/v1/whoami").await?;
    assert_eq!(me.json()["tenant"], "acme", "{}", me.body);
    assert_eq!(me.json()["app"], "api", "{}", me.body);

    let me = agent.admin()?.get("/v1/whoami").await?;
    assert_eq!(me.json()["id"], "spiffe://latchkey.local/admin/admin");
    Ok(())
}

#[tokio::test]
async fn each_write_makes_a_new_version_and_older_ones_stay_readable() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    for (n, value) in ["first", "second", "third"].into_iter().enumerate() {
        let put = admin
            .write("billing/db", json!({"password": value}))
            .await?;
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.version(), Some(n as u64 + 1), "{}", put.body);
    }

    let current = admin.read("billing/db").await?;
    assert_eq!(current.version(), Some(3));
    assert_eq!(current.field("password").as_deref(), Some("third"));

    let first = admin.get("/v1/secrets/billing/db?version=1").await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.version(), Some(1));
    assert_eq!(first.field("password").as_deref(), Some("first"));

    let previous = admin.get("/v1/secrets/billing/db?label=previous").await?;
    assert_eq!(previous.status, 200, "{}", previous.body);
    assert_eq!(previous.version(), Some(2));
    assert_eq!(previous.field("password").as_deref(), Some("second"));
    assert!(
        previous.json()["labels"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("previous"))),
        "{}",
        previous.body
    );

    let missing = admin.get("/v1/secrets/billing/db?version=42").await?;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.code().as_deref(), Some("not_found"));
    let bad = admin.get("/v1/secrets/billing/db?version=two").await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.code().as_deref(), Some("bad_request"));
    Ok(())
}

#[tokio::test]
async fn list_shows_the_paths_under_a_prefix() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    for path in [
        "apps/web/db",
        "apps/web/api",
        "apps/webhook/key",
        "other/thing",
    ] {
        let put = admin.write(path, json!({"v": "x"})).await?;
        assert_eq!(put.status, 200, "{path}: {}", put.body);
    }
    admin.write("apps/web/db", json!({"v": "y"})).await?;

    let set = |paths: Vec<String>| paths.into_iter().collect::<BTreeSet<_>>();
    let want = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();

    let web = admin.list("apps/web/").await?;
    assert_eq!(web.status, 200, "{}", web.body);
    assert_eq!(
        set(web.paths()),
        want(&["apps/web/api", "apps/web/db"]),
        "{}",
        web.body
    );
    let db = web.json()["secrets"]
        .as_array()
        .and_then(|s| s.iter().find(|e| e["path"] == "apps/web/db").cloned())
        .unwrap_or_default();
    assert_eq!(db["version"], 2, "{}", web.body);

    let apps = admin.list("apps/").await?;
    assert_eq!(
        set(apps.paths()),
        want(&["apps/web/api", "apps/web/db", "apps/webhook/key"]),
        "{}",
        apps.body
    );
    let everything = admin.list("").await?;
    assert_eq!(everything.paths().len(), 4, "{}", everything.body);
    let nothing = admin.list("nope/").await?;
    assert_eq!(nothing.status, 200, "{}", nothing.body);
    assert!(nothing.paths().is_empty(), "{}", nothing.body);
    Ok(())
}

#[tokio::test]
async fn a_deleted_secret_answers_404_with_all_its_versions() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/web/old", json!({"k": "one"})).await?;
    admin.write("apps/web/old", json!({"k": "two"})).await?;
    admin.write("apps/web/kept", json!({"k": "kept"})).await?;
    assert_eq!(admin.read("apps/web/old").await?.status, 200);

    let rm = admin.delete("apps/web/old").await?;
    assert_eq!(rm.status, 200, "{}", rm.body);
    assert_eq!(rm.json()["deleted"], true, "{}", rm.body);

    let gone = admin.read("apps/web/old").await?;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(gone.code().as_deref(), Some("not_found"));
    let gone = admin.get("/v1/secrets/apps/web/old?version=1").await?;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(
        admin.list("apps/web/").await?.paths(),
        vec!["apps/web/kept".to_owned()]
    );

    let again = admin.delete("apps/web/old").await?;
    assert_eq!(again.status, 404, "{}", again.body);
    assert_eq!(again.code().as_deref(), Some("not_found"));
    assert_eq!(
        admin.read("apps/web/kept").await?.field("k").as_deref(),
        Some("kept")
    );
    Ok(())
}

#[tokio::test]
async fn secrets_survive_a_restart() -> anyhow::Result<()> {
    let mut agent = Agent::builder().tcp().start().await?;
    {
        let admin = agent.admin()?;
        admin
            .write("apps/web/db", json!({"password": "before-1"}))
            .await?;
        admin
            .write("apps/web/db", json!({"password": "before-2"}))
            .await?;
        admin.write("apps/web/api", json!({"token": "tok"})).await?;
        admin.write("apps/web/tmp", json!({"x": "y"})).await?;
        assert_eq!(admin.delete("apps/web/tmp").await?.status, 200);
    }

    agent.restart().await?;

    for via in [Via::Socket, Via::Tcp] {
        let admin = agent.client_via(&agent.admin_identity(), via)?;
        let db = admin.read("apps/web/db").await?;
        assert_eq!(db.status, 200, "{via:?}: {}", db.body);
        assert_eq!(db.version(), Some(2));
        assert_eq!(db.field("password").as_deref(), Some("before-2"));
        let v1 = admin.get("/v1/secrets/apps/web/db?version=1").await?;
        assert_eq!(
            v1.field("password").as_deref(),
            Some("before-1"),
            "{}",
            v1.body
        );
        let prev = admin.get("/v1/secrets/apps/web/db?label=previous").await?;
        assert_eq!(prev.version(), Some(1), "{}", prev.body);
        assert_eq!(
            admin.read("apps/web/api").await?.field("token").as_deref(),
            Some("tok")
        );
        assert_eq!(admin.read("apps/web/tmp").await?.status, 404);
    }
    let tcp = agent.client_via(&agent.admin_identity(), Via::Tcp)?;
    let put = tcp
        .write("apps/web/db", json!({"password": "after"}))
        .await?;
    assert_eq!(put.version(), Some(3), "{}", put.body);

    agent.restart().await?;
    let db = agent.admin()?.read("apps/web/db").await?;
    assert_eq!(
        db.field("password").as_deref(),
        Some("after"),
        "{}",
        db.body
    );
    assert!(
        agent.logs().contains("latchkey ready"),
        "no ready line in the log (its end follows)"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_watch_streams_with_a_shutdown_event_and_exits_promptly() -> anyhow::Result<()>
{
    use http_body_util::BodyExt as _;
    let mut agent = Agent::builder().start().await?;
    let client = latchkey::client::Client::new(
        agent.endpoint(Via::Socket)?,
        agent.tls_for(&agent.admin_identity())?,
    );
    let (status, mut body) = client
        .stream("/v1/watch?prefix=apps/")
        .await
        .map_err(|e| anyhow::anyhow!("watch: {e}"))?;
    assert_eq!(status, 200);
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
        text
    });
    // Let the stream's first line arrive, then stop the agent.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let exit = agent.stop().await?;
    assert!(exit.success(), "{exit:?}");
    let text = crate::harness::within(
        "the stream to end",
        std::time::Duration::from_secs(5),
        reader,
    )
    .await??;
    assert!(text.contains("event: shutdown\n"), "{text}");
    // Without the last event the drain would wait for the stream for its full time.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
