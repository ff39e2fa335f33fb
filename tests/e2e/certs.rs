//! Certificates renew themselves: an app renews its still-valid certificate with
//! `latchkey cert renew`, the agent renews its own server certificate once a third of
//! its lifetime is left, and a server certificate replaced on disk is served to new
//! handshakes without a restart (read back with `openssl s_client`, not our client).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context as _;
use latchkey::identity::ca::{Ca, WriteMode};
use latchkey::identity::renew::Validity;

use crate::harness::{eventually, Agent};

fn validity(path: &std::path::Path) -> anyhow::Result<Validity> {
    Validity::of_pem(&std::fs::read(path)?).context("a certificate")
}

fn serial(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(latchkey::identity::ca::serial_of_pem(
        &std::fs::read_to_string(path)?,
    )?)
}

/// The serial of the certificate the agent presents on a new TCP handshake, as
/// `openssl s_client` and `openssl x509` read it.
async fn presented_serial(agent: &Agent) -> anyhow::Result<String> {
    let addr = agent.tcp_addr().context("a TCP listener")?;
    let admin = agent.admin_identity();
    let mut shake = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(agent.ca_path())
        .arg("-cert")
        .arg(&admin.cert)
        .arg("-key")
        .arg(&admin.key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = String::new();
    if let Some(mut stdout) = shake.stdout.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out).await?;
    }
    let _ = shake.wait().await;
    let pem_start = out
        .find("-----BEGIN CERTIFICATE-----")
        .context("a certificate")?;
    let pem_end = out.find("-----END CERTIFICATE-----").context("its end")? + 25;
    Ok(latchkey::identity::ca::serial_of_pem(
        &out[pem_start..pem_end],
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_renews_its_certificate_for_the_same_identity() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let web = agent.issue_cert("web", None).await?;
    let before = validity(&web.cert)?;
    let old_serial = serial(&web.cert)?;
    let out = agent
        .cli(["cert", "renew"])
        .presenting(&web)
        .run()
        .await?
        .success()?;
    assert!(
        out.stdout.contains("spiffe://latchkey.local/app/web"),
        "{}",
        out.stdout
    );
    let after = validity(&web.cert)?;
    assert_ne!(serial(&web.cert)?, old_serial, "a new certificate");
    assert_eq!(after.lifetime(), before.lifetime(), "the same lifetime");
    assert!(after.not_after >= before.not_after);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&web.key)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the new key is private");
    // The renewed pair works, as the same identity.
    let who = agent.client_for(&web)?.get("/v1/whoami").await?;
    assert_eq!(
        who.json()["id"],
        "spiffe://latchkey.local/app/web",
        "{}",
        who.body
    );
    agent
        .wait_for_audit("the renewal", |r| {
            r["op"] == "cert-renew" && r["status"] == 200
        })
        .await?;

    // Over the API without a signing request, the agent makes the key too.
    let api = agent.client_for(&web)?;
    let made = api
        .request(http::Method::POST, "/v1/cert/renew", None)
        .await?;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.json()["key_pem"]
        .as_str()
        .is_some_and(|k| k.contains("PRIVATE KEY")));
    // A signing request that does not verify is refused.
    let forged = serde_json::json!({
        "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    });
    let forged = api
        .request(
            http::Method::POST,
            "/v1/cert/renew",
            Some(serde_json::to_vec(&forged)?),
        )
        .await?;
    assert_eq!(forged.status, 400, "{}", forged.body);

    // A revoked certificate cannot renew itself: the handshake refuses it. (The
    // pair on disk is the renewed one, so revoke that one.)
    let current = web.cert.display().to_string();
    agent
        .cli(["cert", "revoke", "--cert", current.as_str()])
        .run()
        .await?
        .success()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = agent.cli(["cert", "renew"]).presenting(&web).run().await?;
    assert_ne!(refused.code, 0, "{refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_its_server_certificate_and_serves_a_replaced_one() -> anyhow::Result<()> {
    let mut agent = Agent::builder().tcp().start().await?;
    let server_pem = agent.dir().join("server/server.pem");
    let server_key = agent.dir().join("server/server.key");
    let ca = Ca::load(agent.dir())?;
    let names = ["localhost".to_owned()];
    let ips = [IpAddr::V4(Ipv4Addr::LOCALHOST)];

    // A server certificate close to its end: renewed at the next start.
    agent.stop().await?;
    ca.issue_server(&names, &ips, Duration::from_secs(60))?
        .write(&server_pem, &server_key, WriteMode::Replace)?;
    let short = serial(&server_pem)?;
    agent.start().await?;
    eventually(
        "the server certificate renewed",
        Duration::from_secs(15),
        || async { (serial(&server_pem).ok()? != short).then_some(()) },
    )
    .await?;
    let renewed = validity(&server_pem)?;
    assert!(renewed.dns.contains(&"localhost".to_owned()), "{renewed:?}");
    assert!(!renewed.due(latchkey::clock::unix_now()), "{renewed:?}");
    let served = eventually(
        "the renewed certificate served",
        Duration::from_secs(15),
        || async {
            let presented = presented_serial(&agent).await.ok()?;
            (presented == serial(&server_pem).ok()?).then_some(presented)
        },
    )
    .await?;
    assert_ne!(served, short);

    // Replaced on disk while running (an operator's own renewal): served within
    // seconds, no restart.
    ca.issue_server(&names, &ips, Duration::from_secs(30 * 24 * 3600))?
        .write(&server_pem, &server_key, WriteMode::Replace)?;
    let replaced = serial(&server_pem)?;
    eventually(
        "the replaced certificate served",
        Duration::from_secs(15),
        || async { (presented_serial(&agent).await.ok()? == replaced).then_some(()) },
    )
    .await?;
    assert!(agent.admin()?.health().await?.status == 200);
    Ok(())
}

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn certificate_expiry_is_a_metric_and_an_expired_certificate_is_announced(
) -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    agent
        .cli(["cert", "issue", "--app", "brief", "--ttl", "2s"])
        .run()
        .await?
        .success()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A write makes the expiry task look again (it also looks every minute).
    admin
        .write("apps/touch", serde_json::json!({ "v": "1" }))
        .await?;
    let record = agent
        .wait_for_audit("the expired certificate", |r| {
            r["op"] == "certificate-expired" && r["path"] == "app/brief"
        })
        .await?;
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains("spiffe://latchkey.local/app/brief")),
        "{record}"
    );
    let text = admin.get("/metrics").await?.body;
    let server = sample(
        &text,
        "latchkey_certificate_expiry_seconds{certificate=\"server\"}",
    )
    .context(text.clone())?;
    assert!(server > 300.0 * 86400.0, "{text}");
    let ca = sample(
        &text,
        "latchkey_certificate_expiry_seconds{certificate=\"ca\"}",
    )
    .context(text.clone())?;
    assert!(ca > server, "{text}");
    let brief = sample(
        &text,
        "latchkey_certificate_expiry_seconds{certificate=\"spiffe://latchkey.local/app/brief\"}",
    )
    .context(text.clone())?;
    assert!(brief <= 0.0, "{text}");
    // Announced once: another pass sends nothing new.
    admin
        .write("apps/touch", serde_json::json!({ "v": "2" }))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let announced = agent
        .audit_records()?
        .into_iter()
        .filter(|r| r["op"] == "certificate-expired")
        .count();
    assert_eq!(announced, 1);
    Ok(())
}

