//! Webhook sinks: change and alert events POSTed as signed JSON.
//!
//! Each `[[webhook]]` gets its own task on the event bus. An event whose kind the
//! sink asks for is sent as
//!
//! ```json
//! {"kind":"rotation-failed","path":"apps/db","version":7,"time_ms":1763800000000,"agent":"latchkey.local"}
//! ```
//!
//! with `Latchkey-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
//! so a receiver can check both origin and freshness (reject old `t` to stop
//! replays). Failed deliveries are retried with exponential backoff up to
//! `max_attempts`; events never carry a value, and the signing key is a secret type.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::backoff::Backoff;
use crate::events::{Event, Events, Kind};
use crate::secret::SecretString;
use crate::upstream::http::{client, HttpSettings};

/// Delays between delivery attempts: 200 ms doubling up to 30 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

/// The signature header.
pub const SIGNATURE_HEADER: &str = "latchkey-signature";

/// `[[webhook]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where to POST. `http://` only for loopback receivers.
    pub url: String,
    /// Event kinds to send (`rotated`, `rotation-failed`, `expiring`, …); all when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// File holding the HMAC key (mode 0600).
    pub secret_file: PathBuf,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Attempts per event before it is dropped (and logged).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_timeout() -> String {
    "5s".to_owned()
}
fn default_attempts() -> u32 {
    5
}

/// A validated webhook sink.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: reqwest::Url,
    kinds: Vec<Kind>,
    key: Arc<SecretString>,
    timeout: Duration,
    max_attempts: u32,
}

/// Why a webhook is unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad URL.
    #[error("url {0:?}: {1}")]
    Url(String, &'static str),
    /// Unknown event kind.
    #[error("unknown event kind {0:?}")]
    Kind(String),
    /// Bad timeout.
    #[error("timeout {0:?} is not a duration")]
    Timeout(String),
    /// The key file cannot be used.
    #[error("secret_file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Webhook {
    /// Validates a spec; `base` anchors a relative `secret_file`.
    pub fn from_spec(spec: &WebhookSpec, base: &Path) -> Result<Webhook, Error> {
        let url = reqwest::Url::parse(&spec.url)
            .map_err(|_| Error::Url(spec.url.clone(), "not a URL"))?;
        let loopback = matches!(
            url.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        );
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(Error::Url(
                    spec.url.clone(),
                    "plain http is allowed only for loopback",
                ))
            }
            _ => return Err(Error::Url(spec.url.clone(), "must be https")),
        }
        let kinds = spec
            .events
            .iter()
            .map(|k| Kind::named(k).ok_or_else(|| Error::Kind(k.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = humantime::parse_duration(&spec.timeout)
            .map_err(|_| Error::Timeout(spec.timeout.clone()))?;
        let path = if spec.secret_file.is_absolute() {
            spec.secret_file.clone()
        } else {
            base.join(&spec.secret_file)
        };
        let key = read_key(&path)?;
        Ok(Webhook {
            url,
            kinds,
            key: Arc::new(key),
            timeout,
            max_attempts: spec.max_attempts.max(1),
        })
    }

    fn wants(&self, kind: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

fn read_key(path: &Path) -> Result<SecretString, Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:04o} gives access to group or others; chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = SecretString::new(text.trim_end_matches(['\n', '\r']).to_owned());
    drop(text);
    if key.len() < 16 {
        return Err(err("the key must be at least 16 bytes".to_owned()));
    }
    Ok(key)
}

/// `t=<unix>,v1=<hex hmac>` for a body sent at `t`.
pub fn signature(key: &SecretString, t: i64, body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

#[derive(serde::Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    event: &'a Event,
    agent: &'a str,
}

/// Starts one delivery task per webhook; they stop when `shutdown` turns true, after
/// delivering the events already published.
pub fn spawn(
    hooks: Vec<Webhook>,
    events: &Events,
    agent: Arc<str>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    hooks
        .into_iter()
        .map(|hook| {
            let rx = events.subscribe();
            tokio::spawn(deliver_loop(hook, rx, agent.clone(), shutdown.clone()))
        })
        .collect()
}

async fn deliver_loop(
    hook: Webhook,
    mut rx: broadcast::Receiver<Event>,
    agent: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = HttpSettings {
        request_timeout: hook.timeout,
        ..HttpSettings::default()
    };
    let http = match client("webhook", &settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %hook.url, error = %e, "webhook disabled: no HTTP client");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            got = rx.recv() => match got {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(url = %hook.url, missed, "webhook fell behind; events dropped");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        send(&http, &hook, &agent, &event).await;
    }
    // The agent stops the webhooks last: what the rest published before stopping (a
    // rolled-back rotation's alert) still goes out.
    loop {
        match rx.try_recv() {
            Ok(event) => send(&http, &hook, &agent, &event).await,
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

/// Delivers `event` if the hook wants it.
async fn send(http: &reqwest::Client, hook: &Webhook, agent: &str, event: &Event) {
    if !hook.wants(event.kind) {
        return;
    }
    let Ok(body) = serde_json::to_vec(&Payload { event, agent }) else {
        return;
    };
    deliver(http, hook, event, body).await;
}

async fn deliver(http: &reqwest::Client, hook: &Webhook, event: &Event, body: Vec<u8>) {
    for attempt in 1..=hook.max_attempts {
        let t = crate::clock::unix_now();
        let sent = http
            .post(hook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&hook.key, t, &body))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => {
                tracing::debug!(url = %hook.url, kind = event.kind.as_str(), path = %event.path, "webhook delivered");
                return;
            }
            Ok(res) => {
                tracing::warn!(url = %hook.url, status = res.status().as_u16(), attempt, "webhook refused");
            }
            Err(e) => {
                tracing::warn!(url = %hook.url, error = %e, attempt, "webhook delivery failed");
            }
        }
        if attempt < hook.max_attempts {
            tokio::time::sleep(RETRY.delay(attempt)).await;
        }
    }
    tracing::error!(
        url = %hook.url,
        kind = event.kind.as_str(),
        path = %event.path,
        "webhook gave up after {} attempts",
        hook.max_attempts
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let key = SecretString::from("0123456789abcdef-key");
        let sig = signature(&key, 1_700_000_000, b"{\"a\":1}");
        // Independent check with the same primitive.
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef-key");
        let expected = ring::hmac::sign(&k, b"1700000000.{\"a\":1}");
        assert_eq!(
            sig,
            format!("t=1700000000,v1={}", hex::encode(expected.as_ref()))
        );
    }

    #[test]
    fn specs_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("hook.key");
        std::fs::write(&key, "a-long-enough-webhook-key\n").expect("write");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let spec = |url: &str, events: &[&str]| WebhookSpec {
            url: url.to_owned(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret_file: key.clone(),
            timeout: "1s".to_owned(),
            max_attempts: 3,
        };
        assert!(
            Webhook::from_spec(&spec("http://127.0.0.1:9/h", &["expired"]), dir.path()).is_ok()
        );
        assert!(Webhook::from_spec(&spec("https://hooks.example/h", &[]), dir.path()).is_ok());
        assert!(Webhook::from_spec(&spec("http://hooks.example/h", &[]), dir.path()).is_err());
        assert!(Webhook::from_spec(&spec("http://127.0.0.1:9/h", &["nope"]), dir.path()).is_err());
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        assert!(Webhook::from_spec(&spec("http://127.0.0.1:9/h", &[]), dir.path()).is_err());
    }
}
