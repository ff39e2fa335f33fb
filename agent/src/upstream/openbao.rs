//! OpenBao and HashiCorp Vault: the KV version 2 secrets engine, and Transit.
//!
//! [`OpenBao`] implements [`Upstream`] over the KV v2 HTTP API under one mount:
//! `GET data/{path}` (read); a recursive walk of `LIST detailed-metadata/{dir}`, which
//! OpenBao answers with every key's versions, so a poll costs one request per folder
//! (list; on HashiCorp Vault, which lacks it, `LIST metadata/{dir}` gives names only
//! and each version costs one `GET metadata/{path}`, fetched with bounded
//! concurrency); `GET metadata/{path}` (metadata); `POST data/{path}` with
//! `options.cas` (write), then `PATCH metadata/{path}` with latchkey's
//! `custom_metadata` entries ([`super::meta`]); and `DELETE metadata/{path}` (delete
//! all versions). Agent
//! paths map to KV paths through a [`PathTemplate`] (e.g. `tenants/{tenant}/{path}`).
//!
//! Version numbers are the KV version numbers (1, 2, 3, …); `updated_at` is the
//! creation time of the current version. A secret whose current version is deleted
//! or destroyed reads as absent, and is listed as a tombstone.
//!
//! Requests go through `transport` (several addresses, failover, a circuit breaker per
//! address) and carry the token that `auth` keeps alive; a 403 makes the client log in
//! again once and retry, which covers a token that expired or was revoked. Response
//! bodies are parsed here and never logged or put into errors.
//!
//! [`TransitWrapper`] wraps and unwraps the agent's data key with Transit
//! `encrypt`/`decrypt` under a named key, so the key-encryption key never leaves
//! OpenBao.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use self::auth::{Auth, LoginMethod, Source};
use self::transport::{Idempotency, Reply, Transport};
use super::breaker::BreakerSettings;
use super::config::{OpenBaoAuthConfig, OpenBaoConfig};
use super::http::{self, HttpSettings};
use super::template::PathTemplate;
use super::{Error, RemoteMeta, RemoteSecret, Upstream};
use crate::path::{Prefix, SecretPath};
use crate::secret::{Fields, SecretBytes, SecretString};
use crate::store;

mod auth;
mod transport;

/// How many metadata requests a list keeps in flight.
const LIST_CONCURRENCY: usize = 16;

/// A KV v2 mount on an OpenBao / Vault cluster. Cheap to clone (shared state).
#[derive(Clone)]
pub struct OpenBao {
    inner: Arc<Inner>,
}

struct Inner {
    /// Metadata requests one list keeps in flight.
    list_concurrency: usize,
    name: String,
    mount: String,
    template: PathTemplate,
    transport: Transport,
    auth: Auth,
    /// Whether `detailed-metadata` listing works: `DETAILED_*`.
    detailed: AtomicU8,
    /// The token was refused `patch` on `metadata/*` once: latchkey's metadata is
    /// not recorded (said once), and no write pays for a refused request again.
    meta_denied: std::sync::atomic::AtomicBool,
    /// The `transit` section: `(mount, key)`.
    transit: Option<(String, String)>,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("name", &self.inner.name)
            .field("mount", &self.inner.mount)
            .finish_non_exhaustive()
    }
}

