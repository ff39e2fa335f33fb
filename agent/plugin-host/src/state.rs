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

    /// Writes what the guest printed to the log, one event per line, tagged with the
    /// plugin's name. Called once after every call (success or not).
    /// `text` with every secret value of this call (and `extra`) replaced by
    /// `[REDACTED]`. Values shorter than 4 bytes are left: they would match by chance.
    pub(crate) fn scrub(&self, text: &str, extra: &[crate::secret::SecretString]) -> String {
        let out = scrub(text.to_owned(), &self.redact);
        scrub(out, extra)
    }

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

/// `text` with every one of `values` replaced by `[REDACTED]`. Values shorter than
/// 4 bytes are left: they would match by chance.
pub(crate) fn scrub(mut text: String, values: &[crate::secret::SecretString]) -> String {
    for value in values {
        let v = value.expose();
        if v.len() >= 4 && text.contains(v) {
            text = text.replace(v, "[REDACTED]");
        }
    }
    text
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
