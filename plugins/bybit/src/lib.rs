//! Bybit API keys (v5, HMAC): `validate` signs `GET /v5/user/query-api` with the key's
//! secret and reports what the key may do (read, trade, transfer, withdraw, ...),
//! whether it is bound to IP addresses, and its expiry, so a policy can refuse keys
//! that can withdraw.
//!
//! Modules: [`sign`] builds the signature headers (pure, tested against Bybit's
//! documented example), [`answer`] turns the response into a validation or an error.
//! The configuration (`base-url`, `recv-window`) and the credential's fields are read
//! by `latchkey-exchange-common` (shared with `binance`); `expiredAt` is parsed by the
//! SDK's `time::parse_rfc3339`. The clock is the host's (wasi:clocks).
//!
//! Only `validate` is implemented: creating keys needs a master key with more rights
//! than a key should have to check itself.

pub mod answer;
pub mod sign;

use latchkey_exchange_common::SignedCall;
use latchkey_plugin_sdk::{
    http, time, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};

pub use latchkey_exchange_common::KIND;

/// The endpoint that reports a key's permissions.
pub const PATH: &str = "/v5/user/query-api";
/// Bybit's v5 REST API (mainnet; the testnet is `https://api-testnet.bybit.com`);
/// config `base-url` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://api.bybit.com";

struct Bybit;

impl Provider for Bybit {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "bybit",
            env!("CARGO_PKG_VERSION"),
            &[KIND],
            &[Operation::Validate],
        )
        .with_http(&["api.bybit.com", "api-testnet.bybit.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let call = SignedCall::read(&cfg, &cred, DEFAULT_BASE_URL)?;
        // query-api takes no parameters: the signed query string is empty.
        let headers = sign::headers(
            call.key,
            call.secret,
            time::now_ms()?,
            call.settings.recv_window_ms,
            "",
        );
        let mut req = http::get(&format!("{}{PATH}", call.settings.base_url));
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        let res = req.send()?;
        answer::interpret(res.status, &res.body)
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending",
        retire: "retire",
        refresh: "refresh",
    }
}

latchkey_plugin_sdk::export!(Bybit);
