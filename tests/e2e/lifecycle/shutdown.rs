//! SIGTERM in the middle of a rotation: the agent lets the step in flight finish and
//! journals it, answers the operator's `latchkey rotate` with 503 `shutting_down`
//! (not 422), exits cleanly, and the next start finishes the rotation with the
//! credential the service already took, so nothing is lost.

use std::time::Duration;

use anyhow::Context as _;

use super::service::Service;
use super::staged::{
    agent_with_key, current_key, plugin_toml_with, rotate_in_background, ORIGINAL,
};
use crate::harness::eventually;

#[tokio::test]
async fn sigterm_mid_rotation_answers_503_and_the_next_start_finishes_the_rotation(
) -> anyhow::Result<()> {
    let service = Service::start(ORIGINAL)?;
    // A password set in place: once the service has taken the new one, the old one no
    // longer works, so losing the new one would lose the credential.
    let mut agent =
        agent_with_key(&plugin_toml_with(&service, "0s", r#", in_place = "true""#)?).await?;

    let (reached, release) = service.stall_create();
    let cli = rotate_in_background(&agent, "svc/key")?;
    tokio::task::spawn_blocking(move || reached.recv_timeout(Duration::from_secs(30)))
        .await?
        .context("the rotation never reached the service")?;

    // The service answers only once the agent has begun to stop (its socket is gone).
    let socket = agent.socket();
    let releaser = tokio::spawn(async move {
        eventually(
            "the agent to stop accepting after SIGTERM",
            Duration::from_secs(20),
            || async { (!socket.exists()).then_some(()) },
        )
        .await?;
        let _ = release.send(());
        anyhow::Ok(())
    });
    let exit = agent.stop().await?;
    releaser.await??;
    assert!(
        exit.success(),
        "the agent exits cleanly after waiting for the step: {exit}; log:\n{}",
        agent.logs()
    );
    let out = cli.await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("503") && said.contains("shutting_down"),
        "expected a 503 shutting_down answer, got: {said}"
    );
    let taken = service.created();
    assert_eq!(
        taken.len(),
        1,
        "the service took one new password: {taken:?}"
    );
    assert!(
        !service.is_live(ORIGINAL),
        "the old password is gone at the service"
    );

    // The next start goes on from the journalled step 1 and promotes what the service
    // holds, without running step 1 again.
    agent.start().await?;
    let promoted = eventually(
        "the interrupted rotation to be finished after the restart",
        Duration::from_secs(20),
        || async { current_key(&agent).await.ok().filter(|k| k != ORIGINAL) },
    )
    .await
    .with_context(|| agent.logs())?;
    assert_eq!(
        promoted, taken[0],
        "the agent serves the password the service holds"
    );
    assert!(service.is_live(&promoted));
    assert_eq!(service.created().len(), 1, "step 1 was not run again");
    let status = super::status(&agent, "svc/key").await?;
    assert_eq!(status["state"], "active", "{status}");
    Ok(())
}
