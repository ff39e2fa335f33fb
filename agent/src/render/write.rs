//! Writing a rendered file so that no reader ever sees half of it, only when its
//! content changed, and without ever following a link someone else planted.
//!
//! Everything happens relative to a descriptor of the destination's folder, opened
//! with `O_DIRECTORY | O_NOFOLLOW` (missing folders are created `0755`). The folder
//! must belong to root, the agent or the file's owner and be writable by no group
//! or other (a local user who can write the folder could otherwise swap the file
//! for a link between two steps), unless the template sets `allow_shared_folder`.
//! An existing destination is opened with `O_NOFOLLOW | O_NONBLOCK` and must be a
//! regular file (so a FIFO there cannot block the renderer, nor a link redirect
//! it); it is compared through that descriptor. The new content goes to a
//! temporary file in the folder (created exclusive and owner-only), gets its owner
//! and mode through its descriptor (`fchown`, `fchmod`), is fsynced, optionally
//! checked by the template's `validate` command, and is then renamed over the
//! destination with `renameat`. The folder is fsynced ([`sync_dir`], once per
//! folder per pass, before any action runs) so the rename survives a crash.
//!
//! Nothing here changes an inode the agent did not create: a mode or owner that
//! drifted on an unchanged file is put back by writing the same bytes to a new file
//! and renaming it over, without counting as a change (a hard link to some other
//! file is never chowned or chmodded through the destination's name).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat, CWD};
use zeroize::Zeroizing;

use super::spec::Template;
use super::Error;

/// Mode of a folder created for a destination: others may reach the file (its own
/// mode decides whether they may read it) but not change the folder.
pub const FOLDER_MODE: u32 = 0o755;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The destination already held these bytes.
    Unchanged,
    /// The destination was replaced (or created).
    Changed,
}

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The destination (or its folder) is a symbolic link.
    #[error("it is a symbolic link, which the agent never follows")]
    Symlink,
    /// The destination exists and is not a regular file (a FIFO, socket, device or folder).
    #[error("it is not a regular file")]
    NotRegular,
    /// The folder is not a folder.
    #[error("its folder is not a folder")]
    FolderNotDirectory,
    /// The folder belongs to a user other than root, the agent and the file's owner.
    #[error("its folder belongs to uid {uid}, not root, the agent or the file's owner (set allow_shared_folder = true to accept this)")]
    FolderOwner {
        /// The folder's owner.
        uid: u32,
    },
    /// The folder is writable by its group or others.
    #[error("its folder has mode {mode:04o}: writable by group or others (set allow_shared_folder = true to accept this)")]
    FolderMode {
        /// The folder's mode bits.
        mode: u32,
    },
}

impl Refusal {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, self)
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// A destination's folder, held open, and the file name inside it.
struct Folder {
    fd: OwnedFd,
    name: OsString,
}

/// Opens one folder without following a link at its last component.
fn open_dir_at(at: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => Refusal::Symlink.into_io(),
        rustix::io::Errno::NOTDIR => Refusal::FolderNotDirectory.into_io(),
        e => errno(e),
    })
}

/// Opens `dir` (its last component not followed), creating what is missing with
/// [`FOLDER_MODE`] when `create` is set.
fn open_dir(dir: &Path, create: bool) -> io::Result<OwnedFd> {
    match open_dir_at(CWD, dir.as_os_str()) {
        Err(e) if create && e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent_fd = open_dir(parent, true)?;
    let created = match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(FOLDER_MODE)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(errno(e)),
    };
    let fd = open_dir_at(&parent_fd, name)?;
    if created {
        // The agent's umask (077) narrowed the mode given to mkdir.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(FOLDER_MODE)).map_err(errno)?;
    }
    Ok(fd)
}

impl Folder {
    /// Opens the folder of `destination` (creating it when `create`), checks it is
    /// safe to write in for `template`, and keeps it open.
    fn open(template: &Template, create: bool) -> io::Result<Folder> {
        let dest = &template.destination;
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?
            .to_owned();
        let fd = open_dir(&folder_of(dest), create)?;
        if !template.allow_shared_folder {
            let st = rustix::fs::fstat(&fd).map_err(errno)?;
            check_folder(&st, template)?;
        }
        Ok(Folder { fd, name })
    }

    /// The destination, opened without following a link and without blocking, if it
    /// exists; refused unless it is a regular file.
    fn existing(&self) -> io::Result<Option<(File, Stat)>> {
        let fd = match rustix::fs::openat(
            &self.fd,
            self.name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err(Refusal::Symlink.into_io()),
            Err(e) => return Err(errno(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(Refusal::NotRegular.into_io());
        }
        Ok(Some((File::from(fd), st)))
    }
}

/// Whether the agent, root or the file's owner are the only ones who can change
/// the folder's entries.
fn check_folder(st: &Stat, template: &Template) -> io::Result<()> {
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(Refusal::FolderNotDirectory.into_io());
    }
    let agent = rustix::process::geteuid().as_raw();
    let owner = template.uid.unwrap_or(agent);
    if st.st_uid != 0 && st.st_uid != agent && st.st_uid != owner {
        return Err(Refusal::FolderOwner { uid: st.st_uid }.into_io());
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Refusal::FolderMode { mode }.into_io());
    }
    Ok(())
}

