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
use crate::secret::Fields;
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
    /// `[[sql]]` connections granted (by name).
    #[serde(default)]
    pub sql: Vec<String>,
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

/// `[[sql]]`: a database connection the host holds for plugins. The URL (with the
/// administrative password) comes from an environment variable or a file, never from
/// the config text, and plugins never see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// The name plugins and `[[plugin]] sql` use.
    pub name: String,
    /// The environment variable holding `postgres://…` or `mysql://…`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Or a file holding it (mode 0600), relative to the config file.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    2
}

/// `[[lifecycle]]` as written: which plugin looks after which secrets, and what the
/// engine does with them (see `lifecycle.rs`).
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
    /// Health check: validate against the service this often.
    #[serde(default, with = "crate::config::duration::optional")]
    pub validate_every: Option<Duration>,
    /// Refresh (OAuth) this long before expiry; an expired credential read by an app
    /// is refreshed on the spot.
    #[serde(default, with = "crate::config::duration::optional")]
    pub refresh_before: Option<Duration>,
    /// Rotate this long after the last rotation (or the last write).
    #[serde(default, with = "crate::config::duration::optional")]
    pub rotate_every: Option<Duration>,
    /// Rotate this long before expiry.
    #[serde(default, with = "crate::config::duration::optional")]
    pub rotate_before_expiry: Option<Duration>,
    /// How long the previous credential stays valid after a rotation before the
    /// provider retires it.
    #[serde(default, with = "crate::config::duration::optional")]
    pub grace: Option<Duration>,
    /// Failed attempts of one rotation or refresh before the engine gives up until the
    /// next change or an operator's `latchkey rotate`.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay after a failed attempt (doubles, with jitter).
    #[serde(default = "default_retry", with = "crate::config::duration::required")]
    pub retry_after: Duration,
    /// Permissions a credential must not hold (e.g. `withdraw`): a validation that
    /// reports one granted marks the credential invalid, and a write asking for
    /// validation is refused.
    #[serde(default)]
    pub forbid_permissions: Vec<String>,
    /// Validate every admin write of these secrets before storing it.
    #[serde(default)]
    pub validate_on_write: bool,
}

fn default_attempts() -> u32 {
    5
}
fn default_retry() -> Duration {
    Duration::from_secs(30)
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
    policy: Arc<LifecycleSpec>,
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
    /// The service refused to talk about the credential at all (the provider's
    /// `rejected`): revoked or deleted there, rather than merely failing a check.
    #[serde(skip)]
    pub rejected: bool,
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
        sql: &[SqlSpec],
        base: &Path,
        cache_dir: PathBuf,
        audit: Audit,
    ) -> Result<Self, Error> {
        if plugins.is_empty() && rules.is_empty() {
            return Ok(Self::none());
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let sql = sql
            .iter()
            .map(|spec| sql_connection(spec, &resolve))
            .collect::<Result<Vec<_>, _>>()?;
        let max_memory = plugins.iter().map(|p| p.memory_mb).max().unwrap_or(128);
        let plugin_host = host::PluginHost::new(host::HostConfig {
            cache_dir: Some(cache_dir),
            sql,
            max_instance_memory: (max_memory.max(16)) << 20,
            audit: Arc::new(AuditBridge(audit)),
            ..host::HostConfig::default()
        })
        .map_err(|e| Error::Host(host::error_chain(&e)))?;
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
                        sql: spec.sql.clone(),
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
                policy: Arc::new(rule.clone()),
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

    /// The lifecycle policy of the first rule covering `path`.
    pub fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        self.rule_for(path).map(|r| Arc::clone(&r.policy))
    }

    /// Whether any rule exists (the lifecycle engine runs only then).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    fn plugin_for(&self, path: &SecretPath) -> Result<(&Rule, &host::Plugin), Error> {
        let rule = self
            .rule_for(path)
            .ok_or_else(|| Error::NoProvider(path.clone()))?;
        let plugin = self
            .plugins
            .get(&rule.plugin)
            .ok_or_else(|| Error::NoProvider(path.clone()))?;
        Ok((rule, plugin))
    }

    /// The credential as the plugin gets it. A secret without a kind of its own (one
    /// synced from an upstream, which does not keep kinds) takes the plugin's first
    /// kind, so `generic` never reaches a provider that checks kinds.
    fn host_cred(plugin: &host::Plugin, cred: &Credential) -> host::Credential {
        let mut host_cred = cred.to_host();
        if host_cred.kind == crate::store::DEFAULT_KIND {
            if let Some(kind) = plugin.info().and_then(|i| i.kinds.first()) {
                host_cred.kind = kind.clone();
            }
        }
        host_cred
    }

    fn call_failed(rule: &Rule, e: &host::CallError) -> Error {
        Error::Call {
            name: rule.plugin.clone(),
            reason: host::error_chain(e),
        }
    }

    /// Asks the provider looking after `secret` whether it works.
    pub async fn validate(&self, secret: &Secret) -> Result<Checked, Error> {
        self.validate_credential(&secret.path, &Credential::of(secret))
            .await
    }

    /// Asks the provider looking after `path` whether `cred` works (a candidate not
    /// stored yet, or a pending credential).
    pub async fn validate_credential(
        &self,
        path: &SecretPath,
        cred: &Credential,
    ) -> Result<Checked, Error> {
        let (rule, plugin) = self.plugin_for(path)?;
        let answer = plugin
            .validate(rule.config.clone(), Self::host_cred(plugin, cred))
            .await
            .map_err(|e| Self::call_failed(rule, &e))?;
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
                rejected: false,
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
                rejected: matches!(e, host::ProviderError::Rejected(_)),
            },
        })
    }

    /// Rotation step 1: the provider creates a new credential beside `current`,
    /// drawing its randomness from `seed` when given (so the step can be replayed).
    pub async fn create_pending(
        &self,
        path: &SecretPath,
        current: &Credential,
        seed: Option<&host::Seed>,
    ) -> Result<Result<Credential, host::ProviderError>, Error> {
        let (rule, plugin) = self.plugin_for(path)?;
        let answer = plugin
            .create_pending_seeded(
                rule.config.clone(),
                Self::host_cred(plugin, current),
                seed.cloned(),
            )
            .await
            .map_err(|e| Self::call_failed(rule, &e))?;
        Ok(answer.map(|c| Credential::from_host(&c)))
    }

    /// Revokes `cred` at the service (after the grace window, or on rollback).
    pub async fn retire(
        &self,
        path: &SecretPath,
        cred: &Credential,
    ) -> Result<Result<(), host::ProviderError>, Error> {
        let (rule, plugin) = self.plugin_for(path)?;
        plugin
            .retire(rule.config.clone(), Self::host_cred(plugin, cred))
            .await
            .map_err(|e| Self::call_failed(rule, &e))
    }

    /// Exchanges `cred` for a fresh one (OAuth 2 refresh). Fields the provider does
    /// not return are kept from `cred`.
    pub async fn refresh(
        &self,
        path: &SecretPath,
        cred: &Credential,
    ) -> Result<Result<Credential, host::ProviderError>, Error> {
        let (rule, plugin) = self.plugin_for(path)?;
        let answer = plugin
            .refresh(rule.config.clone(), Self::host_cred(plugin, cred))
            .await
            .map_err(|e| Self::call_failed(rule, &e))?;
        Ok(answer.map(|fresh| {
            let mut fresh = Credential::from_host(&fresh);
            for (name, value) in cred.fields.iter() {
                if fresh.fields.get(name).is_none() {
                    fresh.fields.insert(name.to_owned(), value.clone());
                }
            }
            fresh
        }))
    }
}