impl OpenBao {
    /// Builds a client from its config section. No request is sent until the first
    /// call (or [`OpenBao::login`]), so the agent starts while OpenBao is down.
    pub fn from_config(config: &OpenBaoConfig) -> Result<Self, Error> {
        let name = config.name.as_str();
        let config_error = |reason: String| Error::Config {
            upstream: name.to_owned(),
            reason,
            source: None,
        };
        check_mount("mount", &config.mount).map_err(config_error)?;
        let template = PathTemplate::parse(&config.path_template, config.tenant.as_deref())
            .map_err(|e| Error::Config {
                upstream: name.to_owned(),
                reason: "path_template is not usable".to_owned(),
                source: Some(Box::new(e)),
            })?;
        let method = login_method(&config.auth).map_err(config_error)?;
        let client = http::client(
            name,
            &HttpSettings {
                ca_file: config.ca_file.clone(),
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
            },
        )?;
        let breaker = BreakerSettings {
            threshold: config.breaker_threshold.max(1),
            open_for: config.breaker_open_for,
            max_open_for: Duration::from_secs(60).max(config.breaker_open_for),
        };
        let transport = Transport::new(
            name,
            client,
            &config.addresses,
            config.namespace.as_deref(),
            breaker,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                list_concurrency: LIST_CONCURRENCY,
                name: name.to_owned(),
                mount: config.mount.trim_matches('/').to_owned(),
                template,
                transport,
                auth: Auth::new(name, method),
                detailed: AtomicU8::new(DETAILED_UNKNOWN),
                meta_denied: std::sync::atomic::AtomicBool::new(false),
                transit: config
                    .transit
                    .as_ref()
                    .map(|t| (t.mount.clone(), t.key.clone())),
            }),
        })
    }

    /// Logs in now (or checks the token) instead of at the first call.
    pub async fn login(&self) -> Result<(), Error> {
        self.inner.auth.renew_if_due(&self.inner.transport).await
    }

    /// Renews the token if two thirds of its lease have passed. The sync loop calls
    /// this on a timer so that an idle agent does not let its token expire.
    pub async fn renew_if_due(&self) -> Result<(), Error> {
        self.inner.auth.renew_if_due(&self.inner.transport).await
    }

    /// Renews the token now, whatever its age; returns the remaining lease
    /// (zero for a token that does not expire).
    pub async fn renew_now(&self) -> Result<Duration, Error> {
        self.inner.auth.renew_now(&self.inner.transport).await
    }

    /// Server addresses whose circuit breaker is open (skipped) right now.
    pub fn open_addresses(&self) -> Vec<String> {
        self.inner.transport.open_addresses()
    }

    /// The key wrapper of the config's `transit` section, if there is one.
    pub fn configured_transit(&self) -> Option<Result<TransitWrapper, Error>> {
        let (mount, key) = self.inner.transit.as_ref()?;
        Some(self.transit(mount, key))
    }

    /// Caps the metadata requests one list keeps in flight, so a list that costs a
    /// request per secret stays within the agent's sync budget. Call before cloning.
    pub fn with_list_concurrency(mut self, n: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.list_concurrency = n.clamp(1, LIST_CONCURRENCY);
        }
        self
    }

    /// A key wrapper that uses Transit key `key` under `mount`, with this client's
    /// addresses and login.
    pub fn transit(&self, mount: &str, key: &str) -> Result<TransitWrapper, Error> {
        let config_error = |reason: String| Error::Config {
            upstream: self.inner.name.clone(),
            reason,
            source: None,
        };
        check_mount("transit.mount", mount).map_err(config_error)?;
        check_mount("transit.key", key).map_err(config_error)?;
        let mount = mount.trim_matches('/').to_owned();
        Ok(TransitWrapper {
            bao: self.clone(),
            id: format!("transit:{}/{mount}/{key}", self.inner.name),
            mount,
            key: key.to_owned(),
        })
    }

    /// Sends an authenticated request; on a 403 logs in again once (when the login
    /// method can yield a new token) and retries.
    async fn call(
        &self,
        method: Method,
        api_path: &str,
        body: Option<&[u8]>,
        idempotency: Idempotency,
    ) -> Result<Reply, Error> {
        let inner = &*self.inner;
        let credential = inner.auth.credential(&inner.transport).await?;
        let reply = inner
            .transport
            .send(
                method.clone(),
                api_path,
                Some(&credential.header),
                body,
                idempotency,
            )
            .await?;
        if reply.status != StatusCode::FORBIDDEN || !inner.auth.can_relogin() {
            return Ok(reply);
        }
        tracing::info!(upstream = %inner.name, "token rejected; logging in again");
        inner.auth.invalidate(credential.generation).await;
        let credential = inner.auth.credential(&inner.transport).await?;
        inner
            .transport
            .send(
                method,
                api_path,
                Some(&credential.header),
                body,
                idempotency,
            )
            .await
    }

    fn kv(&self, kind: &str, remote: &str) -> String {
        format!("{}/{kind}/{remote}", self.inner.mount)
    }

    /// The error for a status this operation did not expect.
    fn unexpected(&self, operation: &str, reply: &Reply) -> Error {
        unexpected(&self.inner.name, operation, reply)
    }

    async fn fetch_meta(&self, remote: &str) -> Result<Option<(u64, i64)>, Error> {
        Ok(self.fetch_state(remote).await?.live())
    }

    /// What `GET metadata/{remote}` says of the current version.
    async fn fetch_state(&self, remote: &str) -> Result<Current, Error> {
        let reply = self
            .call(
                Method::GET,
                &self.kv("metadata", remote),
                None,
                Idempotency::Safe,
            )
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => return Ok(Current::Absent),
            StatusCode::OK => {}
            _ => return Err(self.unexpected(&format!("metadata {remote}"), &reply)),
        }
        let parsed: Envelope<MetadataData> = serde_json::from_slice(&reply.body)
            .map_err(|_| self.invalid_response(&format!("metadata {remote}")))?;
        parsed
            .data
            .state()
            .map_err(|()| self.invalid_response(&format!("metadata {remote}")))
    }

    fn invalid_response(&self, operation: &str) -> Error {
        Error::Invalid {
            upstream: self.inner.name.clone(),
            what: format!("response to {operation}"),
            reason: "not the expected JSON shape".to_owned(),
        }
    }

    /// Entries directly under a KV folder (names relative to `dir`, folders ending in
    /// `/`), each with its current version when the server told it along the way.
    ///
    /// OpenBao answers `LIST detailed-metadata/{dir}` with every key's metadata, so a
    /// poll costs one request per folder; HashiCorp Vault has no such endpoint (nor
    /// does a policy that grants only `metadata/*`), and then the plain `LIST
    /// metadata/{dir}` is used and each secret's version costs one more request. The
    /// first answer decides, and the choice is kept.
    async fn list_dir(&self, dir: &str) -> Result<Vec<(String, Listed)>, Error> {
        if self.inner.detailed.load(Ordering::Relaxed) != DETAILED_UNSUPPORTED {
            let api_path = format!("{}?list=true", self.kv("detailed-metadata", dir));
            let reply = self
                .call(Method::GET, &api_path, None, Idempotency::Safe)
                .await?;
            let known = self.inner.detailed.load(Ordering::Relaxed) == DETAILED_SUPPORTED;
            match reply.status {
                StatusCode::OK => {
                    self.inner
                        .detailed
                        .store(DETAILED_SUPPORTED, Ordering::Relaxed);
                    let parsed: Envelope<DetailedListData> = serde_json::from_slice(&reply.body)
                        .map_err(|_| self.invalid_response(&format!("list {dir}")))?;
                    let DetailedListData { keys, mut key_info } = parsed.data;
                    return keys
                        .into_iter()
                        .map(|key| {
                            if key.ends_with('/') {
                                return Ok((key, Listed::Unknown));
                            }
                            let meta = key_info
                                .remove(&key)
                                .ok_or(())
                                .and_then(|m| m.state())
                                .map_err(|()| self.invalid_response(&format!("list {dir}")))?;
                            Ok((key, Listed::Known(meta)))
                        })
                        .collect();
                }
                // An empty (or missing) folder: OpenBao answers 404 with no error text.
                StatusCode::NOT_FOUND if server_errors(&reply.body).is_empty() => {
                    return Ok(Vec::new())
                }
                _ if known => return Err(self.unexpected(&format!("list {dir}"), &reply)),
                _ => {
                    tracing::debug!(upstream = %self.inner.name, status = %reply.status,
                        "detailed-metadata not available; listing per secret");
                    self.inner
                        .detailed
                        .store(DETAILED_UNSUPPORTED, Ordering::Relaxed);
                }
            }
        }
        let api_path = format!("{}?list=true", self.kv("metadata", dir));
        let reply = self
            .call(Method::GET, &api_path, None, Idempotency::Safe)
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            StatusCode::OK => {
                let parsed: Envelope<ListData> = serde_json::from_slice(&reply.body)
                    .map_err(|_| self.invalid_response(&format!("list {dir}")))?;
                Ok(parsed
                    .data
                    .keys
                    .into_iter()
                    .map(|k| (k, Listed::Unknown))
                    .collect())
            }
            _ => Err(self.unexpected(&format!("list {dir}"), &reply)),
        }
    }

    /// Every secret (full remote name) under `remote_prefix`, walking folders.
    async fn list_names(&self, remote_prefix: &str) -> Result<Vec<(String, Listed)>, Error> {
        // List the folder that holds the prefix, keep the entries the prefix selects,
        // then walk the selected folders completely.
        let (dir, partial) = match remote_prefix.rfind('/') {
            Some(i) => remote_prefix.split_at(i + 1),
            None => ("", remote_prefix),
        };
        let mut names = Vec::new();
        let mut folders = Vec::new();
        for (entry, listed) in self.list_dir(dir).await? {
            let selected =
                partial.is_empty() || entry == partial || entry.strip_suffix('/') == Some(partial);
            if !selected {
                continue;
            }
            let full = format!("{dir}{entry}");
            if full.ends_with('/') {
                folders.push(full);
            } else {
                names.push((full, listed));
            }
        }
        // Walk the folders concurrently, within the list's concurrency limit.
        let mut walking = tokio::task::JoinSet::new();
        loop {
            while walking.len() < self.inner.list_concurrency {
                let Some(folder) = folders.pop() else { break };
                let this = self.clone();
                walking.spawn(async move {
                    let listed = this.list_dir(&folder).await;
                    (folder, listed)
                });
            }
            let Some(joined) = walking.join_next().await else {
                break;
            };
            let (folder, listed) = joined.map_err(|e| Error::Invalid {
                upstream: self.inner.name.clone(),
                what: "folder listing".to_owned(),
                reason: e.to_string(),
            })?;
            for (entry, listed) in listed? {
                let full = format!("{folder}{entry}");
                if full.ends_with('/') {
                    folders.push(full);
                } else {
                    names.push((full, listed));
                }
            }
        }
        Ok(names)
    }

    /// Sets latchkey's `custom_metadata` entries of `path` for `write` (a JSON merge
    /// patch: the expiry entry is removed when the write has none).
    async fn record_meta(&self, path: &SecretPath, write: &store::Write) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.meta_denied.load(Ordering::Relaxed) {
            return Ok(());
        }
        let remote = inner.template.remote(path);
        let kind = write.kind.as_deref().unwrap_or(store::DEFAULT_KIND);
        let body = serde_json::json!({
            "custom_metadata": {
                super::meta::BAO_KIND: kind,
                super::meta::BAO_EXPIRES_AT: write.expires_at.map(|t| t.to_string()),
            }
        });
        // Sent once, without the log-in-again on 403 of `call`: a 403 here is the
        // policy (no `patch` capability), not an expired token, which the data write
        // just before would have met.
        let credential = inner.auth.credential(&inner.transport).await?;
        let reply = inner
            .transport
            .send(
                Method::PATCH,
                &self.kv("metadata", &remote),
                Some(&credential.header),
                Some(body.to_string().as_bytes()),
                Idempotency::Safe,
            )
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::FORBIDDEN => {
                inner.meta_denied.store(true, Ordering::Relaxed);
                tracing::warn!(upstream = %inner.name,
                    "the token may not patch metadata/*: kinds and expiries are not recorded in OpenBao, and other agents see secrets written here as generic (grant `patch` on the mount's metadata/* to fix)");
                Ok(())
            }
            _ => Err(self.unexpected(&format!("metadata patch {path}"), &reply)),
        }
    }

    /// Whether listing uses OpenBao's `detailed-metadata` (one request per folder):
    /// `None` until the first list has found out.
    pub fn uses_detailed_metadata(&self) -> Option<bool> {
        match self.inner.detailed.load(Ordering::Relaxed) {
            DETAILED_SUPPORTED => Some(true),
            DETAILED_UNSUPPORTED => Some(false),
            _ => None,
        }
    }
}

