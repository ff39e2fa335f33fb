//! The agent's sled store seen from outside, to damage it the way a disk, a backup
//! tool or an attacker might. Open it only while the agent is stopped.
//!
//! Layout: tree `records`, key = path bytes, 0x00, version as u64 big-endian; value
//! = the AES-GCM sealed record (its associated data binds path and version).

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};

/// The `records` key of `path` at `version`.
pub(crate) fn record_key(path: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.len() + 9);
    key.extend_from_slice(path.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The sled database in `data_dir`, open for tampering.
pub(crate) struct Store {
    db: sled::Db,
    records: sled::Tree,
}

impl Store {
    /// Opens the database (the agent must be stopped: sled locks it).
    pub(crate) fn open(data_dir: &Path) -> anyhow::Result<Store> {
        let db = sled::open(data_dir)
            .with_context(|| format!("cannot open sled at {}", data_dir.display()))?;
        let records = db.open_tree("records")?;
        Ok(Store { db, records })
    }

    /// The record keys present, as (path, version).
    pub(crate) fn records(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in self.records.iter() {
            let (key, _) = entry?;
            let split = key.len().checked_sub(9).filter(|&i| key[i] == 0);
            let Some(i) = split else {
                bail!("record key {key:?} is not path 0x00 version");
            };
            let path = String::from_utf8(key[..i].to_vec())?;
            let mut version = [0u8; 8];
            version.copy_from_slice(&key[i + 1..]);
            out.push((path, u64::from_be_bytes(version)));
        }
        Ok(out)
    }

    /// The sealed bytes of one record.
    pub(crate) fn value(&self, path: &str, version: u64) -> anyhow::Result<Vec<u8>> {
        self.records
            .get(record_key(path, version))?
            .map(|v| v.to_vec())
            .ok_or_else(|| anyhow!("no record {path} v{version}; present: {:?}", self.records()))
    }

    /// Flips every bit of the byte in the middle of one record's sealed value.
    pub(crate) fn flip_byte(&self, path: &str, version: u64) -> anyhow::Result<()> {
        let mut value = self.value(path, version)?;
        if value.is_empty() {
            bail!("record {path} v{version} is empty");
        }
        let middle = value.len() / 2;
        value[middle] ^= 0xff;
        self.records.insert(record_key(path, version), value)?;
        Ok(())
    }

    /// Cuts one record's sealed value to half its length.
    pub(crate) fn truncate(&self, path: &str, version: u64) -> anyhow::Result<()> {
        let mut value = self.value(path, version)?;
        value.truncate(value.len() / 2);
        self.records.insert(record_key(path, version), value)?;
        Ok(())
    }

    /// Puts a copy of record `from`'s sealed value in record `to`'s place (a replay).
    pub(crate) fn copy(&self, from: (&str, u64), to: (&str, u64)) -> anyhow::Result<()> {
        let value = self.value(from.0, from.1)?;
        self.value(to.0, to.1)?;
        self.records.insert(record_key(to.0, to.1), value)?;
        Ok(())
    }

    /// Swaps the sealed values of two records.
    pub(crate) fn swap(&self, a: (&str, u64), b: (&str, u64)) -> anyhow::Result<()> {
        let va = self.value(a.0, a.1)?;
        let vb = self.value(b.0, b.1)?;
        if va == vb {
            bail!("the two records hold the same bytes");
        }
        self.records.insert(record_key(a.0, a.1), vb)?;
        self.records.insert(record_key(b.0, b.1), va)?;
        Ok(())
    }

    /// Flushes and closes the database.
    pub(crate) fn close(self) -> anyhow::Result<()> {
        self.db.flush()?;
        drop(self.records);
        drop(self.db);
        Ok(())
    }
}
