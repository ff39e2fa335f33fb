//! First-party providers: `.wasm` size and the host-side cost of one `validate` call,
//! the network left out as far as a loopback can.
//!
//! `cargo bench -p latchkey-plugin-host --bench providers` (`LATCHKEY_BENCH_QUICK=1`
//! for 10x fewer calls).
//!
//! Builds every provider in `plugins/` (each folder with a `plugin.toml`) for
//! `wasm32-wasip2` with the tests' helper, `latchkey-guest-build` (one by one, release, opt-level `s`,
//! stripped, into `<target>/tmp/e2e-wasm`, so a tested tree builds nothing), loads
//! each in a plugin host configured as the agent configures it, and times
//! `Plugin::validate` (the agent's path: a hop to the blocking pool, a fresh store and
//! instance, the call, the wipe), one call after another:
//!
//! - HTTP providers get `base-url` (oauth2: `userinfo-endpoint`) pointing at a
//!   loopback responder in this process that answers every request at once with
//!   `401` and a small JSON error, and an HTTP grant for it (added to the manifest's
//!   `needs.http`, as an operator's copy of the manifest would). The provider's answer
//!   is then "invalid key" (or `rejected`): what is measured is the call, not the
//!   service.
//! - `postgres` and `mysql` use the SQL capability against the machine's PostgreSQL
//!   and MariaDB (`LATCHKEY_TEST_PG_URL`, `LATCHKEY_TEST_MYSQL_URL`; defaults
//!   `postgres://postgres@127.0.0.1:5432/test` and `mysql://root@127.0.0.1:3306/test`):
//!   their `validate` is a real login, reported separately.
//! - The floor: the Rust test guest answering from its config (no I/O) and the same
//!   guest making one HTTP GET to the same responder.
//!
//! Prints a markdown table.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/plugins/support.rs"]
#[allow(dead_code, unreachable_pub, clippy::unwrap_used)]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use latchkey_plugin_host::{
    Credential, Dialect, Plugin, ProviderError, SecretString, SqlConnectionConfig, Validation,
};

/// The same throwaway P-256 key as the coinbase provider's unit tests.
const COINBASE_TEST_KEY: &str = concat!(
    "-----BEGIN EC PRIVATE KEY-----\n",
    "MHcCAQEEICV62SKiq6v1mx2UKPAv2aNkt4WW667wtcTbP3N7zC6XoAoGCCqGSM49\n",
    "AwEHoUQDQgAEA3XuLGiqD3YlGDnkOMQRtWOPe7dR/A/jjhXmvo36wkuunnpHH0jK\n",
    "ZTejOD5l4KaDT0W37oBGfnqohAR5SYWYJA==\n",
    "-----END EC PRIVATE KEY-----\n",
);

/// What the responder answers to everything.
const REFUSAL: &str = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"},"code":-2015,"msg":"Invalid API-key.","retCode":10003,"retMsg":"API key is invalid."}"#;

/// A loopback HTTP/1.1 server answering every request with 401 at once, one thread
/// per connection (the host opens a connection per request).
fn responder() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = answer(stream);
            });
        }
    });
    Ok(addr)
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Read the head, then any Content-Length body, so the client never sees a reset.
    let head_end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        have += n;
    }
    write!(
        stream,
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{REFUSAL}",
        REFUSAL.len()
    )?;
    stream.flush()
}

