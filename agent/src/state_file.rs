//! The agent's small state files: the time of the last good sync, the expiry
//! warnings already sent, the scheduler's node id, the lifecycle table, and the
//! compiled-plugin cache.
//!
//! [`StateDir`] says where they live: in one folder (`storage.state_dir`, which
//! `latchkey init` sets to `state`), so one writable path covers them all; or, for a
//! config written before that key, beside the store as they always were
//! (`data.sync.json`, `data.node-id`, …). The config resolves it once; everything
//! else asks it for a [`StateDir::file`] by one of the names below.
//!
//! Each is read without following a symbolic link and replaced atomically: the new
//! contents go to a temporary file created `0600` with `O_EXCL` (so a link planted
//! under that name is refused, never followed), are synced, then renamed over the old
//! file. A reader sees the old file or the new one, never half of either; a crash
//! leaves at most a stale temporary file, which the next write discards.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The mode state files are created with: the agent's alone.
const MODE: u32 = 0o600;

/// The time of the last good sync (`sync`).
pub const SYNC: &str = "sync.json";
/// The expiry warnings already sent (`expiry`).
pub const EXPIRY: &str = "expiry.json";
/// The lifecycle scheduler's node id, made once (`lifecycle`).
pub const NODE_ID: &str = "node-id";
/// Each looked-after credential's lifecycle state (`lifecycle::status`).
pub const LIFECYCLE: &str = "lifecycle.json";
/// The folder of compiled plugins, cached by digest (`providers`).
pub const PLUGINS: &str = "plugins";

/// Where the state files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDir {
    /// `storage.state_dir`: every file inside this folder, under its own name.
    Folder(PathBuf),
    /// No `storage.state_dir` (a config written before it): each file beside this
    /// store folder, named after it (`data` → `data.sync.json`).
    BesideStore(PathBuf),
}

impl StateDir {
    /// The path of the state file (or folder) `name`, one of the constants above.
    pub fn file(&self, name: &str) -> PathBuf {
        match self {
            StateDir::Folder(dir) => dir.join(name),
            StateDir::BesideStore(store) => store.with_extension(name),
        }
    }

    /// The folder the agent creates its state files in, which it must be able to
    /// write.
    pub fn folder(&self) -> PathBuf {
        match self {
            StateDir::Folder(dir) => dir.clone(),
            StateDir::BesideStore(store) => match store.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            },
        }
    }
}

/// The contents of `path`, or `None` when it does not exist. A symbolic link is an
/// error (`ELOOP`), not followed.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Replaces `path` with `bytes`, atomically, created `0600`.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover of a crash (or anything planted under this name): removing a link
    // removes the link, not what it points to.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn state_files_go_in_the_folder_or_beside_the_store() {
        let folder = StateDir::Folder(PathBuf::from("/x/state"));
        assert_eq!(folder.file(SYNC), Path::new("/x/state/sync.json"));
        assert_eq!(folder.file(PLUGINS), Path::new("/x/state/plugins"));
        assert_eq!(folder.folder(), Path::new("/x/state"));
        let beside = StateDir::BesideStore(PathBuf::from("/x/data"));
        assert_eq!(beside.file(SYNC), Path::new("/x/data.sync.json"));
        assert_eq!(beside.file(NODE_ID), Path::new("/x/data.node-id"));
        assert_eq!(beside.folder(), Path::new("/x"));
    }

    #[test]
    fn replaces_atomically_with_a_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data.sync.json");
        assert_eq!(read(&file).expect("read"), None);
        replace(&file, b"one").expect("write");
        replace(&file, b"two").expect("write again");
        assert_eq!(read(&file).expect("read").as_deref(), Some(&b"two"[..]));
        let mode = fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_planted_link_is_neither_followed_nor_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").expect("victim");
        let file = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &file).expect("link");
        assert!(read(&file).is_err(), "a link is not read through");
        // The temporary name planted as a link too.
        std::os::unix::fs::symlink(&victim, dir.path().join(".state.json.tmp")).expect("link");
        replace(&file, b"new").expect("replace");
        assert_eq!(fs::read(&victim).expect("victim"), b"keep");
        assert_eq!(read(&file).expect("read").as_deref(), Some(&b"new"[..]));
    }
}
