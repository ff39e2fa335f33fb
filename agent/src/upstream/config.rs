//! The `[upstream]` section of `latchkey.toml`, as written.
//!
//! These are the serde shapes the config module embeds; each backend turns its
//! section into a client (`OpenBao::from_config`, `AwsSecretsManager::from_config`).
//! Unknown keys are refused. Credentials (tokens, AppRole secret ids) deserialize into
//! [`SecretString`], so a `Debug` of a config never shows them. Field doc comments are
//! user documentation.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::SecretString;

/// One upstream, tagged by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
pub enum UpstreamConfig {
    /// OpenBao or HashiCorp Vault, KV version 2 (`kind = "openbao"` or `"vault"`).
    #[serde(rename = "openbao", alias = "vault")]
    OpenBao(Box<OpenBaoConfig>),
    /// AWS Secrets Manager (`kind = "aws"`).
    #[serde(rename = "aws")]
    Aws(AwsConfig),
    /// The embedded local store (`kind = "local"`).
    #[serde(rename = "local")]
    Local(LocalConfig),
}

impl UpstreamConfig {
    /// The configured name.
    pub fn name(&self) -> &str {
        match self {
            Self::OpenBao(c) => &c.name,
            Self::Aws(c) => &c.name,
            Self::Local(c) => &c.name,
        }
    }
}

/// OpenBao / Vault KV v2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoConfig {
    /// Name in logs, metrics and errors.
    #[serde(default = "default_openbao_name")]
    pub name: String,
    /// Server URLs, tried in order; a failing one is skipped for a while
    /// (circuit breaker) and the next is used. E.g. `["https://bao-1:8200"]`.
    pub addresses: Vec<String>,
    /// Enterprise/OpenBao namespace, sent as `X-Vault-Namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// KV v2 mount. Default `secret`.
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    /// Where an agent path lives under the mount; must end with `{path}` and may use
    /// `{tenant}`. Default `{path}`.
    #[serde(default = "default_template")]
    pub path_template: String,
    /// Value of `{tenant}` in `path_template`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// PEM file with the CA(s) that signed the servers' certificates; when set, only
    /// these are trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connect timeout, e.g. `3s`.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Whole-request timeout, e.g. `10s`.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Consecutive failures after which an address is skipped. Default 3.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long a failing address is first skipped (doubles per trip, at most 60s).
    #[serde(default = "default_breaker_open_for", with = "duration")]
    pub breaker_open_for: Duration,
    /// How to log in.
    pub auth: OpenBaoAuthConfig,
    /// Transit key wrapping of the local data key, if used.
    #[serde(default)]
    pub transit: Option<TransitConfig>,
}

/// How the agent logs in to OpenBao / Vault, tagged by `method`.
#[derive(Debug, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum OpenBaoAuthConfig {
    /// A token given inline or in a file, renewed before it expires.
    Token {
        /// The token itself (prefer `token_file`).
        #[serde(default)]
        token: Option<SecretString>,
        /// A file holding the token.
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// AppRole: role id and secret id, each read from a file (or the secret id inline).
    #[serde(rename = "approle")]
    AppRole {
        /// Auth mount. Default `approle`.
        #[serde(default = "default_approle_mount")]
        mount: String,
        /// File holding the role id.
        role_id_file: PathBuf,
        /// File holding the secret id.
        #[serde(default)]
        secret_id_file: Option<PathBuf>,
        /// The secret id itself (prefer `secret_id_file`).
        #[serde(default)]
        secret_id: Option<SecretString>,
    },
    /// JWT / OIDC: a JWT read from a file on every login (e.g. a Kubernetes
    /// service-account token, which the kubelet rotates).
    Jwt {
        /// Auth mount. Default `jwt`.
        #[serde(default = "default_jwt_mount")]
        mount: String,
        /// Role to log in as.
        role: String,
        /// File holding the JWT.
        jwt_file: PathBuf,
    },
}

/// Transit key wrapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    /// Transit mount. Default `transit`.
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    /// Name of the Transit key.
    pub key: String,
}

