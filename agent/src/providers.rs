//! Provider plugins inside the agent: which plugin looks after which secrets.
//!
//! `[[plugin]]` sections load WebAssembly providers into the sandboxed host
//! (`latchkey-plugin-host`), each pinned by sha256 and granted only the HTTP
//! authorities and networks its section names. `[[lifecycle]]` sections map path
//! patterns to a plugin and its config. The first rule whose pattern matches a path
//! decides. Calls run on the host's blocking pool with a deadline and a memory cap,
//! so a plugin that loops, allocates without end or traps fails that call only,
//! while the agent keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use latchkey_plugin_host as host;
use serde::Deserialize;

use crate::audit::{Audit, Outcome, Record};
use crate::path::SecretPath;
use crate::store::Secret;

/// `[[plugin]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Name used by `[[lifecycle]]` rules.
    pub name: String,
    /// The component file.
    pub wasm: PathBuf,
    /// Its sha256 (64 hex digits); a file with another digest is refused.
    pub sha256: String,
    /// Its manifest [default: the wasm path with `.toml`, or `plugin.toml` beside it].
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Outgoing HTTP authorities granted (`host:port`).
    #[serde(default)]
    pub http: Vec<String>,
    /// Non-public networks granted names may resolve into (CIDR).
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Memory cap per call, MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: usize,
    /// Deadline per call.
    #[serde(default = "default_deadline")]
    pub deadline: String,
}

fn default_memory() -> usize {
    128
}
fn default_deadline() -> String {
    "10s".to_owned()
}

/// `[[lifecycle]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSpec {
    /// Path patterns (`*` one segment, `**` any number).
    pub paths: Vec<String>,
    /// The plugin that looks after these secrets.
    pub plugin: String,
    /// The provider's config (strings; not secret: credentials live in the secret).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Why the providers could not be set up or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A section is unusable.
    #[error("{0}")]
    Config(String),
    /// The plugin host could not start.
    #[error("cannot start the plugin host: {0}")]
    Host(String),
    /// A plugin could not be loaded (digest mismatch, bad component, …).
    #[error("cannot load plugin {name}: {reason}")]
    Load {
        /// The plugin.
        name: String,
        /// Why (digest mismatch, compile error, …).
        reason: String,
    },
    /// No `[[lifecycle]]` rule covers the path.
    #[error("no plugin looks after {0}")]
    NoProvider(SecretPath),
    /// The call failed in the host: a trap, the deadline, the memory limit.
    #[error("plugin {name} failed: {reason}")]
    Call {
        /// The plugin.
        name: String,
        /// Why.
        reason: String,
    },
}

struct Rule {
    matchers: Vec<GlobMatcher>,
    plugin: String,
    config: Vec<(String, String)>,
}

/// The loaded plugins and the rules that pick one for a path.
pub struct Providers {
    plugins: HashMap<String, host::Plugin>,
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Denied capability requests go to the agent's audit trail.
struct AuditBridge(Audit);

impl host::AuditSink for AuditBridge {
    fn record(&self, event: host::AuditEvent) {
        let mut record = Record::now(
            format!("plugin:{}", event.plugin).into(),
            None,
            "plugin-capability",
            Some(&event.target),
        );
        record.outcome = Outcome::Denied;
        record.status = 403;
        record.code = Some("capability_denied");
        tracing::warn!(plugin = %event.plugin, target = %event.target, "plugin capability denied");
        self.0.try_record(record);
    }
}

/// Outcome of a validation.
#[derive(Debug, serde::Serialize)]
pub struct Checked {
    /// The plugin asked.
    pub plugin: String,
    /// Whether the service accepted the credential.
    pub valid: bool,
    /// The provider's explanation (no secrets).
    pub detail: String,
    /// Permissions the service reported: name and whether granted.
    pub permissions: Vec<(String, bool)>,
    /// Expiry the service reported (unix seconds).
    pub expires_at: Option<u64>,
    /// Set when the provider could not decide (`unavailable`, `denied`, …).
    pub error: Option<String>,
}

impl Providers {
    /// No plugins.
    pub fn none() -> Self {
        Providers {
            plugins: HashMap::new(),
            rules: Vec::new(),
        }
    }

