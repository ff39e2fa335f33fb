//! Maps agent paths to the names an upstream uses, and back.
//!
//! A template such as `tenants/{tenant}/{path}` is rendered once, when the upstream is
//! built, with the configured tenant; `{path}` must come last so that a remote name
//! found while listing maps back to exactly one agent path. The agent path
//! `exchanges/binance` then lives at `tenants/acme/exchanges/binance` upstream.
//! Everything here is pure: no I/O.

use crate::path::{PathError, Prefix, SecretPath};

/// A rendered template: a fixed remote prefix in front of the agent path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// `""` or a prefix ending in `/`, e.g. `tenants/acme/`.
    fixed: String,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{path}` is missing or not at the end.
    #[error("template {0:?} must end with {{path}}")]
    PathNotLast(String),
    /// `{tenant}` is used but no tenant is configured.
    #[error("template {0:?} uses {{tenant}} but no tenant is set")]
    MissingTenant(String),
    /// A placeholder other than `{tenant}` and `{path}`.
    #[error("template {0:?} has an unknown placeholder")]
    UnknownPlaceholder(String),
    /// The tenant is not a single valid path segment.
    #[error("tenant {0:?} must be one path segment")]
    BadTenant(String),
    /// The rendered prefix is not a valid path.
    #[error("template {template:?} renders to an invalid prefix")]
    BadPrefix {
        /// The template as written.
        template: String,
        /// Why.
        #[source]
        source: PathError,
    },
}

impl PathTemplate {
    /// The identity mapping: remote names equal agent paths.
    pub fn identity() -> Self {
        Self {
            fixed: String::new(),
        }
    }

    /// Renders `template` with `tenant`.
    pub fn parse(template: &str, tenant: Option<&str>) -> Result<Self, TemplateError> {
        let Some(head) = template.strip_suffix("{path}") else {
            return Err(TemplateError::PathNotLast(template.to_owned()));
        };
        if !(head.is_empty() || head.ends_with('/')) {
            return Err(TemplateError::PathNotLast(template.to_owned()));
        }
        let mut fixed = head.to_owned();
        if fixed.contains("{tenant}") {
            let tenant = tenant.ok_or_else(|| TemplateError::MissingTenant(template.to_owned()))?;
            let valid = SecretPath::parse(tenant)
                .map(|p| p.segments().count() == 1 && p.as_str() == tenant)
                .unwrap_or(false);
            if !valid {
                return Err(TemplateError::BadTenant(tenant.to_owned()));
            }
            fixed = fixed.replace("{tenant}", tenant);
        }
        if fixed.contains('{') || fixed.contains('}') {
            return Err(TemplateError::UnknownPlaceholder(template.to_owned()));
        }
        let fixed = fixed.trim_start_matches('/').to_owned();
        if !fixed.is_empty() {
            SecretPath::parse(&fixed).map_err(|source| TemplateError::BadPrefix {
                template: template.to_owned(),
                source,
            })?;
        }
        Ok(Self { fixed })
    }

    /// The remote name of an agent path.
    pub fn remote(&self, path: &SecretPath) -> String {
        format!("{}{}", self.fixed, path.as_str())
    }

    /// The remote text of a list prefix (may end in `/`, may be empty).
    pub fn remote_prefix(&self, prefix: &Prefix) -> String {
        format!("{}{}", self.fixed, prefix.as_str())
    }

    /// The fixed part in front of every remote name (`""` or ending in `/`).
    pub fn fixed(&self) -> &str {
        &self.fixed
    }

    /// The agent path of a remote name, or `None` if the name lies outside the
    /// template or is not a valid agent path (such names are skipped while listing).
    pub fn local(&self, remote: &str) -> Option<SecretPath> {
        let rest = remote.strip_prefix(self.fixed.as_str())?;
        SecretPath::parse(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> SecretPath {
        SecretPath::parse(s).expect("valid path")
    }

    #[test]
    fn renders_tenant_and_maps_both_ways() {
        let t = PathTemplate::parse("tenants/{tenant}/{path}", Some("acme")).expect("valid");
        assert_eq!(
            t.remote(&path("exchanges/binance")),
            "tenants/acme/exchanges/binance"
        );
        assert_eq!(
            t.local("tenants/acme/exchanges/binance"),
            Some(path("exchanges/binance"))
        );
        assert_eq!(t.local("tenants/other/x"), None);
        let p = Prefix::parse("exchanges/").expect("valid");
        assert_eq!(t.remote_prefix(&p), "tenants/acme/exchanges/");
    }

    #[test]
    fn refuses_bad_templates_and_tenants() {
        assert!(matches!(
            PathTemplate::parse("a/{path}/b", None),
            Err(TemplateError::PathNotLast(_))
        ));
        assert!(matches!(
            PathTemplate::parse("a{path}", None),
            Err(TemplateError::PathNotLast(_))
        ));
        assert!(matches!(
            PathTemplate::parse("t/{tenant}/{path}", None),
            Err(TemplateError::MissingTenant(_))
        ));
        for bad in ["a/b", "..", "", "a b"] {
            assert!(
                PathTemplate::parse("t/{tenant}/{path}", Some(bad)).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(matches!(
            PathTemplate::parse("t/{name}/{path}", None),
            Err(TemplateError::UnknownPlaceholder(_))
        ));
        assert_eq!(
            PathTemplate::parse("{path}", None).expect("valid"),
            PathTemplate::identity()
        );
    }
}
