//! Secret values never reach the agent's output: a whole session at trace level —
//! writes from stdin, a file, argv, JSON and the API, reads by the CLI and by apps,
//! versions, listing, deleting, a denied read and refused bodies — and none of the
//! values it used appears in the agent's stdout, stderr or audit file, nor in the
//! CLI's own log.

use serde_json::json;

use crate::harness::{Agent, Via};

/// A distinctive value per way in. Each ends in a tag that is checked on its own,
/// so a value cut short in a log line is caught as well.
const FROM_STDIN: &str = "stdin-secret-Q7xZ41wq";
const FROM_FILE: &str = "file-secret-K9pL22zr";
const FROM_ARGV: &str = "argv-secret-M3nB90ty";
const FROM_JSON: &str = "json-secret-T5vC63hj";
const FROM_API: &str = "api-secret-R8wD15km";
const FROM_API_V2: &str = "api-secret-v2-H4sG77px";
const IN_BAD_TYPE: &str = "badtype-secret-J2fN08lc";
const IN_UNKNOWN_KEY: &str = "unknown-key-secret-P6qA39xe";
const IN_CONFLICT: &str = "conflict-secret-W1eY84uo";
const DENIED: &str = "denied-secret-B5kU26ai";

const ALL: &[&str] = &[
    FROM_STDIN,
    FROM_FILE,
    FROM_ARGV,
    FROM_JSON,
    FROM_API,
    FROM_API_V2,
    IN_BAD_TYPE,
    IN_UNKNOWN_KEY,
    IN_CONFLICT,
    DENIED,
];

/// Where `value` shows in `text`, as itself, its tail, hex, or a Rust byte list.
fn leak_of(value: &str, text: &str) -> Option<String> {
    let tail = &value[value.len() - 8..];
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    let bytes = value
        .bytes()
        .take(8)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    [value.to_owned(), tail.to_owned(), hex, bytes]
        .into_iter()
        .find(|needle| text.contains(needle.as_str()))
}

fn assert_no_leak(place: &str, text: &str) {
    for value in ALL {
        if let Some(found) = leak_of(value, text) {
            let line = text
                .lines()
                .find(|l| l.contains(found.as_str()))
                .unwrap_or_default();
            panic!("{place} holds secret value {value:?} (as {found:?}) in:\n{line}");
        }
    }
}

