//! OpenRouter API keys: validate with `GET /api/v1/key`, which describes the key itself.
//!
//! The key is a bearer token. 2xx is a working key; the answer's `data` says its label,
//! credit limit, usage and remaining credit, whether it is a free-tier key, and when it
//! expires, and the detail repeats them (a label that is OpenRouter's masked form of
//! the key, `sk-or-v1-au7...890`, is shown as `[redacted]`); the expiry becomes the
//! validation's `expires_at`. 401/403 are a refused key, answered as `valid: false`
//! with OpenRouter's reason; 429 and 5xx are `unavailable`. Creating keys needs a
//! separate management key, so this provider implements `validate` alone.

use latchkey_plugin_sdk::validate::{self, Answer};
use latchkey_plugin_sdk::{
    http, time, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};
use serde::Deserialize;

/// The real service; config `base-url` overrides it (a proxy, or a test fixture).
pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai";
const KINDS: &[&str] = &["api-key"];

struct OpenRouter;

/// `GET /api/v1/key` as OpenRouter documents it.
#[derive(Debug, Deserialize)]
struct KeyInfo {
    data: KeyData,
}

/// The fields of the key description this provider reports.
#[derive(Debug, Default, Deserialize)]
pub struct KeyData {
    /// The key's label (by default OpenRouter's masked form of the key).
    #[serde(default)]
    pub label: Option<String>,
    /// Credit limit, `null` for unlimited.
    #[serde(default)]
    pub limit: Option<f64>,
    /// Credits used.
    #[serde(default)]
    pub usage: Option<f64>,
    /// Credits left under the limit, `null` for unlimited.
    #[serde(default)]
    pub limit_remaining: Option<f64>,
    /// When the limit resets (`daily`, `weekly`, `monthly`), if it does.
    #[serde(default)]
    pub limit_reset: Option<String>,
    /// Whether the key belongs to a free-tier account.
    #[serde(default)]
    pub is_free_tier: Option<bool>,
    /// When the key stops working (RFC 3339), if it expires.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// The detail for an accepted key. `label` must already be redacted.
pub fn accepted_detail(d: &KeyData, label: Option<&str>) -> String {
    let mut detail = String::from("key accepted by OpenRouter");
    if let Some(label) = label.filter(|l| !l.is_empty()) {
        detail.push_str(&format!(" (label {label:?})"));
    }
    if let Some(usage) = d.usage {
        detail.push_str(&format!("; usage {usage}"));
    }
    match d.limit {
        Some(limit) => {
            detail.push_str(&format!("; limit {limit}"));
            if let Some(rem) = d.limit_remaining {
                detail.push_str(&format!(", {rem} remaining"));
            }
            if let Some(reset) = d.limit_reset.as_deref().filter(|r| !r.is_empty()) {
                detail.push_str(&format!(", resets {reset}"));
            }
        }
        None => detail.push_str("; no credit limit"),
    }
    if d.is_free_tier == Some(true) {
        detail.push_str("; free tier");
    }
    if let Some(at) = &d.expires_at {
        detail.push_str(&format!("; expires {at}"));
    }
    detail
}

impl Provider for OpenRouter {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "openrouter",
            env!("CARGO_PKG_VERSION"),
            KINDS,
            &[Operation::Validate],
        )
        .with_http(&["openrouter.ai"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let (base, key) = validate::base_and_key(&cfg, &cred, KINDS, DEFAULT_BASE_URL)?;
        let req = http::get(&format!("{base}/api/v1/key")).bearer(key);
        match validate::check(req, &[key], |_| false)? {
            Answer::Accepted(res) => {
                let info: KeyInfo = res.json()?;
                let label = info
                    .data
                    .label
                    .as_deref()
                    .map(|l| validate::redact(l, &[key]));
                let mut answer = validate::valid(accepted_detail(&info.data, label.as_deref()));
                answer.expires_at = info
                    .data
                    .expires_at
                    .as_deref()
                    .and_then(time::parse_rfc3339);
                Ok(answer)
            }
            Answer::Refused(why) => Ok(validate::invalid(format!(
                "OpenRouter refused the key: {why}"
            ))),
        }
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending: OpenRouter keys need a management key",
        retire: "retire: OpenRouter keys need a management key",
        refresh: "refresh: API keys are not refreshed",
    }
}

latchkey_plugin_sdk::export!(OpenRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_documented_key() {
        let body = r#"{"data":{"label":"ci","limit":100,"usage":25.5,"limit_remaining":74.5,
            "limit_reset":"monthly","is_free_tier":false,"rate_limit":{"requests":1000,"interval":"1h"}}}"#;
        let info: KeyInfo = serde_json::from_str(body).expect("documented shape");
        assert_eq!(
            accepted_detail(&info.data, Some("ci")),
            "key accepted by OpenRouter (label \"ci\"); usage 25.5; limit 100, 74.5 remaining, resets monthly"
        );
        let free = KeyData {
            limit: None,
            usage: Some(0.0),
            is_free_tier: Some(true),
            ..KeyData::default()
        };
        assert_eq!(
            accepted_detail(&free, None),
            "key accepted by OpenRouter; usage 0; no credit limit; free tier"
        );
    }
}
