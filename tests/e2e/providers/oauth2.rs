//! The `oauth2` provider against the real `oauth2-mock-server`: the refresh_token and
//! client_credentials grants with both client authentications (checked on the server
//! side), expiry from `expires_in`, discovery through the issuer, rejected grants
//! (`rejected`, never a token in the output), and validation (expired, userinfo,
//! introspection, nothing to ask).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::harness::oauth_server::{OAuthServer, Settings};
use crate::harness::wasm::{call, Called};

/// A started server with the plugin installed for it (manifest needs its authority).
struct Setup {
    oauth: OAuthServer,
    wasm: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> anyhow::Result<Self> {
        let oauth = OAuthServer::start().await?;
        let dir = tempfile::tempdir()?;
        let wasm = oauth.install_plugin(dir.path())?;
        Ok(Setup {
            oauth,
            wasm,
            _dir: dir,
        })
    }

    /// `latchkey plugin call` with HTTP granted to the server only.
    fn call(&self, op: &str, config: &Value, cred: &Value) -> anyhow::Result<Called> {
        let grant = self.oauth.grant();
        call(
            &self.wasm,
            op,
            config,
            cred,
            &["--grant-http", &grant, "--allow-network", "127.0.0.0/8"],
        )
    }

    /// A successful call's `ok` value.
    fn ok(&self, op: &str, config: &Value, cred: &Value) -> anyhow::Result<Value> {
        let called = self.call(op, config, cred)?;
        anyhow::ensure!(
            called.success && called.json.get("ok").is_some(),
            "{op} failed: {} {}",
            called.json,
            called.stderr
        );
        Ok(called.json["ok"].clone())
    }
}

fn rfc3339(unix: u64) -> String {
    latchkey::api::rfc3339(i64::try_from(unix).unwrap_or(i64::MAX))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn field<'a>(cred: &'a Value, name: &str) -> Option<&'a str> {
    cred["fields"][name].as_str()
}

/// Asserts the credential's expiry is `expires_in` seconds after a moment between
/// `before` and now.
fn assert_expiry(cred: &Value, before: u64, expires_in: u64) -> anyhow::Result<()> {
    // RFC 3339 in UTC, as every answer writes times, orders as text.
    let at = cred["expires_at"].as_str().context("no expires_at")?;
    let (first, last) = (rfc3339(before + expires_in), rfc3339(now() + expires_in));
    anyhow::ensure!(
        (first.as_str()..=last.as_str()).contains(&at),
        "expires_at {at} is not {expires_in}s after the call (started at {before})"
    );
    Ok(())
}

/// A JWT the server signed: three non-empty base64url parts.
fn is_jwt(token: Option<&str>) -> bool {
    token.is_some_and(|t| t.split('.').count() == 3 && t.split('.').all(|p| !p.is_empty()))
}

#[tokio::test]
async fn refresh_token_grant_with_basic_auth() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.oauth
        .set(Settings {
            expires_in: Some(120),
            ..Settings::default()
        })
        .await?;
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": "at-old", "refresh-token": "rt-basic-1", "token-type": "Bearer",
        "client-id": "svc client", "client-secret": "s3cret:x&y",
    }, "expires_at": now() - 10});
    let before = now();
    let out = s.ok(
        "refresh",
        &json!({"token-endpoint": s.oauth.token_endpoint()}),
        &cred,
    )?;

    assert_eq!(out["kind"], "oauth2");
    assert!(is_jwt(field(&out, "access-token")), "{out}");
    assert_eq!(field(&out, "token-type"), Some("Bearer"));
    let new_refresh = field(&out, "refresh-token").context("no refresh token")?;
    assert_ne!(new_refresh, "rt-basic-1", "the server issued a new one");
    assert_eq!(field(&out, "client-id"), Some("svc client"));
    assert_expiry(&out, before, 120)?;

    let seen = s.oauth.requests().await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(s.oauth.token_requests("refresh_token").await?, 1);
    let req = &seen[0];
    assert_eq!(req.auth, "basic");
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
    assert_eq!(req.client_id.as_deref(), Some("svc+client"));
    assert_eq!(req.client_secret.as_deref(), Some("s3cret%3Ax%26y"));
    assert_eq!(req.refresh_token.as_deref(), Some("rt-basic-1"));
    assert_eq!(req.status, 200);
    Ok(())
}

