//! Behaviour of the store against a real sled database in a temporary directory,
//! including tampering with the bytes on disk.

use std::path::{Path, PathBuf};

use super::*;
use crate::crypto::{KeyWrapper, LocalKek};
use crate::secret::SecretString;

const VALUE: &str = "hunter2-very-secret-value";

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    kek: LocalKek,
    kek_path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        Self::with_max_versions(DEFAULT_MAX_VERSIONS)
    }

    fn with_max_versions(max_versions: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek_path = dir.path().join("kek");
        let kek = LocalKek::generate_file(&kek_path).expect("kek");
        let mut cfg = StoreConfig::new(dir.path().join("db"));
        cfg.max_versions = max_versions;
        Self {
            _dir: dir,
            cfg,
            kek,
            kek_path,
        }
    }

    async fn open(&self) -> Store {
        Store::open(&self.cfg, &self.kek)
            .await
            .expect("store opens")
    }

    /// The layout of the store's keys (the store must have been dropped).
    async fn layout(&self) -> Layout {
        let db = crate::store::open_raw(&self.cfg.path);
        let wrapped = db
            .open_tree(META_TREE)
            .expect("meta")
            .get(META_DEK)
            .expect("get")
            .expect("dek");
        drop(db);
        let dek = self.kek.unwrap(&wrapped).await.expect("unwrap");
        Layout::new(&DataKey::from_secret(&dek).expect("dek"))
    }

    /// Runs `f` on the raw sled database; the store must have been dropped.
    fn with_raw_db(&self, f: impl FnOnce(&sled::Db)) {
        let db = crate::store::open_raw(&self.cfg.path);
        f(&db);
        db.flush().expect("raw flush");
    }
}

fn p(s: &str) -> SecretPath {
    SecretPath::parse(s).expect("valid path")
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), SecretString::from(*v)))
        .collect()
}

fn write(value: &str) -> Write {
    Write {
        fields: fields(&[("username", "app"), ("password", value)]),
        ..Write::default()
    }
}

fn password(secret: &Secret) -> &str {
    secret
        .fields
        .get("password")
        .expect("password field")
        .expose()
}

fn record_key(layout: &Layout, path: &str, version: u64) -> Vec<u8> {
    layout.tag(&p(path)).record_key(version).to_vec()
}

fn index_key(layout: &Layout, path: &str) -> Vec<u8> {
    layout.tag(&p(path)).key().to_vec()
}

#[tokio::test]
async fn put_then_get_round_trips() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("billing/db/main");
    let put = store
        .put(
            &path,
            Write {
                kind: Some("db.postgres".into()),
                expires_at: Some(4_000_000_000),
                ..write(VALUE)
            },
        )
        .expect("put");
    assert_eq!(put.version, 1);
    assert_eq!(put.labels, vec!["current"]);
    let got = store
        .get(&path, Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!(got, put);
    assert_eq!(password(&got), VALUE);
    assert_eq!(got.kind, "db.postgres");
    assert_eq!(got.expires_at, Some(4_000_000_000));
    assert!(got.created_at > 0 && got.created_at == got.updated_at);
    assert_eq!(
        store
            .get(&p("billing/db/other"), Selector::Current)
            .expect("get"),
        None
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn values_are_not_on_disk_in_clear() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write(VALUE)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    fx.with_raw_db(|db| {
        for name in db.tree_names() {
            for item in db.open_tree(name).expect("tree").iter() {
                let (_, v) = item.expect("item");
                assert!(!v.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));
            }
        }
    });
}

#[tokio::test]
async fn reopen_after_drop_keeps_data() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a/b"), write(VALUE)).expect("put");
    store.put(&p("a/b"), write("second")).expect("put");
    store.put(&p("c"), write("other")).expect("put");
    store.flush().await.expect("flush");
    drop(store);

    // The same key, loaded again from its file, opens the store.
    let kek = LocalKek::from_file(&fx.kek_path).expect("kek reloads");
    let store = Store::open(&fx.cfg, &kek).await.expect("reopens");
    assert_eq!(store.len(), 2);
    let current = store
        .get(&p("a/b"), Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!((current.version, password(&current)), (2, "second"));
    let previous = store
        .get(&p("a/b"), Selector::Version(1))
        .expect("get")
        .expect("exists");
    assert_eq!(password(&previous), VALUE);
    assert_eq!(previous.created_at, current.created_at);
    // Numbering continues after a reopen.
    assert_eq!(
        store.put(&p("a/b"), write("third")).expect("put").version,
        3
    );
}

