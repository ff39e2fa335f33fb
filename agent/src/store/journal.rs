//! The lifecycle engine's crash journal: one sealed blob per secret whose rotation is
//! in flight on this agent, so that an agent killed mid-rotation knows, when it starts
//! again, which pending credential it had created and can finish or roll back.
//!
//! Blobs are sealed under the store's data key with the path bound as associated
//! data, like every record; a blob moved to another path fails to open. The store does
//! not interpret them. Writes are flushed before they return, because the journal only
//! helps if it reaches the disk before the step it records takes effect elsewhere.

use super::{aad, Error, Store};
use crate::path::SecretPath;
use crate::secret::SecretBytes;

const JOURNAL_AAD: &[u8] = b"latchkey/journal/v1\0";

impl Store {
    /// Seals `blob` as the journal entry of `path`, replacing any, and flushes.
    pub async fn journal_put(&self, path: &SecretPath, blob: &[u8]) -> Result<(), Error> {
        let inner = &*self.inner;
        let journal_aad = aad(JOURNAL_AAD, path, None);
        let sealed = inner.key.seal(&journal_aad, blob).map_err(Error::Crypto)?;
        inner
            .journal
            .insert(&journal_aad[JOURNAL_AAD.len()..], sealed)?;
        self.journal_flush().await
    }

    /// The journal entry of `path`, if any.
    pub fn journal_get(&self, path: &SecretPath) -> Result<Option<SecretBytes>, Error> {
        let inner = &*self.inner;
        let journal_aad = aad(JOURNAL_AAD, path, None);
        let Some(raw) = inner.journal.get(&journal_aad[JOURNAL_AAD.len()..])? else {
            return Ok(None);
        };
        inner
            .key
            .open(&journal_aad, &raw)
            .map(Some)
            .map_err(|_| Error::Integrity {
                path: path.clone(),
                version: None,
            })
    }

    /// Removes the journal entry of `path` (a missing one is fine) and flushes.
    pub async fn journal_remove(&self, path: &SecretPath) -> Result<(), Error> {
        let inner = &*self.inner;
        let journal_aad = aad(JOURNAL_AAD, path, None);
        if inner
            .journal
            .remove(&journal_aad[JOURNAL_AAD.len()..])?
            .is_some()
        {
            self.journal_flush().await?;
        }
        Ok(())
    }

    /// Every path with a journal entry (entries whose key is not a valid path are
    /// skipped; they cannot have been written by this store).
    pub fn journal_paths(&self) -> Result<Vec<SecretPath>, Error> {
        let mut out = Vec::new();
        for item in self.inner.journal.iter() {
            let (key, _) = item?;
            if let Some(path) = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| SecretPath::parse(k).ok())
            {
                out.push(path);
            }
        }
        Ok(out)
    }

    async fn journal_flush(&self) -> Result<(), Error> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|_| Error::Invalid("the flush task failed".into()))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::crypto::LocalKek;
    use crate::path::SecretPath;
    use crate::store::{Store, StoreConfig};

    #[tokio::test]
    async fn journal_entries_survive_a_reopen_and_are_bound_to_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = StoreConfig::new(dir.path().join("store"));
        let kek = LocalKek::generate_file(dir.path().join("kek")).expect("kek");
        let a = SecretPath::parse("db/a").expect("path");
        let b = SecretPath::parse("db/b").expect("path");
        {
            let store = Store::open(&cfg, &kek).await.expect("open");
            store.journal_put(&a, b"step=published").await.expect("put");
            assert_eq!(store.journal_paths().expect("list"), vec![a.clone()]);
            // A blob copied to another path's key does not open there.
            let raw = store
                .inner
                .journal
                .get(a.as_str().as_bytes())
                .expect("read")
                .expect("present");
            store
                .inner
                .journal
                .insert(b.as_str().as_bytes(), raw)
                .expect("insert");
            assert!(store.journal_get(&b).is_err());
            store.journal_remove(&b).await.expect("remove");
        }
        let store = Store::open(&cfg, &kek).await.expect("reopen");
        let blob = store.journal_get(&a).expect("get").expect("present");
        assert_eq!(blob.expose(), b"step=published");
        store.journal_remove(&a).await.expect("remove");
        assert!(store.journal_get(&a).expect("get").is_none());
        assert!(store.journal_paths().expect("list").is_empty());
    }
}