/// AWS Secrets Manager. Credentials and region come from the SDK's normal chain
/// (environment, profile, web identity, ECS/EC2 metadata) unless set here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Name in logs, metrics and errors.
    #[serde(default = "default_aws_name")]
    pub name: String,
    /// Region, e.g. `eu-west-1`; default from the environment or profile.
    #[serde(default)]
    pub region: Option<String>,
    /// Profile in `~/.aws/config`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Endpoint override (testing, VPC endpoints), e.g. `http://127.0.0.1:5000`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Secret name for an agent path; must end with `{path}`, may use `{tenant}`.
    #[serde(default = "default_template")]
    pub name_template: String,
    /// Value of `{tenant}`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Recovery window of a delete, 7 to 30 days; 0 deletes at once with no recovery.
    #[serde(default = "default_recovery_window_days")]
    pub recovery_window_days: i64,
    /// Connect timeout, e.g. `3s`.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Limit for one attempt of a call, e.g. `10s` (the SDK retries a failed attempt
    /// a few times on its own).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
}

/// The embedded local store; its options are owned by the store module.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Name in logs, metrics and errors.
    #[serde(default = "default_local_name")]
    pub name: String,
}

fn default_openbao_name() -> String {
    "openbao".to_owned()
}
fn default_aws_name() -> String {
    "aws".to_owned()
}
fn default_local_name() -> String {
    "local".to_owned()
}
fn default_kv_mount() -> String {
    "secret".to_owned()
}
fn default_template() -> String {
    "{path}".to_owned()
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}
fn default_jwt_mount() -> String {
    "jwt".to_owned()
}
fn default_transit_mount() -> String {
    "transit".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_breaker_threshold() -> u32 {
    3
}
fn default_breaker_open_for() -> Duration {
    Duration::from_secs(5)
}
fn default_recovery_window_days() -> i64 {
    7
}

/// Durations written as `30s`, `5m`, `1h 30m`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        upstream: Vec<UpstreamConfig>,
    }

    #[test]
    fn parses_each_kind_and_hides_secrets() {
        let text = r#"
            [[upstream]]
            kind = "vault"
            addresses = ["https://bao-1:8200", "https://bao-2:8200"]
            path_template = "tenants/{tenant}/{path}"
            tenant = "acme"
            request_timeout = "5s"
            auth = { method = "token", token = "s.topsecret" }

            [[upstream]]
            kind = "openbao"
            name = "bao-approle"
            addresses = ["http://127.0.0.1:8200"]
            auth = { method = "approle", role_id_file = "/run/role", secret_id = "sid-secret" }
            transit = { key = "latchkey" }

            [[upstream]]
            kind = "aws"
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:5000"

            [[upstream]]
            kind = "local"
        "#;
        let file: File = toml::from_str(text).expect("valid config");
        assert_eq!(file.upstream.len(), 4);
        let UpstreamConfig::OpenBao(first) = &file.upstream[0] else {
            panic!("first is openbao");
        };
        assert_eq!(first.request_timeout, Duration::from_secs(5));
        assert_eq!(first.mount, "secret");
        assert_eq!(file.upstream[1].name(), "bao-approle");
        assert_eq!(file.upstream[2].name(), "aws");
        let dbg = format!("{file:?}");
        assert!(!dbg.contains("topsecret"));
        assert!(!dbg.contains("sid-secret"));
    }

    #[test]
    fn refuses_unknown_keys_and_kinds() {
        let unknown_key = r#"
            [[upstream]]
            kind = "aws"
            regoin = "eu-west-1"
        "#;
        assert!(toml::from_str::<File>(unknown_key).is_err());
        let unknown_kind = r#"
            [[upstream]]
            kind = "consul"
        "#;
        assert!(toml::from_str::<File>(unknown_kind).is_err());
        let unknown_auth_key = r#"
            [[upstream]]
            kind = "openbao"
            addresses = ["http://127.0.0.1:8200"]
            auth = { method = "jwt", role = "r", jwt_file = "/t", secret = "x" }
        "#;
        assert!(toml::from_str::<File>(unknown_auth_key).is_err());
    }
}
