//! Project service accounts through OpenAI's admin API: rotation for the
//! `openai-service-account` kind.
//!
//! All calls authenticate with the organisation admin key from credential field
//! `admin-key` (a bearer token) on the project named by config `project-id`:
//!
//! - `create`: `POST /v1/organization/projects/{project_id}/service_accounts` with
//!   `{"name": "<service-account-name>-<unix seconds>"}` (and `expires_in_seconds` from
//!   config `key-expires-in-seconds`). The answer's `api_key.value` is the new key;
//!   the new credential carries it with the account's `id` (for `retire`), the key's
//!   id, and the admin key and any other fields copied from the current credential.
//! - `delete`: `DELETE /v1/organization/projects/{project_id}/service_accounts/{id}`;
//!   404 means already gone, which is success.
//! - `validate_admin`: `GET /v1/organization/projects/{project_id}`, to check a
//!   credential that holds only the admin key (before its first rotation).
//!
//! Non-2xx answers become errors with OpenAI's message, the keys redacted.

use latchkey_plugin_sdk::validate;
use latchkey_plugin_sdk::{config, http, log, Credential, Field, ProviderError, Validation};
use serde::Deserialize;

use crate::KIND_SERVICE_ACCOUNT;

/// Name prefix of created service accounts unless config `service-account-name` says
/// otherwise.
pub const DEFAULT_NAME: &str = "latchkey";

/// The answer to creating a service account, as OpenAI documents it.
#[derive(Debug, Deserialize)]
pub struct Created {
    /// The service account's id (`svc_acct_…`).
    pub id: String,
    /// Its first API key; `null` when created without one.
    #[serde(default)]
    pub api_key: Option<CreatedKey>,
}

