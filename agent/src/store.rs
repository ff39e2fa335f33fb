//! The local encrypted store: versioned, labelled secrets in sled, sealed at rest.
//!
//! This is where the cache's cold layer and the embedded upstream keep their data.
//! Four sled trees (keys and associated data in `store/layout.rs`):
//!
//! - `meta`: the store's data key, wrapped by the key-encryption key, and that key's
//!   id; the format number; the sealed counters of changes and secrets
//!   (`store/ledger.rs`).
//! - `index`: one sealed index entry (`store/record.rs`) per path: the path, its epoch,
//!   the versions kept, labels, per-version kind and expiry.
//! - `records`: one sealed record per version (fields, kind, timestamps).
//! - `journal`: the lifecycle engine's crash journal (`store/journal.rs`): one sealed
//!   blob per secret with a rotation in flight.
//!
//! No key shows a path: keys are HMAC tags of the path under a key derived from the
//! data key. Binding the tag, version and the path's epoch as associated data makes
//! every value tamper-evident: a record moved to another path or version, copied back
//! after the path was deleted and written again, truncated or altered fails to open
//! with [`Error::Integrity`] for that secret only. The store does not detect a whole
//! index entry being rolled back to an older sealed copy of itself.
//!
//! Every change also counts itself, in the same transaction, in the sealed counters;
//! each flush then appends the counts to a sealed state file beside sled's files
//! (`store/ledger.rs`). At open the two are compared (`store/check.rs`), so writes that
//! sled lost (its recovery drops the log after a bad checksum) are reported by name
//! ([`Store::problems`]) instead of vanishing.
//!
//! `put`, `delete` and `set_label` each run as one sled transaction over `meta`,
//! `index` and `records`, and do not flush: callers [`Store::flush`] before they
//! acknowledge a write. No value ever appears in an error or a log line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use crate::crypto::{self, DataKey, KeyWrapper};
use crate::path::{Prefix, SecretPath};
use crate::secret::Fields;
use crate::state_file::StateDir;

mod check;
mod files;
mod health;
mod journal;
pub mod layout;
mod ledger;
mod migrate;
mod record;
#[cfg(test)]
mod tests;

pub use health::{Missing, Op, Problem, StateFileReason};
pub use ledger::STATE_FILE;

use layout::{Layout, PathTag};
use ledger::{Counters, Ledger, StateFile};
pub use record::Deletion;
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

/// The sled trees.
pub const META_TREE: &str = "meta";
/// See [`META_TREE`].
pub const INDEX_TREE: &str = "index";
/// See [`META_TREE`].
pub const RECORDS_TREE: &str = "records";
/// See [`META_TREE`].
pub const JOURNAL_TREE: &str = "journal";
/// The `meta` key of the wrapped data key.
pub const META_DEK: &[u8] = b"dek";
const META_KEK_ID: &[u8] = b"kek_id";
/// The `meta` key of the format number: absent before format 2.
const META_FORMAT: &[u8] = b"format";
const FORMAT: &[u8] = b"2";
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
    /// Where the agent's state files live (not the store's own: those are inside
    /// `path`).
    pub state_dir: StateDir,
}

impl StoreConfig {
    /// A config for `path` with the default limits, its state files beside it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            state_dir: StateDir::BesideStore(path.clone()),
            path,
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
    /// The upstream deleted the current version ([`Store::mark_deleted`]): it is not
    /// served; older versions are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
}

