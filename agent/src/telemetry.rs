//! Logging: tracing to stderr (or a file), human-readable by default or JSON lines.
//!
//! Field conventions: fields first, a short lowercase message last
//! (`info!(path = %path, version, "secret written")`). Nothing that could hold a
//! secret value is ever a field: secret types print `[REDACTED]` in any case.
//!
//! `--log-file PATH` appends to a file instead (created `0600`, never opened through
//! a symbolic link); [`reopen`] (SIGUSR1, and every reload) opens it again by the
//! same path, for logrotate.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The log file, when logging goes to one.
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

/// A log file that can be opened again by its path.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// One event's write, under the file's lock (the formatter writes a whole line).
struct LogWriter<'a>(std::sync::MutexGuard<'a, std::fs::File>);

impl Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for &'static LogFile {
    type Writer = LogWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.file.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Installs the global subscriber. `filter` uses RUST_LOG syntax; default `info`.
/// With `file`, logs are appended there instead of stderr; it is opened here, so a
/// path that cannot be written is an error before anything runs.
pub fn init(format: LogFormat, filter: Option<&str>, file: Option<&Path>) -> std::io::Result<()> {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_target(true);
    let result = match file {
        Some(path) => {
            let file = crate::audit::open_file(path)?;
            let writer: &'static LogFile = LOG_FILE.get_or_init(|| LogFile {
                path: path.to_owned(),
                file: Mutex::new(file),
            });
            let builder = builder.with_writer(writer).with_ansi(false);
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().flatten_event(true).try_init(),
            }
        }
        None => {
            let builder = builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().flatten_event(true).try_init(),
            }
        }
    };
    // A subscriber already set (tests) is fine.
    let _ = result;
    Ok(())
}

/// Opens the log file again by its path (after logrotate moved it). Without a log
/// file, does nothing. On failure the old file keeps receiving the log.
pub fn reopen() {
    let Some(log) = LOG_FILE.get() else {
        return;
    };
    match crate::audit::open_file(&log.path) {
        Ok(file) => {
            *log.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
            tracing::info!(path = %log.path.display(), "log file reopened");
        }
        Err(e) => {
            tracing::error!(path = %log.path.display(), error = %e, "cannot reopen the log file; logging on to the old one")
        }
    }
}

/// An error and its causes on one line, for logs and refusals (no values: the
/// agent's errors carry none). The plugin host's, so both say it the same way.
pub use latchkey_plugin_host::error_chain as chain;
