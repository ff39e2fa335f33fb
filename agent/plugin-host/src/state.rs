//! The data of one plugin call's `Store`: WASI context, granted capabilities, limits.
//!
//! Built fresh for every call by [`crate::plugin::Plugin`] and dropped with the store,
//! so nothing (resources, captured output, half-finished HTTP requests) outlives the
//! call. The WASI context grants nothing: no preopened directories, no environment,
//! no arguments, sockets denied (wasmtime-wasi's default address check), stdin empty;
//! stdout and stderr go to bounded in-memory pipes that are logged after the call.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capability::http::HttpPolicy;
use crate::capability::sql::SqlAccess;

/// Bytes of guest stdout/stderr kept per call (the rest is dropped).
const CAPTURE_BYTES: usize = 64 * 1024;

/// Store data for one call.
pub(crate) struct State {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    pub(crate) http: HttpPolicy,
    pub(crate) sql: SqlAccess,
    pub(crate) limiter: Limiter,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    pub(crate) deadline: Instant,
    /// Secret values of this call (the credential passed in): scrubbed from anything
    /// the guest logs or prints.
    pub(crate) redact: Vec<crate::secret::SecretString>,
}

impl State {
    pub(crate) fn new(
        plugin: Arc<str>,
        http: HttpPolicy,
        sql: SqlAccess,
        memory_bytes: usize,
        deadline: Instant,
        seed: Option<&crate::seed::Seed>,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(CAPTURE_BYTES);
        let stderr = MemoryOutputPipe::new(CAPTURE_BYTES);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false);
        if let Some(seed) = seed {
            wasi.secure_random(seed.rng());
        }
        let wasi = wasi.build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            http,
            sql,
            limiter: Limiter::new(memory_bytes),
            stdout,
            stderr,
            deadline,
            redact: Vec::new(),
        }
    }

    /// `text` with every secret value of this call (and `extra`) replaced, as
    /// [`scrub`] does.
    pub(crate) fn scrub(&self, text: &str, extra: &[crate::secret::SecretString]) -> String {
        let out = scrub(text.to_owned(), &self.redact);
        scrub(out, extra)
    }

    /// Writes what the guest printed to the log, one event per line, tagged with the
    /// plugin's name. Called once after every call (success or not).
    pub(crate) fn flush_output(&self, extra: &[crate::secret::SecretString]) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if bytes.is_empty() {
                continue;
            }
            let text = self.scrub(&String::from_utf8_lossy(&bytes), extra);
            for line in text.lines() {
                tracing::info!(plugin = %self.plugin, stream, line, "plugin output");
            }
        }
    }
}

/// Values at least this long are scrubbed wherever they appear.
const SCRUB_ANYWHERE: usize = 8;
/// Values shorter than this are left alone: they would match by chance.
const SCRUB_MIN: usize = 4;

/// `text` with every one of `values` replaced by `[REDACTED]`. A value of 8 bytes or
/// more is replaced wherever it appears. A shorter one (4 to 7 bytes; anything shorter
/// is left) only where it stands as a word of its own, not inside a longer run of
/// letters and digits: a client id `intro` must not turn "introspection" into
/// "[REDACTED]spection", while `k3y!` quoted in an error is still caught.
pub(crate) fn scrub(mut text: String, values: &[crate::secret::SecretString]) -> String {
    for value in values {
        let v = value.expose();
        if v.len() < SCRUB_MIN || !text.contains(v) {
            continue;
        }
        text = if v.len() >= SCRUB_ANYWHERE {
            text.replace(v, "[REDACTED]")
        } else {
            replace_standalone(&text, v)
        };
    }
    text
}

/// `text` with the occurrences of `v` that are not part of a longer alphanumeric run
/// replaced by `[REDACTED]`.
fn replace_standalone(text: &str, v: &str) -> String {
    let joins = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(v) {
        let (before, after) = (&rest[..at], &rest[at + v.len()..]);
        let glued = (joins(v.chars().next()) && joins(before.chars().next_back()))
            || (joins(v.chars().next_back()) && joins(after.chars().next()));
        out.push_str(before);
        out.push_str(if glued { v } else { "[REDACTED]" });
        rest = after;
    }
    out.push_str(rest);
    out
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

/// [`StoreLimits`] plus a note of whether the memory cap was what stopped the guest,
/// so a guest that aborts after a refused `memory.grow` is reported as "memory limit"
/// rather than as a generic trap.
pub(crate) struct Limiter {
    inner: StoreLimits,
    max: usize,
    pub(crate) memory_hit: bool,
}

impl Limiter {
    fn new(memory_bytes: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            max: memory_bytes,
            memory_hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.memory_hit = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn scrubbed(text: &str, values: &[&str]) -> String {
        let values: Vec<SecretString> = values.iter().map(|v| SecretString::from(*v)).collect();
        scrub(text.to_owned(), &values)
    }

    #[test]
    fn long_values_go_everywhere_short_ones_only_as_words() {
        assert_eq!(
            scrubbed(
                "token=s3cretvalue1&x; again:s3cretvalue1s3cretvalue1",
                &["s3cretvalue1"]
            ),
            "token=[REDACTED]&x; again:[REDACTED][REDACTED]"
        );
        assert_eq!(
            scrubbed("no userinfo or introspection endpoint", &["intro"]),
            "no userinfo or introspection endpoint"
        );
        assert_eq!(
            scrubbed("client intro refused; 'intro' unknown", &["intro"]),
            "client [REDACTED] refused; '[REDACTED]' unknown"
        );
        assert_eq!(
            scrubbed("key k3y! rejected", &["k3y!"]),
            "key [REDACTED] rejected"
        );
        assert_eq!(scrubbed("abc is short", &["abc"]), "abc is short");
        assert_eq!(scrubbed("héllo wörld", &["wörld"]), "héllo [REDACTED]");
    }
}
