//! Turns Binance's answer to `GET /sapi/v1/account/apiRestrictions` into a
//! [`Validation`] or a [`ProviderError`].
//!
//! - 200: the key's restrictions become permissions (`read`, `spot-trade`, `trade`,
//!   `withdraw`, ..., `ip-restricted`); `tradingAuthorityExpirationTime` becomes
//!   `expires_at`.
//! - `{"code": -2015 | -2014 | -2008, ...}`: the key is refused → `valid: false`.
//! - `-1022`: the signature is refused (the secret does not belong to the key) →
//!   `valid: false`.
//! - `-1021`: the timestamp is outside `recvWindow`, i.e. this host's clock is off →
//!   `unavailable` naming clock skew, never a bad key.
//! - 418/429/5xx and Binance's "try again" codes → `unavailable`.
//!
//! Details carry Binance's error code and our own wording, never the service's
//! message or a credential value.

use latchkey_plugin_sdk::validate::{self, invalid as refused};
use latchkey_plugin_sdk::{Permission, ProviderError, Validation};
use serde::Deserialize;

/// The documented response of `GET /sapi/v1/account/apiRestrictions`. Absent flags
/// read as `false` (not granted).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Restrictions {
    /// Whether the key only works from a list of IP addresses.
    pub ip_restrict: bool,
    /// When the key was created, ms since the epoch.
    pub create_time: Option<u64>,
    /// May read account data.
    pub enable_reading: bool,
    /// May withdraw.
    pub enable_withdrawals: bool,
    /// May transfer between master and sub accounts.
    pub enable_internal_transfer: bool,
    /// May use the universal transfer endpoint.
    pub permits_universal_transfer: bool,
    /// May trade vanilla options.
    pub enable_vanilla_options: bool,
    /// May trade futures.
    pub enable_futures: bool,
    /// May use cross margin.
    pub enable_margin: bool,
    /// May trade spot and margin.
    pub enable_spot_and_margin_trading: bool,
    /// May trade on a portfolio margin account.
    pub enable_portfolio_margin_trading: bool,
    /// When the spot and margin trading permission expires, ms since the epoch.
    pub trading_authority_expiration_time: Option<u64>,
}

/// Binance's error body.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: i64,
}

impl Restrictions {
    /// The permissions a policy can check, in a fixed order.
    pub fn permissions(&self) -> Vec<Permission> {
        let trade = self.enable_spot_and_margin_trading
            || self.enable_futures
            || self.enable_vanilla_options
            || self.enable_portfolio_margin_trading;
        validate::permissions([
            ("read", self.enable_reading),
            ("trade", trade),
            ("spot-trade", self.enable_spot_and_margin_trading),
            ("margin", self.enable_margin),
            ("futures", self.enable_futures),
            ("vanilla-options", self.enable_vanilla_options),
            (
                "portfolio-margin-trade",
                self.enable_portfolio_margin_trading,
            ),
            ("internal-transfer", self.enable_internal_transfer),
            ("universal-transfer", self.permits_universal_transfer),
            ("withdraw", self.enable_withdrawals),
            ("ip-restricted", self.ip_restrict),
        ])
    }

    /// When the trading permission lapses, in seconds since the epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.trading_authority_expiration_time
            .filter(|ms| *ms > 0)
            .map(|ms| ms / 1000)
    }
}

