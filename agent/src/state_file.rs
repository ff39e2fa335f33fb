//! The agent's small state files beside its store: the time of the last good sync,
//! the expiry warnings already sent, the scheduler's node id.
//!
//! Each is read without following a symbolic link and replaced atomically: the new
//! contents go to a temporary file created `0600` with `O_EXCL` (so a link planted
//! under that name is refused, never followed), are synced, then renamed over the old
//! file. A reader sees the old file or the new one, never half of either; a crash
//! leaves at most a stale temporary file, which the next write discards.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The mode state files are created with: the agent's alone.
const MODE: u32 = 0o600;

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
