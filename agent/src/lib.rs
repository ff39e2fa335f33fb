//! latchkey: a per-host credential sidecar.
//!
//! Three flows run through the agent, and the modules follow them:
//!
//! ```text
//! request:   listener (UDS/TCP + rustls mTLS) -> identity (cert SAN, peer uid)
//!            -> api router -> api handler (secrets, admin, lifecycle, watch) -> policy
//!            -> cache (moka hot set) -> store (sled, sealed records) -> api reply (+ audit trail)
//! sync:      upstream (OpenBao/Vault, AWS, or the local store) -> crypto (seal) -> store -> events
//! lifecycle: scheduler -> plugin host -> sync commit (upstream check-and-set) -> store -> events
//! ```
//!
//! Every change of a secret — an API write or delete (and so the CLI's and `latchkey
//! import`'s), a lifecycle promotion or refresh, what a poll or a miss pulls — goes
//! through one function, [`sync::Syncer::commit`] and its second half, in one
//! documented order: upstream check-and-set, store write, flush, hot-cache
//! invalidation, event. There is always an upstream: without an `[upstream]` it is the
//! store itself ([`upstream::local`]).
//!
//! Shared vocabulary: [`secret`] (values that zeroize and redact), [`path`]
//! (validated secret paths), [`clock`] (the one wall clock) and [`backoff`] (the
//! shared retry schedule). [`state_file`] keeps the small state files in the state
//! folder (written atomically, private, never through a link); [`preflight`] checks
//! at start that the agent can write them, its store, audit file and socket folder.
//! [`environment`] takes the secrets the agent is handed in
//! its environment out of it before any thread starts. [`server`] assembles the daemon
//! from a [`config::Config`]; [`client`] speaks its API; [`cli`] is the command line.
//! [`upstream`] holds the stores the agent syncs with (OpenBao/Vault, AWS Secrets
//! Manager, the local store).

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
pub mod notify;
pub mod path;
pub mod policy;
pub mod preflight;
pub mod providers;
pub mod render;
pub mod secret;
pub mod server;
pub mod state_file;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod webhook;
