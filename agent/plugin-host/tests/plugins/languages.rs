//! Providers written in Python (componentize-py) and JavaScript (componentize-js)
//! load in the same host and answer `info` and `validate`.

use std::path::Path;

use latchkey_plugin_host::{Credential, Operation, SecretString};

use crate::support::{config, host, js_guest, python_guest, spec};

async fn answers_info_and_validate(wasm: &Path, lang: &str) {
    let t = host();
    let manifest = crate::support::workspace_root()
        .join("examples/plugins")
        .join(lang)
        .join("plugin.toml");
    let plugin = t.host.load(spec(wasm, &manifest)).await.unwrap();
    let info = plugin.info().unwrap();
    assert_eq!(info.name, format!("example-{lang}"));
    assert_eq!(info.operations, vec![Operation::Validate]);

    let good = Credential::new(
        "api-key",
        [("key", SecretString::from("lk_live_0123456789abcdef"))],
    );
    let answer = plugin
        .validate(config(&[("prefix", "lk_live_")]), good)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.valid, "{answer:?}");
    assert_eq!(answer.permissions.len(), 1);

    let bad = Credential::new("api-key", [("key", SecretString::from("nope"))]);
    let answer = plugin
        .validate(config(&[("prefix", "lk_live_")]), bad)
        .await
        .unwrap()
        .unwrap();
    assert!(!answer.valid);

    let missing = Credential::new("api-key", Vec::<(String, SecretString)>::new());
    let answer = plugin
        .validate(config(&[("prefix", "lk_live_")]), missing)
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Err(latchkey_plugin_host::ProviderError::InvalidConfig(_))
        ),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_provider_answers_info_and_validate() {
    let wasm = tokio::task::spawn_blocking(python_guest)
        .await
        .unwrap()
        .unwrap();
    answers_info_and_validate(&wasm, "python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_provider_answers_info_and_validate() {
    let wasm = tokio::task::spawn_blocking(js_guest)
        .await
        .unwrap()
        .unwrap();
    answers_info_and_validate(&wasm, "js").await;
}
