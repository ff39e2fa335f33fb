//! The local encrypted store: versioned, labelled secrets in sled, sealed at rest.
//!
//! This is where the cache's cold layer and the embedded upstream keep their data.
//! Four sled trees:
//!
//! - `meta`: the store's data key, wrapped by the key-encryption key, and that key's id.
//! - `index`: one sealed index entry (`store/record.rs`) per path (versions kept, labels,
//!   per-version kind and expiry). Key: the path bytes. Associated data:
//!   `b"latchkey/index/v1\0" + path`.
//! - `records`: one sealed record per version (fields, kind, timestamps). Key: path
//!   bytes, `0x00`, version as u64 big-endian. Associated data:
//!   `b"latchkey/record/v1\0" + key`.
//! - `journal`: the lifecycle engine's crash journal (`store/journal.rs`): one sealed
//!   blob per secret with a rotation in flight. Key: the path bytes. Associated data:
//!   `b"latchkey/journal/v1\0" + path`.
//!
//! Binding the path and version as associated data makes every value tamper-evident: a
//! record moved to another path or version, truncated or altered fails to open with
//! [`Error::Integrity`] for that secret only. The store does not detect a whole index
//! entry being rolled back to an older sealed copy of itself.
//!
//! `put`, `delete` and `set_label` each run as one sled transaction over `index` and
//! `records`. Nothing here flushes on its own: callers [`Store::flush`] before they
//! acknowledge a write. No value ever appears in an error or a log line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use crate::crypto::{self, DataKey, KeyWrapper};
use crate::path::{Prefix, SecretPath};
use crate::secret::Fields;

mod journal;
mod record;
#[cfg(test)]
mod tests;

use record::IndexEntry;

/// Versions kept per secret unless configured otherwise.
pub const DEFAULT_MAX_VERSIONS: usize = 10;
/// sled page cache size unless configured otherwise (16 MiB).
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 16 << 20;
/// The kind a [`Write`] without one gets.
pub const DEFAULT_KIND: &str = "generic";
/// Longest kind or label name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 256;
/// Largest total of field names and values in one version, in bytes (1 MiB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

const INDEX_AAD: &[u8] = b"latchkey/index/v1\0";
const RECORD_AAD: &[u8] = b"latchkey/record/v1\0";
const META_TREE: &str = "meta";
const INDEX_TREE: &str = "index";
const RECORDS_TREE: &str = "records";
const JOURNAL_TREE: &str = "journal";
const META_DEK: &[u8] = b"dek";
const META_KEK_ID: &[u8] = b"kek_id";
/// How often `get` looks again when a concurrent `put` pruned the version it resolved.
const READ_ATTEMPTS: usize = 4;

/// Where the store lives and how much it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The sled directory; created with mode 0700 if missing.
    pub path: PathBuf,
    /// Versions kept per secret, at least 1. Labelled versions are kept beyond this.
    pub max_versions: usize,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
}

impl StoreConfig {
    /// A config for `path` with the default limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_versions: DEFAULT_MAX_VERSIONS,
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
        }
    }
}

/// Which version of a secret to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The version labelled `current`.
    Current,
    /// One version by number.
    Version(u64),
    /// The version a label points at: `current`, `previous`, `pending`, ...
    Label(String),
}

/// One write of a secret: a new version.
#[derive(Debug, Clone, Default)]
pub struct Write {
    /// The fields; at least one.
    pub fields: Fields,
    /// `[a-z0-9_.-]{1,64}`; [`DEFAULT_KIND`] when `None`.
    pub kind: Option<String>,
    /// When this version expires (unix seconds).
    pub expires_at: Option<i64>,
    /// Check-and-set: the expected current version; `Some(0)` means "must not exist".
    pub cas: Option<u64>,
}

/// One version of a secret, with its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret's path.
    pub path: SecretPath,
    /// This version's number.
    pub version: u64,
    /// The labels pointing at this version, in name order.
    pub labels: Vec<String>,
    /// What kind of credential this is, e.g. `generic`, `db.postgres`.
    pub kind: String,
    /// The values (redacted in `Debug`).
    pub fields: Fields,
    /// When the secret's first version was written (unix seconds).
    pub created_at: i64,
    /// When this version was written (unix seconds).
    pub updated_at: i64,
    /// When this version expires (unix seconds).
    pub expires_at: Option<i64>,
}