/// What a folder listing said about one secret.
enum Listed {
    /// Its current version, from `detailed-metadata`.
    Known(Current),
    /// Not told; costs a metadata request.
    Unknown,
}

/// A listed secret's entry: its current version, or a tombstone when the listing
/// named it but its current version is deleted or destroyed (with that version's
/// number), or its metadata went between the listing and the metadata request
/// (deleted just now: number 0, the whole secret).
fn listed_meta(path: SecretPath, current: Current) -> RemoteMeta {
    match current {
        Current::Live(version, updated_at) => RemoteMeta::live(path, version, updated_at),
        Current::Deleted { version, destroyed } => {
            RemoteMeta::deleted_version(path, version, destroyed)
        }
        Current::Absent => RemoteMeta::tombstone(path),
    }
}

/// The current version of a KV v2 secret, as its metadata tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// Readable: its number and creation time.
    Live(u64, i64),
    /// Soft-deleted (`destroyed`: destroyed) while the metadata stays.
    Deleted { version: u64, destroyed: bool },
    /// No version (or no metadata at all).
    Absent,
}

impl Current {
    fn live(self) -> Option<(u64, i64)> {
        match self {
            Current::Live(v, t) => Some((v, t)),
            _ => None,
        }
    }
}

const DETAILED_UNKNOWN: u8 = 0;
const DETAILED_SUPPORTED: u8 = 1;
const DETAILED_UNSUPPORTED: u8 = 2;

