//! The lifecycle engine end to end: staged rotation with failures injected at each
//! step, a crash (SIGKILL) and a stop (SIGTERM) in the middle of a rotation, a
//! scheduled rotation of a real PostgreSQL role checked with real logins, three agents
//! sharing one OpenBao, and OAuth refresh of an expired token under 50 concurrent
//! reads.

mod aws;
mod fleet;
mod oauth;
mod postgres;
mod service;
mod shutdown;
mod staged;
mod write;

use serde_json::Value;

use crate::harness::Agent;

/// `latchkey status PATH --json` as JSON.
pub(crate) async fn status(agent: &Agent, path: &str) -> anyhow::Result<Value> {
    let out = agent.cli(["status", path, "--json"]).run().await?;
    Ok(serde_json::from_str(&out.stdout)?)
}
