//! An API-key service for rotation tests, driven by the test guest's `service` mode:
//! it keeps the set of live keys (`POST /keys` creates one, `PUT /keys` replaces the
//! key in `x-key` with the one in the body, `DELETE /keys` retires the key in `x-key`,
//! `GET /check` says whether the key in `x-key` is live), and can
//! be told to fail or stall a step, or to act on another system mid-step (a write to
//! OpenBao that makes the agent's next check-and-set lose).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::fixture::{Fixture, Reply, Seen};

/// A side effect run inside a request, before the answer.
pub(crate) type Hook = Box<dyn FnMut() + Send>;

#[derive(Default)]
struct Inner {
    live: BTreeSet<String>,
    next: u64,
    /// Key creations that reached the service (counted before any stall).
    begun: u32,
    created: Vec<String>,
    retired: Vec<String>,
    fail_create: u32,
    reject_create: u32,
    fail_check_new: u32,
    on_create: Option<Hook>,
    on_check_new: Option<Hook>,
    stall_create: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    stall_check_new: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    original: BTreeSet<String>,
    revoked: BTreeSet<String>,
}

/// The running service.
pub(crate) struct Service {
    inner: Arc<Mutex<Inner>>,
    fixture: Fixture,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits (up to a minute) for the test to release a stalled request.
fn stall(slot: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>) {
    if let Some((reached, release)) = slot {
        let _ = reached.send(());
        let _ = release.recv_timeout(Duration::from_secs(60));
    }
}

impl Service {
    /// Starts the service with one live key, `original`.
    pub(crate) fn start(original: &str) -> anyhow::Result<Service> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        {
            let mut i = lock(&inner);
            i.live.insert(original.to_owned());
            i.original.insert(original.to_owned());
        }
        let state = Arc::clone(&inner);
        let fixture = Fixture::start(move |req: &Seen| {
            let key = req.header("x-key").unwrap_or_default().to_owned();
            match (req.method.as_str(), req.path.as_str()) {
                ("POST", "/keys") => {
                    let (hook, stalled) = {
                        let mut i = lock(&state);
                        i.begun += 1;
                        (i.on_create.take(), i.stall_create.take())
                    };
                    stall(stalled);
                    if let Some(mut hook) = hook {
                        hook();
                    }
                    let mut i = lock(&state);
                    if i.fail_create > 0 {
                        i.fail_create -= 1;
                        return Reply::json(503, json!({"error": "injected failure"}));
                    }
                    if i.reject_create > 0 {
                        i.reject_create -= 1;
                        return Reply::json(403, json!({"error": "injected refusal"}));
                    }
                    i.next += 1;
                    let key = format!("key-{}-{}", i.next, std::process::id());
                    i.live.insert(key.clone());
                    i.created.push(key.clone());
                    Reply::json(200, json!({ "key": key }))
                }
                ("PUT", "/keys") => {
                    // A password set in place (like `ALTER ROLE`): the current key
                    // stops working and the one in the body takes its place.
                    let Some(new_key) = serde_json::from_slice::<serde_json::Value>(&req.body)
                        .ok()
                        .and_then(|v| v["key"].as_str().map(str::to_owned))
                    else {
                        return Reply::json(400, json!({"error": "no key in the body"}));
                    };
                    let stalled = {
                        let mut i = lock(&state);
                        i.begun += 1;
                        i.stall_create.take()
                    };
                    stall(stalled);
                    let mut i = lock(&state);
                    i.live.remove(&key);
                    i.live.insert(new_key.clone());
                    i.created.push(new_key);
                    Reply::json(200, json!({}))
                }
                ("DELETE", "/keys") => {
                    let mut i = lock(&state);
                    i.retired.push(key.clone());
                    if i.live.remove(&key) {
                        Reply::json(200, json!({}))
                    } else {
                        Reply::json(404, json!({"error": "no such key"}))
                    }
                }
                ("GET", "/check") => {
                    let is_new = !lock(&state).original.contains(&key);
                    if is_new {
                        let (hook, stalled) = {
                            let mut i = lock(&state);
                            (i.on_check_new.take(), i.stall_check_new.take())
                        };
                        stall(stalled);
                        if let Some(mut hook) = hook {
                            hook();
                        }
                        let mut i = lock(&state);
                        if i.fail_check_new > 0 {
                            i.fail_check_new -= 1;
                            return Reply::json(401, json!({"error": "injected rejection"}));
                        }
                    }
                    if lock(&state).revoked.contains(&key) {
                        return Reply::json(403, json!({"error": "key revoked"}));
                    }
                    if lock(&state).live.contains(&key) {
                        Reply::json(200, json!({"valid": true}))
                    } else {
                        Reply::json(401, json!({"error": "unknown key"}))
                    }
                }
                _ => Reply::text(404, "no such route"),
            }
        })?;
        Ok(Service { inner, fixture })
    }

