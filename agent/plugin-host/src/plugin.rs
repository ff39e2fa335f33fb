//! A loaded plugin and the calls the agent makes on it.
//!
//! Every call runs on a fresh instance made from the plugin's pre-instantiated
//! template, in a fresh `Store` with the plugin's limits: a memory cap, an epoch
//! deadline, the HTTP and SQL grants. The async methods run the (synchronous) wasm
//! call on tokio's blocking pool, so they never stall the agent's runtime.
//!
//! Results are two-layered: the outer [`CallError`] is a host fault or a hit limit
//! (trap, timeout, memory), the inner [`ProviderError`] is the plugin's own answer.
//! Credential values travel as [`SecretString`]; the plain strings the component
//! model needs exist only during the call and are wiped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::Store;
use zeroize::Zeroize;

use crate::bindings::{self, types as wit};
use crate::capability::http::{HttpGrant, HttpPolicy};
use crate::capability::sql::SqlAccess;
use crate::host::{HostInner, Limits};
use crate::manifest::Manifest;
use crate::secret::SecretString;
use crate::seed::Seed;
use crate::state::State;

/// An operation a provider may implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Check a credential against the service.
    Validate,
    /// Create a new credential (rotation).
    CreatePending,
    /// Revoke an old credential (rotation).
    Retire,
    /// Exchange a credential for a fresh one.
    Refresh,
}

impl Operation {
    /// The WIT name, e.g. `create-pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::CreatePending => "create-pending",
            Self::Retire => "retire",
            Self::Refresh => "refresh",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Operation {
    type Err = CallError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "validate" => Self::Validate,
            "create-pending" => Self::CreatePending,
            "retire" => Self::Retire,
            "refresh" => Self::Refresh,
            _ => return Err(CallError::UnknownOperation),
        })
    }
}

/// A credential crossing the plugin boundary. `Debug` never shows field values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    /// Credential kind, e.g. `api-key`.
    pub kind: String,
    /// Named fields; the values are secret.
    pub fields: Vec<(String, SecretString)>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Credential {
    /// A credential of `kind` with the given fields.
    pub fn new<I, K>(kind: impl Into<String>, fields: I) -> Self
    where
        I: IntoIterator<Item = (K, SecretString)>,
        K: Into<String>,
    {
        Self {
            kind: kind.into(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            expires_at: None,
        }
    }

    /// One field's value.
    pub fn field(&self, name: &str) -> Option<&SecretString> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn to_wire(&self) -> Wire {
        Wire(wit::Credential {
            kind: self.kind.clone(),
            fields: self
                .fields
                .iter()
                .map(|(name, value)| wit::Field {
                    name: name.clone(),
                    value: value.expose().to_owned(),
                })
                .collect(),
            expires_at: self.expires_at,
        })
    }

    fn from_wire(c: wit::Credential) -> Self {
        Self {
            kind: c.kind,
            fields: c
                .fields
                .into_iter()
                .map(|f| (f.name, SecretString::new(f.value)))
                .collect(),
            expires_at: c.expires_at,
        }
    }
}

/// A wire credential whose values are wiped when it is dropped.
struct Wire(wit::Credential);

impl Drop for Wire {
    fn drop(&mut self) {
        for f in &mut self.0.fields {
            f.value.zeroize();
        }
    }
}

/// One permission the service reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Permission {
    /// The service's name for it.
    pub name: String,
    /// Whether the credential holds it.
    pub granted: bool,
}

/// The answer of `validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Validation {
    /// Whether the service accepted the credential.
    pub valid: bool,
    /// Short explanation (no secrets).
    pub detail: String,
    /// Reported permissions.
    pub permissions: Vec<Permission>,
    /// Reported expiry.
    pub expires_at: Option<u64>,
}

/// What a provider says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    /// Provider name.
    pub name: String,
    /// Provider version.
    pub version: String,
    /// Credential kinds.
    pub kinds: Vec<String>,
    /// Implemented operations.
    pub operations: Vec<Operation>,
    /// HTTP authorities it says it needs.
    pub http_authorities: Vec<String>,
    /// SQL connections it says it needs.
    pub sql_connections: Vec<String>,
}

