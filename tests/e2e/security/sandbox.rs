//! The plugin sandbox: network grants cannot be widened by address tricks, and the
//! SQL capability runs one statement per call with safe quoting.
//!
//! Each test starts the real agent with the host's test guest, granted in the forms
//! that used to open the sandbox, and shows the request refused (and audited) while
//! the legitimate form of the same grant still works.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;
use sqlx::Connection as _;

use crate::harness::fixture::{Fixture, Reply};
use crate::harness::wasm::{guest, guest_manifest, sha256_of};
use crate::harness::Agent;

/// One `[[plugin]]` of the test guest with `grants` (TOML lines) and one
/// `[[lifecycle]]` rule per `(path, config)`.
fn guest_plugin(name: &str, grants: &str, rules: &[(&str, &str)]) -> anyhow::Result<String> {
    let wasm = guest()?;
    let mut toml = format!(
        r#"
[[plugin]]
name = "{name}"
wasm = {wasm:?}
manifest = {manifest:?}
sha256 = "{sha}"
deadline = "20s"
{grants}
"#,
        wasm = wasm.display().to_string(),
        manifest = guest_manifest().display().to_string(),
        sha = sha256_of(&wasm)?,
    );
    for (path, config) in rules {
        toml.push_str(&format!(
            "\n[[lifecycle]]\npaths = [\"{path}\"]\nplugin = \"{name}\"\nconfig = {config}\n"
        ));
    }
    Ok(toml)
}

/// A TOML inline table of string pairs.
fn table(pairs: &[(&str, &str)]) -> String {
    let mut t = toml::Table::new();
    for (k, v) in pairs {
        t.insert((*k).to_owned(), toml::Value::String((*v).to_owned()));
    }
    toml::Value::Table(t).to_string().trim().to_owned()
}

/// `POST /v1/validate/{path}` of a secret holding `{"key": key}`.
async fn validate(
    agent: &Agent,
    path: &str,
    key: &str,
) -> anyhow::Result<crate::harness::api::Answer> {
    let admin = agent.admin()?;
    let put = admin.write(path, json!({ "key": key })).await?;
    anyhow::ensure!(put.status == 200, "write {path}: {}", put.body);
    admin
        .request(http::Method::POST, &format!("/v1/validate/{path}"), None)
        .await
}

