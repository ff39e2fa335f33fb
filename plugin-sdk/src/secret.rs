//! Passwords and tokens from the host's randomness (wasi:random, a CSPRNG).
//!
//! Characters are drawn by rejection sampling, so every character of the alphabet is
//! equally likely.

use crate::bindings::wasi::random::random::get_random_bytes;

/// Letters and digits (62 characters).
pub const ALPHANUMERIC: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Letters, digits and symbols that are safe in URLs, shells and SQL literals.
pub const PASSWORD: &str =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!#%+=";

/// `n` random bytes from the host.
pub fn random_bytes(n: usize) -> Vec<u8> {
    get_random_bytes(n as u64)
}

/// A password of `len` characters from [`PASSWORD`].
pub fn password(len: usize) -> String {
    from_alphabet(len, PASSWORD, random_bytes)
}

/// A token of `len` characters from `alphabet` (at most 256 distinct characters).
pub fn token(len: usize, alphabet: &str) -> String {
    from_alphabet(len, alphabet, random_bytes)
}

/// `bytes` random bytes as lowercase hex (`2 * bytes` characters).
pub fn token_hex(bytes: usize) -> String {
    crate::sign::hex(&random_bytes(bytes))
}

/// Draws `len` characters from `alphabet` using `random` as the byte source.
pub fn from_alphabet(
    len: usize,
    alphabet: &str,
    mut random: impl FnMut(usize) -> Vec<u8>,
) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let n = chars.len();
    if n == 0 || n > 256 {
        return String::new();
    }
    // Largest multiple of n that fits in a byte: bytes at or above it are rejected.
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(len);
    while out.chars().count() < len {
        for b in random(len * 2) {
            if usize::from(b) < limit {
                out.push(chars[usize::from(b) % n]);
                if out.chars().count() == len {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_only_from_the_alphabet_and_rejects_biased_bytes() {
        let mut counter = 0u8;
        let pw = from_alphabet(40, "abc", |n| {
            (0..n)
                .map(|_| {
                    counter = counter.wrapping_add(1);
                    counter
                })
                .collect()
        });
        assert_eq!(pw.len(), 40);
        assert!(pw.chars().all(|c| "abc".contains(c)));
        // 255 is >= 255 (the limit for n = 3) and must be rejected.
        assert_eq!(from_alphabet(1, "abc", |_| vec![255, 1]), "b");
    }
}
