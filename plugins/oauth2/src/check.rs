//! `validate`: is the access token still good?
//!
//! In order: an expiry in the past answers "expired" without asking anyone; then the
//! OpenID Connect userinfo endpoint is called with the token (401 → not valid); else
//! RFC 7662 introspection answers `active`; else, with no endpoint to ask, the token
//! counts as valid while it has not expired, and the detail says it was not checked.

use latchkey_plugin_sdk::{http, Credential, Permission, ProviderError, Validation};
use serde_json::Value;

use crate::refusal;
use crate::settings::Settings;
use crate::token::{self, field};

fn answer(valid: bool, detail: impl Into<String>, expires_at: Option<u64>) -> Validation {
    Validation {
        valid,
        detail: detail.into(),
        permissions: Vec::new(),
        expires_at,
    }
}

/// "expired" when the credential's expiry is at or before `now`.
pub(crate) fn expired(cred: &Credential, now: u64) -> Option<Validation> {
    match cred.expires_at {
        Some(at) if at <= now => Some(answer(false, "access token expired", Some(at))),
        _ => None,
    }
}

/// The answer when no endpoint can check the token (it has not expired).
pub(crate) fn unchecked(cred: &Credential) -> Validation {
    let detail = match cred.expires_at {
        Some(_) => "not expired; no userinfo or introspection endpoint was available to check it",
        None => "expiry unknown; no userinfo or introspection endpoint was available to check it",
    };
    answer(true, detail, cred.expires_at)
}

/// The `error` parameter of a `WWW-Authenticate: Bearer error="..."` challenge
/// (RFC 6750 §3), if it is a plain error code.
pub(crate) fn bearer_error(challenge: &str) -> Option<String> {
    let start = challenge.find("error=\"")? + "error=\"".len();
    let rest = &challenge[start..];
    let code = &rest[..rest.find('"')?];
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| code.to_owned())
}

/// Calls the userinfo endpoint with the access token.
pub(crate) fn with_userinfo(url: &str, cred: &Credential) -> Result<Validation, ProviderError> {
    let access = cred.require(field::ACCESS_TOKEN)?;
    let res = http::get(url)
        .header("accept", "application/json")
        .bearer(access)
        .send()?;
    let challenge = res
        .header("www-authenticate")
        .and_then(|c| bearer_error(&c));
    let why = challenge
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    match res.status {
        200..=299 => Ok(answer(
            true,
            "the userinfo endpoint accepted the access token",
            cred.expires_at,
        )),
        // RFC 6750 §3.1: the token works but lacks the scope userinfo needs.
        403 if challenge.as_deref() == Some("insufficient_scope") => Ok(answer(
            true,
            "the access token is valid but lacks the scope the userinfo endpoint needs (insufficient_scope)",
            cred.expires_at,
        )),
        401 | 403 => Ok(answer(
            false,
            format!("the userinfo endpoint refused the access token{why}"),
            cred.expires_at,
        )),
        status => Err(ProviderError::from_status(status)),
    }
}

/// Reads an RFC 7662 §2.2 introspection answer.
pub(crate) fn introspected(
    body: &Value,
    fallback_expiry: Option<u64>,
) -> Result<Validation, ProviderError> {
    let active = body.get("active").and_then(Value::as_bool).ok_or_else(|| {
        ProviderError::Unavailable("the introspection answer has no boolean active".into())
    })?;
    if !active {
        return Ok(answer(
            false,
            "the introspection endpoint says the access token is not active",
            fallback_expiry,
        ));
    }
    let permissions = body
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| {
            s.split_whitespace()
                .map(|name| Permission {
                    name: name.to_owned(),
                    granted: true,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Validation {
        valid: true,
        detail: "the introspection endpoint says the access token is active".into(),
        permissions,
        expires_at: body.get("exp").and_then(token::seconds).or(fallback_expiry),
    })
}

/// Asks the introspection endpoint about the access token, authenticating as the client.
pub(crate) fn with_introspection(
    url: &str,
    settings: &Settings,
    cred: &Credential,
) -> Result<Validation, ProviderError> {
    let access = cred.require(field::ACCESS_TOKEN)?;
    let form = vec![
        ("token", access.to_owned()),
        ("token_type_hint", "access_token".to_owned()),
    ];
    let res = token::authenticate(form, settings, cred)?.send(url)?;
    if !(200..300).contains(&res.status) {
        return Err(refusal::from_answer(
            "introspection endpoint",
            res.status,
            &res.body,
            &token::secrets(cred),
        ));
    }
    let body: Value = serde_json::from_slice(&res.body).map_err(|_| {
        ProviderError::Unavailable("the introspection endpoint answered with invalid JSON".into())
    })?;
    introspected(&body, cred.expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn past_expiry_is_expired_and_future_is_not() {
        let mut c = Credential::new("oauth2", [("access-token", "t".to_owned())]);
        c.expires_at = Some(100);
        let v = expired(&c, 100).expect("expired");
        assert!(!v.valid);
        assert_eq!(v.detail, "access token expired");
        assert!(expired(&c, 99).is_none());
        c.expires_at = None;
        assert!(expired(&c, u64::MAX).is_none());
        assert!(unchecked(&c).valid);
    }

    #[test]
    fn reads_bearer_challenges() {
        assert_eq!(
            bearer_error(r#"Bearer realm="x", error="invalid_token", error_description="expired""#)
                .as_deref(),
            Some("invalid_token")
        );
        assert_eq!(bearer_error("Bearer realm=\"x\""), None);
        assert_eq!(bearer_error("Bearer error=\"a b\""), None);
    }

    #[test]
    fn introspection_answers() {
        let v = introspected(
            &json!({"active": true, "scope": "read write", "exp": 99}),
            None,
        )
        .expect("answer");
        assert!(v.valid);
        assert_eq!(v.expires_at, Some(99));
        let names: Vec<_> = v.permissions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["read", "write"]);
        let v = introspected(&json!({"active": false}), Some(5)).expect("answer");
        assert!(!v.valid);
        assert!(introspected(&json!({}), None).is_err());
    }
}