/// A credential as the lifecycle engine handles it: what a version of a secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The secret's kind.
    pub kind: String,
    /// Its fields (redacted in `Debug`).
    pub fields: Fields,
    /// When it expires (unix seconds).
    pub expires_at: Option<i64>,
}

impl Credential {
    /// The credential a stored version holds.
    pub fn of(secret: &Secret) -> Self {
        Credential {
            kind: secret.kind.clone(),
            fields: secret.fields.clone(),
            expires_at: secret.expires_at,
        }
    }

    fn to_host(&self) -> host::Credential {
        host::Credential {
            kind: self.kind.clone(),
            fields: self
                .fields
                .iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            expires_at: self.expires_at.and_then(|t| u64::try_from(t).ok()),
        }
    }

    fn from_host(cred: &host::Credential) -> Self {
        Credential {
            kind: cred.kind.clone(),
            fields: cred
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            expires_at: cred.expires_at.and_then(|t| i64::try_from(t).ok()),
        }
    }
}

fn sql_connection(
    spec: &SqlSpec,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<host::SqlConnectionConfig, Error> {
    let url = match (&spec.url_env, &spec.url_file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            Error::Config(format!(
                "sql {:?}: environment variable {var} is not set",
                spec.name
            ))
        })?,
        (None, Some(file)) => std::fs::read_to_string(resolve(file))
            .map_err(|e| {
                Error::Config(format!(
                    "sql {:?}: cannot read {}: {e}",
                    spec.name,
                    file.display()
                ))
            })?
            .trim()
            .to_owned(),
        _ => {
            return Err(Error::Config(format!(
                "sql {:?}: give exactly one of url_env and url_file",
                spec.name
            )))
        }
    };
    let dialect = match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => host::Dialect::Postgres,
        Some("mysql") => host::Dialect::Mysql,
        _ => {
            return Err(Error::Config(format!(
                "sql {:?}: the URL must start with postgres:// or mysql://",
                spec.name
            )))
        }
    };
    Ok(host::SqlConnectionConfig {
        name: spec.name.clone(),
        dialect,
        url: host::SecretString::new(url),
        max_connections: spec.max_connections.max(1),
    })
}
