//! Each looked-after credential's lifecycle state, as the API (`GET /v1/status`), the
//! CLI (`latchkey status`) and the metrics show it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::path::{Prefix, SecretPath};

/// Where a credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated_at: Option<i64>,
    /// Last validation attempt, whatever its answer (schedules the next one).
    #[serde(skip)]
    pub checked_at: Option<i64>,
    /// Nothing is run for this secret before this time (another agent holds it).
    #[serde(skip)]
    pub not_before: Option<i64>,
    /// Last promoted rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    /// Last successful refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<i64>,
    /// Failed attempts in a row (rotation or refresh).
    pub failures: u32,
    /// When the engine next looks at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_check_at: Option<i64>,
    /// When a failed rotation or refresh is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// The last rotation or refresh failed in a way retrying cannot help (the
    /// provider said `rejected`, `denied`, `unsupported` or `invalid-config`): it is
    /// not tried again on schedule until a new version is written or an operator
    /// rotates.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// When the previous credential is retired (during a grace window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
    /// Permissions the provider reported at the last validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<(String, bool)>,
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
}

impl Table {
    /// Changes the status of `path` (created with `init` if missing).
    pub fn update<R>(
        &self,
        path: &SecretPath,
        init: impl FnOnce() -> Status,
        f: impl FnOnce(&mut Status) -> R,
    ) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(entries.entry(path.clone()).or_insert_with(init))
    }

    /// One status.
    pub fn get(&self, path: &SecretPath) -> Option<Status> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(path).cloned()
    }

    /// Forgets a path (its secret was deleted).
    pub fn remove(&self, path: &SecretPath) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(path);
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

#[cfg(test)]
mod tests {
    use super::*;

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
