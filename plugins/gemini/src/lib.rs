//! Google Gemini API keys: validate with `GET /v1beta/models`, the cheapest
//! authenticated call of the Gemini API.
//!
//! The key goes in the `x-goog-api-key` header, never in the `?key=` query parameter
//! (URLs end up in proxy and access logs). 2xx is a working key (the detail counts the
//! models listed). Gemini answers an invalid or expired key with **400**
//! `INVALID_ARGUMENT` and an `ErrorInfo` reason `API_KEY_INVALID`, and a key restricted
//! away from this API with 403 (`API_KEY_SERVICE_BLOCKED`, …): both are a refused key,
//! answered as `valid: false` with Gemini's message and reason, not as an error. Other
//! 4xx are `rejected`; 429 (`RESOURCE_EXHAUSTED`) and 5xx are `unavailable`. Keys are
//! created in AI Studio or the Cloud console, so this provider implements `validate`
//! alone.

use std::cell::RefCell;

use latchkey_plugin_sdk::validate::{self, Answer};
use latchkey_plugin_sdk::{
    http, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};
use serde::Deserialize;

/// The real service; config `base-url` overrides it (a proxy, or a test fixture).
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
const KINDS: &[&str] = &["api-key"];

struct Gemini;

/// The part of `GET /v1beta/models` this provider reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Models {
    #[serde(default)]
    models: Vec<serde_json::Value>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// A Google API error body: `{"error": {"code", "message", "status", "details": [...]}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: GoogleError,
}

#[derive(Debug, Deserialize)]
struct GoogleError {
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

/// The `ErrorInfo` reason of a Google error body when it is about the API key
/// (`API_KEY_INVALID`, `API_KEY_SERVICE_BLOCKED`, …).
pub fn key_reason(body: &[u8]) -> Option<String> {
    let err: ErrorBody = serde_json::from_slice(body).ok()?;
    err.error.details.iter().find_map(|d| {
        d.get("reason")
            .and_then(|r| r.as_str())
            .filter(|r| r.starts_with("API_KEY_"))
            .map(str::to_owned)
    })
}

/// The detail for an accepted key.
pub fn accepted_detail(models: usize, more: bool) -> String {
    let plus = if more { "+" } else { "" };
    format!("key accepted by Gemini; models listed: {models}{plus}")
}

impl Provider for Gemini {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "gemini",
            env!("CARGO_PKG_VERSION"),
            KINDS,
            &[Operation::Validate],
        )
        .with_http(&["generativelanguage.googleapis.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let (base, key) = validate::base_and_key(&cfg, &cred, KINDS, DEFAULT_BASE_URL)?;
        let req = http::get(&format!("{base}/v1beta/models")).header("x-goog-api-key", key);
        let reason = RefCell::new(None);
        let refuses = |res: &http::Response| {
            let r = key_reason(&res.body);
            // 400 INVALID_ARGUMENT + API_KEY_INVALID is how Gemini says "bad key".
            let refused = res.status == 400 && r.is_some();
            *reason.borrow_mut() = r;
            refused
        };
        match validate::check(req, &[key], refuses)? {
            Answer::Accepted(res) => {
                let models: Models = res.json()?;
                let more = models.next_page_token.is_some_and(|t| !t.is_empty());
                Ok(validate::valid(accepted_detail(models.models.len(), more)))
            }
            Answer::Refused(why) => {
                let reason = reason
                    .into_inner()
                    .map(|r| format!(" ({})", validate::redact(&r, &[key])))
                    .unwrap_or_default();
                Ok(validate::invalid(format!(
                    "Gemini refused the key: {why}{reason}"
                )))
            }
        }
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending: Gemini keys are created in AI Studio or the Cloud console",
        retire: "retire: Gemini keys are deleted in AI Studio or the Cloud console",
        refresh: "refresh: API keys are not refreshed",
    }
}

latchkey_plugin_sdk::export!(Gemini);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_api_key_reason() {
        let invalid = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
        assert_eq!(key_reason(invalid).as_deref(), Some("API_KEY_INVALID"));
        let other = br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest"}]}}"#;
        assert_eq!(key_reason(other), None);
        assert_eq!(key_reason(b"not json"), None);
    }

    #[test]
    fn describes_an_accepted_key() {
        assert_eq!(
            accepted_detail(2, false),
            "key accepted by Gemini; models listed: 2"
        );
        assert_eq!(
            accepted_detail(50, true),
            "key accepted by Gemini; models listed: 50+"
        );
    }
}
