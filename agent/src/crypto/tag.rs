//! Keyed tags: names (secret paths) turned into fixed-size keys that reveal nothing
//! about the name to someone without the data key.
//!
//! A [`Tagger`] holds an HMAC-SHA256 key derived from the data key for one purpose
//! (HKDF-Expand with the data key as the pseudorandom key, which it is: 32 random
//! bytes). The same name always gives the same tag under one data key, so a tag can
//! be a database key; without the data key, tags of different names cannot be told
//! apart from random and a guessed name cannot be checked against them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::DataKey;

/// Length of a tag in bytes (a full HMAC-SHA256 output).
pub const TAG_LEN: usize = 32;

/// Computes tags under a key derived from a [`DataKey`]. The derived key is wiped on
/// drop; `Debug` prints nothing of it.
pub struct Tagger {
    key: Zeroizing<[u8; TAG_LEN]>,
}

impl Tagger {
    /// The tagger for `purpose` (a domain string such as `latchkey/path-tag/v1`):
    /// HKDF-Expand(PRK = data key, info = purpose, L = 32), one HMAC block.
    pub fn derive(data_key: &DataKey, purpose: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; TAG_LEN]);
        data_key.with_key_bytes(|raw| {
            key.copy_from_slice(&hmac_parts(raw, &[purpose, &[1u8]]));
        });
        Tagger { key }
    }

    /// The tag of the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        hmac_parts(&self.key[..], parts)
    }
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagger([REDACTED])")
    }
}

fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes keys of every length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;

    #[test]
    fn tags_are_stable_per_key_and_purpose_and_differ_otherwise() {
        let key = DataKey::generate();
        let a = Tagger::derive(&key, b"latchkey/test/a");
        let again = Tagger::derive(
            &DataKey::from_secret(&key.to_wrappable()).expect("32 bytes"),
            b"latchkey/test/a",
        );
        let b = Tagger::derive(&key, b"latchkey/test/b");
        let other = Tagger::derive(&DataKey::generate(), b"latchkey/test/a");
        let t = a.tag(&[b"apps/web/db"]);
        assert_eq!(t, again.tag(&[b"apps/web/db"]));
        assert_eq!(t, a.tag(&[b"apps/web/", b"db"]), "parts are concatenated");
        assert_ne!(t, a.tag(&[b"apps/web/dc"]));
        assert_ne!(t, b.tag(&[b"apps/web/db"]));
        assert_ne!(t, other.tag(&[b"apps/web/db"]));
    }

    #[test]
    fn derivation_is_hkdf_expand_with_the_data_key() {
        // RFC 5869 HKDF-Expand, one block: T(1) = HMAC(PRK, info || 0x01).
        let raw = [7u8; 32];
        let key = DataKey::from_secret(&SecretBytes::new(raw.to_vec())).expect("32 bytes");
        let tagger = Tagger::derive(&key, b"info");
        let mut mac = Hmac::<Sha256>::new_from_slice(&raw).expect("key");
        mac.update(b"info\x01");
        let expected: [u8; TAG_LEN] = mac.finalize().into_bytes().into();
        assert_eq!(&tagger.key[..], &expected[..]);
        assert_eq!(format!("{tagger:?}"), "Tagger([REDACTED])");
    }
}
