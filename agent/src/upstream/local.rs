//! The embedded store as an upstream (`kind = "local"`, and what the agent uses when
//! no `[upstream]` is configured): the agent's own sealed store is the source of truth.
//!
//! So there is always an upstream, and every write and delete takes the one path
//! through `sync`'s commit whatever the configuration. A write here is the store's own
//! check-and-set transaction and then a flush, so, like a remote write, it is durable
//! when it returns; the commit then finds the version already stored and goes on to
//! the cache and the event. Nothing changes the store behind the agent's back, so
//! [`Upstream::is_local`] tells `sync` not to poll it and not to mark reads stale.
//!
//! Every store call runs on the blocking pool ([`Store::blocking`]). Store errors are
//! passed on whole ([`Error::Store`]), so an answer to a client is the one the store's
//! error gives (a conflict names the current version as the store does).

use async_trait::async_trait;

use super::{Error, RemoteMeta, RemoteSecret, Upstream};
use crate::path::{Prefix, SecretPath};
use crate::secret::Fields;
use crate::store::{self, Selector, Store};

// Config: `[upstream] kind = "local"` has only a name (`upstream::config::LocalConfig`);
// the store's own options are `[store]`.

/// The upstream over the agent's own store.
#[derive(Clone)]
pub struct Local {
    name: String,
    store: Store,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("name", &self.name).finish()
    }
}

impl Local {
    /// The upstream named `name` (logs, errors) over `store`.
    pub fn new(name: impl Into<String>, store: Store) -> Self {
        Local {
            name: name.into(),
            store,
        }
    }
}

#[async_trait]
impl Upstream for Local {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn read(&self, path: &SecretPath) -> Result<Option<RemoteSecret>, Error> {
        let path = path.clone();
        let found = self
            .store
            .blocking(move |s| s.get(&path, Selector::Current))
            .await?;
        Ok(found.map(|s| RemoteSecret {
            path: s.path,
            version: s.version,
            fields: s.fields,
            updated_at: s.updated_at,
            ordered: true,
            kind: Some(s.kind),
            expires_at: s.expires_at,
        }))
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<RemoteMeta>, Error> {
        let prefix = prefix.clone();
        let entries = self.store.blocking(move |s| s.list(&prefix)).await?;
        Ok(entries
            .into_iter()
            .map(|e| RemoteMeta::live(e.path, e.current_version, e.updated_at))
            .collect())
    }

    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, Error> {
        Ok(self
            .read(path)
            .await?
            .map(|s| RemoteMeta::live(s.path, s.version, s.updated_at)))
    }

    async fn write(
        &self,
        path: &SecretPath,
        fields: &Fields,
        cas: Option<u64>,
    ) -> Result<u64, Error> {
        let write = store::Write {
            fields: fields.clone(),
            cas,
            ..store::Write::default()
        };
        self.put(path, &write).await
    }

    async fn put(&self, path: &SecretPath, write: &store::Write) -> Result<u64, Error> {
        let path = path.clone();
        let write = write.clone();
        let stored = self.store.blocking(move |s| s.put(&path, write)).await?;
        self.store.flush().await?;
        Ok(stored.version)
    }

    async fn delete(&self, path: &SecretPath) -> Result<Option<bool>, Error> {
        let path = path.clone();
        let existed = self.store.blocking(move |s| s.delete(&path)).await?;
        if existed {
            self.store.flush().await?;
        }
        Ok(Some(existed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::LocalKek;
    use crate::secret::SecretString;
    use crate::store::StoreConfig;

    fn fields(value: &str) -> Fields {
        [("password".to_owned(), SecretString::from(value))]
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn writes_are_check_and_set_and_read_back_like_a_remote_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = LocalKek::generate_file(dir.path().join("kek")).expect("kek");
        let store = Store::open(&StoreConfig::new(dir.path().join("store")), &kek)
            .await
            .expect("open");
        let local = Local::new("local", store.clone());
        let p = SecretPath::parse("apps/db").expect("path");
        assert!(local.read(&p).await.expect("read").is_none());
        assert_eq!(
            local.write(&p, &fields("one"), Some(0)).await.expect("w"),
            1
        );
        let lost = local.write(&p, &fields("two"), Some(0)).await;
        assert!(lost.as_ref().is_err_and(Error::is_conflict), "{lost:?}");
        let kept = store::Write {
            fields: fields("two"),
            kind: Some("db.postgres".into()),
            expires_at: Some(2_000_000_000),
            cas: Some(1),
        };
        assert_eq!(local.put(&p, &kept).await.expect("put"), 2);
        let stored = store
            .get(&p, Selector::Current)
            .expect("get")
            .expect("stored");
        assert_eq!(
            (stored.kind.as_str(), stored.expires_at),
            ("db.postgres", Some(2_000_000_000))
        );
        let remote = local.read(&p).await.expect("read").expect("present");
        assert_eq!(remote.version, 2);
        let listed = local.list(&Prefix::all()).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            local.metadata(&p).await.expect("meta").map(|m| m.version),
            Some(2)
        );
        assert_eq!(local.delete(&p).await.expect("delete"), Some(true));
        assert_eq!(local.delete(&p).await.expect("delete"), Some(false));
        assert!(local.is_local());
    }
}
