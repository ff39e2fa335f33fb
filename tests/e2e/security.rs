//! Who may connect and what they may read: clients without a certificate, with one
//! from another CA or a revoked one are refused; the policy keeps apps to their own
//! secrets, and every denial is in the audit trail.
//!
//! The submodules hold one regression test (or a few) per defect found by attacking
//! the running agent: each fails against the code before its fix.

mod chains;
mod connections;
mod denial_audit;
mod disk;
mod environment;
mod files;
mod revocation;
mod sandbox;
mod templates;
mod tenancy;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use latchkey::client::Endpoint;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::harness::api::Api;
use crate::harness::{eventually, foreign, raw, within, Agent, Identity, Via};

/// How long a revocation may take to reach a running agent (it polls the CRL every
/// second).
const REVOCATION_DEADLINE: Duration = Duration::from_secs(5);

/// One HTTP/1.1 connection, kept alive, that never reconnects by itself.
struct KeepAlive {
    sender: Mutex<SendRequest<Empty<Bytes>>>,
}

impl KeepAlive {
    async fn open(agent: &Agent, identity: &Identity, via: Via) -> anyhow::Result<Self> {
        let connector = TlsConnector::from(agent.tls_for(identity)?);
        let name = ServerName::try_from("localhost")?.to_owned();
        let sender = match agent.endpoint(via)? {
            Endpoint::Unix(path) => {
                let tls = connector
                    .connect(name, tokio::net::UnixStream::connect(path).await?)
                    .await?;
                handshake(tls).await?
            }
            Endpoint::Tcp(addr) => {
                let tls = connector
                    .connect(name, tokio::net::TcpStream::connect(addr).await?)
                    .await?;
                handshake(tls).await?
            }
        };
        Ok(Self {
            sender: Mutex::new(sender),
        })
    }

    /// `GET uri` on this connection: the status, or an error once it is closed.
    async fn get(&self, uri: &str) -> anyhow::Result<u16> {
        let mut sender = self.sender.lock().await;
        sender.ready().await.context("the connection is closed")?;
        let req = http::Request::get(uri)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())?;
        let res = within(
            "an answer",
            Duration::from_secs(10),
            sender.send_request(req),
        )
        .await?
        .context("the request failed")?;
        let status = res.status().as_u16();
        res.into_body().collect().await?;
        Ok(status)
    }
}

