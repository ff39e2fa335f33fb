//! The upstream clients against real servers: OpenBao (`bao server -dev`) and AWS
//! Secrets Manager (`moto_server`), each started on a loopback port by the test.
//!
//! Secrets are written with each server's own API (or the `bao`/moto HTTP API with
//! the root token) and read back through `latchkey::upstream`, and the other way
//! round, so a test passes only if both sides agree.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use latchkey::path::{Prefix, SecretPath};
use latchkey::secret::{Fields, SecretBytes, SecretString};
use latchkey::upstream::aws::{AwsSecretsManager, Credentials, Stage};
use latchkey::upstream::config::{AwsConfig, OpenBaoConfig};
use latchkey::upstream::openbao::OpenBao as BaoClient;
use latchkey::upstream::{Error, Upstream};
use serde_json::json;

use crate::moto::{Moto, REGION};
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{bao_upstream, sync_section, token_auth};

fn path(s: &str) -> SecretPath {
    SecretPath::parse(s).expect("valid path")
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), SecretString::from(*v)))
        .collect()
}

fn field<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
    f.get(name).map(SecretString::expose)
}

/// A client for `bao` from TOML lines added to the basic section.
fn bao_client(bao: &OpenBao, extra: &str) -> anyhow::Result<BaoClient> {
    let text = format!(
        "addresses = [{:?}]\nbreaker_threshold = 1\n{extra}",
        bao.address
    );
    let config: OpenBaoConfig = toml::from_str(&text).context("test config")?;
    Ok(BaoClient::from_config(&config)?)
}

/// A client for `bao` that logs in with the inline `auth` table.
fn bao_client_as(bao: &OpenBao, auth: &str) -> anyhow::Result<BaoClient> {
    bao_client(bao, &format!("auth = {auth}"))
}

/// The `auth` line for the dev server's root token.
fn root_auth() -> String {
    format!("auth = {}", token_auth(ROOT_TOKEN))
}

/// The inline `auth` table for a JWT login as the role `agent` with the JWT in `file`.
fn jwt_auth(file: &Path) -> String {
    format!(
        "{{ method = \"jwt\", role = \"agent\", jwt_file = {:?} }}",
        file.display().to_string()
    )
}

/// What `client` lists under `prefix`: each path and its version, sorted.
async fn versions(client: &BaoClient, prefix: &Prefix) -> anyhow::Result<Vec<(String, u64)>> {
    let mut listed: Vec<_> = client
        .list(prefix)
        .await?
        .into_iter()
        .map(|m| (m.path.to_string(), m.version))
        .collect();
    listed.sort();
    Ok(listed)
}

