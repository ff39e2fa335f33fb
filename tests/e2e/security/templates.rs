//! Template destinations an attacker can reach: symlinks, FIFOs and folders
//! writable by others; template errors and filters that could leak or inject.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, Agent};

const WAIT: Duration = Duration::from_secs(15);
/// The unprivileged user that owns the destination's folder (nobody).
const NOBODY: u32 = 65534;

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Appends `[[template]]` blocks to the agent's config and restarts it.
async fn add_templates(agent: &mut Agent, blocks: &str) -> anyhow::Result<()> {
    let path = agent.config_path();
    let mut text = std::fs::read_to_string(&path)?;
    text.push('\n');
    text.push_str(blocks);
    std::fs::write(&path, text)?;
    agent.restart().await
}

async fn wait_for_content(path: &Path, expected: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{} to hold {expected:?}", path.display()),
        WAIT,
        || async move { (std::fs::read_to_string(path).ok()? == expected).then_some(()) },
    )
    .await
}

/// Owner, group, mode and content of a file, links not followed.
fn snapshot(path: &Path) -> anyhow::Result<(u32, u32, u32, Vec<u8>)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((
        meta.uid(),
        meta.gid(),
        meta.permissions().mode() & 0o7777,
        std::fs::read(path)?,
    ))
}

#[tokio::test]
async fn r1_a_symlink_swapped_in_at_the_destination_never_reaches_the_victim() -> anyhow::Result<()>
{
    if !rustix::process::geteuid().is_root() {
        // Needs root to make a folder owned by another uid; the suite runs as root.
        return Ok(());
    }
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    // The rendered text equals the victim's content, so a render that followed a
    // link would find it "unchanged" and put the template's mode and owner on it.
    let value = "victim-content";
    admin
        .write("apps/web/db", json!({ "password": value }))
        .await?;
    let scratch = agent.scratch();
    std::fs::create_dir_all(&scratch)?;
    let victim = scratch.join("victim");
    std::fs::write(&victim, format!("{value}\n"))?;
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&victim, Some(0), Some(0))?;
    let before = snapshot(&victim)?;
    // The user's own folder, as in `/home/web/.pgpass` owned by `web`.
    let home = scratch.join("home-nobody");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY))?;
    let dest = home.join(".pgpass");
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
name = "pgpass"
contents = "{{{{ secret('apps/web/db').password }}}}\n"
destination = {dest}
mode = "0640"
owner = "{NOBODY}"
"#,
            dest = toml_path(&dest),
        ),
    )
    .await?;
    wait_for_content(&dest, &format!("{value}\n")).await?;
    assert_eq!(std::fs::metadata(&dest)?.uid(), NOBODY);

    // The attacker (who owns the folder) swaps the file for a link to the victim and
    // back, over and over, while the agent re-renders the same value.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, home, victim, dest) = (stop.clone(), home.clone(), victim.clone(), dest.clone());
        let content = format!("{value}\n");
        std::thread::spawn(move || -> std::io::Result<u64> {
            let link = home.join(".link");
            let real = home.join(".real");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&victim, &link)?;
                std::fs::rename(&link, &dest)?;
                std::thread::sleep(Duration::from_micros(200));
                std::fs::write(&real, &content)?;
                std::fs::rename(&real, &dest)?;
                std::thread::sleep(Duration::from_micros(200));
                swaps += 1;
            }
            // Leave the link in place for the last renders.
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&victim, &link)?;
            std::fs::rename(&link, &dest)?;
            Ok(swaps)
        })
    };
    for _ in 0..150 {
        admin
            .write("apps/web/db", json!({ "password": value }))
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            snapshot(&victim)?,
            before,
            "the victim changed during the race"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("the attacker thread panicked"))??;
    assert!(swaps > 10, "only {swaps} swaps");
    // With the link left in place: more renders, of the same and of a new value.
    for v in [value, value, "second"] {
        admin.write("apps/web/db", json!({ "password": v })).await?;
    }
    eventually("the agent to refuse the link", WAIT, || async {
        agent.logs().contains("symbolic link").then_some(())
    })
    .await?;
    assert_eq!(snapshot(&victim)?, before, "the victim changed");
    assert!(std::fs::symlink_metadata(&dest)?.file_type().is_symlink());

    // Once the link is gone, the file is written again, owned by its user.
    std::fs::remove_file(&dest)?;
    admin
        .write("apps/web/db", json!({ "password": "third" }))
        .await?;
    wait_for_content(&dest, "third\n").await?;
    let (uid, _, mode, _) = snapshot(&dest)?;
    assert_eq!((uid, mode), (NOBODY, 0o640));
    assert_eq!(snapshot(&victim)?, before, "the victim changed");
    Ok(())
}

#[tokio::test]
async fn r1_a_fifo_at_one_destination_does_not_stall_the_other_templates() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/a/x", json!({ "v": "a1" })).await?;
    admin.write("apps/b/x", json!({ "v": "b1" })).await?;
    let out = agent.scratch().join("out");
    std::fs::create_dir_all(&out)?;
    let fifo = out.join("a.conf");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success());
    let b = out.join("b.conf");
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
name = "a"
contents = "{{{{ secret('apps/a/x').v }}}}"
destination = {a}

[[template]]
name = "b"
contents = "{{{{ secret('apps/b/x').v }}}}"
destination = {b}
"#,
            a = toml_path(&fifo),
            b = toml_path(&b),
        ),
    )
    .await?;
    wait_for_content(&b, "b1").await?;
    // Later passes still run: b follows its secret while a stays refused.
    for v in ["b2", "b3"] {
        admin.write("apps/b/x", json!({ "v": v })).await?;
        wait_for_content(&b, v).await?;
    }
    admin.write("apps/a/x", json!({ "v": "a2" })).await?;
    admin.write("apps/b/x", json!({ "v": "b4" })).await?;
    wait_for_content(&b, "b4").await?;
    eventually("a's refusal in the log", WAIT, || async {
        agent
            .logs()
            .lines()
            .any(|l| l.contains("template=a") && l.contains("not a regular file"))
            .then_some(())
    })
    .await?;
    let meta = std::fs::symlink_metadata(&fifo)?;
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    assert!(agent.is_running());
    Ok(())
}

#[tokio::test]
async fn r9_a_failing_operation_on_a_secret_logs_no_operand() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin
        .write("apps/pin/code", json!({ "pin": "00734519826" }))
        .await?;
    let dest = agent.scratch().join("pin.conf");
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
name = "pin"
contents = "{{% set n = secret('apps/pin/code').pin | int %}}\n{{{{ n * n * n * n * n * n * n * n * n * n * n }}}}\n"
destination = {dest}
"#,
            dest = toml_path(&dest),
        ),
    )
    .await?;
    let line = eventually("the template's failure in the log", WAIT, || async {
        agent
            .logs()
            .lines()
            .find(|l| l.contains("template failed") && l.contains("pin"))
            .map(str::to_owned)
    })
    .await?;
    assert!(line.contains("template pin line 2"), "{line}");
    // `latchkey render --once` reports the same failure to its user.
    let render = agent
        .cli([
            "render".into(),
            "--once".into(),
            "--config".into(),
            agent.config_path().into_os_string(),
        ])
        .run()
        .await?;
    let shown = format!("{}{}", render.stdout, render.stderr);
    assert!(shown.contains("template pin line 2"), "{shown}");
    for text in [agent.logs(), shown] {
        assert!(
            // Nine digits: no timestamp, port or pid in a log line holds a run that long.
            !text.contains("734519826"),
            "an operand reached the output:\n{text}"
        );
    }
    assert!(!dest.exists());
    Ok(())
}
