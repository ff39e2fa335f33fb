//! Secrets in the agent's environment (the KEK, SQL DSNs, env fallbacks) stay out
//! of child processes, templates and `/proc/<pid>/environ`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, Agent};

const WAIT: Duration = Duration::from_secs(15);
/// 32 bytes as hex: the key-encryption key, given in `LATCHKEY_KEK`.
const KEK: &str = "deadbeefcafef00d1badc0de8badf00ddeadbeefcafef00d1badc0de8badf00d";
const DSN: &str = "postgres://admin:dsn-password-5b1e@127.0.0.1:5432/admin";
const FALLBACK: &str = "fallback-value-77c4";

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn r2_the_agents_secret_variables_reach_no_child_template_or_proc_environ(
) -> anyhow::Result<()> {
    let env_dump = tempfile::tempdir()?;
    let dump = env_dump.path().join("on_change.env");
    let validate_dump = env_dump.path().join("validate.env");
    let probe = env_dump.path().join("probe.conf");
    let leak = env_dump.path().join("leak.conf");
    let blocks = format!(
        r#"
[[sql]]
name = "admin"
url_env = "LK_E2E_ADMIN_DSN"

[[env_fallback]]
path = "legacy/api"
var = "LK_E2E_LEGACY_KEY"
field = "key"

[[template]]
name = "probe"
contents = "{{{{ secret('apps/web/db').password }}}} {{{{ env('LK_E2E_SHOWN', 'unset') }}}}\n"
destination = {probe}
allow_env = ["LK_E2E_SHOWN", "LK_E2E_ADMIN_DSN"]
command_env = ["LK_E2E_SHOWN", "LK_E2E_LEGACY_KEY"]
validate = ["sh", "-c", "env > {validate_dump}"]
on_change = {{ command = ["sh", "-c", "env > {dump}"] }}

[[template]]
name = "leak"
contents = "{{{{ env('LATCHKEY_KEK') }}}}"
destination = {leak}
allow_env = ["LATCHKEY_KEK"]
"#,
        probe = toml_path(&probe),
        leak = toml_path(&leak),
        dump = dump.display(),
        validate_dump = validate_dump.display(),
    );
    let agent = Agent::builder()
        .setting("kek", r#"{ source = "env", var = "LATCHKEY_KEK" }"#)
        .env("LATCHKEY_KEK", KEK)
        .env("LK_E2E_ADMIN_DSN", DSN)
        .env("LK_E2E_LEGACY_KEY", FALLBACK)
        .env("LK_E2E_SHOWN", "shown-ok")
        .append(&blocks)
        .start()
        .await?;
    let admin = agent.admin()?;
    // The agent still has what it was given: the store opened with the KEK, the
    // fallback serves its value.
    let legacy = admin.read("legacy/api").await?;
    assert_eq!(
        legacy.field("key").as_deref(),
        Some(FALLBACK),
        "{}",
        legacy.body
    );
    admin
        .write("apps/web/db", json!({ "password": "pw-1" }))
        .await?;
    eventually("the probe's on_change to run", WAIT, || async {
        std::fs::read_to_string(&dump)
            .ok()
            .filter(|t| t.contains("PATH="))
    })
    .await?;
    assert_eq!(std::fs::read_to_string(&probe)?, "pw-1 shown-ok\n");
    let on_change = std::fs::read_to_string(&dump)?;
    let validate = std::fs::read_to_string(&validate_dump)?;
    for text in [&on_change, &validate] {
        // Listed in command_env: passed on. The fallback variable was taken out of
        // the environment at start, so even listed it is not there.
        assert!(text.contains("LK_E2E_SHOWN=shown-ok"), "{text}");
        for secret in [KEK, DSN, FALLBACK, "dsn-password-5b1e"] {
            assert!(!text.contains(secret), "a command saw {secret:?}:\n{text}");
        }
        for name in ["LATCHKEY_KEK", "LK_E2E_ADMIN_DSN", "LK_E2E_LEGACY_KEY"] {
            assert!(!text.contains(name), "a command saw {name}:\n{text}");
        }
    }
    // A template that asks for the KEK renders nothing.
    eventually("the leak template's failure", WAIT, || async {
        agent
            .logs()
            .lines()
            .any(|l| l.contains("template=leak") && l.contains("LATCHKEY_KEK is not set"))
            .then_some(())
    })
    .await?;
    assert!(!leak.exists(), "the leak template wrote a file");
    // Nor does the process's own initial environment show them.
    let pid = agent
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("LK_E2E_SHOWN=shown-ok"), "{environ}");
    for secret in [KEK, DSN, FALLBACK] {
        assert!(
            !environ.contains(secret),
            "/proc/{pid}/environ holds {secret:?}"
        );
    }
    for secret in [KEK, DSN, FALLBACK] {
        assert!(!agent.logs().contains(secret), "the log holds {secret:?}");
    }
    Ok(())
}