#[tokio::test]
async fn refresh_token_grant_with_body_auth_keeps_the_old_refresh_token() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.oauth
        .set(Settings {
            expires_in: Some(600),
            issue_refresh_token: Some(false),
            ..Settings::default()
        })
        .await?;
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": "at-old", "refresh-token": "rt-body-1", "token-type": "Bearer",
        "client-id": "web", "client-secret": "body-secret",
    }});
    let config = json!({
        "token-endpoint": s.oauth.token_endpoint(), "client-auth": "body", "scope": "read",
    });
    let before = now();
    let out = s.ok("refresh", &config, &cred)?;

    assert!(is_jwt(field(&out, "access-token")));
    assert_eq!(field(&out, "refresh-token"), Some("rt-body-1"));
    assert_eq!(field(&out, "scope"), Some("read"));
    assert_expiry(&out, before, 600)?;

    let seen = s.oauth.requests().await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.grant_type, "refresh_token");
    assert_eq!(req.auth, "body");
    assert_eq!(req.client_id.as_deref(), Some("web"));
    assert_eq!(req.client_secret.as_deref(), Some("body-secret"));
    assert_eq!(req.scope.as_deref(), Some("read"));

    // The kept refresh token works again; a second refresh is a second request.
    s.ok("refresh", &config, &out)?;
    assert_eq!(s.oauth.token_requests("refresh_token").await?, 2);
    Ok(())
}

#[tokio::test]
async fn client_credentials_grant() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.oauth
        .set(Settings {
            expires_in: Some(300),
            ..Settings::default()
        })
        .await?;
    // No refresh token: the default grant is client_credentials.
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": "", "client-id": "batch", "client-secret": "cc-secret",
    }});
    let config = json!({
        "token-endpoint": s.oauth.token_endpoint(),
        "scope": "reports:read reports:write", "audience": "https://api.example",
    });
    let before = now();
    let out = s.ok("refresh", &config, &cred)?;

    assert!(is_jwt(field(&out, "access-token")));
    assert_eq!(field(&out, "token-type"), Some("Bearer"));
    assert_eq!(field(&out, "refresh-token"), None, "{out}");
    assert_eq!(field(&out, "scope"), Some("reports:read reports:write"));
    assert_expiry(&out, before, 300)?;

    assert_eq!(s.oauth.token_requests("client_credentials").await?, 1);
    assert_eq!(s.oauth.token_requests("refresh_token").await?, 0);
    let req = &s.oauth.requests().await?[0];
    assert_eq!(req.auth, "basic");
    assert_eq!(req.client_id.as_deref(), Some("batch"));
    assert_eq!(req.client_secret.as_deref(), Some("cc-secret"));
    assert_eq!(req.scope.as_deref(), Some("reports:read reports:write"));
    assert_eq!(req.audience.as_deref(), Some("https://api.example"));
    Ok(())
}

#[tokio::test]
async fn discovery_via_issuer_finds_token_and_userinfo_endpoints() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let config = json!({"issuer": s.oauth.issuer()});
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": "at-unknown", "refresh-token": "rt-disc-1", "token-type": "Bearer",
        "client-id": "disc", "client-secret": "disc-secret",
    }});
    let out = s.ok("refresh", &config, &cred)?;
    assert!(is_jwt(field(&out, "access-token")));
    assert_eq!(s.oauth.token_requests("refresh_token").await?, 1);

    // validate: discovery names the userinfo endpoint, which knows issued tokens.
    let good = s.ok("validate", &config, &out)?;
    assert_eq!(good["valid"], true, "{good}");
    assert!(good["detail"].as_str().unwrap_or("").contains("userinfo"));
    let bad = s.ok("validate", &config, &cred)?;
    assert_eq!(bad["valid"], false, "{bad}");
    let detail = bad["detail"].as_str().unwrap_or("");
    assert!(detail.contains("invalid_token"), "{detail}");
    assert!(!detail.contains("at-unknown"));
    Ok(())
}

