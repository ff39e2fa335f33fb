//! The plugin manifest: `plugin.toml`, shipped beside the `.wasm` file.
//!
//! The manifest says what a plugin is and what it needs; the host's configuration
//! says what it gets. The effective grant is the intersection (see
//! [`crate::host::Grants`]). At load time the host checks the manifest against the
//! plugin's own `info` answer and refuses a plugin whose name disagrees or whose
//! manifest lists operations `info` lacks; other disagreements and cut grants are
//! [`crate::Warning`]s. `kinds` is enforced on every call. Every key is documented
//! for authors in `docs/PLUGIN-MANIFEST.md`.
//!
//! ```toml
//! name = "github"
//! version = "0.1.0"
//! kinds = ["api-key"]
//! operations = ["validate", "refresh"]
//!
//! [needs]
//! http = ["api.github.com"]      # [scheme://]host[:port]; no scheme = https only, no port = 443
//! sql = []                       # names of SQL connections
//! ```
//!
//! `"*"` in `http` or `sql` leaves the choice to the operator's grant: for providers
//! whose endpoint is configuration (an OAuth server, an API gateway, a database), the
//! manifest cannot know it. The host still allows only what the operator grants.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plugin::Operation;

/// A parsed `plugin.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Provider name, `[a-z0-9-]+`, unique among loaded plugins.
    pub name: String,
    /// Provider version (semver, informational).
    pub version: String,
    /// Credential kinds the provider handles; the host passes no other kind to it
    /// (empty: every kind).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Operations the provider implements (besides `info`).
    pub operations: Vec<Operation>,
    /// Capabilities the provider needs.
    #[serde(default)]
    pub needs: Needs,
}

/// The capabilities a manifest asks for.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Outgoing HTTP, `[scheme://]host[:port]` as in [`crate::host::Grants::http`]
    /// (no scheme means HTTPS only, no port its default); `"*"`: whatever the
    /// operator grants.
    #[serde(default)]
    pub http: Vec<String>,
    /// SQL connection names; `"*"`: whatever the operator grants.
    #[serde(default)]
    pub sql: Vec<String>,
}

/// A manifest that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read plugin manifest {path}")]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("plugin manifest is not valid")]
    Parse(#[source] toml::de::Error),
    /// The name is empty or has characters outside `[a-z0-9-]`.
    #[error("plugin manifest: name must be [a-z0-9-]+")]
    BadName,
}

impl Manifest {
    /// Parses a manifest from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let manifest: Self = toml::from_str(text).map_err(ManifestError::Parse)?;
        let name_ok = !manifest.name.is_empty()
            && manifest
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(ManifestError::BadName);
        }
        Ok(manifest)
    }

    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Whether the manifest declares `op`.
    pub fn supports(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::from_toml(
            "name = \"gh\"\nversion = \"1.0.0\"\nkinds = [\"api-key\"]\noperations = [\"validate\", \"create-pending\"]\n[needs]\nhttp = [\"api.github.com\"]\n",
        )
        .expect("valid manifest");
        assert_eq!(m.name, "gh");
        assert!(m.supports(Operation::CreatePending));
        assert!(!m.supports(Operation::Refresh));
        assert_eq!(m.needs.http, vec!["api.github.com".to_owned()]);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_names() {
        assert!(matches!(
            Manifest::from_toml("name = \"x\"\nversion = \"1\"\noperations = []\nextra = 1\n"),
            Err(ManifestError::Parse(_))
        ));
        assert!(matches!(
            Manifest::from_toml("name = \"X Y\"\nversion = \"1\"\noperations = []\n"),
            Err(ManifestError::BadName)
        ));
    }
}