/// A loopback TCP listener that only counts the connections it accepts.
struct Counter {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Ok(Self {
            port,
            accepted,
            task,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn r7_an_ipv4_mapped_allowed_network_does_not_open_loopback() -> anyhow::Result<()> {
    // `127.1` is a name to the grant, which the resolver turns into 127.0.0.1 only,
    // so the address check decides. `::ffff:10.0.0.0/104` is 10.0.0.0/8: it used to
    // underflow and match every IPv4 address (a panic in a debug build).
    let closed = Counter::start().await?;
    let open = Counter::start().await?;
    let mapped = guest_plugin(
        "mapped",
        &format!(
            "http = [\"127.1:{}\"]\nallow_networks = [\"::ffff:10.0.0.0/104\"]",
            closed.port
        ),
        &[(
            "sandbox/mapped",
            &table(&[
                ("mode", "http"),
                ("url", &format!("https://127.1:{}/", closed.port)),
            ]),
        )],
    )?;
    let loopback = guest_plugin(
        "loopback",
        &format!(
            "http = [\"127.1:{}\"]\nallow_networks = [\"::ffff:127.0.0.0/104\"]",
            open.port
        ),
        &[(
            "sandbox/loopback",
            &table(&[
                ("mode", "http"),
                ("url", &format!("https://127.1:{}/", open.port)),
            ]),
        )],
    )?;
    let agent = Agent::builder()
        .append(&mapped)
        .append(&loopback)
        .start()
        .await?;

    let refused = validate(&agent, "sandbox/mapped", "credential-must-not-leave").await?;
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert_eq!(refused.json()["error"], "denied", "{}", refused.body);
    let target = format!("https://127.1:{}", closed.port);
    let record = agent
        .wait_for_audit("the refused address", |r| {
            r["op"] == "plugin-capability" && r["path"] == target.as_str()
        })
        .await?;
    assert_eq!(record["outcome"], "denied", "{record}");
    let detail = record["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("resolved address prohibited: 127.1 resolved to 127.0.0.1")
            && detail.contains("allow_networks"),
        "the refusal names the address and the setting: {record}"
    );
    assert_eq!(closed.accepted(), 0, "no connection may be made");

    // The same network written for loopback allows it: the host connects (and TLS
    // then fails against this listener, which is not what is tested here).
    let allowed = validate(&agent, "sandbox/loopback", "k").await?;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.json()["error"], "unavailable", "{}", allowed.body);
    assert!(
        open.accepted() >= 1,
        "no connection was made: {}",
        allowed.body
    );

    let panics = agent.log_lines_with("panicked");
    assert!(panics.is_empty(), "{panics:#?}");
    Ok(())
}

#[tokio::test]
async fn r7_a_grant_without_a_scheme_sends_no_credential_over_plaintext() -> anyhow::Result<()> {
    let service = Fixture::start(|_| Reply::text(200, "ok"))?;
    let authority = service.authority();
    let https_only = guest_plugin(
        "https-only",
        // Bare, as configs were written before grants had schemes: HTTPS only.
        &format!("http = [\"{authority}\"]"),
        &[(
            "sandbox/plaintext",
            &table(&[("mode", "service"), ("service", &service.url())]),
        )],
    )?;
    let plaintext = guest_plugin(
        "plaintext",
        &format!("http = [\"{}\"]", service.grant()),
        &[(
            "sandbox/granted",
            &table(&[
                ("mode", "http"),
                ("url", &format!("{}/granted", service.url())),
            ]),
        )],
    )?;
    let agent = Agent::builder()
        .append(&https_only)
        .append(&plaintext)
        .start()
        .await?;

    let refused = validate(&agent, "sandbox/plaintext", "credential-must-not-leave").await?;
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert_eq!(refused.json()["error"], "denied", "{}", refused.body);
    let target = format!("http://{authority}");
    let record = agent
        .wait_for_audit("the refused plaintext request", |r| {
            r["op"] == "plugin-capability" && r["path"] == target.as_str()
        })
        .await?;
    assert_eq!(record["detail"], "authority not granted", "{record}");
    assert!(
        service.requests().is_empty(),
        "the credential left in plaintext: {:?}",
        service.requests()
    );

    // Plaintext granted by name works.
    let granted = validate(&agent, "sandbox/granted", "k").await?;
    assert_eq!(granted.status, 200, "{}", granted.body);
    assert_eq!(granted.json()["valid"], true, "{}", granted.body);
    assert_eq!(service.requests().len(), 1);
    assert_eq!(service.requests()[0].path, "/granted");
    Ok(())
}

#[tokio::test]
async fn r7_invalid_networks_and_grants_stop_the_agent_at_start_naming_the_entry(
) -> anyhow::Result<()> {
    for (grants, expected) in [
        (
            "allow_networks = [\"::ffff:10.0.0.0/90\"]",
            "network \"::ffff:10.0.0.0/90\": an IPv4-mapped network needs a prefix of at least /96",
        ),
        (
            "allow_networks = [\"10.0.0.0/33\"]",
            "network \"10.0.0.0/33\": prefix /33 is longer than the 32-bit address",
        ),
        (
            "allow_networks = [\"10.1.2.3/8\"]",
            "address has bits set below the prefix (the network is 10.0.0.0/8)",
        ),
        (
            "http = [\"ftp://files.example.com\"]",
            "only http:// and https:// can be granted",
        ),
    ] {
        let started = Agent::builder()
            .append(&guest_plugin("bad", grants, &[])?)
            .start()
            .await;
        let Err(e) = started else {
            anyhow::bail!("an agent with {grants} must not start");
        };
        let text = format!("{e:#}");
        assert!(text.contains("plugin[0]"), "{grants}: {text}");
        assert!(text.contains(expected), "{grants}: {text}");
    }
    Ok(())
}

fn pg_url() -> String {
    std::env::var("LATCHKEY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("LATCHKEY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Texts whose quoting depends on the session's settings; the second one breaks out
/// of a `'…'` literal read with standard_conforming_strings off and creates role
/// `injected`.
fn tricky(injected: &str) -> [String; 3] {
    [
        "back\\slash'quote".to_owned(),
        format!("\\'; CREATE ROLE {injected}; --"),
        "trailing\\".to_owned(),
    ]
}

#[tokio::test]
async fn r15_raw_sql_runs_one_statement_per_call_with_literals_that_read_back() -> anyhow::Result<()>
{
    let pid = std::process::id();
    let role = format!("lk_r15_e2e_{pid}");
    let user = format!("lk_r15_e2e_{pid}");
    let injected = format!("lk_r15_injected_{pid}");
    let texts = tricky(&injected);
    // PostgreSQL with standard_conforming_strings off for every session.
    let pg = format!(
        "{}?options=-c%20standard_conforming_strings%3Doff",
        pg_url()
    );
    let mut rules = vec![
        (
            "sql/pg-two".to_owned(),
            table(&[
                ("mode", "sql-exec"),
                ("connection", "pg"),
                ("statement", &format!("SELECT 1; CREATE ROLE {role}")),
            ]),
        ),
        (
            "sql/pg-setting".to_owned(),
            table(&[
                ("mode", "sql-exec"),
                ("connection", "pg"),
                ("statement", "SHOW standard_conforming_strings"),
            ]),
        ),
        (
            "sql/maria-two".to_owned(),
            table(&[
                ("mode", "sql-exec"),
                ("connection", "maria"),
                ("statement", &format!("SELECT 1; CREATE USER '{user}'@'%'")),
            ]),
        ),
    ];
    for (i, text) in texts.iter().enumerate() {
        for connection in ["pg", "maria"] {
            rules.push((
                format!("sql/{connection}-literal-{i}"),
                table(&[
                    ("mode", "sql-literal"),
                    ("connection", connection),
                    ("text", text.as_str()),
                ]),
            ));
        }
    }
    let rule_refs: Vec<(&str, &str)> = rules
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let toml = format!(
        "[[sql]]\nname = \"pg\"\nurl_env = \"LK_R15_PG\"\nmax_connections = 1\n\n\
         [[sql]]\nname = \"maria\"\nurl_env = \"LK_R15_MARIA\"\nmax_connections = 1\n{}",
        guest_plugin("sql", "sql = [\"pg\", \"maria\"]", &rule_refs)?
    );
    let agent = Agent::builder()
        .env("LK_R15_PG", &pg)
        .env("LK_R15_MARIA", &mysql_url())
        .append(&toml)
        .start()
        .await?;

    let mut pg_conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .context("connect to PostgreSQL")?;
    let mut my_conn = sqlx::MySqlConnection::connect(&mysql_url())
        .await
        .context("connect to MariaDB")?;
    let mut answers = Vec::new();
    for path in ["sql/pg-setting", "sql/pg-two", "sql/maria-two"] {
        answers.push((path, validate(&agent, path, "k").await?));
    }
    for (i, text) in texts.iter().enumerate() {
        for connection in ["pg", "maria"] {
            let path = format!("sql/{connection}-literal-{i}");
            let read = validate(&agent, &path, "k").await?;
            answers.push((text.as_str(), read));
        }
    }
    // Nothing ran that no call asked for: neither the second statements nor a
    // literal breaking out. Checked first, and removed if there, so a failure leaves
    // the shared servers as they were.
    let mut created = Vec::new();
    for name in [&injected, &role] {
        let pg_found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1")
                .bind(name)
                .fetch_one(&mut pg_conn)
                .await?;
        let my_found: i64 = sqlx::query_scalar("SELECT count(*) FROM mysql.user WHERE User = ?")
            .bind(name)
            .fetch_one(&mut my_conn)
            .await?;
        if pg_found + my_found > 0 {
            created.push(name.clone());
            let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {name}"))
                .execute(&mut pg_conn)
                .await;
            let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {name}"))
                .execute(&mut my_conn)
                .await;
            let _ = sqlx::raw_sql(&format!("DROP USER IF EXISTS '{name}'@'%'"))
                .execute(&mut my_conn)
                .await;
        }
    }
    assert!(
        created.is_empty(),
        "{created:?} created: a statement ran that no call asked for"
    );

    let (_, setting) = &answers[0];
    assert_eq!(setting.status, 200, "{}", setting.body);
    assert_eq!(setting.json()["detail"], "off", "{}", setting.body);
    for (path, refused) in &answers[1..3] {
        // The server refused the statement: the provider's `rejected`.
        assert_eq!(refused.status, 200, "{path}: {}", refused.body);
        assert_eq!(refused.json()["valid"], false, "{path}: {}", refused.body);
        assert!(
            refused.json()["error"].is_null(),
            "{path}: {}",
            refused.body
        );
    }
    for (text, read) in &answers[3..] {
        assert_eq!(read.status, 200, "{text:?}: {}", read.body);
        assert_eq!(
            read.json()["valid"],
            true,
            "{text:?} did not read back: {}",
            read.body
        );
    }
    Ok(())
}
