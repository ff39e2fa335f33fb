//! Binance API keys: `validate` signs `GET /sapi/v1/account/apiRestrictions` with the
//! key's secret and reports what the key may do (read, trade, withdraw, ...), whether
//! it is bound to IP addresses, and when its trading permission lapses, so a policy
//! can refuse keys that can withdraw.
//!
//! Modules: [`sign`] builds the signed query (pure, tested against Binance's
//! published examples), [`answer`] turns the response into a validation or an error.
//! The configuration (`base-url`, `recv-window`) and the credential's fields are read
//! by `latchkey-exchange-common` (shared with `bybit`). The clock is the host's
//! (wasi:clocks).
//!
//! Binance offers no API to create or delete a master account's keys, so only
//! `validate` is implemented.

pub mod answer;
pub mod sign;

use latchkey_exchange_common::SignedCall;
use latchkey_plugin_sdk::{
    http, time, Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};

pub use latchkey_exchange_common::KIND;

/// The endpoint that reports a key's permissions.
pub const PATH: &str = "/sapi/v1/account/apiRestrictions";
/// Binance's REST API; config `base-url` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://api.binance.com";

struct Binance;

impl Provider for Binance {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "binance",
            env!("CARGO_PKG_VERSION"),
            &[KIND],
            &[Operation::Validate],
        )
        .with_http(&["api.binance.com"])
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        let call = SignedCall::read(&cfg, &cred, DEFAULT_BASE_URL)?;
        let query = sign::signed_query(call.secret, time::now_ms()?, call.settings.recv_window_ms);
        let res = http::get(&format!("{}{PATH}?{query}", call.settings.base_url))
            .header("X-MBX-APIKEY", call.key)
            .send()?;
        answer::interpret(res.status, &res.body)
    }

    latchkey_plugin_sdk::unsupported! {
        create_pending: "create-pending",
        retire: "retire",
        refresh: "refresh",
    }
}

latchkey_plugin_sdk::export!(Binance);