#[tokio::test]
async fn previous_label_points_at_the_old_current() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("svc/token");
    let previous = Selector::Label("previous".into());
    store.put(&path, write("v1")).expect("put");
    assert_eq!(store.get(&path, previous.clone()).expect("get"), None);
    store.put(&path, write("v2")).expect("put");
    let prev = store
        .get(&path, previous.clone())
        .expect("get")
        .expect("exists");
    assert_eq!((prev.version, password(&prev)), (1, "v1"));
    assert_eq!(prev.labels, vec!["previous"]);
    store.put(&path, write("v3")).expect("put");
    let prev = store.get(&path, previous).expect("get").expect("exists");
    assert_eq!(prev.version, 2);
    let cur = store
        .get(&path, Selector::Label("current".into()))
        .expect("get")
        .expect("exists");
    assert_eq!(
        (cur.version, cur.labels.as_slice()),
        (3, &["current".to_owned()][..])
    );
    assert_eq!(
        store
            .get(&path, Selector::Label("pending".into()))
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn versions_are_pruned_but_labelled_versions_kept() {
    let fx = Fixture::with_max_versions(3);
    let store = fx.open().await;
    let path = p("rotating/key");
    store.put(&path, write("v1")).expect("put");
    store
        .set_label(&path, "pending", Some(1))
        .expect("label v1");
    for i in 2..=7 {
        store.put(&path, write(&format!("v{i}"))).expect("put");
    }
    let exists = |v| {
        store
            .get(&path, Selector::Version(v))
            .expect("get")
            .is_some()
    };
    // Newest three, plus v1 held by "pending"; v6 is also "previous".
    let kept: Vec<u64> = (1..=7).filter(|v| exists(*v)).collect();
    assert_eq!(kept, vec![1, 5, 6, 7]);
    let v1 = store
        .get(&path, Selector::Version(1))
        .expect("get")
        .expect("kept");
    assert_eq!(
        (v1.labels.as_slice(), password(&v1)),
        (&["pending".to_owned()][..], "v1")
    );
    drop(v1);

    // Clearing the label lets the next write prune it, and its record leaves the disk.
    store
        .set_label(&path, "pending", None)
        .expect("clear label");
    assert!(!exists(1));
    store.put(&path, write("v8")).expect("put");
    let kept: Vec<u64> = (1..=8).filter(|v| exists(*v)).collect();
    assert_eq!(kept, vec![6, 7, 8]);
    store.flush().await.expect("flush");
    drop(store);
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        assert_eq!(records.len(), 3);
        assert!(records
            .get(record_key(&layout, "rotating/key", 1))
            .expect("get")
            .is_none());
    });
}

#[tokio::test]
async fn max_versions_of_one_keeps_current_and_previous() {
    let fx = Fixture::with_max_versions(1);
    let store = fx.open().await;
    let path = p("one");
    for i in 1..=4 {
        store.put(&path, write(&format!("v{i}"))).expect("put");
    }
    assert!(store
        .get(&path, Selector::Version(2))
        .expect("get")
        .is_none());
    assert!(store
        .get(&path, Selector::Version(3))
        .expect("get")
        .is_some());
    assert_eq!(
        store
            .get(&path, Selector::Current)
            .expect("get")
            .expect("exists")
            .version,
        4
    );
}

#[tokio::test]
async fn cas_conflict_and_must_not_exist() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("cas/secret");
    let cas = |cas| Write {
        cas: Some(cas),
        ..write(VALUE)
    };
    match store.put(&path, cas(3)) {
        Err(Error::Conflict {
            expected: 3,
            current: 0,
            ..
        }) => {}
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(store.put(&path, cas(0)).expect("create").version, 1);
    let err = store.put(&path, cas(0)).expect_err("must not exist");
    assert!(matches!(
        err,
        Error::Conflict {
            expected: 0,
            current: 1,
            ..
        }
    ));
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("cas/secret"));
    assert_eq!(store.put(&path, cas(1)).expect("cas 1").version, 2);
    assert!(matches!(
        store.put(&path, cas(1)),
        Err(Error::Conflict { current: 2, .. })
    ));
    // A failed check-and-set wrote nothing.
    assert_eq!(
        store
            .get(&path, Selector::Current)
            .expect("get")
            .expect("exists")
            .version,
        2
    );
}

