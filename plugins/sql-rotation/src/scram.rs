//! SCRAM-SHA-256 password verifiers for PostgreSQL (RFC 5802, RFC 7677).
//!
//! PostgreSQL stores `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! (base64) and accepts that string in `ALTER ROLE … PASSWORD '…'` as it is. Sending
//! the verifier instead of the password keeps the password out of the server's
//! statement log and `pg_stat_activity`, as `psql`'s `\password` does.
//!
//! The password is used as it is: PostgreSQL's client applies SASLprep first, which
//! leaves printable ASCII unchanged, and the provider's alphabets are printable ASCII.

use latchkey_plugin_sdk::sign::{base64, hmac_sha256, sha256};

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

/// Salt length PostgreSQL uses for new verifiers.
pub const SALT_LEN: usize = 16;

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes): RFC 5802's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// The keys derived from a password: `(ClientKey, StoredKey, ServerKey)`.
fn keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let salted = hi(password.as_bytes(), salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    (client_key, stored_key, server_key)
}

/// The verifier PostgreSQL stores for `password` with `salt`.
pub fn verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let (_, stored_key, server_key) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        base64(salt),
        base64(&stored_key),
        base64(&server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_plugin_sdk::sign::base64_decode;

    /// RFC 7677 section 3: user "user", password "pencil", and the exchange
    /// (client-first, server-first, client-final without proof). From the keys we
    /// derive, the client proof and server signature must match the RFC's.
    #[test]
    fn matches_the_rfc_7677_exchange() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("rfc salt");
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let (client_key, stored_key, server_key) = keys("pencil", &salt, 4096);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            base64(&proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        assert_eq!(
            base64(&server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn verifier_has_postgres_layout() {
        let v = verifier("pencil", &[7u8; SALT_LEN], ITERATIONS);
        let (head, keys) = v.split_once(':').expect("iterations then salt");
        assert_eq!(head, "SCRAM-SHA-256$4096");
        let (salt, pair) = keys.split_once('$').expect("salt then keys");
        assert_eq!(base64_decode(salt), Some(vec![7u8; SALT_LEN]));
        let (stored, server) = pair.split_once(':').expect("two keys");
        assert_eq!(base64_decode(stored).map(|k| k.len()), Some(32));
        assert_eq!(base64_decode(server).map(|k| k.len()), Some(32));
        assert!(!v.contains("pencil"));
    }
}
