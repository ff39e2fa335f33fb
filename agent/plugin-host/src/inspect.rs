//! What `latchkey plugin inspect FILE` shows: digest, manifest, WIT world, and the
//! plugin's own `info` answer.
//!
//! The agent's CLI calls [`inspect`] and prints the [`Inspection`] as JSON (it
//! implements `Serialize`). Inspecting compiles the component with the host's
//! engine (using the artifact cache) and calls `info` on an instance with no grants.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::host::{sha256_hex, Limits, PluginHost};
use crate::manifest::{Manifest, ManifestError};
use crate::plugin::{CallError, Plugin, PluginInner, ProviderInfo};

/// The contract interface every provider exports.
pub const PROVIDER_EXPORT: &str = "latchkey:provider/provider@0.1.0";

/// Inspecting failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest beside the file is invalid.
    #[error("invalid manifest")]
    Manifest(#[source] ManifestError),
    /// Not a valid component.
    #[error("{path} is not a valid WebAssembly component")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
}

/// What a plugin file is.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: PathBuf,
    /// sha256 of the file (what to pin in the configuration).
    pub sha256: String,
    /// File size in bytes.
    pub size_bytes: u64,
    /// The manifest (`--manifest`, else `<file>.toml` or `plugin.toml` beside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestSummary>,
    /// Interfaces the component imports (its WIT world's imports).
    pub imports: Vec<String>,
    /// Interfaces it exports.
    pub exports: Vec<String>,
    /// Whether it exports the latchkey provider interface this host speaks.
    pub is_provider: bool,
    /// The plugin's `info` answer, if it is a provider and answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ProviderInfo>,
    /// Why `info` failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_error: Option<String>,
    /// Where the manifest and `info` disagree, in words: what the agent would refuse
    /// at load (another name, operations `info` lacks) and what it would warn of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The manifest fields worth printing.
#[derive(Clone, Debug, Serialize)]
pub struct ManifestSummary {
    /// Where it was read from.
    pub path: PathBuf,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Credential kinds.
    pub kinds: Vec<String>,
    /// Operations.
    pub operations: Vec<String>,
    /// HTTP authorities it needs.
    pub http: Vec<String>,
    /// SQL connections it needs.
    pub sql: Vec<String>,
}

fn find_manifest(wasm: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    let beside = wasm.with_extension("toml");
    if beside.is_file() {
        return Some(beside);
    }
    let plugin_toml = wasm.parent().map(|d| d.join("plugin.toml"))?;
    plugin_toml.is_file().then_some(plugin_toml)
}

/// Inspects a plugin file. Blocking (compiles the component unless cached).
pub fn inspect(
    host: &PluginHost,
    wasm: &Path,
    manifest: Option<&Path>,
) -> Result<Inspection, InspectError> {
    let bytes = std::fs::read(wasm).map_err(|source| InspectError::Read {
        path: wasm.to_owned(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let manifest = match find_manifest(wasm, manifest) {
        Some(path) => Some((
            Manifest::from_file(&path).map_err(InspectError::Manifest)?,
            path,
        )),
        None => None,
    };
    let (component, source) =
        host.compile(&sha256, &bytes)
            .map_err(|source| InspectError::Compile {
                path: wasm.to_owned(),
                source,
            })?;
    let engine = &host.inner.engine;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let is_provider = exports.iter().any(|e| e == PROVIDER_EXPORT);

    let (mut info, mut info_error) = (None, None);
    if is_provider {
        let placeholder = Manifest {
            name: manifest
                .as_ref()
                .map_or_else(|| "inspect".to_owned(), |(m, _)| m.name.clone()),
            version: String::new(),
            kinds: Vec::new(),
            operations: Vec::new(),
            needs: Default::default(),
        };
        let result = host
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(crate::bindings::ProviderPluginPre::new)
            .map_err(|source| CallError::Instantiate {
                plugin: placeholder.name.clone(),
                source,
            })
            .and_then(|pre| {
                let plugin = Plugin {
                    inner: Arc::new(PluginInner {
                        name: Arc::from(placeholder.name.as_str()),
                        manifest: placeholder,
                        sha256: sha256.clone(),
                        info: None,
                        pre,
                        host: host.inner.clone(),
                        http: Arc::default(),
                        sql: Arc::from(Vec::new()),
                        limits: Limits::default(),
                        source,
                        warnings: Vec::new(),
                    }),
                };
                plugin.info_blocking()
            });
        match result {
            Ok(i) => info = Some(i),
            Err(e) => info_error = Some(error_chain(&e)),
        }
    }
    let warnings = match (&manifest, &info) {
        (Some((m, _)), Some(i)) => compare(m, i),
        _ => Vec::new(),
    };
    Ok(Inspection {
        path: wasm.to_owned(),
        sha256,
        size_bytes: bytes.len() as u64,
        manifest: manifest.map(|(m, path)| ManifestSummary {
            path,
            name: m.name,
            version: m.version,
            kinds: m.kinds,
            operations: m.operations.iter().map(|o| o.as_str().to_owned()).collect(),
            http: m.needs.http,
            sql: m.needs.sql,
        }),
        imports,
        exports,
        is_provider,
        info,
        info_error,
        warnings,
    })
}

/// The manifest against `info`, as the host's load judges them, in words.
fn compare(manifest: &Manifest, info: &ProviderInfo) -> Vec<String> {
    let mut out = Vec::new();
    if manifest.name != info.name {
        out.push(format!(
            "the manifest names {} and info {}: the agent refuses to load it",
            manifest.name, info.name
        ));
    }
    let missing: Vec<&str> = manifest
        .operations
        .iter()
        .filter(|op| !info.operations.contains(op))
        .map(|op| op.as_str())
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "the manifest lists operations info does not implement ({}): the agent refuses to load it",
            missing.join(", ")
        ));
    }
    out.extend(
        crate::warning::disagreements(manifest, info)
            .iter()
            .map(ToString::to_string),
    );
    out
}

/// An error and its sources on one line, for printing.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