/// The plugin's own error answer (the WIT `provider-error`). The text is the plugin's;
/// it is meant to be free of secrets but comes from untrusted code, so it is kept out
/// of `Display` and read with [`ProviderError::detail`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The service refused the credential. Do not retry; roll back and alert.
    #[error("the service rejected the credential")]
    Rejected(String),
    /// Transient failure. Retry with backoff.
    #[error("the service is unavailable")]
    Unavailable(String),
    /// The host refused a capability. Do not retry; audit and alert.
    #[error("the host denied a capability the plugin needs")]
    Denied(String),
    /// Not implemented by this provider.
    #[error("the operation is not supported by the plugin")]
    Unsupported(String),
    /// The provider configuration is wrong.
    #[error("the provider configuration is invalid")]
    InvalidConfig(String),
}

impl ProviderError {
    /// Whether the scheduler should retry with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The plugin's explanation.
    pub fn detail(&self) -> &str {
        match self {
            Self::Rejected(s)
            | Self::Unavailable(s)
            | Self::Denied(s)
            | Self::Unsupported(s)
            | Self::InvalidConfig(s) => s,
        }
    }

    /// A stable short code (`rejected`, `unavailable`, …) for logs and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(_) => "rejected",
            Self::Unavailable(_) => "unavailable",
            Self::Denied(_) => "denied",
            Self::Unsupported(_) => "unsupported",
            Self::InvalidConfig(_) => "invalid-config",
        }
    }
}

impl From<wit::ProviderError> for ProviderError {
    fn from(e: wit::ProviderError) -> Self {
        match e {
            wit::ProviderError::Rejected(s) => Self::Rejected(s),
            wit::ProviderError::Unavailable(s) => Self::Unavailable(s),
            wit::ProviderError::Denied(s) => Self::Denied(s),
            wit::ProviderError::Unsupported(s) => Self::Unsupported(s),
            wit::ProviderError::InvalidConfig(s) => Self::InvalidConfig(s),
        }
    }
}

/// A plugin call failed on the host side: the plugin did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call ran past its wall-clock deadline and was interrupted.
    #[error("plugin {plugin} exceeded its deadline of {deadline:?}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        deadline: Duration,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("plugin {plugin} exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The guest trapped (a bug in the plugin, or a host function failed).
    #[error("plugin {plugin} trapped")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// wasmtime's error (trap code and wasm backtrace; no call arguments).
        #[source]
        source: wasmtime::Error,
    },
    /// No instance could be made (e.g. the instance pool is exhausted).
    #[error("cannot instantiate plugin {plugin}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
    /// The manifest does not declare this operation, so the host does not call it.
    #[error("plugin {plugin} does not declare operation {operation}")]
    NotDeclared {
        /// Plugin name.
        plugin: String,
        /// The operation.
        operation: Operation,
    },
    /// The credential's kind is not one the manifest declares, so the host does not
    /// pass it to the plugin.
    #[error("plugin {plugin} does not declare credential kind {kind}")]
    KindNotDeclared {
        /// Plugin name.
        plugin: String,
        /// The credential's kind (a name, never a value).
        kind: String,
    },
    /// An operation name that is not one of the four.
    #[error("unknown operation (expected validate, create-pending, retire or refresh)")]
    UnknownOperation,
    /// JSON given to [`Plugin::call_json`] does not have the expected shape.
    #[error("call arguments are not valid JSON of the expected shape")]
    BadArguments(#[source] serde_json::Error),
    /// The blocking task running the call was cancelled or panicked.
    #[error("plugin call task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl CallError {
    /// Whether the failure was a hit limit (deadline or memory) rather than a bug.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::MemoryLimit { .. })
    }
}

/// Result of one plugin call: host fault outside, plugin answer inside.
pub type CallResult<T> = Result<Result<T, ProviderError>, CallError>;

pub(crate) struct PluginInner {
    pub(crate) name: Arc<str>,
    pub(crate) manifest: Manifest,
    pub(crate) sha256: String,
    pub(crate) info: Option<ProviderInfo>,
    pub(crate) pre: bindings::ProviderPluginPre<State>,
    pub(crate) host: Arc<HostInner>,
    pub(crate) http: Arc<HttpGrant>,
    pub(crate) sql: Arc<[String]>,
    pub(crate) limits: Limits,
    pub(crate) source: crate::cache::Source,
    pub(crate) warnings: Vec<crate::Warning>,
}

/// Unix seconds as RFC 3339 (UTC), the one time format of every JSON answer.
fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// An instant in call arguments: RFC 3339 as answers write it, or unix seconds.
struct JsonTime(u64);

