//! The order of the one write path: upstream check-and-set, store write, flush, cache
//! invalidation, event. Checked with the local backend (the store as its own upstream)
//! and with an in-memory remote upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::*;
use crate::cache::Cached;
use crate::crypto::LocalKek;
use crate::secret::{Fields, SecretBytes, SecretString};
use crate::store::StoreConfig;
use crate::upstream::{RemoteMeta, Upstream};

struct Bed {
    sync: Arc<Syncer>,
    store: Store,
    cache: Arc<HotCache>,
    events: Events,
    _dir: tempfile::TempDir,
}

async fn bed(remote: Option<Arc<Memory>>) -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = LocalKek::generate_file(dir.path().join("kek")).expect("kek");
    let store = Store::open(&StoreConfig::new(dir.path().join("store")), &kek)
        .await
        .expect("open");
    let cache = Arc::new(HotCache::new(64));
    let events = Events::new();
    let config = SyncConfig::for_test();
    let sync = match remote {
        Some(up) => Syncer::new(
            up,
            store.clone(),
            cache.clone(),
            events.clone(),
            config,
            dir.path().join("sync.json"),
        ),
        None => Syncer::over_store(
            "local",
            store.clone(),
            cache.clone(),
            events.clone(),
            config,
        ),
    };
    Bed {
        sync,
        store,
        cache,
        events,
        _dir: dir,
    }
}

fn path() -> SecretPath {
    SecretPath::parse("apps/db").expect("path")
}

fn write(value: &str, cas: Option<u64>) -> Change {
    Change::Write(store::Write {
        fields: [("password".to_owned(), SecretString::from(value))]
            .into_iter()
            .collect::<Fields>(),
        kind: Some("db.postgres".into()),
        expires_at: None,
        cas,
    })
}

fn password(secret: &Secret) -> &str {
    secret
        .fields
        .get("password")
        .map(SecretString::expose)
        .unwrap_or_default()
}

/// Puts a rendered read of `version` in the hot cache, as a read would.
fn cache_read(bed: &Bed, version: u64, seen: u64) {
    bed.cache.insert_if_unchanged(
        path(),
        Arc::new(Cached::new(version, SecretBytes::new(b"{}".to_vec()))),
        seen,
    );
}

/// What a subscriber finds when it reads on an event: the event, the store's
/// current version of the path, and whether the store had flushed.
type Seen = (Event, Option<u64>, bool);

/// A subscriber on another worker that, on each event, reads the store at once and
/// reports what it found. (Were the event published before the flush or the store
/// write, it would see the old state: the flush takes milliseconds.)
fn reader(bed: &Bed) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let mut rx = bed.events.subscribe();
    let store = bed.store.clone();
    let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let flushed = store.is_flushed();
                    let current = store
                        .get(&event.path, Selector::Current)
                        .expect("get")
                        .map(|s| s.version);
                    if tx.send((event, current, flushed)).is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    seen
}

/// What the reader saw on the next event: kind, event version, current version in
/// the store, whether flushed.
async fn next(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
) -> (Kind, Option<u64>, Option<u64>, bool) {
    let (e, current, flushed) =
        tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
            .await
            .expect("an event in time")
            .expect("reader running");
    (e.kind, e.version, current, flushed)
}

