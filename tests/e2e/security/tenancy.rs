//! Tenants and placeholders: `{app}` and `{tenant}` never let a tenant app reach a
//! non-tenant app's subtree, or the reverse.
//!
//! `{app}` used to compare the app name alone, so under a rule whose identity pattern
//! matched every app, the tenant app `tenant/t/app/a` read the subtree of the
//! non-tenant app `a`. A pattern now binds the caller's whole name.

use serde_json::json;

use crate::harness::Agent;

#[tokio::test]
async fn r11_a_tenant_app_does_not_read_the_subtree_of_the_non_tenant_app_of_its_name(
) -> anyhow::Result<()> {
    let agent = Agent::builder()
        .allow(
            "spiffe://latchkey.local/**",
            &["byapp/{app}/**", "bytenant/{tenant}/{app}/**"],
            &["read"],
        )
        .start()
        .await?;
    let admin = agent.admin()?;
    for path in ["byapp/a/x", "bytenant/t/a/x", "bytenant/a/a/x"] {
        assert_eq!(admin.write(path, json!({"v": path})).await?.status, 200);
    }
    let plain = agent.client_for(&agent.issue_cert("a", None).await?)?;
    let tenant = agent.client_for(&agent.issue_cert("a", Some("t")).await?)?;
    // A tenant named like the app: `{tenant}/{app}` is still not `{app}`.
    let tenant_a = agent.client_for(&agent.issue_cert("a", Some("a")).await?)?;
    let expect = [
        (&plain, "byapp/a/x", 200),
        (&tenant, "byapp/a/x", 403),
        (&tenant_a, "byapp/a/x", 403),
        (&plain, "bytenant/t/a/x", 403),
        (&plain, "bytenant/a/a/x", 403),
        (&tenant, "bytenant/t/a/x", 200),
        (&tenant, "bytenant/a/a/x", 403),
        (&tenant_a, "bytenant/a/a/x", 200),
    ];
    super::assert_reads(&expect).await?;
    // `latchkey check` says so about the rule.
    let config = agent.config_path().to_string_lossy().into_owned();
    let check = agent
        .cli(["check", "--config", config.as_str()])
        .run()
        .await?
        .success()?;
    assert!(
        check.stderr.contains("warning:")
            && check
                .stderr
                .contains("\"byapp/{app}/**\" uses {app} without {tenant}"),
        "{check:?}"
    );
    assert!(
        !check.stderr.contains("bytenant/{tenant}/{app}/**"),
        "{check:?}"
    );
    Ok(())
}