impl<'de> Deserialize<'de> for JsonTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Unix(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Unix(t) => Ok(JsonTime(t)),
            Raw::Text(text) => {
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
                    .map(JsonTime)
                    .ok_or_else(|| {
                        serde::de::Error::custom("expires_at is not RFC 3339 or unix seconds")
                    })
            }
        }
    }
}

/// A loaded plugin. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .field("sha256", &self.inner.sha256)
            .finish_non_exhaustive()
    }
}

/// What an operation answers, made from the guest's wire answer.
trait Answer: Sized {
    /// The WIT type the guest returns.
    type Wire;

    /// The secret values the wire answer carries, for scrubbing.
    fn wire_secrets(_wire: &Self::Wire) -> Vec<SecretString> {
        Vec::new()
    }

    /// The answer, with the guest's text in it scrubbed by `secrets`.
    fn from_answer(wire: Self::Wire, secrets: &CallSecrets) -> Self;
}

impl Answer for Validation {
    type Wire = wit::Validation;

    fn from_answer(v: wit::Validation, secrets: &CallSecrets) -> Self {
        Validation {
            valid: v.valid,
            detail: secrets.scrub(v.detail),
            permissions: v
                .permissions
                .into_iter()
                .map(|p| Permission {
                    name: secrets.scrub(p.name),
                    granted: p.granted,
                })
                .collect(),
            expires_at: v.expires_at,
        }
    }
}

impl Answer for Credential {
    type Wire = wit::Credential;

    /// The field values of the returned credential.
    fn wire_secrets(c: &wit::Credential) -> Vec<SecretString> {
        c.fields
            .iter()
            .map(|f| SecretString::new(f.value.clone()))
            .collect()
    }

    fn from_answer(c: wit::Credential, _: &CallSecrets) -> Self {
        Credential::from_wire(c)
    }
}

impl Answer for () {
    type Wire = ();

    fn from_answer((): (), _: &CallSecrets) -> Self {}
}

