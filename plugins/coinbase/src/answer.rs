//! Turns Coinbase's answer to `GET /api/v3/brokerage/key_permissions` into a
//! [`Validation`] or a [`ProviderError`].
//!
//! - 200 `{"can_view","can_trade","can_transfer","portfolio_uuid","portfolio_type"}`:
//!   permissions `read`, `trade`, `transfer` and `withdraw` (Coinbase's `transfer`
//!   scope is what moves funds out, so it is reported under both names).
//! - 401/403: the JWT was refused. Coinbase does not say why, so the `Date` of the
//!   answer is compared with the token's validity window: if the service's clock is
//!   outside it, the refusal is clock skew (`unavailable`, retried), otherwise the key
//!   is refused (`valid: false`).
//! - 408/429/5xx → `unavailable`; other statuses → `rejected`.
//!
//! Details never contain the key name, the key or the token.

use latchkey_plugin_sdk::{time, validate, Permission, ProviderError, Validation};
use serde::Deserialize;

use crate::jwt::LIFETIME_SECS;

/// Seconds of slack on each side of the token's validity window before a refusal is
/// blamed on the clock (the `Date` header has one-second resolution, plus latency).
pub const CLOCK_SLACK_SECS: i64 = 5;

/// The documented response of `GET /api/v3/brokerage/key_permissions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeyPermissions {
    /// May view accounts and orders.
    pub can_view: bool,
    /// May place and cancel orders.
    pub can_trade: bool,
    /// May transfer (send) funds.
    pub can_transfer: bool,
    /// The portfolio the key is scoped to.
    pub portfolio_uuid: String,
    /// `DEFAULT`, `CONSUMER`, `INTX`, ...
    pub portfolio_type: String,
}

impl KeyPermissions {
    /// The permissions a policy can check.
    pub fn permissions(&self) -> Vec<Permission> {
        validate::permissions([
            ("read", self.can_view),
            ("trade", self.can_trade),
            ("transfer", self.can_transfer),
            ("withdraw", self.can_transfer),
        ])
    }
}

/// gRPC-gateway error body Coinbase uses for JSON errors.
#[derive(Debug, Deserialize)]
struct ApiError {
    error: String,
}

/// Interprets one answer: its status, body and `Date` header, and `issued_at`, the
/// `nbf` of the token that was sent.
pub fn interpret(
    status: u16,
    body: &[u8],
    date: Option<&str>,
    issued_at: u64,
) -> Result<Validation, ProviderError> {
    match status {
        200 => {
            let p: KeyPermissions = serde_json::from_slice(body).map_err(|e| {
                ProviderError::Unavailable(format!("unexpected key_permissions answer: {e}"))
            })?;
            let mut detail = String::from("coinbase accepted the key");
            if !p.portfolio_type.is_empty() {
                detail.push_str(&format!(" (portfolio type {})", p.portfolio_type));
            }
            if p.can_transfer {
                detail.push_str("; it can transfer funds out");
            }
            Ok(Validation {
                valid: true,
                detail,
                permissions: p.permissions(),
                expires_at: None,
            })
        }
        401 | 403 => {
            if let Some(skew) = date.and_then(time::parse_http_date).map(|server| {
                i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(issued_at).unwrap_or(0)
            }) {
                let lifetime = i64::try_from(LIFETIME_SECS).unwrap_or(i64::MAX);
                if skew < -CLOCK_SLACK_SECS || skew > lifetime - CLOCK_SLACK_SECS {
                    return Err(ProviderError::Unavailable(format!(
                        "clock skew: coinbase refused the token and its clock differs from \
                         this host's by {skew} s (a token is valid for {LIFETIME_SECS} s); \
                         check this host's clock"
                    )));
                }
            }
            let reason = serde_json::from_slice::<ApiError>(body)
                .map(|e| format!(": {}", short(&e.error)))
                .unwrap_or_default();
            Ok(validate::invalid(format!(
                "coinbase refused the key (HTTP {status}{reason})"
            )))
        }
        _ => Err(ProviderError::from_status(status)),
    }
}

/// Coinbase's error code word (`UNAUTHENTICATED`, `PERMISSION_DENIED`), kept only if
/// it looks like one.
fn short(error: &str) -> String {
    if error.len() <= 40 && error.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        error.to_owned()
    } else {
        "unexpected error".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT

    #[test]
    fn reads_the_documented_response() {
        let body = br#"{"can_view":true,"can_trade":true,"can_transfer":false,"portfolio_uuid":"8f6cd7a3-2a6b-4b4f-9a0f-3b1f1d7f3b1e","portfolio_type":"DEFAULT"}"#;
        let v = interpret(200, body, None, NOW).expect("an answer");
        assert!(v.valid);
        let granted: Vec<(&str, bool)> = v
            .permissions
            .iter()
            .map(|p| (p.name.as_str(), p.granted))
            .collect();
        assert_eq!(
            granted,
            [
                ("read", true),
                ("trade", true),
                ("transfer", false),
                ("withdraw", false)
            ]
        );
        assert!(v.detail.contains("DEFAULT"));
    }

    #[test]
    fn a_refusal_with_a_matching_clock_is_a_bad_key() {
        let v = interpret(
            401,
            b"Unauthorized\n",
            Some("Tue, 14 Nov 2023 22:13:21 GMT"),
            NOW,
        )
        .expect("an answer");
        assert!(!v.valid && v.detail.contains("401"));
        let v = interpret(
            401,
            br#"{"error":"UNAUTHENTICATED","code":16,"message":"m"}"#,
            None,
            NOW,
        )
        .expect("an answer");
        assert!(!v.valid && v.detail.contains("UNAUTHENTICATED"));
    }

    #[test]
    fn a_refusal_with_a_distant_clock_is_clock_skew() {
        for date in [
            "Tue, 14 Nov 2023 22:23:20 GMT",
            "Tue, 14 Nov 2023 22:03:20 GMT",
        ] {
            match interpret(401, b"Unauthorized\n", Some(date), NOW) {
                Err(ProviderError::Unavailable(d)) => assert!(d.contains("clock"), "{d}"),
                other => panic!("expected unavailable, got {other:?}"),
            }
        }
    }

    #[test]
    fn server_errors_are_unavailable() {
        assert!(matches!(
            interpret(503, b"", None, NOW),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(429, b"", None, NOW),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(400, b"", None, NOW),
            Err(ProviderError::Rejected(_))
        ));
        assert!(matches!(
            interpret(200, b"<html>", None, NOW),
            Err(ProviderError::Unavailable(_))
        ));
    }
}
