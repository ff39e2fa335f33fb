//! What the HTTP provider tests (`ai`, `exchanges`) share: a provider installed for a
//! loopback fixture, the call that reaches it, and reading the answer.
//!
//! The shipped manifests name the real hosts, and the host grants only authorities
//! in both the manifest and the grant, so [`install`] puts a copy of the manifest
//! beside the shipped component that also lists the fixture (what an operator does
//! for a proxy or another base URL).

use std::path::PathBuf;

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};

use crate::harness::fixture::Fixture;
use crate::harness::wasm::{self, call, Called};

/// A provider installed for one fixture: the shipped component beside a copy of its
/// manifest whose `needs.http` also lists the fixture's authority.
pub(super) struct Installed {
    pub(super) wasm: PathBuf,
    manifest: PathBuf,
    /// The fixture's `host:port`, as it appears in a request's target.
    pub(super) authority: String,
    /// The fixture's grant to the provider, `http://host:port`.
    grant: String,
    url: String,
    _dir: tempfile::TempDir,
}

/// Installs provider `name` for `fixture`.
pub(super) fn install(name: &str, fixture: &Fixture) -> anyhow::Result<Installed> {
    let wasm = wasm::plugin(name)?;
    let shipped = std::fs::read_to_string(wasm.with_extension("toml"))
        .with_context(|| format!("read the {name} manifest"))?;
    let mut manifest: toml::Value = toml::from_str(&shipped)?;
    manifest
        .get_mut("needs")
        .and_then(|n| n.get_mut("http"))
        .and_then(|h| h.as_array_mut())
        .context("manifest has no needs.http")?
        .push(toml::Value::String(fixture.grant()));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&manifest)?)?;
    Ok(Installed {
        wasm,
        manifest: path,
        authority: fixture.authority(),
        grant: fixture.grant(),
        url: fixture.url(),
        _dir: dir,
    })
}

impl Installed {
    /// Calls `op` with `base-url` pointing at the fixture plus `config`, the fixture's
    /// authority granted and loopback allowed.
    pub(super) fn call(&self, op: &str, config: Value, cred: &Value) -> anyhow::Result<Called> {
        let mut config = config;
        config["base-url"] = Value::String(self.url.clone());
        let manifest = self.manifest.display().to_string();
        call(
            &self.wasm,
            op,
            &config,
            cred,
            &[
                "--manifest",
                &manifest,
                "--grant-http",
                &self.grant,
                "--allow-network",
                "127.0.0.0/8",
            ],
        )
    }

    /// [`Installed::call`] of `validate`.
    pub(super) fn validate(&self, config: Value, cred: &Value) -> anyhow::Result<Called> {
        self.call("validate", config, cred)
    }
}

/// The answer of a call that must succeed.
pub(super) fn ok(called: &Called) -> anyhow::Result<&Value> {
    ensure!(
        called.success,
        "call failed: {:?} {}",
        called.json,
        called.stderr
    );
    called.json.get("ok").context("no ok answer")
}

/// The `(code, detail)` of a call that must fail with a provider error.
pub(super) fn error(called: &Called) -> anyhow::Result<(String, String)> {
    ensure!(!called.success, "call succeeded: {:?}", called.json);
    let err = called
        .json
        .get("error")
        .with_context(|| format!("no error answer: {:?} {}", called.json, called.stderr))?;
    Ok((
        err["code"].as_str().unwrap_or_default().to_owned(),
        err["detail"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Fails if any of `secrets` appears in what the call printed (its JSON or stderr).
pub(super) fn assert_no_secret(called: &Called, secrets: &[&str]) -> anyhow::Result<()> {
    let printed = format!("{}\n{}", called.json, called.stderr);
    for secret in secrets {
        ensure!(
            !printed.contains(secret),
            "a credential value appears in the output"
        );
    }
    Ok(())
}

/// The `info` answer of the shipped provider `name`, its manifest as shipped.
pub(super) fn info(name: &str) -> anyhow::Result<Value> {
    let called = call(
        &wasm::plugin(name)?,
        "info",
        &json!({}),
        &json!({"kind": "api-key", "fields": {}, "expires_at": null}),
        &[],
    )?;
    Ok(ok(&called)?.clone())
}
