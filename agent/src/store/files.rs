//! The store folder's files are the agent's alone.
//!
//! sled creates its files itself (`conf`, `db`, `snap.*`, `blobs/*`) with the mode the
//! process umask leaves, so the daemon runs under umask 077 (set in `main` before any
//! thread starts) and every new file is created 0600. Stores made by earlier versions,
//! or by a process with a wider umask, may hold files with group or other bits: those
//! are narrowed here when the store opens, through a descriptor opened without
//! following links.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::Error;

/// Group and other permission bits.
const GROUP_OTHER: u32 = 0o077;

/// Removes group and other bits from the store folder, its files and its `blobs`
/// folder and files. Links are left alone (sled makes none).
pub(super) fn make_private(dir: &Path) -> Result<(), Error> {
    narrow(dir)?;
    for folder in [dir.to_owned(), dir.join("blobs")] {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::FileMode {
                    path: folder,
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| Error::FileMode {
                path: folder.clone(),
                source,
            })?;
            narrow(&entry.path())?;
        }
    }
    Ok(())
}

/// Narrows one file or folder to its owner, if it is not a link and grants more.
fn narrow(path: &Path) -> Result<(), Error> {
    let err = |source| Error::FileMode {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() || mode & GROUP_OTHER == 0 {
        return Ok(());
    }
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !(meta.is_file() || meta.is_dir()) {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777 & !GROUP_OTHER;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(err)?;
    tracing::info!(file = %path.display(), mode = format_args!("{mode:04o}"), "store file made private");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn group_and_other_bits_are_removed_and_links_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("blobs")).expect("mkdir");
        for (name, m) in [("db", 0o644), ("conf", 0o600), ("blobs/7", 0o664)] {
            std::fs::write(store.join(name), b"x").expect("write");
            std::fs::set_permissions(store.join(name), Permissions::from_mode(m)).expect("chmod");
        }
        std::fs::set_permissions(store.join("blobs"), Permissions::from_mode(0o755))
            .expect("chmod");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"y").expect("write");
        std::fs::set_permissions(&outside, Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&outside, store.join("link")).expect("symlink");

        make_private(&store).expect("private");
        assert_eq!(mode(&store.join("db")), 0o600);
        assert_eq!(mode(&store.join("conf")), 0o600);
        assert_eq!(mode(&store.join("blobs")), 0o700);
        assert_eq!(mode(&store.join("blobs/7")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link is not followed");
    }
}