/// What [`Store::change_entry`] does with an entry.
enum Change {
    /// Seal and save it, removing the records of these versions.
    Save(Vec<u64>),
    /// Nothing is left of the secret.
    Remove,
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
    /// sled refused to open its files because its log is damaged where it cannot
    /// recover without dropping data it had recorded as stable.
    #[error(
        "the store {} is damaged: sled cannot recover {}/db without dropping acknowledged writes, \
         so the agent does not open it; `latchkey store recover --config FILE` keeps a copy \
         of the damaged folder, opens what can be recovered and reports what was lost",
        path.display(), path.display()
    )]
    Damaged {
        /// The store directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// Another process holds the store's lock (a running agent, or a command that
    /// opens the store).
    #[error(
        "the store {} is in use by another process (a running agent or command holds its lock); \
         stop it, or use the agent's API",
        path.display()
    )]
    InUse {
        /// The store directory.
        path: PathBuf,
    },
    /// The sealed counters of the store did not open inside a change.
    #[error("the store's sealed counters failed their integrity check")]
    CountersUnreadable,
    /// The state file could not be written.
    #[error("cannot write the store's state file {}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the store folder could not be checked or made private.
    #[error("cannot make {} private to the agent", path.display())]
    FileMode {
        /// The file.
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
            Self::Integrity { .. }
            | Self::MissingDataKey { .. }
            | Self::Damaged { .. }
            | Self::CountersUnreadable => "integrity_error",
            Self::Conflict { .. } => "conflict",
            Self::Invalid(_) => "invalid",
            Self::NotFound { .. } => "not_found",
            Self::KeyUnwrap { .. } => "key_unwrap_failed",
            Self::Storage(_)
            | Self::CreateDir { .. }
            | Self::StateFile { .. }
            | Self::FileMode { .. }
            | Self::InUse { .. } => "storage_error",
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
    state_dir: StateDir,
    db: sled::Db,
    meta: sled::Tree,
    index: sled::Tree,
    records: sled::Tree,
    journal: sled::Tree,
    key: DataKey,
    layout: Layout,
    max_versions: usize,
    /// Number of secrets: counted once at open, then kept by `put` and `delete`
    /// (sled's `len` is a full scan). Signed so a racing decrement never wraps.
    count: AtomicIsize,
    /// Committed writes so far, and how many of them a finished flush covers.
    written: AtomicU64,
    flushed: AtomicU64,
    /// Serializes flushes (group commit).
    flusher: tokio::sync::Mutex<()>,
    /// Recent changes and known problems: what the state file holds.
    ledger: Mutex<Ledger>,
    /// The state file, open for appends; `None` after a failed write, so the next
    /// flush replaces it whole. Only touched by a flush (under `flusher`).
    state_file: Mutex<Option<StateFile>>,
    /// Whether any problem is known (read on every response).
    damaged: AtomicBool,
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
    /// fails with [`Error::KeyUnwrap`]. A store written before format 2 is migrated.
    /// The store is then checked against its state file: problems found are logged and
    /// kept ([`Store::problems`]), and the store opens anyway, serving what it holds.
    /// Blocks while sled recovers its log: call at startup.
    pub async fn open(cfg: &StoreConfig, kek: &dyn KeyWrapper) -> Result<Store, Error> {
        if cfg.max_versions == 0 {
            return Err(Error::Invalid("max_versions must be at least 1".into()));
        }
        create_private_dir(&cfg.path)?;
        files::make_private(&cfg.path)?;
        let db = open_db(cfg).await?;
        let meta = db.open_tree(META_TREE)?;
        let index = db.open_tree(INDEX_TREE)?;
        let records = db.open_tree(RECORDS_TREE)?;
        let journal = db.open_tree(JOURNAL_TREE)?;

        let format = meta.get(META_FORMAT)?;
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
                meta.insert(ledger::STATE_KEY, Counters::default().seal(&key)?)?;
                // Nothing may be sealed under a key that a crash could lose.
                db.flush()?;
                ledger::write(&cfg.path, &key, &Ledger::default())?;
                meta.insert(META_FORMAT, FORMAT)?;
                db.flush()?;
                key
            }
            _ => {
                return Err(Error::MissingDataKey {
                    store: cfg.path.clone(),
                })
            }
        };
        let layout = Layout::new(&key);
        let trees = Trees {
            db: &db,
            meta: &meta,
            index: &index,
            records: &records,
            journal: &journal,
        };
        if format.as_deref() != Some(FORMAT) {
            migrate::to_format_2(&trees, &key, &layout, &cfg.path)?;
            meta.insert(META_FORMAT, FORMAT)?;
            db.flush()?;
        }
        let found = check::at_open(&trees, &key, &cfg.path)?;
        for problem in &found.ledger.problems {
            tracing::error!(store = %cfg.path.display(), problem = %problem, "store damaged");
        }
        let state_file = StateFile::create(&cfg.path, &key, &found.ledger)?;

        let count = isize::try_from(found.secrets).unwrap_or(isize::MAX);
        let damaged = !found.ledger.problems.is_empty();
        Ok(Store {
            inner: Arc::new(Inner {
                dir: cfg.path.clone(),
                state_dir: cfg.state_dir.clone(),
                db,
                meta,
                index,
                records,
                journal,
                key,
                layout,
                max_versions: cfg.max_versions,
                count: AtomicIsize::new(count),
                written: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                flusher: tokio::sync::Mutex::new(()),
                ledger: Mutex::new(found.ledger),
                state_file: Mutex::new(Some(state_file)),
                damaged: AtomicBool::new(damaged),
            }),
        })
    }

    /// Reads one version: one index read and one record read, two decryptions.
    /// `Ok(None)` when the secret, the version or the label does not exist.
    pub fn get(&self, path: &SecretPath, sel: Selector) -> Result<Option<Secret>, Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(raw_entry) = inner.read(&inner.index, tag.key(), path, None)? else {
                return Ok(None);
            };
            let entry = inner.open_index(path, &tag, &raw_entry)?;
            let Some(version) = entry.resolve(&sel) else {
                return Ok(None);
            };
            match inner.read(
                &inner.records,
                &tag.record_key(version),
                path,
                Some(version),
            )? {
                Some(raw) => {
                    return inner
                        .open_record(path, &tag, version, &raw, &entry)
                        .map(Some)
                }
                None => {
                    // A concurrent put may have pruned the version between the two reads;
                    // if the index moved on, resolve again. Otherwise the record is gone.
                    let now = inner.read(&inner.index, tag.key(), path, None)?;
                    let moved = now.as_ref() != Some(&raw_entry);
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
        let tag = inner.layout.tag(path);

        let (entry, version, created, counters) = (&inner.meta, &inner.index, &inner.records)
            .transaction(|(meta, index, records)| {
                let old = match index.get(tag.key())? {
                    Some(raw) => Some(inner.open_index(path, &tag, &raw).map_err(abort)?),
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
                let mut entry = old.unwrap_or_else(|| IndexEntry::new(path.as_str(), now));
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
                let sealed = inner
                    .key
                    .seal(&tag.record_aad(version, entry.epoch), &plain)
                    .map_err(|e| abort(Error::Crypto(e)))?;
                records.insert(&tag.record_key(version)[..], sealed)?;
                let pruned = entry.prune(inner.max_versions);
                inner.save_index(index, records, &tag, &entry, &pruned)?;
                let counters = Counters::bump(meta, &inner.key, i64::from(created))?;
                Ok((entry, version, created, counters))
            })?;

        if created {
            inner.count.fetch_add(1, Ordering::Relaxed);
        }
        inner.committed(counters, path, Op::Write { version });
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
        let tag = inner.layout.tag(path);
        // The records on disk now, found without the index: covers an unreadable entry.
        let on_disk = inner
            .records
            .scan_prefix(tag.key())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;

        let counters =
            (&inner.meta, &inner.index, &inner.records).transaction(|(meta, index, records)| {
                for key in &on_disk {
                    records.remove(key.clone())?;
                }
                let Some(raw) = index.remove(tag.key())? else {
                    return Ok(None);
                };
                // Versions written after the scan above are known only to the entry.
                if let Ok(entry) = inner.open_index(path, &tag, &raw) {
                    for meta in &entry.versions {
                        records.remove(&tag.record_key(meta.version)[..])?;
                    }
                }
                Ok(Some(Counters::bump(meta, &inner.key, -1)?))
            })?;

        let Some(counters) = counters else {
            return Ok(false);
        };
        inner.count.fetch_sub(1, Ordering::Relaxed);
        inner.committed(counters, path, Op::Delete);
        Ok(true)
    }

    /// Records that the upstream deleted the secret's current version `version`
    /// (`destroyed`: for good), keeping older versions readable by number. A
    /// destroyed version's record is removed with it; a secret left with no version
    /// is removed whole. Returns whether anything changed (`false` for a secret the
    /// store lacks, or a mark already there).
    pub fn mark_deleted(
        &self,
        path: &SecretPath,
        version: u64,
        destroyed: bool,
    ) -> Result<bool, Error> {
        let mark = Deletion { version, destroyed };
        let changed = self.change_entry(path, |entry| {
            if entry.deleted == Some(mark) {
                return Ok(None);
            }
            entry.deleted = Some(mark);
            let mut dropped = Vec::new();
            if destroyed && entry.meta(version).is_some() {
                entry.versions.retain(|m| m.version != version);
                entry.labels.retain(|_, v| *v != version);
                dropped.push(version);
                match entry.versions.last().map(|m| m.version) {
                    Some(newest) => {
                        entry
                            .labels
                            .insert(record::LABEL_CURRENT.to_owned(), newest);
                    }
                    None => return Ok(Some(Change::Remove)),
                }
            }
            Ok(Some(Change::Save(dropped)))
        })?;
        if changed == Some(true) {
            // Nothing was left: the secret goes.
            self.delete(path)?;
        }
        Ok(changed.is_some())
    }

    /// Clears the mark of [`Store::mark_deleted`] (the upstream undeleted the
    /// version). Returns whether there was one.
    pub fn clear_deleted(&self, path: &SecretPath) -> Result<bool, Error> {
        Ok(self
            .change_entry(path, |entry| {
                Ok(entry.deleted.take().map(|_| Change::Save(Vec::new())))
            })?
            .is_some())
    }

    /// The upstream's deletion of this secret's current version, if it is marked.
    pub fn deletion(&self, path: &SecretPath) -> Result<Option<Deletion>, Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let Some(raw) = inner.read(&inner.index, tag.key(), path, None)? else {
            return Ok(None);
        };
        Ok(inner.open_index(path, &tag, &raw)?.deleted)
    }

    /// Changes one index entry in a transaction: `f` answers `None` (nothing to do),
    /// or what to do. Returns `None` when nothing changed, `Some(true)` when the
    /// secret is left without versions (the caller deletes it), `Some(false)` else.
    fn change_entry(
        &self,
        path: &SecretPath,
        f: impl Fn(&mut IndexEntry) -> Result<Option<Change>, Error>,
    ) -> Result<Option<bool>, Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let outcome =
            (&inner.meta, &inner.index, &inner.records).transaction(|(meta, index, records)| {
                let Some(raw) = index.get(tag.key())? else {
                    return Ok(None);
                };
                let mut entry = inner.open_index(path, &tag, &raw).map_err(abort)?;
                match f(&mut entry).map_err(abort)? {
                    None => Ok(None),
                    Some(Change::Remove) => Ok(Some(None)),
                    Some(Change::Save(dropped)) => {
                        inner.save_index(index, records, &tag, &entry, &dropped)?;
                        Ok(Some(Some(Counters::bump(meta, &inner.key, 0)?)))
                    }
                }
            })?;
        match outcome {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(counters)) => {
                inner.committed(counters, path, Op::Deletion);
                Ok(Some(false))
            }
        }
    }

    /// Lists the secrets under `prefix`, in path order, from the index alone: no record
    /// is read or opened. Keys are tags, so every index entry is opened to learn its
    /// path. An entry that fails its integrity check is left out and logged, so one
    /// damaged secret does not hide the others.
    pub fn list(&self, prefix: &Prefix) -> Result<Vec<Entry>, Error> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        for item in inner.index.iter() {
            let (key, raw) = item.map_err(|e| inner.unreadable(None, e))?;
            let Some(entry) = inner.open_index_at(&key, &raw) else {
                tracing::warn!(store = %inner.dir.display(), "index entry that fails its integrity check skipped in listing");
                continue;
            };
            let Ok(path) = SecretPath::parse(&entry.path) else {
                continue;
            };
            if !prefix.matches(&path) {
                continue;
            }
            let current = entry.current();
            if let Some(meta) = entry.meta(current) {
                out.push(Entry {
                    current_version: current,
                    kind: meta.kind.clone(),
                    updated_at: meta.updated_at,
                    expires_at: meta.expires_at,
                    deleted: entry.deleted,
                    path,
                });
            }
        }
        out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
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
        let tag = inner.layout.tag(path);
        let counters =
            (&inner.meta, &inner.index, &inner.records).transaction(|(meta, index, records)| {
                let Some(raw) = index.get(tag.key())? else {
                    return Err(abort(Error::NotFound {
                        path: path.clone(),
                        version: None,
                    }));
                };
                let mut entry = inner.open_index(path, &tag, &raw).map_err(abort)?;
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
                inner.save_index(index, records, &tag, &entry, &pruned)?;
                Counters::bump(meta, &inner.key, 0)
            })?;
        inner.committed(
            counters,
            path,
            Op::Label {
                label: label.to_owned(),
            },
        );
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

    /// Makes every write so far durable, then records it in the state file. Callers
    /// flush before acknowledging a write.
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
        self.blocking(|store| {
            // Taken before sled flushes: every change it counts is in this flush.
            let ledger = store.inner.ledger().clone();
            store.inner.db.flush()?;
            store.inner.save_state(&ledger)
        })
        .await?;
        inner.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Whether every change committed so far is covered by a finished flush.
    #[cfg(test)]
    pub(crate) fn is_flushed(&self) -> bool {
        self.inner.flushed.load(Ordering::SeqCst) >= self.inner.written.load(Ordering::SeqCst)
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

    /// The path of the agent's state file `name` (a [`crate::state_file`] constant).
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.inner.state_dir.file(name)
    }

    /// Whether any problem is known: one atomic load, for every response.
    pub fn is_damaged(&self) -> bool {
        self.inner.damaged.load(Ordering::Relaxed)
    }

    /// The problems found and not yet acknowledged.
    pub fn problems(&self) -> Vec<Problem> {
        self.inner.ledger().problems.clone()
    }

    /// Forgets the problems known now (an operator has dealt with them) and records
    /// that in the state file. Returns how many there were.
    pub async fn acknowledge_problems(&self) -> Result<usize, Error> {
        self.blocking(|store| {
            let inner = &store.inner;
            let _one_at_a_time = inner.flusher.blocking_lock();
            let (cleared, ledger) = {
                let mut ledger = inner.ledger();
                let cleared = std::mem::take(&mut ledger.problems).len();
                inner.damaged.store(false, Ordering::Relaxed);
                (cleared, ledger.clone())
            };
            inner.db.flush()?;
            inner.save_state(&ledger)?;
            Ok(cleared)
        })
        .await
    }

    /// Runs `f` on the blocking pool with a handle to this store: the one way async
    /// code calls into sled, whose reads and writes block on disk I/O and locks.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| Error::Invalid("a store task failed".into()))?
    }
}

