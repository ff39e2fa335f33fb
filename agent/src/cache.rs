//! The hot cache: rendered responses for recently read secrets, in front of the store.
//!
//! A hit serves a secret without touching sled or decrypting: the cached value is the
//! response body, already rendered, shared by reference count with every response in
//! flight. The body's bytes are owned by a [`SecretBytes`], so they are zeroized when
//! the last reference goes, whether the entry was evicted, invalidated or replaced.
//!
//! Writers invalidate after they commit. A reader that raced a writer must not put the
//! old value back: [`HotCache::generation`] is read before the store is, and
//! [`HotCache::insert_if_unchanged`] inserts only if no invalidation happened since.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::path::SecretPath;
use crate::secret::SecretBytes;

/// One cached read.
#[derive(Debug)]
pub struct Cached {
    /// The version the body shows.
    pub version: u64,
    /// The rendered JSON body (secret bytes; zeroized on last drop).
    pub body: Bytes,
    /// The version's expiry (unix seconds): an expired OAuth token is refreshed
    /// rather than served from here.
    pub expires_at: Option<i64>,
}

impl Cached {
    /// Wraps a rendered body so its bytes are zeroized on last drop.
    pub fn new(version: u64, body: SecretBytes) -> Self {
        Cached {
            version,
            body: Bytes::from_owner(body),
            expires_at: None,
        }
    }
}

/// The cache of current-version reads, keyed by path.
pub struct HotCache {
    entries: moka::sync::Cache<SecretPath, Arc<Cached>>,
    /// Bumped on every invalidation; the lock orders invalidations against inserts.
    generation: RwLock<u64>,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl HotCache {
    /// A cache holding at most `capacity` secrets.
    pub fn new(capacity: u64) -> Self {
        HotCache {
            entries: moka::sync::Cache::builder().max_capacity(capacity).build(),
            generation: RwLock::new(0),
        }
    }

    /// The cached current version of `path`.
    pub fn get(&self, path: &SecretPath) -> Option<Arc<Cached>> {
        self.entries.get(path)
    }

    /// Read before reading the store; pass to [`Self::insert_if_unchanged`].
    pub fn generation(&self) -> u64 {
        *self.generation.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Caches `value` unless an invalidation happened after `seen` was read.
    pub fn insert_if_unchanged(&self, path: SecretPath, value: Arc<Cached>, seen: u64) {
        let generation = self.generation.read().unwrap_or_else(|e| e.into_inner());
        if *generation == seen {
            self.entries.insert(path, value);
        }
    }

    /// Drops `path` after a write or delete has been committed.
    pub fn invalidate(&self, path: &SecretPath) {
        let mut generation = self.generation.write().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        self.entries.invalidate(path);
    }

    /// Drops everything (e.g. after a restore).
    pub fn clear(&self) {
        let mut generation = self.generation.write().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> SecretPath {
        SecretPath::parse(p).expect("valid path")
    }

    #[test]
    fn a_reader_that_raced_a_writer_does_not_restore_the_old_value() {
        let cache = HotCache::new(10);
        let seen = cache.generation();
        // A writer commits and invalidates while the reader was reading the store.
        cache.invalidate(&path("a"));
        cache.insert_if_unchanged(
            path("a"),
            Arc::new(Cached::new(1, SecretBytes::new(b"old".to_vec()))),
            seen,
        );
        assert!(cache.get(&path("a")).is_none());
        let seen = cache.generation();
        cache.insert_if_unchanged(
            path("a"),
            Arc::new(Cached::new(2, SecretBytes::new(b"new".to_vec()))),
            seen,
        );
        assert_eq!(cache.get(&path("a")).map(|c| c.version), Some(2));
    }
}
