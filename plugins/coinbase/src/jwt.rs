//! CDP API key JWTs for Coinbase Advanced Trade REST calls (ES256 keys).
//!
//! One JWT per request, as Coinbase documents:
//! - header `{"alg":"ES256","kid":<key name>,"nonce":<random hex>,"typ":"JWT"}`;
//! - claims `{"sub":<key name>,"iss":"cdp","nbf":now,"exp":now+120,"uri":"GET host/path"}`
//!   where `uri` names the request's method, host (no scheme) and path;
//! - signature ECDSA P-256 over SHA-256 of `base64url(header).base64url(claims)`,
//!   as the 64-byte `r || s` JWS form, base64url without padding.
//!
//! Pure functions of their inputs (time and nonce are arguments). Signing is RFC 6979
//! deterministic, so it needs no randomness and the tests can pin exact tokens.

use latchkey_plugin_sdk::sign::base64url;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use serde::Serialize;

/// How long a token is valid, as Coinbase's examples set it.
pub const LIFETIME_SECS: u64 = 120;

/// Why a private key cannot be used. Carries no key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not a PEM private key at all.
    NotPem,
    /// A PEM key, but not a valid EC P-256 key (e.g. an Ed25519 key).
    NotP256,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotPem => "private-key is not a PEM private key",
            Self::NotP256 => {
                "private-key is not an EC P-256 key (Advanced Trade needs an ECDSA CDP key)"
            }
        })
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    nonce: &'a str,
    typ: &'a str,
}

/// The JWT claims Coinbase reads.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    /// The key name (`organizations/{org}/apiKeys/{id}`).
    pub sub: &'a str,
    /// Always `cdp`.
    pub iss: &'a str,
    /// Not before: now, seconds since the epoch.
    pub nbf: u64,
    /// Expiry: `nbf` + [`LIFETIME_SECS`].
    pub exp: u64,
    /// `METHOD host/path`.
    pub uri: &'a str,
}

/// The `uri` claim: `"{method} {authority}{path}"`, e.g.
/// `GET api.coinbase.com/api/v3/brokerage/key_permissions`.
pub fn uri(method: &str, authority: &str, path: &str) -> String {
    format!("{method} {authority}{path}")
}

/// Reads a CDP private key: SEC1 (`-----BEGIN EC PRIVATE KEY-----`, what the CDP
/// portal gives) or PKCS#8 (`-----BEGIN PRIVATE KEY-----`). A key pasted with literal
/// `\n` escapes (as in the portal's JSON file) is accepted too.
pub fn signing_key(pem: &str) -> Result<SigningKey, KeyError> {
    let unescaped;
    let pem = if !pem.contains('\n') && pem.contains("\\n") {
        unescaped = pem.replace("\\n", "\n");
        unescaped.as_str()
    } else {
        pem
    };
    let pem = pem.trim();
    let secret = if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(pem).map_err(|_| KeyError::NotP256)?
    } else if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| KeyError::NotP256)?
    } else {
        return Err(KeyError::NotPem);
    };
    Ok(SigningKey::from(secret))
}

