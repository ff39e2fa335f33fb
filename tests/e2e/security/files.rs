//! File modes: everything the agent creates in its folder is private to it, created
//! that way; and the store's files hold no secret path in clear.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::Agent;

/// Every file and folder under `dir`, links not followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        out.push(entry.path());
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), out)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn r12_every_file_of_the_store_is_private_and_holds_no_path_in_clear() -> anyhow::Result<()> {
    let mut agent = Agent::builder()
        .setting("max_body_bytes", "1048576")
        .start()
        .await?;
    let admin = agent.admin()?;
    let path = "billing/postgres-primary/password";
    assert_eq!(admin.write(path, json!({"p": "pw"})).await?.status, 200);
    // Large enough that sled keeps it in a file of its own under blobs/.
    let big = "x".repeat(300 * 1024);
    let put = admin.write("billing/bundle", json!({ "pem": big })).await?;
    assert_eq!(put.status, 200, "{}", put.body);
    // A restart makes sled write a snapshot file.
    agent.restart().await?;
    assert_eq!(agent.admin()?.read("billing/bundle").await?.status, 200);
    assert!(agent.stop().await?.success());

    let data = agent.data_dir();
    let mut files = Vec::new();
    walk(&data, &mut files)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    assert!(names.iter().any(|n| n.contains("/snap.")), "{names:#?}");
    assert!(names.iter().any(|n| n.contains("/blobs/")), "{names:#?}");
    for file in files.iter().chain([&data]) {
        let mode = std::fs::symlink_metadata(file)?.permissions().mode() & 0o7777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {mode:04o}: group or other bits",
            file.display()
        );
        if file.is_file() {
            let bytes = std::fs::read(file)?;
            for needle in ["postgres-primary", "billing/"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle:?} in clear in {}",
                    file.display()
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn r12_files_the_running_agent_creates_beside_the_store_are_private() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    agent
        .admin()?
        .put(
            "apps/web/token",
            json!({"fields": {"t": "x"}, "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await?;
    assert!(agent.stop().await?.success());
    // What the agent wrote: store, audit trail, expiry and sync state.
    let mut files = Vec::new();
    walk(agent.dir(), &mut files)?;
    let created: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let name = f.display().to_string();
            name.contains("/data") || name.contains("/state/") || name.ends_with("audit.log")
        })
        .collect();
    assert!(!created.is_empty());
    for file in created {
        let mode = std::fs::symlink_metadata(file)?.permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:04o}", file.display());
    }
    Ok(())
}