async fn handshake<S>(io: S) -> anyhow::Result<SendRequest<Empty<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().start().await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "no-cert-must-not-see"}))
        .await?;
    let ca = std::fs::read_to_string(agent.ca_path())?;
    for via in [Via::Socket, Via::Tcp] {
        let endpoint = agent.endpoint(via)?;
        let request = raw::request("GET", "/v1/secrets/apps/web/db", &[], b"");
        let result = raw::exchange(&endpoint, raw::without_client_cert(&ca)?, &request).await;
        assert!(
            result.is_err(),
            "{via:?}: a client without a certificate got an answer: {result:?}"
        );
        let health = raw::request("GET", "/v1/health", &[], b"");
        let result = raw::exchange(&endpoint, raw::without_client_cert(&ca)?, &health).await;
        assert!(result.is_err(), "{via:?}: /v1/health answered: {result:?}");
    }
    assert_eq!(
        agent.admin()?.health().await?.status,
        200,
        "the agent must still serve"
    );
    assert!(agent.is_running());
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_even_with_a_valid_looking_id(
) -> anyhow::Result<()> {
    let agent = Agent::builder().tcp().start().await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "foreign-must-not-see"}))
        .await?;
    let impostor = foreign::from_another_ca(
        &agent.scratch().join("foreign"),
        "admin",
        "spiffe://latchkey.local/admin/admin",
    )?;
    for via in [Via::Socket, Via::Tcp] {
        let api = agent.client_via(&impostor, via)?;
        let read = api.read("apps/web/db").await;
        assert!(
            read.is_err(),
            "{via:?}: the impostor got an answer: {read:?}"
        );
        let health = api.health().await;
        assert!(
            health.is_err(),
            "{via:?}: the impostor got an answer: {health:?}"
        );
    }
    assert_eq!(agent.admin()?.read("apps/web/db").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_by_the_running_agent() -> anyhow::Result<()> {
    let mut agent = Agent::builder().tcp().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/web/db", json!({"password": "pw"}))
        .await?;
    admin
        .write("apps/other/db", json!({"password": "pw2"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let other = agent.issue_cert("other", None).await?;

    let before = agent.client_for(&web)?.read("apps/web/db").await?;
    assert_eq!(before.status, 200, "{}", before.body);

    agent.revoke(&web).await?;
    let started = tokio::time::Instant::now();
    eventually(
        "new connections with the revoked certificate to fail",
        REVOCATION_DEADLINE,
        || {
            let api = agent.client_for(&web);
            async move { api.ok()?.health().await.is_err().then_some(()) }
        },
    )
    .await?;
    let took = started.elapsed();
    // Refused for good, on both listeners, not just once.
    for via in [Via::Socket, Via::Tcp] {
        for _ in 0..3 {
            let read = agent.client_via(&web, via)?.read("apps/web/db").await;
            assert!(
                read.is_err(),
                "{via:?}: revoked certificate served after {took:?}: {read:?}"
            );
        }
    }
    // Others are not affected.
    let still = agent.client_for(&other)?.read("apps/other/db").await?;
    assert_eq!(still.status, 200, "{}", still.body);
    // The refusals are audited (one record a second per client and reason, so a
    // client retrying in a loop cannot flood the trail), the Unix socket's with the
    // peer's uid; the denial metric counts every one.
    let refusals: Vec<serde_json::Value> = agent
        .audit_records()?
        .into_iter()
        .filter(|r| r["op"] == "connect" && r["code"] == "certificate_refused")
        .collect();
    assert!(
        refusals.iter().all(|r| r["outcome"] == "denied"
            && r["detail"].as_str().is_some_and(|d| d.contains("Revoked"))),
        "{refusals:#?}"
    );
    assert!(
        refusals.iter().any(|r| r["uid"].is_u64()) && refusals.iter().any(|r| r["uid"].is_null()),
        "one record from each listener, the Unix socket's with the uid: {refusals:#?}"
    );
    let metrics = agent
        .admin()?
        .request(http::Method::GET, "/metrics", None)
        .await?;
    let denied: f64 = metrics
        .body
        .lines()
        .find(|l| l.starts_with("latchkey_denials_total{") && l.contains("connect"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_default();
    assert!(denied >= 6.0, "every refusal is counted: {}", metrics.body);
    assert!(refusals.len() as f64 <= denied, "{refusals:#?}");

    // Revoking by certificate file works the same.
    let cert = other.cert.to_string_lossy().into_owned();
    agent
        .cli(["cert", "revoke", "--cert", cert.as_str()])
        .run()
        .await?
        .success()?;
    eventually(
        "the certificate revoked by file to be refused",
        REVOCATION_DEADLINE,
        || {
            let api = agent.client_for(&other);
            async move { api.ok()?.health().await.is_err().then_some(()) }
        },
    )
    .await?;

    // And after a restart.
    agent.restart().await?;
    assert!(agent.client_for(&web)?.health().await.is_err());
    assert!(agent.client_for(&other)?.health().await.is_err());
    assert_eq!(agent.admin()?.health().await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn an_app_reading_another_apps_secret_gets_403_and_the_denial_is_audited(
) -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/b/secret", json!({"password": "only-b-may-read-this"}))
        .await?;
    admin
        .write("apps/a/secret", json!({"password": "a-own"}))
        .await?;
    let a = agent.issue_cert("a", None).await?;
    let b = agent.issue_cert("b", None).await?;
    let as_a = agent.client_for(&a)?;

    let denied = as_a.read("apps/b/secret").await?;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(
        denied.code().as_deref(),
        Some("forbidden"),
        "{}",
        denied.body
    );
    assert!(!denied.body.contains("only-b-may-read-this"));

    // The same connection still reads its own secret; b reads its own.
    assert_eq!(
        as_a.read("apps/a/secret")
            .await?
            .field("password")
            .as_deref(),
        Some("a-own")
    );
    let own = agent.client_for(&b)?.read("apps/b/secret").await?;
    assert_eq!(
        own.field("password").as_deref(),
        Some("only-b-may-read-this")
    );

    let uid = std::fs::metadata(agent.dir())?.uid();
    let record = agent
        .wait_for_audit("a's denied read of apps/b/secret", |r| {
            r["outcome"] == "denied" && r["peer"] == a.id.as_str() && r["path"] == "apps/b/secret"
        })
        .await?;
    assert_eq!(record["op"], "read", "{record}");
    assert_eq!(record["status"], 403, "{record}");
    assert_eq!(record["code"], "forbidden", "{record}");
    assert_eq!(record["uid"], uid, "{record}");
    assert!(
        record["time_ms"].as_i64().is_some_and(|t| t > 0),
        "{record}"
    );

    // Apps only read: a write to its own subtree is denied and audited too.
    let write = as_a
        .write("apps/a/secret", json!({"password": "overwrite"}))
        .await?;
    assert_eq!(write.status, 403, "{}", write.body);
    assert_eq!(write.code().as_deref(), Some("forbidden"));
    agent
        .wait_for_audit("a's denied write", |r| {
            r["outcome"] == "denied" && r["peer"] == a.id.as_str() && r["op"] == "write"
        })
        .await?;
    let delete = as_a.delete("apps/b/secret").await?;
    assert_eq!(delete.status, 403, "{}", delete.body);
    assert_eq!(
        admin
            .read("apps/a/secret")
            .await?
            .field("password")
            .as_deref(),
        Some("a-own")
    );
    assert_eq!(admin.read("apps/b/secret").await?.status, 200);

    // Listing does not reveal b's secret to a.
    let list = as_a.list("apps/b/").await?;
    assert!(
        list.status == 403 || (list.status == 200 && list.paths().is_empty()),
        "{}",
        list.body
    );
    let everything = as_a.list("").await?;
    assert!(
        !everything.body.contains("apps/b/secret"),
        "{}",
        everything.body
    );

    // No audit line carries a value.
    let audit = agent.audit_text();
    for value in ["only-b-may-read-this", "a-own", "overwrite"] {
        assert!(!audit.contains(value), "audit holds {value:?}:\n{audit}");
    }
    Ok(())
}

#[tokio::test]
async fn tenant_apps_read_their_own_and_their_tenants_shared_secrets_only() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    for path in [
        "tenants/acme/shared/db",
        "tenants/acme/apps/api/key",
        "tenants/acme/apps/billing/key",
        "tenants/globex/shared/db",
    ] {
        assert_eq!(admin.write(path, json!({"v": path})).await?.status, 200);
    }
    let acme_api = agent.client_for(&agent.issue_cert("api", Some("acme")).await?)?;
    let globex_api = agent.client_for(&agent.issue_cert("api", Some("globex")).await?)?;
    let plain_api = agent.client_for(&agent.issue_cert("api", None).await?)?;

    let expect = [
        (&acme_api, "tenants/acme/shared/db", 200),
        (&acme_api, "tenants/acme/apps/api/key", 200),
        (&acme_api, "tenants/acme/apps/billing/key", 403),
        (&acme_api, "tenants/globex/shared/db", 403),
        (&globex_api, "tenants/globex/shared/db", 200),
        (&globex_api, "tenants/acme/shared/db", 403),
        (&globex_api, "tenants/acme/apps/api/key", 403),
        (&plain_api, "tenants/acme/apps/api/key", 403),
        (&plain_api, "tenants/acme/shared/db", 403),
    ];
    assert_reads(&expect).await?;
    Ok(())
}

#[tokio::test]
async fn policy_rules_added_to_the_config_grant_exactly_what_they_name() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .allow(
            "spiffe://latchkey.local/app/deployer",
            &["deploy/**"],
            &["read", "write", "list"],
        )
        .start()
        .await?;
    let deployer = agent.client_for(&agent.issue_cert("deployer", None).await?)?;
    let put = deployer
        .write("deploy/prod/token", json!({"t": "deploy-token"}))
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        deployer
            .read("deploy/prod/token")
            .await?
            .field("t")
            .as_deref(),
        Some("deploy-token")
    );
    assert_eq!(
        deployer.list("deploy/").await?.paths(),
        vec!["deploy/prod/token".to_owned()]
    );

    let outside = deployer.write("billing/db", json!({"p": "x"})).await?;
    assert_eq!(outside.status, 403, "{}", outside.body);
    assert_eq!(outside.code().as_deref(), Some("forbidden"));
    assert_eq!(
        agent.admin()?.read("billing/db").await?.status,
        404,
        "nothing was written"
    );
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_the_agents_ca_naming_another_trust_domain_gets_bad_identity(
) -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "pw"}))
        .await?;
    let outsider = foreign::from_agent_ca(
        agent.dir(),
        &agent.scratch().join("outsider"),
        "outsider",
        "spiffe://evil.example/admin/admin",
    )?;
    let answer = agent.client_for(&outsider)?.read("apps/web/db").await?;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        answer.code().as_deref(),
        Some("bad_identity"),
        "{}",
        answer.body
    );
    assert!(!answer.body.contains("\"pw\""));
    let record: Value = agent
        .wait_for_audit("the refused identity", |r| {
            r["outcome"] == "denied" && r["code"] == "bad_identity"
        })
        .await?;
    assert_eq!(record["status"], 403, "{record}");
    Ok(())
}

/// Reads each `(client, path, status)` case: a 200 serves the path's own value (the
/// tests write `{"v": path}`), anything else is a `forbidden` refusal.
async fn assert_reads(cases: &[(&Api, &str, u16)]) -> anyhow::Result<()> {
    for (n, (api, path, status)) in cases.iter().enumerate() {
        let answer = api.read(path).await?;
        assert_eq!(answer.status, *status, "case {n}, {path}: {}", answer.body);
        if *status == 200 {
            assert_eq!(answer.field("v").as_deref(), Some(*path));
        } else {
            assert_eq!(
                answer.code().as_deref(),
                Some("forbidden"),
                "case {n}, {path}: {}",
                answer.body
            );
        }
    }
    Ok(())
}