#[tokio::test]
async fn delete_removes_every_version() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("gone/soon");
    store.put(&path, write("v1")).expect("put");
    store.put(&path, write("v2")).expect("put");
    store.put(&p("stays"), write("x")).expect("put");
    assert_eq!(store.len(), 2);
    assert!(store.delete(&path).expect("delete"));
    assert!(!store.delete(&path).expect("second delete"));
    assert_eq!(store.len(), 1);
    assert_eq!(store.get(&path, Selector::Current).expect("get"), None);
    assert_eq!(store.get(&path, Selector::Version(1)).expect("get"), None);
    // Numbering restarts after a delete.
    assert_eq!(store.put(&path, write("again")).expect("put").version, 1);
    store.delete(&path).expect("delete");
    store.flush().await.expect("flush");
    drop(store);
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        assert_eq!(records.scan_prefix(b"gone/soon\0").count(), 0);
        assert_eq!(records.len(), 1);
    });
}

#[tokio::test]
async fn list_by_prefix_reads_only_the_index() {
    let fx = Fixture::new();
    let store = fx.open().await;
    for path in [
        "billing",
        "billing/db",
        "billing/api/key",
        "billing-old/db",
        "ops/x",
    ] {
        store
            .put(
                &p(path),
                Write {
                    kind: Some("api-key".into()),
                    ..write(VALUE)
                },
            )
            .expect("put");
    }
    store.put(&p("billing/db"), write("v2")).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    // Corrupt one record's value: listing must not notice.
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        records
            .insert(record_key(&layout, "billing/db", 2), b"garbage".to_vec())
            .expect("corrupt");
    });
    let store = fx.open().await;

    let names = |prefix: &str| -> Vec<String> {
        store
            .list(&Prefix::parse(prefix).expect("prefix"))
            .expect("list")
            .into_iter()
            .map(|e| e.path.to_string())
            .collect()
    };
    assert_eq!(
        names("billing"),
        vec!["billing", "billing/api/key", "billing/db"]
    );
    assert_eq!(names("billing/"), vec!["billing/api/key", "billing/db"]);
    assert_eq!(names("").len(), 5);
    assert!(names("nothing").is_empty());

    let entries = store
        .list(&Prefix::parse("billing/db").expect("prefix"))
        .expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].current_version, 2);
    assert_eq!(entries[0].kind, "generic");
    assert!(matches!(
        store.get(&p("billing/db"), Selector::Current),
        Err(Error::Integrity {
            version: Some(2),
            ..
        })
    ));
}

#[tokio::test]
async fn flipped_byte_in_a_record_fails_only_that_secret() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("victim"), write(VALUE)).expect("put");
    store.put(&p("bystander"), write("fine")).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        let key = record_key(&layout, "victim", 1);
        let mut value = records.get(&key).expect("get").expect("record").to_vec();
        let mid = value.len() / 2;
        value[mid] ^= 0x40;
        records.insert(key, value).expect("tamper");
    });
    let store = fx.open().await;
    let err = store
        .get(&p("victim"), Selector::Current)
        .expect_err("tampered record must not open");
    assert!(matches!(
        err,
        Error::Integrity {
            version: Some(1),
            ..
        }
    ));
    assert_eq!(err.code(), "integrity_error");
    assert_eq!(
        err.to_string(),
        "secret victim failed its integrity check (version 1)"
    );
    let ok = store
        .get(&p("bystander"), Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!(password(&ok), "fine");
}

#[tokio::test]
async fn truncated_record_fails_integrity() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("victim"), write(VALUE)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        let key = record_key(&layout, "victim", 1);
        let value = records.get(&key).expect("get").expect("record");
        records
            .insert(key, &value[..value.len() - 1])
            .expect("tamper");
    });
    let store = fx.open().await;
    assert!(matches!(
        store.get(&p("victim"), Selector::Current),
        Err(Error::Integrity {
            version: Some(1),
            ..
        })
    ));
}

