//! latchkey: a per-host credential sidecar.
//!
//! Three flows run through the agent, and the modules follow them:
//!
//! ```text
//! request:   listener (UDS/TCP + rustls mTLS) -> identity (cert SAN, peer uid) -> policy
//!            -> cache (moka hot set -> store: sled, sealed records) -> api response (+ audit)
//! sync:      upstream -> crypto (seal) -> store -> events
//! lifecycle: scheduler -> plugin host -> upstream write (check-and-set) -> store -> events
//! ```
//!
//! Shared vocabulary: [`secret`] (values that zeroize and redact) and [`path`]
//! (validated secret paths). [`upstream`] holds the clients of the stores the agent
//! syncs with (OpenBao/Vault, AWS Secrets Manager).

pub mod path;
pub mod secret;
pub mod upstream;