#[tokio::test]
async fn cert_issue_reissues_the_server_and_admin_certificates_in_place() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let agent = Agent::builder().tcp().start().await?;
    let server_pem = agent.dir().join("server/server.pem");
    let before = serial(&server_pem)?;
    let names = validity(&server_pem)?;
    let out = agent
        .cli(["cert", "issue", "--server", "--ttl", "90d"])
        .run()
        .await?
        .success()?;
    assert!(out.stdout.contains("identity: server"), "{}", out.stdout);
    let after = serial(&server_pem)?;
    assert_ne!(after, before);
    let reissued = validity(&server_pem)?;
    assert_eq!(
        (reissued.dns, reissued.ips),
        (names.dns, names.ips),
        "same names"
    );
    let days = (reissued.not_after - latchkey::clock::unix_now()) / 86400;
    assert!((89..=90).contains(&days), "{days}");
    let key = std::fs::metadata(agent.dir().join("server/server.key"))?;
    assert_eq!(key.mode() & 0o777, 0o600);
    eventually(
        "the reissued certificate served",
        Duration::from_secs(15),
        || async { (presented_serial(&agent).await.ok()? == after).then_some(()) },
    )
    .await?;

    // The admin certificate, reissued over its files: the new pair works.
    let admin_pem = agent.dir().join("clients/admin.pem");
    let old_admin = serial(&admin_pem)?;
    agent
        .cli(["cert", "issue", "--admin", "admin"])
        .run()
        .await?
        .success()?;
    assert_ne!(serial(&admin_pem)?, old_admin);
    assert_eq!(agent.admin()?.health().await?.status, 200);
    // One of --app, --admin, --server.
    let none = agent.cli(["cert", "issue"]).run().await?;
    assert_eq!(none.code, 2, "a usage error: {}", none.stderr);
    Ok(())
}

