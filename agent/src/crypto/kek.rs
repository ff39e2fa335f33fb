//! Key-encryption keys: what wraps the store's data key.
//!
//! [`KeyWrapper`] is the one interface the store sees; [`LocalKek`] implements it with a
//! 32-byte key read from a file or an environment variable, and
//! [`TransitKek`](super::TransitKek) implements it remotely with OpenBao/Vault
//! Transit. [`KekSource`] is the config-facing choice of source. The key id of a
//! [`LocalKek`] is derived from the key alone, so the same key loaded from a file
//! or from the environment opens the same store.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::{Aes256Gcm, Key, KeyInit};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::envelope::{open_with, seal_with, DATA_KEY_LEN};
use super::Error;
use crate::secret::SecretBytes;

/// Length of a local key-encryption key in bytes.
pub const KEK_LEN: usize = 32;

/// Associated data for wrapping: this domain string followed by the key id.
const WRAP_AAD_DOMAIN: &[u8] = b"latchkey/dek/v1";
/// Domain separation for the key id, so the id is not a bare hash of the key.
const ID_DOMAIN: &[u8] = b"latchkey/kek-id/v1\0";
/// A key file longer than this is not a key; refuse before reading further.
const MAX_KEY_TEXT: usize = 256;
/// Group and other permission bits: any of them set refuses a key file.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Wraps and unwraps data keys under a key-encryption key.
///
/// Object safe; the store holds a `&dyn KeyWrapper` only while it opens.
#[async_trait::async_trait]
pub trait KeyWrapper: Send + Sync {
    /// A stable id for the key-encryption key, e.g. `local:0123abcd...`. Stored beside
    /// each wrapped data key and named in errors; never secret.
    fn id(&self) -> &str;

    /// Wraps a data key. Called when a store is first created, and when the
    /// key-encryption key is rotated.
    async fn wrap(&self, dek: &SecretBytes) -> Result<Vec<u8>, Error>;

    /// Unwraps a data key made by [`KeyWrapper::wrap`]. Called once per store open; a
    /// key wrapped under another key-encryption key fails with [`Error::Unwrap`].
    async fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error>;
}

/// A 32-byte AES-256-GCM key-encryption key held in memory.
///
/// Only the expanded cipher and the id are kept; both the cipher state and every
/// buffer the key passed through are wiped. `Debug` prints the id only.
pub struct LocalKek {
    id: String,
    aad: Vec<u8>,
    cipher: Aes256Gcm,
}

