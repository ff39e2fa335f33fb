//! Compiled-artifact cache: `.cwasm` files on disk, one per (component, engine).
//!
//! Compiling a component is expensive (≈ 0.1 s for Rust, 5–17 s for the Python and JS
//! interpreters on two cores); loading a compiled artifact takes milliseconds. The
//! key is the sha256 of the `.wasm` bytes plus a hash of the engine's
//! `precompile_compatibility_hash` (wasmtime version, target, and every setting that
//! changes generated code), so a new wasmtime or a different engine configuration
//! never loads a stale artifact — it misses and recompiles.
//!
//! Trust: a `.cwasm` is native code and is loaded without verification. The cache
//! directory must be writable only by the agent (it is created with mode 0700); the
//! files in it come only from this host's own compiler. A file that fails to load
//! (truncated, corrupt, incompatible) is replaced by a fresh compile.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// A cache directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Creating the directory or writing an artifact failed.
    #[error("cannot write compiled artifact cache at {path}")]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Where compiled components are kept.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the cache; no compilation.
    Cached,
    /// Compiled now (and written to the cache, if there is one).
    Compiled,
}

impl ArtifactCache {
    /// Opens (and creates, mode 0700) a cache directory for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheError> {
        create_private_dir(dir).map_err(|source| CacheError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The artifact path for a component with this sha256 (hex).
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Loads the artifact for `sha256`, or compiles `wasm` and stores the result.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, Source)> {
        let path = self.path_for(sha256);
        if path.exists() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, Source::Cached)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "compiled artifact unusable, recompiling");
                }
            }
        }
        let bytes = engine.precompile_component(wasm)?;
        if let Err(e) = self.store(&path, &bytes) {
            tracing::warn!(error = %e, "cannot cache compiled artifact");
        }
        let component = deserialize_bytes(engine, &bytes)?;
        Ok((component, Source::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let write_err = |source| CacheError::Write {
            path: path.to_owned(),
            source,
        };
        let mut tmp = tempfile_in(&self.dir).map_err(write_err)?;
        tmp.1.write_all(bytes).map_err(write_err)?;
        tmp.1.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp.0, path).map_err(write_err)
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is in the agent-private cache directory and was written by
    // `precompile_component` of an engine with the same compatibility hash (the
    // hash is part of the name); wasmtime re-checks the engine configuration in the
    // artifact header and refuses a mismatch.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `bytes` were just produced by `engine.precompile_component`.
    unsafe { Component::deserialize(engine, bytes) }
}