/// The API key created with a service account. No `Debug`: it holds the key.
#[derive(Deserialize)]
pub struct CreatedKey {
    /// The key itself, shown only in this answer.
    pub value: String,
    /// The key's id (`key_…`).
    #[serde(default)]
    pub id: Option<String>,
    /// When the key expires (Unix seconds), if it does.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A project, as `GET /v1/organization/projects/{id}` answers.
#[derive(Debug, Deserialize)]
struct Project {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// The admin key, the project and the projects URL for a service-account call.
struct Admin<'a> {
    key: &'a str,
    projects_url: String,
}

impl<'a> Admin<'a> {
    fn new(cfg: &[Field], base: &str, cred: &'a Credential) -> Result<Self, ProviderError> {
        validate::require_kind(cred, &[KIND_SERVICE_ACCOUNT])?;
        let key = cred.require("admin-key")?;
        let project = config::require(cfg, "project-id")?;
        Ok(Self {
            key,
            projects_url: format!(
                "{base}/v1/organization/projects/{}",
                http::urlencode(project)
            ),
        })
    }
}

/// The name of a new service account: `<prefix>-<unix seconds>`.
pub fn account_name(prefix: &str, now: u64) -> String {
    format!("{prefix}-{now}")
}

/// The credential for a created service account: `current`'s fields (the admin key
/// and anything else) with the new `api-key`, `service-account-id` and `api-key-id`.
/// A `key` alias from `current` is dropped, as it would name the old key.
pub fn new_credential(current: &Credential, id: &str, key: CreatedKey) -> Credential {
    const REPLACED: &[&str] = &["api-key", "key", "service-account-id", "api-key-id"];
    let mut fields: Vec<Field> = current
        .fields
        .iter()
        .filter(|f| !REPLACED.contains(&f.name.as_str()))
        .cloned()
        .collect();
    let mut push = |name: &str, value: String| {
        fields.push(Field {
            name: name.to_owned(),
            value,
        })
    };
    push("api-key", key.value);
    push("service-account-id", id.to_owned());
    if let Some(key_id) = key.id {
        push("api-key-id", key_id);
    }
    Credential {
        kind: KIND_SERVICE_ACCOUNT.to_owned(),
        fields,
        expires_at: key.expires_at,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates a service account (with its first key) next to `current`.
pub fn create(
    cfg: &[Field],
    base: &str,
    current: &Credential,
) -> Result<Credential, ProviderError> {
    let admin = Admin::new(cfg, base, current)?;
    let prefix = config::get(cfg, "service-account-name")
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(DEFAULT_NAME);
    let mut body = serde_json::json!({ "name": account_name(prefix, now()) });
    if let Some(ttl) = config::get(cfg, "key-expires-in-seconds") {
        let ttl: u64 = ttl.trim().parse().map_err(|_| {
            ProviderError::InvalidConfig("config key-expires-in-seconds is not a number".into())
        })?;
        body["expires_in_seconds"] = ttl.into();
    }
    let res = http::post(&format!("{}/service_accounts", admin.projects_url))
        .bearer(admin.key)
        .json(&body)?
        .send()?;
    if !(200..300).contains(&res.status) {
        return Err(validate::status_error(&res, &[admin.key]));
    }
    let created: Created = res.json()?;
    match created.api_key {
        Some(key) => Ok(new_credential(current, &created.id, key)),
        None => {
            log::warn(format!(
                "service account {} was created without an API key; delete it in the project",
                validate::redact(&created.id, &[admin.key])
            ));
            Err(ProviderError::Rejected(
                "OpenAI created the service account without an API key".into(),
            ))
        }
    }
}

/// Deletes `previous`'s service account. Already gone (404) is success; a credential
/// without `service-account-id` was not created by `create` and has nothing to delete.
pub fn delete(cfg: &[Field], base: &str, previous: &Credential) -> Result<(), ProviderError> {
    let admin = Admin::new(cfg, base, previous)?;
    let Some(id) = previous
        .field("service-account-id")
        .filter(|i| !i.is_empty())
    else {
        log::info("credential has no service-account-id: no service account to delete");
        return Ok(());
    };
    let res = http::delete(&format!(
        "{}/service_accounts/{}",
        admin.projects_url,
        http::urlencode(id)
    ))
    .bearer(admin.key)
    .send()?;
    match res.status {
        200..=299 | 404 => Ok(()),
        _ => Err(validate::status_error(&res, &[admin.key])),
    }
}

/// Validates a credential that holds only the admin key by reading the project.
pub fn validate_admin(
    cfg: &[Field],
    base: &str,
    cred: &Credential,
) -> Result<Validation, ProviderError> {
    let admin = Admin::new(cfg, base, cred)?;
    let req = http::get(&admin.projects_url).bearer(admin.key);
    match validate::check(req, &[admin.key], |_| false)? {
        validate::Answer::Accepted(res) => {
            let p: Project = res.json()?;
            let mut detail = format!("admin key accepted by OpenAI; project {}", p.id);
            if let Some(name) = p.name {
                detail.push_str(&format!(" {name:?}"));
            }
            if let Some(status) = p.status {
                detail.push_str(&format!(" ({status})"));
            }
            Ok(validate::valid(validate::redact(&detail, &[admin.key])))
        }
        validate::Answer::Refused(why) => Ok(validate::invalid(format!(
            "OpenAI refused the admin key: {why}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_create_answer() {
        let body = r#"{"object":"organization.project.service_account","id":"svc_acct_abc",
            "name":"Production App","role":"member","created_at":1711471533,
            "api_key":{"object":"organization.project.service_account.api_key",
            "value":"sk-abcdefghijklmnop123","name":"Secret Key","created_at":1711471533,"id":"key_abc"}}"#;
        let created: Created = serde_json::from_str(body).expect("documented shape");
        assert_eq!(created.id, "svc_acct_abc");
        assert!(!format!("{created:?}").contains("sk-abcdefghijklmnop123"));
        let current = Credential::new(
            KIND_SERVICE_ACCOUNT,
            [
                ("admin-key", "sk-admin-1".to_owned()),
                ("key", "sk-old".to_owned()),
                ("service-account-id", "svc_acct_old".to_owned()),
                ("note", "team x".to_owned()),
            ],
        );
        let key = created.api_key.expect("a key");
        let new = new_credential(&current, &created.id, key);
        assert_eq!(new.kind, "openai-service-account");
        assert_eq!(new.field("api-key"), Some("sk-abcdefghijklmnop123"));
        assert_eq!(new.field("service-account-id"), Some("svc_acct_abc"));
        assert_eq!(new.field("api-key-id"), Some("key_abc"));
        assert_eq!(new.field("admin-key"), Some("sk-admin-1"));
        assert_eq!(new.field("note"), Some("team x"));
        assert_eq!(new.field("key"), None);
        assert_eq!(new.expires_at, None);
    }

    #[test]
    fn names_accounts_by_prefix_and_time() {
        assert_eq!(
            account_name("latchkey", 1_700_000_000),
            "latchkey-1700000000"
        );
    }
}
