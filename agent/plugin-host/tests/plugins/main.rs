//! The plugin host's integration tests: one binary, one module per concern.
//!
//! Every test loads a real component built for wasm32-wasip2 by `support` and calls it
//! through the public API the agent uses.

#![allow(clippy::unwrap_used)]

mod languages;
mod limits;
mod network;
mod sql;
mod support;
