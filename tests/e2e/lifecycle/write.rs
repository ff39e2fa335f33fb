//! Validation before storage, health checks and the states they lead to: a
//! credential the provider rejects is not stored and the reason is returned; a
//! validation moves the credential to `active`, `invalid` or `revoked`, visible in
//! `latchkey status`, the metrics and the audit trail.

use super::service::Service;
use super::staged::plugin_toml;
use crate::harness::Agent;

const GOOD: &str = "key-original";

#[tokio::test]
async fn a_rejected_credential_is_not_stored_and_validation_sets_the_state() -> anyhow::Result<()> {
    let service = Service::start(GOOD)?;
    let mut agent = Agent::builder()
        .append(&plugin_toml(&service)?)
        .start()
        .await?;

    // Asked to validate first, a key the service does not know is refused.
    let refused = agent
        .cli(["put", "svc/key", "key=key-unknown", "--validate"])
        .run()
        .await?;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stderr.contains("rejected"), "{}", refused.stderr);
    assert!(
        !refused.stderr.contains("key-unknown"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        agent.admin()?.read("svc/key").await?.status,
        404,
        "not stored"
    );
    agent
        .wait_for_audit("the refused write", |r| {
            r["op"] == "validate-write" && r["outcome"] == "denied"
        })
        .await?;

    let stored = agent
        .cli(["put", "svc/key", &format!("key={GOOD}"), "--validate"])
        .run()
        .await?;
    assert_eq!(stored.code, 0, "{}", stored.stderr);

    // A health check now: active, and counted in the metrics.
    let checked = agent.cli(["validate", "svc/key"]).run().await?;
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "active", "{status}");
    let metrics = agent.admin()?.get("/metrics").await?;
    assert!(
        metrics
            .body
            .contains("latchkey_credentials{state=\"active\"} 1"),
        "{}",
        metrics.body
    );

    // Revoked at the service: the provider says `rejected` (exit 7), the state says
    // revoked, and `latchkey status` exits non-zero.
    service.revoke(GOOD);
    let checked = agent.cli(["validate", "svc/key"]).run().await?;
    assert_eq!(checked.code, 7, "{}{}", checked.stdout, checked.stderr);
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "revoked", "{status}");
    let all = agent.cli(["status"]).run().await?;
    assert_eq!(all.code, 6, "{}", all.stdout);
    assert!(
        all.stdout.contains("svc/key") && all.stdout.contains("revoked"),
        "{}",
        all.stdout
    );
    let metrics = agent.admin()?.get("/metrics").await?;
    assert!(
        metrics
            .body
            .contains("latchkey_credentials{state=\"revoked\"} 1"),
        "{}",
        metrics.body
    );

    // Still revoked after a restart, even one without a clean stop: the state is
    // kept beside the store as it changes.
    agent.sigkill().await?;
    agent.start().await?;
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "revoked", "{status}");
    assert_eq!(agent.cli(["status"]).run().await?.code, 6);

    // A new version written is a new credential: active again once validated.
    service.allow("key-second");
    agent
        .cli(["put", "svc/key", "key=key-second", "--validate"])
        .run()
        .await?
        .success()?;
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "active", "{status}");
    Ok(())
}
