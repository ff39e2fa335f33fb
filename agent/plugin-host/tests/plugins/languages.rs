//! Providers written in Python and JavaScript with the SDKs in `plugin-sdk/python` and
//! `plugin-sdk/js` (the examples in `examples/plugins`), loaded in the real host and
//! run against a loopback token service ([`TokenService`]): every documented answer
//! and error variant, bodies larger than one wasi:io write going out whole with
//! `content-length`, responses larger than one read coming back whole, and the SDK's
//! request timeout firing before the host's call deadline.
//!
//! One test per language runs every scenario on one build, so CI builds each example
//! once per run (and not at all when the sources are unchanged).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use latchkey_plugin_host::{Credential, Operation, Plugin, ProviderError, SecretString};

use crate::fixture::Fixture;
use crate::support::{config, grant_http, host, js_guest, python_guest, spec, TestHost};
use crate::token_service::{self, SLOW};

fn token(access: &str) -> Credential {
    Credential::new(
        "access-token",
        [
            ("access-token", SecretString::from(access)),
            ("refresh-token", SecretString::from("refresh-1")),
        ],
    )
}

fn refreshing(refresh: &str) -> Credential {
    Credential::new(
        "access-token",
        [
            ("access-token", SecretString::from("expired")),
            ("refresh-token", SecretString::from(refresh)),
        ],
    )
}

async fn load(t: &TestHost, wasm: &Path, lang: &str, svc: &Fixture) -> Plugin {
    let mut spec = spec(wasm, &root_manifest(lang));
    grant_http(&mut spec, &svc.authority());
    t.host.load(spec).await.unwrap()
}