#[tokio::test]
async fn openbao_read_list_metadata_follow_the_server() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv(
        "billing/db",
        json!({"user": "app", "password": "pw1", "port": 5432}),
    )
    .await?;
    bao.put_kv("billing/api/key", json!({"token": "t1"}))
        .await?;
    bao.put_kv("billing-old/db", json!({"user": "old"})).await?;
    bao.put_kv("other", json!({"x": "y"})).await?;
    let client = bao_client(&bao, &root_auth())?;

    let secret = client.read(&path("billing/db")).await?.context("exists")?;
    assert_eq!(secret.version, 1);
    assert_eq!(field(&secret.fields, "password"), Some("pw1"));
    assert_eq!(field(&secret.fields, "port"), Some("5432"));
    assert!(secret.updated_at > 1_600_000_000);
    assert!(client.read(&path("billing/none")).await?.is_none());

    assert_eq!(
        versions(&client, &Prefix::parse("billing")?).await?,
        vec![
            ("billing/api/key".to_owned(), 1),
            ("billing/db".to_owned(), 1)
        ]
    );
    assert_eq!(client.list(&Prefix::all()).await?.len(), 4);
    assert_eq!(client.uses_detailed_metadata(), Some(true));
    assert!(client.list(&Prefix::parse("nothing/")?).await?.is_empty());

    // A change upstream shows in metadata and in the next list.
    bao.put_kv("billing/db", json!({"user": "app", "password": "pw2"}))
        .await?;
    let meta = client
        .metadata(&path("billing/db"))
        .await?
        .context("exists")?;
    assert_eq!(meta.version, 2);
    let secret = client.read(&path("billing/db")).await?.context("exists")?;
    assert_eq!(
        (secret.version, field(&secret.fields, "password")),
        (2, Some("pw2"))
    );

    // A soft delete of the current version reads as absent and is listed as a
    // tombstone: deleted by name, which the sync's deletion guard lets through.
    bao.ok("DELETE", "secret/data/billing/db", None).await?;
    assert!(client.read(&path("billing/db")).await?.is_none());
    assert!(client.metadata(&path("billing/db")).await?.is_none());
    let listed = client.list(&Prefix::parse("billing/")?).await?;
    let mut shown: Vec<(String, bool)> = listed
        .iter()
        .map(|m| (m.path.to_string(), m.deleted))
        .collect();
    shown.sort();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown.contains(&("billing/db".to_owned(), true)),
        "{shown:?}"
    );
    assert_eq!(listed.iter().filter(|m| !m.deleted).count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_write_cas_and_delete_reach_the_server() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    // Used the way sync and the admin API hold it: behind the trait object.
    let client: std::sync::Arc<dyn Upstream> = std::sync::Arc::new(bao_client(&bao, &root_auth())?);
    assert_eq!(client.name(), "openbao");
    let p = path("app/db");

    let v1 = client
        .write(&p, &fields(&[("password", "one")]), Some(0))
        .await?;
    assert_eq!(v1, 1);
    let seen = bao.ok("GET", "secret/data/app/db", None).await?;
    assert_eq!(seen["data"]["data"]["password"], "one");

    // Must-not-exist on an existing secret is a conflict.
    let err = client
        .write(&p, &fields(&[("password", "x")]), Some(0))
        .await
        .expect_err("exists");
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 0,
                current: Some(1),
                ..
            }
        ),
        "{err}"
    );

    // Two writers race on version 1: exactly one wins, nothing is lost.
    let (fa, fb) = (
        fields(&[("password", "from-a")]),
        fields(&[("password", "from-b")]),
    );
    let (a, b) = tokio::join!(
        client.write(&p, &fa, Some(1)),
        client.write(&p, &fb, Some(1)),
    );
    let (winner, loser) = match (a, b) {
        (Ok(v), Err(e)) => (("from-a", v), e),
        (Err(e), Ok(v)) => (("from-b", v), e),
        other => panic!("exactly one write must win: {other:?}"),
    };
    assert_eq!(winner.1, 2);
    assert!(
        matches!(
            loser,
            Error::Conflict {
                expected: 1,
                current: Some(2),
                ..
            }
        ),
        "{loser}"
    );
    assert!(!loser.is_transient());
    let now = client.read(&p).await?.context("exists")?;
    assert_eq!(
        (now.version, field(&now.fields, "password")),
        (2, Some(winner.0))
    );

    // Unconditional write, then delete removes every version.
    assert_eq!(
        client
            .write(&p, &fields(&[("password", "three")]), None)
            .await?,
        3
    );
    client.delete(&p).await?;
    let (status, _) = bao.api("GET", "secret/metadata/app/db", None).await?;
    assert_eq!(status, 404);
    assert!(client.read(&p).await?.is_none());
    client.delete(&p).await?; // deleting again is fine
    Ok(())
}