#[tokio::test]
async fn refused_grants_are_rejected_without_secrets_in_the_output() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let config = json!({"token-endpoint": s.oauth.token_endpoint()});
    let secrets = ["revoked-rt-9f8e7d", "cs-very-secret-1", "at-live-4b3a"];
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": secrets[2], "refresh-token": secrets[0], "token-type": "Bearer",
        "client-id": "app", "client-secret": secrets[1],
    }});
    let called = s.call("refresh", &config, &cred)?;
    assert!(!called.success);
    assert_eq!(called.json["error"]["code"], "rejected", "{}", called.json);
    let detail = called.json["error"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("invalid_grant"), "{detail}");
    let printed = format!("{}{}", called.json, called.stderr);
    for secret in secrets {
        assert!(
            !printed.contains(secret),
            "output contains a credential value"
        );
    }
    let req = &s.oauth.requests().await?[0];
    assert_eq!(
        (req.grant_type.as_str(), req.status),
        ("refresh_token", 400)
    );

    // A client the server does not know: invalid_client, also rejected.
    s.oauth.reset().await?;
    let wrong = json!({"kind": "oauth2", "fields": {
        "access-token": "at-2c9e41", "client-id": "app", "client-secret": "wrong-cs-77",
    }});
    let called = s.call("refresh", &config, &wrong)?;
    assert_eq!(called.json["error"]["code"], "rejected", "{}", called.json);
    let detail = called.json["error"]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("401") && detail.contains("invalid_client"),
        "{detail}"
    );
    assert!(!called.json.to_string().contains("wrong-cs-77"));
    assert_eq!(s.oauth.token_requests("client_credentials").await?, 1);

    // An overloaded server is transient: unavailable, so the host retries.
    s.oauth
        .set(Settings {
            unavailable: Some(true),
            ..Settings::default()
        })
        .await?;
    let fine = json!({"kind": "oauth2", "fields": {
        "access-token": "at-5d1f07", "refresh-token": "rt-ok-83b2", "client-id": "app",
        "client-secret": "cs-62aa90",
    }});
    let called = s.call("refresh", &config, &fine)?;
    assert_eq!(
        called.json["error"]["code"], "unavailable",
        "{}",
        called.json
    );
    assert!(!called.json.to_string().contains("rt-ok-83b2"));
    Ok(())
}

#[tokio::test]
async fn validate_of_an_expired_credential_is_not_valid() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let expired_at = now() - 60;
    let cred = json!({"kind": "oauth2", "fields": {
        "access-token": "at-expired", "client-id": "app", "token-type": "Bearer",
    }, "expires_at": expired_at});
    let config = json!({
        "token-endpoint": s.oauth.token_endpoint(),
        "userinfo-endpoint": s.oauth.userinfo_endpoint(),
    });
    let answer = s.ok("validate", &config, &cred)?;
    assert_eq!(answer["valid"], false, "{answer}");
    assert_eq!(answer["detail"], "access token expired");
    assert_eq!(answer["expires_at"], rfc3339(expired_at));
    Ok(())
}

#[tokio::test]
async fn validate_with_introspection_or_with_nothing_to_ask() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let issue = json!({"kind": "oauth2", "fields": {
        "access-token": "", "client-id": "intro", "client-secret": "intro-secret",
    }});
    let issued = s.ok(
        "refresh",
        &json!({"token-endpoint": s.oauth.token_endpoint(), "scope": "read write"}),
        &issue,
    )?;

    let config = json!({
        "token-endpoint": s.oauth.token_endpoint(),
        "introspection-endpoint": s.oauth.introspection_endpoint(),
    });
    let active = s.ok("validate", &config, &issued)?;
    assert_eq!(active["valid"], true, "{active}");
    let perms: Vec<&str> = active["permissions"]
        .as_array()
        .context("no permissions")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(perms, ["read", "write"], "{active}");
    assert!(active["expires_at"]
        .as_str()
        .is_some_and(|e| e > rfc3339(now()).as_str()));

    let mut unknown = issued.clone();
    unknown["fields"]["access-token"] = json!("at-never-issued");
    let inactive = s.ok("validate", &config, &unknown)?;
    assert_eq!(inactive["valid"], false, "{inactive}");
    assert!(inactive["detail"]
        .as_str()
        .unwrap_or("")
        .contains("not active"));

    // Only a token endpoint: valid while not expired, and the detail says so.
    let plain = s.ok(
        "validate",
        &json!({"token-endpoint": s.oauth.token_endpoint()}),
        &unknown,
    )?;
    assert_eq!(plain["valid"], true, "{plain}");
    assert!(plain["detail"]
        .as_str()
        .unwrap_or("")
        .contains("no userinfo or introspection endpoint"));
    Ok(())
}

#[tokio::test]
async fn info_names_the_kind_and_operations() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let info = s.ok("info", &json!({}), &json!({"kind": "oauth2", "fields": {}}))?;
    assert_eq!(info["name"], "oauth2", "{info}");
    assert_eq!(info["kinds"], json!(["oauth2"]));
    let ops = info["operations"].as_array().context("no operations")?;
    assert_eq!(ops.len(), 2, "{info}");
    assert!(
        ops.contains(&json!("validate")) && ops.contains(&json!("refresh")),
        "{info}"
    );
    Ok(())
}
