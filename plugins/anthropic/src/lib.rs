//! Anthropic API keys: validate with `GET /v1/models`, the cheapest authenticated call.
//!
//! The key goes in `x-api-key` with `anthropic-version: 2023-06-01`, as Anthropic
//! documents. 2xx is a working key (the detail names the organisation from the
//! `anthropic-organization-id` header and counts the models listed); 401
//! (`authentication_error`) and 403 (`permission_error`) are a refused key, answered as
//! `valid: false` with Anthropic's reason; 429 (`rate_limit_error`), 5xx and 529
//! (`overloaded_error`) are `unavailable`. Keys are created in the Console only, so
//! this provider implements `validate` alone.

use latchkey_plugin_sdk::validate::{self, Answer};
use latchkey_plugin_sdk::{
    http, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};
use serde::Deserialize;

/// The real service; config `base-url` overrides it (a proxy, or a test fixture).
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version header Anthropic requires on every request.
pub const API_VERSION: &str = "2023-06-01";
const KINDS: &[&str] = &["api-key"];

struct Anthropic;

/// The part of `GET /v1/models` this provider reads.
#[derive(Debug, Deserialize)]
struct Models {
    #[serde(default)]
    data: Vec<serde_json::Value>,
    #[serde(default)]
    has_more: bool,
}

/// The detail for an accepted key, from the organisation header and the model list.
pub fn accepted_detail(organization: Option<&str>, models: usize, more: bool) -> String {
    let mut detail = String::from("key accepted by Anthropic");
    if let Some(org) = organization.filter(|o| !o.is_empty()) {
        detail.push_str(&format!(" (organization {org})"));
    }
    let plus = if more { "+" } else { "" };
    detail.push_str(&format!("; models listed: {models}{plus}"));
    detail
}

impl Provider for Anthropic {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "anthropic",
            env!("CARGO_PKG_VERSION"),
            KINDS,
            &[Operation::Validate],
        )
        .with_http(&["api.anthropic.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let (base, key) = validate::base_and_key(&cfg, &cred, KINDS, DEFAULT_BASE_URL)?;
        let req = http::get(&format!("{base}/v1/models"))
            .header("x-api-key", key)
            .header("anthropic-version", API_VERSION);
        match validate::check(req, &[key], |_| false)? {
            Answer::Accepted(res) => {
                let models: Models = res.json()?;
                let org = res
                    .header("anthropic-organization-id")
                    .map(|o| validate::redact(&o, &[key]));
                Ok(validate::valid(accepted_detail(
                    org.as_deref(),
                    models.data.len(),
                    models.has_more,
                )))
            }
            Answer::Refused(why) => Ok(validate::invalid(format!(
                "Anthropic refused the key: {why}"
            ))),
        }
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending: Anthropic keys are created in the Console",
        retire: "retire: Anthropic keys are deleted in the Console",
        refresh: "refresh: API keys do not expire",
    }
}

latchkey_plugin_sdk::export!(Anthropic);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_an_accepted_key() {
        assert_eq!(
            accepted_detail(Some("org-1"), 2, false),
            "key accepted by Anthropic (organization org-1); models listed: 2"
        );
        assert_eq!(
            accepted_detail(None, 20, true),
            "key accepted by Anthropic; models listed: 20+"
        );
    }

    #[test]
    fn info_lists_validate_only() {
        let info = Anthropic::info();
        assert_eq!(info.name, "anthropic");
        assert_eq!(info.kinds, vec!["api-key".to_owned()]);
        assert_eq!(info.operations, vec![Operation::Validate]);
    }
}
