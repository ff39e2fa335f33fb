//! The example app clients in `examples/clients/` (curl, Python, Node), run as the
//! app they were given a certificate for, against a real agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::process::Command;

use crate::harness::{Agent, Identity};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/clients")
        .join(name)
}

#[allow(clippy::print_stderr)] // the skip reason is for the person running the tests
async fn run_as(
    agent: &Agent,
    who: &Identity,
    program: &str,
    args: &[&Path],
    rest: &[&str],
) -> anyhow::Result<Option<(i32, String, String)>> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .args(rest)
        .env("LATCHKEY_SOCKET", agent.socket())
        .env("LATCHKEY_CERT", &who.cert)
        .env("LATCHKEY_KEY", &who.key)
        .env("LATCHKEY_CACERT", agent.ca_path())
        .env("LATCHKEY_DIR", agent.dir())
        .stdin(Stdio::null());
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipping {program}: not installed");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )))
}

#[tokio::test]
async fn example_clients_fetch_their_apps_secret_and_are_refused_others() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write(
            "apps/web/db",
            json!({ "password": "pw-for-example-clients" }),
        )
        .await?;
    admin
        .write("apps/billing/db", json!({ "password": "not-for-web" }))
        .await?;
    let web = agent.issue_cert("web", None).await?;

    let python = example("latchkey_client.py");
    let node = example("latchkey_client.mjs");
    let curl = example("curl.sh");
    let cases: [(&str, &Path, &[&str]); 3] = [
        ("python3", &python, &["password"]),
        ("node", &node, &["password"]),
        ("sh", &curl, &[]),
    ];
    for (program, script, extra) in cases {
        let Some((code, stdout, stderr)) = run_as(
            &agent,
            &web,
            program,
            &[script],
            &[&["apps/web/db"], extra].concat(),
        )
        .await?
        else {
            continue;
        };
        assert_eq!(code, 0, "{program}: {stderr}");
        assert!(
            stdout.contains("pw-for-example-clients"),
            "{program}: {stdout}"
        );

        let Some((code, stdout, stderr)) =
            run_as(&agent, &web, program, &[script], &["apps/billing/db"]).await?
        else {
            continue;
        };
        assert_ne!(
            code, 0,
            "{program} must fail on another app's secret: {stdout}"
        );
        assert!(
            stderr.contains("403") || stdout.contains("forbidden"),
            "{program}: {stdout} {stderr}"
        );
    }
    Ok(())
}