#[tokio::test]
async fn openbao_list_falls_back_when_detailed_metadata_is_denied() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    let policy = r#"
        path "secret/data/*" { capabilities = ["read"] }
        path "secret/metadata/*" { capabilities = ["read", "list"] }
        path "secret/metadata/" { capabilities = ["list"] }
    "#;
    bao.policy("meta-only", policy).await?;
    let token = bao
        .create_token(json!({"policies": ["meta-only"], "ttl": "1h"}))
        .await?;
    bao.put_kv("a/one", json!({"v": "1"})).await?;
    bao.put_kv("a/two", json!({"v": "2"})).await?;
    bao.put_kv("a/two", json!({"v": "3"})).await?;
    let client = bao_client_as(&bao, &token_auth(&token))?;
    assert_eq!(
        versions(&client, &Prefix::all()).await?,
        vec![("a/one".to_owned(), 1), ("a/two".to_owned(), 2)]
    );
    assert_eq!(client.uses_detailed_metadata(), Some(false));
    Ok(())
}

#[tokio::test]
async fn openbao_path_template_scopes_to_the_tenant() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("tenants/acme/exchanges/binance", json!({"api_key": "k"}))
        .await?;
    bao.put_kv("tenants/other/exchanges/kraken", json!({"api_key": "o"}))
        .await?;
    let client = bao_client(
        &bao,
        &format!(
            "path_template = \"tenants/{{tenant}}/{{path}}\"\ntenant = \"acme\"\n{}",
            root_auth()
        ),
    )?;
    let listed = client.list(&Prefix::all()).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, path("exchanges/binance"));
    let secret = client
        .read(&path("exchanges/binance"))
        .await?
        .context("exists")?;
    assert_eq!(field(&secret.fields, "api_key"), Some("k"));
    assert!(client.read(&path("exchanges/kraken")).await?.is_none());
    client
        .write(&path("exchanges/new"), &fields(&[("k", "v")]), Some(0))
        .await?;
    bao.ok("GET", "secret/data/tenants/acme/exchanges/new", None)
        .await?;
    Ok(())
}

#[tokio::test]
async fn openbao_approle_login_and_relogin_after_revocation() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.policy_rw("rw").await?;
    // The secret id file ends in a newline, as files written by hand do.
    let approle = bao.approle("agent", "rw", "\n").await?;
    bao.put_kv("app/db", json!({"password": "pw"})).await?;
    let client = bao_client_as(&bao, &approle.auth())?;
    let secret = client.read(&path("app/db")).await?.context("exists")?;
    assert_eq!(field(&secret.fields, "password"), Some("pw"));

    // Revoke every token the approle issued: the next read gets a 403, logs in
    // again and succeeds.
    let mut revoked = 0;
    for accessor in bao.accessors_from("auth/approle/login").await? {
        bao.ok(
            "POST",
            "auth/token/revoke-accessor",
            Some(json!({"accessor": accessor})),
        )
        .await?;
        revoked += 1;
    }
    assert_eq!(revoked, 1);
    let secret = client.read(&path("app/db")).await?.context("exists")?;
    assert_eq!(field(&secret.fields, "password"), Some("pw"));

    // A wrong secret id is a login error, not a transient one.
    std::fs::write(&approle.secret_file, "not-the-secret-id")?;
    let bad = bao_client_as(&bao, &approle.auth())?;
    let err = bad.read(&path("app/db")).await.expect_err("bad secret id");
    assert!(!err.is_transient(), "{err}");
    assert!(!err.to_string().contains("not-the-secret-id"));
    Ok(())
}

/// A compact ES256 JWT signed with a P-256 key the test made.
fn es256_jwt(key: &rcgen::KeyPair, claims: &serde_json::Value) -> anyhow::Result<String> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(serde_json::to_vec(&json!({"alg": "ES256", "typ": "JWT"}))?);
    let payload = b64.encode(serde_json::to_vec(claims)?);
    let signing_input = format!("{header}.{payload}");
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let signature = pair
        .sign(&rng, signing_input.as_bytes())
        .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
    Ok(format!(
        "{signing_input}.{}",
        b64.encode(signature.as_ref())
    ))
}