/// A listing line: what the index knows about a secret, without its values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The secret's path.
    pub path: SecretPath,
    /// The version labelled `current`.
    pub current_version: u64,
    /// The current version's kind.
    pub kind: String,
    /// When the current version was written (unix seconds).
    pub updated_at: i64,
    /// When the current version expires (unix seconds).
    pub expires_at: Option<i64>,
}

/// What went wrong in the store. Messages name paths and key ids, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sealed index entry or record did not open or decode: tampering, corruption or
    /// a record moved from elsewhere. Only this secret is affected.
    #[error("secret {path} failed its integrity check ({})", part(.version))]
    Integrity {
        /// The secret.
        path: SecretPath,
        /// The version whose record failed; `None` for the index entry.
        version: Option<u64>,
    },
    /// Check-and-set failed: the current version is not the one expected.
    #[error(
        "check-and-set conflict on {path}: expected version {expected}, current version is {current}"
    )]
    Conflict {
        /// The secret.
        path: SecretPath,
        /// The version the caller expected (0 = must not exist).
        expected: u64,
        /// The current version (0 = does not exist).
        current: u64,
    },
    /// The request itself is wrong (empty fields, bad kind or label, bad config).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// `set_label` named a secret or version that does not exist.
    #[error("secret {path} not found{}", version.map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotFound {
        /// The secret.
        path: SecretPath,
        /// The missing version, if the secret exists.
        version: Option<u64>,
    },
    /// The data key did not unwrap with the configured key-encryption key.
    #[error("cannot unwrap the store's data key with key {kek_id} (the data key was wrapped by key {wrapped_by})")]
    KeyUnwrap {
        /// Id of the configured key-encryption key.
        kek_id: String,
        /// Id recorded when the data key was wrapped.
        wrapped_by: String,
        /// The wrapper's error.
        #[source]
        source: crypto::Error,
    },
    /// The store has data but its wrapped data key is gone.
    #[error("store {} holds secrets but has no data key", store.display())]
    MissingDataKey {
        /// The store directory.
        store: PathBuf,
    },
    /// The store directory could not be created.
    #[error("cannot create store directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// sled failed.
    #[error("storage error")]
    Storage(#[from] sled::Error),
    /// Sealing or wrapping failed.
    #[error("encryption error")]
    Crypto(#[source] crypto::Error),
}

fn part(version: &Option<u64>) -> String {
    match version {
        Some(v) => format!("version {v}"),
        None => "index entry".to_owned(),
    }
}

impl Error {
    /// A stable, machine-readable code for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Integrity { .. } | Self::MissingDataKey { .. } => "integrity_error",
            Self::Conflict { .. } => "conflict",
            Self::Invalid(_) => "invalid",
            Self::NotFound { .. } => "not_found",
            Self::KeyUnwrap { .. } => "key_unwrap_failed",
            Self::Storage(_) | Self::CreateDir { .. } => "storage_error",
            Self::Crypto(_) => "crypto_error",
        }
    }
}

