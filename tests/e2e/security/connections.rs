//! Connection budgets: one app at its caps (handshakes, connections, watchers)
//! does not slow another; the socket is created with its final mode.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use rustix::fs::inotify;

use crate::harness::Agent;

/// Issue 11, item 12: the socket used to be bound at its path (mode from the umask)
/// and chmod'ed after, so for a moment it had another mode than configured. It is now
/// bound in a private folder and renamed into place: at its path it only ever appears
/// (moved in), never is created or changes mode.
#[tokio::test]
async fn r12_the_socket_appears_with_its_final_mode_and_is_never_chmodded_in_place(
) -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    assert!(agent.stop().await?.success());
    let socket = agent.socket();
    let run = socket.parent().map(ToOwned::to_owned).unwrap_or_default();
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    inotify::add_watch(
        &watch,
        &run,
        inotify::WatchFlags::CREATE | inotify::WatchFlags::ATTRIB | inotify::WatchFlags::MOVED_TO,
    )?;
    agent.start().await?;

    let mut seen = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut events = inotify::Reader::new(&watch, &mut buf);
    loop {
        match events.next() {
            Ok(event) => {
                let file = event
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if file == name {
                    seen.push(event.events());
                }
            }
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(
        seen,
        vec![inotify::ReadFlags::MOVED_TO],
        "the socket must only be moved into place: {seen:?}"
    );
    let meta = std::fs::symlink_metadata(&socket)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "the configured mode");
    assert_eq!(meta.gid(), std::fs::metadata(agent.dir())?.gid());
    // Nothing of the private bind folder is left behind.
    let left: Vec<String> = std::fs::read_dir(&run)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![name], "{left:?}");
    assert_eq!(agent.admin()?.health().await?.status, 200);
    Ok(())
}