#[async_trait]
impl Upstream for OpenBao {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn addresses(&self) -> Vec<crate::upstream::AddressState> {
        self.inner.transport.breakers()
    }

    async fn read(&self, path: &SecretPath) -> Result<Option<RemoteSecret>, Error> {
        let remote = self.inner.template.remote(path);
        let reply = self
            .call(
                Method::GET,
                &self.kv("data", &remote),
                None,
                Idempotency::Safe,
            )
            .await?;
        match reply.status {
            // 404 also when the current version is soft-deleted.
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::OK => {}
            _ => return Err(self.unexpected(&format!("read {path}"), &reply)),
        }
        let parsed: Envelope<ReadData> = serde_json::from_slice(&reply.body)
            .map_err(|_| self.invalid_response(&format!("read {path}")))?;
        let Some(data) = parsed.data.data else {
            return Ok(None);
        };
        let meta = parsed.data.metadata;
        if meta.is_gone() {
            return Ok(None);
        }
        let (kind, expires_at) = super::meta::read(
            &meta.custom_metadata.unwrap_or_default(),
            super::meta::BAO_KIND,
            super::meta::BAO_EXPIRES_AT,
        );
        Ok(Some(RemoteSecret {
            path: path.clone(),
            version: meta.version,
            fields: into_fields(data),
            updated_at: unix_seconds(&meta.created_time),
            ordered: true,
            kind,
            expires_at,
        }))
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<RemoteMeta>, Error> {
        let names = self
            .list_names(&self.inner.template.remote_prefix(prefix))
            .await?;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.inner.list_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        for (remote, listed) in names {
            let Some(path) = self.inner.template.local(&remote) else {
                continue;
            };
            if !prefix.matches(&path) {
                continue;
            }
            if let Listed::Known(meta) = listed {
                out.push(listed_meta(path, meta));
                continue;
            }
            let this = self.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let meta = this.fetch_state(&remote).await?;
                Ok::<_, Error>(listed_meta(path, meta))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let meta = joined.map_err(|e| Error::Invalid {
                upstream: self.inner.name.clone(),
                what: "list".to_owned(),
                reason: format!("metadata task failed: {e}"),
            })??;
            out.push(meta);
        }
        Ok(out)
    }

    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, Error> {
        let remote = self.inner.template.remote(path);
        Ok(self
            .fetch_meta(&remote)
            .await?
            .map(|(version, updated_at)| RemoteMeta::live(path.clone(), version, updated_at)))
    }

    /// The data first (with its check-and-set), then latchkey's entries of the
    /// secret's `custom_metadata` ([`super::meta`]) as a merge patch, which leaves
    /// other tools' entries alone. The version is acknowledged once the data is
    /// written: metadata that cannot be set is said once, not fatal.
    async fn put(&self, path: &SecretPath, write: &store::Write) -> Result<u64, Error> {
        let version = self.write(path, &write.fields, write.cas).await?;
        if let Err(e) = self.record_meta(path, write).await {
            tracing::warn!(upstream = %self.inner.name, path = %path, error = %e,
                "cannot record kind and expiry in the secret's custom_metadata; other agents will see it as generic");
        }
        Ok(version)
    }

    async fn write(
        &self,
        path: &SecretPath,
        fields: &Fields,
        cas: Option<u64>,
    ) -> Result<u64, Error> {
        let remote = self.inner.template.remote(path);
        let body = Zeroizing::new(
            serde_json::to_vec(&WriteBody {
                options: cas.map(|cas| CasOptions { cas }),
                data: fields.exposed(),
            })
            .map_err(|_| Error::Invalid {
                upstream: self.inner.name.clone(),
                what: format!("write {path}"),
                reason: "fields cannot be encoded".to_owned(),
            })?,
        );
        let reply = self
            .call(
                Method::POST,
                &self.kv("data", &remote),
                Some(&body),
                Idempotency::Unsafe,
            )
            .await?;
        match reply.status {
            StatusCode::OK => {
                let parsed: Envelope<WriteData> = serde_json::from_slice(&reply.body)
                    .map_err(|_| self.invalid_response(&format!("write {path}")))?;
                Ok(parsed.data.version)
            }
            StatusCode::BAD_REQUEST
                if cas.is_some() && server_errors(&reply.body).contains("check-and-set") =>
            {
                let current = match self.fetch_meta(&remote).await {
                    Ok(meta) => Some(meta.map_or(0, |(v, _)| v)),
                    Err(_) => None,
                };
                Err(Error::Conflict {
                    path: path.clone(),
                    expected: cas.unwrap_or_default(),
                    current,
                })
            }
            _ => Err(self.unexpected(&format!("write {path}"), &reply)),
        }
    }

    async fn delete(&self, path: &SecretPath) -> Result<Option<bool>, Error> {
        let remote = self.inner.template.remote(path);
        let reply = self
            .call(
                Method::DELETE,
                &self.kv("metadata", &remote),
                None,
                Idempotency::Safe,
            )
            .await?;
        match reply.status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&format!("delete {path}"), &reply)),
        }
    }
}

