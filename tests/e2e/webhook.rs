//! Webhook sinks: events POSTed as JSON with an HMAC signature, retried on failure.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::Agent;

pub(crate) const KEY: &str = "webhook-test-signing-key-0123456789";

/// One received POST: the signature header and the body.
pub(crate) struct Received {
    pub(crate) signature: String,
    pub(crate) body: Vec<u8>,
}

/// A loopback receiver that answers 500 to the first `fail_first` requests, then 200.
pub(crate) async fn receiver(fail_first: usize) -> anyhow::Result<(u16, mpsc::Receiver<Received>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut served = 0usize;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            let (head_end, length) = loop {
                let Ok(n) = stream.read(&mut chunk).await else {
                    break (0, 0);
                };
                if n == 0 {
                    break (0, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (at + 4, length);
                }
            };
            if head_end == 0 {
                continue;
            }
            while buf.len() < head_end + length {
                let Ok(n) = stream.read(&mut chunk).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let signature = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("latchkey-signature")
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default();
            served += 1;
            let status = if served <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            if served > fail_first {
                let body = buf[head_end..].to_vec();
                let _ = tx.send(Received { signature, body }).await;
            }
        }
    });
    Ok((port, rx))
}

pub(crate) fn verify(signature: &str, body: &[u8]) -> anyhow::Result<()> {
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .context("signature is not t=..,v1=..")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let expected = hex_decode(v1).context("v1 is not hex")?;
    ring::hmac::verify(&key, &message, &expected).map_err(|_| anyhow::anyhow!("bad signature"))
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[tokio::test]
async fn events_are_posted_signed_and_retried() -> anyhow::Result<()> {
    let (port, mut rx) = receiver(1).await?;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("hook.key");
    std::fs::write(&key_file, KEY)?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    let agent = Agent::builder()
        .append(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"updated\", \"deleted\"]\nsecret_file = {:?}\ntimeout = \"2s\"\nmax_attempts = 4\n",
            key_file.display().to_string()
        ))
        .start()
        .await?;
    let admin = agent.admin()?;
    admin
        .write("apps/web/db", json!({ "password": "never-in-a-webhook" }))
        .await?;

    // The first delivery gets a 500 and is retried.
    let got = crate::harness::within("the webhook", Duration::from_secs(10), rx.recv())
        .await?
        .context("receiver closed")?;
    verify(&got.signature, &got.body)?;
    let event: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(event["kind"], "updated");
    assert_eq!(event["path"], "apps/web/db");
    assert_eq!(event["version"], 1);
    assert_eq!(event["agent"], "latchkey.local");
    assert!(!String::from_utf8_lossy(&got.body).contains("never-in-a-webhook"));

    admin.delete("apps/web/db").await?;
    let got = crate::harness::within("the delete webhook", Duration::from_secs(10), rx.recv())
        .await?
        .context("receiver closed")?;
    verify(&got.signature, &got.body)?;
    assert_eq!(
        serde_json::from_slice::<Value>(&got.body)?["kind"],
        "deleted"
    );
    // A tampered body fails verification.
    assert!(verify(&got.signature, b"{\"kind\":\"rotated\"}").is_err());
    Ok(())
}

#[tokio::test]
async fn expiry_warnings_reach_webhooks_once() -> anyhow::Result<()> {
    let (port, mut rx) = receiver(0).await?;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("hook.key");
    std::fs::write(&key_file, KEY)?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    let mut agent = Agent::builder()
        .append(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"expiring\", \"expired\"]\nsecret_file = {:?}\n",
            key_file.display().to_string()
        ))
        .start()
        .await?;
    let admin = agent.admin()?;
    let in_ten_days = time_in(10 * 24 * 3600);
    let answer = admin
        .put(
            "apps/web/cert",
            json!({ "fields": { "pem": "x" }, "expires_at": in_ten_days }),
        )
        .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = crate::harness::within("the expiring webhook", Duration::from_secs(10), rx.recv())
        .await?
        .context("receiver closed")?;
    verify(&got.signature, &got.body)?;
    let event: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(event["kind"], "expiring");
    assert_eq!(event["path"], "apps/web/cert");

    // Restarting does not repeat a warning already sent.
    agent.restart().await?;
    admin
        .put(
            "apps/web/old",
            json!({ "fields": { "pem": "y" }, "expires_at": time_in(-60) }),
        )
        .await?;
    let got = crate::harness::within("the expired webhook", Duration::from_secs(10), rx.recv())
        .await?
        .context("receiver closed")?;
    let event: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(event["kind"], "expired", "{event}");
    assert_eq!(event["path"], "apps/web/old");
    // The warnings are in the audit trail too. Every pass looks at every secret and
    // records each warning it sends before the next: the pass that sent this one (and
    // the one at start before it) would have repeated the first warning already.
    agent
        .wait_for_audit("the expired warning", |r| {
            r["op"] == "expired" && r["path"] == "apps/web/old"
        })
        .await?;
    let warned: Vec<Value> = agent
        .audit_records()?
        .into_iter()
        .filter(|r| r["op"] == "expiring" && r["path"] == "apps/web/cert")
        .collect();
    assert_eq!(warned.len(), 1, "no repeated warning: {warned:#?}");
    if let Ok(more) = rx.try_recv() {
        bail!(
            "no repeated warning, but got {}",
            String::from_utf8_lossy(&more.body)
        );
    }
    Ok(())
}

/// RFC 3339 time `secs` from now.
fn time_in(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = now + secs;
    // Civil date from unix days (proleptic Gregorian), enough for a test.
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}
