//! Writing a rendered file so that no reader ever sees half of it, and only when its
//! content changed.
//!
//! The new content goes to a temporary file in the destination's folder (created
//! `0600` and exclusive), gets its mode and owner, is fsynced, optionally checked by
//! the template's `validate` command, and is then renamed over the destination; the
//! folder is fsynced ([`sync_dir`], once per folder per pass, before any action runs)
//! so the rename survives a crash. A reader opens either the old
//! file or the new one. If the destination already holds the same bytes, nothing is
//! written (a restart or a re-sync re-renders without touching files or running
//! actions); a mode or owner that drifted is put back without counting as a change.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::spec::Template;
use super::Error;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The destination already held these bytes.
    Unchanged,
    /// The destination was replaced (or created).
    Changed,
}

/// Whether the destination differs from `content` (missing counts as different).
pub fn differs(destination: &Path, content: &[u8]) -> Result<bool, io::Error> {
    let mut file = match File::open(destination) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len != content.len() as u64 {
        return Ok(true);
    }
    let mut existing = Zeroizing::new(Vec::with_capacity(content.len()));
    file.read_to_end(&mut existing)?;
    Ok(existing.as_slice() != content)
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
    if !differs(dest, content).map_err(io_err)? {
        fix_metadata(template).map_err(io_err)?;
        return Ok(Written::Unchanged);
    }
    let dir = folder_of(dest);
    fs::create_dir_all(&dir).map_err(io_err)?;
    let temp = TempFile::create(&dir, dest).map_err(io_err)?;
    let mut file = &temp.file;
    file.write_all(content).map_err(io_err)?;
    temp.file
        .set_permissions(fs::Permissions::from_mode(template.mode))
        .map_err(io_err)?;
    if template.uid.is_some() || template.gid.is_some() {
        std::os::unix::fs::fchown(&temp.file, template.uid, template.gid).map_err(io_err)?;
    }
    temp.file.sync_all().map_err(io_err)?;
    if let Some(check) = &template.validate {
        check
            .run_blocking(Some(&temp.path), template.timeout)
            .map_err(|source| Error::Validate {
                template: template.name.clone(),
                source,
            })?;
    }
    temp.persist(dest).map_err(io_err)?;
    Ok(Written::Changed)
}

/// Makes the renames in a folder durable. Called once per folder after a pass's
/// writes (and before their actions), rather than once per file.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder a destination lives in.
pub fn folder_of(destination: &Path) -> PathBuf {
    match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Puts back a mode or owner that drifted on an unchanged file.
fn fix_metadata(template: &Template) -> io::Result<()> {
    let meta = fs::metadata(&template.destination)?;
    if meta.permissions().mode() & 0o7777 != template.mode {
        fs::set_permissions(
            &template.destination,
            fs::Permissions::from_mode(template.mode),
        )?;
    }
    let uid_off = template.uid.is_some_and(|u| u != meta.uid());
    let gid_off = template.gid.is_some_and(|g| g != meta.gid());
    if uid_off || gid_off {
        std::os::unix::fs::chown(&template.destination, template.uid, template.gid)?;
    }
    Ok(())
}

/// A temporary file beside the destination, removed unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path, dest: &Path) -> io::Result<TempFile> {
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for _ in 0..16 {
            let tag: u64 = rand::random();
            let path = dir.join(format!(".{base}.latchkey-{tag:016x}.tmp"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary file name",
        ))
    }

    fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
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
