//! Where things live in sled, and the associated data that binds each sealed value to
//! its place (format 2).
//!
//! No key shows a secret path: a path's place is its [`PathTag`], an HMAC of the path
//! under a key derived from the data key ([`crate::crypto::Tagger`]); the path itself
//! is inside the sealed index entry. Keys:
//!
//! | tree | key | associated data |
//! | --- | --- | --- |
//! | `index` | tag | `latchkey/index/v2\0` tag |
//! | `records` | tag, version (u64 BE) | `latchkey/record/v2\0` tag, version, epoch (u64 BE) |
//! | `journal` | tag | `latchkey/journal/v2\0` tag |
//! | `meta` | `state` | `latchkey/state/v1\0` |
//!
//! The epoch is a random number drawn when a path's index entry is created, so a
//! record sealed before a delete does not open after the path is written again, even
//! though version numbers start again at 1. Public so that tools (and the end-to-end
//! tests) can find a path's values in a stopped store with the data key.

use crate::crypto::{DataKey, Tagger, TAG_LEN};
use crate::path::SecretPath;

pub(super) const INDEX_AAD: &[u8] = b"latchkey/index/v2\0";
pub(super) const RECORD_AAD: &[u8] = b"latchkey/record/v2\0";
pub(super) const JOURNAL_AAD: &[u8] = b"latchkey/journal/v2\0";
/// Domain of the path tagger's key derivation.
const PATH_TAG_PURPOSE: &[u8] = b"latchkey/path-tag/v1";

/// Length of a `records` key: tag and version.
pub const RECORD_KEY_LEN: usize = TAG_LEN + 8;

/// Computes the places of paths under one data key.
#[derive(Debug)]
pub struct Layout {
    tagger: Tagger,
}

impl Layout {
    /// The layout of a store sealed under `key`.
    pub fn new(key: &DataKey) -> Self {
        Layout {
            tagger: Tagger::derive(key, PATH_TAG_PURPOSE),
        }
    }

    /// The tag of `path`: its key in `index` and `journal`, the prefix of its records.
    pub fn tag(&self, path: &SecretPath) -> PathTag {
        PathTag(self.tagger.tag(&[path.as_str().as_bytes()]))
    }
}

/// The keyed tag of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathTag(pub [u8; TAG_LEN]);

impl PathTag {
    /// The key of the path's index entry (and journal entry).
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// The key of one version's record.
    pub fn record_key(&self, version: u64) -> [u8; RECORD_KEY_LEN] {
        let mut key = [0u8; RECORD_KEY_LEN];
        key[..TAG_LEN].copy_from_slice(&self.0);
        key[TAG_LEN..].copy_from_slice(&version.to_be_bytes());
        key
    }

    /// The tag a `records` key starts with, and its version; `None` for another shape.
    pub fn split_record_key(key: &[u8]) -> Option<(PathTag, u64)> {
        if key.len() != RECORD_KEY_LEN {
            return None;
        }
        let tag = PathTag(key[..TAG_LEN].try_into().ok()?);
        let version = u64::from_be_bytes(key[TAG_LEN..].try_into().ok()?);
        Some((tag, version))
    }

    pub(super) fn index_aad(&self) -> Vec<u8> {
        [INDEX_AAD, &self.0].concat()
    }

    pub(super) fn journal_aad(&self) -> Vec<u8> {
        [JOURNAL_AAD, &self.0].concat()
    }

    pub(super) fn record_aad(&self, version: u64, epoch: u64) -> Vec<u8> {
        [
            RECORD_AAD,
            &self.0,
            &version.to_be_bytes(),
            &epoch.to_be_bytes(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_split_back_and_group_under_the_tag() {
        let layout = Layout::new(&DataKey::generate());
        let path = SecretPath::parse("apps/web/db").expect("path");
        let tag = layout.tag(&path);
        let key = tag.record_key(7);
        assert!(key.starts_with(tag.key()));
        assert_eq!(PathTag::split_record_key(&key), Some((tag, 7)));
        assert_eq!(PathTag::split_record_key(&key[1..]), None);
        assert!(!key.windows(6).any(|w| w == b"apps/w"), "no path in clear");
        assert_ne!(tag.record_aad(1, 1), tag.record_aad(1, 2));
    }
}