#[tokio::test]
async fn swapped_records_fail_integrity() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write("value-a")).expect("put");
    store.put(&p("b"), write("value-b")).expect("put");
    store.put(&p("c"), write("value-c1")).expect("put");
    store.put(&p("c"), write("value-c2")).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let records = db.open_tree(RECORDS_TREE).expect("records");
        let swap = |x: Vec<u8>, y: Vec<u8>| {
            let vx = records.get(&x).expect("get").expect("x");
            let vy = records.get(&y).expect("get").expect("y");
            records.insert(x, vy).expect("insert");
            records.insert(y, vx).expect("insert");
        };
        // Between paths, and between versions of one path.
        swap(record_key(&layout, "a", 1), record_key(&layout, "b", 1));
        swap(record_key(&layout, "c", 1), record_key(&layout, "c", 2));
    });
    let store = fx.open().await;
    for (path, version) in [("a", 1), ("b", 1), ("c", 1), ("c", 2)] {
        match store.get(&p(path), Selector::Version(version)) {
            Err(Error::Integrity {
                path: got,
                version: Some(v),
            }) => {
                assert_eq!((got.as_str(), v), (path, version));
            }
            other => panic!("{path} v{version}: expected integrity error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn swapped_or_garbage_index_entries_fail_integrity() {
    let fx = Fixture::new();
    let store = fx.open().await;
    for path in ["a", "b", "c", "d"] {
        store.put(&p(path), write(VALUE)).expect("put");
    }
    store.flush().await.expect("flush");
    drop(store);
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        let index = db.open_tree(INDEX_TREE).expect("index");
        let (a, b, c) = (
            index_key(&layout, "a"),
            index_key(&layout, "b"),
            index_key(&layout, "c"),
        );
        let va = index.get(&a).expect("get").expect("a");
        let vb = index.get(&b).expect("get").expect("b");
        index.insert(&a, vb).expect("insert");
        index.insert(&b, va).expect("insert");
        index.insert(&c, &b"\x01short"[..]).expect("insert");
    });
    let store = fx.open().await;
    for path in ["a", "b", "c"] {
        assert!(
            matches!(
                store.get(&p(path), Selector::Current),
                Err(Error::Integrity { version: None, .. })
            ),
            "{path}"
        );
    }
    assert!(store
        .get(&p("d"), Selector::Current)
        .expect("get")
        .is_some());
    // Listing skips the damaged entries; a damaged secret can be deleted and rewritten.
    let listed = store.list(&Prefix::all()).expect("list");
    assert_eq!(listed.len(), 1);
    assert!(matches!(
        store.put(&p("c"), write("new")),
        Err(Error::Integrity { version: None, .. })
    ));
    assert!(store.delete(&p("c")).expect("delete"));
    assert_eq!(store.put(&p("c"), write("new")).expect("put").version, 1);
}

#[tokio::test]
async fn wrong_kek_on_reopen_is_key_unwrap() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write(VALUE)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let other = LocalKek::generate_file(fx.kek_path.with_extension("other")).expect("kek");
    let err = Store::open(&fx.cfg, &other).await.expect_err("wrong kek");
    match &err {
        Error::KeyUnwrap {
            kek_id, wrapped_by, ..
        } => {
            assert_eq!(kek_id, other.id());
            assert_eq!(wrapped_by, fx.kek.id());
        }
        other => panic!("expected KeyUnwrap, got {other:?}"),
    }
    assert_eq!(err.code(), "key_unwrap_failed");
    let msg = err.to_string();
    assert!(
        msg.contains(other.id()) && msg.contains(fx.kek.id()),
        "{msg}"
    );
    // The right key still works afterwards.
    drop(err);
    let store = fx.open().await;
    assert!(store
        .get(&p("a"), Selector::Current)
        .expect("get")
        .is_some());
}

