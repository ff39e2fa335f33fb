//! Client certificate chains: only end-entity certificates issued directly by the
//! agent's CA are accepted, whatever the CRL setting.
//!
//! webpki ignores the root's path length, so a leaf issued by an intermediate CA that
//! the agent's CA signed was accepted whenever no CRL was configured (with one, the
//! leaf's revocation status was unknown and it was refused by accident).

use serde_json::json;

use crate::harness::{foreign, Agent, Via};

/// The agent's config without its `tls.crl` line.
fn without_crl(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("crl"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test]
async fn r11_a_leaf_from_an_intermediate_signed_by_the_agents_ca_is_refused_without_a_crl(
) -> anyhow::Result<()> {
    let mut agent = Agent::builder().tcp().start().await?;
    agent
        .admin()?
        .write(
            "apps/web/db",
            json!({"password": "intermediate-must-not-see"}),
        )
        .await?;
    assert!(agent.stop().await?.success());
    let config = std::fs::read_to_string(agent.config_path())?;
    let edited = without_crl(&config);
    assert_ne!(edited, config, "the generated config sets tls.crl");
    std::fs::write(agent.config_path(), edited)?;
    agent.start().await?;

    let chained = foreign::via_intermediate(
        agent.dir(),
        &agent.scratch().join("intermediate"),
        "web",
        "spiffe://latchkey.local/app/web",
    )?;
    for via in [Via::Socket, Via::Tcp] {
        let api = agent.client_via(&chained, via)?;
        let read = api.read("apps/web/db").await;
        assert!(
            read.is_err(),
            "{via:?}: a leaf issued by an intermediate was served: {read:?}"
        );
        assert!(
            api.health().await.is_err(),
            "{via:?}: a leaf issued by an intermediate got an answer"
        );
    }
    let record = agent
        .wait_for_audit("the refused chain", |r| {
            r["op"] == "connect" && r["code"] == "certificate_refused"
        })
        .await?;
    assert_eq!(record["outcome"], "denied", "{record}");
    // A certificate the CA issued directly still works, on both listeners.
    let web = agent.issue_cert("web", None).await?;
    for via in [Via::Socket, Via::Tcp] {
        let read = agent.client_via(&web, via)?.read("apps/web/db").await?;
        assert_eq!(read.status, 200, "{via:?}: {}", read.body);
    }
    Ok(())
}
