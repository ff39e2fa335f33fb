//! Logs in failure messages: the end of a log, never all of it, and where the whole
//! file is.
//!
//! A process under test (an agent at `trace` level, a PostgreSQL server) can write
//! hundreds of megabytes; a failure that printed all of it would bury the one line
//! that matters. [`tail`] reads only the end of a file and names the file; the test
//! folders holding the files are deleted when the test ends unless
//! `LATCHKEY_KEEP_TEST_DIRS=1` ([`keep_dirs`], [`tempdir`]), and the excerpt says which.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use anyhow::Context as _;

/// How many lines of a log a failure shows.
pub(crate) const TAIL_LINES: usize = 200;
/// How much of the end of a file is read to find them.
const TAIL_BYTES: u64 = 512 * 1024;
/// Longer lines are cut (a dump of generated code can be one huge line).
const LINE_CHARS: usize = 2000;

/// Whether test folders are kept after the test (`LATCHKEY_KEEP_TEST_DIRS=1`).
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("LATCHKEY_KEEP_TEST_DIRS").is_some_and(|v| v == "1")
}

/// A new temp folder named `PREFIX…`, deleted on drop unless [`keep_dirs`].
pub(crate) fn tempdir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep_dirs())
        .tempdir()
        .context("cannot create a temp folder")
}

/// What happens to `path` after the test, in words for a failure message.
pub(crate) fn whereabouts(path: &Path) -> String {
    if keep_dirs() {
        format!("{} (kept: LATCHKEY_KEEP_TEST_DIRS=1)", path.display())
    } else {
        format!(
            "{} (deleted after the test; set LATCHKEY_KEEP_TEST_DIRS=1 to keep it)",
            path.display()
        )
    }
}

/// The last [`TAIL_LINES`] lines of the file at `path`, under a line that says how
/// much was left out and where the whole file is. Empty when the file is empty or
/// missing.
pub(crate) fn tail(path: &Path) -> String {
    let (text, cut) = match read_end(path) {
        Ok(end) => end,
        Err(_) => return String::new(),
    };
    if text.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let shown = &lines[from..];
    let header = if from > 0 || cut {
        format!(
            "--- the last {} lines of {}",
            shown.len(),
            whereabouts(path)
        )
    } else {
        format!("--- {}", whereabouts(path))
    };
    let mut out = header;
    out.push('\n');
    for line in shown {
        if line.chars().count() > LINE_CHARS {
            out.extend(line.chars().take(LINE_CHARS));
            out.push_str(" …[line cut]");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The last [`TAIL_BYTES`] of a file, from its first whole line; and whether anything
/// before was left out.
fn read_end(path: &Path) -> std::io::Result<(String, bool)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the partial first line.
        let first = text.find('\n').map_or(text.len(), |i| i + 1);
        text.drain(..first);
    }
    Ok((text, start > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_log_is_shown_as_its_last_lines_and_its_path() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i} {}\n", "x".repeat(40)));
        }
        text.push_str(&"y".repeat(5000));
        text.push('\n');
        std::fs::write(&path, &text)?;
        let shown = tail(&path);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES + 1, "{shown}");
        assert!(
            lines[0].starts_with("--- the last 200 lines of ")
                && lines[0].contains(&path.display().to_string()),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("line 99801 "), "{}", lines[1]);
        assert!(lines[200].ends_with("…[line cut]"), "{}", lines[200]);
        assert!(shown.len() < 32 * 1024, "{} bytes", shown.len());
        Ok(())
    }

    #[test]
    fn a_short_log_is_shown_whole_and_a_missing_one_not_at_all() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("short.log");
        std::fs::write(&path, "one\ntwo\n")?;
        let shown = tail(&path);
        assert_eq!(shown.lines().skip(1).collect::<Vec<_>>(), ["one", "two"]);
        assert!(shown.starts_with("--- "), "{shown}");
        assert_eq!(tail(&dir.path().join("missing.log")), "");
        Ok(())
    }
}