#[tokio::test]
async fn rewrap_moves_the_store_to_a_new_kek() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write(VALUE)).expect("put");
    let new_kek = LocalKek::generate_file(fx.kek_path.with_extension("new")).expect("kek");
    store.rewrap_data_key(&new_kek).await.expect("rewrap");
    // Values keep working in the running store without re-encryption.
    assert!(store
        .get(&p("a"), Selector::Current)
        .expect("get")
        .is_some());
    drop(store);
    assert!(matches!(
        Store::open(&fx.cfg, &fx.kek).await,
        Err(Error::KeyUnwrap { .. })
    ));
    let store = Store::open(&fx.cfg, &new_kek)
        .await
        .expect("opens with the new kek");
    let got = store
        .get(&p("a"), Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!(password(&got), VALUE);
}

#[tokio::test]
async fn set_label_moves_clears_and_validates() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("rot");
    store.put(&path, write("v1")).expect("put");
    store.put(&path, write("v2")).expect("put");
    store.set_label(&path, "pending", Some(2)).expect("label");
    let v2 = store
        .get(&path, Selector::Label("pending".into()))
        .expect("get")
        .expect("exists");
    assert_eq!(v2.labels, vec!["current", "pending"]);
    // Rollback: current moves back to v1, and list follows it.
    store
        .set_label(&path, "current", Some(1))
        .expect("rollback");
    let cur = store
        .get(&path, Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!((cur.version, password(&cur)), (1, "v1"));
    assert_eq!(
        store.list(&Prefix::all()).expect("list")[0].current_version,
        1
    );
    store.set_label(&path, "pending", None).expect("clear");
    assert_eq!(
        store
            .get(&path, Selector::Label("pending".into()))
            .expect("get"),
        None
    );

    assert_eq!(
        store
            .set_label(&path, "current", None)
            .expect_err("current stays")
            .code(),
        "invalid"
    );
    assert_eq!(
        store
            .set_label(&path, "Bad Label", Some(1))
            .expect_err("bad")
            .code(),
        "invalid"
    );
    assert!(matches!(
        store.set_label(&path, "pending", Some(9)),
        Err(Error::NotFound {
            version: Some(9),
            ..
        })
    ));
    assert!(matches!(
        store.set_label(&p("missing"), "pending", Some(1)),
        Err(Error::NotFound { version: None, .. })
    ));
    // The next put makes the rolled-back current the previous one.
    store.put(&path, write("v3")).expect("put");
    let prev = store
        .get(&path, Selector::Label("previous".into()))
        .expect("get")
        .expect("exists");
    assert_eq!(prev.version, 1);
}

#[tokio::test]
async fn invalid_writes_are_refused() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("x");
    let empty = store.put(&path, Write::default()).expect_err("no fields");
    assert_eq!(empty.code(), "invalid");
    for kind in ["", "Upper", "has space", &"k".repeat(65), "caf\u{e9}"] {
        let err = store
            .put(
                &path,
                Write {
                    kind: Some(kind.to_owned()),
                    ..write(VALUE)
                },
            )
            .expect_err("bad kind");
        assert_eq!(err.code(), "invalid", "{kind:?}");
    }
    let big = Write {
        fields: fields(&[("blob", &"x".repeat(MAX_RECORD_BYTES + 1))]),
        ..Write::default()
    };
    assert_eq!(
        store.put(&path, big).expect_err("too big").code(),
        "invalid"
    );
    let unnamed = Write {
        fields: fields(&[("", VALUE)]),
        ..Write::default()
    };
    assert_eq!(
        store.put(&path, unnamed).expect_err("empty name").code(),
        "invalid"
    );
    assert_eq!(store.len(), 0);
    assert!(store.is_empty());

    let mut cfg = fx.cfg.clone();
    cfg.max_versions = 0;
    drop(store);
    assert_eq!(
        Store::open(&cfg, &fx.kek)
            .await
            .expect_err("zero versions")
            .code(),
        "invalid"
    );
}

