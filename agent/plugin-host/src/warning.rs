//! What the host notices when it loads a plugin and does not refuse: a grant the
//! operator gave that the manifest's `[needs]` cuts, and a manifest that says less
//! than (or other than) the plugin's own `info`.
//!
//! [`crate::PluginHost::load`] logs each warning once (`warn`, after the load has
//! succeeded) and keeps them on the [`crate::Plugin`]; `latchkey plugin inspect`
//! prints them, and `latchkey check` prints those of every configured plugin. What
//! the host does refuse (a wrong digest, a manifest naming another plugin, or
//! operations `info` does not implement) is a [`crate::LoadError`] instead.

use std::fmt;

use serde::Serialize;

use crate::plugin::{Operation, ProviderInfo};

/// One thing to tell the operator about a loaded plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "warning", rename_all = "kebab-case")]
pub enum Warning {
    /// An HTTP grant of the configuration that the manifest's `needs.http` does not
    /// list: the plugin cannot use it.
    HttpGrantCut {
        /// The granted `scheme://host:port`.
        authority: String,
    },
    /// A SQL connection granted by the configuration that the manifest's
    /// `needs.sql` does not list: the plugin cannot use it.
    SqlGrantCut {
        /// The connection's name.
        connection: String,
    },
    /// `info` names hosts or connections it needs and the manifest's `[needs]`
    /// lists none: every grant of that capability is cut.
    NeedsMissing {
        /// `http` or `sql`.
        what: &'static str,
        /// What `info` says it needs.
        info: String,
    },
    /// The manifest and `info` disagree on something the host does not refuse.
    InfoDisagrees {
        /// `version`, `kinds` or `operations`.
        what: &'static str,
        /// What the manifest says.
        manifest: String,
        /// What `info` says.
        info: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::HttpGrantCut { authority } => write!(
                f,
                "http grant {authority} is cut: the manifest's [needs] http does not list it, \
                 so the plugin cannot reach it"
            ),
            Warning::SqlGrantCut { connection } => write!(
                f,
                "sql grant {connection} is cut: the manifest's [needs] sql does not list it, \
                 so the plugin cannot use it"
            ),
            Warning::NeedsMissing { what, info } => write!(
                f,
                "the manifest's [needs] lists no {what} although info needs [{info}]: \
                 every {what} grant is cut"
            ),
            Warning::InfoDisagrees {
                what: "operations",
                manifest,
                info,
            } => write!(
                f,
                "manifest and info disagree on operations: the manifest lists [{manifest}], \
                 info [{info}]; the host calls only what the manifest lists"
            ),
            Warning::InfoDisagrees {
                what: "kinds",
                manifest,
                info,
            } => write!(
                f,
                "manifest and info disagree on kinds: the manifest lists [{manifest}], \
                 info [{info}]; the host passes only credentials of the manifest's kinds"
            ),
            Warning::InfoDisagrees {
                what,
                manifest,
                info,
            } => write!(
                f,
                "manifest and info disagree on {what}: the manifest says {manifest}, info {info}"
            ),
        }
    }
}

/// Where the manifest and `info` disagree short of a refusal: the version, the kinds
/// (as sets) and operations `info` offers that the manifest leaves out (the host
/// refuses the other way round).
pub(crate) fn disagreements(manifest: &crate::Manifest, info: &ProviderInfo) -> Vec<Warning> {
    let mut out = Vec::new();
    if manifest.needs.http.is_empty() && !info.http_authorities.is_empty() {
        out.push(Warning::NeedsMissing {
            what: "http",
            info: info.http_authorities.join(", "),
        });
    }
    if manifest.needs.sql.is_empty() && !info.sql_connections.is_empty() {
        out.push(Warning::NeedsMissing {
            what: "sql",
            info: info.sql_connections.join(", "),
        });
    }
    if manifest.version != info.version {
        out.push(Warning::InfoDisagrees {
            what: "version",
            manifest: manifest.version.clone(),
            info: info.version.clone(),
        });
    }
    let mut manifest_kinds = manifest.kinds.clone();
    let mut info_kinds = info.kinds.clone();
    manifest_kinds.sort();
    info_kinds.sort();
    if manifest_kinds != info_kinds {
        out.push(Warning::InfoDisagrees {
            what: "kinds",
            manifest: manifest.kinds.join(", "),
            info: info.kinds.join(", "),
        });
    }
    if info.operations.iter().any(|op| !manifest.supports(*op)) {
        let names = |ops: &[Operation]| {
            ops.iter()
                .map(|op| op.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(Warning::InfoDisagrees {
            what: "operations",
            manifest: names(&manifest.operations),
            info: names(&info.operations),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str, kinds: &[&str], operations: &[Operation]) -> ProviderInfo {
        ProviderInfo {
            name: "acme".into(),
            version: version.into(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            operations: operations.to_vec(),
            http_authorities: Vec::new(),
            sql_connections: Vec::new(),
        }
    }

    fn manifest(text: &str) -> crate::Manifest {
        crate::Manifest::from_toml(text).expect("manifest")
    }

    /// Issue 15, item 3: a manifest without `[needs]` silently cut every grant.
    #[test]
    fn a_manifest_without_needs_is_said_to_cut_every_grant() {
        let m = manifest("name = \"acme\"\nversion = \"1.0.0\"\noperations = []\n");
        let mut i = info("1.0.0", &[], &[]);
        i.http_authorities = vec!["api.acme.example".into()];
        let said: Vec<String> = disagreements(&m, &i)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            said,
            ["the manifest's [needs] lists no http although info needs [api.acme.example]: every http grant is cut"]
        );
    }

    #[test]
    fn an_agreeing_manifest_has_nothing_to_say() {
        let m = manifest(
            "name = \"acme\"\nversion = \"1.0.0\"\nkinds = [\"b\", \"a\"]\noperations = [\"validate\"]\n",
        );
        let i = info("1.0.0", &["a", "b"], &[Operation::Validate]);
        assert!(disagreements(&m, &i).is_empty());
    }

    /// Issue 15, item 3: fewer operations, other kinds or another version were
    /// accepted silently.
    #[test]
    fn fewer_operations_other_kinds_and_another_version_are_each_said() {
        let m = manifest(
            "name = \"acme\"\nversion = \"0.9.0\"\nkinds = [\"api-key\"]\noperations = [\"validate\"]\n",
        );
        let i = info(
            "1.0.0",
            &["acme-token"],
            &[Operation::Validate, Operation::Refresh],
        );
        let said: Vec<String> = disagreements(&m, &i)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(said.len(), 3, "{said:#?}");
        assert!(
            said[0].contains("version: the manifest says 0.9.0, info 1.0.0"),
            "{}",
            said[0]
        );
        assert!(
            said[1].contains("kinds: the manifest lists [api-key], info [acme-token]"),
            "{}",
            said[1]
        );
        assert!(
            said[2].contains("operations: the manifest lists [validate], info [validate, refresh]"),
            "{}",
            said[2]
        );
    }
}