async fn full_session(agent: &Agent) -> anyhow::Result<()> {
    let cli_logs = |stderr: &str| assert_no_leak("the CLI's stderr", stderr);

    // Writes by the CLI: stdin, a file, argv, JSON on stdin.
    let out = agent
        .cli([
            "--log-level",
            "trace",
            "put",
            "apps/web/db",
            "user=web",
            "password=-",
        ])
        .stdin(format!("{FROM_STDIN}\n"))
        .run()
        .await?
        .success()?;
    cli_logs(&out.stderr);
    let file = agent.scratch().join("tls-key.txt");
    std::fs::write(&file, FROM_FILE)?;
    let file_arg = format!("key=@{}", file.display());
    let out = agent
        .cli([
            "--log-level",
            "trace",
            "put",
            "apps/web/tls",
            file_arg.as_str(),
        ])
        .run()
        .await?
        .success()?;
    cli_logs(&out.stderr);
    let argv = format!("token={FROM_ARGV}");
    agent
        .cli(["put", "apps/web/argv", argv.as_str()])
        .run()
        .await?
        .success()?;
    let out = agent
        .cli([
            "--log-level",
            "trace",
            "put",
            "apps/web/json",
            "--from-json",
            "-",
            "--kind",
            "api-key",
        ])
        .stdin(json!({"secret": FROM_JSON}).to_string())
        .run()
        .await?
        .success()?;
    cli_logs(&out.stderr);

    // Writes by the API over TCP, including refused ones.
    let tcp = agent.client_via(&agent.admin_identity(), Via::Tcp)?;
    assert_eq!(
        tcp.write("apps/web/api", json!({"token": FROM_API}))
            .await?
            .status,
        200
    );
    assert_eq!(
        tcp.write("apps/web/api", json!({"token": FROM_API_V2}))
            .await?
            .status,
        200
    );
    let bad = tcp
        .put("apps/web/bad", json!({"fields": [IN_BAD_TYPE]}))
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(!bad.body.contains(IN_BAD_TYPE), "{}", bad.body);
    let bad = tcp
        .put(
            "apps/web/bad",
            json!({"fields": {"n": "x"}, "colour": IN_UNKNOWN_KEY}),
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(!bad.body.contains(IN_UNKNOWN_KEY), "{}", bad.body);
    let conflict = tcp
        .put(
            "apps/web/api",
            json!({"fields": {"token": IN_CONFLICT}, "cas": 1}),
        )
        .await?;
    assert_eq!(conflict.status, 409, "{}", conflict.body);

    // Reads by the CLI and by the API, every selector.
    let out = agent
        .cli([
            "--log-level",
            "trace",
            "get",
            "apps/web/db",
            "--field",
            "password",
        ])
        .run()
        .await?
        .success()?;
    assert_eq!(out.stdout.trim_end(), FROM_STDIN);
    cli_logs(&out.stderr);
    let out = agent
        .cli(["--log-level", "trace", "get", "apps/web/tls"])
        .run()
        .await?
        .success()?;
    assert!(out.stdout.contains(FROM_FILE), "{}", out.stdout);
    cli_logs(&out.stderr);
    let unix = agent.admin()?;
    for (uri, value) in [
        ("/v1/secrets/apps/web/json", FROM_JSON),
        ("/v1/secrets/apps/web/argv", FROM_ARGV),
        ("/v1/secrets/apps/web/api", FROM_API_V2),
        ("/v1/secrets/apps/web/api", FROM_API_V2),
        ("/v1/secrets/apps/web/api?version=1", FROM_API),
        ("/v1/secrets/apps/web/api?label=previous", FROM_API),
    ] {
        let answer = unix.get(uri).await?;
        assert!(answer.body.contains(value), "{uri}: {}", answer.body);
        let answer = tcp.get(uri).await?;
        assert!(answer.body.contains(value), "{uri}: {}", answer.body);
    }
    let web = agent.issue_cert("web", None).await?;
    let as_web = agent.client_for(&web)?;
    assert_eq!(
        as_web
            .read("apps/web/db")
            .await?
            .field("password")
            .as_deref(),
        Some(FROM_STDIN)
    );

    // A denied read.
    unix.write("apps/other/db", json!({"password": DENIED}))
        .await?;
    let denied = as_web.read("apps/other/db").await?;
    assert_eq!(denied.status, 403, "{}", denied.body);

    // List and delete.
    let out = agent.cli(["list", "apps/web/"]).run().await?.success()?;
    assert!(
        out.stdout.lines().any(|l| l == "apps/web/json"),
        "{}",
        out.stdout
    );
    agent.cli(["rm", "apps/web/json"]).run().await?.success()?;
    assert_eq!(unix.read("apps/web/json").await?.status, 404);
    Ok(())
}

async fn check_session(mut agent: Agent) -> anyhow::Result<()> {
    full_session(&agent).await?;
    let stopped = agent.stop().await?;
    assert!(stopped.success(), "unclean stop: {stopped}");
    let logs = agent.logs();
    assert!(
        logs.lines().count() > 100 && logs.contains("TRACE"),
        "the agent did not log at trace level:\n{}",
        agent.log_tail()
    );
    assert_no_leak("the agent's output", &logs);
    let audit = agent.audit_text();
    assert!(
        audit.lines().count() >= 10,
        "only {} audit records",
        audit.lines().count()
    );
    assert_no_leak("the audit file", &audit);
    Ok(())
}

// Every crate at trace, third-party ones included (hyper, rustls, sled): no plugin is
// compiled here, so the log stays under a megabyte.
#[tokio::test]
async fn a_trace_level_session_never_logs_secret_values() -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().log_filter("trace").start().await?;
    check_session(agent).await
}

#[tokio::test]
async fn a_trace_level_session_with_json_logs_never_logs_secret_values() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .tcp()
        .log_filter("trace")
        .json_logs()
        .start()
        .await?;
    check_session(agent).await
}
