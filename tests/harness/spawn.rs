//! Shared plumbing for the upstream spawners (`openbao.rs`, `moto.rs`): finding the
//! tools that `.ci/install-tools.sh` installs, picking free loopback ports, and waiting
//! for a condition with a deadline instead of sleeping blindly.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The path of a tool installed by `.ci/install-tools.sh` into `target/tools/venv/bin`
/// (or `$LATCHKEY_TOOLS_DIR/venv/bin`), falling back to `PATH`.
pub(crate) fn tool(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("LATCHKEY_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools"));
    for dir in dirs {
        let candidate = dir.join("venv/bin").join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

/// A loopback port that is free now, and whose next port is free too (OpenBao's dev
/// server binds its cluster listener on port + 1).
pub(crate) fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
        let port = first.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of loopback ports found")
}

/// A loopback port that is free now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` every 100 ms until it returns `true`, failing after `deadline`
/// (scaled by the machine's pace, see `harness::pace`).
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let scaled = crate::harness::pace::scaled(deadline);
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > scaled {
            bail!("{}", crate::harness::timed_out(what, deadline));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
