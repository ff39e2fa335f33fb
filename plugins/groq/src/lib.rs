//! Groq API keys: validate with `GET /openai/v1/models`, the cheapest authenticated call.
//!
//! Groq's API is OpenAI-compatible: the key is a bearer token, errors are
//! `{"error": {"message", "type", "code"}}`. 2xx is a working key (the detail counts the
//! models and repeats Groq's `x-ratelimit-*` headers when present); 401/403 are a
//! refused key, answered as `valid: false` with Groq's reason (`invalid_api_key`); 429
//! and 5xx are `unavailable`. Keys are created in the console only, so this provider
//! implements `validate` alone.

use latchkey_plugin_sdk::validate::{self, Answer};
use latchkey_plugin_sdk::{
    http, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};
use serde::Deserialize;

/// The real service; config `base-url` overrides it (a proxy, or a test fixture).
pub const DEFAULT_BASE_URL: &str = "https://api.groq.com";
const KINDS: &[&str] = &["api-key"];

struct Groq;

/// The part of `GET /openai/v1/models` this provider reads.
#[derive(Debug, Deserialize)]
struct Models {
    #[serde(default)]
    data: Vec<serde_json::Value>,
}

/// The detail for an accepted key: model count, then the request and token limits
/// Groq reported (`limit`, `remaining`), each only when present.
pub fn accepted_detail(models: usize, limit: &dyn Fn(&str) -> Option<String>) -> String {
    format!(
        "key accepted by Groq; models listed: {models}{}",
        validate::rate_limits(limit)
    )
}

impl Provider for Groq {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "groq",
            env!("CARGO_PKG_VERSION"),
            KINDS,
            &[Operation::Validate],
        )
        .with_http(&["api.groq.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let (base, key) = validate::base_and_key(&cfg, &cred, KINDS, DEFAULT_BASE_URL)?;
        let req = http::get(&format!("{base}/openai/v1/models")).bearer(key);
        match validate::check(req, &[key], |_| false)? {
            Answer::Accepted(res) => {
                let models: Models = res.json()?;
                let header = |name: &str| res.header(name).map(|v| validate::redact(&v, &[key]));
                Ok(validate::valid(accepted_detail(models.data.len(), &header)))
            }
            Answer::Refused(why) => Ok(validate::invalid(format!("Groq refused the key: {why}"))),
        }
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending: Groq keys are created in the console",
        retire: "retire: Groq keys are deleted in the console",
        refresh: "refresh: API keys do not expire",
    }
}

latchkey_plugin_sdk::export!(Groq);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_limits_when_reported() {
        let none = |_: &str| None;
        assert_eq!(
            accepted_detail(3, &none),
            "key accepted by Groq; models listed: 3"
        );
        let some = |h: &str| match h {
            "x-ratelimit-limit-requests" => Some("14400".to_owned()),
            "x-ratelimit-remaining-requests" => Some("14399".to_owned()),
            "x-ratelimit-limit-tokens" => Some("6000".to_owned()),
            _ => None,
        };
        assert_eq!(
            accepted_detail(1, &some),
            "key accepted by Groq; models listed: 1; requests: 14399 of 14400 remaining; tokens limit 6000"
        );
    }
}
