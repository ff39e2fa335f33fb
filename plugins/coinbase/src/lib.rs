//! Coinbase Advanced Trade API keys (CDP keys, ECDSA): `validate` calls
//! `GET /api/v3/brokerage/key_permissions` with a fresh ES256 JWT signed by the key and
//! reports what the key may do (read, trade, transfer/withdraw), so a policy can refuse
//! keys that can move funds out.
//!
//! Modules: [`settings`] reads the configuration, [`jwt`] builds the token (pure,
//! RFC 6979 deterministic signing, tested against an independent implementation),
//! [`answer`] turns the response into a validation or an error, reading the service's
//! clock from its `Date` header (the SDK's `time::parse_http_date`) to recognize clock
//! skew. Time comes from the host's clock (wasi:clocks), the nonce from its randomness
//! (wasi:random).
//!
//! Only `validate` is implemented: CDP keys are created in the CDP portal, not by API.

pub mod answer;
pub mod jwt;
pub mod settings;

use latchkey_plugin_sdk::{
    http, secret, time, validate, Credential, Field, Operation, Provider, ProviderError,
    ProviderInfo, Validation,
};

/// The credential kind this provider handles.
pub const KIND: &str = "api-key";
/// The endpoint that reports a key's permissions.
pub const PATH: &str = "/api/v3/brokerage/key_permissions";

struct Coinbase;

impl Provider for Coinbase {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "coinbase",
            env!("CARGO_PKG_VERSION"),
            &[KIND],
            &[Operation::Validate],
        )
        .with_http(&["api.coinbase.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        validate::require_kind(&cred, &[KIND])?;
        let settings = settings::Settings::from_config(&cfg)?;
        let authority = settings
            .authority()
            .ok_or_else(|| ProviderError::InvalidConfig("base-url has no host".into()))?;
        let key_name = cred.require("key-name")?;
        let key = match jwt::signing_key(cred.require("private-key")?) {
            Ok(key) => key,
            // The credential itself cannot work: an answer about it, not an error.
            Err(e) => return Ok(validate::invalid(e.to_string())),
        };
        let path = format!("{}{PATH}", settings.path_prefix());
        let uri = jwt::uri("GET", authority, &path);
        let now = time::now_secs()?;
        let token = jwt::token(key_name, &key, &uri, now, &secret::token_hex(16));
        let res = http::get(&format!("{}{PATH}", settings.base_url))
            .bearer(&token)
            .send()?;
        answer::interpret(res.status, &res.body, res.header("date").as_deref(), now)
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending",
        retire: "retire",
        refresh: "refresh",
    }
}

latchkey_plugin_sdk::export!(Coinbase);