#[tokio::test]
async fn openbao_jwt_login_with_a_key_pair_the_test_made() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.policy_rw("rw").await?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    bao.enable_auth("jwt").await?;
    bao.ok(
        "POST",
        "auth/jwt/config",
        Some(json!({
            "jwt_validation_pubkeys": [key.public_key_pem()],
            "jwt_supported_algs": ["ES256"],
            "bound_issuer": "latchkey-test",
        })),
    )
    .await?;
    bao.ok(
        "POST",
        "auth/jwt/role/agent",
        Some(json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_audiences": ["latchkey"],
            "token_policies": ["rw"],
            "token_ttl": "1h",
        })),
    )
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let jwt = es256_jwt(
        &key,
        &json!({"iss": "latchkey-test", "sub": "system:serviceaccount:apps:billing",
                "aud": "latchkey", "iat": now, "nbf": now - 5, "exp": now + 600}),
    )?;
    let dir = tempfile::tempdir()?;
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &jwt)?;
    bao.put_kv("app/jwt", json!({"v": "1"})).await?;
    let client = bao_client_as(&bao, &jwt_auth(&jwt_file))?;
    let secret = client.read(&path("app/jwt")).await?.context("exists")?;
    assert_eq!(field(&secret.fields, "v"), Some("1"));
    assert_eq!(
        client
            .write(&path("app/jwt"), &fields(&[("v", "2")]), Some(1))
            .await?,
        2
    );

    // The agent itself, configured the same way, logs in with the JWT and serves.
    let agent = crate::harness::Agent::builder()
        .append(&bao_upstream(&bao.address, &jwt_auth(&jwt_file), ""))
        .append(&sync_section("1s", "24h", 4))
        .start()
        .await?;
    let served = agent.admin()?.read("app/jwt").await?;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json()["fields"]["v"], "2", "{}", served.body);
    drop(agent);

    // A JWT for another audience is refused at login.
    std::fs::write(
        &jwt_file,
        es256_jwt(
            &key,
            &json!({"iss": "latchkey-test", "sub": "x", "aud": "someone-else",
                    "iat": now, "exp": now + 600}),
        )?,
    )?;
    let other = bao_client_as(&bao, &jwt_auth(&jwt_file))?;
    let err = other
        .read(&path("app/jwt"))
        .await
        .expect_err("wrong audience");
    assert!(!err.is_transient(), "{err}");
    Ok(())
}

#[tokio::test]
async fn openbao_token_is_renewed_before_it_expires() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.policy_rw("rw").await?;
    let token = bao
        .create_token(
            json!({"policies": ["rw"], "ttl": "4s", "explicit_max_ttl": "5m",
                    "renewable": true, "no_parent": true}),
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    bao.put_kv("app/renew", json!({"v": "1"})).await?;
    let client = bao_client_as(
        &bao,
        &format!(
            "{{ method = \"token\", token_file = {:?} }}",
            token_file.display().to_string()
        ),
    )?;
    // Read for longer than the token's first TTL; every read must succeed, which
    // only happens if the client renewed it.
    let start = Instant::now();
    let mut past_ttl = 0;
    while start.elapsed() < Duration::from_secs(7) {
        let secret = client.read(&path("app/renew")).await?.context("exists")?;
        assert_eq!(field(&secret.fields, "v"), Some("1"));
        if start.elapsed() > Duration::from_secs(5) {
            past_ttl += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(past_ttl > 0, "no read after the token's first TTL");
    let lookup = bao
        .ok("POST", "auth/token/lookup", Some(json!({"token": token})))
        .await?;
    assert!(lookup["data"]["ttl"].as_u64().context("ttl")? > 0);
    // An explicit renewal reports the new lease.
    let lease = client.renew_now().await?;
    assert!(
        lease > Duration::from_secs(2) && lease <= Duration::from_secs(4),
        "{lease:?}"
    );
    Ok(())
}

#[tokio::test]
async fn openbao_fails_over_from_a_dead_address() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.put_kv("app/db", json!({"v": "live"})).await?;
    let dead = format!("http://127.0.0.1:{}", crate::spawn::free_port()?);
    let config: OpenBaoConfig = toml::from_str(&format!(
        "addresses = [{dead:?}, {:?}]\nbreaker_threshold = 1\nbreaker_open_for = \"30s\"\n{}",
        bao.address,
        root_auth()
    ))?;
    let client = BaoClient::from_config(&config)?;
    let secret = client.read(&path("app/db")).await?.context("exists")?;
    assert_eq!(field(&secret.fields, "v"), Some("live"));
    let open = client.open_addresses();
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].starts_with(&dead), "{open:?}");
    // The dead node is skipped now: reads stay fast.
    let start = Instant::now();
    for _ in 0..5 {
        client.read(&path("app/db")).await?.context("exists")?;
    }
    let bound = crate::harness::pace::scaled(Duration::from_secs(2));
    assert!(
        start.elapsed() < bound,
        "5 reads took {:?}, expected under {bound:?} ({})",
        start.elapsed(),
        crate::harness::pace::describe()
    );

    // With every address down, the error is transient and names the upstream.
    let mut bao = bao;
    bao.kill().await?;
    let err = client.read(&path("app/db")).await.expect_err("all down");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("openbao"), "{err}");
    Ok(())
}

