//! WebAssembly components for the tests: the plugin host's test guest, every
//! first-party provider in `plugins/` and the Python and JavaScript SDK examples,
//! built once per test run, and a runner for `latchkey plugin call`.
//!
//! Each component is built on first use by `latchkey-guest-build` (the one guest
//! builder of the tests and benches) into `CARGO_TARGET_TMPDIR/e2e-wasm` (a second
//! run builds nothing). Each plugin is then copied with its manifest into a
//! folder of its own (`plugins/<name>/<name>.wasm` beside `<name>.toml`), the way an
//! operator would install it, so the agent and the CLI find the manifest by
//! themselves.
//!
//! ```ignore
//! let pg = wasm::plugin("postgres")?;
//! let answer = wasm::call(&pg, "validate", json!({"connection": "db"}), cred, &["--sql", "db=env:DB_URL"])?;
//! assert_eq!(answer.json["valid"], true);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::Context as _;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guests() -> latchkey_guest_build::Guests {
    latchkey_guest_build::Guests::new(workspace_root(), env!("CARGO_TARGET_TMPDIR"))
}

fn out_dir() -> PathBuf {
    guests().target_dir().to_owned()
}

/// The first-party provider names: the folders of `plugins/` with a `Cargo.toml`.
pub(crate) fn provider_names() -> anyhow::Result<Vec<String>> {
    let dir = workspace_root().join("plugins");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() && entry.path().join("plugin.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds one package for wasm32-wasip2 once per run; returns its `.wasm`.
/// Builds are remembered per process, failures too.
fn build(package: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let result = built
        .entry(package.to_owned())
        .or_insert_with(|| guests().build(package))
        .clone();
    result.map_err(anyhow::Error::msg)
}

/// The plugin host's test guest (`agent/plugin-host/guests/basic`).
pub(crate) fn guest() -> anyhow::Result<PathBuf> {
    build("latchkey-test-guest")
}

/// The test guest's manifest.
pub(crate) fn guest_manifest() -> PathBuf {
    workspace_root().join("agent/plugin-host/guests/basic/plugin.toml")
}

/// The `[[plugin]]` section that loads the test guest as `basic` (pinned to
/// `sha256`, 32 MiB, 1 s per call), for configs that add their own `[[lifecycle]]`.
pub(crate) fn guest_section(wasm: &Path, sha256: &str) -> String {
    format!(
        r#"
[[plugin]]
name = "basic"
wasm = {wasm:?}
manifest = {manifest:?}
sha256 = "{sha256}"
memory_mb = 32
deadline = "1s"
"#,
        wasm = wasm.display().to_string(),
        manifest = guest_manifest().display().to_string(),
    )
}

/// A first-party provider, installed as `<dir>/<name>.wasm` beside `<name>.toml`.
pub(crate) fn plugin(name: &str) -> anyhow::Result<PathBuf> {
    let built = build(&format!("latchkey-plugin-{name}"))?;
    let manifest = workspace_root()
        .join("plugins")
        .join(name)
        .join("plugin.toml");
    install(&built, &manifest, name)
}

/// Copies `built` and its `manifest` into `plugins/<name>/` as `<name>.wasm` and
/// `<name>.toml`, the way an operator installs a plugin.
fn install(built: &Path, manifest: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = out_dir().join("plugins").join(name);
    std::fs::create_dir_all(&dir)?;
    let wasm = dir.join(format!("{name}.wasm"));
    // Copy through a temp name so concurrent tests never see a half-written file.
    // Unique per call: tests in one process install the same plugin concurrently.
    static INSTALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = INSTALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    std::fs::copy(built, &tmp)?;
    std::fs::rename(&tmp, &wasm)?;
    let tmp = dir.join(format!(".{name}.toml.{}.{n}.tmp", std::process::id()));
    std::fs::copy(manifest, &tmp).with_context(|| format!("copy {}", manifest.display()))?;
    std::fs::rename(&tmp, dir.join(format!("{name}.toml")))?;
    Ok(wasm)
}

/// An SDK example provider (`examples/plugins/python` or `js`, built with its SDK by
/// `latchkey-guest-build`, once per run), installed as `<dir>/example-<lang>.wasm`
/// beside `example-<lang>.toml`.
pub(crate) fn example(lang: latchkey_guest_build::Lang) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<&'static str, Result<PathBuf, String>>> =
        Mutex::new(BTreeMap::new());
    let built = BUILT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(lang.dir())
        .or_insert_with(|| guests().build_example(lang))
        .clone()
        .map_err(anyhow::Error::msg)?;
    let manifest = workspace_root()
        .join("examples/plugins")
        .join(lang.dir())
        .join("plugin.toml");
    install(&built, &manifest, &format!("example-{}", lang.dir()))
}

/// Lowercase hex sha256 of a file (what `[[plugin]] sha256` pins).
pub(crate) fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// The outcome of one `latchkey plugin call`.
#[derive(Debug)]
pub(crate) struct Called {
    /// Whether the call gave an `ok` answer: the CLI exited 0, or 6 for a validation
    /// that says `valid: false` (a provider error exits 7–11, a fault 12).
    pub(crate) success: bool,
    /// The exit code (`None` when killed by a signal).
    pub(crate) code: Option<i32>,
    /// The JSON it printed (`Value::Null` when it printed none).
    pub(crate) json: Value,
    /// What it wrote to stderr.
    pub(crate) stderr: String,
}

/// Runs `latchkey plugin call FILE --op OP --config CONFIG --cred CRED EXTRA...`.
///
/// `extra` carries grants such as `--grant-http http://127.0.0.1:PORT`,
/// `--allow-network 127.0.0.0/8` or `--sql NAME=env:VAR`; `envs` sets environment
/// variables for the call (e.g. the DSN that `env:VAR` names).
pub(crate) fn call_with_env(
    wasm: &Path,
    op: &str,
    config: &Value,
    cred: &Value,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Called> {
    let mut cmd = Command::new(super::binary()?);
    cmd.args(["plugin", "call"])
        .arg(wasm)
        .args(["--op", op, "--config", &config.to_string(), "--cred", "-"])
        .args(extra)
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("start latchkey plugin call")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(cred.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .with_context(|| format!("plugin call printed no JSON: {stdout}"))?
    };
    let code = out.status.code();
    Ok(Called {
        success: code == Some(0)
            || (code == Some(6) && json.pointer("/ok/valid") == Some(&Value::Bool(false))),
        code,
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// [`call_with_env`] without extra environment variables.
pub(crate) fn call(
    wasm: &Path,
    op: &str,
    config: &Value,
    cred: &Value,
    extra: &[&str],
) -> anyhow::Result<Called> {
    call_with_env(wasm, op, config, cred, extra, &[])
}
