//! The lifecycle engine's crash journal: one sealed blob per secret whose rotation is
//! in flight on this agent, so that an agent killed mid-rotation knows, when it starts
//! again, which pending credential it had created and can finish or roll back.
//!
//! A blob is stored under its path's tag and sealed under the store's data key with
//! the tag bound as associated data, like every record; the sealed plaintext starts
//! with the path (`u16` length, bytes), so the journal can be listed without any path
//! in clear on disk, and a blob moved to another path fails to open. The store does not
//! interpret blobs. Each change counts in the store's counters, and writes are flushed
//! before they return, because the journal only helps if it reaches the disk before
//! the step it records takes effect elsewhere.

use sled::Transactional;
use zeroize::Zeroizing;

use super::health::Op;
use super::layout::PathTag;
use super::ledger::Counters;
use super::{Error, Store};
use crate::path::SecretPath;
use crate::secret::SecretBytes;

impl Store {
    /// Seals `blob` as the journal entry of `path`, replacing any, and flushes.
    pub async fn journal_put(&self, path: &SecretPath, blob: &[u8]) -> Result<(), Error> {
        let path = path.clone();
        let blob = Zeroizing::new(blob.to_vec());
        self.blocking(move |store| store.journal_seal(&path, &blob))
            .await?;
        self.flush().await
    }

    fn journal_seal(&self, path: &SecretPath, blob: &[u8]) -> Result<(), Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let name = path.as_str().as_bytes();
        let name_len = u16::try_from(name.len())
            .map_err(|_| Error::Invalid(format!("path {path} is too long for the journal")))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + name.len() + blob.len()));
        plain.extend_from_slice(&name_len.to_be_bytes());
        plain.extend_from_slice(name);
        plain.extend_from_slice(blob);
        let sealed = inner
            .key
            .seal(&tag.journal_aad(), &plain)
            .map_err(Error::Crypto)?;
        let counters = (&inner.meta, &inner.journal).transaction(|(meta, journal)| {
            journal.insert(tag.key(), sealed.as_slice())?;
            Counters::bump(meta, &inner.key, 0)
        })?;
        inner.committed(counters, path, Op::Journal);
        Ok(())
    }

    /// The journal entry of `path`, if any.
    pub fn journal_get(&self, path: &SecretPath) -> Result<Option<SecretBytes>, Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let Some(raw) = inner.read(&inner.journal, tag.key(), path, None)? else {
            return Ok(None);
        };
        let integrity = || Error::Integrity {
            path: path.clone(),
            version: None,
        };
        let (name, blob) = open_entry(self, &tag, &raw).ok_or_else(integrity)?;
        if name != path.as_str() {
            return Err(integrity());
        }
        Ok(Some(blob))
    }

    /// Removes the journal entry of `path` (a missing one is fine) and flushes.
    pub async fn journal_remove(&self, path: &SecretPath) -> Result<(), Error> {
        let owned = path.clone();
        if self
            .blocking(move |store| store.journal_drop(&owned))
            .await?
        {
            self.flush().await?;
        }
        Ok(())
    }

    /// Removes the entry; whether there was one.
    fn journal_drop(&self, path: &SecretPath) -> Result<bool, Error> {
        let inner = &*self.inner;
        let tag = inner.layout.tag(path);
        let counters =
            (&inner.meta, &inner.journal).transaction(|(meta, journal)| {
                match journal.remove(tag.key())? {
                    Some(_) => Ok(Some(Counters::bump(meta, &inner.key, 0)?)),
                    None => Ok(None),
                }
            })?;
        let Some(counters) = counters else {
            return Ok(false);
        };
        inner.committed(counters, path, Op::Journal);
        Ok(true)
    }

    /// Every path with a journal entry (entries that fail their integrity check are
    /// skipped: their path cannot be known).
    pub fn journal_paths(&self) -> Result<Vec<SecretPath>, Error> {
        let mut out = Vec::new();
        for item in self.inner.journal.iter() {
            let (key, raw) = item?;
            let Some(tag) = key.as_ref().try_into().ok().map(PathTag) else {
                continue;
            };
            match open_entry(self, &tag, &raw).and_then(|(name, _)| SecretPath::parse(&name).ok()) {
                Some(path) => out.push(path),
                None => tracing::warn!(
                    store = %self.inner.dir.display(),
                    "journal entry that fails its integrity check skipped"
                ),
            }
        }
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }
}

/// Opens a journal entry into its path and its blob.
fn open_entry(store: &Store, tag: &PathTag, raw: &[u8]) -> Option<(String, SecretBytes)> {
    let plain = store.inner.key.open(&tag.journal_aad(), raw).ok()?;
    let bytes = plain.expose();
    let len = usize::from(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?.to_owned();
    let blob = SecretBytes::new(bytes.get(2 + len..)?.to_vec());
    Some((name, blob))
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
            let tag_a = store.inner.layout.tag(&a);
            let tag_b = store.inner.layout.tag(&b);
            let raw = store
                .inner
                .journal
                .get(tag_a.key())
                .expect("read")
                .expect("present");
            store
                .inner
                .journal
                .insert(tag_b.key(), raw)
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
        assert!(store.problems().is_empty(), "{:?}", store.problems());
    }
}
