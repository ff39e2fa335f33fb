//! latchkey: a per-host credential sidecar.
//!
//! Three flows run through the agent, and the modules follow them:
//!
//! ```text
//! request:   listener (UDS/TCP + rustls mTLS) -> identity (cert SAN, peer uid) -> policy
//!            -> cache (moka hot set) -> store (sled, sealed records) -> api response (+ audit)
//! sync:      upstream -> crypto (seal) -> store -> events
//! lifecycle: scheduler -> plugin host -> upstream write (check-and-set) -> store -> events
//! ```
//!
//! Shared vocabulary: [`secret`] (values that zeroize and redact), [`path`]
//! (validated secret paths), [`clock`] (the one wall clock) and [`backoff`] (the one
//! retry schedule). [`environment`] takes the secrets the agent is handed in its
//! environment out of it before any thread starts. [`server`] assembles the daemon from a [`config::Config`];
//! [`client`] speaks its API; [`cli`] is the command line. [`upstream`] holds the clients of the stores
//! the agent syncs with (OpenBao/Vault, AWS Secrets Manager).

pub mod api;
pub mod audit;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod environment;
pub mod events;
pub mod exec;
pub mod expiry;
pub mod fallback;
pub mod identity;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod providers;
pub mod render;
pub mod secret;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod webhook;
