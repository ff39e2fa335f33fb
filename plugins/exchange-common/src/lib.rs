//! What the HMAC-signed exchange providers (`plugins/binance`, `plugins/bybit`)
//! share: their configuration ([`Settings`]: `base-url` and `recv-window`) and the
//! checked inputs of a signed `validate` call ([`SignedCall`]).
//!
//! Both exchanges sign a request with the key's secret over a timestamp that must lie
//! within a receive window of the exchange's clock; each provider builds its own
//! signature (`sign.rs`) and reads its own answer (`answer.rs`). A plain library,
//! not a plugin: it has no `plugin.toml`.

use latchkey_plugin_sdk::{config, validate, Credential, Field, ProviderError};

/// The credential kind the exchange providers handle.
pub const KIND: &str = "api-key";
/// The exchanges' default receive window (Binance `recvWindow`, Bybit
/// `X-BAPI-RECV-WINDOW`).
pub const DEFAULT_RECV_WINDOW_MS: u64 = 5000;
/// The largest receive window: what Binance accepts, and for Bybit the largest this
/// provider sends (a wider one only weakens replay protection).
pub const MAX_RECV_WINDOW_MS: u64 = 60_000;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `scheme://host[:port]`, no trailing slash.
    pub base_url: String,
    /// The receive window in milliseconds.
    pub recv_window_ms: u64,
}

impl Settings {
    /// Reads `base-url` (default `default_base_url`) and `recv-window`;
    /// `invalid-config` names a bad field.
    pub fn from_config(cfg: &[Field], default_base_url: &str) -> Result<Self, ProviderError> {
        let base_url = validate::base_url(cfg, default_base_url)?;
        let recv_window_ms = match config::get(cfg, "recv-window") {
            None => DEFAULT_RECV_WINDOW_MS,
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| (1..=MAX_RECV_WINDOW_MS).contains(ms))
                .ok_or_else(|| {
                    ProviderError::InvalidConfig(format!(
                        "recv-window must be 1..={MAX_RECV_WINDOW_MS} milliseconds"
                    ))
                })?,
        };
        Ok(Self {
            base_url,
            recv_window_ms,
        })
    }
}

/// The checked inputs of a signed `validate` call.
#[derive(Debug)]
pub struct SignedCall<'a> {
    /// The configuration.
    pub settings: Settings,
    /// Credential field `api-key`, sent in a header.
    pub key: &'a str,
    /// Credential field `api-secret`, which signs and is never sent.
    pub secret: &'a str,
}

impl<'a> SignedCall<'a> {
    /// Checks the credential kind (`unsupported` unless [`KIND`]), reads the settings,
    /// then the credential's `api-key` and `api-secret` (`invalid-config` naming a
    /// missing field), in that order.
    pub fn read(
        cfg: &[Field],
        cred: &'a Credential,
        default_base_url: &str,
    ) -> Result<Self, ProviderError> {
        validate::require_kind(cred, &[KIND])?;
        let settings = Settings::from_config(cfg, default_base_url)?;
        Ok(Self {
            settings,
            key: cred.require("api-key")?,
            secret: cred.require("api-secret")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "https://api.exchange.example";

    fn field(name: &str, value: &str) -> Field {
        Field {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn defaults_to_the_real_api() {
        let s = Settings::from_config(&[], DEFAULT).expect("defaults");
        assert_eq!(s.base_url, DEFAULT);
        assert_eq!(s.recv_window_ms, 5000);
        let s = Settings::from_config(&[field("recv-window", "60000")], DEFAULT).expect("valid");
        assert_eq!(s.recv_window_ms, 60_000);
    }

    #[test]
    fn rejects_bad_values() {
        for (name, value) in [
            ("recv-window", "0"),
            ("recv-window", "60001"),
            ("recv-window", "5s"),
            ("base-url", "api.exchange.example"),
        ] {
            assert!(matches!(
                Settings::from_config(&[field(name, value)], DEFAULT),
                Err(ProviderError::InvalidConfig(_))
            ));
        }
        let s = Settings::from_config(&[field("base-url", "http://127.0.0.1:8080/")], DEFAULT)
            .expect("valid");
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn reads_kind_key_and_secret_in_order() {
        let cred = Credential::new(
            KIND,
            [("api-key", "k".to_owned()), ("api-secret", "s".to_owned())],
        );
        let call = SignedCall::read(&[], &cred, DEFAULT).expect("valid");
        assert_eq!((call.key, call.secret), ("k", "s"));
        let other = Credential::new("oauth2", [("api-key", "k".to_owned())]);
        assert!(matches!(
            SignedCall::read(&[field("recv-window", "0")], &other, DEFAULT),
            Err(ProviderError::Unsupported(_))
        ));
        let no_secret = Credential::new(KIND, [("api-key", "k".to_owned())]);
        match SignedCall::read(&[], &no_secret, DEFAULT) {
            Err(ProviderError::InvalidConfig(d)) => assert!(d.contains("api-secret"), "{d}"),
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }
}
