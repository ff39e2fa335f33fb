//! Host-side bindings generated from `wit/` (the `provider-plugin` world).
//!
//! Private to the crate: the public API speaks in [`crate::plugin`] types, so a change
//! in the generated code never reaches the agent. Imports are `trappable`: a host
//! function returns `wasmtime::Result<…>`, where `Err` traps the guest (a host fault)
//! and `Ok(Err(sql-error))` is an answer the guest handles.

#![allow(missing_docs, unreachable_pub, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "latchkey:provider/provider-plugin",
    imports: { default: trappable },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

pub(crate) use exports::latchkey::provider::provider as guest;
pub(crate) use latchkey::provider::{log, sql, types};
