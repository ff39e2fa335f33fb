//! Turns Bybit's answer to `GET /v5/user/query-api` into a [`Validation`] or a
//! [`ProviderError`].
//!
//! Bybit answers in an envelope `{"retCode", "retMsg", "result", ...}`, usually with
//! HTTP 200 even for errors:
//! - `retCode` 0: `result` lists the key's permissions by group (`Spot`, `Wallet`,
//!   ...), its bound IPs and its expiry (`expiredAt`, only for keys without bound IPs);
//! - 10003 (invalid key), 10004 (bad signature), 10007, 10010 (IP not bound),
//!   33004 / -2015 (expired key): the key does not work → `valid: false`;
//! - 10002 (timestamp outside the window): this host's clock is off → `unavailable`
//!   naming clock skew, never a bad key;
//! - rate limits, server errors and HTTP 403/429/5xx → `unavailable`.
//!
//! Details carry the `retCode` and our own wording, never `retMsg` (which echoes
//! request values) or a credential value.

use std::collections::BTreeMap;

use latchkey_plugin_sdk::time::parse_rfc3339;
use latchkey_plugin_sdk::validate::{self, invalid as refused};
use latchkey_plugin_sdk::{Permission, ProviderError, Validation};
use serde::Deserialize;

/// Bybit's response envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    ret_code: i64,
    #[serde(default)]
    result: Option<serde_json::Value>,
}

/// The documented `result` of `GET /v5/user/query-api` (the fields we read).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyInfo {
    /// 0: read and write; 1: read only.
    pub read_only: i64,
    /// Bound IPs; `["*"]` when none.
    pub ips: Vec<String>,
    /// Permission group (`ContractTrade`, `Spot`, `Wallet`, ...) → granted items.
    pub permissions: BTreeMap<String, Vec<String>>,
    /// The key's expiry (RFC 3339), for keys without bound IPs.
    pub expired_at: Option<String>,
    /// Remaining valid days, for keys without bound IPs.
    pub deadline_day: Option<i64>,
}

impl KeyInfo {
    fn lists(&self, group: &str, item: &str) -> bool {
        self.permissions
            .get(group)
            .is_some_and(|items| items.iter().any(|i| i == item))
    }

    fn any(&self, group: &str) -> bool {
        self.permissions.get(group).is_some_and(|i| !i.is_empty())
    }

    /// Whether the key only works from bound IP addresses.
    pub fn ip_restricted(&self) -> bool {
        self.ips.iter().any(|ip| !ip.is_empty() && ip != "*")
    }

    /// Normalized permissions first (`read`, `trade`, `spot-trade`, ..., `withdraw`,
    /// `ip-restricted`), then every item Bybit lists as `Group:Item`.
    ///
    /// Trading needs a read-write key (`readOnly` 0). `withdraw` and `transfer` are
    /// reported whenever Bybit lists them, read-only or not, so a policy that refuses
    /// withdrawal errs on the safe side.
    pub fn permissions(&self) -> Vec<Permission> {
        let writable = self.read_only == 0;
        let spot = writable && self.lists("Spot", "SpotTrade");
        let contract = writable && self.any("ContractTrade");
        let options = writable && self.lists("Options", "OptionsTrade");
        let derivatives = writable && self.lists("Derivatives", "DerivativesTrade");
        let transfer = [
            "AccountTransfer",
            "SubMemberTransfer",
            "SubMemberTransferList",
        ]
        .iter()
        .any(|item| self.lists("Wallet", item));
        let normalized = validate::permissions([
            ("read", true),
            ("trade", spot || contract || options || derivatives),
            ("spot-trade", spot),
            ("contract-trade", contract),
            ("options-trade", options),
            ("derivatives-trade", derivatives),
            ("transfer", transfer),
            ("withdraw", self.lists("Wallet", "Withdraw")),
            ("ip-restricted", self.ip_restricted()),
        ]);
        let listed = self.permissions.iter().flat_map(|(group, items)| {
            items.iter().map(move |item| Permission {
                name: format!("{group}:{item}"),
                granted: true,
            })
        });
        normalized.into_iter().chain(listed).collect()
    }

    /// `expiredAt` in seconds since the epoch, if Bybit reports one.
    pub fn expires_at(&self) -> Option<u64> {
        self.expired_at.as_deref().and_then(parse_rfc3339)
    }
}

