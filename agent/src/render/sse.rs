//! Follows the agent's `GET /v1/watch` server-sent-events stream and turns it into
//! [`Change`]s, for the client commands (`latchkey render` without `--once`,
//! `latchkey exec`).
//!
//! The stream carries paths and versions, never values. When it breaks, it is
//! reopened with backoff (0.2 s doubling to 10 s) and a [`Change::All`] is sent,
//! because events may have been missed in between; a `lagged` event means the same.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use super::runner::Change;
use crate::client::{encode_query_value, Client};
use crate::path::{Prefix, SecretPath};

const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Longest event block accepted (events are small JSON objects).
const MAX_EVENT: usize = 64 * 1024;

/// Kinds of events that may change a secret's value.
fn changes_values(kind: &str) -> bool {
    matches!(kind, "updated" | "deleted" | "rotated" | "refreshed")
}

/// Parses one SSE block (`event: x\ndata: {...}`) into a change, if it is one.
fn parse_block(block: &str) -> Option<Change> {
    let mut kind = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    if kind == "lagged" {
        return Some(Change::All);
    }
    if !changes_values(kind) {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&data).ok()?;
    let path = SecretPath::parse(json.get("path")?.as_str()?).ok()?;
    Some(Change::Path(path))
}

/// Follows the stream until `tx` is closed. `connected` fires once, when the first
/// stream is open (so a caller can read secrets after it and miss no change).
pub async fn follow(
    client: Arc<Client>,
    prefix: Prefix,
    tx: mpsc::Sender<Change>,
    mut connected: Option<oneshot::Sender<()>>,
) {
    let uri = format!("/v1/watch?prefix={}", encode_query_value(prefix.as_str()));
    let mut delay = RECONNECT_MIN;
    let mut first = true;
    loop {
        match client.stream(&uri).await {
            Ok((200, mut body)) => {
                if let Some(c) = connected.take() {
                    let _ = c.send(());
                }
                if !first && tx.send(Change::All).await.is_err() {
                    return;
                }
                first = false;
                delay = RECONNECT_MIN;
                tracing::debug!(prefix = prefix.as_str(), "watching for changes");
                let mut buf = String::new();
                loop {
                    let frame = tokio::select! {
                        f = body.frame() => f,
                        _ = tx.closed() => return,
                    };
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.push_str(&String::from_utf8_lossy(&data));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        if let Some(change) = parse_block(&block) {
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    if buf.len() > MAX_EVENT {
                        buf.clear();
                    }
                }
                tracing::warn!("the agent's change stream closed; reconnecting");
            }
            Ok((status, _)) => {
                tracing::warn!(status, "the agent refused the change stream; retrying");
            }
            Err(e) => {
                tracing::warn!(error = %super::runner::chain(&e), "cannot open the agent's change stream; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_into_changes() {
        let p = SecretPath::parse("apps/db").expect("p");
        assert_eq!(
            parse_block("event: updated\ndata: {\"kind\":\"updated\",\"path\":\"apps/db\",\"version\":2}\n\n"),
            Some(Change::Path(p))
        );
        assert_eq!(
            parse_block("event: lagged\ndata: {\"missed\":3}\n\n"),
            Some(Change::All)
        );
        assert_eq!(parse_block(": keep-alive\n\n"), None);
        assert_eq!(
            parse_block("event: validated\ndata: {\"path\":\"apps/db\"}\n\n"),
            None
        );
    }
}
