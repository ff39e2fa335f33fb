//! Checking an API key with one authenticated request, the way most HTTP APIs allow.
//!
//! Many services validate a key with their cheapest authenticated call (`GET /v1/models`,
//! `GET /api/v1/key`, …) and answer in one of three ways: 2xx (the key works), 401/403
//! (the key is refused: a *validation answer*, not an error), or a transient failure
//! (429, 5xx, network). [`check`] sends such a request and sorts the answer into
//! [`Answer::Accepted`] / [`Answer::Refused`] or a [`ProviderError`], so a provider only
//! builds the request and words the detail:
//!
//! | answer | becomes |
//! | --- | --- |
//! | 2xx | `Ok(Answer::Accepted(response))` |
//! | 401, 403, or what the provider's `refuses` says | `Ok(Answer::Refused(reason))` |
//! | 408, 429, 5xx, network, timeout | `Err(ProviderError::Unavailable)` |
//! | host refused the destination | `Err(ProviderError::Denied)` |
//! | any other status | `Err(ProviderError::Rejected)` |
//!
//! Service text (error messages, labels) can echo the key, whole or masked
//! (`sk-abc***xyz`); every reason and error detail built here goes through [`redact`]
//! first. Requests that create or delete credentials are not validations: turn their
//! non-2xx answers into errors with [`status_error`].
//!
//! ```no_run
//! use latchkey_plugin_sdk::{http, validate, Credential, ProviderError, Validation};
//! # fn run(cred: Credential) -> Result<Validation, ProviderError> {
//! let key = validate::api_key(&cred)?;
//! let req = http::get("https://api.example.com/v1/models").bearer(key);
//! Ok(match validate::check(req, &[key], |_| false)? {
//!     validate::Answer::Accepted(_) => validate::valid("key accepted by Example"),
//!     validate::Answer::Refused(why) => validate::invalid(format!("Example refused the key: {why}")),
//! })
//! # }
//! ```

use crate::{config, http, Credential, Field, Permission, ProviderError, Validation};

/// Longest service text kept in a detail; longer text is cut at a character boundary.
const MAX_TEXT: usize = 300;

/// What the service said about a credential it was willing to talk about.
#[derive(Debug)]
pub enum Answer {
    /// 2xx: the credential works; the response carries details (headers, body).
    Accepted(http::Response),
    /// The service refused the credential; its reason, redacted (e.g.
    /// `401 invalid_api_key: Incorrect API key provided: [redacted]`).
    Refused(String),
}

/// Sends `req` (which already carries the credential) and sorts the answer; see the
/// module table. `secrets` are the credential values the request carries: they are
/// redacted from any service text that ends up in the answer. `refuses` may declare
/// further responses a refusal, for services that answer a bad key with another status
/// (Gemini: 400 with reason `API_KEY_INVALID`); 401 and 403 always are.
pub fn check(
    req: http::Request,
    secrets: &[&str],
    refuses: impl Fn(&http::Response) -> bool,
) -> Result<Answer, ProviderError> {
    sort(req.send()?, secrets, refuses)
}

/// The decision behind [`check`], for a response already received.
pub fn sort(
    res: http::Response,
    secrets: &[&str],
    refuses: impl Fn(&http::Response) -> bool,
) -> Result<Answer, ProviderError> {
    let status = res.status;
    if (200..300).contains(&status) {
        return Ok(Answer::Accepted(res));
    }
    // `refuses` first, so it sees 401/403 too (e.g. to pick out a reason).
    if refuses(&res) || status == 401 || status == 403 {
        let said = error_message(&res)
            .map(|m| format!(": {}", redact(&m, secrets)))
            .unwrap_or_default();
        return Ok(Answer::Refused(format!("{status}{said}")));
    }
    Err(status_error(&res, secrets))
}

/// The error for a non-2xx answer to any call (creating or deleting a credential
/// too): `unavailable` for 408/429/5xx, `rejected` otherwise, as
/// [`ProviderError::from_status`], with the service's message redacted of `secrets`.
pub fn status_error(res: &http::Response, secrets: &[&str]) -> ProviderError {
    let status = res.status;
    let said = error_message(res)
        .map(|m| format!(": {}", redact(&m, secrets)))
        .unwrap_or_default();
    match ProviderError::from_status(status) {
        ProviderError::Unavailable(_) => {
            ProviderError::Unavailable(format!("service answered {status}{said}"))
        }
        _ => ProviderError::Rejected(format!("service answered {status}{said}")),
    }
}