/// Interprets one answer (status and body).
pub fn interpret(status: u16, body: &[u8]) -> Result<Validation, ProviderError> {
    if status == 200 {
        let r: Restrictions = serde_json::from_slice(body).map_err(|e| {
            ProviderError::Unavailable(format!("unexpected apiRestrictions answer: {e}"))
        })?;
        let mut detail = String::from("binance accepted the key");
        if r.enable_withdrawals {
            detail.push_str("; it can withdraw");
        }
        if !r.ip_restrict {
            detail.push_str("; it is not restricted to IP addresses");
        }
        return Ok(Validation {
            valid: true,
            detail,
            permissions: r.permissions(),
            expires_at: r.expires_at(),
        });
    }
    if matches!(status, 408 | 418 | 429 | 500..=599) {
        return Err(ProviderError::from_status(status));
    }
    let Ok(ApiError { code }) = serde_json::from_slice::<ApiError>(body) else {
        return match status {
            401 | 403 => Ok(refused(format!("binance refused the key (HTTP {status})"))),
            _ => Err(ProviderError::from_status(status)),
        };
    };
    match code {
        -1021 => Err(ProviderError::Unavailable(format!(
            "clock skew: binance says the request timestamp is outside recvWindow \
             (code {code}); check this host's clock"
        ))),
        -1022 => Ok(refused(format!(
            "binance refused the signature (code {code}): api-secret does not belong to api-key"
        ))),
        -2015 | -2014 | -2008 => Ok(refused(format!(
            "binance refused the key (code {code}): invalid key, IP not allowed, or no permission"
        ))),
        // Server busy, timeout, unknown execution state, too many requests.
        -1000 | -1001 | -1003 | -1006 | -1007 | -1008 => Err(ProviderError::Unavailable(format!(
            "binance is unavailable (code {code})"
        ))),
        _ => Err(ProviderError::Rejected(format!(
            "binance answered HTTP {status} with code {code}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response example of Binance's "Get API Key Permission" page.
    const DOC_EXAMPLE: &str = r#"{
        "ipRestrict": false,
        "createTime": 1698645219000,
        "enableReading": true,
        "enableWithdrawals": false,
        "enableInternalTransfer": false,
        "enableMargin": false,
        "enableFutures": false,
        "permitsUniversalTransfer": false,
        "enableVanillaOptions": false,
        "enableFixApiTrade": false,
        "enableFixReadOnly": true,
        "enableSpotAndMarginTrading": false,
        "enablePortfolioMarginTrading": true
    }"#;

    fn granted(v: &Validation, name: &str) -> bool {
        v.granted(name).expect("permission reported")
    }

    #[test]
    fn reads_the_documented_example() {
        let v = interpret(200, DOC_EXAMPLE.as_bytes()).expect("an answer");
        assert!(v.valid);
        assert!(granted(&v, "read"));
        assert!(!granted(&v, "withdraw"));
        assert!(!granted(&v, "spot-trade"));
        assert!(granted(&v, "trade"), "portfolio margin trading is trading");
        assert!(!granted(&v, "ip-restricted"));
        assert_eq!(v.expires_at, None);
    }

    #[test]
    fn reports_withdrawal_and_expiry() {
        let body = r#"{"ipRestrict":true,"enableReading":true,"enableWithdrawals":true,
            "enableSpotAndMarginTrading":true,"tradingAuthorityExpirationTime":1628985600000}"#;
        let v = interpret(200, body.as_bytes()).expect("an answer");
        assert!(granted(&v, "withdraw") && granted(&v, "ip-restricted"));
        assert!(granted(&v, "spot-trade") && granted(&v, "trade"));
        assert_eq!(v.expires_at, Some(1_628_985_600));
        assert!(v.detail.contains("withdraw"));
    }

    #[test]
    fn maps_error_codes() {
        let err = |code: i64| format!(r#"{{"code":{code},"msg":"x"}}"#).into_bytes();
        let v = interpret(401, &err(-2015)).expect("an answer");
        assert!(!v.valid && v.detail.contains("-2015"));
        let v = interpret(400, &err(-1022)).expect("an answer");
        assert!(!v.valid && v.detail.contains("signature"));
        match interpret(400, &err(-1021)) {
            Err(ProviderError::Unavailable(d)) => assert!(d.contains("clock")),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(matches!(
            interpret(503, b"<html>"),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(429, &err(-1003)),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(400, &err(-1102)),
            Err(ProviderError::Rejected(_))
        ));
        assert!(matches!(
            interpret(200, b"not json"),
            Err(ProviderError::Unavailable(_))
        ));
    }
}
