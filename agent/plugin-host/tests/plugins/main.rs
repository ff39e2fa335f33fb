//! The plugin host's integration tests: one binary, one module per concern.
//!
//! Every test loads a real component built for wasm32-wasip2 by `support` and calls it
//! through the public API the agent uses.

#![allow(clippy::unwrap_used)]

// Loopback HTTP fixtures, shared with the end-to-end harness.
#[path = "../../../../tests/harness/fixture.rs"]
#[allow(dead_code)] // not every helper is used here
mod fixture;
mod languages;
mod limits;
mod network;
// How much slower than the reference machine this one is, shared with the end-to-end
// harness: time bounds here are scaled by it.
#[path = "../../../../tests/harness/pace.rs"]
#[allow(dead_code)] // not every helper is used here
mod pace;
mod sql;
mod support;
mod token_service;