impl From<TransactionError<Error>> for Error {
    fn from(e: TransactionError<Error>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Self::Storage(e),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<Error>>;

fn abort(e: Error) -> ConflictableTransactionError<Error> {
    ConflictableTransactionError::Abort(e)
}

/// The encrypted store. Cheap to clone (one `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    index: sled::Tree,
    records: sled::Tree,
    journal: sled::Tree,
    key: DataKey,
    max_versions: usize,
    /// Number of secrets: counted once at open, then kept by `put` and `delete`
    /// (sled's `len` is a full scan). Signed so a racing decrement never wraps.
    count: AtomicIsize,
    /// Committed writes so far, and how many of them a finished flush covers.
    written: AtomicU64,
    flushed: AtomicU64,
    /// Serializes flushes (group commit).
    flusher: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("max_versions", &self.inner.max_versions)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store. The first open makes a data key, wraps it with
    /// `kek` and flushes it; later opens unwrap it, and a different key-encryption key
    /// fails with [`Error::KeyUnwrap`]. Blocks while sled recovers its log: call at
    /// startup.
    pub async fn open(cfg: &StoreConfig, kek: &dyn KeyWrapper) -> Result<Store, Error> {
        if cfg.max_versions == 0 {
            return Err(Error::Invalid("max_versions must be at least 1".into()));
        }
        create_private_dir(&cfg.path)?;
        let db = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let meta = db.open_tree(META_TREE)?;
        let index = db.open_tree(INDEX_TREE)?;
        let records = db.open_tree(RECORDS_TREE)?;
        let journal = db.open_tree(JOURNAL_TREE)?;

        let key = match (meta.get(META_DEK)?, meta.get(META_KEK_ID)?) {
            (Some(wrapped), Some(id)) => {
                let unwrap_err = |source| Error::KeyUnwrap {
                    kek_id: kek.id().to_owned(),
                    wrapped_by: String::from_utf8_lossy(&id).into_owned(),
                    source,
                };
                let dek = kek.unwrap(&wrapped).await.map_err(unwrap_err)?;
                DataKey::from_secret(&dek).map_err(unwrap_err)?
            }
            (None, None) if index.is_empty() && records.is_empty() => {
                let key = DataKey::generate();
                let wrapped = kek.wrap(&key.to_wrappable()).await.map_err(Error::Crypto)?;
                save_wrapped_key(&meta, wrapped, kek.id())?;
                // Nothing may be sealed under a key that a crash could lose.
                db.flush()?;
                key
            }
            _ => {
                return Err(Error::MissingDataKey {
                    store: cfg.path.clone(),
                })
            }
        };

        let count = isize::try_from(index.len()).unwrap_or(isize::MAX);
        Ok(Store {
            inner: Arc::new(Inner {
                dir: cfg.path.clone(),
                db,
                meta,
                index,
                records,
                journal,
                key,
                max_versions: cfg.max_versions,
                count: AtomicIsize::new(count),
                written: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                flusher: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Reads one version: one index read and one record read, two decryptions.
    /// `Ok(None)` when the secret, the version or the label does not exist.
    pub fn get(&self, path: &SecretPath, sel: Selector) -> Result<Option<Secret>, Error> {
        let inner = &*self.inner;
        let index_aad = aad(INDEX_AAD, path, None);
        let index_key = &index_aad[INDEX_AAD.len()..];
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(raw_entry) = inner.index.get(index_key)? else {
                return Ok(None);
            };
            let entry = inner.open_index(path, &index_aad, &raw_entry)?;
            let Some(version) = entry.resolve(&sel) else {
                return Ok(None);
            };
            let record_aad = aad(RECORD_AAD, path, Some(version));
            match inner.records.get(&record_aad[RECORD_AAD.len()..])? {
                Some(raw) => {
                    return inner
                        .open_record(path, version, &record_aad, &raw, &entry)
                        .map(Some)
                }
                None => {
                    // A concurrent put may have pruned the version between the two reads;
                    // if the index moved on, resolve again. Otherwise the record is gone.
                    let moved = inner.index.get(index_key)?.as_ref() != Some(&raw_entry);
                    if !(moved && attempt < READ_ATTEMPTS) {
                        return Err(Error::Integrity {
                            path: path.clone(),
                            version: Some(version),
                        });
                    }
                }
            }
        }
    }

    /// Writes a new version and makes it current (the old current becomes `previous`),
    /// then prunes to `max_versions`, never dropping a labelled version. One transaction;
    /// no flush. Returns the stored version.
    pub fn put(&self, path: &SecretPath, write: Write) -> Result<Secret, Error> {
        self.put_inner(path, write, None)
    }

    /// Like [`Store::put`], but the new version gets the number `version` — the
    /// upstream's, when this store caches an upstream. `version` must be above every
    /// version stored for the path ([`Error::Conflict`] otherwise, naming the current
    /// version), so a late or repeated sync can never replace newer data.
    pub fn put_at(&self, path: &SecretPath, version: u64, write: Write) -> Result<Secret, Error> {
        self.put_inner(path, write, Some(version))
    }

    fn put_inner(
        &self,
        path: &SecretPath,
        write: Write,
        forced: Option<u64>,
    ) -> Result<Secret, Error> {
        let inner = &*self.inner;
        let kind = write.kind.as_deref().unwrap_or(DEFAULT_KIND);
        check_name("kind", kind)?;
        check_fields(path, &write.fields)?;
        let now = crate::clock::unix_now();
        let index_aad = aad(INDEX_AAD, path, None);
        let index_key = &index_aad[INDEX_AAD.len()..];

        let (entry, version, created) =
            (&inner.index, &inner.records).transaction(|(index, records)| {
                let old = match index.get(index_key)? {
                    Some(raw) => Some(inner.open_index(path, &index_aad, &raw).map_err(abort)?),
                    None => None,
                };
                let current = old.as_ref().map_or(0, IndexEntry::current);
                if let Some(expected) = write.cas {
                    if expected != current {
                        return Err(abort(Error::Conflict {
                            path: path.clone(),
                            expected,
                            current,
                        }));
                    }
                }
                let created = old.is_none();
                let mut entry = old.unwrap_or_else(|| IndexEntry::new(now));
                if let Some(forced) = forced {
                    if forced < entry.next_version || forced == 0 {
                        return Err(abort(Error::Conflict {
                            path: path.clone(),
                            expected: forced,
                            current,
                        }));
                    }
                    entry.next_version = forced;
                }
                let version = entry.push_version(kind, now, write.expires_at);
                let plain = record::encode_record(
                    kind,
                    entry.created_at,
                    now,
                    write.expires_at,
                    &write.fields,
                )
                .ok_or_else(|| abort(Error::Invalid(format!("secret {path} is too large"))))?;
                let record_aad = aad(RECORD_AAD, path, Some(version));
                let sealed = inner
                    .key
                    .seal(&record_aad, &plain)
                    .map_err(|e| abort(Error::Crypto(e)))?;
                records.insert(&record_aad[RECORD_AAD.len()..], sealed)?;
                let pruned = entry.prune(inner.max_versions);
                inner.save_index(index, records, path, &index_aad, &entry, &pruned)?;
                Ok((entry, version, created))
            })?;

        if created {
            inner.count.fetch_add(1, Ordering::Relaxed);
        }
        inner.written.fetch_add(1, Ordering::SeqCst);
        Ok(Secret {
            path: path.clone(),
            version,
            labels: entry.labels_of(version),
            kind: kind.to_owned(),
            fields: write.fields,
            created_at: entry.created_at,
            updated_at: now,
            expires_at: write.expires_at,
        })
    }

    /// Removes a secret: every version and its index entry, in one transaction. Works
    /// on a secret whose index entry fails its integrity check, so such a secret can be
    /// cleared and written again. Returns whether the secret existed.
    pub fn delete(&self, path: &SecretPath) -> Result<bool, Error> {
        let inner = &*self.inner;
        let index_aad = aad(INDEX_AAD, path, None);
        let index_key = &index_aad[INDEX_AAD.len()..];
        // The records on disk now, found without the index: covers an unreadable entry.
        let mut record_prefix = Vec::with_capacity(path.as_str().len() + 1);
        record_prefix.extend_from_slice(path.as_str().as_bytes());
        record_prefix.push(0);
        let on_disk = inner
            .records
            .scan_prefix(&record_prefix)
            .keys()
            .collect::<Result<Vec<_>, _>>()?;

        let existed = (&inner.index, &inner.records).transaction(|(index, records)| {
            for key in &on_disk {
                records.remove(key.clone())?;
            }
            let Some(raw) = index.remove(index_key)? else {
                return Ok(false);
            };
            // Versions written after the scan above are known only to the entry.
            if let Ok(entry) = inner.open_index(path, &index_aad, &raw) {
                for meta in &entry.versions {
                    let record_aad = aad(RECORD_AAD, path, Some(meta.version));
                    records.remove(&record_aad[RECORD_AAD.len()..])?;
                }
            }
            Ok(true)
        })?;

        if existed {
            inner.count.fetch_sub(1, Ordering::Relaxed);
        }
        inner.written.fetch_add(1, Ordering::SeqCst);
        Ok(existed)
    }

    /// Lists the secrets under `prefix`, in path order, from the index alone: no record
    /// is read or opened. An index entry that fails its integrity check is left out and
    /// logged, so one damaged secret does not hide the others.
    pub fn list(&self, prefix: &Prefix) -> Result<Vec<Entry>, Error> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        for item in inner.index.scan_prefix(prefix.as_str().as_bytes()) {
            let (key, raw) = item?;
            let Some(path) = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| SecretPath::parse(s).ok())
            else {
                tracing::warn!(store = %inner.dir.display(), "index key that is not a valid path skipped in listing");
                continue;
            };
            if !prefix.matches(&path) {
                continue;
            }
            let index_aad = aad(INDEX_AAD, &path, None);
            let entry = match inner.open_index(&path, &index_aad, &raw) {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(path = %path, code = error.code(), error = %error, "index entry skipped in listing");
                    continue;
                }
            };
            let current = entry.current();
            if let Some(meta) = entry.meta(current) {
                out.push(Entry {
                    current_version: current,
                    kind: meta.kind.clone(),
                    updated_at: meta.updated_at,
                    expires_at: meta.expires_at,
                    path,
                });
            }
        }
        Ok(out)
    }

    /// Points `label` at `version`, or removes it when `version` is `None`. For the
    /// rotation engine (`pending`, `previous`) and for rollback (moving `current`).
    /// `current` cannot be removed. Versions the label no longer protects are pruned.
    pub fn set_label(
        &self,
        path: &SecretPath,
        label: &str,
        version: Option<u64>,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        check_name("label", label)?;
        if label == record::LABEL_CURRENT && version.is_none() {
            return Err(Error::Invalid(format!(
                "the {} label of {path} cannot be removed",
                record::LABEL_CURRENT
            )));
        }
        let index_aad = aad(INDEX_AAD, path, None);
        let index_key = &index_aad[INDEX_AAD.len()..];
        (&inner.index, &inner.records).transaction(|(index, records)| {
            let Some(raw) = index.get(index_key)? else {
                return Err(abort(Error::NotFound {
                    path: path.clone(),
                    version: None,
                }));
            };
            let mut entry = inner.open_index(path, &index_aad, &raw).map_err(abort)?;
            match version {
                Some(v) if entry.meta(v).is_none() => {
                    return Err(abort(Error::NotFound {
                        path: path.clone(),
                        version: Some(v),
                    }))
                }
                Some(v) => {
                    entry.labels.insert(label.to_owned(), v);
                }
                None => {
                    entry.labels.remove(label);
                }
            }
            let pruned = entry.prune(inner.max_versions);
            inner.save_index(index, records, path, &index_aad, &entry, &pruned)
        })?;
        inner.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Wraps the data key under a new key-encryption key and flushes, so that later
    /// opens need `new_kek` instead of the old one. No value is re-encrypted. Called by
    /// KEK rotation; the old key-encryption key must stay available until this returns.
    pub async fn rewrap_data_key(&self, new_kek: &dyn KeyWrapper) -> Result<(), Error> {
        let inner = &*self.inner;
        let wrapped = new_kek
            .wrap(&inner.key.to_wrappable())
            .await
            .map_err(Error::Crypto)?;
        save_wrapped_key(&inner.meta, wrapped, new_kek.id())?;
        inner.written.fetch_add(1, Ordering::SeqCst);
        self.flush().await
    }

    /// Makes every write so far durable. Callers flush before acknowledging a write.
    ///
    /// Group commit: one flush runs at a time on the blocking pool, and a caller whose
    /// writes a finished flush already covered returns at once, so many concurrent
    /// writers share one fsync. (sled 0.34's `flush_async` can lock up for good under
    /// concurrent transactions, spacejam/sled#1308; its blocking `flush` does not.)
    pub async fn flush(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let wanted = inner.written.load(Ordering::SeqCst);
        if inner.flushed.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let _one_at_a_time = inner.flusher.lock().await;
        if inner.flushed.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let covers = inner.written.load(Ordering::SeqCst);
        let db = inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|_| Error::Invalid("the flush task failed".into()))??;
        inner.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Number of secrets (a counter, not a scan).
    pub fn len(&self) -> usize {
        usize::try_from(self.inner.count.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Whether the store holds no secret.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn open_index(
        &self,
        path: &SecretPath,
        index_aad: &[u8],
        raw: &[u8],
    ) -> Result<IndexEntry, Error> {
        let integrity = || Error::Integrity {
            path: path.clone(),
            version: None,
        };
        let plain = self.key.open(index_aad, raw).map_err(|_| integrity())?;
        IndexEntry::decode(plain.expose()).ok_or_else(integrity)
    }

    fn open_record(
        &self,
        path: &SecretPath,
        version: u64,
        record_aad: &[u8],
        raw: &[u8],
        entry: &IndexEntry,
    ) -> Result<Secret, Error> {
        let integrity = || Error::Integrity {
            path: path.clone(),
            version: Some(version),
        };
        let plain = self.key.open(record_aad, raw).map_err(|_| integrity())?;
        let record = record::decode_record(plain.expose()).ok_or_else(integrity)?;
        Ok(Secret {
            path: path.clone(),
            version,
            labels: entry.labels_of(version),
            kind: record.kind,
            fields: record.fields,
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: record.expires_at,
        })
    }

    /// Seals and writes `entry`, and removes the records of `pruned` versions.
    fn save_index(
        &self,
        index: &TransactionalTree,
        records: &TransactionalTree,
        path: &SecretPath,
        index_aad: &[u8],
        entry: &IndexEntry,
        pruned: &[u64],
    ) -> TxResult<()> {
        for v in pruned {
            let record_aad = aad(RECORD_AAD, path, Some(*v));
            records.remove(&record_aad[RECORD_AAD.len()..])?;
        }
        let plain = entry.encode().map_err(|_| {
            abort(Error::Invalid(format!(
                "cannot encode the index entry of {path}"
            )))
        })?;
        let sealed = self
            .key
            .seal(index_aad, &plain)
            .map_err(|e| abort(Error::Crypto(e)))?;
        index.insert(&index_aad[INDEX_AAD.len()..], sealed)?;
        Ok(())
    }
}

/// Stores the wrapped data key and its KEK id together (one atomic batch).
fn save_wrapped_key(meta: &sled::Tree, wrapped: Vec<u8>, kek_id: &str) -> Result<(), Error> {
    let mut batch = sled::Batch::default();
    batch.insert(META_DEK, wrapped);
    batch.insert(META_KEK_ID, kek_id.as_bytes());
    meta.apply_batch(batch)?;
    Ok(())
}

/// `domain ++ path [++ 0x00 ++ version BE]`: the associated data, whose tail after
/// `domain` is the sled key. One allocation for both.
fn aad(domain: &[u8], path: &SecretPath, version: Option<u64>) -> Vec<u8> {
    let path = path.as_str().as_bytes();
    let mut buf = Vec::with_capacity(domain.len() + path.len() + 9);
    buf.extend_from_slice(domain);
    buf.extend_from_slice(path);
    if let Some(v) = version {
        buf.push(0);
        buf.extend_from_slice(&v.to_be_bytes());
    }
    buf
}

/// Kinds and labels: `[a-z0-9_.-]{1,64}`.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} {name:?} must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '_', '.', '-'"
        )))
    }
}

/// At least one field, names 1..=256 bytes, total size within [`MAX_RECORD_BYTES`].
fn check_fields(path: &SecretPath, fields: &Fields) -> Result<(), Error> {
    if fields.is_empty() {
        return Err(Error::Invalid(format!("secret {path} has no fields")));
    }
    let mut total = 0usize;
    for (name, value) in fields.iter() {
        if name.is_empty() || name.len() > MAX_FIELD_NAME_LEN {
            return Err(Error::Invalid(format!(
                "secret {path} has a field name that is empty or longer than {MAX_FIELD_NAME_LEN} bytes"
            )));
        }
        total = total.saturating_add(name.len()).saturating_add(value.len());
    }
    if total > MAX_RECORD_BYTES {
        return Err(Error::Invalid(format!(
            "secret {path} has {total} bytes of fields, more than {MAX_RECORD_BYTES}"
        )));
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::CreateDir {
            path: path.to_owned(),
            source,
        })
}