#[tokio::test]
async fn debug_and_errors_never_contain_values() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("leak/check");
    let secret = store.put(&path, write(VALUE)).expect("put");
    let w = write(VALUE);
    for text in [
        format!("{secret:?}"),
        format!("{w:?}"),
        format!("{store:?}"),
    ] {
        assert!(!text.contains(VALUE), "{text}");
    }
    assert!(format!("{secret:?}").contains("password"));

    let crypto_err = crypto::Error::Integrity;
    let errors = [
        Error::Integrity {
            path: path.clone(),
            version: Some(1),
        },
        Error::Integrity {
            path: path.clone(),
            version: None,
        },
        Error::Conflict {
            path: path.clone(),
            expected: 1,
            current: 2,
        },
        store
            .put(
                &path,
                Write {
                    kind: Some("BAD".into()),
                    ..write(VALUE)
                },
            )
            .expect_err("bad kind"),
        store
            .put(
                &path,
                Write {
                    cas: Some(7),
                    ..write(VALUE)
                },
            )
            .expect_err("cas"),
        Error::NotFound {
            path: path.clone(),
            version: Some(3),
        },
        Error::KeyUnwrap {
            kek_id: "local:1".into(),
            wrapped_by: "local:2".into(),
            source: crypto::Error::Unwrap {
                kek_id: "local:1".into(),
            },
        },
        Error::MissingDataKey {
            store: fx.cfg.path.clone(),
        },
        Error::Crypto(crypto_err),
    ];
    for err in &errors {
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains(VALUE), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[tokio::test]
async fn store_dir_is_private_and_reopen_counts_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let store = fx.open().await;
    let mode = std::fs::metadata(&fx.cfg.path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    for i in 0..5 {
        store.put(&p(&format!("n/{i}")), write(VALUE)).expect("put");
    }
    store.put(&p("n/0"), write("again")).expect("put");
    assert_eq!(store.len(), 5);
    store.delete(&p("n/4")).expect("delete");
    store.flush().await.expect("flush");
    drop(store);
    let store = fx.open().await;
    assert_eq!(store.len(), 4);
    assert_eq!(store.dir(), Path::new(&fx.cfg.path));
}

#[tokio::test]
async fn store_without_its_data_key_refuses_to_open() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write(VALUE)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    fx.with_raw_db(|db| {
        db.drop_tree(META_TREE).expect("drop meta");
    });
    let err = Store::open(&fx.cfg, &fx.kek).await.expect_err("no key");
    assert!(matches!(err, Error::MissingDataKey { .. }));
}

#[tokio::test]
async fn concurrent_puts_keep_versions_dense() {
    let fx = Fixture::with_max_versions(100);
    let store = fx.open().await;
    let path = p("hot");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    store.put(&path, write(&format!("t{t}-{i}"))).expect("put");
                    store
                        .get(&path, Selector::Current)
                        .expect("get")
                        .expect("exists");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let cur = store
        .get(&path, Selector::Current)
        .expect("get")
        .expect("exists");
    assert_eq!(cur.version, 40);
    assert!((1..=40).all(|v| store
        .get(&path, Selector::Version(v))
        .expect("get")
        .is_some()));
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn put_at_keeps_the_given_version_and_refuses_older_ones() {
    let fixture = Fixture::new();
    let store = fixture.open().await;
    let p = p("synced/db");
    let stored = store.put_at(&p, 7, write("seven")).expect("put_at");
    assert_eq!(stored.version, 7);
    let again = store.put_at(&p, 7, write("seven again"));
    assert!(
        matches!(again, Err(Error::Conflict { current: 7, .. })),
        "{again:?}"
    );
    let older = store.put_at(&p, 3, write("three"));
    assert!(matches!(older, Err(Error::Conflict { .. })), "{older:?}");
    let next = store.put(&p, write("local")).expect("put");
    assert_eq!(next.version, 8);
    let got = store
        .get(&p, Selector::Label("previous".into()))
        .expect("get")
        .expect("some");
    assert_eq!(got.version, 7);
}

/// Replaces sled's own files (not the state file) in `to` with those of `from`.
fn copy_sled_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(to).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() && entry.file_name() != STATE_FILE {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == STATE_FILE || entry.file_type().expect("type").is_dir() {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name)).expect("copy");
    }
}

