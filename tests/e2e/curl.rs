//! Plain `curl` as a real client: mTLS over the Unix socket (`--unix-socket`,
//! `--cert`, `--key`, `--cacert`) and over loopback TCP.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::harness::{Agent, Identity};

struct Curl {
    exit: i32,
    status: u16,
    body: String,
    stderr: String,
}

fn curl_missing() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
}

#[allow(clippy::print_stderr)]
fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Runs curl with `args`, printing the status code after the body.
async fn curl(args: &[&str], stdin: Option<&str>) -> anyhow::Result<Curl> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("cannot run curl")?;
    if let Some(text) = stdin {
        let mut input = child.stdin.take().context("no stdin")?;
        input.write_all(text.as_bytes()).await?;
    }
    let out = crate::harness::within(
        "curl to finish",
        Duration::from_secs(20),
        child.wait_with_output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    Ok(Curl {
        exit: out.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn tls_args(identity: &Identity, ca: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        identity.cert.to_string_lossy().into_owned(),
        "--key".into(),
        identity.key.to_string_lossy().into_owned(),
        "--cacert".into(),
        ca.to_string_lossy().into_owned(),
    ]
}

#[tokio::test]
async fn curl_reads_and_writes_secrets_with_mtls() -> anyhow::Result<()> {
    if curl_missing() {
        skip("curl is not installed");
        return Ok(());
    }
    let agent = Agent::builder().tcp().start().await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "curl-read-me"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let socket = agent.socket().to_string_lossy().into_owned();
    let ca = agent.ca_path();

    // An app reads its secret over the Unix socket.
    let mut args = vec!["--unix-socket".to_owned(), socket.clone()];
    args.extend(tls_args(&web, &ca));
    args.push("https://localhost/v1/secrets/apps/web/db".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let read = curl(&argv, None).await?;
    assert_eq!(
        (read.exit, read.status),
        (0, 200),
        "{}{}",
        read.body,
        read.stderr
    );
    let body: serde_json::Value = serde_json::from_str(&read.body)?;
    assert_eq!(body["fields"]["password"], "curl-read-me");
    assert_eq!(body["version"], 1);

    // The admin writes a new version with PUT and a JSON body from stdin.
    let mut args = vec!["--unix-socket".to_owned(), socket.clone()];
    args.extend(tls_args(&agent.admin_identity(), &ca));
    args.extend([
        "-X".into(),
        "PUT".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        "@-".into(),
        "https://localhost/v1/secrets/apps/web/db".into(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let put = curl(&argv, Some(r#"{"fields":{"password":"curl-wrote-me"}}"#)).await?;
    assert_eq!(
        (put.exit, put.status),
        (0, 200),
        "{}{}",
        put.body,
        put.stderr
    );
    let put_body: serde_json::Value = serde_json::from_str(&put.body)?;
    assert_eq!(put_body["version"], 2, "{}", put.body);
    let now = agent.admin()?.read("apps/web/db").await?;
    assert_eq!(now.field("password").as_deref(), Some("curl-wrote-me"));

    // Over loopback TCP: the server certificate carries 127.0.0.1.
    let tcp = agent.tcp_addr().context("tcp")?;
    let mut args = tls_args(&web, &ca);
    args.push(format!("https://{tcp}/v1/secrets/apps/web/db"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let read = curl(&argv, None).await?;
    assert_eq!(
        (read.exit, read.status),
        (0, 200),
        "{}{}",
        read.body,
        read.stderr
    );
    assert!(read.body.contains("curl-wrote-me"), "{}", read.body);

    // The app may not read another app's secret.
    agent
        .admin()?
        .write("apps/other/db", json!({"password": "not-for-web"}))
        .await?;
    let mut args = vec!["--unix-socket".to_owned(), socket.clone()];
    args.extend(tls_args(&web, &ca));
    args.push("https://localhost/v1/secrets/apps/other/db".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let denied = curl(&argv, None).await?;
    assert_eq!(denied.status, 403, "{}{}", denied.body, denied.stderr);
    assert!(denied.body.contains("forbidden") && !denied.body.contains("not-for-web"));

    // Without a client certificate curl gets no answer.
    let ca_arg = ca.to_string_lossy().into_owned();
    let refused = curl(
        &[
            "--unix-socket",
            socket.as_str(),
            "--cacert",
            ca_arg.as_str(),
            "https://localhost/v1/secrets/apps/web/db",
        ],
        None,
    )
    .await?;
    assert_ne!(refused.exit, 0, "no-cert curl succeeded: {}", refused.body);
    assert!(!refused.body.contains("curl-wrote-me"));
    Ok(())
}