/// Interprets one answer (status and body).
pub fn interpret(status: u16, body: &[u8]) -> Result<Validation, ProviderError> {
    if matches!(status, 408 | 500..=599) {
        return Err(ProviderError::from_status(status));
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return match status {
            200 => Err(ProviderError::Unavailable(
                "unexpected query-api answer: not a bybit envelope".into(),
            )),
            401 => Ok(refused(format!("bybit refused the key (HTTP {status})"))),
            // Bybit documents 403 as an IP rate limit or a refused region.
            403 | 429 => Err(ProviderError::Unavailable(format!(
                "bybit answered HTTP {status} (rate limit or region)"
            ))),
            _ => Err(ProviderError::from_status(status)),
        };
    };
    let code = envelope.ret_code;
    match code {
        0 => {
            let info: KeyInfo = envelope
                .result
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    ProviderError::Unavailable(format!("unexpected query-api result: {e}"))
                })?
                .ok_or_else(|| ProviderError::Unavailable("query-api answered no result".into()))?;
            let mut detail = String::from("bybit accepted the key");
            if info.read_only == 1 {
                detail.push_str("; it is read-only");
            }
            if info.lists("Wallet", "Withdraw") {
                detail.push_str("; it can withdraw");
            }
            if !info.ip_restricted() {
                detail.push_str("; it is not bound to IP addresses");
            }
            if let Some(days) = info
                .deadline_day
                .filter(|d| *d >= 0 && info.expires_at().is_some())
            {
                detail.push_str(&format!("; it expires in {days} days"));
            }
            Ok(Validation {
                valid: true,
                detail,
                permissions: info.permissions(),
                expires_at: info.expires_at(),
            })
        }
        10002 => Err(ProviderError::Unavailable(format!(
            "clock skew: bybit says the request timestamp is outside the receive window \
             (retCode {code}); check this host's clock"
        ))),
        10003 => Ok(refused(format!(
            "bybit refused the key (retCode {code}): invalid key, or a key of another \
             environment (mainnet, testnet, demo)"
        ))),
        10004 => Ok(refused(format!(
            "bybit refused the signature (retCode {code}): api-secret does not belong to api-key"
        ))),
        10007 => Ok(refused(format!(
            "bybit refused the key (retCode {code}): user authentication failed"
        ))),
        10010 => Ok(refused(format!(
            "bybit refused the key (retCode {code}): this IP is not bound to the key"
        ))),
        33004 | -2015 => Ok(refused(format!(
            "bybit refused the key (retCode {code}): the key has expired"
        ))),
        10000 | 10006 | 10009 | 10016 | 10018 | 10429 => Err(ProviderError::Unavailable(format!(
            "bybit is unavailable (retCode {code})"
        ))),
        _ => Err(ProviderError::Rejected(format!(
            "bybit answered HTTP {status} with retCode {code}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the response example of Bybit's "Get API Key Information" page.
    const EXAMPLE: &str = r#"{
        "retCode": 0,
        "retMsg": "",
        "result": {
            "id": "13770661",
            "note": "readonly",
            "apiKey": "XXXXXX",
            "readOnly": 0,
            "secret": "",
            "permissions": {
                "ContractTrade": ["Order", "Position"],
                "Spot": ["SpotTrade"],
                "Wallet": ["AccountTransfer", "SubMemberTransfer"],
                "Options": ["OptionsTrade"],
                "Derivatives": [],
                "CopyTrading": [],
                "BlockTrade": [],
                "Exchange": [],
                "NFT": [],
                "Affiliate": [],
                "Earn": []
            },
            "ips": ["*"],
            "type": 1,
            "deadlineDay": 66,
            "expiredAt": "2023-12-22T07:20:25Z",
            "createdAt": "2022-10-16T02:24:40Z",
            "unified": 0,
            "uta": 0,
            "userID": 24617703,
            "inviterID": 0,
            "vipLevel": "No VIP",
            "mktMakerLevel": "0",
            "affiliateID": 0,
            "rsaPublicKey": "",
            "isMaster": true,
            "parentUid": "0",
            "kycLevel": "LEVEL_DEFAULT",
            "kycRegion": ""
        },
        "retExtInfo": {},
        "time": 1697525990798
    }"#;

    fn granted(v: &Validation, name: &str) -> bool {
        v.granted(name).expect("permission reported")
    }

    #[test]
    fn reads_the_documented_example() {
        let v = interpret(200, EXAMPLE.as_bytes()).expect("an answer");
        assert!(v.valid);
        for name in [
            "read",
            "trade",
            "spot-trade",
            "contract-trade",
            "options-trade",
            "transfer",
        ] {
            assert!(granted(&v, name), "{name}");
        }
        assert!(!granted(&v, "withdraw"));
        assert!(!granted(&v, "derivatives-trade"));
        assert!(!granted(&v, "ip-restricted"));
        assert!(granted(&v, "Wallet:SubMemberTransfer"));
        assert_eq!(v.expires_at, Some(1_703_229_625));
    }

    #[test]
    fn a_read_only_key_cannot_trade_but_withdraw_is_still_reported() {
        let body = r#"{"retCode":0,"retMsg":"","result":{"readOnly":1,"ips":["203.0.113.7"],
            "permissions":{"Spot":["SpotTrade"],"Wallet":["Withdraw"]},"expiredAt":"","deadlineDay":-1}}"#;
        let v = interpret(200, body.as_bytes()).expect("an answer");
        assert!(!granted(&v, "trade") && !granted(&v, "spot-trade"));
        assert!(granted(&v, "withdraw") && granted(&v, "ip-restricted"));
        assert_eq!(v.expires_at, None);
    }

    #[test]
    fn maps_ret_codes() {
        let env = |code: i64| {
            format!(r#"{{"retCode":{code},"retMsg":"x","result":{{}},"retExtInfo":{{}},"time":1}}"#)
                .into_bytes()
        };
        let v = interpret(200, &env(10003)).expect("an answer");
        assert!(!v.valid && v.detail.contains("10003"));
        let v = interpret(401, &env(10004)).expect("an answer");
        assert!(!v.valid && v.detail.contains("signature"));
        match interpret(200, &env(10002)) {
            Err(ProviderError::Unavailable(d)) => assert!(d.contains("clock")),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(matches!(
            interpret(200, &env(10006)),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(200, &env(10001)),
            Err(ProviderError::Rejected(_))
        ));
        assert!(matches!(
            interpret(502, b"bad gateway"),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            interpret(403, b"forbidden"),
            Err(ProviderError::Unavailable(_))
        ));
        assert!(!interpret(401, b"").expect("an answer").valid);
    }
}
