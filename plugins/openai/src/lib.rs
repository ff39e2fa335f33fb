//! OpenAI API keys: validate any key with `GET /v1/models`; rotate project service
//! accounts with an organisation admin key.
//!
//! Two credential kinds:
//!
//! - `api-key` (field `api-key`, alias `key`): any OpenAI key. `validate` only.
//! - `openai-service-account`: a project service account's key (`api-key`), its
//!   `service-account-id`, and the organisation `admin-key` that manages it (config
//!   `project-id` names the project). `create-pending` creates a new service account
//!   in the project with the admin API and answers its key; `retire` deletes the
//!   previous service account (already gone is success). See [`service_accounts`].
//!
//! Validation sends the key as a bearer token (with `OpenAI-Organization` /
//! `OpenAI-Project` from config `organization` / `project` when set). 2xx is a working
//! key: the detail names the organisation and project OpenAI reports in its
//! `openai-organization` / `openai-project` response headers, counts the models, and
//! repeats the `x-ratelimit-*` headers. 401/403 are a refused key (`valid: false`
//! with OpenAI's reason, the masked key it echoes redacted); 429 and 5xx are
//! `unavailable`.

pub mod service_accounts;

use latchkey_plugin_sdk::validate::{self, Answer};
use latchkey_plugin_sdk::{
    config, http, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};
use serde::Deserialize;

/// The real service; config `base-url` overrides it (a proxy, or a test fixture).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";
/// Any OpenAI key, validated only.
pub const KIND_API_KEY: &str = "api-key";
/// A project service account's key managed with an admin key (rotatable).
pub const KIND_SERVICE_ACCOUNT: &str = "openai-service-account";
const KINDS: &[&str] = &[KIND_API_KEY, KIND_SERVICE_ACCOUNT];

struct OpenAi;

/// The part of `GET /v1/models` this provider reads.
#[derive(Debug, Deserialize)]
struct Models {
    #[serde(default)]
    data: Vec<serde_json::Value>,
}

/// The detail for an accepted key. `header` gives a response header's (redacted)
/// value; organisation, project and rate limits are reported when present.
pub fn accepted_detail(models: usize, header: &dyn Fn(&str) -> Option<String>) -> String {
    let mut detail = String::from("key accepted by OpenAI");
    let scope: Vec<String> = [
        ("organization", "openai-organization"),
        ("project", "openai-project"),
    ]
    .iter()
    .filter_map(|(what, name)| {
        header(name)
            .filter(|v| !v.is_empty())
            .map(|v| format!("{what} {v}"))
    })
    .collect();
    if !scope.is_empty() {
        detail.push_str(&format!(" ({})", scope.join(", ")));
    }
    detail.push_str(&format!("; models listed: {models}"));
    detail.push_str(&validate::rate_limits(header));
    detail
}

/// Validates an OpenAI key with `GET /v1/models`.
fn validate_key(cfg: &[Field], base: &str, key: &str) -> Result<Validation, ProviderError> {
    let mut req = http::get(&format!("{base}/v1/models")).bearer(key);
    if let Some(org) = config::get(cfg, "organization").filter(|o| !o.is_empty()) {
        req = req.header("openai-organization", org);
    }
    if let Some(project) = config::get(cfg, "project").filter(|p| !p.is_empty()) {
        req = req.header("openai-project", project);
    }
    match validate::check(req, &[key], |_| false)? {
        Answer::Accepted(res) => {
            let models: Models = res.json()?;
            let header = |name: &str| res.header(name).map(|v| validate::redact(&v, &[key]));
            Ok(validate::valid(accepted_detail(models.data.len(), &header)))
        }
        Answer::Refused(why) => Ok(validate::invalid(format!("OpenAI refused the key: {why}"))),
    }
}

impl Provider for OpenAi {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "openai",
            env!("CARGO_PKG_VERSION"),
            KINDS,
            &[
                Operation::Validate,
                Operation::CreatePending,
                Operation::Retire,
            ],
        )
        .with_http(&["api.openai.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        validate::require_kind(&cred, KINDS)?;
        let base = validate::base_url(&cfg, DEFAULT_BASE_URL)?;
        if cred.kind == KIND_SERVICE_ACCOUNT
            && cred.field("api-key").is_none()
            && cred.field("key").is_none()
        {
            // A fresh service-account secret holds only the admin key: check that one.
            return service_accounts::validate_admin(&cfg, &base, &cred);
        }
        validate_key(&cfg, &base, validate::api_key(&cred)?)
    }

    fn create_pending(cfg: Vec<Field>, current: Credential) -> Result<Credential, ProviderError> {
        let base = validate::base_url(&cfg, DEFAULT_BASE_URL)?;
        service_accounts::create(&cfg, &base, &current)
    }

    fn retire(cfg: Vec<Field>, previous: Credential) -> Result<(), ProviderError> {
        let base = validate::base_url(&cfg, DEFAULT_BASE_URL)?;
        service_accounts::delete(&cfg, &base, &previous)
    }

    latchkey_plugin_sdk::unsupported! {
        refresh: "refresh: OpenAI keys are rotated, not refreshed",
    }
}

latchkey_plugin_sdk::export!(OpenAi);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_scope_and_limits() {
        let headers = |h: &str| match h {
            "openai-organization" => Some("org-abc".to_owned()),
            "openai-project" => Some("proj_xyz".to_owned()),
            "x-ratelimit-limit-requests" => Some("5000".to_owned()),
            "x-ratelimit-remaining-requests" => Some("4999".to_owned()),
            _ => None,
        };
        assert_eq!(
            accepted_detail(3, &headers),
            "key accepted by OpenAI (organization org-abc, project proj_xyz); models listed: 3; requests: 4999 of 5000 remaining"
        );
        assert_eq!(
            accepted_detail(0, &|_| None),
            "key accepted by OpenAI; models listed: 0"
        );
    }

    #[test]
    fn info_lists_both_kinds_and_rotation() {
        let info = OpenAi::info();
        assert_eq!(info.name, "openai");
        assert_eq!(
            info.kinds,
            vec!["api-key".to_owned(), "openai-service-account".to_owned()]
        );
        assert_eq!(
            info.operations,
            vec![
                Operation::Validate,
                Operation::CreatePending,
                Operation::Retire
            ]
        );
    }
}