/// The trees of an open database, for the modules that work on all of them.
struct Trees<'a> {
    db: &'a sled::Db,
    meta: &'a sled::Tree,
    index: &'a sled::Tree,
    records: &'a sled::Tree,
    journal: &'a sled::Tree,
}

impl Inner {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the state file up to `ledger` after sled flushed: one appended frame, or
    /// the whole file after an earlier write failed. Called with `flusher` held.
    fn save_state(&self, ledger: &Ledger) -> Result<(), Error> {
        let mut slot = self.state_file.lock().unwrap_or_else(|e| e.into_inner());
        let saved = match slot.as_mut() {
            Some(file) => file.append(&self.dir, &self.key, ledger),
            None => StateFile::create(&self.dir, &self.key, ledger).map(|file| {
                *slot = Some(file);
            }),
        };
        if saved.is_err() {
            // Whatever part of a frame reached the file is replaced next time.
            *slot = None;
        }
        saved
    }

    /// After a change committed: note it for the state file and for `flush`.
    fn committed(&self, counters: Counters, path: &SecretPath, op: Op) {
        self.ledger().record(counters, path.as_str(), op);
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Reads `key` from `tree`; a page sled cannot read is that secret's integrity
    /// error, and a problem of the store.
    fn read(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<Option<sled::IVec>, Error> {
        match tree.get(key) {
            Ok(v) => Ok(v),
            Err(e @ sled::Error::Corruption { .. }) => {
                self.unreadable(Some(path), e);
                Err(Error::Integrity {
                    path: path.clone(),
                    version,
                })
            }
            Err(e) => Err(Error::Storage(e)),
        }
    }

    /// Reports that sled could not read something. The report reaches the state file
    /// with the next flush (the one at shutdown included).
    fn unreadable(&self, path: Option<&SecretPath>, e: sled::Error) -> Error {
        let problem = Problem::Unreadable {
            path: path.map(|p| p.as_str().to_owned()),
            detail: e.to_string(),
        };
        if self.ledger().report(problem.clone()) {
            tracing::error!(store = %self.dir.display(), problem = %problem, "store damaged");
            self.damaged.store(true, Ordering::Relaxed);
            self.written.fetch_add(1, Ordering::SeqCst);
        }
        Error::Storage(e)
    }

    fn open_index(
        &self,
        path: &SecretPath,
        tag: &PathTag,
        raw: &[u8],
    ) -> Result<IndexEntry, Error> {
        let integrity = || Error::Integrity {
            path: path.clone(),
            version: None,
        };
        let plain = self
            .key
            .open(&tag.index_aad(), raw)
            .map_err(|_| integrity())?;
        IndexEntry::decode(plain.expose())
            .filter(|e| e.path == path.as_str())
            .ok_or_else(integrity)
    }

    /// Opens the index entry stored under `key`, whatever its path.
    fn open_index_at(&self, key: &[u8], raw: &[u8]) -> Option<IndexEntry> {
        let tag = PathTag(key.try_into().ok()?);
        let plain = self.key.open(&tag.index_aad(), raw).ok()?;
        IndexEntry::decode(plain.expose())
    }

    fn open_record(
        &self,
        path: &SecretPath,
        tag: &PathTag,
        version: u64,
        raw: &[u8],
        entry: &IndexEntry,
    ) -> Result<Secret, Error> {
        let integrity = || Error::Integrity {
            path: path.clone(),
            version: Some(version),
        };
        let plain = self
            .key
            .open(&tag.record_aad(version, entry.epoch), raw)
            .map_err(|_| integrity())?;
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
        tag: &PathTag,
        entry: &IndexEntry,
        pruned: &[u64],
    ) -> TxResult<()> {
        for v in pruned {
            records.remove(&tag.record_key(*v)[..])?;
        }
        let sealed = seal_index(&self.key, tag, entry).map_err(abort)?;
        index.insert(tag.key(), sealed)?;
        Ok(())
    }
}

/// The sealed bytes of an index entry.
fn seal_index(key: &DataKey, tag: &PathTag, entry: &IndexEntry) -> Result<Vec<u8>, Error> {
    let plain = entry
        .encode()
        .map_err(|_| Error::Invalid(format!("cannot encode the index entry of {}", entry.path)))?;
    key.seal(&tag.index_aad(), &plain).map_err(Error::Crypto)
}

/// Stores the wrapped data key and its KEK id together (one atomic batch).
fn save_wrapped_key(meta: &sled::Tree, wrapped: Vec<u8>, kek_id: &str) -> Result<(), Error> {
    let mut batch = sled::Batch::default();
    batch.insert(META_DEK, wrapped);
    batch.insert(META_KEK_ID, kek_id.as_bytes());
    meta.apply_batch(batch)?;
    Ok(())
}

/// Whether `kind` is a kind the store takes: `[a-z0-9_.-]{1,64}`.
pub fn valid_kind(kind: &str) -> bool {
    check_name("kind", kind).is_ok()
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

/// How long [`open_db`] waits for the lock of a store that was just closed: sled's
/// background threads let go of its file lock shortly after its last handle drops,
/// and a restarting agent waits for the one that is exiting.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens sled at the store's path. A lock held by another process is waited for up
/// to [`LOCK_WAIT`], then reported as [`Error::InUse`]; damage sled cannot recover
/// is [`Error::Damaged`].
async fn open_db(cfg: &StoreConfig) -> Result<sled::Db, Error> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_held(&e) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::InUse {
                        path: cfg.path.clone(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e @ sled::Error::Corruption { .. }) => {
                return Err(Error::Damaged {
                    path: cfg.path.clone(),
                    source: e,
                })
            }
            Err(e) => return Err(Error::Storage(e)),
        }
    }
}

/// Whether sled refused to open because another handle holds its file lock. sled
/// reports this only as an I/O error of kind `Other` naming the lock.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().contains("could not acquire lock"))
}

/// Opens sled at `path` directly, waiting as [`open_db`] does for a lock that a
/// just-dropped store still holds: tests that reach under the store use it.
#[cfg(test)]
pub(crate) fn open_raw(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("raw sled open of {}: {e}", path.display()),
        }
    }
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