#[tokio::test]
async fn openbao_tls_with_the_configured_ca() -> anyhow::Result<()> {
    let bao = OpenBao::start_tls().await?;
    bao.put_kv("app/tls", json!({"v": "over-tls"})).await?;
    let ca = bao.ca_file.clone().context("tls server has a CA")?;
    let client = bao_client(
        &bao,
        &format!("ca_file = {:?}\n{}", ca.display().to_string(), root_auth()),
    )?;
    let secret = client.read(&path("app/tls")).await?.context("exists")?;
    assert_eq!(field(&secret.fields, "v"), Some("over-tls"));
    // Without the CA the server's certificate is not trusted.
    let untrusting = bao_client(&bao, &root_auth())?;
    assert!(untrusting.read(&path("app/tls")).await.is_err());
    Ok(())
}

#[tokio::test]
async fn openbao_transit_wraps_and_unwraps_a_data_key() -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    bao.transit_key("latchkey", json!({})).await?;
    let client = bao_client(
        &bao,
        &format!("transit = {{ key = \"latchkey\" }}\n{}", root_auth()),
    )?;
    let transit = client
        .configured_transit()
        .context("transit configured")??;
    assert_eq!(transit.id(), "transit:openbao/transit/latchkey");
    let data_key = SecretBytes::new((0u8..32).collect());
    let wrapped = transit.wrap(&data_key).await?;
    assert!(wrapped.starts_with(b"vault:v1:"), "transit ciphertext");
    assert!(!wrapped.windows(32).any(|w| w == data_key.expose()));
    let unwrapped = transit.unwrap(&wrapped).await?;
    assert_eq!(unwrapped.expose(), data_key.expose());
    // A tampered ciphertext is refused, not silently decrypted.
    let mut tampered = wrapped.clone();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert!(transit.unwrap(&tampered).await.is_err());
    Ok(())
}

async fn aws_client(moto: &Moto, extra: &str) -> anyhow::Result<AwsSecretsManager> {
    let config: AwsConfig = toml::from_str(&format!(
        "region = {REGION:?}\nendpoint_url = {:?}\nrecovery_window_days = 0\n{extra}",
        moto.endpoint
    ))?;
    let credentials = Credentials::new("testing", "testing", None, None, "latchkey-e2e");
    Ok(AwsSecretsManager::from_config_with_credentials(&config, Some(credentials)).await?)
}

