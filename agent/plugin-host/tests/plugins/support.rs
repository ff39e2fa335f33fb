//! Test support: builds the guest components once per test run, starts loopback
//! HTTP fixtures, and makes hosts and load specs that read like the scenario.
//!
//! Guests are built into `CARGO_TARGET_TMPDIR` (under the shared target dir): the Rust
//! test guest with `latchkey-guest-build` (as the end-to-end tests do), the Python and
//! JavaScript examples with the tools `.ci/install-tools.sh` installs (found through
//! `LATCHKEY_TOOLS_DIR`, else `<workspace>/target/tools`). Outputs are keyed by a hash
//! of their sources, so a second test run builds nothing; compiled artifacts are
//! cached the same way the agent caches them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use latchkey_plugin_host::{
    sha256_file, sha256_hex, Grants, HostConfig, Limits, LoadSpec, Manifest, PluginHost,
    RecordingAudit, SqlConnectionConfig,
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

pub(crate) fn tools_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("LATCHKEY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools"));
    if !dir.join("env.sh").is_file() {
        bail!(
            "plugin toolchain not found in {} — run .ci/install-tools.sh (or set LATCHKEY_TOOLS_DIR)",
            dir.display()
        );
    }
    Ok(dir)
}

/// sha256 over the files of a source tree (names and contents), for output keys.
fn tree_hash(paths: &[PathBuf]) -> Result<String> {
    let mut all = Vec::new();
    for p in paths {
        all.extend_from_slice(p.to_string_lossy().as_bytes());
        all.extend(std::fs::read(p).with_context(|| format!("read {}", p.display()))?);
    }
    Ok(sha256_hex(&all)[..16].to_owned())
}

fn wit_files() -> Result<Vec<PathBuf>> {
    let root = workspace_root().join("wit");
    let mut files = vec![
        root.join("types.wit"),
        root.join("provider.wit"),
        root.join("host.wit"),
        root.join("world.wit"),
    ];
    files.sort();
    Ok(files)
}

/// The Python example provider, built with componentize-py.
pub(crate) fn python_guest() -> Result<PathBuf> {
    static WASM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    WASM.get_or_init(|| build_example("python").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The JavaScript example provider, built with componentize-js.
pub(crate) fn js_guest() -> Result<PathBuf> {
    static WASM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    WASM.get_or_init(|| build_example("js").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_example(lang: &str) -> Result<PathBuf> {
    let tools = tools_dir()?;
    let src = workspace_root().join("examples/plugins").join(lang);
    let mut inputs = wit_files()?;
    let (main, builder) = match lang {
        "python" => (src.join("app.py"), None),
        _ => (src.join("app.js"), Some(src.join("build.mjs"))),
    };
    inputs.push(main);
    inputs.extend(builder);
    let out_dir = scratch().join(format!("{lang}-guest"));
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("provider-{}.wasm", tree_hash(&inputs)?));
    if out.is_file() {
        return Ok(out);
    }
    let _guard = BUILD_LOCK.lock();
    let path = format!(
        "{}:{}:{}",
        tools.join("venv/bin").display(),
        tools.join("node/node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Unique per process: two test processes may build the same example at once.
    let tmp = out.with_extension(format!("{}.partial", std::process::id()));
    let status = match lang {
        "python" => Command::new(tools.join("venv/bin/componentize-py"))
            .current_dir(&src)
            .env("PATH", &path)
            .args([
                "-d",
                "../../../wit",
                "-w",
                "provider-plugin",
                "componentize",
                "app",
                "-o",
            ])
            .arg(&tmp)
            .status()
            .context("run componentize-py")?,
        _ => Command::new("node")
            .current_dir(&src)
            .env("PATH", &path)
            .env("LATCHKEY_TOOLS_DIR", &tools)
            .arg("build.mjs")
            .arg(&tmp)
            .status()
            .context("run node build.mjs")?,
    };
    if !status.success() {
        bail!("building the {lang} example failed");
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
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
