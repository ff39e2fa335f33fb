//! On-disk tampering and corruption: a flipped byte in sled's log or a replayed old
//! record is detected and reported, never silently served or lost.
//!
//! sled's recovery drops its log from the first message whose checksum fails. Past
//! the last snapshot that silently dropped every later write; below it, sled refused
//! to open and the agent with it. The agent now compares sled's sealed count of
//! changes with its sealed state file and names what was lost.

use serde_json::{json, Value};

use crate::harness::disk::{flip_in_log, Store};
use crate::harness::{Agent, Answer};

const SECRETS: usize = 18;
/// The secret whose record the disk damages; everything written after it is in the
/// part of the log sled drops.
const VICTIM: usize = 10;

fn name(i: usize) -> String {
    format!("apps/s{i:02}")
}

async fn write_secrets(agent: &Agent) -> anyhow::Result<()> {
    let admin = agent.admin()?;
    for i in 0..SECRETS {
        let put = admin
            .write(&name(i), json!({"v": format!("value-{i}")}))
            .await?;
        assert_eq!(put.status, 200, "{}", put.body);
    }
    Ok(())
}

/// Reads every secret; returns the indexes of those not served.
async fn unserved(agent: &Agent) -> anyhow::Result<Vec<usize>> {
    let admin = agent.admin()?;
    let mut missing = Vec::new();
    for i in 0..SECRETS {
        let read = admin.read(&name(i)).await?;
        match read.status {
            200 => {
                assert_eq!(read.field("v"), Some(format!("value-{i}")), "{}", read.body);
                assert_eq!(
                    read.json()["store_damaged"],
                    true,
                    "served, marked: {}",
                    read.body
                );
            }
            404 => missing.push(i),
            _ => panic!("{}: unexpected answer {}", name(i), read.body),
        }
    }
    Ok(missing)
}

/// The lost-writes problem of a 503 health answer, for an admin.
fn lost_writes(health: &Answer) -> Value {
    assert_eq!(
        health.status, 503,
        "a damaged store fails health: {}",
        health.body
    );
    assert_eq!(health.json()["status"], "damaged", "{}", health.body);
    health.json()["store"]["problems"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["kind"] == "lost_writes").cloned())
        .unwrap_or_else(|| panic!("no lost_writes problem in {}", health.body))
}

