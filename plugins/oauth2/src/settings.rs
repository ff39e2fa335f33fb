//! The provider configuration (`config: list<field>`), read into typed settings.
//!
//! Pure: takes the fields the host passes, returns [`Settings`] or `invalid-config`
//! naming the key. Nothing here talks to the network; `discovery` and `token` use
//! the result.

use latchkey_plugin_sdk::{config, Field, ProviderError};

/// Which OAuth 2 grant `refresh` asks the token endpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// RFC 6749 §6: trade the credential's refresh token for a new access token.
    RefreshToken,
    /// RFC 6749 §4.4: the client authenticates as itself; no refresh token involved.
    ClientCredentials,
}

impl Grant {
    /// The `grant_type` parameter value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// How a confidential client authenticates at the token and introspection endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-urlencoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Body,
}

/// The validated configuration of one credential's OAuth 2 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `token-endpoint`: where `refresh` posts; found by discovery when absent.
    pub(crate) token_endpoint: Option<String>,
    /// `issuer`: the OpenID Provider whose discovery document names the endpoints.
    pub(crate) issuer: Option<String>,
    /// `grant`; `None` picks refresh_token when the credential has a refresh token.
    pub(crate) grant: Option<Grant>,
    /// `client-auth` (default `basic`).
    pub(crate) client_auth: ClientAuth,
    /// `scope` to request (space-separated), if any.
    pub(crate) scope: Option<String>,
    /// `audience` to request (an extra token request parameter some servers use).
    pub(crate) audience: Option<String>,
    /// `userinfo-endpoint`, used by `validate`.
    pub(crate) userinfo_endpoint: Option<String>,
    /// `introspection-endpoint` (RFC 7662), used by `validate` without userinfo.
    pub(crate) introspection_endpoint: Option<String>,
}

/// A non-empty config value, trimmed.
fn value(cfg: &[Field], name: &str) -> Option<String> {
    config::get(cfg, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A URL config value: must be `http://` or `https://`.
fn url(cfg: &[Field], name: &str) -> Result<Option<String>, ProviderError> {
    match value(cfg, name) {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(Some(u)),
        Some(_) => Err(ProviderError::InvalidConfig(format!(
            "config {name} must be an http:// or https:// URL"
        ))),
        None => Ok(None),
    }
}

impl Settings {
    /// Reads and checks the configuration fields.
    pub(crate) fn from_fields(cfg: &[Field]) -> Result<Self, ProviderError> {
        let grant = match value(cfg, "grant").as_deref() {
            None => None,
            Some("refresh_token" | "refresh-token") => Some(Grant::RefreshToken),
            Some("client_credentials" | "client-credentials") => Some(Grant::ClientCredentials),
            Some(_) => {
                return Err(ProviderError::InvalidConfig(
                    "config grant must be refresh_token or client_credentials".into(),
                ))
            }
        };
        let client_auth = match value(cfg, "client-auth").as_deref() {
            None | Some("basic" | "client_secret_basic") => ClientAuth::Basic,
            Some("body" | "post" | "client_secret_post") => ClientAuth::Body,
            Some(_) => {
                return Err(ProviderError::InvalidConfig(
                    "config client-auth must be basic or body".into(),
                ))
            }
        };
        let settings = Settings {
            token_endpoint: url(cfg, "token-endpoint")?,
            issuer: url(cfg, "issuer")?,
            grant,
            client_auth,
            scope: value(cfg, "scope"),
            audience: value(cfg, "audience"),
            userinfo_endpoint: url(cfg, "userinfo-endpoint")?,
            introspection_endpoint: url(cfg, "introspection-endpoint")?,
        };
        if settings.token_endpoint.is_none() && settings.issuer.is_none() {
            return Err(ProviderError::InvalidConfig(
                "config needs token-endpoint or issuer".into(),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(n, v)| Field {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect()
    }

    #[test]
    fn defaults_to_basic_auth_and_no_fixed_grant() {
        let s = Settings::from_fields(&fields(&[("token-endpoint", "https://idp/token")]))
            .expect("valid");
        assert_eq!(s.client_auth, ClientAuth::Basic);
        assert_eq!(s.grant, None);
        assert_eq!(s.token_endpoint.as_deref(), Some("https://idp/token"));
    }

    #[test]
    fn reads_every_key() {
        let s = Settings::from_fields(&fields(&[
            ("issuer", "https://idp.example"),
            ("grant", "client_credentials"),
            ("client-auth", "body"),
            ("scope", "read write"),
            ("audience", "https://api.example"),
            ("userinfo-endpoint", "https://idp.example/me"),
            ("introspection-endpoint", "https://idp.example/introspect"),
        ]))
        .expect("valid");
        assert_eq!(s.grant, Some(Grant::ClientCredentials));
        assert_eq!(s.client_auth, ClientAuth::Body);
        assert_eq!(s.scope.as_deref(), Some("read write"));
        assert_eq!(s.audience.as_deref(), Some("https://api.example"));
        assert!(s.userinfo_endpoint.is_some() && s.introspection_endpoint.is_some());
    }

    #[test]
    fn refuses_missing_endpoint_and_bad_values() {
        for bad in [
            fields(&[]),
            fields(&[("token-endpoint", "ftp://x")]),
            fields(&[("issuer", "https://x"), ("grant", "password")]),
            fields(&[("issuer", "https://x"), ("client-auth", "jwt")]),
        ] {
            assert!(matches!(
                Settings::from_fields(&bad),
                Err(ProviderError::InvalidConfig(_))
            ));
        }
    }
}
