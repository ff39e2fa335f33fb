//! Environment fallback: serve an environment variable when a secret is missing.
//!
//! For moving an app off `OPENAI_API_KEY=...` in its environment without a flag day:
//! each `[[env_fallback]]` entry names a secret path, a variable and a field. When a
//! read finds no secret at that path (neither in the store nor upstream), the agent
//! answers with the variable's value as that field, labelled `env-fallback`, version
//! 0, and logs a warning the first time so operators see what is left to migrate.
//! Once the secret is stored (`latchkey import --from-env` does that in bulk), the
//! stored secret wins.
//!
//! Variables are read once at start into zeroizing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::path::SecretPath;
use crate::secret::{Fields, SecretString};

/// `[[env_fallback]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// The secret path this variable stands in for.
    pub path: SecretPath,
    /// The environment variable.
    pub var: String,
    /// The field name the value is served as.
    #[serde(default = "default_field")]
    pub field: String,
}

fn default_field() -> String {
    "value".to_owned()
}

#[derive(Debug)]
struct Entry {
    var: String,
    fields: Fields,
    warned: AtomicBool,
}

/// The fallbacks whose variables were set when the agent started.
#[derive(Debug, Default)]
pub struct EnvFallback {
    entries: HashMap<SecretPath, Entry>,
    /// When the variables were read (unix seconds): the served `updated_at`.
    pub loaded_at: i64,
}

impl EnvFallback {
    /// Reads the variables with `lookup` (the process environment in the daemon).
    /// Entries whose variable is unset or empty are skipped.
    pub fn load(specs: &[FallbackSpec], lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut entries = HashMap::new();
        for spec in specs {
            let Some(value) = lookup(&spec.var).filter(|v| !v.is_empty()) else {
                tracing::debug!(var = %spec.var, path = %spec.path, "fallback variable not set");
                continue;
            };
            let mut fields = Fields::new();
            fields.insert(spec.field.clone(), SecretString::new(value));
            entries.insert(
                spec.path.clone(),
                Entry {
                    var: spec.var.clone(),
                    fields,
                    warned: AtomicBool::new(false),
                },
            );
        }
        let loaded_at = crate::clock::unix_now();
        EnvFallback { entries, loaded_at }
    }

    /// Whether no fallback is active.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fields to serve for a missing secret at `path`, if a fallback covers it.
    pub fn get(&self, path: &SecretPath) -> Option<&Fields> {
        let entry = self.entries.get(path)?;
        if !entry.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %path,
                var = %entry.var,
                "serving a secret from the environment fallback; store it to migrate"
            );
        }
        Some(&entry.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, var: &str) -> FallbackSpec {
        FallbackSpec {
            path: SecretPath::parse(path).expect("path"),
            var: var.to_owned(),
            field: "api_key".to_owned(),
        }
    }

    #[test]
    fn serves_set_variables_only() {
        let env = |name: &str| match name {
            "OPENAI_API_KEY" => Some("sk-test-123".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let fallback = EnvFallback::load(
            &[
                spec("ai/openai", "OPENAI_API_KEY"),
                spec("ai/x", "UNSET"),
                spec("ai/e", "EMPTY"),
            ],
            env,
        );
        let fields = fallback
            .get(&SecretPath::parse("ai/openai").expect("path"))
            .expect("covered");
        assert_eq!(
            fields.get("api_key").map(SecretString::expose),
            Some("sk-test-123")
        );
        assert!(fallback
            .get(&SecretPath::parse("ai/x").expect("path"))
            .is_none());
        assert!(fallback
            .get(&SecretPath::parse("ai/e").expect("path"))
            .is_none());
        assert!(!format!("{fallback:?}").contains("sk-test-123"));
    }
}
