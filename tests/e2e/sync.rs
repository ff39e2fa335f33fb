//! The sync engine end to end (issue 3): the real agent binary in front of real
//! upstream servers on loopback (OpenBao, moto), spoken to over mTLS as apps do.
//!
//! Upstream changes are made with each server's own HTTP API, never through the
//! client under test; outcomes are checked on both sides. Waits are conditions with
//! deadlines ([`eventually`]), never bare sleeps; where a test needs time to pass
//! (an outage) it keeps reading meanwhile and checks every answer.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::harness::api::Api;
use crate::harness::{eventually, pace, Agent};
use crate::moto::Moto;
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{
    aws_agent, bao_upstream, sync_section, token_auth, CountingProxy, DurableBao,
};

/// Slack on top of one poll interval for a change to be served (the poll itself,
/// the test's own 50 ms polling); scaled by the machine's pace like every deadline.
const POLL_SLACK: Duration = Duration::from_millis(4000);

/// An agent caching the given `[upstream]` with the given `[sync]`.
async fn agent_with(upstream: &str, sync: &str) -> anyhow::Result<Agent> {
    Agent::builder().append(upstream).append(sync).start().await
}

/// A dev OpenBao and an agent polling it every second.
async fn bao_and_agent() -> anyhow::Result<(OpenBao, Agent)> {
    let bao = OpenBao::start().await?;
    let agent = agent_with(
        &bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""),
        &sync_section("1s", "24h", 16),
    )
    .await?;
    Ok((bao, agent))
}

/// What a read answered: status, the value of `field`, `stale`, `age_seconds`.
#[derive(Debug, Clone)]
struct Read {
    status: u16,
    code: Option<String>,
    value: Option<String>,
    version: Option<u64>,
    stale: Option<bool>,
    age: Option<u64>,
}

async fn read(api: &Api, path: &str, field: &str) -> anyhow::Result<Read> {
    let answer = api.read(path).await?;
    let body = answer.json();
    Ok(Read {
        status: answer.status,
        code: answer.code(),
        value: answer.field(field),
        version: answer.version(),
        stale: body.get("stale").and_then(Value::as_bool),
        age: body.get("age_seconds").and_then(Value::as_u64),
    })
}

