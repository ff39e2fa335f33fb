//! The first-party providers in `plugins/`, each built for wasm32-wasip2 and called
//! through `latchkey plugin call` (the real binary and host): databases against the
//! PostgreSQL and MariaDB on the machine, OAuth 2 against `oauth2-mock-server`, and
//! AI providers and exchanges against loopback fixtures that check each service's
//! documented auth headers and signatures and answer with its documented shapes.

mod ai;
mod common;
mod databases;
mod exchanges;
mod oauth2;

use serde_json::json;

use crate::harness::wasm::{call, plugin, provider_names};

/// Every first-party provider loads from its folder as shipped and answers `info`
/// with its own name and the operations its manifest declares.
#[test]
fn every_provider_answers_info_as_its_manifest_says() -> anyhow::Result<()> {
    let names = provider_names()?;
    assert!(names.len() >= 11, "{names:?}");
    for name in names {
        let wasm = plugin(&name)?;
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(wasm.with_extension("toml"))?)?;
        let called = call(&wasm, "info", &json!({}), &json!({}), &[])?;
        assert!(called.success, "{name}: {}", called.stderr);
        let info = &called.json["ok"];
        assert_eq!(info["name"], name.as_str(), "{name}: {info}");
        let declared: Vec<&str> = manifest["operations"]
            .as_array()
            .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        let answered: Vec<&str> = info["operations"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(answered, declared, "{name}: operations");
    }
    Ok(())
}