/// Whether an open file holds exactly `content`.
fn same_content(file: &mut File, st: &Stat, content: &[u8]) -> io::Result<bool> {
    if u64::try_from(st.st_size).ok() != Some(content.len() as u64) {
        return Ok(false);
    }
    // One byte more than expected, to see a file that grew since the fstat.
    let mut existing = Zeroizing::new(Vec::with_capacity(content.len() + 1));
    file.take(content.len() as u64 + 1)
        .read_to_end(&mut existing)?;
    Ok(existing.as_slice() == content)
}

/// Whether the destination differs from `content` (missing counts as different).
/// Refuses a destination that is a link or not a regular file, like [`write`].
pub fn differs(template: &Template, content: &[u8]) -> io::Result<bool> {
    let folder = match Folder::open(template, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match folder.existing()? {
        None => Ok(true),
        Some((mut file, st)) => Ok(!same_content(&mut file, &st, content)?),
    }
}

/// Replaces `template.destination` with `content` if it differs, validate-then-swap.
/// The caller makes the rename durable with [`sync_dir`] on the destination's folder.
/// Blocking: call from a blocking thread.
pub fn write(template: &Template, content: &[u8]) -> Result<Written, Error> {
    let dest = &template.destination;
    let io_err = |source: io::Error| Error::Write {
        template: template.name.clone(),
        path: dest.clone(),
        source,
    };
    let folder = Folder::open(template, true).map_err(io_err)?;
    let drifted = match folder.existing().map_err(io_err)? {
        None => None,
        Some((mut file, st)) => {
            if same_content(&mut file, &st, content).map_err(io_err)? {
                Some(metadata_drifted(&st, template))
            } else {
                None
            }
        }
    };
    match drifted {
        Some(false) => return Ok(Written::Unchanged),
        // The same bytes under the wrong mode or owner (or through a hard link): put
        // them back in a new file rather than changing an inode someone may have
        // linked there. Nothing a reader sees changes, so no validation or action.
        Some(true) => {
            let temp = TempFile::create(&folder, template, content).map_err(io_err)?;
            temp.persist().map_err(io_err)?;
            return Ok(Written::Unchanged);
        }
        None => {}
    }
    let temp = TempFile::create(&folder, template, content).map_err(io_err)?;
    if let Some(check) = &template.validate {
        check
            .run_blocking(
                Some(&folder_of(dest).join(&temp.name)),
                template.timeout,
                &template.command_env,
            )
            .map_err(|source| Error::Validate {
                template: template.name.clone(),
                source,
            })?;
    }
    temp.persist().map_err(io_err)?;
    Ok(Written::Changed)
}

/// Whether an unchanged file's mode, owner or link count is not what the template says.
fn metadata_drifted(st: &Stat, template: &Template) -> bool {
    st.st_mode & 0o7777 != template.mode
        || template.uid.is_some_and(|u| u != st.st_uid)
        || template.gid.is_some_and(|g| g != st.st_gid)
        || st.st_nlink != 1
}

/// Makes the renames in a folder durable. Called once per folder after a pass's
/// writes (and before their actions), rather than once per file.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let fd = open_dir_at(CWD, dir.as_os_str())?;
    rustix::fs::fsync(&fd).map_err(errno)
}

/// The folder a destination lives in.
pub fn folder_of(destination: &Path) -> PathBuf {
    match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file beside the destination, removed unless persisted.
struct TempFile<'a> {
    folder: &'a Folder,
    name: OsString,
    persisted: bool,
}