#[tokio::test]
async fn a_record_copied_back_after_delete_and_recreate_does_not_open() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("apps/key");
    store.put(&path, write("revoked-old-key")).expect("put");
    let tag = store.inner.layout.tag(&path);
    let old = store
        .inner
        .records
        .get(tag.record_key(1))
        .expect("get")
        .expect("sealed v1");
    assert!(store.delete(&path).expect("delete"));
    assert_eq!(store.put(&path, write("new-key")).expect("put").version, 1);
    store.flush().await.expect("flush");
    drop(store);
    // The old sealed v1 is put back in the new v1's place, the agent stopped.
    fx.with_raw_db(|db| {
        db.open_tree(RECORDS_TREE)
            .expect("records")
            .insert(tag.record_key(1), old)
            .expect("replay");
    });
    let store = fx.open().await;
    assert!(
        matches!(
            store.get(&path, Selector::Current),
            Err(Error::Integrity {
                version: Some(1),
                ..
            })
        ),
        "the replayed record must not open"
    );
}

#[tokio::test]
async fn writes_lost_by_the_database_are_reported_by_name_and_kept_until_acknowledged() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("kept"), write("one")).expect("put");
    store.put(&p("gone/a"), write("two")).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let old = fx.cfg.path.with_extension("old");
    copy_sled_files(&fx.cfg.path, &old);

    let store = fx.open().await;
    store.put(&p("gone/a"), write("three")).expect("put");
    store.put(&p("gone/b"), write("four")).expect("put");
    assert!(store.delete(&p("kept")).expect("delete"));
    store.flush().await.expect("flush");
    assert!(!store.is_damaged());
    drop(store);
    // The database goes back to before the last three changes; the state file stays.
    copy_sled_files(&old, &fx.cfg.path);

    let store = fx.open().await;
    assert!(store.is_damaged());
    let problems = store.problems();
    let [Problem::LostWrites {
        expected_generation: 5,
        found_generation: 2,
        missing,
        unnamed: 0,
    }] = problems.as_slice()
    else {
        panic!("expected three lost writes, got {problems:?}");
    };
    let named: Vec<String> = missing
        .iter()
        .map(|m| format!("{} {:?}", m.path, m.op))
        .collect();
    assert_eq!(
        named,
        [
            "gone/a Write { version: 2 }",
            "gone/b Write { version: 1 }",
            "kept Delete"
        ]
    );
    let shown = problems[0].to_string();
    assert!(shown.contains("3 acknowledged change(s)"), "{shown}");
    assert!(
        shown.contains("gone/a v2") && shown.contains("delete of kept"),
        "{shown}"
    );
    // What the database still holds is served.
    let kept = store
        .get(&p("kept"), Selector::Current)
        .expect("get")
        .expect("kept");
    assert_eq!(password(&kept), "one");
    // The report survives a restart, even with new writes in between...
    store.put(&p("gone/b"), write("rewritten")).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let store = fx.open().await;
    assert_eq!(store.problems(), problems, "kept across a restart");
    // ...until acknowledged.
    assert_eq!(store.acknowledge_problems().await.expect("ack"), 1);
    assert!(!store.is_damaged());
    drop(store);
    let store = fx.open().await;
    assert!(store.problems().is_empty(), "{:?}", store.problems());
}

