//! Before the agent opens anything: can it write everything it must keep?
//!
//! The store, the state folder, the audit file and the socket's folder must be
//! writable by the user the agent runs as, or what it writes is lost or never
//! served (a unit whose `ReadWritePaths=` misses one, a folder left owned by root).
//! Each is tested by doing it — creating and removing a probe file in the folder,
//! opening the audit file to append — never by reading mode bits, which say nothing
//! about root, read-only mounts, ACLs or a systemd sandbox. A missing state folder is
//! created here (`0700`); a missing store, audit or socket folder is created later by
//! the part that owns it, so the probe goes to the nearest folder that exists.
//!
//! Called by `server::start` first of all; every problem is reported at once, each
//! naming its key, the path and the permission the agent needs.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::state_file::StateDir;

/// What the agent cannot write, one line per path.
#[derive(Debug, thiserror::Error)]
#[error("the agent cannot write what it must keep:\n  {}", problems.join("\n  "))]
pub struct Error {
    /// Each names its key, the path, the OS reason and the permission needed.
    pub problems: Vec<String>,
}

/// Checks every path the agent writes; creates a missing state folder.
pub fn check(config: &Config) -> Result<(), Error> {
    let mut problems = Vec::new();
    let mut folders = vec![("storage.path", config.store.path.clone())];
    match &config.store.state_dir {
        StateDir::Folder(dir) => match create_folder(dir) {
            Ok(()) => folders.push(("storage.state_dir", dir.clone())),
            Err(e) => problems.push(format!(
                "storage.state_dir: cannot create the folder {} ({e}): {}",
                dir.display(),
                needs("write and search permission on the folder above it")
            )),
        },
        // State files beside the store: its parent folder must take new files.
        StateDir::BesideStore(_) => folders.push((
            "storage.path (its state files beside it; or set storage.state_dir)",
            config.store.state_dir.folder(),
        )),
    }
    if let Some(socket) = &config.listen.socket {
        let dir = match socket.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        folders.push(("listen.socket (its folder)", dir));
    }
    for (key, dir) in folders {
        if let Err(e) = probe_folder(&dir) {
            problems.push(format!("{key}: {e}"));
        }
    }
    if let Err(e) = probe_append(&config.audit.path) {
        problems.push(format!("audit.path: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error { problems })
    }
}

/// `the agent (uid 998, gid 998) needs …`.
fn needs(what: &str) -> String {
    format!(
        "the agent (uid {}, gid {}) needs {what}",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    )
}

fn create_folder(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The nearest of `path` and its ancestors that exists.
fn nearest_existing(path: &Path) -> &Path {
    let mut at = path;
    while fs::symlink_metadata(at).is_err() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Path::new("."),
        }
    }
    at
}

/// Creates and removes a file in `path` (or, while `path` is missing, in the
/// nearest folder above it, where it will be created).
fn probe_folder(path: &Path) -> Result<(), String> {
    let dir = nearest_existing(path);
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{} is not a folder", dir.display()));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(format!(
                "cannot reach {} ({e}): {}",
                dir.display(),
                needs("search permission on every folder above it")
            ))
        }
    }
    let probe = dir.join(format!(
        ".latchkey-probe-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe);
    let what = if dir == path {
        String::new()
    } else {
        format!(" (to create {})", path.display())
    };
    match created {
        Ok(file) => {
            drop(file);
            fs::remove_file(&probe).map_err(|e| {
                format!(
                    "cannot remove files in {}{what} ({e}): {}",
                    dir.display(),
                    needs("write and search permission on that folder")
                )
            })
        }
        Err(e) => Err(format!(
            "cannot create files in {}{what} ({e}): {}",
            dir.display(),
            needs("write and search permission on that folder")
        )),
    }
}

/// Opens the audit file to append (without creating it), or, when it does not exist
/// yet, checks that its folder takes new files.
fn probe_append(path: &Path) -> Result<(), String> {
    if fs::symlink_metadata(path).is_err() {
        return probe_folder(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| format!("cannot create {}: {e}", path.display()));
    }
    fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map(drop)
        .map_err(|e| {
            format!(
                "cannot append to {} ({e}): {}",
                path.display(),
                needs("write permission on that file")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_takes_files_passes_and_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        probe_folder(dir.path()).expect("writable");
        probe_folder(&dir.path().join("missing/deeper")).expect("created later");
        let left: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "no probe left behind");
    }

    #[test]
    fn a_file_where_a_folder_belongs_is_named() {
        // Root passes every mode check, so the refusals tested here are ones root
        // cannot pass either; the end-to-end tests run an unprivileged agent.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state");
        fs::write(&file, b"").expect("file");
        let err = probe_folder(&file).expect_err("not a folder");
        assert!(err.contains(&file.display().to_string()), "{err}");
        let err = probe_append(&file.join("audit.log")).expect_err("under a file");
        assert!(err.contains("audit.log"), "{err}");
    }

    #[test]
    fn an_audit_file_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"").expect("target");
        let link = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&target, &link).expect("link");
        let err = probe_append(&link).expect_err("a link");
        assert!(err.contains("write permission"), "{err}");
        probe_append(&dir.path().join("new.log")).expect("can be created");
    }
}
