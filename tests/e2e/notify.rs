//! The agent speaks systemd's notify protocol to whatever listens on
//! `NOTIFY_SOCKET`: `READY=1` once it serves, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC`, `STOPPING=1` when it stops. No systemd needed: the test is the
//! service manager.

use std::time::Duration;

use tokio::net::UnixDatagram;

use crate::harness::{within, Agent};

/// The next notification, as text.
async fn next(socket: &UnixDatagram, what: &str) -> anyhow::Result<String> {
    let mut buf = vec![0u8; 4096];
    let n = within(what, Duration::from_secs(10), socket.recv(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn ready_watchdog_and_stopping_reach_the_service_manager() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    let mut agent = Agent::builder()
        .env("NOTIFY_SOCKET", path.to_str().unwrap_or_default())
        .env("WATCHDOG_USEC", "200000")
        .start()
        .await?;

    loop {
        let message = next(&socket, "READY=1 from the agent").await?;
        if message.lines().any(|l| l == "READY=1") {
            assert!(
                message.contains("STATUS=serving on unix:"),
                "READY carries what the agent serves on: {message:?}"
            );
            break;
        }
    }
    // Ready means serving: the listener answers now.
    let health = agent.admin()?.get("/v1/health").await?;
    assert_eq!(health.status, 200, "{}", health.body);

    // Pings at half of WATCHDOG_USEC: several within a second.
    let mut pings = 0;
    while pings < 3 {
        let message = next(&socket, "WATCHDOG=1 pings").await?;
        if message == "WATCHDOG=1" {
            pings += 1;
        }
    }

    agent.stop().await?;
    let mut stopping = false;
    while !stopping {
        let message = next(&socket, "STOPPING=1 after SIGTERM").await?;
        stopping = message.lines().any(|l| l == "STOPPING=1");
    }
    Ok(())
}

#[tokio::test]
async fn without_notify_socket_the_agent_runs_as_before() -> anyhow::Result<()> {
    let agent = Agent::builder()
        .env("WATCHDOG_USEC", "200000")
        .start()
        .await?;
    let health = agent.admin()?.get("/v1/health").await?;
    assert_eq!(health.status, 200, "{}", health.body);
    Ok(())
}