impl<'a> TempFile<'a> {
    /// Creates the file (exclusive, owner-only, never through a link), writes
    /// `content`, sets owner and mode through the descriptor, and fsyncs it.
    fn create(folder: &'a Folder, template: &Template, content: &[u8]) -> io::Result<Self> {
        let base = folder.name.to_string_lossy();
        for _ in 0..16 {
            let tag: u64 = rand::random();
            let name = OsString::from(format!(".{base}.latchkey-{tag:016x}.tmp"));
            let fd = match rustix::fs::openat(
                &folder.fd,
                name.as_os_str(),
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                // Never wider than the final mode, and only the owner's bits until
                // the owner is set.
                Mode::from_raw_mode(template.mode & 0o700),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(errno(e)),
            };
            let temp = TempFile {
                folder,
                name,
                persisted: false,
            };
            if template.uid.is_some() || template.gid.is_some() {
                rustix::fs::fchown(
                    &fd,
                    template.uid.map(rustix::fs::Uid::from_raw),
                    template.gid.map(rustix::fs::Gid::from_raw),
                )
                .map_err(errno)?;
            }
            // After fchown, which may clear mode bits.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(template.mode)).map_err(errno)?;
            let mut file = File::from(fd);
            file.write_all(content)?;
            file.sync_all()?;
            return Ok(temp);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary file name",
        ))
    }

    /// Renames the file over the destination, in the same folder descriptor.
    fn persist(mut self) -> io::Result<()> {
        rustix::fs::renameat(
            &self.folder.fd,
            self.name.as_os_str(),
            &self.folder.fd,
            self.folder.name.as_os_str(),
        )
        .map_err(errno)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = rustix::fs::unlinkat(
                &self.folder.fd,
                self.name.as_os_str(),
                rustix::fs::AtFlags::empty(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::render::action::CommandLine;

    fn template(dir: &Path) -> Template {
        Template::simple(dir.join("unused"), dir.join("out.conf"))
    }

    #[test]
    fn writes_once_then_leaves_identical_content_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = template(dir.path());
        assert_eq!(write(&t, b"a=1\n").expect("write"), Written::Changed);
        assert_eq!(write(&t, b"a=1\n").expect("write"), Written::Unchanged);
        assert_eq!(fs::read(&t.destination).expect("read"), b"a=1\n");
        let mode = fs::metadata(&t.destination)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::set_permissions(&t.destination, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(write(&t, b"a=1\n").expect("write"), Written::Unchanged);
        let mode = fs::metadata(&t.destination)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "drifted mode is put back");
        assert_eq!(write(&t, b"a=2\n").expect("write"), Written::Changed);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o7777
    }

    #[test]
    fn r1_a_symlink_at_the_destination_is_never_followed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tmp");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"victim\n").expect("write");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut t = template(dir.path());
        t.mode = 0o644;
        t.uid = Some(65534);
        std::os::unix::fs::symlink(&victim, &t.destination).expect("symlink");
        let before = fs::metadata(&victim).expect("meta");
        // Same content as the victim (the "unchanged" path) and different content.
        for content in [&b"victim\n"[..], b"new\n"] {
            let err = write(&t, content).expect_err("a link is refused");
            assert!(
                crate::render::runner::chain(&err).contains("symbolic link"),
                "{err}"
            );
            assert!(differs(&t, content).is_err());
        }
        let after = fs::metadata(&victim).expect("meta");
        assert_eq!(fs::read(&victim).expect("read"), b"victim\n");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(mode_of(&victim), 0o600);
        // A linked folder is refused too.
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, dir.path().join("linked")).expect("symlink");
        let t = Template::simple(dir.path().join("unused"), dir.path().join("linked/out"));
        assert!(write(&t, b"x").is_err());
        assert!(!real.join("out").exists());
    }

    #[test]
    fn r1_a_fifo_at_the_destination_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = template(dir.path());
        rustix::fs::mkfifoat(CWD, &t.destination, Mode::from_raw_mode(0o600)).expect("mkfifo");
        let started = std::time::Instant::now();
        let err = write(&t, b"x").expect_err("a FIFO is refused");
        assert!(
            crate::render::runner::chain(&err).contains("not a regular file"),
            "{err}"
        );
        assert!(differs(&t, b"x").is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn r1_a_folder_others_can_write_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().expect("tmp");
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let mut t = Template::simple(dir.path().join("unused"), shared.join("out"));
        let err = write(&t, b"x").expect_err("refused");
        assert!(
            crate::render::runner::chain(&err).contains("writable by group or others"),
            "{err}"
        );
        t.allow_shared_folder = true;
        assert_eq!(write(&t, b"x").expect("allowed"), Written::Changed);
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(4242), None).expect("chown");
            let t = Template::simple(dir.path().join("unused"), theirs.join("out"));
            let err = write(&t, b"x").expect_err("refused");
            assert!(
                crate::render::runner::chain(&err).contains("uid 4242"),
                "{err}"
            );
        }
    }

    #[test]
    fn r1_a_hard_link_is_replaced_not_chmodded() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = template(dir.path());
        let other = dir.path().join("other");
        fs::write(&other, b"a=1\n").expect("write");
        fs::set_permissions(&other, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::hard_link(&other, &t.destination).expect("link");
        assert_eq!(write(&t, b"a=1\n").expect("write"), Written::Unchanged);
        assert_eq!(
            mode_of(&other),
            0o644,
            "the other name's inode is untouched"
        );
        assert_eq!(mode_of(&t.destination), 0o600);
    }

    #[test]
    fn r1_missing_folders_are_created_with_an_explicit_mode() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = Template::simple(dir.path().join("unused"), dir.path().join("a/b/out"));
        // The mode is set on the folder itself, whatever the umask (the agent's is 077).
        assert_eq!(write(&t, b"x").expect("write"), Written::Changed);
        assert_eq!(mode_of(&dir.path().join("a")), FOLDER_MODE);
        assert_eq!(mode_of(&dir.path().join("a/b")), FOLDER_MODE);
        assert_eq!(mode_of(&t.destination), 0o600);
    }

    #[test]
    fn failed_validation_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut t = template(dir.path());
        t.validate = Some(CommandLine::split("grep -q ok {{path}}").expect("cmd"));
        assert_eq!(write(&t, b"ok 1\n").expect("write"), Written::Changed);
        let err = write(&t, b"bad\n").expect_err("validation fails");
        assert!(err.to_string().contains("validate"), "{err}");
        assert_eq!(fs::read(&t.destination).expect("read"), b"ok 1\n");
        let count = fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(count, 1, "the temporary file is removed");
    }
}