/// The provider names: folders of `plugins/` with a `plugin.toml`.
fn provider_names(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("plugins");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("plugin.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds each provider on its own (as the README and the tests do: building them in
/// one cargo run would unify their dependencies' features and give other `.wasm`
/// files); returns the folder of the `.wasm` files.
fn build_providers(root: &Path, names: &[String]) -> anyhow::Result<PathBuf> {
    let guests = latchkey_guest_build::Guests::new(root, env!("CARGO_TARGET_TMPDIR"));
    for name in names {
        guests
            .build(&format!("latchkey-plugin-{name}"))
            .map_err(anyhow::Error::msg)?;
    }
    Ok(guests.target_dir().join("wasm32-wasip2/release"))
}

/// One thing to time: a component, its manifest, what it is granted and called with.
struct Case {
    name: String,
    note: &'static str,
    wasm: PathBuf,
    manifest: PathBuf,
    http: Option<String>,
    sql: Vec<String>,
    config: Vec<(String, String)>,
    cred: Credential,
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cred(kind: &str, fields: &[(&str, &str)]) -> Credential {
    Credential::new(
        kind,
        fields
            .iter()
            .map(|(k, v)| (*k, SecretString::from(*v)))
            .collect::<Vec<_>>(),
    )
}

/// How each provider is called; an unknown one gets an API key and `base-url`.
fn provider_case(name: &str, dir: &Path, root: &Path, authority: &str) -> Case {
    let base = format!("http://{authority}");
    let key = cred("api-key", &[("api-key", "sk-bench-0000000000000000")]);
    let (note, http, sql, config, cred) = match name {
        "postgres" => (
            "SQL: a real login (PostgreSQL, trust auth)",
            None,
            vec!["postgres".to_owned()],
            pairs(&[("connection", "postgres")]),
            cred(
                "postgres-password",
                &[("username", "postgres"), ("password", "not-checked")],
            ),
        ),
        "mysql" => (
            "SQL: a real login (MariaDB, wrong password)",
            None,
            vec!["mysql".to_owned()],
            pairs(&[("connection", "mysql")]),
            cred(
                "mysql-password",
                &[("username", "root"), ("password", "wrong-password-bench")],
            ),
        ),
        "oauth2" => (
            "HTTP: userinfo",
            Some(authority.to_owned()),
            vec![],
            pairs(&[
                ("token-endpoint", &format!("{base}/token")),
                ("userinfo-endpoint", &format!("{base}/userinfo")),
            ]),
            cred(
                "oauth2",
                &[("access-token", "at-bench-0000"), ("token-type", "Bearer")],
            ),
        ),
        "binance" | "bybit" => (
            "HTTP: HMAC-SHA256-signed request",
            Some(authority.to_owned()),
            vec![],
            pairs(&[("base-url", &base)]),
            cred(
                "api-key",
                &[
                    ("api-key", "bench-key-0000"),
                    ("api-secret", "bench-secret-0000000000000000"),
                ],
            ),
        ),
        "coinbase" => (
            "HTTP: ES256 JWT-signed request",
            Some(authority.to_owned()),
            vec![],
            pairs(&[("base-url", &base)]),
            cred(
                "api-key",
                &[
                    (
                        "key-name",
                        "organizations/00000000-0000-0000-0000-000000000000/apiKeys/bench",
                    ),
                    ("private-key", COINBASE_TEST_KEY),
                ],
            ),
        ),
        _ => (
            "HTTP: one GET",
            Some(authority.to_owned()),
            vec![],
            pairs(&[("base-url", &base)]),
            key,
        ),
    };
    Case {
        name: name.to_owned(),
        note,
        wasm: dir.join(format!("latchkey_plugin_{}.wasm", name.replace('-', "_"))),
        manifest: root.join("plugins").join(name).join("plugin.toml"),
        http,
        sql,
        config,
        cred,
    }
}

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let median = v[v.len() / 2];
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    (median, p99)
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn outcome(answer: &Result<Validation, ProviderError>) -> anyhow::Result<String> {
    Ok(match answer {
        Ok(v) if v.valid => "valid".into(),
        Ok(_) => "invalid".into(),
        Err(ProviderError::Rejected(_)) => "rejected".into(),
        Err(ProviderError::Unavailable(d)) => format!("unavailable ({d})"),
        Err(e @ (ProviderError::Denied(_) | ProviderError::InvalidConfig(_))) => {
            bail!("the call is set up wrong: {e:?}")
        }
        Err(ProviderError::Unsupported(d)) => bail!("validate unsupported: {d}"),
    })
}

struct Row {
    name: String,
    note: &'static str,
    size: u64,
    compile: Duration,
    median: Duration,
    p99: Duration,
    outcome: String,
}

async fn measure(case: &Case, calls: usize, sql: &[SqlConnectionConfig]) -> anyhow::Result<Row> {
    let size = std::fs::metadata(&case.wasm)
        .with_context(|| format!("{} is missing", case.wasm.display()))?
        .len();
    let cache = tempfile::tempdir()?;
    let t = support::host_with(|c| {
        c.cache_dir = Some(cache.path().to_owned());
        c.sql = sql.to_vec();
    });
    let mut spec = support::spec(&case.wasm, &case.manifest);
    if let Some(authority) = &case.http {
        support::grant_http(&mut spec, authority);
    }
    spec.grants.sql = case.sql.clone();
    let started = Instant::now();
    let plugin: Plugin = t
        .host
        .load(spec)
        .await
        .map_err(|e| anyhow!("load {}: {e}", case.name))?;
    let compile = started.elapsed();
    let call = || async {
        plugin
            .validate(case.config.clone(), case.cred.clone())
            .await
            .map_err(|e| anyhow!("{}: validate: {e}", case.name))
    };
    let first = call().await?;
    let label = outcome(&first).with_context(|| case.name.clone())?;
    for _ in 0..calls / 10 {
        outcome(&call().await?)?;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let answer = call().await?;
        times.push(started.elapsed());
        if outcome(&answer)? != label {
            bail!("{}: the answer changed between calls", case.name);
        }
    }
    let (median, p99) = quantiles(times);
    Ok(Row {
        name: case.name.clone(),
        note: case.note,
        size,
        compile,
        median,
        p99,
        outcome: label,
    })
}

fn sql_connections() -> Vec<SqlConnectionConfig> {
    let pg = std::env::var("LATCHKEY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let my = std::env::var("LATCHKEY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    vec![
        SqlConnectionConfig {
            name: "postgres".into(),
            dialect: Dialect::Postgres,
            url: pg.into(),
            max_connections: 2,
        },
        SqlConnectionConfig {
            name: "mysql".into(),
            dialect: Dialect::Mysql,
            url: my.into(),
            max_connections: 2,
        },
    ]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("providers bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let quick = std::env::var_os("LATCHKEY_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(10) } else { n };
    let root = support::workspace_root();
    let names = provider_names(&root)?;
    let dir = build_providers(&root, &names)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = responder()?;
        let authority = addr.to_string();
        let guest = support::rust_guest().to_owned();
        let guest_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/basic/plugin.toml");
        let floor = |name: &str, note, http: Option<String>, config| Case {
            name: name.to_owned(),
            note,
            wasm: guest.clone(),
            manifest: guest_manifest.clone(),
            http,
            sql: vec![],
            config,
            cred: cred("api-key", &[("key", "good")]),
        };
        let mut cases = vec![
            floor(
                "(floor) Rust test guest",
                "no I/O: answers from its config",
                None,
                pairs(&[("mode", "key")]),
            ),
            floor(
                "(floor) Rust test guest, one GET",
                "HTTP: one GET to the same responder",
                Some(authority.clone()),
                pairs(&[("mode", "http"), ("url", &format!("http://{authority}/"))]),
            ),
        ];
        cases.extend(
            names
                .iter()
                .map(|n| provider_case(n, &dir, &root, &authority)),
        );
        let sql = sql_connections();
        let mut rows = Vec::new();
        for case in &cases {
            let calls = if case.sql.is_empty() {
                scale(2000)
            } else {
                scale(500)
            };
            eprintln!("{}: {calls} calls", case.name);
            rows.push(measure(case, calls, &sql).await?);
        }
        print_table(&rows);
        Ok(())
    })
}

fn print_table(rows: &[Row]) {
    let floor_http = rows
        .iter()
        .find(|r| r.name.ends_with("one GET"))
        .map(|r| r.median);
    println!("| provider | what `validate` does here | answer | .wasm size | load, compiling | validate median | validate p99 | median over the floor with one GET |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let over = match floor_http {
            Some(f) if r.note.starts_with("HTTP") && !r.name.ends_with("one GET") => {
                format!(
                    "{:+.1} µs",
                    (r.median.as_secs_f64() - f.as_secs_f64()) * 1e6
                )
            }
            _ => "—".into(),
        };
        println!(
            "| {} | {} | {} | {:.0} KiB | {} | {} | {} | {} |",
            r.name,
            r.note,
            r.outcome,
            r.size as f64 / 1024.0,
            fmt(r.compile),
            fmt(r.median),
            fmt(r.p99),
            over,
        );
    }
}