/// Wraps and unwraps the agent's data key with OpenBao / Vault Transit.
///
/// `wrap` sends the key to `POST {mount}/encrypt/{key}` and returns the ciphertext
/// (`vault:v1:…`) as bytes to store beside the cache; `unwrap` sends it back to
/// `decrypt`. The Transit key itself never leaves the server. Made by
/// [`OpenBao::transit`]; uses that client's addresses, failover and login.
#[derive(Clone, Debug)]
pub struct TransitWrapper {
    bao: OpenBao,
    mount: String,
    key: String,
    id: String,
}

impl TransitWrapper {
    /// The Transit key name.
    pub fn key_name(&self) -> &str {
        &self.key
    }

    /// A stable id for this key-encryption key, `transit:{upstream}/{mount}/{key}`, to
    /// store beside the wrapped data key (the shape `crypto::KeyWrapper::id` asks
    /// for). Rotating the Transit key keeps the id: Transit still decrypts what older
    /// key versions wrapped.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` under the Transit key; returns the ciphertext text's bytes.
    pub async fn wrap(&self, plaintext: &SecretBytes) -> Result<Vec<u8>, Error> {
        let encoded =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plaintext.expose()));
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "plaintext": encoded.as_str() }))
                .map_err(|_| self.invalid("encrypt request"))?,
        );
        let data: EncryptData = self.transit_call("encrypt", &body).await?;
        Ok(data.ciphertext.into_bytes())
    }

    /// Decrypts what [`TransitWrapper::wrap`] returned.
    pub async fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        let ciphertext = std::str::from_utf8(wrapped).map_err(|_| self.invalid("wrapped key"))?;
        let body = serde_json::to_vec(&serde_json::json!({ "ciphertext": ciphertext }))
            .map_err(|_| self.invalid("decrypt request"))?;
        let data: DecryptData = self.transit_call("decrypt", &body).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.plaintext.expose())
            .map_err(|_| self.invalid("decrypt response"))?;
        Ok(SecretBytes::new(bytes))
    }

    /// `POST {mount}/{op}/{key}` with `body` (`op` is `encrypt` or `decrypt`); the
    /// `data` of a 200 answer.
    async fn transit_call<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        body: &[u8],
    ) -> Result<T, Error> {
        let api_path = format!("{}/{op}/{}", self.mount, self.key);
        let reply = self
            .bao
            .call(Method::POST, &api_path, Some(body), Idempotency::Safe)
            .await?;
        if reply.status != StatusCode::OK {
            return Err(self
                .bao
                .unexpected(&format!("transit {op} with {}", self.key), &reply));
        }
        let parsed: Envelope<T> = serde_json::from_slice(&reply.body)
            .map_err(|_| self.invalid(&format!("{op} response")))?;
        Ok(parsed.data)
    }

    fn invalid(&self, what: &str) -> Error {
        Error::Invalid {
            upstream: self.bao.inner.name.clone(),
            what: format!("transit {what}"),
            reason: format!("not usable with key {}", self.key),
        }
    }
}