/// A signed JWT for one request.
pub fn token(key_name: &str, key: &SigningKey, uri: &str, now_secs: u64, nonce: &str) -> String {
    let header = Header {
        alg: "ES256",
        kid: key_name,
        nonce,
        typ: "JWT",
    };
    let claims = Claims {
        sub: key_name,
        iss: "cdp",
        nbf: now_secs,
        exp: now_secs.saturating_add(LIFETIME_SECS),
        uri,
    };
    // Serializing these structs (strings and integers only) cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(&claims).unwrap_or_default();
    let signing_input = format!("{}.{}", base64url(&header), base64url(&claims));
    let signature: Signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", base64url(&signature.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;

    /// A P-256 test key (generated for these tests, used nowhere else).
    const TEST_KEY: &str = concat!(
        "-----BEGIN EC PRIVATE KEY-----\n",
        "MHcCAQEEICV62SKiq6v1mx2UKPAv2aNkt4WW667wtcTbP3N7zC6XoAoGCCqGSM49\n",
        "AwEHoUQDQgAEA3XuLGiqD3YlGDnkOMQRtWOPe7dR/A/jjhXmvo36wkuunnpHH0jK\n",
        "ZTejOD5l4KaDT0W37oBGfnqohAR5SYWYJA==\n",
        "-----END EC PRIVATE KEY-----\n",
    );

    const KEY_NAME: &str = "organizations/11111111-2222-3333-4444-555555555555/apiKeys/66666666-7777-8888-9999-000000000000";
    const URI: &str = "GET api.coinbase.com/api/v3/brokerage/key_permissions";

    fn decode(part: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url without padding")
    }

    #[test]
    fn builds_the_documented_uri() {
        assert_eq!(
            uri(
                "GET",
                "api.coinbase.com",
                "/api/v3/brokerage/key_permissions"
            ),
            URI
        );
    }

    #[test]
    fn token_has_the_documented_header_and_claims_and_verifies() {
        let key = signing_key(TEST_KEY).expect("a P-256 key");
        let jwt = token(KEY_NAME, &key, URI, 1_700_000_000, "0123abcd");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            String::from_utf8(decode(parts[0])).expect("utf-8"),
            format!(r#"{{"alg":"ES256","kid":"{KEY_NAME}","nonce":"0123abcd","typ":"JWT"}}"#)
        );
        assert_eq!(
            String::from_utf8(decode(parts[1])).expect("utf-8"),
            format!(
                r#"{{"sub":"{KEY_NAME}","iss":"cdp","nbf":1700000000,"exp":1700000120,"uri":"{URI}"}}"#
            )
        );
        let sig = Signature::from_slice(&decode(parts[2])).expect("64-byte r||s");
        let signed = format!("{}.{}", parts[0], parts[1]);
        VerifyingKey::from(&key)
            .verify(signed.as_bytes(), &sig)
            .expect("the signature verifies with the public key");
    }

    /// RFC 6979 makes the token a pure function of its inputs. The expected signature
    /// was computed once with an independent implementation (Python `cryptography`,
    /// `ec.ECDSA(hashes.SHA256(), deterministic_signing=True)`) over the same input.
    #[test]
    fn signature_matches_an_independent_deterministic_signer() {
        let key = signing_key(TEST_KEY).expect("a P-256 key");
        let jwt = token(KEY_NAME, &key, URI, 1_700_000_000, "0123abcd");
        let signature = jwt.rsplit('.').next().expect("three parts");
        assert_eq!(signature, INDEPENDENT_SIGNATURE);
    }

    const INDEPENDENT_SIGNATURE: &str =
        "R7pDsi_7YEjuTQjEem1FK-uaIbJORQ513FccwuRs55hoUQzVgJlY4Xa5wzVNr1u2l_4vhZzdBcQZInYTQ2i2Jg";

    #[test]
    fn reads_pkcs8_and_escaped_keys_and_refuses_others() {
        let key = signing_key(TEST_KEY).expect("a P-256 key");
        let escaped = TEST_KEY.replace('\n', "\\n");
        assert_eq!(
            signing_key(&escaped)
                .expect("escaped newlines")
                .verifying_key(),
            key.verifying_key()
        );
        assert_eq!(
            signing_key(TEST_KEY_PKCS8).expect("pkcs8").verifying_key(),
            key.verifying_key()
        );
        assert_eq!(signing_key("not a key").err(), Some(KeyError::NotPem));
        // An Ed25519 PKCS#8 key (RFC 8410 example), which Advanced Trade does not take.
        let ed25519 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        assert_eq!(signing_key(ed25519).err(), Some(KeyError::NotP256));
    }

    const TEST_KEY_PKCS8: &str = concat!(
        "-----BEGIN PRIVATE KEY-----\n",
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJXrZIqKrq/WbHZQo\n",
        "8C/Zo2S3hZbrrvC1xNs/c3vMLpehRANCAAQDde4saKoPdiUYOeQ4xBG1Y497t1H8\n",
        "D+OOFea+jfrCS66eekcfSMplN6M4PmXgpoNPRbfugEZ+eqiEBHlJhZgk\n",
        "-----END PRIVATE KEY-----\n",
    );
}
