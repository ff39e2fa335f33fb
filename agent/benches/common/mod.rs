//! Code the bench harnesses share (`serve`, `sync`, `lifecycle`, `render`, `soak`).
//!
//! Each file in `agent/benches/` is its own crate; each includes this folder with
//! `mod common;` and uses what it needs (hence the `dead_code` allowance there).

pub mod agent;
pub mod args;
pub mod machine;
pub mod markdown;
pub mod postgres;
pub mod process;
pub mod procfs;
pub mod runtime;
pub mod seed;
