//! Binance request signing: HMAC-SHA256 of the exact query string ("totalParams")
//! under the API secret, as lowercase hex, sent as the last `signature` parameter.
//!
//! Pure functions of their inputs (the timestamp is an argument), so the unit tests
//! can check them byte for byte against the examples in Binance's documentation.

use latchkey_plugin_sdk::sign;

/// The signature of `total_params` (the query string without `signature`) under `secret`.
pub fn signature(secret: &str, total_params: &str) -> String {
    sign::hmac_sha256_hex(secret.as_bytes(), total_params.as_bytes())
}

/// The signed query string of a request that has no parameters of its own:
/// `timestamp=..&recvWindow=..&signature=..`.
pub fn signed_query(secret: &str, timestamp_ms: u64, recv_window_ms: u64) -> String {
    let total_params = format!("timestamp={timestamp_ms}&recvWindow={recv_window_ms}");
    let signature = signature(secret, &total_params);
    format!("{total_params}&signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret of Binance's documented "SIGNED endpoint examples" (not a real key).
    const DOC_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";

    #[test]
    fn matches_the_documented_ascii_example() {
        let query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            signature(DOC_SECRET, query),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
    }

    #[test]
    fn matches_the_documented_percent_encoded_example() {
        let query = "symbol=%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            signature(DOC_SECRET, query),
            "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3"
        );
    }

    #[test]
    fn signs_exactly_the_parameters_it_sends() {
        let query = signed_query(DOC_SECRET, 1_499_827_319_559, 5000);
        let (total, sig) = query
            .split_once("&signature=")
            .expect("signature is the last parameter");
        assert_eq!(total, "timestamp=1499827319559&recvWindow=5000");
        assert_eq!(sig, signature(DOC_SECRET, total));
        assert_eq!(sig.len(), 64);
    }
}
