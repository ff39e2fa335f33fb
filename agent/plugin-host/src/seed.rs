//! Replayable randomness for one plugin call.
//!
//! A guest draws its secure randomness (`wasi:random/random`) from the host. A call
//! given a [`Seed`] draws it from ChaCha20 keyed by the seed instead of from the
//! operating system, so calling again with the same seed and the same inputs makes the
//! same choices: a rotation interrupted between a provider changing a password in
//! place and the agent recording it can run that step again and learn the password the
//! service already holds. A seed is as secret as what it generates; it is zeroized on
//! drop and never printed.

use std::fmt;

use chacha20::rand_core::SeedableRng as _;
use chacha20::ChaCha20Rng;
use zeroize::Zeroizing;

/// 32 bytes that key a call's secure randomness.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(Zeroizing<[u8; 32]>);

impl Seed {
    /// A seed from bytes the caller drew from a secure source.
    pub fn from_bytes(bytes: [u8; 32]) -> Seed {
        Seed(Zeroizing::new(bytes))
    }

    /// The bytes, to keep the seed beside the operation it belongs to.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The generator a call's `wasi:random/random` reads from.
    pub(crate) fn rng(&self) -> ChaCha20Rng {
        ChaCha20Rng::from_seed(*self.0)
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use chacha20::rand_core::Rng as _;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_debug_hides_it() {
        let seed = Seed::from_bytes([7; 32]);
        let (mut a, mut b) = (seed.rng(), seed.clone().rng());
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        a.fill_bytes(&mut x);
        b.fill_bytes(&mut y);
        assert_eq!(x, y);
        let mut z = [0u8; 64];
        Seed::from_bytes([8; 32]).rng().fill_bytes(&mut z);
        assert_ne!(x, z);
        assert_eq!(format!("{seed:?}"), "Seed([REDACTED])");
    }
}
