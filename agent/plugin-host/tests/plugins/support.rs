//! Test support: builds the guest components once per test run, starts loopback
//! HTTP fixtures, and makes hosts and load specs that read like the scenario.
//!
//! Guests are built into `CARGO_TARGET_TMPDIR` (under the shared target dir) by
//! `latchkey-guest-build`, as the end-to-end tests build them: the Rust test guest, and
//! the Python and JavaScript examples with the SDKs in `plugin-sdk/python` and
//! `plugin-sdk/js` (keyed by a hash of their sources, so a second test run builds
//! nothing). Compiled artifacts are cached the same way the agent caches them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use latchkey_plugin_host::{
    sha256_file, Grants, HostConfig, Limits, LoadSpec, Manifest, PluginHost, RecordingAudit,
    SqlConnectionConfig,
};

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Serializes guest builds (they share one target dir).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The Rust test guest (`guests/basic`), built once per test run.
pub(crate) fn rust_guest() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_rust_guest().expect("build the Rust test guest"))
}

fn build_rust_guest() -> Result<PathBuf> {
    let _guard = BUILD_LOCK.lock();
    // The end-to-end harness builds the same guest with the same helper into the same
    // folder: one build serves both suites.
    latchkey_guest_build::Guests::new(workspace_root(), scratch())
        .build("latchkey-test-guest")
        .map_err(anyhow::Error::msg)
}

/// The Python example provider (built with its SDK by componentize-py).
pub(crate) fn python_guest() -> Result<PathBuf> {
    example(latchkey_guest_build::Lang::Python)
}

/// The JavaScript example provider (built with its SDK by componentize-js).
pub(crate) fn js_guest() -> Result<PathBuf> {
    example(latchkey_guest_build::Lang::Js)
}

fn example(lang: latchkey_guest_build::Lang) -> Result<PathBuf> {
    let _guard = BUILD_LOCK.lock();
    // The end-to-end harness builds the same examples into the same folder.
    latchkey_guest_build::Guests::new(workspace_root(), scratch())
        .build_example(lang)
        .map_err(anyhow::Error::msg)
}

/// A host for one test, recording denials.
pub(crate) struct TestHost {
    pub(crate) host: PluginHost,
    pub(crate) audit: RecordingAudit,
}

pub(crate) fn host() -> TestHost {
    host_with(|_| {})
}

pub(crate) fn host_with(f: impl FnOnce(&mut HostConfig)) -> TestHost {
    let audit = RecordingAudit::new();
    let mut config = HostConfig {
        max_instances: 16,
        audit: Arc::new(audit.clone()),
        cache_dir: Some(scratch().join("cwasm-cache")),
        sql: sql_connections(),
        ..HostConfig::default()
    };
    f(&mut config);
    TestHost {
        host: PluginHost::new(config).expect("plugin host"),
        audit,
    }
}

pub(crate) fn sql_connections() -> Vec<SqlConnectionConfig> {
    let pg = std::env::var("LATCHKEY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let my = std::env::var("LATCHKEY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    vec![
        SqlConnectionConfig {
            name: "pg".into(),
            dialect: latchkey_plugin_host::Dialect::Postgres,
            url: pg.into(),
            max_connections: 2,
        },
        SqlConnectionConfig {
            name: "maria".into(),
            dialect: latchkey_plugin_host::Dialect::Mysql,
            url: my.into(),
            max_connections: 2,
        },
    ]
}

/// A load spec for `wasm` with its manifest file, pinned to the file's digest.
pub(crate) fn spec(wasm: &Path, manifest: &Path) -> LoadSpec {
    LoadSpec {
        wasm: wasm.to_owned(),
        manifest: Manifest::from_file(manifest).expect("manifest"),
        sha256: sha256_file(wasm).expect("digest"),
        grants: Grants::default(),
        limits: Limits::default(),
    }
}

pub(crate) fn basic_spec() -> LoadSpec {
    spec(
        rust_guest(),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/basic/plugin.toml"),
    )
}

/// Grants plaintext HTTP to `authority` (`host:port`, a loopback fixture) and adds it
/// to the manifest's needs (test ports are dynamic).
pub(crate) fn grant_http(spec: &mut LoadSpec, authority: &str) {
    spec.grants.http.push(format!("http://{authority}"));
    spec.manifest.needs.http.push(format!("http://{authority}"));
}

pub(crate) fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A loopback HTTP/1.1 server answering every request with `200` and a body that
/// echoes the request line (or a body of `body_len` bytes). Counts requests.
pub(crate) struct Fixture {
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn http_fixture(body_len: Option<usize>) -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let line = head.lines().next().unwrap_or_default().to_owned();
            if let Ok(mut h) = seen.lock() {
                h.push(line.clone());
            }
            let body = match body_len {
                Some(len) => vec![b'x'; len],
                None => format!("hello from loopback: {line}").into_bytes(),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    Fixture { addr, hits }
}
