//! The sealed-bytes format and the data key that seals store records.
//!
//! A sealed value is `[format version: 1 byte][nonce: 12 bytes][ciphertext][tag: 16 bytes]`,
//! AES-256-GCM with a fresh random nonce per seal. The caller supplies the associated
//! data (for the store: a domain string plus the record's path tag, version and
//! epoch), so bytes sealed for one place do not open in another. Any failure to open
//! is reported as one undifferentiated [`Error::Integrity`]: an attacker learns
//! nothing from the reason.
//!
//! Random 96-bit nonces keep the collision risk negligible up to about 2^32 seals under
//! one data key; a store that writes more than that should rotate its data key.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use super::Error;
use crate::secret::SecretBytes;

/// Length of a data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Bytes a sealed value adds to its plaintext: version byte, nonce and tag.
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The only format version written today. A new byte means a new layout, never a guess.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// AES-GCM's plaintext limit (2^36 - 32 bytes), rounded down for simplicity.
const MAX_PLAINTEXT: u64 = 1 << 35;

/// An AES-256-GCM data key. The key bytes and the expanded key schedule are wiped on
/// drop; `Debug` prints no key material.
pub struct DataKey {
    key: Zeroizing<[u8; DATA_KEY_LEN]>,
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A fresh random key from the operating system's generator. Called once, when a
    /// store is first created.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        Self::from_array(key)
    }

    /// Rebuilds a key from its raw bytes, e.g. after a [`super::KeyWrapper`] unwrapped it.
    pub fn from_secret(bytes: &SecretBytes) -> Result<Self, Error> {
        let raw = bytes.expose();
        if raw.len() != DATA_KEY_LEN {
            return Err(Error::KeyLength {
                len: raw.len(),
                expected: DATA_KEY_LEN,
            });
        }
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(raw);
        Ok(Self::from_array(key))
    }

    fn from_array(key: Zeroizing<[u8; DATA_KEY_LEN]>) -> Self {
        // `from_slice` borrows: no unzeroized copy of the key is made on the way in.
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]));
        Self { key, cipher }
    }

    /// Lends the raw key bytes to `f`, to derive another key from them ([`super::Tagger`]).
    pub(super) fn with_key_bytes(&self, f: impl FnOnce(&[u8])) {
        f(&self.key[..]);
    }

    /// The raw key bytes, to be handed to a [`super::KeyWrapper`] and nowhere else.
    pub fn to_wrappable(&self) -> SecretBytes {
        SecretBytes::new(self.key.to_vec())
    }

    /// Seals `plaintext` bound to `aad`. One allocation: the returned buffer.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        seal_with(&self.cipher, aad, plaintext)
    }

    /// Opens bytes made by [`DataKey::seal`] with the same `aad`. The plaintext comes
    /// back in a zeroizing buffer; every failure is [`Error::Integrity`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, Error> {
        open_with(&self.cipher, aad, sealed)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Seals with any AES-256-GCM cipher; shared by [`DataKey`] and the local KEK.
pub(super) fn seal_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    if plaintext.len() as u64 > MAX_PLAINTEXT {
        return Err(Error::TooLarge {
            len: plaintext.len(),
        });
    }
    let body_start = 1 + NONCE_LEN;
    let mut out = Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD);
    out.push(FORMAT_V1);
    out.resize(body_start, 0);
    rand::thread_rng().fill_bytes(&mut out[1..body_start]);
    out.extend_from_slice(plaintext);
    let (head, body) = out.split_at_mut(body_start);
    let nonce = Nonce::from_slice(&head[1..]);
    let tag = cipher
        .encrypt_in_place_detached(nonce, aad, body)
        .map_err(|_| Error::TooLarge {
            len: plaintext.len(),
        })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens bytes made by [`seal_with`]; never panics on malformed input.
pub(super) fn open_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretBytes, Error> {
    if sealed.len() < SEALED_OVERHEAD || sealed[0] != FORMAT_V1 {
        return Err(Error::Integrity);
    }
    let (nonce, rest) = sealed[1..].split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut buf = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    buf.extend_from_slice(ciphertext);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            &mut buf[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| Error::Integrity)?;
    Ok(SecretBytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"latchkey/test\0a/b";
    const VALUE: &[u8] = b"hunter2-very-secret";

    fn is_integrity<T: fmt::Debug>(r: Result<T, Error>) -> bool {
        matches!(r, Err(Error::Integrity))
    }

    #[test]
    fn seal_open_round_trip() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, VALUE).expect("seals");
        assert_eq!(sealed.len(), VALUE.len() + SEALED_OVERHEAD);
        assert_eq!(sealed[0], FORMAT_V1);
        assert!(!sealed.windows(VALUE.len()).any(|w| w == VALUE));
        let opened = key.open(AAD, &sealed).expect("opens");
        assert_eq!(opened.expose(), VALUE);
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, b"").expect("seals");
        assert!(key.open(AAD, &sealed).expect("opens").is_empty());
    }

    #[test]
    fn nonces_differ_between_seals() {
        let key = DataKey::generate();
        let a = key.seal(AAD, VALUE).expect("seals");
        let b = key.seal(AAD, VALUE).expect("seals");
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_byte_fails_integrity() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, VALUE).expect("seals");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(is_integrity(key.open(AAD, &bad)), "byte {i} flipped");
        }
    }

    #[test]
    fn truncation_fails_integrity() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, VALUE).expect("seals");
        for len in 0..sealed.len() {
            assert!(is_integrity(key.open(AAD, &sealed[..len])), "len {len}");
        }
    }

    #[test]
    fn wrong_version_byte_fails_integrity() {
        let key = DataKey::generate();
        let mut sealed = key.seal(AAD, VALUE).expect("seals");
        sealed[0] = 2;
        assert!(is_integrity(key.open(AAD, &sealed)));
    }

    #[test]
    fn wrong_aad_fails_integrity() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, VALUE).expect("seals");
        assert!(is_integrity(key.open(b"latchkey/test\0a/c", &sealed)));
        assert!(is_integrity(key.open(b"", &sealed)));
    }

    #[test]
    fn wrong_key_fails_integrity() {
        let sealed = DataKey::generate().seal(AAD, VALUE).expect("seals");
        assert!(is_integrity(DataKey::generate().open(AAD, &sealed)));
    }

    #[test]
    fn key_survives_export_and_import() {
        let key = DataKey::generate();
        let sealed = key.seal(AAD, VALUE).expect("seals");
        let again = DataKey::from_secret(&key.to_wrappable()).expect("32 bytes");
        assert_eq!(again.open(AAD, &sealed).expect("opens").expose(), VALUE);
        let short = SecretBytes::new(vec![0; 31]);
        assert!(matches!(
            DataKey::from_secret(&short),
            Err(Error::KeyLength { len: 31, .. })
        ));
    }

    #[test]
    fn debug_of_data_key_has_no_key_bytes() {
        let key = DataKey::generate();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "DataKey([REDACTED])");
        let hex_key = hex::encode(key.to_wrappable().expose());
        assert!(!dbg.contains(&hex_key));
    }
}
