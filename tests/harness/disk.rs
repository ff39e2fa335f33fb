//! The agent's sled store seen from outside, to damage it the way a disk, a backup
//! tool or an attacker might. Open it only while the agent is stopped.
//!
//! Keys are tags of the path under a key derived from the store's data key
//! (`latchkey::store::layout`), so finding a path's records needs the data key: it is
//! unwrapped with the agent's key file, as an operator with that file could.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use latchkey::crypto::{DataKey, KeyWrapper, LocalKek};
use latchkey::path::SecretPath;
use latchkey::store::layout::Layout;
use latchkey::store::{META_DEK, META_TREE, RECORDS_TREE};

use super::Agent;

/// The sled database of a stopped agent, open for tampering.
pub(crate) struct Store {
    db: sled::Db,
    records: sled::Tree,
    layout: Layout,
}

impl Store {
    /// Opens the agent's database (the agent must be stopped: sled locks it). Opening
    /// makes sled write a snapshot: to damage the log past the last snapshot, open a
    /// [`copy`](Store::open_copy) instead.
    pub(crate) async fn open(agent: &Agent) -> anyhow::Result<Store> {
        Self::open_at(&agent.data_dir(), &agent.dir().join("keys/kek")).await
    }

    /// Copies the agent's database to a scratch folder and opens the copy, leaving
    /// the agent's files exactly as they are.
    pub(crate) async fn open_copy(agent: &Agent) -> anyhow::Result<Store> {
        let copy = agent.scratch().join("store-copy");
        copy_dir(&agent.data_dir(), &copy)?;
        Self::open_at(&copy, &agent.dir().join("keys/kek")).await
    }

    async fn open_at(data_dir: &Path, kek: &Path) -> anyhow::Result<Store> {
        let db = sled::open(data_dir)
            .with_context(|| format!("cannot open sled at {}", data_dir.display()))?;
        let wrapped = db
            .open_tree(META_TREE)?
            .get(META_DEK)?
            .ok_or_else(|| anyhow!("no data key in {}", data_dir.display()))?;
        let kek = LocalKek::from_file(kek)?;
        let key = DataKey::from_secret(&kek.unwrap(&wrapped).await?)?;
        let records = db.open_tree(RECORDS_TREE)?;
        Ok(Store {
            db,
            records,
            layout: Layout::new(&key),
        })
    }

    fn record_key(&self, path: &str, version: u64) -> anyhow::Result<Vec<u8>> {
        let path = SecretPath::parse(path).map_err(|e| anyhow!("{path}: {e}"))?;
        Ok(self.layout.tag(&path).record_key(version).to_vec())
    }

    /// Whether the record of `path` at `version` is present.
    pub(crate) fn has(&self, path: &str, version: u64) -> anyhow::Result<bool> {
        Ok(self.records.contains_key(self.record_key(path, version)?)?)
    }

    /// The sealed bytes of one record.
    pub(crate) fn value(&self, path: &str, version: u64) -> anyhow::Result<Vec<u8>> {
        self.records
            .get(self.record_key(path, version)?)?
            .map(|v| v.to_vec())
            .ok_or_else(|| anyhow!("no record {path} v{version}"))
    }

    /// Puts `sealed` in the place of `path`'s record at `version`.
    pub(crate) fn put_value(&self, path: &str, version: u64, sealed: &[u8]) -> anyhow::Result<()> {
        self.records
            .insert(self.record_key(path, version)?, sealed)?;
        Ok(())
    }

    /// Flips every bit of the byte in the middle of one record's sealed value.
    pub(crate) fn flip_byte(&self, path: &str, version: u64) -> anyhow::Result<()> {
        let mut value = self.value(path, version)?;
        if value.is_empty() {
            bail!("record {path} v{version} is empty");
        }
        let middle = value.len() / 2;
        value[middle] ^= 0xff;
        self.put_value(path, version, &value)
    }

    /// Cuts one record's sealed value to half its length.
    pub(crate) fn truncate(&self, path: &str, version: u64) -> anyhow::Result<()> {
        let mut value = self.value(path, version)?;
        value.truncate(value.len() / 2);
        self.put_value(path, version, &value)
    }

    /// Puts a copy of record `from`'s sealed value in record `to`'s place (a replay).
    pub(crate) fn copy(&self, from: (&str, u64), to: (&str, u64)) -> anyhow::Result<()> {
        let value = self.value(from.0, from.1)?;
        self.value(to.0, to.1)?;
        self.put_value(to.0, to.1, &value)
    }

    /// Swaps the sealed values of two records.
    pub(crate) fn swap(&self, a: (&str, u64), b: (&str, u64)) -> anyhow::Result<()> {
        let va = self.value(a.0, a.1)?;
        let vb = self.value(b.0, b.1)?;
        if va == vb {
            bail!("the two records hold the same bytes");
        }
        self.put_value(a.0, a.1, &vb)?;
        self.put_value(b.0, b.1, &va)
    }

    /// Flushes and closes the database.
    pub(crate) fn close(self) -> anyhow::Result<()> {
        self.db.flush()?;
        drop(self.records);
        drop(self.db);
        Ok(())
    }
}

/// Flips the middle byte of the first place `needle` appears in the agent's sled log
/// file (`data/db`), as a failing disk would; returns the offset.
pub(crate) fn flip_in_log(agent: &Agent, needle: &[u8]) -> anyhow::Result<usize> {
    let file: PathBuf = agent.data_dir().join("db");
    let mut bytes = std::fs::read(&file)?;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| anyhow!("the sealed bytes are not in {}", file.display()))?;
    let offset = at + needle.len() / 2;
    bytes[offset] ^= 0xff;
    std::fs::write(&file, bytes)?;
    Ok(offset)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
