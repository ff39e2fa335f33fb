//! `latchkey:provider/log`: guest log calls become tracing events tagged with the
//! plugin's name. Long messages are cut at [`MAX_MESSAGE`] bytes so a plugin cannot
//! flood the log with one call, and the secret values of the call are replaced by
//! `[REDACTED]` so a plugin cannot put them into the agent's log.

use crate::bindings::log::{Host, Level};
use crate::state::State;

/// Longest message kept, in bytes.
const MAX_MESSAGE: usize = 4096;

impl Host for State {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut end = message.len().min(MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &self.scrub(&message[..end], &[]);
        let message = message.as_str();
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, message, "plugin log"),
            Level::Debug => tracing::debug!(plugin, message, "plugin log"),
            Level::Info => tracing::info!(plugin, message, "plugin log"),
            Level::Warn => tracing::warn!(plugin, message, "plugin log"),
            Level::Error => tracing::error!(plugin, message, "plugin log"),
        }
        Ok(())
    }
}