fn to_wire_config(config: &[(String, String)]) -> Vec<wit::Field> {
    config
        .iter()
        .map(|(name, value)| wit::Field {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

impl Plugin {
    /// The plugin's name (from its manifest).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The manifest the plugin was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The sha256 (hex) of the loaded `.wasm`.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether loading used a cached compiled artifact (no compilation).
    pub fn loaded_from_cache(&self) -> bool {
        self.inner.source == crate::cache::Source::Cached
    }

    /// Makes a fresh instance (with a fresh store and all limits) and drops it. Checks
    /// that the plugin can still be instantiated; benchmarks use it to time
    /// instantiation alone.
    pub fn instantiate_blocking(&self) -> Result<(), CallError> {
        let mut store = self.new_store();
        self.inner
            .pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|source| CallError::Instantiate {
                plugin: self.inner.name.to_string(),
                source,
            })
    }

    /// Times `n` warm `info` calls on one instance (for the benchmark's "trivial
    /// call" figure; production calls always use a fresh instance).
    #[doc(hidden)]
    pub fn time_warm_info_calls(&self, n: usize) -> Result<Vec<Duration>, CallError> {
        let mut store = self.new_store();
        let instance =
            self.inner
                .pre
                .instantiate(&mut store)
                .map_err(|source| CallError::Instantiate {
                    plugin: self.inner.name.to_string(),
                    source,
                })?;
        let guest = instance.latchkey_provider_provider();
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let info = guest
                .call_info(&mut store)
                .map_err(|source| self.classify(&store, source))?;
            times.push(start.elapsed());
            drop(info);
        }
        Ok(times)
    }

    /// What the plugin answered to `info` at load time.
    pub fn info(&self) -> Option<&ProviderInfo> {
        self.inner.info.as_ref()
    }

    /// What the load noticed and did not refuse (logged once at load).
    pub fn warnings(&self) -> &[crate::Warning] {
        &self.inner.warnings
    }

    /// Calls `info` now, on a fresh instance (blocking; used at load time).
    pub fn info_blocking(&self) -> Result<ProviderInfo, CallError> {
        self.run(|store, guest| guest.call_info(store))
            .map(info_from_wire)
    }

    /// Checks `cred` against the real service.
    pub async fn validate(
        &self,
        config: Vec<(String, String)>,
        cred: Credential,
    ) -> CallResult<Validation> {
        self.blocking(move |p| p.validate_blocking(&config, &cred))
            .await
    }

    /// Blocking form of [`Plugin::validate`] (for the CLI, benchmarks and tests).
    pub fn validate_blocking(
        &self,
        config: &[(String, String)],
        cred: &Credential,
    ) -> CallResult<Validation> {
        self.call_op(Operation::Validate, config, cred, None, |g, s, c, w| {
            g.call_validate(s, c, w)
        })
    }

    /// Creates a new credential next to `current` (rotation step 1).
    pub async fn create_pending(
        &self,
        config: Vec<(String, String)>,
        current: Credential,
    ) -> CallResult<Credential> {
        self.create_pending_seeded(config, current, None).await
    }

    /// [`Plugin::create_pending`] with the guest's secure randomness drawn from
    /// `seed`: the same seed and inputs make the same choices again (see [`Seed`]).
    pub async fn create_pending_seeded(
        &self,
        config: Vec<(String, String)>,
        current: Credential,
        seed: Option<Seed>,
    ) -> CallResult<Credential> {
        self.blocking(move |p| p.create_pending_with(&config, &current, seed.as_ref()))
            .await
    }

    /// Blocking form of [`Plugin::create_pending`].
    pub fn create_pending_blocking(
        &self,
        config: &[(String, String)],
        current: &Credential,
    ) -> CallResult<Credential> {
        self.create_pending_with(config, current, None)
    }

    fn create_pending_with(
        &self,
        config: &[(String, String)],
        current: &Credential,
        seed: Option<&Seed>,
    ) -> CallResult<Credential> {
        self.call_op(
            Operation::CreatePending,
            config,
            current,
            seed,
            |g, s, c, w| g.call_create_pending(s, c, w),
        )
    }

    /// Revokes `previous` at the service.
    pub async fn retire(
        &self,
        config: Vec<(String, String)>,
        previous: Credential,
    ) -> CallResult<()> {
        self.blocking(move |p| p.retire_blocking(&config, &previous))
            .await
    }

    /// Blocking form of [`Plugin::retire`].
    pub fn retire_blocking(
        &self,
        config: &[(String, String)],
        previous: &Credential,
    ) -> CallResult<()> {
        self.call_op(Operation::Retire, config, previous, None, |g, s, c, w| {
            g.call_retire(s, c, w)
        })
    }

    /// Exchanges `cred` for a fresh credential.
    pub async fn refresh(
        &self,
        config: Vec<(String, String)>,
        cred: Credential,
    ) -> CallResult<Credential> {
        self.blocking(move |p| p.refresh_blocking(&config, &cred))
            .await
    }

    /// Blocking form of [`Plugin::refresh`].
    pub fn refresh_blocking(
        &self,
        config: &[(String, String)],
        cred: &Credential,
    ) -> CallResult<Credential> {
        self.call_op(Operation::Refresh, config, cred, None, |g, s, c, w| {
            g.call_refresh(s, c, w)
        })
    }

    /// Runs one operation with JSON arguments and returns a JSON answer: what
    /// `latchkey plugin call FILE --op OP --config JSON --cred JSON` prints.
    ///
    /// `config` is an object of strings; `cred` is
    /// `{"kind": "...", "fields": {"name": "value"}, "expires_at": 123}`. The answer is
    /// `{"ok": …}` or `{"error": {"code": "rejected", "detail": "…"}}`; returned
    /// credentials are printed in clear because that is the command's purpose.
    /// Blocking.
    pub fn call_json(
        &self,
        op: Operation,
        config: &str,
        cred: &str,
    ) -> Result<serde_json::Value, CallError> {
        #[derive(Deserialize)]
        struct CredJson {
            kind: String,
            #[serde(default)]
            fields: std::collections::BTreeMap<String, SecretString>,
            #[serde(default)]
            expires_at: Option<JsonTime>,
        }
        let config: std::collections::BTreeMap<String, String> =
            serde_json::from_str(config).map_err(CallError::BadArguments)?;
        let config: Vec<(String, String)> = config.into_iter().collect();
        let c: CredJson = serde_json::from_str(cred).map_err(CallError::BadArguments)?;
        let cred = Credential {
            kind: c.kind,
            fields: c.fields.into_iter().collect(),
            expires_at: c.expires_at.map(|t| t.0),
        };
        let cred_json = |c: Credential| {
            let fields: serde_json::Map<String, serde_json::Value> = c
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.expose())))
                .collect();
            serde_json::json!({
                "kind": c.kind,
                "fields": fields,
                "expires_at": c.expires_at.map(rfc3339),
            })
        };
        let answer = match op {
            Operation::Validate => self.validate_blocking(&config, &cred)?.map(|v| {
                serde_json::json!({
                    "valid": v.valid,
                    "detail": v.detail,
                    "permissions": v.permissions,
                    "expires_at": v.expires_at.map(rfc3339),
                })
            }),
            Operation::CreatePending => {
                self.create_pending_blocking(&config, &cred)?.map(cred_json)
            }
            Operation::Retire => self
                .retire_blocking(&config, &cred)?
                .map(|()| serde_json::Value::Null),
            Operation::Refresh => self.refresh_blocking(&config, &cred)?.map(cred_json),
        };
        Ok(match answer {
            Ok(v) => serde_json::json!({ "ok": v }),
            Err(e) => serde_json::json!({"error": {"code": e.code(), "detail": e.detail()}}),
        })
    }

    fn declared(&self, op: Operation) -> Result<(), CallError> {
        if self.inner.manifest.supports(op) {
            Ok(())
        } else {
            Err(CallError::NotDeclared {
                plugin: self.inner.name.to_string(),
                operation: op,
            })
        }
    }

    /// A credential of a kind the manifest does not declare never reaches the plugin
    /// (a manifest without `kinds` takes every kind).
    fn accepts(&self, cred: &Credential) -> Result<(), CallError> {
        let kinds = &self.inner.manifest.kinds;
        if kinds.is_empty() || kinds.contains(&cred.kind) {
            Ok(())
        } else {
            Err(CallError::KindNotDeclared {
                plugin: self.inner.name.to_string(),
                kind: cred.kind.clone(),
            })
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(&Plugin) -> Result<T, CallError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(CallError::Join)?
    }

    /// Runs operation `op` on `cred`: checks that the manifest declares it, passes
    /// `config` and `cred` in wire form to the guest export `call`, and turns the
    /// guest's answer into `T`, its text and error details scrubbed of the call's
    /// secrets (see [`Plugin::run_seeded`]).
    fn call_op<T: Answer>(
        &self,
        op: Operation,
        config: &[(String, String)],
        cred: &Credential,
        seed: Option<&Seed>,
        call: impl FnOnce(
            &bindings::guest::Guest,
            &mut Store<State>,
            &[wit::Field],
            &wit::Credential,
        ) -> wasmtime::Result<Result<T::Wire, wit::ProviderError>>,
    ) -> CallResult<T> {
        self.declared(op)?;
        self.accepts(cred)?;
        let wire_config = to_wire_config(config);
        let wire = cred.to_wire();
        self.run_seeded(
            Some(cred),
            seed,
            |store, guest| call(guest, store, &wire_config, &wire.0),
            |r| r.as_ref().map(T::wire_secrets).unwrap_or_default(),
        )
        .map(|(r, secrets)| {
            r.map(|w| T::from_answer(w, &secrets))
                .map_err(|e| secrets.error(e))
        })
    }

    /// Makes a fresh store and instance, runs `f`, and classifies failures.
    pub(crate) fn run<R>(
        &self,
        f: impl FnOnce(&mut Store<State>, &bindings::guest::Guest) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.run_seeded(None, None, f, |_| Vec::new())
            .map(|(out, _)| out)
    }

    /// [`Plugin::run`] for a call that carries a credential: its values, and the
    /// secret values the call returns (`outputs`), are scrubbed from what the guest
    /// logs or prints. The same values come back as [`CallSecrets`], for scrubbing
    /// the text the guest returns (details, error messages). The guest's secure
    /// randomness is drawn from `seed` (from the operating system when `None`).
    fn run_seeded<R>(
        &self,
        input: Option<&Credential>,
        seed: Option<&Seed>,
        f: impl FnOnce(&mut Store<State>, &bindings::guest::Guest) -> wasmtime::Result<R>,
        outputs: impl FnOnce(&R) -> Vec<SecretString>,
    ) -> Result<(R, CallSecrets), CallError> {
        let mut store = self.new_store_seeded(seed);
        if let Some(cred) = input {
            store.data_mut().redact = cred.fields.iter().map(|(_, v)| v.clone()).collect();
        }
        let instance =
            self.inner
                .pre
                .instantiate(&mut store)
                .map_err(|source| CallError::Instantiate {
                    plugin: self.inner.name.to_string(),
                    source,
                })?;
        let out = f(&mut store, instance.latchkey_provider_provider());
        let returned = out.as_ref().map(outputs).unwrap_or_default();
        store.data().flush_output(&returned);
        let out = out.map_err(|source| self.classify(&store, source))?;
        let mut secrets = std::mem::take(&mut store.data_mut().redact);
        secrets.extend(returned);
        Ok((out, CallSecrets(secrets)))
    }

    pub(crate) fn new_store(&self) -> Store<State> {
        self.new_store_seeded(None)
    }

    fn new_store_seeded(&self, seed: Option<&Seed>) -> Store<State> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let deadline = Instant::now() + limits.deadline;
        let http = HttpPolicy {
            plugin: inner.name.clone(),
            grant: inner.http.clone(),
            audit: inner.host.audit.clone(),
            max_body: limits.max_response_body,
            deadline,
        };
        let sql = SqlAccess {
            connections: inner.host.sql.clone(),
            granted: inner.sql.clone(),
            audit: inner.host.audit.clone(),
        };
        let state = State::new(
            inner.name.clone(),
            http,
            sql,
            limits.memory_bytes,
            deadline,
            seed,
        );
        let mut store = Store::new(&inner.host.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(inner.host.ticks_for(limits.deadline));
        store.epoch_deadline_trap();
        store
    }

    fn classify(&self, store: &Store<State>, source: wasmtime::Error) -> CallError {
        let plugin = self.inner.name.to_string();
        if store.data().limiter.memory_hit {
            return CallError::MemoryLimit {
                plugin,
                limit: self.inner.limits.memory_bytes,
            };
        }
        if matches!(
            source.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return CallError::Timeout {
                plugin,
                deadline: self.inner.limits.deadline,
            };
        }
        CallError::Trap { plugin, source }
    }
}