async fn speaks_the_token_service(wasm: &Path, lang: &str) {
    // A failing scenario shows the plugin's own output (its captured stderr, e.g. a
    // Python traceback) in the test log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("latchkey_plugin_host=info")
        .with_test_writer()
        .try_init();
    let svc = token_service::start().unwrap();
    let t = host();
    let plugin = load(&t, wasm, lang, &svc).await;
    let info = plugin.info().unwrap();
    assert_eq!(info.name, format!("example-{lang}"));
    assert_eq!(
        info.operations,
        vec![Operation::Validate, Operation::Refresh]
    );
    let cfg = config(&[("base-url", &svc.url()), ("timeout", "1")]);
    let validate = |access: &str| plugin.validate(cfg.clone(), token(access));

    // 200: valid, with the scopes as permissions and the reported expiry.
    let ok = validate("good").await.unwrap().unwrap();
    assert!(ok.valid, "{ok:?}");
    assert!(ok.detail.contains("acme"), "{ok:?}");
    let granted: Vec<_> = ok
        .permissions
        .iter()
        .map(|p| (p.name.as_str(), p.granted))
        .collect();
    assert_eq!(granted, vec![("read", true), ("write", true)]);
    assert_eq!(ok.expires_at, Some(1_893_456_000), "2030-01-01T00:00:00Z");
    let seen = svc.requests();
    assert_eq!(
        seen.last().map(|s| (s.method.as_str(), s.path.as_str())),
        Some(("GET", "/v1/token/introspect"))
    );

    // A response many reads long arrives whole: the account is its last field.
    let big = validate("large-body").await.unwrap().unwrap();
    assert!(big.valid && big.detail.contains("acme-big"), "{big:?}");

    // 401/403: an answer (valid: false), with the service's words minus the token.
    let refused = validate("refused-secret-token").await.unwrap().unwrap();
    assert!(!refused.valid, "{refused:?}");
    assert!(
        refused.detail.contains("401") && refused.detail.contains("invalid_token"),
        "{refused:?}"
    );
    assert!(
        !refused.detail.contains("refused-secret-token"),
        "{refused:?}"
    );
    let forbidden = validate("forbidden").await.unwrap().unwrap();
    assert!(
        !forbidden.valid && forbidden.detail.contains("403"),
        "{forbidden:?}"
    );

    // 429, 5xx and a body that is not JSON: transient.
    for access in ["limited", "broken", "not-json"] {
        let answer = validate(access).await.unwrap();
        assert!(
            matches!(answer, Err(ProviderError::Unavailable(_))),
            "{access}: {answer:?}"
        );
    }

    // The request timeout (config `timeout = 1`) fires long before the service answers
    // and before the host's own call deadline.
    let start = Instant::now();
    let slow = validate("slow").await.unwrap();
    let took = start.elapsed();
    assert!(
        matches!(&slow, Err(ProviderError::Unavailable(m)) if m.contains("timed out")),
        "{slow:?}"
    );
    assert!(
        took < SLOW - Duration::from_secs(1),
        "timed out after {took:?}"
    );

    // A refresh POSTs a body larger than one 4096-byte write: it arrives intact, with
    // content-length and not chunked; the answer becomes the new credential.
    let long_refresh = "r".repeat(10 * 1024);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = plugin
        .refresh(cfg.clone(), refreshing(&long_refresh))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fresh.field("access-token").map(SecretString::expose),
        Some(format!("fresh-{}", long_refresh.len()).as_str())
    );
    assert_eq!(
        fresh.field("refresh-token").map(SecretString::expose),
        Some("refresh-2")
    );
    let expires = fresh.expires_at.unwrap();
    assert!(
        (now + 3590..=now + 3700).contains(&expires),
        "expires_at {expires}"
    );
    let posted = svc.requests();
    let sent = posted.last().unwrap();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/token/refresh")
    );
    assert_eq!(
        sent.header("transfer-encoding"),
        None,
        "the body went out chunked"
    );
    let length = sent.body.len().to_string();
    assert_eq!(sent.header("content-length"), Some(length.as_str()));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["refresh_token"], long_refresh.as_str());

    // A refused refresh token is `rejected` (with the OAuth-style reason); 503 retries.
    let revoked = plugin
        .refresh(cfg.clone(), refreshing("revoked"))
        .await
        .unwrap();
    assert!(
        matches!(&revoked, Err(ProviderError::Rejected(m)) if m.contains("invalid_grant")),
        "{revoked:?}"
    );
    let flaky = plugin
        .refresh(cfg.clone(), refreshing("flaky"))
        .await
        .unwrap();
    assert!(
        matches!(flaky, Err(ProviderError::Unavailable(_))),
        "{flaky:?}"
    );

    // A destination the host does not grant: `denied`, and the host audits it.
    let elsewhere = token_service::start().unwrap();
    let denied = plugin
        .validate(config(&[("base-url", &elsewhere.url())]), token("good"))
        .await
        .unwrap();
    assert!(
        matches!(denied, Err(ProviderError::Denied(_))),
        "{denied:?}"
    );
    assert!(elsewhere.requests().is_empty());
    assert!(
        t.audit
            .events()
            .iter()
            .any(|e| e.target.contains(&elsewhere.authority())),
        "{:?}",
        t.audit.events()
    );

    // Configuration mistakes name the key; a credential of another kind is unsupported.
    let no_base = plugin.validate(config(&[]), token("good")).await.unwrap();
    assert!(
        matches!(&no_base, Err(ProviderError::InvalidConfig(m)) if m.contains("base-url")),
        "{no_base:?}"
    );
    let no_field = Credential::new("access-token", Vec::<(String, SecretString)>::new());
    let missing = plugin.validate(cfg.clone(), no_field).await.unwrap();
    assert!(
        matches!(&missing, Err(ProviderError::InvalidConfig(m)) if m.contains("access-token")),
        "{missing:?}"
    );
    // A kind the manifest does not declare never reaches the plugin: the host refuses it.
    let other_kind = Credential::new("api-key", [("access-token", SecretString::from("good"))]);
    let refused = plugin.validate(cfg.clone(), other_kind).await;
    assert!(
        matches!(
            refused,
            Err(latchkey_plugin_host::CallError::KindNotDeclared { .. })
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_provider_speaks_the_token_service() {
    let wasm = tokio::task::spawn_blocking(python_guest)
        .await
        .unwrap()
        .unwrap();
    speaks_the_token_service(&wasm, "python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_provider_speaks_the_token_service() {
    let wasm = tokio::task::spawn_blocking(js_guest)
        .await
        .unwrap()
        .unwrap();
    speaks_the_token_service(&wasm, "js").await;
}

/// The SDKs' pure helpers (signing against published vectors, RFC 3339, redaction)
/// under plain CPython and Node, with each language's own test runner.
#[test]
fn sdk_pure_helpers_pass_their_own_tests() {
    let root = crate::support::workspace_root();
    let python = std::process::Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s"])
        .arg(root.join("plugin-sdk/python/tests"))
        .output()
        .expect("run python3");
    assert!(
        python.status.success(),
        "python SDK tests failed:\n{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let node = std::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(root.join("plugin-sdk/js"))
        .output()
        .expect("run node");
    assert!(
        node.status.success(),
        "JavaScript SDK tests failed:\n{}",
        String::from_utf8_lossy(&node.stdout)
    );
}

/// The Python SDK's cost on a validate call: the example provider against the same
/// `validate` written on the wasi:http bindings by hand (`benches/guests/python-raw`),
/// both fresh-instance calls against the loopback token service, medians of 200.
/// Prints the figures for `docs/BENCHMARKS.md`:
/// `cargo nextest run -p latchkey-plugin-host --run-ignored only -E 'test(/sdk_overhead/)' --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints figures"]
#[allow(clippy::print_stdout)]
async fn sdk_overhead_on_a_python_validate() {
    let root = crate::support::workspace_root();
    let raw_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests/python-raw");
    let started = Instant::now();
    let sdk_wasm = tokio::task::spawn_blocking(python_guest)
        .await
        .unwrap()
        .unwrap();
    println!(
        "python example: built or found in {:.1} s, {:.1} MB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&sdk_wasm).unwrap().len() as f64 / 1e6
    );
    let raw_wasm = latchkey_guest_build::Guests::new(root, env!("CARGO_TARGET_TMPDIR"))
        .build_source(
            latchkey_guest_build::Lang::Python,
            &raw_dir,
            "bench-python-raw",
        )
        .unwrap();
    let svc = token_service::start().unwrap();
    let t = host();
    let mut medians = Vec::new();
    for (wasm, manifest) in [
        (sdk_wasm, root_manifest("python")),
        (raw_wasm, raw_dir.join("plugin.toml")),
    ] {
        let mut spec = spec(&wasm, &manifest);
        grant_http(&mut spec, &svc.authority());
        let plugin = t.host.load(spec).await.unwrap();
        let cfg = config(&[("base-url", &svc.url())]);
        let mut times = Vec::new();
        for i in 0..220 {
            let start = Instant::now();
            let answer = plugin
                .validate(cfg.clone(), token("good"))
                .await
                .unwrap()
                .unwrap();
            if i >= 20 {
                times.push(start.elapsed());
            }
            assert!(answer.valid, "{answer:?}");
        }
        times.sort();
        medians.push(times[times.len() / 2]);
    }
    let (sdk, raw) = (medians[0], medians[1]);
    println!(
        "validate median: SDK {sdk:?}, hand-written {raw:?}: {:+.1}%",
        (sdk.as_secs_f64() / raw.as_secs_f64() - 1.0) * 100.0
    );
}

fn root_manifest(lang: &str) -> std::path::PathBuf {
    crate::support::workspace_root()
        .join("examples/plugins")
        .join(lang)
        .join("plugin.toml")
}