fn check_mount(key: &str, value: &str) -> Result<(), String> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() || SecretPath::parse(trimmed).is_err() {
        return Err(format!("{key}: {value:?} is not a valid mount path"));
    }
    Ok(())
}

/// The login method an `auth` section names; exactly one source per secret.
fn login_method(auth: &OpenBaoAuthConfig) -> Result<LoginMethod, String> {
    Ok(match auth {
        OpenBaoAuthConfig::Token { token, token_file } => match (token, token_file) {
            (Some(t), None) => LoginMethod::Token(Source::Inline(t.clone())),
            (None, Some(f)) => LoginMethod::Token(Source::File(f.clone())),
            _ => return Err("auth: set exactly one of token and token_file".to_owned()),
        },
        OpenBaoAuthConfig::AppRole {
            mount,
            role_id_file,
            secret_id_file,
            secret_id,
        } => {
            check_mount("auth.mount", mount)?;
            let secret_id = match (secret_id, secret_id_file) {
                (Some(s), None) => Source::Inline(s.clone()),
                (None, Some(f)) => Source::File(f.clone()),
                _ => return Err("auth: set exactly one of secret_id and secret_id_file".to_owned()),
            };
            LoginMethod::AppRole {
                mount: mount.clone(),
                role_id_file: role_id_file.clone(),
                secret_id,
            }
        }
        OpenBaoAuthConfig::Jwt {
            mount,
            role,
            jwt_file,
        } => {
            check_mount("auth.mount", mount)?;
            LoginMethod::Jwt {
                mount: mount.clone(),
                role: role.clone(),
                jwt_file: jwt_file.clone(),
            }
        }
    })
}