/// The service's own words from a JSON error body, in the shapes the common APIs use:
/// `{"error": {"message": …, "code"|"type"|"status": …}}` (OpenAI, Anthropic, Gemini,
/// Groq, OpenRouter), `{"message": …}`, or `{"error": "…"}`. The code, when it is a
/// string, comes first: `invalid_api_key: Incorrect API key provided`. Not redacted.
pub fn error_message(res: &http::Response) -> Option<String> {
    let body: serde_json::Value = res.json().ok()?;
    let (message, code) = match body.get("error") {
        Some(serde_json::Value::String(s)) => (Some(s.as_str()), None),
        Some(err) => (
            err.get("message").and_then(|m| m.as_str()),
            ["code", "type", "status"]
                .iter()
                .find_map(|k| err.get(*k).and_then(|c| c.as_str())),
        ),
        None => (body.get("message").and_then(|m| m.as_str()), None),
    };
    match (code, message) {
        (Some(c), Some(m)) => Some(format!("{c}: {m}")),
        (None, Some(m)) => Some(m.to_owned()),
        (Some(c), None) => Some(c.to_owned()),
        (None, None) => None,
    }
}

/// `text` with secrets removed, for details and errors: every whitespace-separated
/// word that contains one of `secrets`, or looks like a masked key (`sk-abc***xyz`,
/// `sk-or-v1-au7...890`), becomes `[redacted]`; control characters become spaces;
/// the result is at most 300 characters.
///
/// ```
/// use latchkey_plugin_sdk::validate::redact;
/// let said = "Incorrect API key provided: sk-abc*****wxyz. See the docs.";
/// assert_eq!(redact(said, &["sk-abcdefwxyz"]), "Incorrect API key provided: [redacted] See the docs.");
/// assert_eq!(redact("key sk-abcdefwxyz refused", &["sk-abcdefwxyz"]), "key [redacted] refused");
/// ```
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|word| {
            let leaks =
                secrets.iter().any(|s| !s.is_empty() && word.contains(s)) || looks_masked(word);
            if leaks {
                "[redacted]".to_owned()
            } else {
                word.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            }
        })
        .collect();
    let joined = words.join(" ");
    match joined.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// Whether `word` looks like a key a service masked for display: a run of `*`, or
/// `...` between two alphanumerics (`sk-or-v1-au7...890`).
fn looks_masked(word: &str) -> bool {
    if word.contains("**") {
        return true;
    }
    let bytes = word.as_bytes();
    word.match_indices("...").any(|(i, _)| {
        let before = i.checked_sub(1).and_then(|j| bytes.get(j));
        let after = bytes.get(i + 3);
        matches!((before, after), (Some(b), Some(a)) if b.is_ascii_alphanumeric() && a.is_ascii_alphanumeric())
    })
}

/// The key of an API-key credential: field `api-key`, or its alias `key`. A missing
/// or empty field is `invalid-config` (naming the field, never a value).
pub fn api_key(cred: &Credential) -> Result<&str, ProviderError> {
    match cred.field("api-key").or_else(|| cred.field("key")) {
        Some(k) if !k.trim().is_empty() => Ok(k),
        Some(_) => Err(ProviderError::InvalidConfig(
            "credential field api-key is empty".into(),
        )),
        None => Err(ProviderError::InvalidConfig(
            "credential has no field api-key (or key)".into(),
        )),
    }
}

/// `unsupported` unless the credential's kind is one of `kinds`.
pub fn require_kind(cred: &Credential, kinds: &[&str]) -> Result<(), ProviderError> {
    if kinds.contains(&cred.kind.as_str()) {
        Ok(())
    } else {
        Err(ProviderError::Unsupported(format!(
            "credential kind {:?} (this provider handles {})",
            cred.kind,
            kinds.join(", ")
        )))
    }
}

