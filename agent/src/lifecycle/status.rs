//! Each looked-after credential's lifecycle state, as the API (`GET /v1/status`), the
//! CLI (`latchkey status`) and the metrics show it.
//!
//! The table is kept in a state file (`state_file::LIFECYCLE`, `lifecycle.json`),
//! rewritten whenever a credential's state changes, so a credential found revoked,
//! invalid or needing a new login still says so after a restart — also after a
//! `SIGKILL`. A kept status is for the version it was about: once the store holds
//! another version, the credential starts again as `active`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::path::{Prefix, SecretPath};

/// Where a credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Working, as far as the agent knows.
    Active,
    /// An OAuth refresh is running.
    Refreshing,
    /// A rotation is running.
    Rotating,
    /// Past its expiry, and no refresh or rotation has replaced it.
    Expired,
    /// The provider says it does not work (or it holds a forbidden permission).
    Invalid,
    /// The service refused the refresh token: a person must log in again.
    ReauthRequired,
    /// The service no longer knows the credential (deleted or revoked there).
    Revoked,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 7] = [
        State::Active,
        State::Refreshing,
        State::Rotating,
        State::Expired,
        State::Invalid,
        State::ReauthRequired,
        State::Revoked,
    ];

    /// The name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Refreshing => "refreshing",
            State::Rotating => "rotating",
            State::Expired => "expired",
            State::Invalid => "invalid",
            State::ReauthRequired => "reauth-required",
            State::Revoked => "revoked",
        }
    }
}

/// What the engine knows about one credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Since when (unix seconds).
    pub since: i64,
    /// The plugin looking after it.
    pub plugin: String,
    /// The current version when last looked at.
    pub version: u64,
    /// The last thing that happened, in words (no values).
    pub detail: String,
    /// Last successful validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_at: Option<i64>,
    /// Last validation attempt, whatever its answer (schedules the next one).
    #[serde(skip)]
    pub checked_at: Option<i64>,
    /// Nothing is run for this secret before this time (another agent holds it).
    #[serde(skip)]
    pub not_before: Option<i64>,
    /// Last promoted rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    /// Last successful refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<i64>,
    /// Failed attempts in a row (rotation or refresh).
    pub failures: u32,
    /// When the engine next looks at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_at: Option<i64>,
    /// When a failed rotation or refresh is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// The last rotation or refresh failed in a way retrying cannot help (the
    /// provider said `rejected`, `denied`, `unsupported` or `invalid-config`): it is
    /// not tried again on schedule until a new version is written or an operator
    /// rotates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// When the previous credential is retired (during a grace window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
    /// Permissions the provider reported at the last validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<(String, bool)>,
    /// Read back from the state file at start, not yet matched with the store.
    #[serde(skip)]
    pub restored: bool,
}

impl Status {
    /// A credential first seen now.
    pub fn new(plugin: &str, version: u64, now: i64) -> Self {
        Status {
            state: State::Active,
            since: now,
            plugin: plugin.to_owned(),
            version,
            detail: String::new(),
            validated_at: None,
            checked_at: None,
            not_before: None,
            rotated_at: None,
            refreshed_at: None,
            failures: 0,
            next_check_at: None,
            retry_at: None,
            stopped: false,
            retire_at: None,
            permissions: Vec::new(),
            restored: false,
        }
    }

    /// Moves to `state` (keeping `since` if unchanged) with `detail`.
    pub fn set(&mut self, state: State, detail: impl Into<String>, now: i64) {
        if self.state != state {
            self.state = state;
            self.since = now;
        }
        self.detail = detail.into();
    }
}

/// Every status, by path.
#[derive(Debug, Default)]
pub struct Table {
    entries: Mutex<BTreeMap<SecretPath, Status>>,
    /// Where the table is kept (none in tests that do not ask for it).
    file: Option<PathBuf>,
    /// Held while the file is written, so writes land in the order of the states.
    saving: Mutex<()>,
}