/// The secret values of one call: the credential it carried and the ones it
/// returned. Text a guest returns is untrusted, so details and error messages pass
/// through [`CallSecrets::scrub`] before they reach logs, audit records or answers.
pub(crate) struct CallSecrets(Vec<SecretString>);

impl CallSecrets {
    /// `text` with every value replaced by `[REDACTED]`.
    pub(crate) fn scrub(&self, text: String) -> String {
        crate::state::scrub(text, &self.0)
    }

    /// The guest's error with its detail scrubbed.
    pub(crate) fn error(&self, e: wit::ProviderError) -> ProviderError {
        match ProviderError::from(e) {
            ProviderError::Rejected(s) => ProviderError::Rejected(self.scrub(s)),
            ProviderError::Unavailable(s) => ProviderError::Unavailable(self.scrub(s)),
            ProviderError::Denied(s) => ProviderError::Denied(self.scrub(s)),
            ProviderError::Unsupported(s) => ProviderError::Unsupported(self.scrub(s)),
            ProviderError::InvalidConfig(s) => ProviderError::InvalidConfig(self.scrub(s)),
        }
    }
}

pub(crate) fn info_from_wire(i: wit::ProviderInfo) -> ProviderInfo {
    ProviderInfo {
        name: i.name,
        version: i.version,
        kinds: i.kinds,
        operations: i
            .operations
            .into_iter()
            .map(|o| match o {
                wit::Operation::Validate => Operation::Validate,
                wit::Operation::CreatePending => Operation::CreatePending,
                wit::Operation::Retire => Operation::Retire,
                wit::Operation::Refresh => Operation::Refresh,
            })
            .collect(),
        http_authorities: i.http_authorities,
        sql_connections: i.sql_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_debug_hides_values() {
        let c = Credential::new("api-key", [("secret", SecretString::from("s3cr3t-value"))]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-value"));
        assert!(dbg.contains("secret"));
    }

    #[test]
    fn only_unavailable_is_transient() {
        assert!(ProviderError::Unavailable(String::new()).is_transient());
        assert!(!ProviderError::Rejected(String::new()).is_transient());
        assert!(!ProviderError::Denied(String::new()).is_transient());
    }

    /// Issue 15, item 7: `plugin call` wrote `expires_at` as unix seconds.
    #[test]
    fn call_json_times_are_rfc3339_and_read_either_way() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        let t: JsonTime = serde_json::from_str("\"2023-11-14T22:13:20Z\"").expect("rfc3339");
        assert_eq!(t.0, 1_700_000_000);
        let t: JsonTime = serde_json::from_str("1700000000").expect("unix");
        assert_eq!(t.0, 1_700_000_000);
        assert!(serde_json::from_str::<JsonTime>("\"tomorrow\"").is_err());
    }
}
