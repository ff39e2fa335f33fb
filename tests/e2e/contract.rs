//! The provider contract's table, row by row, against the real binary: each answer
//! the test guest can give (`mode = "answer"`) → the credential's state after
//! `latchkey validate`, the `outcome` it prints and its exit code; and the same exit
//! codes from `latchkey plugin call` run on its own (issue 15, item 2 and the
//! `plugin call` exit codes).

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::wasm::{self, guest, sha256_of};
use crate::harness::Agent;

/// (the guest's `answer`, exit code, printed outcome, state after validation).
const ROWS: [(&str, i32, &str, &str); 8] = [
    ("valid", 0, "valid", "active"),
    ("invalid", 6, "invalid", "invalid"),
    ("withdraw", 6, "forbidden", "invalid"),
    ("rejected", 7, "rejected", "revoked"),
    ("unavailable", 8, "unavailable", "active"),
    ("denied", 9, "denied", "active"),
    ("unsupported", 10, "unsupported", "active"),
    ("invalid-config", 11, "invalid-config", "active"),
];

fn config(wasm: &Path, sha256: &str) -> String {
    let mut text = wasm::guest_section(wasm, sha256);
    text.push_str(
        r#"
[[lifecycle]]
paths = ["rows/trap"]
plugin = "basic"
config = { mode = "trap" }
"#,
    );
    for (answer, ..) in ROWS {
        text.push_str(&format!(
            r#"
[[lifecycle]]
paths = ["rows/{answer}"]
plugin = "basic"
config = {{ mode = "answer", answer = "{answer}" }}
forbid_permissions = ["withdraw"]
"#
        ));
    }
    text
}

#[tokio::test]
async fn every_validate_answer_leads_to_its_state_outcome_and_exit_code() -> anyhow::Result<()> {
    let wasm = &guest()?;
    let agent = Agent::builder()
        .append(&config(wasm, &sha256_of(wasm)?))
        .start()
        .await?;
    let admin = agent.admin()?;
    for (answer, code, outcome, state) in ROWS {
        let path = format!("rows/{answer}");
        let written = admin.write(&path, json!({ "key": "k" })).await?;
        assert_eq!(written.status, 200, "{path}: {}", written.body);
        let out = agent.cli(["validate", path.as_str()]).run().await?;
        assert_eq!(out.code, code, "{path}: {}{}", out.stdout, out.stderr);
        let printed: Value = serde_json::from_str(&out.stdout)?;
        assert_eq!(printed["outcome"], outcome, "{path}: {printed}");
        assert_eq!(printed["state"], state, "{path}: {printed}");
        let status = super::lifecycle::status(&agent, &path).await?;
        assert_eq!(status["state"], state, "{path}: {status}");
    }
    // A forbidden permission is printed as every answer prints permissions.
    let out = agent.cli(["validate", "rows/withdraw"]).run().await?;
    let printed: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(
        printed["permissions"],
        json!([{"name": "withdraw", "granted": true}]),
        "{printed}"
    );
    // No answer at all: the plugin trapped.
    admin.write("rows/trap", json!({ "key": "k" })).await?;
    let out = agent.cli(["validate", "rows/trap"]).run().await?;
    assert_eq!(out.code, 12, "{}{}", out.stdout, out.stderr);
    Ok(())
}

#[tokio::test]
async fn plugin_call_exits_with_the_code_of_its_answer() -> anyhow::Result<()> {
    let wasm = &guest()?;
    let manifest = wasm::guest_manifest();
    let manifest = manifest.display().to_string();
    let cred = json!({"kind": "api-key", "fields": {"key": "k"}});
    let call =
        |op: &str, config: Value| wasm::call(wasm, op, &config, &cred, &["--manifest", &manifest]);
    for (answer, code, ..) in ROWS {
        // On its own, `plugin call` has no policy: a granted `withdraw` is valid.
        let code = if answer == "withdraw" { 0 } else { code };
        let called = call("validate", json!({"mode": "answer", "answer": answer}))?;
        assert_eq!(
            called.code,
            Some(code),
            "{answer}: {:?} {}",
            called.json,
            called.stderr
        );
    }
    let trap = call("validate", json!({"mode": "trap"}))?;
    assert_eq!(trap.code, Some(12), "{}", trap.stderr);
    // The manifest does not declare `refresh`: the host does not call it.
    let refresh = call("refresh", json!({}))?;
    assert_eq!(refresh.code, Some(10), "{}", refresh.stderr);
    let retired = call("retire", json!({}))?;
    assert_eq!(retired.code, Some(0), "{}", retired.stderr);
    Ok(())
}
