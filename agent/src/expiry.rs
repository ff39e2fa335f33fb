//! Expiry warnings: `expiring` events 30, 14 and 7 days before a secret's expiry and
//! an `expired` event when it passes; `certificate-expiring` and
//! `certificate-expired` the same way for the agent's certificates and those its CA
//! issued ([`certificates`]), whose time left is also a metric.
//!
//! A task reads the store's index (no values) every minute and publishes each warning
//! once per secret version: a new version (a rotation, a refresh) starts the series
//! again. What was already sent is kept in a small state file (`state_file::EXPIRY`), so a
//! restart does not repeat warnings. Each warning is written to the audit trail and
//! published to the event consumers: the SSE watchers and the webhooks.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::events::{Event, Events, Kind};
use crate::path::Prefix;
use crate::store::{Entry, Store};

pub mod certificates;

pub use certificates::Certificates;

/// The prefix of a certificate's marks in the state file (no secret path has a `:`).
const CERT_MARK: &str = "certificate:";

/// Days before expiry at which an `expiring` event is sent.
pub const WARN_DAYS: [i64; 3] = [30, 14, 7];

const DAY: i64 = 24 * 3600;

/// After a write, how long to wait for more before scanning once.
const SETTLE: Duration = Duration::from_millis(300);

/// One warning that is due: (path, version, days before expiry; 0 = expired).
type Mark = (String, u64, i64);