/// Everything [`OpenBao::from_config`] would refuse, found without building a
/// client: what `latchkey check` reports for the section, each naming its key.
pub fn problems(config: &OpenBaoConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = check_mount("mount", &config.mount) {
        problems.push(format!("upstream.{e}"));
    }
    if let Err(e) = PathTemplate::parse(&config.path_template, config.tenant.as_deref()) {
        problems.push(format!("upstream.path_template: {e}"));
    }
    if let Err(e) = login_method(&config.auth) {
        problems.push(format!("upstream.{e}"));
    }
    if let Err(e) = transport::check_addresses(&config.addresses, config.namespace.as_deref()) {
        problems.push(format!("upstream.{e}"));
    }
    if let Some(transit) = &config.transit {
        for (key, value) in [
            ("transit.mount", &transit.mount),
            ("transit.key", &transit.key),
        ] {
            if let Err(e) = check_mount(key, value) {
                problems.push(format!("upstream.{e}"));
            }
        }
    }
    problems
}

fn unexpected(upstream: &str, operation: &str, reply: &Reply) -> Error {
    match reply.status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Error::Denied {
            upstream: upstream.to_owned(),
            operation: operation.to_owned(),
        },
        StatusCode::NOT_FOUND => Error::NotFound {
            upstream: upstream.to_owned(),
            what: operation.to_owned(),
        },
        status => Error::Invalid {
            upstream: upstream.to_owned(),
            what: operation.to_owned(),
            reason: match server_errors(&reply.body) {
                e if e.is_empty() => format!("server answered {status}"),
                e => format!("server answered {status}: {e}"),
            },
        },
    }
}

