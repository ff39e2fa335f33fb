//! Change fan-out: every committed change to a secret becomes an [`Event`].
//!
//! Producers (the sync's commit, for every write and delete; the lifecycle engine;
//! expiry warnings) call [`Events::publish`]; consumers (SSE watchers, template
//! rendering, webhooks, the lifecycle scheduler, the expiry check) hold a
//! [`tokio::sync::broadcast::Receiver`]. Events carry the path, the version and what
//! happened — never a value. A consumer that falls behind is told how many events it
//! missed and should re-read what it watches.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::path::SecretPath;

/// Events buffered per consumer before it counts as lagging.
const CAPACITY: usize = 1024;

/// What happened to a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A new version was written.
    Updated,
    /// The secret was deleted.
    Deleted,
    /// A rotation promoted a new version.
    Rotated,
    /// An OAuth token or lease was refreshed.
    Refreshed,
    /// The provider confirmed the credential works.
    Validated,
    /// The provider says the credential no longer works.
    Invalid,
    /// The credential expires soon.
    Expiring,
    /// The credential has expired.
    Expired,
    /// A rotation failed and was rolled back.
    RotationFailed,
    /// The service refused a refresh: someone must log in again.
    ReauthRequired,
    /// The upstream stopped listing this cached secret in a poll that would have
    /// dropped too many at once; it is kept and served as stale until an operator
    /// accepts the deletions or the upstream lists it again.
    DeletionHeld,
    /// A certificate (the agent's, its CA's, one it issued) expires soon; the path
    /// names it (`server`, `ca`, or the holder's identity path).
    CertificateExpiring,
    /// A certificate has expired.
    CertificateExpired,
}

impl Kind {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Updated => "updated",
            Kind::Deleted => "deleted",
            Kind::Rotated => "rotated",
            Kind::Refreshed => "refreshed",
            Kind::Validated => "validated",
            Kind::Invalid => "invalid",
            Kind::Expiring => "expiring",
            Kind::Expired => "expired",
            Kind::RotationFailed => "rotation-failed",
            Kind::ReauthRequired => "reauth-required",
            Kind::DeletionHeld => "deletion-held",
            Kind::CertificateExpiring => "certificate-expiring",
            Kind::CertificateExpired => "certificate-expired",
        }
    }

    /// Every kind, for looking one up by name.
    pub const ALL: [Kind; 13] = [
        Kind::Updated,
        Kind::Deleted,
        Kind::Rotated,
        Kind::Refreshed,
        Kind::Validated,
        Kind::Invalid,
        Kind::Expiring,
        Kind::Expired,
        Kind::RotationFailed,
        Kind::ReauthRequired,
        Kind::DeletionHeld,
        Kind::CertificateExpiring,
        Kind::CertificateExpired,
    ];

    /// The kind named `name` (its [`Kind::as_str`]).
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// To which secret.
    pub path: SecretPath,
    /// The version concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Unix time in milliseconds.
    pub time_ms: i64,
}

impl Event {
    /// An event stamped now.
    pub fn now(kind: Kind, path: SecretPath, version: Option<u64>) -> Self {
        Event {
            kind,
            path,
            version,
            time_ms: crate::clock::now_ms(),
        }
    }
}

/// The bus.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Events { tx }
    }

    /// Publishes a change; no subscribers is fine.
    pub fn publish(&self, event: Event) {
        tracing::debug!(kind = event.kind.as_str(), path = %event.path, version = event.version, "event");
        let _ = self.tx.send(event);
    }

    /// A new consumer, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_published_after_they_subscribed() {
        let events = Events::new();
        let path = SecretPath::parse("a/b").expect("path");
        events.publish(Event::now(Kind::Updated, path.clone(), Some(1)));
        let mut rx = events.subscribe();
        events.publish(Event::now(Kind::Deleted, path.clone(), None));
        let got = rx.recv().await.expect("event");
        assert_eq!(got.kind, Kind::Deleted);
        assert_eq!(got.path, path);
        let json = serde_json::to_string(&got).expect("json");
        assert!(json.contains("\"kind\":\"deleted\""), "{json}");
    }
}
