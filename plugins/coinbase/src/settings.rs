//! The provider configuration: `base-url` (default the real API). Coinbase has no
//! receive window: a JWT is valid from `nbf` (now) to `exp` (now + 120 s).

use latchkey_plugin_sdk::{validate, Field, ProviderError};

/// Coinbase's REST API.
pub const DEFAULT_BASE_URL: &str = "https://api.coinbase.com";

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `scheme://host[:port]`, no trailing slash.
    pub base_url: String,
}

impl Settings {
    /// Reads `base-url`; `invalid-config` if it is not an http(s) URL of a host.
    pub fn from_config(cfg: &[Field]) -> Result<Self, ProviderError> {
        let settings = Self {
            base_url: validate::base_url(cfg, DEFAULT_BASE_URL)?,
        };
        if settings.authority().is_none() {
            return Err(ProviderError::InvalidConfig(
                "base-url must be https://host[:port] or http://host[:port]".into(),
            ));
        }
        Ok(settings)
    }

    /// `host[:port]` of the base URL: what the JWT's `uri` claim names.
    pub fn authority(&self) -> Option<&str> {
        let rest = self
            .base_url
            .strip_prefix("https://")
            .or_else(|| self.base_url.strip_prefix("http://"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        (!authority.is_empty()).then_some(authority)
    }

    /// The path prefix after the authority (empty for a bare host).
    pub fn path_prefix(&self) -> &str {
        let rest = self
            .base_url
            .strip_prefix("https://")
            .or_else(|| self.base_url.strip_prefix("http://"))
            .unwrap_or_default();
        rest.find('/').map_or("", |i| &rest[i..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(value: &str) -> Result<Settings, ProviderError> {
        Settings::from_config(&[Field {
            name: "base-url".into(),
            value: value.into(),
        }])
    }

    #[test]
    fn defaults_to_the_real_api() {
        let s = Settings::from_config(&[]).expect("defaults");
        assert_eq!(s.authority(), Some("api.coinbase.com"));
        assert_eq!(s.path_prefix(), "");
    }

    #[test]
    fn keeps_the_port_and_refuses_non_urls() {
        let s = base("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(s.authority(), Some("127.0.0.1:8080"));
        assert!(matches!(
            base("api.coinbase.com"),
            Err(ProviderError::InvalidConfig(_))
        ));
        assert!(matches!(
            base("https://"),
            Err(ProviderError::InvalidConfig(_))
        ));
    }
}
