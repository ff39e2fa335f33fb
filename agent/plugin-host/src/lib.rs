//! Runs latchkey provider plugins: WebAssembly components behind the `wit/` contract.
//!
//! The agent's lifecycle flow (scheduler -> plugin host -> upstream write) calls into
//! this crate whenever a credential must be validated, refreshed, created or retired.
//! Everything specific to one service lives in a plugin; this crate makes sure a
//! plugin can do nothing but what the configuration grants it.
//!
//! ```text
//! PluginHost::new(HostConfig)          one Engine (pooling allocator, epoch ticker),
//!                                      one Linker, SQL connections, audit sink
//!   .load(LoadSpec)                    sha256 pin -> artifact cache or compile ->
//!                                      InstancePre -> `info` checked against the manifest
//!     Plugin::validate / create_pending / retire / refresh
//!                                      fresh Store per call: memory cap, epoch deadline,
//!                                      wasi:http allow-list, SQL grants, log -> tracing
//! ```
//!
//! Module map: [`host`] (engine, config, load), [`plugin`] (calls and their
//! results), [`manifest`], [`cache`] (compiled artifacts on disk), [`audit`]
//! (denied capabilities), [`inspect`] (what `latchkey plugin inspect` prints),
//! [`secret`] (credential values that zeroize and redact), [`seed`] (replayable
//! randomness for one call), [`warning`] (what a load notices and does not refuse),
//! and `capability/` (one file per capability a plugin may be granted: http, sql,
//! log).
//!
//! Not here: deciding *when* to call a plugin (the agent's scheduler) and what to do
//! with a [`ProviderError`] (the agent's `lifecycle::next` table; see also
//! [`ProviderError::is_transient`]).

pub mod audit;
mod bindings;
pub mod cache;
mod capability;
pub mod host;
pub mod inspect;
pub mod manifest;
pub mod plugin;
pub mod secret;
pub mod seed;
mod state;
pub mod warning;

pub use audit::{AuditEvent, AuditSink, Capability, DenyReason, RecordingAudit, TracingAudit};
pub use capability::http::{check_grant_entry, GrantError, HttpGrant, IpNet, NetworkProblem};
pub use capability::sql::{quote_identifier, quote_literal};
pub use capability::sql::{Dialect, SqlConnectionConfig};
pub use host::{
    sha256_file, sha256_hex, Grants, HostConfig, Limits, LoadError, LoadSpec, PluginHost,
    SetupError,
};
pub use inspect::{error_chain, inspect, InspectError, Inspection};
pub use manifest::{Manifest, ManifestError};
pub use plugin::{
    CallError, CallResult, Credential, Operation, Permission, Plugin, ProviderError, ProviderInfo,
    Validation,
};
pub use secret::SecretString;
pub use seed::Seed;
pub use warning::Warning;
