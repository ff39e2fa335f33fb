//! Builds the WebAssembly guests that tests and benchmarks load — the plugin host's
//! test guest and the first-party providers in `plugins/` for `wasm32-wasip2`, and the
//! Python and JavaScript example providers ([`examples`]).
//!
//! One helper for every suite (the end-to-end tests, the plugin host's tests, the
//! benches), so a guest is built with one set of settings into one target dir,
//! `<target>/tmp/e2e-wasm`, and a tree the tests have built builds nothing here.
//! Each package is built on its own: building several in one cargo run would unify
//! their dependencies' features and give other `.wasm` files than a plugin author's
//! own `cargo build` does.
//!
//! ```ignore
//! let guests = latchkey_guest_build::Guests::new(workspace_root, env!("CARGO_TARGET_TMPDIR"));
//! let wasm = guests.build("latchkey-plugin-postgres")?; // …/latchkey_plugin_postgres.wasm
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod examples;
pub use examples::Lang;

/// Where guests are built, and from which workspace.
#[derive(Debug, Clone)]
pub struct Guests {
    workspace: PathBuf,
    target: PathBuf,
}

impl Guests {
    /// Guests of the workspace at `workspace`, built under `target_tmpdir` (the
    /// calling crate's `CARGO_TARGET_TMPDIR`, the same folder for every crate of a
    /// workspace).
    pub fn new(workspace: impl Into<PathBuf>, target_tmpdir: impl AsRef<Path>) -> Self {
        Guests {
            workspace: workspace.into(),
            target: target_tmpdir.as_ref().join("e2e-wasm"),
        }
    }

    /// The cargo target dir guests are built into.
    pub fn target_dir(&self) -> &Path {
        &self.target
    }

    /// Where `package`'s component lands once built.
    pub fn wasm_path(&self, package: &str) -> PathBuf {
        self.target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    }

    /// Builds `package` (a no-op when it is up to date) and returns its `.wasm`.
    /// Concurrent callers are safe: cargo locks the target dir.
    pub fn build(&self, package: &str) -> Result<PathBuf, String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&self.workspace)
            .args(["build", "--release", "--target", "wasm32-wasip2", "-p"])
            .arg(package)
            .env("CARGO_TARGET_DIR", &self.target)
            // Guest profile: small and without debug info, whatever the host profile says.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "true")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .map_err(|e| format!("cannot run cargo to build {package}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building {package} for wasm32-wasip2 failed (is the target installed? run .ci/install-tools.sh)"
            ));
        }
        let wasm = self.wasm_path(package);
        if !wasm.is_file() {
            return Err(format!(
                "cargo built {package} but {} is missing",
                wasm.display()
            ));
        }
        Ok(wasm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_named_after_their_package() {
        let guests = Guests::new("/w", "/w/target/tmp");
        assert_eq!(
            guests.wasm_path("latchkey-plugin-sql-rotation"),
            Path::new(
                "/w/target/tmp/e2e-wasm/wasm32-wasip2/release/latchkey_plugin_sql_rotation.wasm"
            )
        );
    }
}