#[tokio::test]
async fn aws_get_list_describe_follow_moto() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    for (name, value) in [
        ("prod/billing/db", r#"{"user":"app","password":"pw1"}"#),
        ("prod/billing/token", "plain-token"),
        ("prod/other", "x"),
        ("dev/billing/db", "y"),
    ] {
        moto.ok("CreateSecret", json!({"Name": name, "SecretString": value}))
            .await?;
    }
    let client = aws_client(&moto, "name_template = \"prod/{path}\"").await?;

    let db = client.read(&path("billing/db")).await?.context("exists")?;
    assert_eq!(field(&db.fields, "user"), Some("app"));
    assert_eq!(field(&db.fields, "password"), Some("pw1"));
    let token = client
        .read(&path("billing/token"))
        .await?
        .context("exists")?;
    assert_eq!(field(&token.fields, "value"), Some("plain-token"));
    assert!(client.read(&path("billing/none")).await?.is_none());

    let mut listed: Vec<_> = client
        .list(&Prefix::parse("billing/")?)
        .await?
        .into_iter()
        .map(|m| m.path.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["billing/db", "billing/token"]);
    assert_eq!(client.list(&Prefix::all()).await?.len(), 3);

    // Version numbers agree between read, describe and list, and change on a put
    // made by someone else.
    let meta = client
        .metadata(&path("billing/db"))
        .await?
        .context("exists")?;
    assert_eq!(meta.version, db.version);
    let listed_db = client
        .list(&Prefix::parse("billing/db")?)
        .await?
        .pop()
        .context("listed")?;
    assert_eq!(listed_db.version, db.version);
    moto.ok(
        "PutSecretValue",
        json!({"SecretId": "prod/billing/db", "SecretString": r#"{"user":"app","password":"pw2"}"#}),
    )
    .await?;
    let changed = client
        .metadata(&path("billing/db"))
        .await?
        .context("exists")?;
    assert_ne!(changed.version, db.version);
    let db2 = client.read(&path("billing/db")).await?.context("exists")?;
    assert_eq!(field(&db2.fields, "password"), Some("pw2"));
    assert_eq!(db2.version, changed.version);
    let previous = client
        .read_stage(&path("billing/db"), Stage::Previous)
        .await?
        .context("previous")?;
    assert_eq!(field(&previous.fields, "password"), Some("pw1"));
    Ok(())
}

#[tokio::test]
async fn aws_write_cas_stages_and_delete() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let client = aws_client(&moto, "request_timeout = \"5s\"").await?;
    let p = path("app/db");

    let v1 = client
        .write(
            &p,
            &fields(&[("user", "app"), ("password", "one")]),
            Some(0),
        )
        .await?;
    let seen = moto
        .ok("GetSecretValue", json!({"SecretId": "app/db"}))
        .await?;
    let stored: serde_json::Value =
        serde_json::from_str(seen["SecretString"].as_str().context("string")?)?;
    assert_eq!(stored, json!({"user": "app", "password": "one"}));

    // A writer that saw v1 wins; one still holding v1 afterwards loses.
    let v2 = client
        .write(&p, &fields(&[("password", "two")]), Some(v1))
        .await?;
    assert!(v2 > v1, "versions grow: {v1} -> {v2}");
    let err = client
        .write(&p, &fields(&[("password", "stale")]), Some(v1))
        .await
        .expect_err("stale version");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let err = client
        .write(&p, &fields(&[("password", "again")]), Some(0))
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::Conflict { expected: 0, .. }), "{err}");
    let now = client.read(&p).await?.context("exists")?;
    assert_eq!(
        (now.version, field(&now.fields, "password")),
        (v2, Some("two"))
    );

    // A plain single value round-trips as a plain string.
    let plain = path("app/token");
    client
        .write(&plain, &fields(&[("value", "tok")]), None)
        .await?;
    let seen = moto
        .ok("GetSecretValue", json!({"SecretId": "app/token"}))
        .await?;
    assert_eq!(seen["SecretString"], "tok");

    // Staged rotation: pending is invisible to readers of AWSCURRENT until promoted,
    // and staging or promoting on a version that is no longer current is a conflict.
    let err = client
        .stage(&p, &fields(&[("password", "three")]), v2 - 1)
        .await
        .expect_err("stale base");
    assert!(err.is_conflict(), "{err}");
    let v3 = client
        .stage(&p, &fields(&[("password", "three")]), v2)
        .await?
        .context("AWS has stages")?;
    let current = client.read(&p).await?.context("exists")?;
    assert_eq!(field(&current.fields, "password"), Some("two"));
    let pending = client
        .read_stage(&p, Stage::Pending)
        .await?
        .context("pending")?;
    assert_eq!(
        (pending.version, field(&pending.fields, "password")),
        (v3, Some("three"))
    );
    let err = client
        .promote(&p, v3, v2 + 1)
        .await
        .expect_err("stale base");
    assert!(err.is_conflict(), "{err}");
    client.promote(&p, v3, v2).await?;
    // Promoting again is success (an answer lost in a crash).
    client.promote(&p, v3, v2).await?;
    let current = client.read(&p).await?.context("exists")?;
    assert_eq!(
        (current.version, field(&current.fields, "password")),
        (v3, Some("three"))
    );
    let previous = client
        .read_stage(&p, Stage::Previous)
        .await?
        .context("previous")?;
    assert_eq!(field(&previous.fields, "password"), Some("two"));
    assert!(client.read_stage(&p, Stage::Pending).await?.is_none());

    // Delete is reflected on the server and in reads and lists.
    client.delete(&p).await?;
    let (status, answer) = moto
        .call("GetSecretValue", json!({"SecretId": "app/db"}))
        .await?;
    assert_ne!(status, 200);
    assert_eq!(answer["__type"], "ResourceNotFoundException");
    assert!(client.read(&p).await?.is_none());
    let remaining: Vec<_> = client
        .list(&Prefix::all())
        .await?
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(remaining, vec![path("app/token")]);
    client.delete(&p).await?;
    Ok(())
}