/// The `errors` array of an error answer, joined and cut short. OpenBao's error
/// texts describe the request (a path, a parameter), not secret values.
fn server_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let mut text = serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// KV allows any JSON value in a field; each keeps its type.
fn into_fields(data: BTreeMap<String, serde_json::Value>) -> Fields {
    let mut fields = Fields::new();
    for (name, value) in data {
        fields.insert_value(name, value);
    }
    fields
}

/// Seconds since the epoch of an RFC 3339 timestamp; 0 when absent or unreadable.
fn unix_seconds(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct ReadData {
    data: Option<BTreeMap<String, serde_json::Value>>,
    metadata: VersionMeta,
}

#[derive(Deserialize)]
struct VersionMeta {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
    /// The secret's `custom_metadata` (in a read's answer only).
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
}

impl VersionMeta {
    fn is_gone(&self) -> bool {
        self.destroyed || !self.deletion_time.is_empty()
    }
}

#[derive(Deserialize)]
struct MetadataData {
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    versions: BTreeMap<String, VersionMeta>,
}

impl MetadataData {
    /// The current version and its creation time; `None` if there is none or it is
    /// deleted or destroyed; `Err` if the answer contradicts itself.
    fn state(&self) -> Result<Current, ()> {
        if self.current_version == 0 {
            return Ok(Current::Absent);
        }
        let current = self
            .versions
            .get(&self.current_version.to_string())
            .ok_or(())?;
        if current.is_gone() {
            return Ok(Current::Deleted {
                version: self.current_version,
                destroyed: current.destroyed,
            });
        }
        Ok(Current::Live(
            self.current_version,
            unix_seconds(&current.created_time),
        ))
    }
}

#[derive(Deserialize)]
struct DetailedListData {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    key_info: BTreeMap<String, MetadataData>,
}

#[derive(Deserialize)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct WriteData {
    version: u64,
}

#[derive(Serialize)]
struct WriteBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<CasOptions>,
    data: crate::secret::ExposedFields<'a>,
}

#[derive(Serialize)]
struct CasOptions {
    cas: u64,
}

#[derive(Deserialize)]
struct EncryptData {
    ciphertext: String,
}

#[derive(Deserialize)]
struct DecryptData {
    plaintext: SecretString,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_string_kv_values_become_json_text() {
        let data: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"user":"app","port":5432,"tags":["a"]}"#).expect("json");
        let fields = into_fields(data);
        assert_eq!(fields.get("user").map(|v| v.expose()), Some("app"));
        assert_eq!(fields.get("port").map(|v| v.expose()), Some("5432"));
        assert_eq!(fields.get("tags").map(|v| v.expose()), Some(r#"["a"]"#));
    }

    #[test]
    fn parses_kv_timestamps() {
        assert_eq!(
            unix_seconds("2024-01-02T03:04:05.123456789Z"),
            1_704_164_645
        );
        assert_eq!(unix_seconds(""), 0);
    }

    #[test]
    fn server_errors_are_cut_short() {
        let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(500));
        assert_eq!(server_errors(long.as_bytes()).len(), 200);
        assert_eq!(
            server_errors(
                br#"{"errors":["check-and-set parameter did not match the current version"]}"#
            ),
            "check-and-set parameter did not match the current version"
        );
    }

    #[test]
    fn deleted_or_destroyed_versions_are_gone() {
        let live: VersionMeta = serde_json::from_str(
            r#"{"version":1,"created_time":"","deletion_time":"","destroyed":false}"#,
        )
        .expect("json");
        assert!(!live.is_gone());
        let deleted: VersionMeta = serde_json::from_str(
            r#"{"version":1,"created_time":"","deletion_time":"2024-01-01T00:00:00Z","destroyed":false}"#,
        )
        .expect("json");
        assert!(deleted.is_gone());
    }
}
