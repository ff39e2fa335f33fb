//! Envelope encryption for everything the agent keeps at rest.
//!
//! Two layers. A [`DataKey`] (AES-256-GCM) seals each record of the store, with the
//! record's place (its path's tag, version and epoch) bound as associated data, so a
//! sealed value that is moved, swapped or altered on disk fails to open. The data key
//! itself is stored only wrapped by a key-encryption key behind the [`KeyWrapper`]
//! trait: [`LocalKek`] (a key file or an environment variable) or [`TransitKek`]
//! (OpenBao/Vault Transit). Rotating the key-encryption key rewraps one data key
//! instead of re-encrypting every value.
//!
//! A [`Tagger`] derived from the data key turns names into keyed tags, so the store's
//! database keys do not show secret paths in clear.
//!
//! This module knows nothing about paths or sled; `store` decides what the associated
//! data is and where sealed bytes live. Errors here never carry key bytes or plaintext.

use std::path::PathBuf;

mod envelope;
mod kek;
mod tag;
mod transit;

pub use envelope::{DataKey, DATA_KEY_LEN, SEALED_OVERHEAD};
pub use kek::{KekSource, KeyWrapper, LocalKek, KEK_LEN};
pub use tag::{Tagger, TAG_LEN};
pub use transit::TransitKek;

/// What went wrong while sealing, opening, wrapping or loading a key.
///
/// Messages name files, variables and key ids, never key bytes or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Sealed bytes did not open: wrong key, wrong associated data, a flipped byte,
    /// truncation or an unknown format version. Deliberately says no more than that.
    #[error("sealed data failed its integrity check")]
    Integrity,
    /// `source = "transit"` was asked for, but no OpenBao upstream with a `transit`
    /// section is configured.
    #[error("kek source \"transit\" needs an [upstream] of kind openbao with a transit section")]
    TransitNeedsUpstream,
    /// A plaintext over the AES-GCM limit was given to seal.
    #[error("plaintext of {len} bytes is too large to seal")]
    TooLarge {
        /// Plaintext length in bytes.
        len: usize,
    },
    /// Raw key material of the wrong length (e.g. an unwrapped data key).
    #[error("key material has {len} bytes, expected {expected}")]
    KeyLength {
        /// Bytes given.
        len: usize,
        /// Bytes required.
        expected: usize,
    },
    /// A key file grants access to group or others.
    #[error(
        "key file {} is accessible by group or others (mode {mode:04o}); restrict it with `chmod 600`",
        path.display()
    )]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file could not be read.
    #[error("cannot read key file {}", path.display())]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// `generate_file` found a file already there.
    #[error("key file {} already exists; refusing to overwrite it", path.display())]
    KeyFileExists {
        /// The key file.
        path: PathBuf,
    },
    /// A key file could not be created or written.
    #[error("cannot write key file {}", path.display())]
    KeyFileWrite {
        /// The key file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable that should hold the key is unset.
    #[error("environment variable {var} is not set")]
    KeyEnvMissing {
        /// The variable name.
        var: String,
    },
    /// The key text is neither 64 hex characters nor 44 base64 characters of 32 bytes.
    #[error("key in {origin} is not 32 bytes written as 64 hex or 44 base64 characters")]
    KeyEncoding {
        /// Where the key came from: `file /etc/...` or `environment variable X`.
        origin: String,
    },
    /// A wrapped data key did not open under this key-encryption key.
    #[error("wrapped data key does not open under key {kek_id}")]
    Unwrap {
        /// Id of the key-encryption key that was tried.
        kek_id: String,
    },
    /// A remote key wrapper (e.g. Transit) failed; its cause is attached.
    #[error("key wrapper {kek_id} failed")]
    Wrapper {
        /// Id of the key-encryption key.
        kek_id: String,
        /// The wrapper's cause; must not carry key bytes.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