impl LocalKek {
    /// Reads a key file holding 64 hex or 44 base64 characters (a trailing newline is
    /// fine). Refuses a file that group or others may access.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let read_err = |source| Error::KeyFileRead {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        // Check the opened file, not the name, so a swap between check and read is moot.
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
        if mode & GROUP_OTHER_BITS != 0 {
            return Err(Error::KeyFileMode {
                path: path.to_owned(),
                mode,
            });
        }
        // One byte of spare capacity: `read_to_end` never has to grow (and copy) the buffer.
        let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
        file.take(MAX_KEY_TEXT as u64)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        Self::from_text(&text, || format!("file {}", path.display()))
    }

    /// Reads the key from an environment variable, in the same encodings as a file.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        // Taken out of the process environment at start (`crate::environment`).
        let text = crate::environment::var(var).ok_or_else(|| Error::KeyEnvMissing {
            var: var.to_owned(),
        })?;
        Self::from_text(&text, || format!("environment variable {var}"))
    }

    /// Makes a random key and writes it as hex to a new file with mode 0600. Refuses to
    /// overwrite an existing file.
    pub fn generate_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        let mut text = Zeroizing::new([0u8; KEK_LEN * 2 + 1]);
        hex::encode_to_slice(&key[..], &mut text[..KEK_LEN * 2]).map_err(|_| Error::KeyLength {
            len: KEK_LEN,
            expected: KEK_LEN,
        })?;
        text[KEK_LEN * 2] = b'\n';

        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => Error::KeyFileExists {
                    path: path.to_owned(),
                },
                _ => Error::KeyFileWrite {
                    path: path.to_owned(),
                    source,
                },
            })?;
        if let Err(source) = file.write_all(&text[..]).and_then(|()| file.sync_all()) {
            drop(file);
            // A half-written key file is worse than none; ignore a failure to remove it.
            let _ = std::fs::remove_file(path);
            return Err(Error::KeyFileWrite {
                path: path.to_owned(),
                source,
            });
        }
        Ok(Self::from_key(&key))
    }

    /// Decodes key text; `origin` names the source in the error, never the text.
    fn from_text(text: &[u8], origin: impl FnOnce() -> String) -> Result<Self, Error> {
        let text = text.trim_ascii();
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        let decoded = match text.len() {
            64 => hex::decode_to_slice(text, &mut key[..]).is_ok(),
            44 => {
                // base64 wants room for its estimate (33 bytes) before it checks padding.
                let mut buf = Zeroizing::new([0u8; KEK_LEN + 1]);
                match base64::engine::general_purpose::STANDARD.decode_slice(text, &mut buf[..]) {
                    Ok(KEK_LEN) => {
                        key.copy_from_slice(&buf[..KEK_LEN]);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !decoded {
            return Err(Error::KeyEncoding { origin: origin() });
        }
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8; KEK_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(ID_DOMAIN)
            .chain_update(key)
            .finalize();
        let id = format!("local:{}", hex::encode(&digest[..8]));
        let mut aad = Vec::with_capacity(WRAP_AAD_DOMAIN.len() + id.len());
        aad.extend_from_slice(WRAP_AAD_DOMAIN);
        aad.extend_from_slice(id.as_bytes());
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        Self { id, aad, cipher }
    }
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl KeyWrapper for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &SecretBytes) -> Result<Vec<u8>, Error> {
        seal_with(&self.cipher, &self.aad, dek.expose())
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        let dek = open_with(&self.cipher, &self.aad, wrapped).map_err(|_| Error::Unwrap {
            kek_id: self.id.clone(),
        })?;
        if dek.len() != DATA_KEY_LEN {
            return Err(Error::KeyLength {
                len: dek.len(),
                expected: DATA_KEY_LEN,
            });
        }
        Ok(dek)
    }
}

/// Where the key-encryption key comes from, as written in the config file:
/// `kek = { source = "file", path = "/etc/latchkey/kek" }` or
/// `kek = { source = "env", var = "LATCHKEY_KEK" }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum KekSource {
    /// A key file (mode 0600 or stricter) holding 64 hex or 44 base64 characters.
    File {
        /// The key file.
        path: PathBuf,
    },
    /// An environment variable holding the key in the same encodings.
    Env {
        /// The variable name.
        var: String,
    },
    /// OpenBao/Vault Transit: the data key is wrapped by the server, which never
    /// hands out its key. Uses the `[upstream]` OpenBao client and its `transit`
    /// section (mount and key name).
    Transit,
}

impl KekSource {
    /// Loads the key. Called once at startup, before the store opens.
    pub fn load(&self) -> Result<Box<dyn KeyWrapper>, Error> {
        let kek = match self {
            Self::File { path } => LocalKek::from_file(path)?,
            Self::Env { var } => LocalKek::from_env(var)?,
            Self::Transit => return Err(Error::TransitNeedsUpstream),
        };
        Ok(Box::new(kek))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write_key(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write key file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn dek() -> SecretBytes {
        SecretBytes::new((0..32).map(|i| 0xA0 ^ i).collect())
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip() {
        let kek = LocalKek::from_text(HEX_KEY.as_bytes(), String::new).expect("valid key");
        let wrapped = kek.wrap(&dek()).await.expect("wraps");
        assert!(!wrapped.windows(32).any(|w| w == dek().expose()));
        assert_eq!(kek.unwrap(&wrapped).await.expect("unwraps"), dek());
    }

    #[tokio::test]
    async fn key_wrapped_by_another_kek_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = LocalKek::generate_file(dir.path().join("a")).expect("generates");
        let b = LocalKek::generate_file(dir.path().join("b")).expect("generates");
        assert_ne!(a.id(), b.id());
        let wrapped = a.wrap(&dek()).await.expect("wraps");
        match b.unwrap(&wrapped).await {
            Err(Error::Unwrap { kek_id }) => assert_eq!(kek_id, b.id()),
            other => panic!("expected Unwrap, got {other:?}"),
        }
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            a.unwrap(&flipped).await,
            Err(Error::Unwrap { .. })
        ));
    }

    #[test]
    fn reads_hex_and_base64_files_with_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = hex::decode(HEX_KEY).expect("hex");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(b64.len(), 44);
        let hex_file = write_key(dir.path(), "hex", &format!("{HEX_KEY}\n"), 0o600);
        let b64_file = write_key(dir.path(), "b64", &format!("{b64}\r\n"), 0o400);
        let a = LocalKek::from_file(&hex_file).expect("hex key");
        let b = LocalKek::from_file(&b64_file).expect("base64 key");
        assert_eq!(a.id(), b.id());
        assert!(a.id().starts_with("local:"));
    }

    #[test]
    fn refuses_key_file_readable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_key(dir.path(), "kek", HEX_KEY, 0o644);
        let err = LocalKek::from_file(&path).expect_err("0644 must be refused");
        assert!(matches!(err, Error::KeyFileMode { mode: 0o644, .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("0644"), "{msg}");
        let group = write_key(dir.path(), "kek2", HEX_KEY, 0o640);
        assert!(matches!(
            LocalKek::from_file(group),
            Err(Error::KeyFileMode { .. })
        ));
    }

    #[test]
    fn refuses_malformed_keys_without_echoing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = &HEX_KEY[..62];
        let not_hex = format!("{}zz", &HEX_KEY[..62]);
        let long = "a".repeat(1000);
        let b64_short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        for (i, text) in [
            short,
            not_hex.as_str(),
            long.as_str(),
            "",
            b64_short.as_str(),
        ]
        .into_iter()
        .enumerate()
        {
            let path = write_key(dir.path(), &format!("k{i}"), text, 0o600);
            let err = LocalKek::from_file(&path).expect_err("malformed key refused");
            assert!(matches!(err, Error::KeyEncoding { .. }), "{err:?}");
            if !text.is_empty() {
                assert!(!err.to_string().contains(text));
            }
        }
    }

    #[test]
    fn generate_file_writes_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        let kek = LocalKek::generate_file(&path).expect("generates");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            LocalKek::from_file(&path).expect("reads back").id(),
            kek.id()
        );
        assert!(matches!(
            LocalKek::generate_file(&path),
            Err(Error::KeyFileExists { .. })
        ));
        assert_eq!(
            LocalKek::from_file(&path).expect("untouched").id(),
            kek.id()
        );
    }

    #[test]
    fn from_env_names_a_missing_variable() {
        let var = "LATCHKEY_TEST_KEK_THAT_IS_NEVER_SET_3f9a";
        match LocalKek::from_env(var) {
            Err(Error::KeyEnvMissing { var: v }) => assert_eq!(v, var),
            other => panic!("expected KeyEnvMissing, got {other:?}"),
        }
    }

    #[test]
    fn debug_of_local_kek_has_no_key_bytes() {
        let kek = LocalKek::from_text(HEX_KEY.as_bytes(), String::new).expect("valid key");
        let dbg = format!("{kek:?}");
        assert!(dbg.contains(kek.id()));
        assert!(!dbg.contains(HEX_KEY));
        assert!(!dbg.contains("000102"));
    }

    #[test]
    fn kek_source_parses_tagged_config() {
        let file: KekSource =
            serde_json::from_str(r#"{"source":"file","path":"/etc/latchkey/kek"}"#).expect("file");
        assert_eq!(
            file,
            KekSource::File {
                path: PathBuf::from("/etc/latchkey/kek")
            }
        );
        let env: KekSource =
            serde_json::from_str(r#"{"source":"env","var":"LATCHKEY_KEK"}"#).expect("env");
        assert_eq!(
            env,
            KekSource::Env {
                var: "LATCHKEY_KEK".into()
            }
        );
        assert!(serde_json::from_str::<KekSource>(r#"{"source":"env","var":"X","x":1}"#).is_err());
        assert!(serde_json::from_str::<KekSource>(r#"{"source":"vault"}"#).is_err());
        let transit: KekSource = serde_json::from_str(r#"{"source":"transit"}"#).expect("transit");
        assert_eq!(transit, KekSource::Transit);
        assert!(matches!(
            transit.load().map(|_| ()),
            Err(Error::TransitNeedsUpstream)
        ));
    }

    #[test]
    fn kek_source_loads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_key(dir.path(), "kek", HEX_KEY, 0o600);
        let loaded = KekSource::File { path }.load().expect("loads");
        let direct = LocalKek::from_text(HEX_KEY.as_bytes(), String::new).expect("valid key");
        assert_eq!(loaded.id(), direct.id());
    }
}