impl Table {
    /// A table kept in `file`, starting from what it holds (nothing when it is
    /// missing; a file that cannot be read or parsed is said once and replaced).
    pub fn kept_in(file: PathBuf) -> Table {
        let entries = match crate::state_file::read(&file) {
            Ok(None) => BTreeMap::new(),
            Ok(Some(raw)) => match serde_json::from_slice::<BTreeMap<SecretPath, Status>>(&raw) {
                Ok(mut entries) => {
                    for status in entries.values_mut() {
                        status.restored = true;
                    }
                    entries
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "the lifecycle state file does not parse; starting every credential as active");
                    BTreeMap::new()
                }
            },
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the lifecycle state file; starting every credential as active");
                BTreeMap::new()
            }
        };
        Table {
            entries: Mutex::new(entries),
            file: Some(file),
            saving: Mutex::new(()),
        }
    }

    /// Changes the status of `path` (created with `init` if missing); keeps the table
    /// in its file when what is kept changed.
    pub fn update<R>(
        &self,
        path: &SecretPath,
        init: impl FnOnce() -> Status,
        f: impl FnOnce(&mut Status) -> R,
    ) -> R {
        let (result, changed) = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let status = entries.entry(path.clone()).or_insert_with(init);
            let before = Kept::of(status);
            let result = f(status);
            (result, Kept::of(status) != before)
        };
        if changed {
            self.save();
        }
        result
    }

    /// Writes the table to its file (a failure is logged: the states still hold in
    /// memory).
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let raw = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&*entries)
        };
        match raw.map_err(std::io::Error::from) {
            Ok(raw) => {
                if let Err(e) = crate::state_file::replace(file, &raw) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot keep the lifecycle states");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the lifecycle states"),
        }
    }

    /// One status.
    pub fn get(&self, path: &SecretPath) -> Option<Status> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(path).cloned()
    }

    /// Forgets a path (its secret was deleted).
    pub fn remove(&self, path: &SecretPath) {
        let removed = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.remove(path).is_some()
        };
        if removed {
            self.save();
        }
    }

    /// Drops every status whose path `keep` refuses (saved once); the paths dropped.
    pub fn retain(&self, keep: impl Fn(&SecretPath) -> bool) -> Vec<SecretPath> {
        let dropped: Vec<SecretPath> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = entries.keys().filter(|p| !keep(p)).cloned().collect();
            entries.retain(|p, _| keep(p));
            dropped
        };
        if !dropped.is_empty() {
            self.save();
        }
        dropped
    }

    /// Every status under `prefix`, in path order.
    pub fn list(&self, prefix: &Prefix) -> Vec<(SecretPath, Status)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(p, _)| p.has_prefix(prefix))
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect()
    }

    /// How many credentials are in each state.
    pub fn counts(&self) -> BTreeMap<State, usize> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for status in entries.values() {
            *counts.entry(status.state).or_default() += 1;
        }
        counts
    }
}

/// What of a status is worth a write of the state file when it changes (not the
/// next check's time, which moves on every plan).
#[derive(PartialEq)]
struct Kept {
    state: State,
    version: u64,
    stopped: bool,
    failures: u32,
    validated_at: Option<i64>,
    rotated_at: Option<i64>,
    refreshed_at: Option<i64>,
}

impl Kept {
    fn of(s: &Status) -> Kept {
        Kept {
            state: s.state,
            version: s.version,
            stopped: s.stopped,
            failures: s.failures,
            validated_at: s.validated_at,
            rotated_at: s.rotated_at,
            refreshed_at: s.refreshed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_kept_in_the_file_and_read_back_as_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data.lifecycle.json");
        let path = SecretPath::parse("svc/key").expect("path");
        let table = Table::kept_in(file.clone());
        table.update(
            &path,
            || Status::new("svc", 3, 100),
            |s| {
                s.set(State::Revoked, "the service no longer knows it", 200);
                s.stopped = true;
            },
        );
        let again = Table::kept_in(file.clone());
        let kept = again.get(&path).expect("kept");
        assert_eq!(
            (
                kept.state,
                kept.version,
                kept.since,
                kept.stopped,
                kept.restored
            ),
            (State::Revoked, 3, 200, true, true)
        );
        assert_eq!(kept.detail, "the service no longer knows it");
        again.remove(&path);
        assert!(Table::kept_in(file.clone()).get(&path).is_none());
        std::fs::write(&file, b"{not json").expect("garble");
        assert!(Table::kept_in(file).list(&Prefix::all()).is_empty());
    }

    #[test]
    fn set_keeps_since_while_the_state_holds() {
        let mut s = Status::new("pg", 1, 10);
        s.set(State::Active, "validated", 20);
        assert_eq!(s.since, 10);
        s.set(State::Invalid, "rejected", 30);
        assert_eq!((s.state, s.since), (State::Invalid, 30));
    }

    #[test]
    fn counts_cover_every_state() {
        let t = Table::default();
        let p = SecretPath::parse("db/a").expect("path");
        t.update(
            &p,
            || Status::new("pg", 1, 0),
            |s| s.set(State::Rotating, "", 1),
        );
        let counts = t.counts();
        assert_eq!(counts.len(), State::ALL.len());
        assert_eq!(counts[&State::Rotating], 1);
        assert_eq!(counts[&State::Active], 0);
        assert_eq!(State::ReauthRequired.as_str(), "reauth-required");
    }
}