/// Waits until `path` reads as `expected` (`None`: 404); returns how long it took.
async fn wait_served(
    api: &Api,
    path: &str,
    field: &str,
    expected: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let what = format!("{path} to read as {expected:?}");
    eventually(&what, deadline, || async {
        let got = read(api, path, field).await.ok()?;
        match expected {
            Some(v) => (got.status == 200 && got.value.as_deref() == Some(v)).then_some(()),
            None => (got.status == 404).then_some(()),
        }
    })
    .await?;
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_secrets_changes_and_deletes_are_served() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/web/db", json!({"user": "app", "password": "pw1"}))
        .await?;
    bao.put_kv("apps/web/api", json!({"token": "t1"})).await?;
    let agent = agent_with(
        &bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""),
        &sync_section("1s", "24h", 16),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;

    // Written before the agent started: pulled by the initial sync, served over mTLS.
    wait_served(&app, "apps/web/db", "password", Some("pw1"), POLL_SLACK).await?;
    let first = read(&app, "apps/web/db", "user").await?;
    assert_eq!(
        (first.value.as_deref(), first.version, first.stale),
        (Some("app"), Some(1), Some(false))
    );
    assert!(first.age.is_some(), "age_seconds after a good sync");
    let listed = agent.admin()?.list("apps/web/").await?;
    let mut paths = listed.paths();
    paths.sort();
    assert_eq!(paths, vec!["apps/web/api", "apps/web/db"]);

    // A change upstream is served within one poll interval.
    bao.put_kv("apps/web/db", json!({"user": "app", "password": "pw2"}))
        .await?;
    let took = wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("pw2"),
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    assert_eq!(read(&app, "apps/web/db", "x").await?.version, Some(2));

    // A secret created upstream after the start appears too.
    bao.put_kv("apps/web/new", json!({"k": "v"})).await?;
    wait_served(&app, "apps/web/new", "k", Some("v"), POLL_SLACK * 2).await?;

    // A soft delete (the current version) and a full delete are both reflected.
    bao.ok("DELETE", "secret/data/apps/web/api", None).await?;
    bao.ok("DELETE", "secret/metadata/apps/web/db", None)
        .await?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        None,
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    // A soft delete keeps the secret, its current version answers 410 (see
    // kv_soft_delete_undelete_and_destroy_follow_openbao).
    eventually("the soft delete", POLL_SLACK, || async {
        (read(&app, "apps/web/api", "token").await.ok()?.status == 410).then_some(())
    })
    .await?;
    assert_eq!(
        agent.admin()?.list("apps/web/").await?.paths(),
        vec!["apps/web/api", "apps/web/new"]
    );
    let bound = pace::scaled(Duration::from_secs(1) + POLL_SLACK);
    assert!(
        took <= bound,
        "a change took {took:?} to be served, expected at most {bound:?} ({})",
        pace::describe()
    );

    // Deleted and created again upstream (its versions start over at 1): the new
    // value replaces the old history.
    bao.put_kv("apps/web/db", json!({"user": "app", "password": "reborn"}))
        .await?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("reborn"),
        POLL_SLACK * 2,
    )
    .await?;
    assert_eq!(read(&app, "apps/web/db", "x").await?.version, Some(1));

    // An admin delete through the agent removes it upstream, then locally.
    let admin = agent.admin()?;
    let gone = admin.delete("apps/web/new").await?;
    assert!(gone.status == 200 || gone.status == 204, "{}", gone.body);
    let (status, _) = bao.api("GET", "secret/metadata/apps/web/new", None).await?;
    assert_eq!(status, 404, "deleted upstream");
    assert_eq!(read(&app, "apps/web/new", "k").await?.status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_json_and_plain_secrets_follow_moto() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    for (name, value) in [
        ("apps/web/db", r#"{"user":"app","password":"pw1"}"#),
        ("apps/web/token", "plain-1"),
    ] {
        moto.ok("CreateSecret", json!({"Name": name, "SecretString": value}))
            .await?;
    }
    let agent = aws_agent(&moto.endpoint).await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;

    // A JSON secret string maps to fields; a plain string to the field `value`.
    wait_served(&app, "apps/web/db", "password", Some("pw1"), POLL_SLACK * 2).await?;
    assert_eq!(
        read(&app, "apps/web/db", "user").await?.value.as_deref(),
        Some("app")
    );
    wait_served(&app, "apps/web/token", "value", Some("plain-1"), POLL_SLACK).await?;
    assert_eq!(
        read(&app, "apps/web/token", "value").await?.stale,
        Some(false)
    );

    // Changes upstream are served within a poll interval.
    for (id, value) in [
        ("apps/web/db", r#"{"user":"app","password":"pw2"}"#),
        ("apps/web/token", "plain-2"),
    ] {
        moto.ok(
            "PutSecretValue",
            json!({"SecretId": id, "SecretString": value}),
        )
        .await?;
    }
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("pw2"),
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    wait_served(&app, "apps/web/token", "value", Some("plain-2"), POLL_SLACK).await?;

    // An admin write through the agent lands in moto as JSON.
    let admin = agent.admin()?;
    let put = admin
        .write("apps/web/new", json!({"a": "1", "b": "2"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let seen = moto
        .ok("GetSecretValue", json!({"SecretId": "apps/web/new"}))
        .await?;
    let stored: Value = serde_json::from_str(seen["SecretString"].as_str().context("string")?)?;
    assert_eq!(stored, json!({"a": "1", "b": "2"}));

    // Deletes upstream: at once, and the usual scheduled deletion with a recovery window.
    moto.ok(
        "DeleteSecret",
        json!({"SecretId": "apps/web/db", "ForceDeleteWithoutRecovery": true}),
    )
    .await?;
    moto.ok(
        "DeleteSecret",
        json!({"SecretId": "apps/web/token", "RecoveryWindowInDays": 7}),
    )
    .await?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        None,
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    wait_served(
        &app,
        "apps/web/token",
        "value",
        None,
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_login_in_the_agent_config_works_end_to_end() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.policy_rw("rw").await?;
    let approle = bao.approle("agent", "rw", "").await?;
    bao.put_kv("apps/web/db", json!({"password": "via-approle"}))
        .await?;
    let agent = agent_with(
        &bao_upstream(&bao.address, &approle.auth(), ""),
        &sync_section("1s", "24h", 4),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("via-approle"),
        POLL_SLACK * 2,
    )
    .await?;

    // Writes go upstream with the AppRole token, and the policy's token did it.
    let put = agent
        .admin()?
        .write("apps/web/written", json!({"v": "from-agent"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let seen = bao.ok("GET", "secret/data/apps/web/written", None).await?;
    assert_eq!(seen["data"]["data"]["v"], "from-agent");
    let approle_tokens = bao.accessors_from("auth/approle/login").await?.len();
    assert_eq!(approle_tokens, 1, "the agent logged in once with AppRole");
    // The credentials never reach the agent's log.
    assert!(!agent.logs().contains(&approle.secret_id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_admin_writes_on_one_version_one_wins_one_conflicts() -> anyhow::Result<()> {
    let (bao, agent) = bao_and_agent().await?;
    let (a, b) = (agent.admin()?, agent.admin()?);
    let created = a
        .put(
            "apps/web/db",
            json!({"fields": {"password": "v1"}, "cas": 0}),
        )
        .await?;
    assert_eq!(
        (created.status, created.version()),
        (200, Some(1)),
        "{}",
        created.body
    );
    for round in 0..5u64 {
        let base = 1 + round;
        let (ra, rb) = tokio::join!(
            a.put(
                "apps/web/db",
                json!({"fields": {"password": format!("a{round}")}, "cas": base})
            ),
            b.put(
                "apps/web/db",
                json!({"fields": {"password": format!("b{round}")}, "cas": base})
            ),
        );
        let (ra, rb) = (ra?, rb?);
        let (winner, loser, value) = match (ra.status, rb.status) {
            (200, 409) => (ra, rb, format!("a{round}")),
            (409, 200) => (rb, ra, format!("b{round}")),
            other => bail!(
                "round {round}: exactly one must win: {other:?}\n{}\n{}",
                ra.body,
                rb.body
            ),
        };
        assert_eq!(loser.code().as_deref(), Some("conflict"), "{}", loser.body);
        assert_eq!(winner.version(), Some(base + 1));
        // OpenBao holds the winner's value at that version ...
        let held = bao.ok("GET", "secret/data/apps/web/db", None).await?;
        assert_eq!(held["data"]["data"]["password"], value.as_str());
        assert_eq!(held["data"]["metadata"]["version"], base + 1);
        // ... and the agent serves it.
        let served = read(&a, "apps/web/db", "password").await?;
        assert_eq!(
            (served.value.as_deref(), served.version),
            (Some(value.as_str()), Some(base + 1))
        );
    }
    // The loser can retry on the new version: nothing is lost, nothing overwritten.
    let retry = b
        .put(
            "apps/web/db",
            json!({"fields": {"password": "retried"}, "cas": 6}),
        )
        .await?;
    assert_eq!(retry.status, 200, "{}", retry.body);
    let versions = bao.ok("GET", "secret/metadata/apps/web/db", None).await?;
    assert_eq!(versions["data"]["current_version"], 7);
    Ok(())
}

/// Reads `path` every 50 ms until `stop` is set; every answer is kept, and `done`
/// counts them as they come.
fn reader(
    api: Api,
    path: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<(Instant, anyhow::Result<Read>)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let got = read(&api, path, "password").await;
            seen.push((Instant::now(), got));
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_is_served_stale_and_recovers_by_itself() -> anyhow::Result<()> {
    let mut bao = DurableBao::start().await?;
    bao.put_kv("apps/web/db", json!({"password": "before"}))
        .await?;
    // Default breaker settings: what a user gets.
    let mut agent = agent_with(
        &bao_upstream(&bao.address, &token_auth(bao.root_token()), ""),
        &sync_section("1s", "1h", 16),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("before"),
        POLL_SLACK * 2,
    )
    .await?;

    // Kill the upstream while a client reads in a loop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loop_task = reader(
        agent.client_for(&web)?,
        "apps/web/db",
        stop.clone(),
        done.clone(),
    );
    eventually(
        "the client's first reads",
        Duration::from_secs(10),
        || async { (done.load(std::sync::atomic::Ordering::SeqCst) >= 5).then_some(()) },
    )
    .await?;
    bao.kill().await?;
    let killed = Instant::now();
    eventually("reads to say stale", Duration::from_secs(10), || async {
        let got = read(&app, "apps/web/db", "password").await.ok()?;
        (got.stale == Some(true)).then_some(())
    })
    .await?;
    let stale_after = killed.elapsed();
    // Keep reading through several more seconds of outage.
    let outage_until = Instant::now() + Duration::from_secs(4);
    eventually("4 s of outage", Duration::from_secs(10), || async {
        (Instant::now() >= outage_until).then_some(())
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = loop_task.await?;
    let during = seen.iter().filter(|(at, _)| *at > killed).count();
    assert!(
        during >= 20,
        "the client read in a loop through the outage: {during} reads after the kill"
    );
    let mut stale_ages = Vec::new();
    for (at, got) in &seen {
        let got = got.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        assert_eq!(
            got.status, 200,
            "no read fails within the grace period: {got:?}"
        );
        assert_eq!(got.value.as_deref(), Some("before"));
        if *at > killed + stale_after && got.stale == Some(true) {
            stale_ages.push(got.age.context("stale reads carry age_seconds")?);
        }
    }
    assert!(
        stale_ages.windows(2).all(|w| w[0] <= w[1]),
        "age_seconds never goes back: {stale_ages:?}"
    );
    let (first, last) = (
        *stale_ages.first().context("stale reads")?,
        *stale_ages.last().context("stale reads")?,
    );
    assert!(last >= first + 3, "age_seconds grows: {first} -> {last}");

    // Writes during the outage are refused (upstream first), never kept locally only.
    let refused = agent
        .admin()?
        .put(
            "apps/web/db",
            json!({"fields": {"password": "lost?"}, "cas": 1}),
        )
        .await?;
    assert_eq!(
        (refused.status, refused.code().as_deref()),
        (503, Some("upstream_unavailable")),
        "{}",
        refused.body
    );
    assert_eq!(
        read(&app, "apps/web/db", "password")
            .await?
            .value
            .as_deref(),
        Some("before")
    );

    // An agent restarted during the outage serves from its cache at once.
    agent.restart().await?;
    let app = agent.client_for(&web)?;
    let at_once = read(&app, "apps/web/db", "password").await?;
    assert_eq!(
        (at_once.status, at_once.value.as_deref()),
        (200, Some("before")),
        "{at_once:?}"
    );
    assert!(
        at_once.age.is_some_and(|a| a >= last),
        "the age survives the restart: {at_once:?} vs {last}"
    );
    assert_eq!(
        at_once.stale,
        Some(true),
        "a restarted agent that cannot reach its upstream says stale: {at_once:?}"
    );

    // The upstream comes back with the same data: the agent recovers by itself.
    bao.restart().await?;
    let back = Instant::now();
    eventually(
        "reads to be fresh again",
        Duration::from_secs(90),
        || async {
            let got = read(&app, "apps/web/db", "password").await.ok()?;
            (got.status == 200 && got.stale == Some(false)).then_some(())
        },
    )
    .await?;
    let recovered_in = back.elapsed();
    bao.put_kv("apps/web/db", json!({"password": "after"}))
        .await?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("after"),
        Duration::from_secs(1) + POLL_SLACK,
    )
    .await?;
    let fresh = read(&app, "apps/web/db", "password").await?;
    assert_eq!(fresh.stale, Some(false));
    // Polled every second: the last good sync is recent (a busy machine polls late).
    let recent = pace::scaled(Duration::from_secs(2)).as_secs_f64().ceil() as u64;
    assert!(
        fresh.age.is_some_and(|a| a <= recent),
        "age_seconds at most {recent}: {fresh:?}"
    );
    // The breaker's cool-down (doubling to at most 60 s) bounds how long recovery takes.
    let bound = Duration::from_secs(60) + pace::scaled(Duration::from_secs(5));
    assert!(
        recovered_in <= bound,
        "recovered {recovered_in:?} after the upstream came back (port {}), expected within \
         {bound:?} ({}); stale after {stale_after:?}",
        bao.port(),
        pace::describe()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_turn_into_503_after_a_short_grace_and_recover() -> anyhow::Result<()> {
    let mut bao = DurableBao::start().await?;
    bao.put_kv("apps/web/db", json!({"password": "cached"}))
        .await?;
    let agent = agent_with(
        &bao_upstream(
            &bao.address,
            &token_auth(bao.root_token()),
            "breaker_open_for = \"1s\"",
        ),
        &sync_section("1s", "3s", 16),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("cached"),
        POLL_SLACK * 2,
    )
    .await?;
    // Right after a good poll, so the last good sync is known to within a second.
    eventually("a fresh read", Duration::from_secs(5), || async {
        let got = read(&app, "apps/web/db", "password").await.ok()?;
        (got.stale == Some(false) && got.age == Some(0)).then_some(())
    })
    .await?;
    bao.kill().await?;
    let killed = Instant::now();
    let mut answers = Vec::new();
    let expired = loop {
        let got = read(&app, "apps/web/db", "password").await?;
        answers.push(got.clone());
        if got.status == 503 {
            break got;
        }
        if killed.elapsed() > pace::scaled(Duration::from_secs(15)) {
            bail!(
                "{}: {:?}",
                crate::harness::timed_out("a 503 after the outage", Duration::from_secs(15)),
                answers.last()
            );
        }
        // Pace the reads (this is the client's read loop, not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expired_at = killed.elapsed();
    assert_eq!(expired.code.as_deref(), Some("upstream_unavailable"));
    // Before it: every read served, none older than the grace period.
    for got in answers.iter().filter(|g| g.status != 503) {
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.value.as_deref(), Some("cached"));
        assert!(got.age.is_some_and(|a| a <= 3), "{got:?}");
    }
    assert!(
        expired_at >= Duration::from_secs(2),
        "not before the grace period (3s after the last good sync, at most 1s before the kill): {expired_at:?}"
    );
    // Listing still works (it is not a secret read); a second read is a 503 too.
    assert_eq!(read(&app, "apps/web/db", "password").await?.status, 503);

    // The upstream comes back: reads work again without any help.
    bao.restart().await?;
    wait_served(
        &app,
        "apps/web/db",
        "password",
        Some("cached"),
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(read(&app, "apps/web/db", "x").await?.stale, Some(false));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_wrapped_data_key_opens_only_after_unwrapping() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.transit_key(
        "latchkey",
        json!({"exportable": true, "allow_plaintext_backup": true}),
    )
    .await?;
    let mut agent = Agent::builder()
        .setting("kek", "{ source = \"transit\" }")
        .append(&bao_upstream(
            &bao.address,
            &token_auth(ROOT_TOKEN),
            "transit = { key = \"latchkey\" }",
        ))
        .append(&sync_section("1s", "24h", 4))
        .start()
        .await?;
    let admin = agent.admin()?;
    let put = admin
        .write("apps/web/db", json!({"password": "sealed-by-transit"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    // The data key on disk is Transit ciphertext, not something a file key opens.
    let stopped = agent.stop().await?;
    assert!(stopped.success());
    let db = sled::open(agent.data_dir())?;
    let meta = db.open_tree("meta")?;
    let kek_id = meta.get("kek_id")?.context("kek_id")?;
    assert_eq!(String::from_utf8_lossy(&kek_id), "transit:transit/latchkey");
    let wrapped = meta.get("dek")?.context("wrapped data key")?;
    assert!(wrapped.starts_with(b"vault:v1:"), "Transit ciphertext");
    drop(meta);
    drop(db);
    // A newer version upstream; version 1 stays only in the agent's encrypted cache
    // (reads of an old version never go upstream).
    bao.put_kv("apps/web/db", json!({"password": "v2-upstream"}))
        .await?;

    // Without the Transit key the agent refuses to start: clear error, non-zero exit.
    let backup = bao.ok("GET", "transit/backup/latchkey", None).await?;
    bao.ok(
        "POST",
        "transit/keys/latchkey/config",
        Some(json!({"deletion_allowed": true})),
    )
    .await?;
    bao.ok("DELETE", "transit/keys/latchkey", None).await?;
    let err = agent.start().await.expect_err("no transit key, no start");
    let message = format!("{err:#}");
    assert!(message.contains("exited early"), "{message}");
    assert!(!message.contains("exit status: 0"), "{message}");
    let logs = agent.logs();
    assert!(
        logs.contains("cannot open the store") && logs.contains("unwrap"),
        "the error says why (the log's end follows)"
    );
    assert!(!agent.is_running());

    // With the key back, it starts, unwraps and serves the cached secret.
    bao.ok(
        "POST",
        "transit/restore/latchkey",
        Some(json!({"backup": backup["data"]["backup"]})),
    )
    .await?;
    agent.start().await?;
    let admin = agent.admin()?;
    let old = admin.get("/v1/secrets/apps/web/db?version=1").await?;
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(old.field("password").as_deref(), Some("sealed-by-transit"));
    let web = agent.issue_cert("web", None).await?;
    wait_served(
        &agent.client_for(&web)?,
        "apps/web/db",
        "password",
        Some("v2-upstream"),
        POLL_SLACK * 2,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_request_and_the_budget_holds() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    // Secrets spread over many folders, so a list walk has folders to fan out over.
    for dir in 0..12 {
        for i in 0..5 {
            bao.put_kv(
                &format!("apps/web/d{dir}/s{i}"),
                json!({"v": format!("{dir}-{i}")}),
            )
            .await?;
        }
    }
    let proxy = CountingProxy::start(&bao.address).await?;
    proxy.set_delay(Duration::from_millis(100));
    let agent = agent_with(
        &bao_upstream(&proxy.address, &token_auth(ROOT_TOKEN), ""),
        &sync_section("1h", "24h", 4),
    )
    .await?;
    let admin = agent.admin()?;
    eventually("the initial sync", Duration::from_secs(60), || async {
        let listed = admin.list("apps/web/").await.ok()?;
        (listed.paths().len() == 60).then_some(())
    })
    .await?;
    let during_sync = proxy.max_in_flight();
    let fetched = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/v1/secret/data/"))
        .count();
    assert_eq!(fetched, 60, "each secret fetched once");
    assert!(
        during_sync <= 4,
        "sync.concurrency = 4, but {during_sync} upstream requests were in flight at once"
    );
    assert!(
        during_sync >= 2,
        "the sync fetches concurrently: {during_sync}"
    );

    // Concurrent misses for one path: one upstream read.
    bao.put_kv("apps/web/late", json!({"v": "late"})).await?;
    proxy.reset();
    proxy.set_delay(Duration::from_millis(500));
    let clients: Vec<Api> = (0..16)
        .map(|_| agent.admin())
        .collect::<anyhow::Result<_>>()?;
    let reads = clients.iter().map(|c| read(c, "apps/web/late", "v"));
    let answers = futures_join_all(reads).await;
    for got in answers {
        let got = got?;
        assert_eq!(
            (got.status, got.value.as_deref()),
            (200, Some("late")),
            "{got:?}"
        );
    }
    assert_eq!(
        proxy.count("GET", "/v1/secret/data/apps/web/late"),
        1,
        "16 concurrent misses, one upstream request: {:?}",
        proxy.seen()
    );

    // Misses for different paths share the budget.
    for i in 0..16 {
        bao.put_kv(&format!("apps/web/miss/m{i}"), json!({"v": "m"}))
            .await?;
    }
    proxy.reset();
    proxy.set_delay(Duration::from_millis(200));
    let paths: Vec<String> = (0..16).map(|i| format!("apps/web/miss/m{i}")).collect();
    let reads = clients
        .iter()
        .zip(&paths)
        .map(|(c, p)| read(c, p.as_str(), "v"));
    for got in futures_join_all(reads).await {
        assert_eq!(got?.status, 200);
    }
    let misses = proxy.max_in_flight();
    assert!(misses <= 4, "16 misses, budget 4: {misses} in flight");
    Ok(())
}

/// Runs futures concurrently and returns their outputs in order (no `futures` crate).
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut pending = futures;
    std::future::poll_fn(move |cx| {
        let mut done = true;
        for (fut, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// A token of the dev server limited to the ACL policy `hcl`.
async fn token_with_policy(bao: &OpenBao, name: &str, hcl: &str) -> anyhow::Result<String> {
    bao.policy(name, hcl).await?;
    bao.create_token(json!({"policies": [name], "ttl": "1h", "no_parent": true}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_secret_does_not_make_the_others_stale() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/web/ok", json!({"v": "readable"})).await?;
    bao.put_kv("apps/web/forbidden", json!({"v": "not for this agent"}))
        .await?;
    // The agent may list everything but not read one secret (a policy mistake, or a
    // secret another team keeps in a shared folder).
    let token = token_with_policy(
        &bao,
        "most",
        r#"
        path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
        path "secret/data/apps/web/forbidden" { capabilities = ["deny"] }
        "#,
    )
    .await?;
    let agent = agent_with(
        &bao_upstream(&bao.address, &token_auth(&token), ""),
        &sync_section("1s", "3s", 4),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    wait_served(&app, "apps/web/ok", "v", Some("readable"), POLL_SLACK * 2).await?;
    // Several polls and more than the grace period later, the readable secret is
    // still served, and not flagged stale: the upstream is up. (A busy machine polls
    // less often: the window is scaled.)
    let until = Instant::now() + pace::scaled(Duration::from_secs(5));
    let mut reads = Vec::new();
    while Instant::now() < until {
        reads.push(read(&app, "apps/web/ok", "v").await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for got in &reads {
        assert_eq!(
            (got.status, got.stale),
            (200, Some(false)),
            "one unreadable secret must not mark the upstream down: {got:?}"
        );
    }
    // Changes to the readable one still arrive.
    bao.put_kv("apps/web/ok", json!({"v": "changed"})).await?;
    wait_served(&app, "apps/web/ok", "v", Some("changed"), POLL_SLACK * 2).await?;
    // The unreadable one is refused clearly, as the upstream's refusal.
    let refused = read(&app, "apps/web/forbidden", "v").await?;
    assert_eq!(
        (refused.status, refused.code.as_deref()),
        (502, Some("upstream_denied")),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_against_a_hung_upstream_says_stale_at_once() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/web/db", json!({"password": "cached"}))
        .await?;
    let proxy = CountingProxy::start(&bao.address).await?;
    let mut agent = agent_with(
        &bao_upstream(&proxy.address, &token_auth(ROOT_TOKEN), ""),
        &sync_section("1s", "1h", 4),
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    wait_served(
        &agent.client_for(&web)?,
        "apps/web/db",
        "password",
        Some("cached"),
        POLL_SLACK * 2,
    )
    .await?;
    let app = agent.client_for(&web)?;
    eventually("a good sync on record", Duration::from_secs(5), || async {
        let got = read(&app, "apps/web/db", "password").await.ok()?;
        (got.stale == Some(false) && got.age.is_some()).then_some(())
    })
    .await?;
    agent.stop().await?;
    // Wait out a poll interval so the cache is older than one poll when it starts.
    let stopped = Instant::now();
    eventually("one poll interval", Duration::from_secs(5), || async {
        (stopped.elapsed() > Duration::from_millis(2100)).then_some(())
    })
    .await?;
    // The upstream now accepts connections but never answers in time (a hung node,
    // a black-holed network): the first poll takes the whole request timeout.
    proxy.set_delay(Duration::from_secs(60));
    agent.start().await?;
    let got = read(&agent.client_for(&web)?, "apps/web/db", "password").await?;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.stale,
        Some(true),
        "not confirmed with the upstream since the restart, and older than a poll: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_when_a_list_costs_a_request_per_secret() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    for i in 0..40 {
        bao.put_kv(&format!("apps/web/s{i}"), json!({"v": "x"}))
            .await?;
    }
    // No `detailed-metadata`: as on HashiCorp Vault, listing costs one metadata
    // request per secret.
    let token = token_with_policy(
        &bao,
        "plain",
        r#"
        path "secret/data/*" { capabilities = ["create", "read", "update", "delete"] }
        path "secret/metadata/*" { capabilities = ["read", "list", "delete"] }
        "#,
    )
    .await?;
    let proxy = CountingProxy::start(&bao.address).await?;
    proxy.set_delay(Duration::from_millis(100));
    let agent = agent_with(
        &bao_upstream(&proxy.address, &token_auth(&token), ""),
        &sync_section("1h", "24h", 4),
    )
    .await?;
    let admin = agent.admin()?;
    eventually("the initial sync", Duration::from_secs(60), || async {
        let listed = admin.list("apps/web/").await.ok()?;
        (listed.paths().len() == 40).then_some(())
    })
    .await?;
    let most = proxy.max_in_flight();
    assert!(
        most <= 4,
        "sync.concurrency = 4, but {most} upstream requests were in flight at once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_fetched_on_a_miss_outside_the_prefixes_follows_the_upstream() -> anyhow::Result<()>
{
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/web/synced", json!({"v": "1"})).await?;
    bao.put_kv("apps/web/other/db", json!({"v": "first"}))
        .await?;
    let mut sync = sync_section("1s", "24h", 4);
    sync = sync.replace("prefixes = [\"\"]", "prefixes = [\"apps/web/synced\"]");
    let agent = agent_with(
        &bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""),
        &sync,
    )
    .await?;
    let web = agent.issue_cert("web", None).await?;
    let app = agent.client_for(&web)?;
    wait_served(&app, "apps/web/synced", "v", Some("1"), POLL_SLACK * 2).await?;
    // Not under a configured prefix: fetched on the first read (a miss) ...
    wait_served(&app, "apps/web/other/db", "v", Some("first"), POLL_SLACK).await?;
    // ... and then kept current like the rest, not frozen at that first value.
    bao.put_kv("apps/web/other/db", json!({"v": "second"}))
        .await?;
    wait_served(
        &app,
        "apps/web/other/db",
        "v",
        Some("second"),
        Duration::from_secs(1) + POLL_SLACK * 2,
    )
    .await?;
    bao.ok("DELETE", "secret/metadata/apps/web/other/db", None)
        .await?;
    wait_served(
        &app,
        "apps/web/other/db",
        "v",
        None,
        Duration::from_secs(1) + POLL_SLACK * 2,
    )
    .await?;
    // The same for a secret written through the agent outside the prefixes.
    let put = agent
        .admin()?
        .write("apps/web/other/written", json!({"v": "mine"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    bao.put_kv("apps/web/other/written", json!({"v": "theirs"}))
        .await?;
    wait_served(
        &app,
        "apps/web/other/written",
        "v",
        Some("theirs"),
        Duration::from_secs(1) + POLL_SLACK * 2,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_soft_delete_undelete_and_destroy_follow_openbao() -> anyhow::Result<()> {
    let (bao, agent) = bao_and_agent().await?;
    let admin = agent.admin()?;
    bao.put_kv("apps/db", json!({"pw": "one"})).await?;
    wait_served(&admin, "apps/db", "pw", Some("one"), POLL_SLACK).await?;
    bao.put_kv("apps/db", json!({"pw": "two"})).await?;
    wait_served(&admin, "apps/db", "pw", Some("two"), POLL_SLACK).await?;
    let status_of = |query: &'static str| {
        let admin = &admin;
        async move {
            let answer = admin.get(&format!("/v1/secrets/apps/db{query}")).await?;
            anyhow::Ok((answer.status, answer.code(), answer.field("pw")))
        }
    };

    // Soft delete of the latest version: 410 `deleted`, the older one stays readable.
    bao.ok("DELETE", "secret/data/apps/db", None).await?;
    eventually("410 after the soft delete", POLL_SLACK, || async {
        (status_of("").await.ok()?.0 == 410).then_some(())
    })
    .await?;
    assert_eq!(status_of("").await?.1.as_deref(), Some("deleted"));
    assert_eq!(status_of("?version=2").await?.0, 410);
    assert_eq!(
        status_of("?version=1").await?,
        (200, None, Some("one".to_owned()))
    );
    let listed = admin.list("apps/").await?.json();
    assert_eq!(listed["secrets"][0]["deleted_version"], 2, "{listed}");

    // Undeleted upstream: current again.
    bao.ok(
        "POST",
        "secret/undelete/apps/db",
        Some(json!({"versions": [2]})),
    )
    .await?;
    wait_served(&admin, "apps/db", "pw", Some("two"), POLL_SLACK).await?;

    // Destroyed: gone for good, said so; the older version is still there.
    bao.ok(
        "PUT",
        "secret/destroy/apps/db",
        Some(json!({"versions": [2]})),
    )
    .await?;
    let gone = eventually("410 after the destroy", POLL_SLACK, || async {
        let (status, _, _) = status_of("").await.ok()?;
        let body = admin.read("apps/db").await.ok()?.body;
        (status == 410 && body.contains("destroyed")).then_some(body)
    })
    .await?;
    assert!(!gone.contains("two"), "{gone}");
    assert_eq!(status_of("?version=2").await?.0, 410);
    assert_eq!(status_of("?version=1").await?.2.as_deref(), Some("one"));

    // A new version written upstream is current again.
    bao.put_kv("apps/db", json!({"pw": "three"})).await?;
    wait_served(&admin, "apps/db", "pw", Some("three"), POLL_SLACK).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_pulls_new_prefixes_through_a_rebuilt_upstream_client() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("apps/web/db", json!({"password": "pw1"}))
        .await?;
    bao.put_kv("apps/api/key", json!({"token": "t1"})).await?;
    let upstream = bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), "");
    let sync =
        sync_section("1s", "24h", 4).replacen("prefixes = [\"\"]", "prefixes = [\"apps/web/\"]", 1);
    let agent = agent_with(&upstream, &sync).await?;
    let admin = agent.admin()?;
    wait_served(&admin, "apps/web/db", "password", Some("pw1"), POLL_SLACK).await?;
    assert!(
        admin.list("apps/").await?.paths() == vec!["apps/web/db"],
        "only the configured prefix is pulled"
    );

    // A second prefix, and other upstream settings (a new client of the same kind).
    let config = agent.config_path();
    let text = std::fs::read_to_string(&config)?;
    let widened = text
        .replacen(
            "prefixes = [\"apps/web/\"]",
            "prefixes = [\"apps/web/\", \"apps/api/\"]",
            1,
        )
        .replacen("request_timeout = \"5s\"", "request_timeout = \"6s\"", 1);
    std::fs::write(&config, widened)?;
    let applied = agent.cli(["reload"]).run().await?.success()?;
    assert!(
        applied.stdout.contains("upstream and sync"),
        "{}",
        applied.stdout
    );
    eventually(
        "the new prefix pulled without a restart",
        pace::scaled(POLL_SLACK),
        || async {
            let mut paths = admin.list("apps/").await.ok()?.paths();
            paths.sort();
            (paths == vec!["apps/api/key", "apps/web/db"]).then_some(())
        },
    )
    .await?;
    // Writes go through the new client.
    assert_eq!(
        admin
            .write("apps/api/written", json!({"token": "t2"}))
            .await?
            .status,
        200
    );
    let seen = bao.ok("GET", "secret/data/apps/api/written", None).await?;
    assert_eq!(seen["data"]["data"]["token"], "t2");

    assert_eq!(admin.read("apps/api/key").await?.status, 200);
    Ok(())
}
