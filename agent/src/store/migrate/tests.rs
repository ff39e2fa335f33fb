//! A store written in format 1, byte for byte as every release before format 2 wrote
//! it, opens, keeps every secret, version, label and journal entry, and holds no path
//! in clear afterwards.

use super::*;
use crate::crypto::{KeyWrapper, LocalKek};
use crate::secret::{Fields, SecretString};
use crate::store::{
    Selector, Store, StoreConfig, INDEX_TREE, JOURNAL_TREE, META_TREE, RECORDS_TREE,
};

/// Writes what format 1 wrote for one secret: the index entry under the path, one
/// record per version under path, 0x00, version.
fn put_v1(
    db: &sled::Db,
    key: &DataKey,
    path: &str,
    versions: &[(u64, &str)],
    labels: &[(&str, u64)],
) {
    let index = db.open_tree(INDEX_TREE).expect("index");
    let records = db.open_tree(RECORDS_TREE).expect("records");
    let metas: Vec<serde_json::Value> = versions
        .iter()
        .map(|(v, _)| serde_json::json!({"version": v, "kind": "generic", "updated_at": 20, "expires_at": null}))
        .collect();
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(l, v)| ((*l).to_owned(), (*v).into()))
        .collect();
    let entry = serde_json::json!({
        "versions": metas,
        "labels": labels,
        "next_version": versions.last().map_or(1, |(v, _)| v + 1),
        "created_at": 10,
    });
    let entry = serde_json::to_vec(&entry).expect("json");
    let index_aad = [V1_INDEX_AAD, path.as_bytes()].concat();
    index
        .insert(path.as_bytes(), key.seal(&index_aad, &entry).expect("seal"))
        .expect("insert");
    for (version, value) in versions {
        let mut fields = Fields::new();
        fields.insert("password", SecretString::from(*value));
        let plain =
            crate::store::record::encode_record("generic", 10, 20, None, &fields).expect("encode");
        let rkey = [path.as_bytes(), &[0], &version.to_be_bytes()].concat();
        let aad = [V1_RECORD_AAD, &rkey[..]].concat();
        records
            .insert(rkey, key.seal(&aad, &plain).expect("seal"))
            .expect("insert");
    }
}

async fn format_1_store(dir: &Path, kek: &LocalKek) -> DataKey {
    let db = crate::store::open_raw(dir);
    let key = DataKey::generate();
    let meta = db.open_tree(META_TREE).expect("meta");
    meta.insert(b"dek", kek.wrap(&key.to_wrappable()).await.expect("wrap"))
        .expect("dek");
    meta.insert(b"kek_id", kek.id().as_bytes()).expect("id");
    put_v1(
        &db,
        &key,
        "apps/web/db",
        &[(1, "old-pw-1"), (2, "current-pw-2")],
        &[("current", 2), ("previous", 1)],
    );
    put_v1(
        &db,
        &key,
        "apps/web/api",
        &[(1, "api-token-1")],
        &[("current", 1)],
    );
    // A damaged entry: its bytes must be kept, not dropped, and reported.
    db.open_tree(INDEX_TREE)
        .expect("index")
        .insert(b"apps/broken", b"\x01not-sealed".to_vec())
        .expect("insert");
    let journal = db.open_tree(JOURNAL_TREE).expect("journal");
    let aad = [V1_JOURNAL_AAD, b"apps/web/db".as_slice()].concat();
    journal
        .insert(
            b"apps/web/db",
            key.seal(&aad, b"step=created").expect("seal"),
        )
        .expect("journal");
    db.flush().expect("flush");
    key
}

fn path(p: &str) -> SecretPath {
    SecretPath::parse(p).expect("path")
}

#[tokio::test]
async fn a_format_1_store_opens_with_everything_and_no_path_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = LocalKek::generate_file(dir.path().join("kek")).expect("kek");
    let cfg = StoreConfig::new(dir.path().join("store"));
    format_1_store(&cfg.path, &kek).await;

    for round in 0..2 {
        let store = Store::open(&cfg, &kek).await.expect("opens");
        let db = store
            .get(&path("apps/web/db"), Selector::Current)
            .expect("get")
            .expect("present");
        let (version, current, previous) =
            [(2, "current-pw-2", "old-pw-1"), (3, "pw-3", "current-pw-2")][round];
        assert_eq!(db.version, version, "round {round}");
        assert_eq!(db.fields.get("password").map(|v| v.expose()), Some(current));
        assert_eq!(db.labels, vec!["current".to_owned()]);
        let old = store
            .get(&path("apps/web/db"), Selector::Label("previous".into()))
            .expect("get")
            .expect("present");
        assert_eq!(
            old.fields.get("password").map(|v| v.expose()),
            Some(previous)
        );
        let first = store
            .get(&path("apps/web/db"), Selector::Version(1))
            .expect("get")
            .expect("v1");
        assert_eq!(
            first.fields.get("password").map(|v| v.expose()),
            Some("old-pw-1")
        );
        let api = store
            .get(&path("apps/web/api"), Selector::Current)
            .expect("get")
            .expect("present");
        assert_eq!(
            api.fields.get("password").map(|v| v.expose()),
            Some("api-token-1")
        );
        let listed: Vec<String> = store
            .list(&crate::path::Prefix::all())
            .expect("list")
            .into_iter()
            .map(|e| e.path.to_string())
            .collect();
        assert_eq!(listed, ["apps/web/api", "apps/web/db"]);
        assert_eq!(store.len(), 2);
        assert_eq!(
            store
                .journal_get(&path("apps/web/db"))
                .expect("journal")
                .expect("present")
                .expose(),
            b"step=created"
        );
        // The damaged entry is reported by path, once, and kept.
        let problems = store.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            matches!(&problems[0], Problem::Unreadable { path: Some(p), .. } if p == "apps/broken"),
            "{problems:?}"
        );
        // New writes go on from the migrated versions.
        if round == 0 {
            let mut fields = Fields::new();
            fields.insert("password", SecretString::from("pw-3"));
            let put = store
                .put(
                    &path("apps/web/db"),
                    crate::store::Write {
                        fields,
                        ..Default::default()
                    },
                )
                .expect("put");
            assert_eq!(put.version, 3);
            store.flush().await.expect("flush");
        }
        drop(store);
    }

    let db = crate::store::open_raw(&cfg.path);
    for tree in [INDEX_TREE, RECORDS_TREE, JOURNAL_TREE] {
        for item in db.open_tree(tree).expect("tree").iter() {
            let (k, _) = item.expect("item");
            assert!(
                !k.windows(4).any(|w| w == b"apps"),
                "{tree} key {k:?} shows a path"
            );
        }
    }
    let kept = db.open_tree(QUARANTINE_TREE).expect("quarantine");
    assert_eq!(
        kept.get(b"index\0apps/broken").expect("get").as_deref(),
        Some(&b"\x01not-sealed"[..])
    );
}
