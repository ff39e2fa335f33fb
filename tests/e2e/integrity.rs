//! Damage on disk: a record whose sealed bytes were flipped, truncated, swapped with
//! another's or replayed from an older version fails to open with a clear
//! `integrity_error` for that record alone; every other record keeps being served and
//! nothing panics.

use serde_json::json;

use crate::harness::disk::Store;
use crate::harness::{Agent, Answer};

fn assert_integrity_error(answer: &Answer, path: &str, plaintext: &str) {
    assert_eq!(answer.status, 500, "{path}: {}", answer.body);
    assert_eq!(
        answer.code().as_deref(),
        Some("integrity_error"),
        "{path}: {}",
        answer.body
    );
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(path),
        "the message should name {path}: {message:?}"
    );
    assert!(!answer.body.contains(plaintext), "{path}: {}", answer.body);
}

fn assert_no_panic(agent: &Agent) {
    let panics = agent.log_lines_with("panicked");
    assert!(panics.is_empty(), "the agent panicked: {panics:#?}");
    assert!(agent.is_running(), "the agent died (its log follows)");
}

#[tokio::test]
async fn a_flipped_or_truncated_record_fails_alone_and_nothing_panics() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    {
        let admin = agent.admin()?;
        admin
            .write("apps/web/db", json!({"password": "flip-victim"}))
            .await?;
        admin
            .write("apps/web/api", json!({"token": "untouched-token"}))
            .await?;
        admin
            .write("apps/web/cache", json!({"url": "cache-v1"}))
            .await?;
        admin
            .write("apps/web/cache", json!({"url": "cache-v2-cut"}))
            .await?;
    }
    let stopped = agent.stop().await?;
    assert!(stopped.success(), "unclean stop: {stopped}");

    let store = Store::open(&agent).await?;
    for record in [
        ("apps/web/db", 1),
        ("apps/web/api", 1),
        ("apps/web/cache", 2),
    ] {
        assert!(store.has(record.0, record.1)?, "{record:?} not stored");
    }
    store.flip_byte("apps/web/db", 1)?;
    store.truncate("apps/web/cache", 2)?;
    store.close()?;

    agent.start().await?;
    let admin = agent.admin()?;
    for _ in 0..2 {
        assert_integrity_error(
            &admin.read("apps/web/db").await?,
            "apps/web/db",
            "flip-victim",
        );
        assert_integrity_error(
            &admin.read("apps/web/cache").await?,
            "apps/web/cache",
            "cache-v2-cut",
        );
    }
    let api = admin.read("apps/web/api").await?;
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.field("token").as_deref(), Some("untouched-token"));
    let old = admin.get("/v1/secrets/apps/web/cache?version=1").await?;
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(old.field("url").as_deref(), Some("cache-v1"));

    assert_eq!(admin.health().await?.status, 200);
    let list = admin.list("apps/web/").await?;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        list.paths().contains(&"apps/web/api".to_owned()),
        "{}",
        list.body
    );

    let record = agent
        .wait_for_audit("the failed read of the damaged record", |r| {
            r["path"] == "apps/web/db" && r["code"] == "integrity_error"
        })
        .await?;
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["status"], 500, "{record}");

    // Writing a new version over the damaged one repairs the secret.
    let put = admin
        .write("apps/web/db", json!({"password": "repaired"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let repaired = admin.read("apps/web/db").await?;
    assert_eq!(
        repaired.field("password").as_deref(),
        Some("repaired"),
        "{}",
        repaired.body
    );

    assert_no_panic(&agent);
    Ok(())
}

#[tokio::test]
async fn two_swapped_records_both_fail() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    {
        let admin = agent.admin()?;
        admin.write("apps/a/one", json!({"k": "value-one"})).await?;
        admin.write("apps/a/two", json!({"k": "value-two"})).await?;
        admin
            .write("apps/a/three", json!({"k": "value-three"}))
            .await?;
    }
    assert!(agent.stop().await?.success());
    let store = Store::open(&agent).await?;
    store.swap(("apps/a/one", 1), ("apps/a/two", 1))?;
    store.close()?;
    agent.start().await?;

    let admin = agent.admin()?;
    let one = admin.read("apps/a/one").await?;
    assert_integrity_error(&one, "apps/a/one", "value-");
    let two = admin.read("apps/a/two").await?;
    assert_integrity_error(&two, "apps/a/two", "value-");
    let three = admin.read("apps/a/three").await?;
    assert_eq!(
        three.field("k").as_deref(),
        Some("value-three"),
        "{}",
        three.body
    );
    assert_no_panic(&agent);
    Ok(())
}

#[tokio::test]
async fn an_older_version_replayed_over_the_current_one_fails() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    {
        let admin = agent.admin()?;
        admin
            .write("apps/a/key", json!({"k": "revoked-old-key"}))
            .await?;
        admin
            .write("apps/a/key", json!({"k": "rotated-new-key"}))
            .await?;
    }
    assert!(agent.stop().await?.success());
    let store = Store::open(&agent).await?;
    store.copy(("apps/a/key", 1), ("apps/a/key", 2))?;
    store.close()?;
    agent.start().await?;

    let admin = agent.admin()?;
    let current = admin.read("apps/a/key").await?;
    assert_integrity_error(&current, "apps/a/key", "revoked-old-key");
    let v1 = admin.get("/v1/secrets/apps/a/key?version=1").await?;
    assert_eq!(
        v1.field("k").as_deref(),
        Some("revoked-old-key"),
        "{}",
        v1.body
    );
    assert_no_panic(&agent);
    Ok(())
}