/// Every secret not served is named as lost (by path and version), in the health
/// answer and in the log; none is lost without a word.
fn assert_named(agent: &Agent, problem: &Value, missing: &[usize]) {
    let named: Vec<(String, u64)> = problem["missing"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["op"] == "write")
                .filter_map(|m| Some((m["path"].as_str()?.to_owned(), m["version"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let logs = agent.logs();
    for i in missing {
        assert!(
            named.contains(&(name(*i), 1)),
            "{} is not served and not named as lost: {problem}",
            name(*i)
        );
        assert!(
            logs.contains(&format!("{} v1", name(*i))),
            "the log does not name {}:\n{logs}",
            name(*i)
        );
    }
    assert_eq!(problem["unnamed"], 0, "{problem}");
    assert_eq!(
        problem["expected_generation"].as_u64().unwrap_or_default()
            - problem["found_generation"].as_u64().unwrap_or_default(),
        missing.len() as u64,
        "{problem}"
    );
    assert!(!logs.contains("value-"), "no value in the log:\n{logs}");
}

/// Flips a byte of the victim's record in sled's log, as a failing disk would. Its
/// sealed bytes are read from a copy: opening the agent's own files would make sled
/// write a snapshot past the damage.
async fn damage_the_victim(agent: &Agent) -> anyhow::Result<()> {
    let copy = Store::open_copy(agent).await?;
    let sealed = copy.value(&name(VICTIM), 1)?;
    copy.close()?;
    flip_in_log(agent, &sealed)?;
    Ok(())
}

/// The agent serves what survived, and names as lost every secret it does not serve.
async fn assert_every_loss_reported(agent: &Agent) -> anyhow::Result<()> {
    let missing = unserved(agent).await?;
    assert!(
        !missing.is_empty() && missing.iter().all(|i| *i >= VICTIM),
        "sled drops the log from the damage on: {missing:?}"
    );
    let health = agent.admin()?.health().await?;
    assert_named(agent, &lost_writes(&health), &missing);
    Ok(())
}

async fn metric(agent: &Agent, name: &str) -> anyhow::Result<f64> {
    let text = agent.admin()?.get("/metrics").await?.body;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0))
}

#[tokio::test]
async fn r11_a_flipped_byte_in_the_log_loses_nothing_silently() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    write_secrets(&agent).await?;
    assert!(agent.stop().await?.success());
    damage_the_victim(&agent).await?;

    agent.start().await?;
    assert_every_loss_reported(&agent).await?;
    assert_eq!(metric(&agent, "latchkey_store_problems").await?, 1.0);
    // An app sees that the store is damaged, not which paths.
    let web = agent.client_for(&agent.issue_cert("web", None).await?)?;
    let app_view = web.health().await?;
    assert_eq!(app_view.status, 503, "{}", app_view.body);
    assert!(!app_view.body.contains("apps/s"), "{}", app_view.body);

    // The report survives a restart, until an operator acknowledges it.
    agent.restart().await?;
    assert_eq!(agent.admin()?.health().await?.status, 503);
    let ack = agent
        .admin()?
        .request(http::Method::POST, "/v1/store/acknowledge", None)
        .await?;
    assert_eq!(ack.status, 200, "{}", ack.body);
    let ok = agent.admin()?.health().await?;
    assert_eq!(
        (ok.status, ok.json()["status"].clone()),
        (200, json!("ok")),
        "{}",
        ok.body
    );
    agent
        .wait_for_audit("the acknowledgement", |r| r["op"] == "acknowledge")
        .await?;
    Ok(())
}

#[tokio::test]
async fn r11_a_flipped_byte_below_the_snapshot_is_refused_then_recovered_with_a_report(
) -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    write_secrets(&agent).await?;
    // A restart: sled's snapshot now covers every write.
    agent.restart().await?;
    assert!(agent.stop().await?.success());
    damage_the_victim(&agent).await?;

    // sled cannot recover without dropping what its snapshot recorded: the agent
    // refuses to start, naming the folder and the way out.
    let refused = agent.start().await;
    assert!(
        refused.is_err(),
        "the agent started on a store sled refused"
    );
    let logs = agent.logs();
    let dir = agent.data_dir().display().to_string();
    assert!(
        logs.contains(&format!("the store {dir} is damaged"))
            && logs.contains("latchkey store recover"),
        "the refusal names the store and the recovery command:\n{logs}"
    );

    let config = agent.config_path().display().to_string();
    let recovered = agent
        .cli(["store", "recover", "--config", config.as_str()])
        .without_dir()
        .run()
        .await?
        .success()?;
    assert!(
        recovered
            .stdout
            .contains("kept a copy of the damaged store in"),
        "{recovered:?}"
    );
    assert!(
        recovered.stdout.contains(&format!("{} v1", name(VICTIM))),
        "the recovery names what was lost: {recovered:?}"
    );
    let kept = std::fs::read_dir(agent.dir())?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("data.damaged-"));
    assert!(kept, "a copy of the damaged folder is kept");

    agent.start().await?;
    assert_every_loss_reported(&agent).await
}

#[tokio::test]
async fn r13_an_old_record_copied_back_after_delete_and_recreate_is_refused() -> anyhow::Result<()>
{
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/a/key", json!({"k": "revoked-old-key"}))
        .await?;
    assert!(agent.stop().await?.success());
    let store = Store::open(&agent).await?;
    let old = store.value("apps/a/key", 1)?;
    store.close()?;

    agent.start().await?;
    let admin = agent.admin()?;
    assert_eq!(admin.delete("apps/a/key").await?.status, 200);
    let put = admin.write("apps/a/key", json!({"k": "fresh-key"})).await?;
    assert_eq!(put.version(), Some(1), "{}", put.body);
    assert!(agent.stop().await?.success());

    let store = Store::open(&agent).await?;
    store.put_value("apps/a/key", 1, &old)?;
    store.close()?;
    agent.start().await?;
    let read = agent.admin()?.read("apps/a/key").await?;
    assert_eq!(
        read.status, 500,
        "the replayed record must not be served: {}",
        read.body
    );
    assert_eq!(
        read.code().as_deref(),
        Some("integrity_error"),
        "{}",
        read.body
    );
    assert!(!read.body.contains("revoked-old-key"), "{}", read.body);
    Ok(())
}
