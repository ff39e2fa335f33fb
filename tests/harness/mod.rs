//! The end-to-end harness: starts the real `latchkey` binary on a temp dir and talks
//! to it the way apps do.
//!
//! ```ignore
//! let agent = Agent::builder().tcp().log_level("trace").start().await?;
//! let admin = agent.admin()?;
//! admin.write("apps/web/db", json!({"password": "hunter2"})).await?;
//! let web = agent.issue_cert("web", None).await?;
//! assert_eq!(agent.client_for(&web)?.read("apps/web/db").await?.status, 200);
//! ```
//!
//! - [`agent`]: the agent process, its folder, its CLI and its audit trail.
//! - [`api`]: an mTLS API client with deadlines and JSON answers.
//! - [`raw`]: hand-written HTTP over TLS, for requests a well-behaved client never sends.
//! - [`foreign`]: certificates from a CA the agent has never seen.
//! - [`disk`]: the sealed records in the agent's sled store, to tamper with while it is stopped.
//! - [`fixture`]: loopback HTTP fixtures for services with no local server.
//! - [`postgres`]: a private PostgreSQL server with scram password auth (the machine's trusts every login).
//! - [`wasm`]: the test guest and the first-party providers, built once, and `latchkey plugin call`.
//! - [`oauth_server`]: the real `oauth2-mock-server`, with exact token-request counts.
//! - [`token_service`]: the token service the SDK example providers talk to (a [`fixture`]).
//! - [`pace`]: how much slower than the reference machine this one is; every deadline
//!   here ([`eventually`] and the agent's, the servers' and the CLI's) is scaled by it.
//! - [`logs`]: the end of a log for a failure message (never all of it), and the temp
//!   folders that `LATCHKEY_KEEP_TEST_DIRS=1` keeps.

pub(crate) mod agent;
pub(crate) mod api;
pub(crate) mod disk;
pub(crate) mod fixture;
pub(crate) mod foreign;
pub(crate) mod logs;
pub(crate) mod oauth_server;
pub(crate) mod pace;
pub(crate) mod postgres;
pub(crate) mod raw;
#[path = "../../agent/plugin-host/tests/plugins/token_service.rs"]
pub(crate) mod token_service;
pub(crate) mod wasm;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

pub(crate) use agent::{Agent, AgentBuilder, Identity, Via};
pub(crate) use api::Answer;

/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// The `latchkey` binary: `$LATCHKEY_BIN`, or `latchkey` in the target folder this
/// test binary was built into (`target/debug/deps/e2e-*` → `target/debug/latchkey`).
pub(crate) fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LATCHKEY_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("LATCHKEY_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable has no target folder")?;
    let bin = target.join("latchkey");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --bins` \
             (the end-to-end tests run the real binary), or set LATCHKEY_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Polls `check` until it returns `Some`, or fails after `deadline` (scaled by
/// [`pace`]) naming `what`.
pub(crate) async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let scaled = pace::scaled(deadline);
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() >= scaled {
            bail!("{}", timed_out(what, deadline));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `holds` stays true throughout `window` (scaled by [`pace`]), failing
/// as soon as it is not. Only for "X must not happen while Y lasts" where the agent
/// offers no event saying it is past the point where X would have happened; wait for
/// such an event with [`eventually`] wherever there is one.
pub(crate) async fn holds_for<F, Fut>(
    what: &str,
    window: Duration,
    mut holds: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let scaled = pace::scaled(window);
    let start = tokio::time::Instant::now();
    loop {
        if !holds().await {
            bail!(
                "expected {what} for {scaled:.1?} ({window:?} {}), but not after {:.1?}",
                pace::describe(),
                start.elapsed()
            );
        }
        if start.elapsed() >= scaled {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `work` for at most `deadline` (scaled by [`pace`]); the error names `what`.
pub(crate) async fn within<T>(
    what: &str,
    deadline: Duration,
    work: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(pace::scaled(deadline), work)
        .await
        .map_err(|_| anyhow::anyhow!("{}", timed_out(what, deadline)))
}

/// `timed out after 45.0s (30s ×1.5 (…)) waiting for WHAT`: what a deadline that
/// passed says, with how it was scaled.
pub(crate) fn timed_out(what: &str, deadline: Duration) -> String {
    format!(
        "timed out after {:.1?} ({deadline:?} {}) waiting for {what}",
        pace::scaled(deadline),
        pace::describe()
    )
}

/// A loopback port nobody listens on right now (bound, read and released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
