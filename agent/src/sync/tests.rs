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
    /// Listed as deleted (a soft-deleted current version).
    tombstones: Mutex<Vec<SecretPath>>,
    /// When a path's current version was written (0 when not set).
    created: Mutex<HashMap<SecretPath, i64>>,
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
                updated_at: self
                    .created
                    .lock()
                    .expect("lock")
                    .get(path)
                    .copied()
                    .unwrap_or(0),
                ordered: true,
                kind: None,
                expires_at: None,
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
            .map(|(p, (v, _))| RemoteMeta::live(p.clone(), *v, 0))
            .chain(
                self.tombstones
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|p| prefix.matches(p))
                    .map(|p| RemoteMeta::tombstone(p.clone())),
            )
            .collect())
    }
    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, upstream::Error> {
        Ok(self
            .read(path)
            .await?
            .map(|s| RemoteMeta::live(s.path, s.version, 0)))
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

#[test]
fn the_deletion_guard_holds_more_than_the_share_and_every_last_one() {
    assert!(!suspicious(10, 0, 0.5), "nothing vanished");
    assert!(!suspicious(10, 5, 0.5), "half is allowed");
    assert!(suspicious(10, 6, 0.5), "more than half is not");
    assert!(suspicious(1, 1, 0.5), "the only secret vanishing is held");
    assert!(suspicious(3, 3, 1.0), "all of them, whatever the share");
    assert!(
        !suspicious(3, 2, 1.0),
        "a share of 1 holds only all of them"
    );
    assert!(suspicious(3, 1, 0.0), "a share of 0 holds any");
    assert!(!suspicious(0, 0, 0.0));
}

fn secret(name: &str) -> SecretPath {
    SecretPath::parse(&format!("apps/{name}")).expect("path")
}

fn seed(remote: &Memory, names: &[&str]) {
    let mut secrets = remote.secrets.lock().expect("lock");
    for name in names {
        secrets.insert(
            secret(name),
            (
                1,
                [("v".to_owned(), SecretString::from(*name))]
                    .into_iter()
                    .collect(),
            ),
        );
    }
}

fn cached(bed: &Bed) -> usize {
    bed.store.list(&Prefix::all()).expect("list").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_lacks_too_much_is_held_served_stale_and_applied_when_accepted() {
    let remote = Arc::new(Memory::default());
    seed(&remote, &["a", "b", "c", "d"]);
    let bed = bed(Some(remote.clone())).await;
    let mut events = bed.events.subscribe();
    assert_eq!(bed.sync.poll().await.expect("poll").fetched, 4);
    assert_eq!(cached(&bed), 4);
    while events.try_recv().is_ok() {}

    // The upstream comes back empty (a restarted dev server, a wrong mount).
    remote.secrets.lock().expect("lock").clear();
    let report = bed.sync.poll().await.expect("poll");
    assert_eq!((report.deleted, report.held), (0, 4), "{report:?}");
    assert_eq!(cached(&bed), 4, "nothing dropped");
    assert_eq!(bed.sync.held().len(), 4);
    assert!(
        matches!(bed.sync.freshness(), Some(Freshness::Stale { .. })),
        "served as stale while held: {:?}",
        bed.sync.freshness()
    );
    let mut held = Vec::new();
    while let Ok(e) = events.try_recv() {
        held.push((e.kind, e.path.to_string()));
    }
    held.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        held,
        ["a", "b", "c", "d"]
            .iter()
            .map(|n| (Kind::DeletionHeld, format!("apps/{n}")))
            .collect::<Vec<_>>(),
        "one event per held secret"
    );
    let again = bed.sync.poll().await.expect("poll");
    assert_eq!(again.held, 4);
    assert!(events.try_recv().is_err(), "no new event for the same hold");

    // The upstream lists them again: the hold ends by itself.
    seed(&remote, &["a", "b", "c", "d"]);
    assert_eq!(bed.sync.poll().await.expect("poll").held, 0);
    assert!(matches!(
        bed.sync.freshness(),
        Some(Freshness::Fresh { .. })
    ));

    // One of four deleted: a share under the limit, dropped at once.
    remote.secrets.lock().expect("lock").remove(&secret("d"));
    let one = bed.sync.poll().await.expect("poll");
    assert_eq!((one.deleted, one.held), (1, 0), "{one:?}");

    // Listed as deleted (tombstones) counts one by one: two tombstones and one
    // vanished of three is let through.
    {
        let mut secrets = remote.secrets.lock().expect("lock");
        secrets.clear();
        *remote.tombstones.lock().expect("lock") = vec![secret("a"), secret("b")];
    }
    let mixed = bed.sync.poll().await.expect("poll");
    assert_eq!((mixed.deleted, mixed.held), (3, 0), "{mixed:?}");
    assert_eq!(cached(&bed), 0);

    // An operator accepts a held mass deletion.
    remote.tombstones.lock().expect("lock").clear();
    seed(&remote, &["e", "f", "g"]);
    bed.sync.poll().await.expect("poll");
    remote.secrets.lock().expect("lock").clear();
    assert_eq!(bed.sync.poll().await.expect("poll").held, 3);
    let accepted = bed.sync.poll_accepting_deletions().await.expect("accept");
    assert_eq!((accepted.deleted, accepted.held), (3, 0), "{accepted:?}");
    assert_eq!(cached(&bed), 0);
    assert!(bed.sync.held().is_empty());
    assert!(matches!(
        bed.sync.freshness(),
        Some(Freshness::Fresh { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_reported_as_current_is_refused_but_a_recreated_secret_lands() {
    let remote = Arc::new(Memory::default());
    let bed = bed(Some(remote.clone())).await;
    bed.sync
        .commit(&path(), write("one", Some(0)))
        .await
        .expect("one");
    let two = written(
        bed.sync
            .commit(&path(), write("two", Some(1)))
            .await
            .expect("two"),
    );
    assert_eq!(two.version, 2);

    // The upstream reports version 1 as current again, written before version 2 (two
    // `AWSCURRENT` labels, a replica behind): refused, the acknowledged write stays.
    remote.secrets.lock().expect("lock").insert(
        path(),
        (
            1,
            [("password".to_owned(), SecretString::from("one"))]
                .into_iter()
                .collect(),
        ),
    );
    for _ in 0..2 {
        bed.sync.poll().await.expect("poll");
    }
    let held = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("held");
    assert_eq!((held.version, password(&held)), (2, "two"));
    assert_eq!(bed.sync.backwards_refused(), 2, "counted on every poll");

    // Deleted and created again upstream: version 1 again, but written after the
    // one held. That lands, replacing the old history.
    remote
        .created
        .lock()
        .expect("lock")
        .insert(path(), crate::clock::unix_now() + 60);
    remote.secrets.lock().expect("lock").insert(
        path(),
        (
            1,
            [("password".to_owned(), SecretString::from("reborn"))]
                .into_iter()
                .collect(),
        ),
    );
    bed.sync.poll().await.expect("poll");
    let reborn = bed
        .store
        .get(&path(), Selector::Current)
        .expect("get")
        .expect("reborn");
    assert_eq!((reborn.version, password(&reborn)), (1, "reborn"));
}
