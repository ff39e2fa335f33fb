//! Moving secrets out of environment variables: `latchkey import --from-env` stores
//! them through the API, and `[[env_fallback]]` serves a variable while its secret is
//! still missing.

use serde_json::json;

use crate::harness::Agent;

#[tokio::test]
async fn import_from_env_stores_matching_variables_and_keeps_existing_ones() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    // An existing secret is kept unless --overwrite.
    assert_eq!(
        admin
            .write("imported/groq_key", json!({ "value": "already-here" }))
            .await?
            .status,
        200
    );
    let out = agent
        .cli(["import", "--from-env", "LKTEST_"])
        .env("LKTEST_OPENAI_API_KEY", "sk-imported-openai-7f3a")
        .env("LKTEST_AI__ANTHROPIC", "sk-ant-imported-91c2")
        .env("LKTEST_GROQ_KEY", "gsk-should-not-replace")
        .env("OTHER_VAR", "not-imported")
        .run()
        .await?
        .success()?;
    assert!(out.stdout.contains("2 imported, 1 kept"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("sk-imported-openai-7f3a") && !out.stderr.contains("sk-imported"),
        "values must not be printed: {out:?}"
    );

    let openai = admin.read("imported/openai_api_key").await?;
    assert_eq!(openai.status, 200, "{}", openai.body);
    assert_eq!(
        openai.field("value").as_deref(),
        Some("sk-imported-openai-7f3a")
    );
    assert_eq!(openai.json()["kind"], "imported");
    let anthropic = admin.read("imported/ai/anthropic").await?;
    assert_eq!(
        anthropic.field("value").as_deref(),
        Some("sk-ant-imported-91c2")
    );
    let groq = admin.read("imported/groq_key").await?;
    assert_eq!(groq.field("value").as_deref(), Some("already-here"));
    assert_eq!(admin.read("imported/other_var").await?.status, 404);

    agent
        .cli(["import", "--from-env", "LKTEST_", "--overwrite"])
        .env("LKTEST_GROQ_KEY", "gsk-replaced")
        .run()
        .await?
        .success()?;
    let groq = admin.read("imported/groq_key").await?;
    assert_eq!(groq.field("value").as_deref(), Some("gsk-replaced"));
    assert_eq!(groq.version(), Some(2));
    assert!(!agent.logs().contains("sk-imported-openai-7f3a"));
    Ok(())
}

#[tokio::test]
async fn env_fallback_serves_a_missing_secret_until_it_is_stored() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .env("LK_FALLBACK_OPENAI", "sk-from-the-environment-55aa")
        .append(
            r#"
[[env_fallback]]
path = "ai/openai"
var = "LK_FALLBACK_OPENAI"
field = "api_key"

[[env_fallback]]
path = "ai/unset"
var = "LK_FALLBACK_NOT_SET"
"#,
        )
        .start()
        .await?;
    let admin = agent.admin()?;

    let served = admin.read("ai/openai").await?;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(
        served.field("api_key").as_deref(),
        Some("sk-from-the-environment-55aa")
    );
    assert_eq!(served.json()["version"], 0);
    assert_eq!(served.json()["labels"], json!(["env-fallback"]));
    assert_eq!(admin.read("ai/unset").await?.status, 404);
    assert!(agent.logs().contains("environment fallback"));
    assert!(!agent.logs().contains("sk-from-the-environment-55aa"));

    // Once stored, the stored secret wins.
    admin
        .write("ai/openai", json!({ "api_key": "sk-stored-now" }))
        .await?;
    let stored = admin.read("ai/openai").await?;
    assert_eq!(stored.field("api_key").as_deref(), Some("sk-stored-now"));
    assert_eq!(stored.json()["version"], 1);

    // Policy still applies to fallback paths.
    let web = agent.issue_cert("web", None).await?;
    assert_eq!(agent.client_for(&web)?.read("ai/openai").await?.status, 403);
    Ok(())
}

#[tokio::test]
async fn import_shows_its_progress_on_a_terminal_only() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let bin = crate::harness::binary()?;
    // On a pseudo-terminal (util-linux `script`): the progress line, rewritten in
    // place and cleared at the end.
    let mut cmd = std::process::Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} import --from-env LKPROG_", bin.display()),
        "/dev/null",
    ])
    .env("LATCHKEY_DIR", agent.dir());
    for i in 0..5 {
        cmd.env(format!("LKPROG_KEY_{i}"), format!("value-{i}"));
    }
    let tty = cmd.output()?;
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(text.contains("importing 5/5 (100%)"), "{text}");
    assert!(text.contains("\r\u{1b}[K"), "redrawn in place: {text:?}");
    assert!(text.contains("5 imported"), "{text}");
    assert!(!text.contains("value-"), "values are never printed");

    // Into a pipe: only the command's own lines.
    let piped = agent
        .cli(["import", "--from-env", "LKPIPE_"])
        .env("LKPIPE_ONE", "x")
        .run()
        .await?
        .success()?;
    assert!(!piped.stderr.contains("importing"), "{}", piped.stderr);
    assert!(!piped.stdout.contains('\u{1b}'), "{}", piped.stdout);
    Ok(())
}
