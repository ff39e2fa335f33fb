//! Logging: tracing to stderr, human-readable by default or JSON lines.
//!
//! Field conventions: fields first, a short lowercase message last
//! (`info!(path = %path, version, "secret written")`). Nothing that could hold a
//! secret value is ever a field: secret types print `[REDACTED]` in any case.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `filter` uses RUST_LOG syntax; default `info`.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber already set (tests) is fine.
    let _ = result;
}

/// An error and its causes on one line, for logs and refusals (no values: the
/// agent's errors carry none). The plugin host's, so both say it the same way.
pub use latchkey_plugin_host::error_chain as chain;
