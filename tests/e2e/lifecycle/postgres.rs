//! A scheduled rotation of a real PostgreSQL role's password (the `postgres` provider,
//! two alternating roles) on a private server with SCRAM password authentication:
//! every credential an app reads logs in at the moment it is read, both credentials
//! log in during the grace window, and afterwards only the new one does.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::harness::pace;
use crate::harness::postgres::PgServer;
use crate::harness::wasm::{plugin, sha256_of};
use crate::harness::Agent;

/// The agent config for the `postgres` provider rotating `db/app` between two roles.
pub(super) fn postgres_toml(rotate_every: &str, grace: &str) -> anyhow::Result<String> {
    let wasm = plugin("postgres")?;
    Ok(format!(
        r#"
[[sql]]
name = "postgres"
url_env = "LK_PG_ADMIN_URL"

[[plugin]]
name = "postgres"
wasm = {wasm:?}
sha256 = "{sha}"
sql = ["postgres"]

[[lifecycle]]
paths = ["db/app"]
plugin = "postgres"
config = {{ connection = "postgres", strategy = "alternate", roles = "app_a,app_b" }}
rotate_every = "{rotate_every}"
grace = "{grace}"
retry_after = "1s"
"#,
        wasm = wasm.display().to_string(),
        sha = sha256_of(&wasm)?,
    ))
}

/// Creates the two roles; `app_a` logs in with `password`.
pub(super) async fn roles(pg: &PgServer, password: &str) -> anyhow::Result<()> {
    pg.execute(&format!("CREATE ROLE app_a LOGIN PASSWORD '{password}'"))
        .await?;
    pg.execute("CREATE ROLE app_b NOLOGIN").await?;
    Ok(())
}

pub(super) fn credential(answer: &serde_json::Value) -> Option<(String, String)> {
    let fields = &answer["fields"];
    Some((
        fields["username"].as_str()?.to_owned(),
        fields["password"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn a_scheduled_rotation_keeps_a_postgres_role_working_at_every_moment() -> anyhow::Result<()>
{
    let pg = PgServer::start().await?;
    let initial = "initial-Password-0001";
    roles(&pg, initial).await?;
    // The loop below must see the new credential inside the grace window, once per
    // turn of a read and two logins: a busy machine gets a longer window, and a longer
    // period too (the next rotation retires the previous role, ending the window).
    let grace = pace::scaled(Duration::from_secs(3)).as_secs_f64().ceil() as u64;
    let every = pace::scaled_setting(Duration::from_secs(6));
    let agent = Agent::builder()
        .env("LK_PG_ADMIN_URL", &pg.admin_url())
        .append(&postgres_toml(&every, &format!("{grace}s"))?)
        .allow("spiffe://latchkey.local/app/app", &["db/*"], &["read"])
        .start()
        .await?;
    let put = agent
        .admin()?
        .put(
            "db/app",
            json!({"kind": "postgres-password", "fields": {"username": "app_a", "password": initial}}),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let app_id = agent.issue_cert("app", None).await?;
    let app = agent.client_for(&app_id)?;
    let old = ("app_a".to_owned(), initial.to_owned());

    // Read as an app would, and log in with what was read, until the rotation and
    // its grace window are over.
    let waited = Duration::from_secs(40);
    let deadline = Instant::now() + pace::scaled(waited);
    let mut rotated_seen_at = None;
    let mut both_worked_in_grace = false;
    let mut old_retired = false;
    let mut reads = 0;
    while Instant::now() < deadline && !old_retired {
        let answer = app.read("db/app").await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let (user, password) = credential(&answer.json()).context("credential fields")?;
        reads += 1;
        assert!(
            pg.can_login(&user, &password).await?,
            "the credential read as {user} (read {reads}) logs in"
        );
        if (user.as_str(), password.as_str()) != (old.0.as_str(), old.1.as_str()) {
            if rotated_seen_at.is_none() {
                rotated_seen_at = Some(Instant::now());
                // Within the grace window: the previous credential still logs in.
                both_worked_in_grace = pg.can_login(&old.0, &old.1).await?;
                assert_ne!(user, old.0, "the alternate role took over");
            } else if !pg.can_login(&old.0, &old.1).await? {
                old_retired = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(seen) = rotated_seen_at else {
        bail!("{}", crate::harness::timed_out("a rotation", waited));
    };
    assert!(
        both_worked_in_grace,
        "both credentials log in during the grace window"
    );
    assert!(
        old_retired,
        "the old credential stops working after the grace window"
    );
    assert!(
        seen.elapsed() >= Duration::from_secs(grace) * 2 / 3,
        "the old credential kept working for about the grace window ({grace} s): {:?}",
        seen.elapsed()
    );
    let current = credential(&agent.admin()?.read("db/app").await?.json()).context("fields")?;
    assert!(pg.can_login(&current.0, &current.1).await?);
    agent
        .wait_for_audit("the rotation", |r| {
            r["op"] == "rotate" && r["outcome"] == "ok"
        })
        .await?;
    agent
        .wait_for_audit("the retirement", |r| {
            r["op"] == "retire" && r["outcome"] == "ok"
        })
        .await?;
    Ok(())
}
