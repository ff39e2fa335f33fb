//! OpenID Connect discovery: finds an issuer's endpoints from
//! `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4).
//!
//! Used when the configuration names an `issuer` instead of (or besides) the
//! endpoints themselves. Configured endpoints always win over discovered ones.

use latchkey_plugin_sdk::{http, ProviderError};
use serde_json::Value;

use crate::settings::Settings;

/// The endpoints an OAuth 2 server offers, as far as they are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Endpoints {
    /// Where tokens are issued and refreshed.
    pub(crate) token: Option<String>,
    /// OpenID Connect userinfo (accepts a bearer access token).
    pub(crate) userinfo: Option<String>,
    /// RFC 7662 token introspection.
    pub(crate) introspection: Option<String>,
}

impl Endpoints {
    /// The endpoints the configuration names itself.
    pub(crate) fn configured(settings: &Settings) -> Self {
        Endpoints {
            token: settings.token_endpoint.clone(),
            userinfo: settings.userinfo_endpoint.clone(),
            introspection: settings.introspection_endpoint.clone(),
        }
    }

    /// Fills the gaps in `self` from `discovered`.
    fn or(self, discovered: Endpoints) -> Self {
        Endpoints {
            token: self.token.or(discovered.token),
            userinfo: self.userinfo.or(discovered.userinfo),
            introspection: self.introspection.or(discovered.introspection),
        }
    }
}

/// The configured endpoints, completed by discovery when `needed` says a missing one
/// matters and an issuer is configured.
pub(crate) fn resolve(
    settings: &Settings,
    needed: impl Fn(&Endpoints) -> bool,
) -> Result<Endpoints, ProviderError> {
    let configured = Endpoints::configured(settings);
    match &settings.issuer {
        Some(issuer) if needed(&configured) => Ok(configured.or(discover(issuer)?)),
        _ => Ok(configured),
    }
}

/// The discovery document's URL for `issuer`.
pub(crate) fn document_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches and reads the issuer's discovery document.
pub(crate) fn discover(issuer: &str) -> Result<Endpoints, ProviderError> {
    let res = http::get(&document_url(issuer))
        .header("accept", "application/json")
        .send()?;
    match res.status {
        200..=299 => {}
        408 | 429 | 500..=599 => return Err(ProviderError::from_status(res.status)),
        status => {
            return Err(ProviderError::InvalidConfig(format!(
                "no OpenID discovery document at the issuer (it answered {status})"
            )))
        }
    }
    let doc: Value = res.json()?;
    parse(issuer, &doc)
}

/// Reads the endpoints out of a discovery document, checking that it describes
/// `issuer` (§4.3: the `issuer` value must be identical to the one asked for).
pub(crate) fn parse(issuer: &str, doc: &Value) -> Result<Endpoints, ProviderError> {
    let text = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(str::to_owned)
    };
    let named = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(ProviderError::InvalidConfig(format!(
            "the discovery document is for issuer {named:?}, not {issuer:?}"
        )));
    }
    let token = text("token_endpoint").ok_or_else(|| {
        ProviderError::Unavailable("the discovery document has no token_endpoint URL".into())
    })?;
    Ok(Endpoints {
        token: Some(token),
        userinfo: text("userinfo_endpoint"),
        introspection: text("introspection_endpoint"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_the_well_known_url() {
        assert_eq!(
            document_url("https://idp.example/realms/a/"),
            "https://idp.example/realms/a/.well-known/openid-configuration"
        );
    }

    #[test]
    fn reads_endpoints_from_a_document() {
        let doc = json!({
            "issuer": "http://127.0.0.1:8080",
            "token_endpoint": "http://127.0.0.1:8080/token",
            "userinfo_endpoint": "http://127.0.0.1:8080/userinfo",
            "introspection_endpoint": "http://127.0.0.1:8080/introspect",
        });
        let e = parse("http://127.0.0.1:8080/", &doc).expect("valid document");
        assert_eq!(e.token.as_deref(), Some("http://127.0.0.1:8080/token"));
        assert_eq!(
            e.userinfo.as_deref(),
            Some("http://127.0.0.1:8080/userinfo")
        );
        assert_eq!(
            e.introspection.as_deref(),
            Some("http://127.0.0.1:8080/introspect")
        );
    }

    #[test]
    fn refuses_a_document_for_another_issuer_or_without_token_endpoint() {
        let other =
            json!({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/t"});
        assert!(matches!(
            parse("https://idp.example", &other),
            Err(ProviderError::InvalidConfig(_))
        ));
        let none = json!({"issuer": "https://idp.example"});
        assert!(parse("https://idp.example", &none).is_err());
    }

    #[test]
    fn configured_endpoints_win() {
        let configured = Endpoints {
            token: Some("https://a/token".into()),
            ..Endpoints::default()
        };
        let discovered = Endpoints {
            token: Some("https://b/token".into()),
            userinfo: Some("https://b/me".into()),
            introspection: None,
        };
        let e = configured.or(discovered);
        assert_eq!(e.token.as_deref(), Some("https://a/token"));
        assert_eq!(e.userinfo.as_deref(), Some("https://b/me"));
    }
}
