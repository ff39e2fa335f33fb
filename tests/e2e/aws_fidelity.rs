//! What a team writes to AWS Secrets Manager (`moto_server`, through its AWS JSON
//! API, the wire protocol boto3 speaks) is what apps get through the agent: binary
//! secrets, scheduled deletions, and an upstream that reports an older version as
//! current after an acknowledged write.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::api::Api;
use crate::harness::eventually;
use crate::moto::Moto;
use crate::upstream_agent::aws_agent;

const WITHIN: Duration = Duration::from_secs(15);

async fn wait_field(api: &Api, path: &str, field: &str, value: &str) -> anyhow::Result<Value> {
    eventually(&format!("{path}.{field} = {value:?}"), WITHIN, || async {
        let got = api.read(path).await.ok()?;
        (got.status == 200 && got.field(field).as_deref() == Some(value)).then(|| got.json())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_secret_is_served_in_base64_and_polls_stay_quiet() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let bytes: Vec<u8> = (0u8..=255).chain([0, 0xff, b'\n']).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    moto.ok(
        "CreateSecret",
        json!({"Name": "apps/tls/der", "SecretBinary": b64}),
    )
    .await?;
    moto.ok(
        "CreateSecret",
        json!({"Name": "apps/tls/other", "SecretString": "{\"a\":\"b\"}"}),
    )
    .await?;
    let agent = aws_agent(&moto.endpoint).await?;
    let admin = agent.admin()?;
    let served = wait_field(&admin, "apps/tls/der", "binary", &b64).await?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(
        served["fields"]["binary"]
            .as_str()
            .context("binary field")?,
    )?;
    assert_eq!(decoded, bytes, "byte for byte");
    // Several polls later: no warning about it, none per poll.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warned = agent.log_lines_with("apps/tls/der");
    assert!(
        warned.iter().all(|l| !l.contains("WARN")),
        "a binary secret is not a problem: {warned:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_made_current_upstream_does_not_undo_an_acknowledged_write(
) -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let agent = aws_agent(&moto.endpoint).await?;
    let admin = agent.admin()?;
    let first = admin
        .write("apps/web/db", json!({"password": "one"}))
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let v1 = first.version().context("v1")?;
    let second = admin
        .put(
            "apps/web/db",
            json!({"fields": {"password": "two"}, "cas": v1}),
        )
        .await?;
    assert_eq!(second.status, 200, "{}", second.body);
    let v2 = second.version().context("v2")?;

    // Upstream, AWSCURRENT goes back to the first version (what an inconsistent
    // upstream, or two versions labelled AWSCURRENT, look like to a reader).
    let described = moto
        .ok("DescribeSecret", json!({"SecretId": "apps/web/db"}))
        .await?;
    let stages = described["VersionIdsToStages"]
        .as_object()
        .context("stages")?;
    let with = |label: &str| {
        stages
            .iter()
            .find(|(_, l)| l.as_array().is_some_and(|l| l.iter().any(|x| x == label)))
            .map(|(id, _)| id.clone())
    };
    let current = with("AWSCURRENT").context("current")?;
    let previous = with("AWSPREVIOUS").context("previous")?;
    moto.ok(
        "UpdateSecretVersionStage",
        json!({"SecretId": "apps/web/db", "VersionStage": "AWSCURRENT",
               "MoveToVersionId": previous, "RemoveFromVersionId": current}),
    )
    .await?;
    let seen = moto
        .ok("GetSecretValue", json!({"SecretId": "apps/web/db"}))
        .await?;
    assert_eq!(seen["SecretString"], "{\"password\":\"one\"}", "{seen}");

    // Several polls: the agent keeps what it acknowledged, and says why once.
    eventually("the inconsistency to be logged", WITHIN, || async {
        (!agent.log_lines_with("upstream inconsistency").is_empty()).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served = admin.read("apps/web/db").await?;
    assert_eq!(
        (served.field("password").as_deref(), served.version()),
        (Some("two"), Some(v2)),
        "{}",
        served.body
    );
    let said = agent.log_lines_with("upstream inconsistency");
    assert_eq!(said.len(), 1, "said once, not every poll: {said:#?}");

    // A newer write upstream is followed again.
    moto.ok(
        "PutSecretValue",
        json!({"SecretId": "apps/web/db", "SecretString": "{\"password\":\"three\"}"}),
    )
    .await?;
    wait_field(&admin, "apps/web/db", "password", "three").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_scheduled_for_deletion_go_one_by_one_past_the_guard() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    for name in ["a", "b", "c"] {
        moto.ok(
            "CreateSecret",
            json!({"Name": format!("apps/{name}"), "SecretString": name}),
        )
        .await?;
    }
    let agent = aws_agent(&moto.endpoint).await?;
    let admin = agent.admin()?;
    wait_field(&admin, "apps/c", "value", "c").await?;
    // Every one scheduled for deletion (a recovery window): each is a tombstone in
    // the listing, a deletion by name, so the guard lets all of them go.
    for name in ["a", "b", "c"] {
        moto.ok(
            "DeleteSecret",
            json!({"SecretId": format!("apps/{name}"), "RecoveryWindowInDays": 7}),
        )
        .await?;
    }
    eventually("all three dropped", WITHIN, || async {
        let listed = admin.list("apps/").await.ok()?;
        listed.paths().is_empty().then_some(())
    })
    .await?;
    let health = admin.health().await?;
    assert_eq!(
        health.json()["upstream"]["held_deletions"],
        0,
        "{}",
        health.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_staging_labels_are_readable_as_labels() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    moto.ok(
        "CreateSecret",
        json!({"Name": "apps/db", "SecretString": "{\"pw\":\"one\"}"}),
    )
    .await?;
    moto.ok(
        "PutSecretValue",
        json!({"SecretId": "apps/db", "SecretString": "{\"pw\":\"two\"}"}),
    )
    .await?;
    // A rotation Lambda's pending version, and a team's own stage.
    moto.ok(
        "PutSecretValue",
        json!({"SecretId": "apps/db", "SecretString": "{\"pw\":\"next\"}",
               "VersionStages": ["AWSPENDING"]}),
    )
    .await?;
    moto.ok(
        "PutSecretValue",
        json!({"SecretId": "apps/db", "SecretString": "{\"pw\":\"blue\"}",
               "VersionStages": ["BLUE"]}),
    )
    .await?;
    let agent = aws_agent(&moto.endpoint).await?;
    let admin = agent.admin()?;
    wait_field(&admin, "apps/db", "pw", "two").await?;
    for (label, want) in [
        ("current", "two"),
        ("previous", "one"),
        ("pending", "next"),
        ("BLUE", "blue"),
    ] {
        let read = admin
            .get(&format!("/v1/secrets/apps/db?label={label}"))
            .await?;
        assert_eq!(read.status, 200, "{label}: {}", read.body);
        assert_eq!(
            read.field("pw").as_deref(),
            Some(want),
            "{label}: {}",
            read.body
        );
        assert_eq!(read.json()["labels"][0], label, "{}", read.body);
    }
    let unknown = admin.get("/v1/secrets/apps/db?label=GREEN").await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(
        unknown.body.contains("label \\\"GREEN\\\""),
        "{}",
        unknown.body
    );
    // What apps get is still the current version.
    assert_eq!(
        admin.read("apps/db").await?.field("pw").as_deref(),
        Some("two")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_set_takes_the_version_id_aws_clients_see() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    moto.ok(
        "CreateSecret",
        json!({"Name": "apps/db", "SecretString": "{\"pw\":\"one\"}"}),
    )
    .await?;
    let agent = aws_agent(&moto.endpoint).await?;
    let admin = agent.admin()?;
    wait_field(&admin, "apps/db", "pw", "one").await?;
    // A team's client writes a version and learns its id, as boto3's
    // put_secret_value returns it.
    let put = moto
        .ok(
            "PutSecretValue",
            json!({"SecretId": "apps/db", "SecretString": "{\"pw\":\"two\"}"}),
        )
        .await?;
    let id = put["VersionId"]
        .as_str()
        .context("a version id")?
        .to_owned();
    let stale = admin
        .put(
            "apps/db",
            json!({"fields": {"pw": "lost"}, "cas": "0b1c2d3e-not-a-version"}),
        )
        .await?;
    assert_eq!(stale.status, 409, "{}", stale.body);
    let written = admin
        .put("apps/db", json!({"fields": {"pw": "three"}, "cas": id}))
        .await?;
    assert_eq!(written.status, 200, "{}", written.body);
    // The id of a version that is no longer current is a conflict, in the query too.
    let again = admin
        .put(
            &format!("apps/db?cas={id}"),
            json!({"fields": {"pw": "four"}}),
        )
        .await?;
    assert_eq!(again.status, 409, "{}", again.body);
    // The CLI takes it as well.
    let current = moto
        .ok("DescribeSecret", json!({"SecretId": "apps/db"}))
        .await?;
    let current_id = current["VersionIdsToStages"]
        .as_object()
        .and_then(|m| {
            m.iter()
                .find(|(_, l)| {
                    l.as_array()
                        .is_some_and(|l| l.iter().any(|x| x == "AWSCURRENT"))
                })
                .map(|(id, _)| id.clone())
        })
        .context("a current version")?;
    let out = agent
        .cli(["put", "apps/db", "pw=five", "--cas", &current_id])
        .run()
        .await?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_field(&admin, "apps/db", "pw", "five").await?;
    Ok(())
}
