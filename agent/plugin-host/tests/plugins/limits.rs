//! Runaway guests are stopped and contained; tampered files are refused; the
//! compiled artifact cache skips compilation.

use std::time::{Duration, Instant};

use latchkey_plugin_host::{
    CallError, Credential, LoadError, Operation, ProviderError, SecretString, Seed,
};

use crate::support::{basic_spec, config, host, host_with, rust_guest};

fn good_key() -> Credential {
    Credential::new("api-key", [("key", SecretString::from("good"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_within_its_deadline_while_other_calls_are_served() {
    let t = host();
    let mut spec = basic_spec();
    spec.limits.deadline = Duration::from_millis(300);
    let plugin = t.host.load(spec).await.unwrap();

    let started = Instant::now();
    let spinning = {
        let p = plugin.clone();
        tokio::spawn(async move { p.validate(config(&[("mode", "loop")]), good_key()).await })
    };
    // While the loop runs, the same plugin keeps answering other calls.
    for _ in 0..5 {
        let ok = plugin
            .validate(config(&[("mode", "key")]), good_key())
            .await
            .unwrap()
            .unwrap();
        assert!(ok.valid);
    }
    let result = spinning.await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(CallError::Timeout { .. })),
        "expected timeout, got {result:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let bound = crate::pace::scaled(Duration::from_millis(1500));
    assert!(
        elapsed < bound,
        "stopped too late: {elapsed:?}, expected under {bound:?} ({})",
        crate::pace::describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_stopped_at_the_memory_limit() {
    let t = host();
    let mut spec = basic_spec();
    spec.limits.memory_bytes = 32 << 20;
    let plugin = t.host.load(spec).await.unwrap();
    let result = plugin
        .validate(config(&[("mode", "alloc")]), good_key())
        .await;
    match result {
        Err(CallError::MemoryLimit { limit, .. }) => assert_eq!(limit, 32 << 20),
        other => panic!("expected memory limit, got {other:?}"),
    }
    // The next call gets a fresh instance and works.
    let ok = plugin
        .validate(config(&[("mode", "key")]), good_key())
        .await
        .unwrap()
        .unwrap();
    assert!(ok.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_contained_and_the_next_call_works() {
    let t = host();
    let plugin = t.host.load(basic_spec()).await.unwrap();
    let result = plugin
        .validate(config(&[("mode", "trap")]), good_key())
        .await;
    assert!(matches!(result, Err(CallError::Trap { .. })), "{result:?}");
    let ok = plugin
        .validate(config(&[("mode", "key")]), good_key())
        .await
        .unwrap()
        .unwrap();
    assert!(ok.valid);
    let bad = plugin
        .validate(
            config(&[("mode", "key")]),
            Credential::new("api-key", [("key", SecretString::from("bad"))]),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!bad.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_wasm_is_refused_with_a_clear_error() {
    let t = host();
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("basic.wasm");
    let mut bytes = std::fs::read(rust_guest()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&tampered, &bytes).unwrap();

    let mut spec = basic_spec(); // pinned to the untampered file
    let pinned = spec.sha256.clone();
    spec.wasm = tampered;
    let err = t.host.load(spec).await.unwrap_err();
    match &err {
        LoadError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &pinned);
            assert_ne!(actual, &pinned);
        }
        other => panic!("expected digest mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("refusing to load"), "{message}");
    assert!(message.contains(&pinned), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_artifact_skips_compilation_on_the_second_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = host_with(|c| c.cache_dir = Some(dir.path().to_owned()));
    let p1 = first.host.load(basic_spec()).await.unwrap();
    assert!(!p1.loaded_from_cache());
    drop((p1, first));
    let second = host_with(|c| c.cache_dir = Some(dir.path().to_owned()));
    let p2 = second.host.load(basic_spec()).await.unwrap();
    assert!(p2.loaded_from_cache());
    assert!(
        p2.validate(config(&[("mode", "key")]), good_key())
            .await
            .unwrap()
            .unwrap()
            .valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_calls_round_trip_credentials_without_leaking_them() {
    let t = host();
    let plugin = t.host.load(basic_spec()).await.unwrap();
    let info = plugin.info().unwrap();
    assert_eq!(info.name, "basic");
    assert!(info.operations.contains(&Operation::CreatePending));

    let a = plugin
        .create_pending(config(&[]), good_key())
        .await
        .unwrap()
        .unwrap();
    let b = plugin
        .create_pending(config(&[]), good_key())
        .await
        .unwrap()
        .unwrap();
    let (ka, kb) = (a.field("key").unwrap(), b.field("key").unwrap());
    assert_eq!(ka.len(), 32);
    assert_ne!(
        ka.expose(),
        kb.expose(),
        "passwords come from real randomness"
    );
    assert!(!format!("{a:?}").contains(ka.expose()));

    plugin.retire(config(&[]), a).await.unwrap().unwrap();
    // `refresh` is not in the manifest: the host does not call it.
    let refused = plugin.refresh(config(&[]), b).await;
    assert!(
        matches!(refused, Err(CallError::NotDeclared { .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_create_pending_makes_the_same_credential_again() {
    let t = host();
    let plugin = t.host.load(basic_spec()).await.unwrap();
    let create = |seed: [u8; 32]| {
        let plugin = plugin.clone();
        async move {
            plugin
                .create_pending_seeded(config(&[]), good_key(), Some(Seed::from_bytes(seed)))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (a, again, other) = (
        create([1; 32]).await,
        create([1; 32]).await,
        create([2; 32]).await,
    );
    let key = |c: &Credential| c.field("key").unwrap().expose().to_owned();
    assert_eq!(key(&a).len(), 32);
    assert_eq!(
        key(&a),
        key(&again),
        "the same seed replays the same choice"
    );
    assert_ne!(key(&a), key(&other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_logs_and_output_reach_the_caller_and_the_log() {
    let t = host();
    let plugin = t.host.load(basic_spec()).await.unwrap();
    let logged = plugin
        .validate(config(&[("mode", "log")]), good_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logged.detail, "logged");
    let unknown = plugin
        .validate(config(&[("mode", "nope")]), good_key())
        .await
        .unwrap();
    assert!(matches!(unknown, Err(ProviderError::InvalidConfig(_))));
    let missing = plugin.validate(config(&[]), good_key()).await.unwrap();
    assert!(matches!(missing, Err(ProviderError::InvalidConfig(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_call_json_serve_the_cli() {
    let t = host();
    let wasm = rust_guest();
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/basic/plugin.toml");
    let host = t.host.clone();
    let (inspection, answer) = tokio::task::spawn_blocking(move || {
        let inspection = latchkey_plugin_host::inspect(&host, wasm, Some(&manifest)).unwrap();
        let plugin = host.load_blocking(crate::support::basic_spec()).unwrap();
        let answer = plugin
            .call_json(
                Operation::Validate,
                r#"{"mode":"key"}"#,
                r#"{"kind":"api-key","fields":{"key":"good"}}"#,
            )
            .unwrap();
        (inspection, answer)
    })
    .await
    .unwrap();
    assert_eq!(
        inspection.sha256,
        latchkey_plugin_host::sha256_file(wasm).unwrap()
    );
    assert!(inspection.is_provider);
    assert!(inspection
        .imports
        .iter()
        .any(|i| i == "latchkey:provider/log@0.1.0"));
    assert_eq!(inspection.info.as_ref().unwrap().name, "basic");
    assert_eq!(inspection.manifest.as_ref().unwrap().name, "basic");
    assert_eq!(answer["ok"]["valid"], serde_json::Value::Bool(true));
}
