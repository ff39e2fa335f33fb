//! Malformed requests: bad paths (traversal, encoded traversal, empty segments), an
//! oversized body, bad JSON, unknown keys, values of the wrong type, wrong methods,
//! too many headers. Each gets a clear 4xx with a stable `error.code`, nothing is
//! written, nothing is echoed back, and the agent keeps serving.

use anyhow::Context as _;
use serde_json::json;

use crate::harness::raw::{self, RawReply};
use crate::harness::{Agent, Via};

struct Case {
    what: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn json_put(
    what: &'static str,
    target: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method: "PUT",
        target,
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("content-length", body.len().to_string()),
        ],
        body: body.as_bytes().to_vec(),
        status,
        code: Some(code),
    }
}

fn bare(
    what: &'static str,
    method: &'static str,
    target: &'static str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        target,
        headers: vec![("content-length", "0".to_owned())],
        body: Vec::new(),
        status,
        code: Some(code),
    }
}

const GOOD_BODY: &str = r#"{"fields":{"password":"planted-value-5521"}}"#;

fn cases() -> Vec<Case> {
    let big = format!(r#"{{"fields":{{"blob":"{}"}}}}"#, "x".repeat(70_000));
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend(std::iter::repeat_n(b'y', 8192));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let many_headers: Vec<(&'static str, String)> = (0..100)
        .map(|i| ("x-filler", format!("value-{i}")))
        .collect();
    vec![
        // Paths.
        json_put(
            "dot-dot segment",
            "/v1/secrets/apps/../planted/x",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "trailing dot-dot",
            "/v1/secrets/apps/web/..",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "single dot",
            "/v1/secrets/apps/./planted",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "encoded dot-dot",
            "/v1/secrets/apps/%2e%2e/planted",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "encoded slash",
            "/v1/secrets/apps%2fplanted",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "encoded NUL",
            "/v1/secrets/apps/planted%00",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        json_put(
            "empty segment",
            "/v1/secrets/apps//planted",
            GOOD_BODY,
            400,
            "bad_path",
        ),
        bare(
            "read with dot-dot",
            "GET",
            "/v1/secrets/apps/web/../web/db",
            400,
            "bad_path",
        ),
        bare(
            "read with encoded dot-dot",
            "GET",
            "/v1/secrets/%2e%2e/apps/web/db",
            400,
            "bad_path",
        ),
        bare(
            "delete with empty segment",
            "DELETE",
            "/v1/secrets/apps//web/db",
            400,
            "bad_path",
        ),
        bare(
            "list with dot-dot prefix",
            "GET",
            "/v1/secrets?prefix=apps/../",
            400,
            "bad_path",
        ),
        // Bodies.
        json_put(
            "body over the limit",
            "/v1/secrets/apps/planted",
            &big,
            413,
            "body_too_large",
        ),
        Case {
            what: "declared length over the limit, no body sent",
            method: "PUT",
            target: "/v1/secrets/apps/planted",
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("content-length", "10000000".to_owned()),
            ],
            body: Vec::new(),
            status: 413,
            code: Some("body_too_large"),
        },
        Case {
            what: "chunked body over the limit",
            method: "PUT",
            target: "/v1/secrets/apps/planted",
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("transfer-encoding", "chunked".to_owned()),
            ],
            body: chunked,
            status: 413,
            code: Some("body_too_large"),
        },
        json_put(
            "truncated JSON",
            "/v1/secrets/apps/planted",
            r#"{"fields":{"password":"pla"#,
            400,
            "bad_json",
        ),
        json_put(
            "not JSON",
            "/v1/secrets/apps/planted",
            "password=planted",
            400,
            "bad_json",
        ),
        json_put(
            "JSON array",
            "/v1/secrets/apps/planted",
            r#"["planted"]"#,
            400,
            "bad_json",
        ),
        json_put(
            "unknown key",
            "/v1/secrets/apps/planted",
            r#"{"fields":{"password":"planted-value-5521"},"colour":"red"}"#,
            400,
            "bad_json",
        ),
        json_put(
            "fields as a list",
            "/v1/secrets/apps/planted",
            r#"{"fields":[987654321]}"#,
            400,
            "bad_json",
        ),
        json_put(
            "fields as a string",
            "/v1/secrets/apps/planted",
            r#"{"fields":"echo-me-not-1234"}"#,
            400,
            "bad_json",
        ),
        json_put(
            "a value cut short",
            "/v1/secrets/apps/planted",
            r#"{"fields":{"password":{"nested":"echo-me-not-1234"}"#,
            400,
            "bad_json",
        ),
        json_put(
            "no fields key",
            "/v1/secrets/apps/planted",
            r#"{"kind":"generic"}"#,
            400,
            "bad_json",
        ),
        json_put(
            "empty fields",
            "/v1/secrets/apps/planted",
            r#"{"fields":{}}"#,
            422,
            "invalid",
        ),
        json_put(
            "bad expiry",
            "/v1/secrets/apps/planted",
            r#"{"fields":{"password":"planted-value-5521"},"expires_at":"next tuesday"}"#,
            400,
            "bad_request",
        ),
        Case {
            what: "text body",
            method: "PUT",
            target: "/v1/secrets/apps/planted",
            headers: vec![
                ("content-type", "text/plain".to_owned()),
                ("content-length", GOOD_BODY.len().to_string()),
            ],
            body: GOOD_BODY.as_bytes().to_vec(),
            status: 415,
            code: Some("unsupported_media_type"),
        },
        // Methods, routes, queries.
        json_put(
            "cas as words",
            "/v1/secrets/apps/planted?cas=one",
            GOOD_BODY,
            400,
            "bad_request",
        ),
        bare(
            "POST a secret",
            "POST",
            "/v1/secrets/apps/web/db",
            405,
            "method_not_allowed",
        ),
        bare(
            "PATCH a secret",
            "PATCH",
            "/v1/secrets/apps/web/db",
            405,
            "method_not_allowed",
        ),
        bare(
            "DELETE the list",
            "DELETE",
            "/v1/secrets",
            405,
            "method_not_allowed",
        ),
        bare(
            "POST health",
            "POST",
            "/v1/health",
            405,
            "method_not_allowed",
        ),
        bare(
            "unknown endpoint",
            "GET",
            "/v2/secrets/apps/web/db",
            404,
            "no_route",
        ),
        bare(
            "unknown query key",
            "GET",
            "/v1/secrets/apps/web/db?verison=1",
            400,
            "bad_request",
        ),
        bare(
            "bad label",
            "GET",
            "/v1/secrets/apps/web/db?label=../x",
            400,
            "bad_request",
        ),
        bare(
            "bad percent-encoding in query",
            "GET",
            "/v1/secrets?prefix=%zz",
            400,
            "bad_request",
        ),
        // Headers.
        Case {
            what: "too many headers",
            method: "GET",
            target: "/v1/health",
            headers: many_headers,
            body: Vec::new(),
            status: 431,
            code: None,
        },
    ]
}

async fn send(agent: &Agent, case: &Case) -> anyhow::Result<RawReply> {
    let headers: Vec<(&str, &str)> = case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let request = raw::request(case.method, case.target, &headers, &case.body);
    let tls = agent.tls_for(&agent.admin_identity())?;
    raw::exchange(&agent.endpoint(Via::Socket)?, tls, &request).await
}

#[tokio::test]
async fn malformed_requests_get_clear_4xx_answers_and_write_nothing() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    assert_eq!(
        admin
            .write("apps/web/db", json!({"password": "original"}))
            .await?
            .status,
        200
    );
    let before = admin.list("").await?.json();

    let mut failures = Vec::new();
    for case in cases() {
        let reply = match send(&agent, &case).await {
            Ok(reply) => reply,
            Err(e) => {
                failures.push(format!("{}: no answer: {e:#}", case.what));
                continue;
            }
        };
        let code = reply.code();
        let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            });
        if reply.status != case.status || code.as_deref() != case.code {
            failures.push(format!(
                "{}: {} {}: expected {} {:?}, got {} {:?}: {}",
                case.what,
                case.method,
                case.target,
                case.status,
                case.code,
                reply.status,
                code,
                reply.text()
            ));
            continue;
        }
        if case.code.is_some() && message.as_deref().is_none_or(str::is_empty) {
            failures.push(format!("{}: no error.message: {}", case.what, reply.text()));
        }
        for value in ["987654321", "echo-me-not-1234", "planted-value-5521"] {
            if reply.text().contains(value) {
                failures.push(format!(
                    "{}: the answer echoes {value:?}: {}",
                    case.what,
                    reply.text()
                ));
            }
        }
        if case.status == 405 {
            let allow = reply.header("allow").unwrap_or_default();
            if allow.is_empty() {
                failures.push(format!("{}: 405 without an Allow header", case.what));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing was written.
    let admin = agent.admin()?;
    let after = admin.list("").await?.json();
    assert_eq!(before["secrets"], after["secrets"], "the store changed");
    let db = admin.read("apps/web/db").await?;
    assert_eq!(db.version(), Some(1), "{}", db.body);
    assert_eq!(db.field("password").as_deref(), Some("original"));
    for path in ["planted/x", "apps/planted", "planted", "apps/web/planted"] {
        assert_eq!(admin.read(path).await?.status, 404, "{path} exists");
    }
    assert_eq!(admin.health().await?.status, 200);
    let panics = agent.log_lines_with("panicked");
    assert!(panics.is_empty(), "the agent panicked: {panics:#?}");
    Ok(())
}

#[tokio::test]
async fn the_cli_and_client_report_413_for_a_value_over_the_limit() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let big = agent.scratch().join("big.txt");
    std::fs::write(&big, "z".repeat(100_000))?;
    let arg = format!("blob=@{}", big.display());
    for attempt in 0..5 {
        let out = agent
            .cli(["put", "apps/planted", arg.as_str()])
            .run()
            .await?;
        assert_eq!(out.code, 1, "attempt {attempt}: {out:?}");
        assert!(
            out.stderr.contains("body_too_large"),
            "attempt {attempt}: {}",
            out.stderr
        );

        let body = json!({"fields": {"blob": "z".repeat(100_000)}});
        let answer = agent.admin()?.put("apps/planted", body).await;
        let answer = answer.map_err(|e| anyhow::anyhow!("attempt {attempt}: {e:#}"))?;
        assert_eq!(answer.status, 413, "attempt {attempt}: {}", answer.body);
        assert_eq!(answer.code().as_deref(), Some("body_too_large"));
    }
    assert_eq!(agent.admin()?.read("apps/planted").await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .setting("max_body_bytes", "1024")
        .start()
        .await?;
    let admin = agent.admin()?;
    let body_of = |len: usize| {
        let prefix = r#"{"fields":{"v":""#;
        let suffix = r#""}}"#;
        format!(
            "{prefix}{}{suffix}",
            "a".repeat(len - prefix.len() - suffix.len())
        )
    };
    let uri = "/v1/secrets/apps/limit";
    let at = admin
        .request(http::Method::PUT, uri, Some(body_of(1024).into_bytes()))
        .await?;
    assert_eq!(at.status, 200, "{}", at.body);
    let over = admin
        .request(http::Method::PUT, uri, Some(body_of(1025).into_bytes()))
        .await?;
    assert_eq!(over.status, 413, "{}", over.body);
    assert_eq!(over.code().as_deref(), Some("body_too_large"));
    assert_eq!(admin.read("apps/limit").await?.version(), Some(1));
    Ok(())
}

#[tokio::test]
async fn clients_that_stall_are_cut_off_while_others_are_served() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .setting("handshake_timeout", "\"1s\"")
        .setting("header_timeout", "\"1s\"")
        .setting("body_timeout", "\"1s\"")
        .start()
        .await?;
    let endpoint = agent.endpoint(Via::Socket)?;
    let tls = agent.tls_for(&agent.admin_identity())?;
    let wait = std::time::Duration::from_secs(8);
    let body_head = raw::request(
        "PUT",
        "/v1/secrets/apps/slow",
        &[
            ("content-type", "application/json"),
            ("content-length", "100"),
        ],
        br#"{"fields":"#,
    );
    let others = async {
        // Meanwhile the agent answers everyone else at once.
        let admin = agent.admin()?;
        for _ in 0..5 {
            let health = admin.health().await?;
            anyhow::ensure!(health.status == 200, "health: {}", health.body);
        }
        anyhow::Ok(())
    };
    let (no_handshake, half_head, half_body, others) = tokio::join!(
        raw::until_closed(&endpoint, None, b"", wait),
        raw::until_closed(
            &endpoint,
            Some(tls.clone()),
            b"GET /v1/health HTTP/1.1\r\nhost: l",
            wait
        ),
        raw::until_closed(&endpoint, Some(tls.clone()), &body_head, wait),
        others,
    );
    others?;
    // `until_closed` fails past `wait` (scaled by the pace): each was cut off in time.
    no_handshake.context("a silent connection")?;
    let (_, sent) = half_head.context("half a request head")?;
    let sent = String::from_utf8_lossy(&sent).into_owned();
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "{sent}"
    );
    let (_, sent) = half_body.context("half a body")?;
    let sent = String::from_utf8_lossy(&sent).into_owned();
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "{sent}"
    );
    assert_eq!(
        agent.admin()?.read("apps/slow").await?.status,
        404,
        "nothing was written"
    );
    Ok(())
}