#[tokio::test]
async fn aws_check_and_set_lets_exactly_one_of_racing_writers_win() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let client = aws_client(&moto, "request_timeout = \"5s\"").await?;
    let p = path("race/key");
    client
        .write(&p, &fields(&[("key", "base")]), Some(0))
        .await?;
    for round in 0..3 {
        let base = client.read(&p).await?.context("exists")?.version;
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..6 {
            let (client, p) = (client.clone(), p.clone());
            writers.spawn(async move {
                let value = format!("round{round}-writer{i}");
                let written = client
                    .write(&p, &fields(&[("key", &value)]), Some(base))
                    .await;
                (value, written)
            });
        }
        let (mut won, mut lost) = (Vec::new(), 0);
        while let Some(joined) = writers.join_next().await {
            match joined? {
                (value, Ok(version)) => won.push((value, version)),
                (_, Err(Error::Conflict { .. })) => lost += 1,
                (_, Err(e)) => anyhow::bail!("round {round}: {e}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: one writer wins: {won:?}");
        assert_eq!(
            lost, 5,
            "round {round}: the others are told of the conflict"
        );
        let now = client.read(&p).await?.context("exists")?;
        assert_eq!(
            (now.version, field(&now.fields, "key")),
            (won[0].1, Some(won[0].0.as_str()))
        );
    }
    // The lost writes' versions carry no label: only the current one may keep the
    // check-and-set label.
    let listed = moto
        .ok("ListSecretVersionIds", json!({"SecretId": "race/key"}))
        .await?;
    for version in listed["Versions"].as_array().context("versions")? {
        let stages: Vec<&str> = version["VersionStages"]
            .as_array()
            .map(|s| s.iter().filter_map(|l| l.as_str()).collect())
            .unwrap_or_default();
        if stages.contains(&latchkey::upstream::aws::CAS_STAGE) {
            assert!(stages.contains(&"AWSCURRENT"), "{listed}");
        }
    }
    Ok(())
}