fn written(c: Committed) -> Secret {
    match c {
        Committed::Written(s) => s,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_durable_uncached_and_published_after_it_is_readable() {
    let bed = bed(None).await;
    let mut seen = reader(&bed);
    let first = written(
        bed.sync
            .commit(&path(), write("one", Some(0)))
            .await
            .expect("w1"),
    );
    assert_eq!(first.version, 1);
    assert!(bed.store.is_flushed(), "acknowledged only once durable");
    assert_eq!(
        next(&mut seen).await,
        (Kind::Updated, Some(1), Some(1), true)
    );
    // An app read v1 and cached it; a read that began before the next write
    // (it saw the old generation) finishes after it.
    cache_read(&bed, 1, bed.cache.generation());
    let before = bed.cache.generation();

    let second = written(
        bed.sync
            .commit(&path(), write("two", Some(1)))
            .await
            .expect("w2"),
    );
    assert_eq!(second.version, 2);
    assert_eq!(second.kind, "db.postgres");
    assert!(bed.store.is_flushed(), "acknowledged only once durable");
    assert!(
        bed.cache.get(&path()).is_none(),
        "the cache must not serve v1 after v2 was acknowledged"
    );
    cache_read(&bed, 1, before);
    assert!(
        bed.cache.get(&path()).is_none(),
        "a read that began before the write cannot put v1 back"
    );
    let stored = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("stored");
    assert_eq!((stored.version, password(&stored)), (2, "two"));
    assert_eq!(
        next(&mut seen).await,
        (Kind::Updated, Some(2), Some(2), true),
        "the event after its version is durable and readable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_check_and_set_changes_nothing_and_publishes_nothing() {
    let bed = bed(None).await;
    written(
        bed.sync
            .commit(&path(), write("one", Some(0)))
            .await
            .expect("w1"),
    );
    let mut rx = bed.events.subscribe();
    cache_read(&bed, 1, bed.cache.generation());
    let lost = bed.sync.commit(&path(), write("two", Some(0))).await;
    assert!(
        matches!(&lost, Err(Error::Upstream(e)) if e.is_conflict()),
        "{lost:?}"
    );
    let stored = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("stored");
    assert_eq!((stored.version, password(&stored)), (1, "one"));
    assert_eq!(bed.cache.get(&path()).map(|c| c.version), Some(1));
    assert!(rx.try_recv().is_err(), "no event for a lost write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_durable_uncached_and_published_once_and_a_missing_one_says_so() {
    let bed = bed(None).await;
    written(
        bed.sync
            .commit(&path(), write("one", None))
            .await
            .expect("w"),
    );
    cache_read(&bed, 1, bed.cache.generation());
    let mut seen = reader(&bed);
    let gone = bed
        .sync
        .commit(&path(), Change::Delete)
        .await
        .expect("delete");
    assert!(
        matches!(
            gone,
            Committed::Deleted {
                existed: Some(true)
            }
        ),
        "{gone:?}"
    );
    assert!(bed.store.is_flushed());
    assert!(bed.cache.get(&path()).is_none());
    assert_eq!(next(&mut seen).await, (Kind::Deleted, None, None, true));
    let again = bed
        .sync
        .commit(&path(), Change::Delete)
        .await
        .expect("delete");
    assert!(
        matches!(
            again,
            Committed::Deleted {
                existed: Some(false)
            }
        ),
        "{again:?}"
    );
    assert!(
        seen.try_recv().is_err(),
        "no event for a secret that was not there"
    );
}

#[tokio::test]
async fn the_local_upstream_is_not_polled_and_never_stale() {
    let bed = bed(None).await;
    assert!(bed.sync.is_local());
    assert!(bed.sync.freshness().is_none());
    let (_stop, rx) = watch::channel(false);
    assert!(bed.sync.spawn(rx).is_none());
    assert!(!bed.sync.fetch(&path()).await.expect("miss"));
}

/// An in-memory remote upstream; `down` makes every call fail as unreachable.
#[derive(Default)]
struct Memory {
    secrets: Mutex<HashMap<SecretPath, (u64, Fields)>>,
    down: AtomicBool,
}

impl Memory {
    fn check(&self) -> Result<(), upstream::Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(upstream::Error::Unavailable {
                upstream: "memory".into(),
                address: "memory".into(),
                source: Box::new(upstream::Reason("down".into())),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Upstream for Memory {
    fn name(&self) -> &str {
        "memory"
    }
    async fn read(&self, path: &SecretPath) -> Result<Option<RemoteSecret>, upstream::Error> {
        self.check()?;
        Ok(self
            .secrets
            .lock()
            .expect("lock")
            .get(path)
            .map(|(v, f)| RemoteSecret {
                path: path.clone(),
                version: *v,
                fields: f.clone(),
                updated_at: 0,
            }))
    }
    async fn list(&self, prefix: &Prefix) -> Result<Vec<RemoteMeta>, upstream::Error> {
        self.check()?;
        Ok(self
            .secrets
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| prefix.matches(p))
            .map(|(p, (v, _))| RemoteMeta {
                path: p.clone(),
                version: *v,
                updated_at: 0,
            })
            .collect())
    }
    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, upstream::Error> {
        Ok(self.read(path).await?.map(|s| RemoteMeta {
            path: s.path,
            version: s.version,
            updated_at: 0,
        }))
    }
    async fn write(
        &self,
        path: &SecretPath,
        fields: &Fields,
        cas: Option<u64>,
    ) -> Result<u64, upstream::Error> {
        self.check()?;
        let mut secrets = self.secrets.lock().expect("lock");
        let current = secrets.get(path).map_or(0, |(v, _)| *v);
        if cas.is_some_and(|c| c != current) {
            return Err(upstream::Error::Conflict {
                path: path.clone(),
                expected: cas.unwrap_or_default(),
                current: Some(current),
            });
        }
        secrets.insert(path.clone(), (current + 1, fields.clone()));
        Ok(current + 1)
    }
    async fn delete(&self, path: &SecretPath) -> Result<Option<bool>, upstream::Error> {
        self.check()?;
        self.secrets.lock().expect("lock").remove(path);
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_remote_upstream_the_upstream_goes_first_and_a_failure_stores_nothing() {
    let remote = Arc::new(Memory::default());
    let bed = bed(Some(remote.clone())).await;
    let mut seen = reader(&bed);
    let w = written(
        bed.sync
            .commit(&path(), write("one", Some(0)))
            .await
            .expect("w"),
    );
    assert_eq!((w.version, w.kind.as_str()), (1, "db.postgres"));
    assert!(bed.store.is_flushed());
    assert_eq!(
        next(&mut seen).await,
        (Kind::Updated, Some(1), Some(1), true)
    );
    assert_eq!(
        remote
            .secrets
            .lock()
            .expect("lock")
            .get(&path())
            .map(|e| e.0),
        Some(1)
    );

    remote.down.store(true, Ordering::SeqCst);
    cache_read(&bed, 1, bed.cache.generation());
    let failed = bed.sync.commit(&path(), write("two", Some(1))).await;
    assert!(
        matches!(&failed, Err(Error::Upstream(e)) if e.is_transient()),
        "{failed:?}"
    );
    let stored = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("stored");
    assert_eq!(stored.version, 1, "nothing stored when the upstream failed");
    assert_eq!(bed.cache.get(&path()).map(|c| c.version), Some(1));

    // A change made upstream by someone else lands by a poll in the same order.
    remote.down.store(false, Ordering::SeqCst);
    remote
        .write(
            &path(),
            &[("password".to_owned(), SecretString::from("three"))]
                .into_iter()
                .collect(),
            Some(1),
        )
        .await
        .expect("remote write");
    let report = bed.sync.poll().await.expect("poll");
    assert_eq!(report.fetched, 1);
    assert!(bed.store.is_flushed());
    assert!(bed.cache.get(&path()).is_none());
    let pulled = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("stored");
    assert_eq!(
        (pulled.version, password(&pulled), pulled.kind.as_str()),
        (2, "three", "db.postgres")
    );
    assert_eq!(
        next(&mut seen).await,
        (Kind::Updated, Some(2), Some(2), true)
    );
    let gone = bed
        .sync
        .commit(&path(), Change::Delete)
        .await
        .expect("delete");
    assert!(
        matches!(
            gone,
            Committed::Deleted {
                existed: Some(true)
            }
        ),
        "{gone:?}"
    );
    assert!(remote.secrets.lock().expect("lock").is_empty());
    assert_eq!(next(&mut seen).await, (Kind::Deleted, None, None, true));
}
