//! Rotation of a secret kept in AWS Secrets Manager (`moto_server`) walks AWS's own
//! rotation protocol, so a team's rotation functions and latchkey see each other:
//! the pending credential is a version labelled `AWSPENDING` while it is tested
//! (what a function's `testSecret` reads), promotion moves `AWSCURRENT` and leaves the
//! old one `AWSPREVIOUS`, a rollback drops the pending label, and a foreign
//! `AWSPENDING` (a function's rotation in flight) holds latchkey back.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::service::Service;
use super::staged::{current_key, plugin_toml, rotate_in_background, ORIGINAL};
use crate::harness::Agent;
use crate::moto::Moto;
use crate::upstream_agent::aws_builder;

/// The `key` field of the version of `svc/key` carrying `stage`, read from moto.
async fn key_at(moto: &Moto, stage: &str) -> anyhow::Result<Option<String>> {
    let (status, answer) = moto
        .call(
            "GetSecretValue",
            json!({"SecretId": "svc/key", "VersionStage": stage}),
        )
        .await?;
    if status != 200 {
        return Ok(None);
    }
    let text = answer["SecretString"].as_str().context("a secret string")?;
    let value: Value = serde_json::from_str(text)?;
    Ok(value["key"].as_str().map(str::to_owned))
}

/// How many versions of `svc/key` carry `stage`.
async fn carrying(moto: &Moto, stage: &str) -> anyhow::Result<usize> {
    let described = moto
        .ok("DescribeSecret", json!({"SecretId": "svc/key"}))
        .await?;
    Ok(described["VersionIdsToStages"]
        .as_object()
        .context("stages")?
        .values()
        .filter(|labels| {
            labels
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == stage))
        })
        .count())
}

async fn agent_on(moto: &Moto, service: &Service) -> anyhow::Result<Agent> {
    let agent = aws_builder(&moto.endpoint)
        .append(&plugin_toml(service)?)
        .start()
        .await?;
    let written = agent
        .admin()?
        .write("svc/key", json!({ "key": ORIGINAL }))
        .await?;
    anyhow::ensure!(written.status == 200, "write svc/key: {}", written.body);
    Ok(agent)
}

async fn rotate(agent: &Agent) -> anyhow::Result<(i32, String)> {
    let out = agent.cli(["rotate", "svc/key"]).run().await?;
    Ok((out.code, format!("{}{}", out.stdout, out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_of_an_aws_secret_walks_the_aws_stages() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let service = Service::start(ORIGINAL)?;
    let agent = agent_on(&moto, &service).await?;

    // Held in step 3: the pending key is AWS's pending version, apps keep the current.
    let (reached, release) = service.stall_check_of_new_key();
    let cli = rotate_in_background(&agent, "svc/key")?;
    let deadline = crate::harness::pace::scaled(Duration::from_secs(30));
    tokio::task::spawn_blocking(move || reached.recv_timeout(deadline))
        .await?
        .context("the rotation never reached step 3")?;
    let pending = key_at(&moto, "AWSPENDING")
        .await?
        .context("an AWSPENDING version while the key is tested")?;
    assert_ne!(pending, ORIGINAL);
    assert!(service.created().contains(&pending), "{pending}");
    assert_eq!(
        key_at(&moto, "AWSCURRENT").await?.as_deref(),
        Some(ORIGINAL)
    );
    assert_eq!(current_key(&agent).await?, ORIGINAL);
    // Readable through the agent by who may (the admin here) as the `pending` label.
    let labelled = agent
        .admin()?
        .get("/v1/secrets/svc/key?label=pending")
        .await?;
    assert_eq!(
        labelled.field("key").as_deref(),
        Some(pending.as_str()),
        "{}",
        labelled.body
    );

    let _ = release.send(());
    let out = cli.await??;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Promoted by moving the labels: the tested version itself is current now.
    assert_eq!(
        key_at(&moto, "AWSCURRENT").await?.as_deref(),
        Some(pending.as_str())
    );
    assert_eq!(
        key_at(&moto, "AWSPREVIOUS").await?.as_deref(),
        Some(ORIGINAL)
    );
    assert_eq!(
        carrying(&moto, "AWSPENDING").await?,
        0,
        "no pending label is left"
    );
    assert_eq!(carrying(&moto, "AWSCURRENT").await?, 1);
    assert_eq!(current_key(&agent).await?, pending);
    let versions = moto
        .ok("ListSecretVersionIds", json!({"SecretId": "svc/key"}))
        .await?;
    assert_eq!(
        versions["Versions"].as_array().map(Vec::len),
        Some(2),
        "the rotation added one version, the one it tested: {versions}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_rotation_holds_latchkey_back_and_a_rollback_drops_its_pending_label(
) -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let service = Service::start(ORIGINAL)?;
    let agent = agent_on(&moto, &service).await?;

    // A rotation function's createSecret: a version labelled AWSPENDING only.
    let foreign = moto
        .ok(
            "PutSecretValue",
            json!({"SecretId": "svc/key", "SecretString": "{\"key\":\"from-a-function\"}",
                   "VersionStages": ["AWSPENDING"]}),
        )
        .await?;
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("outside latchkey"), "{text}");
    assert_eq!(
        key_at(&moto, "AWSPENDING").await?.as_deref(),
        Some("from-a-function")
    );
    assert_eq!(
        key_at(&moto, "AWSCURRENT").await?.as_deref(),
        Some(ORIGINAL)
    );
    assert_eq!(
        service.retired(),
        service.created(),
        "the key made for the refused rotation is retired"
    );

    // The function's rotation ends (its pending label goes); a rotation that fails
    // its test rolls back and leaves no pending label behind.
    moto.ok(
        "UpdateSecretVersionStage",
        json!({"SecretId": "svc/key", "VersionStage": "AWSPENDING",
               "RemoveFromVersionId": foreign["VersionId"]}),
    )
    .await?;
    service.fail_check_of_new_keys(1);
    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("step 3"), "{text}");
    assert_eq!(
        carrying(&moto, "AWSPENDING").await?,
        0,
        "the pending label is dropped"
    );
    assert_eq!(
        key_at(&moto, "AWSCURRENT").await?.as_deref(),
        Some(ORIGINAL)
    );

    let (code, text) = rotate(&agent).await?;
    assert_eq!(code, 0, "{text}");
    let now = current_key(&agent).await?;
    assert_ne!(now, ORIGINAL);
    assert_eq!(key_at(&moto, "AWSCURRENT").await?, Some(now));
    Ok(())
}