    /// Loads every plugin (compiling once; cached in `cache_dir`) and the rules.
    pub async fn load(
        plugins: &[PluginSpec],
        rules: &[LifecycleSpec],
        base: &Path,
        cache_dir: PathBuf,
        audit: Audit,
    ) -> Result<Self, Error> {
        if plugins.is_empty() && rules.is_empty() {
            return Ok(Self::none());
        }
        let max_memory = plugins.iter().map(|p| p.memory_mb).max().unwrap_or(128);
        let plugin_host = host::PluginHost::new(host::HostConfig {
            cache_dir: Some(cache_dir),
            max_instance_memory: (max_memory.max(16)) << 20,
            audit: Arc::new(AuditBridge(audit)),
            ..host::HostConfig::default()
        })
        .map_err(|e| Error::Host(host::error_chain(&e)))?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let mut loaded = HashMap::new();
        for spec in plugins {
            let wasm = resolve(&spec.wasm);
            let manifest_path = match &spec.manifest {
                Some(m) => resolve(m),
                None => {
                    let beside = wasm.with_extension("toml");
                    if beside.is_file() {
                        beside
                    } else {
                        wasm.with_file_name("plugin.toml")
                    }
                }
            };
            let load_err = |reason: String| Error::Load {
                name: spec.name.clone(),
                reason,
            };
            let manifest = host::Manifest::from_file(&manifest_path).map_err(|e| {
                load_err(format!(
                    "manifest {}: {}",
                    manifest_path.display(),
                    host::error_chain(&e)
                ))
            })?;
            let deadline = humantime::parse_duration(&spec.deadline)
                .map_err(|_| load_err(format!("deadline {:?} is not a duration", spec.deadline)))?;
            let allowed_networks = spec
                .allow_networks
                .iter()
                .map(|n| {
                    n.parse::<host::IpNet>()
                        .map_err(|_| load_err(format!("allow_networks {n:?} is not a CIDR")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let plugin = plugin_host
                .load(host::LoadSpec {
                    wasm,
                    manifest,
                    sha256: spec.sha256.to_ascii_lowercase(),
                    grants: host::Grants {
                        http: spec.http.clone(),
                        allowed_networks,
                        sql: Vec::new(),
                    },
                    limits: host::Limits {
                        memory_bytes: spec.memory_mb.max(1) << 20,
                        deadline: deadline.max(Duration::from_millis(10)),
                        ..host::Limits::default()
                    },
                })
                .await
                .map_err(|e| load_err(host::error_chain(&e)))?;
            tracing::info!(plugin = %spec.name, "plugin ready");
            loaded.insert(spec.name.clone(), plugin);
        }
        let mut compiled = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if !loaded.contains_key(&rule.plugin) {
                return Err(Error::Config(format!(
                    "lifecycle[{i}]: no [[plugin]] named {:?}",
                    rule.plugin
                )));
            }
            let matchers = rule
                .paths
                .iter()
                .map(|p| {
                    Glob::new(p.trim_start_matches('/'))
                        .map(|g| g.compile_matcher())
                        .map_err(|e| Error::Config(format!("lifecycle[{i}]: pattern {p:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(Rule {
                matchers,
                plugin: rule.plugin.clone(),
                config: rule.config.clone().into_iter().collect(),
            });
        }
        Ok(Providers {
            plugins: loaded,
            rules: compiled,
        })
    }

    fn rule_for(&self, path: &SecretPath) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.matchers.iter().any(|m| m.is_match(path.as_str())))
    }

    /// Asks the provider looking after `secret` whether it works.
    pub async fn validate(&self, secret: &Secret) -> Result<Checked, Error> {
        let rule = self
            .rule_for(&secret.path)
            .ok_or_else(|| Error::NoProvider(secret.path.clone()))?;
        let plugin = self
            .plugins
            .get(&rule.plugin)
            .ok_or_else(|| Error::NoProvider(secret.path.clone()))?;
        let cred = host::Credential {
            kind: secret.kind.clone(),
            fields: secret
                .fields
                .iter()
                .map(|(k, v)| (k.to_owned(), host::SecretString::new(v.expose().to_owned())))
                .collect(),
            expires_at: secret.expires_at.and_then(|t| u64::try_from(t).ok()),
        };
        let answer = plugin
            .validate(rule.config.clone(), cred)
            .await
            .map_err(|e| Error::Call {
                name: rule.plugin.clone(),
                reason: host::error_chain(&e),
            })?;
        Ok(match answer {
            Ok(v) => Checked {
                plugin: rule.plugin.clone(),
                valid: v.valid,
                detail: v.detail,
                permissions: v
                    .permissions
                    .into_iter()
                    .map(|p| (p.name, p.granted))
                    .collect(),
                expires_at: v.expires_at,
                error: None,
            },
            Err(e) => Checked {
                plugin: rule.plugin.clone(),
                valid: false,
                detail: e.detail().to_owned(),
                permissions: Vec::new(),
                expires_at: None,
                // `rejected` is an answer (the credential is bad), the rest are not.
                error: (!matches!(e, host::ProviderError::Rejected(_)))
                    .then(|| e.code().to_owned()),
            },
        })
    }
}