#[tokio::test]
async fn a_missing_or_tampered_state_file_and_a_wrong_count_are_reported() {
    let fx = Fixture::new();
    let store = fx.open().await;
    store.put(&p("a"), write(VALUE)).expect("put");
    store.put(&p("b"), write(VALUE)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let state = fx.cfg.path.join(STATE_FILE);
    std::fs::remove_file(&state).expect("remove");
    let store = fx.open().await;
    assert_eq!(
        store.problems(),
        [Problem::StateFile {
            reason: StateFileReason::Missing
        }]
    );
    assert_eq!(store.acknowledge_problems().await.expect("ack"), 1);
    drop(store);

    let mut raw = std::fs::read(&state).expect("read");
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(&state, raw).expect("tamper");
    let layout = fx.layout().await;
    fx.with_raw_db(|db| {
        db.open_tree(INDEX_TREE)
            .expect("index")
            .remove(index_key(&layout, "b"))
            .expect("remove");
    });
    let store = fx.open().await;
    assert_eq!(
        store.problems(),
        [
            Problem::StateFile {
                reason: StateFileReason::Unreadable
            },
            Problem::CountMismatch {
                expected: 2,
                found: 1
            },
        ]
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn no_path_and_no_value_is_in_clear_in_the_store_folder() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("billing/postgres-main");
    store.put(&path, write(VALUE)).expect("put");
    store.set_label(&path, "pending", Some(1)).expect("label");
    store
        .journal_put(&path, b"journal-blob")
        .await
        .expect("journal");
    store.flush().await.expect("flush");
    drop(store);
    let _ = fx.open().await;
    let mut files = 0;
    for entry in std::fs::read_dir(&fx.cfg.path).expect("read_dir") {
        let entry = entry.expect("entry");
        if !entry.file_type().expect("type").is_file() {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(entry.path()).expect("read");
        for needle in ["postgres-main", VALUE, "pending"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in clear in {}",
                entry.path().display()
            );
        }
    }
    assert!(files >= 3, "db, conf, state file");
}

#[tokio::test]
async fn a_store_reopens_at_once_after_it_is_dropped() {
    // sled's background threads hold its file lock for a moment after the last
    // handle drops; an open right after must wait for them, not fail.
    let fx = Fixture::new();
    for round in 0..20 {
        let store = fx.open().await;
        store
            .put(&p(&format!("s{round}")), write(VALUE))
            .expect("put");
        drop(store);
    }
    assert_eq!(
        fx.open().await.list(&Prefix::all()).expect("list").len(),
        20
    );
}

#[tokio::test]
async fn a_store_held_open_elsewhere_is_reported_in_use() {
    let fx = Fixture::new();
    let _held = fx.open().await;
    let err = Store::open(&fx.cfg, &fx.kek)
        .await
        .expect_err("second open");
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("in use by another process"), "{message}");
    assert!(
        message.contains(&fx.cfg.path.display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn an_upstream_deletion_hides_the_current_version_and_keeps_older_ones() {
    let fx = Fixture::new();
    let store = fx.open().await;
    let path = p("apps/db");
    store.put(&path, write("one")).expect("v1");
    store.put(&path, write("two")).expect("v2");

    assert!(store.mark_deleted(&path, 2, false).expect("mark"));
    assert!(
        !store.mark_deleted(&path, 2, false).expect("again"),
        "no change"
    );
    assert!(store.get(&path, Selector::Current).expect("get").is_none());
    assert!(store
        .get(&path, Selector::Version(2))
        .expect("get")
        .is_none());
    let older = store
        .get(&path, Selector::Version(1))
        .expect("get")
        .expect("v1");
    assert_eq!(password(&older), "one");
    assert_eq!(
        store.deletion(&path).expect("deletion"),
        Some(Deletion {
            version: 2,
            destroyed: false
        })
    );
    assert_eq!(
        store.list(&Prefix::all()).expect("list")[0]
            .deleted
            .map(|d| d.version),
        Some(2)
    );

    // Undeleted: current again.
    assert!(store.clear_deleted(&path).expect("clear"));
    assert_eq!(
        password(
            &store
                .get(&path, Selector::Current)
                .expect("get")
                .expect("v2")
        ),
        "two"
    );

    // Destroyed: its record goes, the older version stays, and it survives a reopen.
    assert!(store.mark_deleted(&path, 2, true).expect("destroy"));
    assert!(store
        .get(&path, Selector::Version(2))
        .expect("get")
        .is_none());
    drop(store);
    let store = fx.open().await;
    assert!(store.get(&path, Selector::Current).expect("get").is_none());
    assert_eq!(
        password(
            &store
                .get(&path, Selector::Version(1))
                .expect("get")
                .expect("v1")
        ),
        "one"
    );
    // A new version clears the mark.
    let v3 = store.put_at(&path, 3, write("three")).expect("v3");
    assert_eq!(v3.version, 3);
    assert_eq!(store.deletion(&path).expect("deletion"), None);
    assert_eq!(
        password(
            &store
                .get(&path, Selector::Current)
                .expect("get")
                .expect("v3")
        ),
        "three"
    );

    // Destroying the only version left removes the secret.
    let only = p("apps/only");
    store.put(&only, write("x")).expect("only");
    assert!(store.mark_deleted(&only, 1, true).expect("destroy only"));
    assert!(store.deletion(&only).expect("deletion").is_none());
    assert_eq!(
        store
            .list(&Prefix::parse("apps/only").expect("prefix"))
            .expect("list")
            .len(),
        0
    );
}