#[tokio::test]
async fn health_counts_certificates_and_answers_degraded_with_429_like_vault() -> anyhow::Result<()>
{
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    let fresh = admin.health().await?;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let body = fresh.json();
    assert_eq!(body["certificates"]["status"], "ok", "{body}");
    // The server's, the CA's and the admin certificate init issued.
    assert_eq!(body["certificates"]["watched"], 3, "{body}");
    assert!(
        body["certificates"]["server_expires_in_seconds"]
            .as_i64()
            .is_some_and(|s| s > 300 * 86400),
        "{body}"
    );

    // An app certificate that ends within the week: still serving, degraded.
    agent
        .cli(["cert", "issue", "--app", "soon", "--ttl", "2d"])
        .run()
        .await?
        .success()?;
    let degraded = admin.health().await?;
    assert_eq!(degraded.status, 429, "{}", degraded.body);
    let body = degraded.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        body["certificates"]["expiring"][0]["certificate"], "spiffe://latchkey.local/app/soon",
        "{body}"
    );
    // A load balancer that keeps degraded agents in rotation says so, as with Vault.
    assert_eq!(admin.get("/v1/health?degradedcode=200").await?.status, 200);
    assert_eq!(admin.get("/v1/health?degradedcode=nope").await?.status, 400);
    // Revoked, it is no longer watched.
    let serial = latchkey::identity::ca::serial_of_pem(&std::fs::read_to_string(
        agent.dir().join("clients/soon.pem"),
    )?)?;
    agent
        .cli(["cert", "revoke", "--serial", &serial])
        .run()
        .await?
        .success()?;
    assert_eq!(admin.health().await?.status, 200);
    Ok(())
}

/// The issuer of the certificate at `path`, as `openssl x509` prints it.
fn issuer_of(path: &std::path::Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in"])
        .arg(path)
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl x509 {}", path.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_with_an_overlap_and_no_client_sees_a_failed_handshake() -> anyhow::Result<()>
{
    let agent = Agent::builder().tcp().start().await?;
    let web = agent.issue_cert("web", None).await?;
    let old_ca = issuer_of(&web.cert)?;
    assert_eq!(agent.client_for(&web)?.get("/v1/whoami").await?.status, 200);

    // 1. Stage: both CAs are trusted (the agent picks the bundle up by itself).
    let staged = agent
        .cli(["ca", "rotate", "--stage"])
        .run()
        .await?
        .success()?;
    assert!(staged.stdout.contains("--activate"), "{}", staged.stdout);
    let bundle = std::fs::read_to_string(agent.ca_path())?;
    assert_eq!(latchkey::identity::ca::pem_blocks(&bundle).len(), 2);
    eventually(
        "the agent trusts the bundle",
        Duration::from_secs(10),
        || async { (!agent.log_lines_with("ca bundle reloaded").is_empty()).then_some(()) },
    )
    .await?;

    // Reads go on through every later step, over fresh handshakes each time
    // (clients trusting the bundle), and none may fail.
    let reader = {
        let (tls, endpoint) = (
            agent.tls_for(&agent.admin_identity())?,
            agent.endpoint(crate::harness::Via::Tcp)?,
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut served = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let api = crate::harness::api::Api::new(latchkey::client::Client::new(
                    endpoint.clone(),
                    tls.clone(),
                ));
                let answer = api.get("/v1/whoami").await?;
                anyhow::ensure!(answer.status == 200, "a read failed: {}", answer.body);
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(served)
        });
        (stop, task)
    };

    // 2. Activate: the new CA issues, the server certificate is reissued by it and
    // served within a second; the old CA's app certificate still works.
    let activated = agent
        .cli(["ca", "rotate", "--activate"])
        .run()
        .await?
        .success()?;
    assert!(
        activated.stdout.contains("--finish"),
        "{}",
        activated.stdout
    );
    let new_server = serial(&agent.dir().join("server/server.pem"))?;
    eventually(
        "the new server certificate served",
        Duration::from_secs(10),
        || async { (presented_serial(&agent).await.ok()? == new_server).then_some(()) },
    )
    .await?;
    assert_ne!(issuer_of(&agent.dir().join("server/server.pem"))?, old_ca);
    assert_eq!(agent.client_for(&web)?.get("/v1/whoami").await?.status, 200);

    // 3. Finish is refused while certificates of the old CA are in use...
    let early = agent.cli(["ca", "rotate", "--finish"]).run().await?;
    assert_ne!(early.code, 0, "{early:?}");
    assert!(early.stderr.contains("still valid"), "{}", early.stderr);
    let status = agent.cli(["ca", "status"]).run().await?.success()?;
    assert!(status.stdout.contains("still trusted"), "{}", status.stdout);
    // ...and allowed once they are renewed into the new one.
    agent
        .cli(["cert", "renew"])
        .presenting(&web)
        .run()
        .await?
        .success()?;
    agent
        .cli(["cert", "issue", "--admin", "admin"])
        .run()
        .await?
        .success()?;
    assert_ne!(issuer_of(&web.cert)?, old_ca, "web renewed into the new CA");
    let (stop, task) = reader;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = task.await??;
    assert!(served > 0);

    agent
        .cli(["ca", "rotate", "--finish"])
        .run()
        .await?
        .success()?;
    let bundle = std::fs::read_to_string(agent.ca_path())?;
    assert_eq!(latchkey::identity::ca::pem_blocks(&bundle).len(), 1);
    eventually(
        "the renewed pairs work with the one CA",
        Duration::from_secs(10),
        || async {
            let web = agent.client_for(&web).ok()?.get("/v1/whoami").await.ok()?;
            let admin = agent.admin().ok()?.get("/v1/whoami").await.ok()?;
            (web.status == 200 && admin.status == 200).then_some(())
        },
    )
    .await?;
    Ok(())
}
