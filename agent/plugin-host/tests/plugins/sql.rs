//! The SQL capability against the real PostgreSQL and MariaDB on the machine.

use latchkey_plugin_host::{Capability, Credential, DenyReason, ProviderError, SecretString};

use crate::support::{basic_spec, config, host};

fn cred() -> Credential {
    Credential::new("db-password", [("password", SecretString::from("unused"))])
}

async fn round_trip(connection: &str) {
    let t = host();
    let mut spec = basic_spec();
    spec.grants.sql = vec![connection.to_owned()];
    let plugin = t.host.load(spec).await.unwrap();
    let user = format!("lk_test_{}_{connection}", std::process::id());
    let answer = plugin
        .validate(
            config(&[("mode", "sql"), ("connection", connection), ("user", &user)]),
            cred(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(answer.valid, "{}", answer.detail);
    assert!(answer.detail.contains("t=it's"), "{}", answer.detail);
    assert!(answer.detail.contains("columns=n,t"), "{}", answer.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_capability_creates_checks_and_drops_a_postgres_role() {
    round_trip("pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_capability_creates_checks_and_drops_a_mariadb_user() {
    round_trip("maria").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_not_granted_is_denied_and_audited() {
    let t = host();
    let mut spec = basic_spec();
    spec.grants.sql = vec!["pg".to_owned()];
    let plugin = t.host.load(spec).await.unwrap();
    let answer = plugin
        .validate(
            config(&[("mode", "sql"), ("connection", "maria"), ("user", "x")]),
            cred(),
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(ProviderError::Denied(_))),
        "{answer:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].capability, Capability::Sql);
    assert_eq!(events[0].target, "maria");
    assert_eq!(events[0].reason, DenyReason::ConnectionNotGranted);
}
