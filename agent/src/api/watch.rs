//! `GET /v1/watch?prefix=P`: server-sent events for changes under a prefix.
//!
//! Apps hold this open to reload when a secret they use changes. Each event names
//! the path, the version and what happened (`updated`, `deleted`, `rotated`, …),
//! never a value, and only for paths the caller may read or list. A watcher that
//! falls behind gets a `lagged` event and should re-read what it uses. A comment
//! line every 15 seconds keeps idle connections and proxies alive. When the agent
//! stops, every stream gets a last `shutdown` event and ends, so the drain does not
//! wait for streams that never end by themselves and watchers know to reconnect.
//!
//! One identity holds at most `limits.max_watchers_per_identity` streams at once
//! ([`Watchers`]); past that a watch gets `429 too_many_watchers`, so one app cannot
//! take every connection the agent has for itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::broadcast::error::RecvError;

use super::query::prefix_param;
use super::trail::deny;
use super::{ApiError, Body, Conn, State};
use crate::policy::{Decision, Operation};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Watch streams open per identity, each at most the configured number.
#[derive(Debug)]
pub struct Watchers {
    max: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
    /// Turns true when the agent stops: every stream says `shutdown` and ends.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Watchers {
    /// At most `max` streams per identity.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends every stream, open and to come, with a `shutdown` event.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn take(self: &Arc<Self>, identity: &Arc<str>) -> Option<WatchSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(identity.clone()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            watchers: self.clone(),
            identity: identity.clone(),
        })
    }
}

/// One open stream; given back when the stream ends.
struct WatchSlot {
    watchers: Arc<Watchers>,
    identity: Arc<str>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut held = self
            .watchers
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.identity);
            }
        }
    }
}

pub(super) async fn watch(
    state: &Arc<State>,
    conn: &Arc<Conn>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let prefix = prefix_param(query)?;
    let policy = conn.policy();
    if !policy.may_list_under(&conn.peer, &prefix) && !policy.allows_any(Operation::Read) {
        let err = ApiError::forbidden("watch", &format!("prefix {:?}", prefix.as_str()));
        deny(state, conn, Operation::List, prefix.as_str(), &err).await;
        return Err(err);
    }
    let Some(slot) = state.watchers.take(&conn.peer.id) else {
        let err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            super::error::Code::TooManyWatchers,
            format!(
                "this identity holds {} watch streams already",
                state.watchers.max
            ),
        );
        deny(state, conn, Operation::List, prefix.as_str(), &err).await;
        return Err(err);
    };
    let mut rx = state.events.subscribe();
    let mut closing = state.watchers.closing.subscribe();
    let (tx, body) = Body::channel(16);
    let conn = conn.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let hello = format!(": watching {:?}\n\n", prefix.as_str());
        if tx.send(Bytes::from(hello)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        loop {
            let chunk = tokio::select! {
                got = rx.recv() => match got {
                    Ok(event) => {
                        if !prefix.matches(&event.path) {
                            continue;
                        }
                        let visible = [Operation::Read, Operation::List].into_iter().any(|op| {
                            conn.policy().check(&conn.peer, op, &event.path) == Decision::Allow
                        });
                        if !visible {
                            continue;
                        }
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        format!("event: {}\ndata: {data}\n\n", event.kind.as_str())
                    }
                    Err(RecvError::Lagged(missed)) => {
                        format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => ": keep-alive\n\n".to_owned(),
                () = async { drop(closing.wait_for(|c| *c).await) } => {
                    let last = "event: shutdown\ndata: {\"reason\":\"the agent is stopping\"}\n\n";
                    let _ = tx.send(Bytes::from(last)).await;
                    return;
                }
                _ = tx.closed() => return,
            };
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
