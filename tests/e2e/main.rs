//! End-to-end tests: the real `latchkey` binary on a temp dir, spoken to as apps
//! would (mTLS over the Unix socket and loopback TCP, the CLI, and curl), and the
//! real upstream servers (OpenBao, moto) on loopback.
//!
//! Build the binary first: `cargo build --bins && cargo test -p latchkey-e2e`.
//! One module per capability; the harness lives in `tests/harness/`.

#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/moto.rs"]
mod moto;
#[path = "../harness/openbao.rs"]
mod openbao;
#[path = "../harness/spawn.rs"]
mod spawn;
#[path = "../harness/upstream_agent.rs"]
mod upstream_agent;

mod audit_reads;
mod aws_fidelity;
mod certs;
mod cli;
mod clients;
mod concurrency;
mod contract;
mod curl;
mod deletion_guard;
mod exec;
mod install;
mod integrity;
mod lifecycle;
mod malformed;
mod metrics;
mod migrate;
mod no_leaks;
mod notify;
mod plugins;
mod providers;
mod reload;
mod render;
mod roundtrip;
mod sdk;
mod security;
mod serve;
mod sync;
mod upstream_clients;
mod upstream_meta;
mod webhook;
