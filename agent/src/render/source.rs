//! Where a render reads secrets from: the daemon's own [`Store`] (in-process, no
//! network), or a running agent over mTLS (`latchkey render` and `latchkey exec`,
//! which are clients: the daemon holds the store's lock).
//!
//! [`Source::fetch`] is synchronous because template functions are; it is always
//! called from a blocking thread (`spawn_blocking`), where the client source may
//! block on the async runtime.

use std::sync::Arc;

use serde::Deserialize;

use crate::client::{Client, Reply};
use crate::path::SecretPath;
use crate::secret::Fields;
use crate::store::{Selector, Store};

/// Why a secret could not be read (as opposed to: it does not exist).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error("store read failed")]
    Store(#[source] crate::store::Error),
    /// The agent could not be reached.
    #[error("agent request failed")]
    Client(#[source] crate::client::Error),
    /// The agent refused or failed the read.
    #[error("agent answered {status} {code}")]
    Status {
        /// HTTP status.
        status: u16,
        /// `error.code` of the answer.
        code: String,
    },
    /// The agent's answer was not a secret.
    #[error("the agent's answer is not a secret")]
    BadAnswer,
}

/// Reads the current version of a secret.
pub trait Source: Send + Sync {
    /// The fields of the current version, or `None` when the secret does not exist.
    /// Called from a blocking thread, once per secret per render pass.
    fn fetch(&self, path: &SecretPath) -> Result<Option<Fields>, Error>;
}

/// Reads straight from the daemon's store.
#[derive(Clone)]
pub struct StoreSource {
    store: Store,
}

impl StoreSource {
    /// Over a store.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Source for StoreSource {
    fn fetch(&self, path: &SecretPath) -> Result<Option<Fields>, Error> {
        let secret = self
            .store
            .get(path, Selector::Current)
            .map_err(Error::Store)?;
        Ok(secret.map(|s| s.fields.clone()))
    }
}

/// Reads from a running agent (`GET /v1/secrets/{path}`).
pub struct ClientSource {
    client: Arc<Client>,
    runtime: tokio::runtime::Handle,
}

impl ClientSource {
    /// Over a client; `runtime` runs its requests (fetch blocks on it).
    pub fn new(client: Arc<Client>, runtime: tokio::runtime::Handle) -> Self {
        Self { client, runtime }
    }
}

#[derive(Deserialize)]
struct Answer {
    fields: Fields,
}

/// Reads a secret's fields from the agent (async form, for callers on the runtime).
pub async fn fetch_async(client: &Client, path: &SecretPath) -> Result<Option<Fields>, Error> {
    let reply = client
        .get(&format!("/v1/secrets/{path}"))
        .await
        .map_err(Error::Client)?;
    parse(&reply)
}

fn parse(reply: &Reply) -> Result<Option<Fields>, Error> {
    match reply.status {
        200 => serde_json::from_slice::<Answer>(reply.body.expose())
            .map(|a| Some(a.fields))
            .map_err(|_| Error::BadAnswer),
        404 => Ok(None),
        status => Err(Error::Status {
            status,
            code: reply.error_code().unwrap_or_else(|| "unknown".to_owned()),
        }),
    }
}

impl Source for ClientSource {
    fn fetch(&self, path: &SecretPath) -> Result<Option<Fields>, Error> {
        self.runtime.block_on(fetch_async(&self.client, path))
    }
}

/// A fixed set of secrets in memory (tests and the benchmark).
#[derive(Default)]
pub struct MemorySource {
    secrets: std::sync::RwLock<std::collections::HashMap<SecretPath, Fields>>,
}

impl MemorySource {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) a secret.
    pub fn put(&self, path: SecretPath, fields: Fields) {
        if let Ok(mut map) = self.secrets.write() {
            map.insert(path, fields);
        }
    }

    /// Removes a secret.
    pub fn remove(&self, path: &SecretPath) {
        if let Ok(mut map) = self.secrets.write() {
            map.remove(path);
        }
    }
}

impl Source for MemorySource {
    fn fetch(&self, path: &SecretPath) -> Result<Option<Fields>, Error> {
        Ok(self.secrets.read().ok().and_then(|m| m.get(path).cloned()))
    }
}