/// The time left before an expiry in words, to the two largest units: `1m 15s` for a
/// 75-second token, `6d 23h` for a week-old certificate, `0s` once it has passed.
/// The thresholds only decide *when* a warning is sent; the warning says this.
pub fn time_left(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let units = [(DAY, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (size, unit) in units {
        let n = rest / size;
        if n > 0 || (parts.is_empty() && size == 1) {
            parts.push(format!("{n}{unit}"));
            rest -= n * size;
        } else if !parts.is_empty() {
            // A zero unit after the first ends the phrase: `2d`, not `2d 0h`.
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// What an `expiring` warning says: the real time left and the instant.
fn expires_in(left: i64, expires_at: i64) -> String {
    format!(
        "expires in {} (at {})",
        time_left(left),
        crate::api::rfc3339(expires_at)
    )
}

/// The path a certificate's events carry: `server`, `ca`, or the path of a client's
/// SPIFFE id (`spiffe://td/app/web` → `app/web`).
fn holder_path(holder: &str) -> String {
    match holder.strip_prefix("spiffe://") {
        Some(rest) => rest
            .split_once('/')
            .map_or_else(|| rest.to_owned(), |(_, path)| path.to_owned()),
        None => holder.to_owned(),
    }
}

/// The warning due with `left` seconds to go: 0 once expired, else the tightest of
/// [`WARN_DAYS`] reached (7 before 14 before 30) among those `applies` allows;
/// `None` when none is.
fn threshold(left: i64, applies: impl Fn(i64) -> bool) -> Option<i64> {
    if left <= 0 {
        return Some(0);
    }
    WARN_DAYS
        .iter()
        .rev()
        .copied()
        .find(|d| left <= d * DAY && applies(*d))
}

/// The warnings due for `entries` at `now` (unix seconds) that are not in `sent`,
/// each with the expiry it warns of.
fn due(entries: &[Entry], now: i64, sent: &HashSet<Mark>) -> Vec<(Mark, Kind, i64)> {
    let mut out = Vec::new();
    for entry in entries {
        let Some(expires_at) = entry.expires_at else {
            continue;
        };
        let Some(threshold) = threshold(expires_at - now, |_| true) else {
            continue;
        };
        let kind = if threshold == 0 {
            Kind::Expired
        } else {
            Kind::Expiring
        };
        let mark = (entry.path.to_string(), entry.current_version, threshold);
        if !sent.contains(&mark) {
            out.push((mark, kind, expires_at));
        }
    }
    out
}

/// Watches expiry times and publishes warnings.
pub struct Expiry {
    store: Store,
    events: Events,
    audit: Option<crate::audit::Audit>,
    state_file: PathBuf,
    sent: HashSet<Mark>,
    certificates: Option<(Certificates, crate::metrics::CertificateExpiry)>,
}

impl Expiry {
    /// A watcher over `store`; `state_file` remembers what was sent.
    pub fn new(store: Store, events: Events, state_file: PathBuf) -> Self {
        let sent = crate::state_file::read(&state_file)
            .ok()
            .flatten()
            .and_then(|raw| serde_json::from_slice::<Vec<Mark>>(&raw).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        Expiry {
            store,
            events,
            audit: None,
            state_file,
            sent,
            certificates: None,
        }
    }

    /// Also watches `certificates`, setting their time left in `gauge`.
    pub fn with_certificates(
        mut self,
        certificates: Certificates,
        gauge: crate::metrics::CertificateExpiry,
    ) -> Self {
        gauge.watch(certificates.clone());
        self.certificates = Some((certificates, gauge));
        self
    }

    /// Also writes each warning to `audit`.
    pub fn with_audit(mut self, audit: crate::audit::Audit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// One pass: publishes what is due now. Returns how many events were sent.
    /// Blocks on the store: for tests and blocking callers.
    pub fn check(&mut self, now: i64) -> usize {
        let listed = self.store.list(&Prefix::all());
        self.check_listed(listed, now) + self.check_certificates(now)
    }

    /// [`Expiry::check`] from async code: the store is read on the blocking pool.
    pub async fn check_async(&mut self, now: i64) -> usize {
        let listed = self.store.blocking(|s| s.list(&Prefix::all())).await;
        self.check_listed(listed, now) + self.check_certificates(now)
    }

    /// The certificates' part of a pass: the gauge, and the warnings due.
    fn check_certificates(&mut self, now: i64) -> usize {
        let Some((certificates, gauge)) = &self.certificates else {
            return 0;
        };
        let watched = certificates.watched();
        let mut due = Vec::new();
        for cert in &watched {
            gauge.set(&cert.holder, cert.not_after, now);
            let Some(threshold) = threshold(cert.not_after - now, |d| cert.warns_at(d)) else {
                continue;
            };
            let mark = (format!("{CERT_MARK}{}", cert.holder), cert.id, threshold);
            if !self.sent.contains(&mark) {
                due.push((mark, cert.holder.clone(), cert.not_after));
            }
        }
        for ((_, id, days), holder, not_after) in &due {
            let (kind, detail) = if *days == 0 {
                tracing::warn!(certificate = %holder, "certificate expired");
                (
                    Kind::CertificateExpired,
                    format!("certificate of {holder} expired"),
                )
            } else {
                let left = time_left(not_after - now);
                let at = crate::api::rfc3339(*not_after);
                tracing::warn!(certificate = %holder, left, expires_at = %at, "certificate expires soon");
                (
                    Kind::CertificateExpiring,
                    format!(
                        "certificate of {holder} {}",
                        expires_in(not_after - now, *not_after)
                    ),
                )
            };
            let name = holder_path(holder);
            if let Some(audit) = &self.audit {
                let mut record = crate::audit::Record::now(
                    "latchkey:expiry".into(),
                    None,
                    kind.as_str(),
                    Some(name.as_str()),
                );
                record.detail = Some(detail.into());
                audit.try_record(record);
            }
            match crate::path::SecretPath::parse(&name) {
                Ok(path) => self.events.publish(Event::now(kind, path, Some(*id))),
                Err(_) => tracing::debug!(certificate = %holder, "no event path for this holder"),
            }
        }
        if !due.is_empty() {
            self.sent.extend(due.iter().map(|(m, _, _)| m.clone()));
            let live: HashSet<(String, u64)> = watched
                .iter()
                .map(|w| (format!("{CERT_MARK}{}", w.holder), w.id))
                .collect();
            self.sent
                .retain(|(p, v, _)| !p.starts_with(CERT_MARK) || live.contains(&(p.clone(), *v)));
            self.save();
        }
        due.len()
    }

    fn check_listed(&mut self, listed: Result<Vec<Entry>, crate::store::Error>, now: i64) -> usize {
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "expiry check could not list the store");
                return 0;
            }
        };
        let due = due(&entries, now, &self.sent);
        for (mark, kind, expires_at) in &due {
            let Ok(path) = crate::path::SecretPath::parse(&mark.0) else {
                continue;
            };
            if *kind == Kind::Expired {
                tracing::warn!(path = %path, version = mark.1, "secret expired");
            } else {
                let left = time_left(expires_at - now);
                let at = crate::api::rfc3339(*expires_at);
                tracing::info!(path = %path, version = mark.1, left, expires_at = %at, "secret expires soon");
            }
            if let Some(audit) = &self.audit {
                let mut record = crate::audit::Record::now(
                    "latchkey:expiry".into(),
                    None,
                    kind.as_str(),
                    Some(path.as_str()),
                );
                record.version = Some(mark.1);
                if *kind == Kind::Expiring {
                    record.detail = Some(expires_in(expires_at - now, *expires_at).into());
                }
                audit.try_record(record);
            }
            self.events.publish(Event::now(*kind, path, Some(mark.1)));
        }
        if !due.is_empty() {
            self.sent.extend(due.iter().map(|(m, _, _)| m.clone()));
            // Forget versions that are gone, so the file does not grow forever.
            let live: HashSet<(String, u64)> = entries
                .iter()
                .map(|e| (e.path.to_string(), e.current_version))
                .collect();
            self.sent
                .retain(|(p, v, _)| p.starts_with(CERT_MARK) || live.contains(&(p.clone(), *v)));
            self.save();
        }
        due.len()
    }

    fn save(&self) {
        let list: Vec<&Mark> = self.sent.iter().collect();
        if let Ok(raw) = serde_json::to_vec(&list) {
            if let Err(e) = crate::state_file::replace(&self.state_file, &raw) {
                tracing::warn!(file = %self.state_file.display(), error = %e, "cannot save expiry state");
            }
        }
    }

    /// Checks every `every`, and after every write (a new version may carry an expiry
    /// that is already close), until `shutdown` turns true.
    pub fn spawn(
        mut self,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut changes = self.events.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                let mut settle = false;
                tokio::select! {
                    _ = tick.tick() => {}
                    got = changes.recv() => match got {
                        Ok(e) if matches!(e.kind, Kind::Updated | Kind::Rotated | Kind::Refreshed) => {
                            settle = true;
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                if settle {
                    // Let a burst (a sync of thousands of secrets) settle, then scan
                    // once for all of it.
                    tokio::time::sleep(SETTLE).await;
                    while !matches!(
                        changes.try_recv(),
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty
                            | tokio::sync::broadcast::error::TryRecvError::Closed)
                    ) {}
                }
                self.check_async(crate::clock::unix_now()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::SecretPath;

    fn entry(path: &str, version: u64, expires_at: Option<i64>) -> Entry {
        Entry {
            path: SecretPath::parse(path).expect("path"),
            current_version: version,
            kind: "generic".into(),
            updated_at: 0,
            expires_at,
            deleted: None,
        }
    }

    #[test]
    fn warnings_follow_the_thresholds_once_each() {
        let now = 1_000_000_000;
        let entries = vec![
            entry("a", 1, Some(now + 40 * DAY)),
            entry("b", 1, Some(now + 20 * DAY)),
            entry("c", 1, Some(now + 10 * DAY)),
            entry("d", 1, Some(now + 3 * DAY)),
            entry("e", 1, Some(now - 1)),
            entry("f", 1, None),
        ];
        let mut sent = HashSet::new();
        let first = due(&entries, now, &sent);
        let got: Vec<(&str, i64, Kind)> = first
            .iter()
            .map(|((p, _, d), k, _)| (p.as_str(), *d, *k))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b", 30, Kind::Expiring),
                ("c", 14, Kind::Expiring),
                ("d", 7, Kind::Expiring),
                ("e", 0, Kind::Expired),
            ]
        );
        sent.extend(first.into_iter().map(|(m, _, _)| m));
        assert!(due(&entries, now, &sent).is_empty(), "each warning once");
        // Later, b crosses 14 days; a new version of d starts over.
        let later = now + 7 * DAY;
        let mut entries = entries;
        entries[3] = entry("d", 2, Some(later + 3 * DAY));
        let next: Vec<(String, u64, i64)> = due(&entries, later, &sent)
            .into_iter()
            .map(|(m, _, _)| m)
            .collect();
        assert!(next.contains(&("b".into(), 1, 14)), "{next:?}");
        assert!(next.contains(&("d".into(), 2, 7)), "{next:?}");
    }

    #[test]
    fn time_left_reads_as_the_real_remaining_time() {
        assert_eq!(time_left(75), "1m 15s");
        assert_eq!(time_left(59), "59s");
        assert_eq!(time_left(3600), "1h");
        assert_eq!(time_left(2 * DAY + 5), "2d");
        assert_eq!(time_left(7 * DAY - 1), "6d 23h");
        assert_eq!(time_left(-4), "0s");
    }

    /// Issue 15, item 8: a 75-second token was announced as `days=7`.
    #[test]
    fn a_75_second_token_is_announced_with_75_seconds_left() {
        let now = 1_000_000_000;
        let entries = vec![entry("tok", 1, Some(now + 75))];
        let warned = due(&entries, now, &HashSet::new());
        let [(mark, Kind::Expiring, expires_at)] = warned.as_slice() else {
            panic!("one expiring warning: {warned:?}");
        };
        let said = expires_in(expires_at - now, *expires_at);
        assert_eq!(said, "expires in 1m 15s (at 2001-09-09T01:47:55Z)");
        assert!(!said.contains("day"), "{said}");
        assert_eq!(mark.2, 7, "sent at the tightest threshold once");
    }
}