    /// The base URL for the guest's `service` config.
    pub(crate) fn url(&self) -> String {
        self.fixture.url()
    }

    /// `http://127.0.0.1:PORT`, for `[[plugin]] http`.
    pub(crate) fn grant(&self) -> String {
        self.fixture.grant()
    }

    /// Whether `key` is live.
    pub(crate) fn is_live(&self, key: &str) -> bool {
        lock(&self.inner).live.contains(key)
    }

    /// Key creations that have reached the service so far, answered or not (a
    /// stalled one counts).
    pub(crate) fn creations_begun(&self) -> u32 {
        lock(&self.inner).begun
    }

    /// Keys created so far.
    pub(crate) fn created(&self) -> Vec<String> {
        lock(&self.inner).created.clone()
    }

    /// Keys retired so far (including retire calls for keys already gone).
    pub(crate) fn retired(&self) -> Vec<String> {
        lock(&self.inner).retired.clone()
    }

    /// Makes `key` live at the service (an operator created it there).
    pub(crate) fn allow(&self, key: &str) {
        lock(&self.inner).live.insert(key.to_owned());
    }

    /// Revokes `key` at the service: checks answer 403 from now on.
    pub(crate) fn revoke(&self, key: &str) {
        let mut i = lock(&self.inner);
        i.live.remove(key);
        i.revoked.insert(key.to_owned());
    }

    /// Fails the next `n` key creations with 503 (rotation step 1).
    pub(crate) fn fail_create(&self, n: u32) {
        lock(&self.inner).fail_create = n;
    }

    /// Refuses the next `n` key creations with 403 (the guest answers `rejected`).
    pub(crate) fn reject_create(&self, n: u32) {
        lock(&self.inner).reject_create = n;
    }

    /// Rejects the next `n` checks of keys created here (rotation step 3).
    pub(crate) fn fail_check_of_new_keys(&self, n: u32) {
        lock(&self.inner).fail_check_new = n;
    }

    /// Runs `hook` during the next key creation, before answering.
    pub(crate) fn on_create(&self, hook: Hook) {
        lock(&self.inner).on_create = Some(hook);
    }

    /// Runs `hook` during the next check of a key created here.
    pub(crate) fn on_check_of_new_key(&self, hook: Hook) {
        lock(&self.inner).on_check_new = Some(hook);
    }

    /// Stalls the next key creation until released; returns (reached, release).
    pub(crate) fn stall_create(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        lock(&self.inner).stall_create = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    /// Stalls the next check of a key created here until released.
    pub(crate) fn stall_check_of_new_key(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        lock(&self.inner).stall_check_new = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }
}

/// A blocking HTTP/1.1 request to OpenBao, for hooks that run inside the fixture's
/// thread. Returns the status code.
pub(crate) fn bao_blocking(
    address: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> u16 {
    let authority = address.trim_start_matches("http://").to_owned();
    let Ok(mut stream) = std::net::TcpStream::connect(&authority) else {
        return 0;
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /v1/{path} HTTP/1.1\r\nhost: {authority}\r\nx-vault-token: {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