/// What an API-key validation needs, checked in this order: the credential's kind is
/// one of `kinds` ([`require_kind`]), config `base-url` ([`base_url`], `default` when
/// unset), and the key ([`api_key`]).
pub fn base_and_key<'a>(
    cfg: &[Field],
    cred: &'a Credential,
    kinds: &[&str],
    default: &str,
) -> Result<(String, &'a str), ProviderError> {
    require_kind(cred, kinds)?;
    let base = base_url(cfg, default)?;
    Ok((base, api_key(cred)?))
}

/// Config `base-url` without trailing slashes, or `default` when unset; a value that
/// is not an `http://` or `https://` URL is `invalid-config`.
pub fn base_url(cfg: &[Field], default: &str) -> Result<String, ProviderError> {
    let url = config::get(cfg, "base-url").unwrap_or(default).trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ProviderError::InvalidConfig(
            "config base-url must start with https:// or http://".into(),
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `(name, granted)` pairs as the permissions of a [`Validation`], in their order.
///
/// ```
/// use latchkey_plugin_sdk::validate::permissions;
/// let p = permissions([("read", true), ("withdraw", false)]);
/// assert_eq!((p[1].name.as_str(), p[1].granted), ("withdraw", false));
/// ```
pub fn permissions<'a>(granted: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<Permission> {
    granted
        .into_iter()
        .map(|(name, granted)| Permission {
            name: name.to_owned(),
            granted,
        })
        .collect()
}

/// The request and token limits of OpenAI-style `x-ratelimit-limit-*` /
/// `x-ratelimit-remaining-*` response headers (OpenAI, Groq), to append to a detail:
/// `; requests: 4999 of 5000 remaining; tokens limit 6000`, each part only when the
/// service sent its limit. `header` gives a header's value, already redacted.
pub fn rate_limits(header: &dyn Fn(&str) -> Option<String>) -> String {
    let mut said = String::new();
    for (what, limit, remaining) in [
        (
            "requests",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
        ),
        (
            "tokens",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
        ),
    ] {
        match (header(limit), header(remaining)) {
            (Some(l), Some(r)) => said.push_str(&format!("; {what}: {r} of {l} remaining")),
            (Some(l), None) => said.push_str(&format!("; {what} limit {l}")),
            _ => {}
        }
    }
    said
}

/// A `valid: true` answer with `detail` and nothing else reported.
pub fn valid(detail: impl Into<String>) -> Validation {
    Validation {
        valid: true,
        detail: detail.into(),
        permissions: Vec::new(),
        expires_at: None,
    }
}

/// A `valid: false` answer with `detail`.
pub fn invalid(detail: impl Into<String>) -> Validation {
    Validation {
        valid: false,
        detail: detail.into(),
        permissions: Vec::new(),
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn sorts_statuses_into_answers_and_errors() {
        let never = |_: &http::Response| false;
        assert!(matches!(
            sort(response(200, "{}"), &[], never),
            Ok(Answer::Accepted(_))
        ));
        let refused = sort(
            response(
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            ),
            &[],
            never,
        );
        assert!(
            matches!(&refused, Ok(Answer::Refused(r)) if r == "401: authentication_error: invalid x-api-key"),
            "{refused:?}"
        );
        assert!(matches!(
            sort(response(403, ""), &[], never),
            Ok(Answer::Refused(r)) if r == "403"
        ));
        assert!(matches!(
            sort(response(429, "{}"), &[], never),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            sort(response(529, "{}"), &[], never),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            sort(response(404, "{}"), &[], never),
            Err(ProviderError::Rejected(_))
        ));
        assert!(matches!(
            sort(response(400, "{}"), &[], |r: &http::Response| r.status
                == 400),
            Ok(Answer::Refused(_))
        ));
    }

    #[test]
    fn error_details_never_carry_the_key() {
        let key = "sk-proj-abcdefghijklmnop";
        let body = format!(r#"{{"error":{{"message":"Rate limit for key {key} reached"}}}}"#);
        let err = sort(response(429, &body), &[key], |_| false);
        match err {
            Err(ProviderError::Unavailable(d)) => {
                assert!(!d.contains(key), "{d}");
                assert!(d.contains("[redacted]"), "{d}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn reads_the_common_error_shapes() {
        let openai = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(
            error_message(&response(401, openai)).as_deref(),
            Some("invalid_api_key: Incorrect API key provided")
        );
        let openrouter = r#"{"error":{"code":401,"message":"User not found."}}"#;
        assert_eq!(
            error_message(&response(401, openrouter)).as_deref(),
            Some("User not found.")
        );
        let gemini =
            r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            error_message(&response(400, gemini)).as_deref(),
            Some("INVALID_ARGUMENT: API key not valid.")
        );
        assert_eq!(
            error_message(&response(401, r#"{"error":"nope"}"#)).as_deref(),
            Some("nope")
        );
        assert_eq!(
            error_message(&response(502, "<html>bad gateway</html>")),
            None
        );
    }

    #[test]
    fn redacts_whole_and_masked_keys() {
        assert_eq!(
            redact("label sk-or-v1-au7...890 and more...", &[]),
            "label [redacted] and more..."
        );
        assert_eq!(redact("a\u{7}b", &[]), "a b");
        let long = "x ".repeat(400);
        assert!(redact(&long, &[]).chars().count() <= MAX_TEXT + 1);
        assert_eq!(
            redact("secret in:secret!", &["secret"]),
            "[redacted] [redacted]"
        );
        assert_eq!(
            redact("empty secrets are ignored", &[""]),
            "empty secrets are ignored"
        );
    }

    #[test]
    fn lists_permissions_and_rate_limits() {
        let v = Validation {
            permissions: permissions([("read", true), ("trade", false)]),
            ..valid("ok")
        };
        assert_eq!(v.granted("read"), Some(true));
        assert_eq!(v.granted("trade"), Some(false));
        assert_eq!(v.granted("withdraw"), None);
        let headers = |h: &str| match h {
            "x-ratelimit-limit-requests" => Some("5000".to_owned()),
            "x-ratelimit-remaining-requests" => Some("4999".to_owned()),
            "x-ratelimit-limit-tokens" => Some("6000".to_owned()),
            "x-ratelimit-remaining-tokens" => None,
            _ => None,
        };
        assert_eq!(
            rate_limits(&headers),
            "; requests: 4999 of 5000 remaining; tokens limit 6000"
        );
        assert_eq!(rate_limits(&|_| None), "");
    }

    #[test]
    fn reads_keys_kinds_and_base_urls() {
        let cred = Credential::new("api-key", [("key", "k1".to_owned())]);
        assert_eq!(api_key(&cred).ok(), Some("k1"));
        let cred = Credential::new(
            "api-key",
            [("api-key", "k2".to_owned()), ("key", "k1".to_owned())],
        );
        assert_eq!(api_key(&cred).ok(), Some("k2"));
        let empty = Credential::new("api-key", [("api-key", " ".to_owned())]);
        assert!(matches!(
            api_key(&empty),
            Err(ProviderError::InvalidConfig(_))
        ));
        assert!(require_kind(&cred, &["api-key"]).is_ok());
        assert!(matches!(
            require_kind(&cred, &["oauth2"]),
            Err(ProviderError::Unsupported(_))
        ));
        let cfg = vec![Field {
            name: "base-url".into(),
            value: "http://127.0.0.1:9/".into(),
        }];
        assert_eq!(
            base_url(&cfg, "https://x").ok().as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            base_url(&[], "https://api.x.com").ok().as_deref(),
            Some("https://api.x.com")
        );
        let bad = vec![Field {
            name: "base-url".into(),
            value: "api.x.com".into(),
        }];
        assert!(matches!(
            base_url(&bad, "https://x"),
            Err(ProviderError::InvalidConfig(_))
        ));
        let (base, key) = base_and_key(&cfg, &cred, &["api-key"], "https://x").expect("valid");
        assert_eq!((base.as_str(), key), ("http://127.0.0.1:9", "k2"));
        assert!(matches!(
            base_and_key(&bad, &cred, &["oauth2"], "https://x"),
            Err(ProviderError::Unsupported(_))
        ));
    }
}
