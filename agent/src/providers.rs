//! Provider plugins inside the agent: which plugin looks after which secrets.
//!
//! `[[plugin]]` sections load WebAssembly providers into the sandboxed host
//! (`latchkey-plugin-host`), each pinned by sha256 and granted only the HTTP
//! authorities and networks its section names. `[[lifecycle]]` sections map path
//! patterns to a plugin and its config. The first rule whose pattern matches a path
//! decides. Calls run on the host's blocking pool with a deadline and a memory cap,
//! so a plugin that loops, allocates without end or traps fails that call only,
//! while the agent keeps serving.
//!
//! The lifecycle engine sees all of this through the [`Provider`] trait, which
//! [`Providers`] implements over the plugin host (the engine's unit tests implement it
//! with a scripted fake). A call that does not give the answer asked for fails with a
//! [`Failure`] that keeps the plugin host's typed errors: the plugin's own
//! `provider-error` ([`host::ProviderError`]) or a host fault ([`host::CallError`]).
//! What the engine does with each is decided in one place, `lifecycle::next`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use globset::GlobMatcher;
use latchkey_plugin_host as host;
use serde::Deserialize;

use crate::audit::{Audit, Outcome, Record};
use crate::path::SecretPath;
use crate::secret::Fields;
use crate::store::Secret;

mod live;
pub use live::Live;

/// `[[plugin]]` as validated by the config: paths anchored at the config's folder
/// (the manifest's default chosen), the digest in lowercase, grants and limits
/// parsed. Loading it can still fail on what only the files can say (a digest
/// mismatch, a manifest asking for more than is granted).
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Name used by `[[lifecycle]]` rules.
    pub name: String,
    /// The component file.
    pub wasm: PathBuf,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Outgoing HTTP granted (checked entries).
    pub http: Vec<String>,
    /// Non-public networks names may resolve into.
    pub allowed_networks: Vec<host::IpNet>,
    /// `[[sql]]` connections granted (names that exist).
    pub sql: Vec<String>,
    /// Memory cap per call, bytes.
    pub memory_bytes: usize,
    /// Deadline per call.
    pub deadline: Duration,
}

/// `[[sql]]` as validated: a database connection the host holds for plugins, with
/// exactly one source for its URL (which carries the administrative password, so it
/// is read at start, never kept in the config).
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// The name plugins and `[[plugin]] sql` use.
    pub name: String,
    /// Where the URL is.
    pub url: UrlSource,
    /// Pool size (at least 1).
    pub max_connections: u32,
}

/// Where a `[[sql]]` URL is read from.
#[derive(Debug, Clone)]
pub enum UrlSource {
    /// An environment variable (taken out of the process environment at start).
    Env(String),
    /// A file, anchored at the config's folder.
    File(PathBuf),
}

/// `[[lifecycle]]` as validated: the rule and its path patterns, compiled.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// The rule as written (its durations parsed).
    pub spec: LifecycleSpec,
    /// Its `paths`, compiled in order.
    pub matchers: Vec<GlobMatcher>,
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

/// Why the providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin host could not start.
    #[error("cannot start the plugin host")]
    Host(#[source] host::SetupError),
    /// A plugin's manifest could not be read.
    #[error("cannot load plugin {name}: manifest {}", path.display())]
    Manifest {
        /// The plugin.
        name: String,
        /// The manifest file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<host::ManifestError>,
    },
    /// The host refused the plugin (digest mismatch, bad component, …).
    #[error("cannot load plugin {name}")]
    Load {
        /// The plugin.
        name: String,
        /// Why.
        #[source]
        source: host::LoadError,
    },
    /// A `[[lifecycle]]` rule names no `[[plugin]]`.
    #[error("lifecycle[{rule}]: no [[plugin]] named {plugin:?}")]
    UnknownPlugin {
        /// The rule's index.
        rule: usize,
        /// The name it gives.
        plugin: String,
    },
    /// A `[[sql]]` connection names an environment variable that is not set.
    #[error("sql {name:?}: environment variable {var} is not set")]
    SqlEnv {
        /// The connection.
        name: String,
        /// The variable.
        var: String,
    },
    /// A `[[sql]]` connection's `url_file` cannot be read.
    #[error("sql {name:?}: cannot read {}", file.display())]
    SqlFile {
        /// The connection.
        name: String,
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `[[sql]]` URL of an unknown database.
    #[error("sql {name:?}: the URL must start with postgres:// or mysql://")]
    SqlScheme {
        /// The connection.
        name: String,
    },
}

/// Why a provider call did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No `[[lifecycle]]` rule covers the path.
    #[error("no plugin looks after {0}")]
    NoProvider(SecretPath),
    /// The plugin answered with its `provider-error` (the plugin's text is in
    /// [`host::ProviderError::detail`], kept out of `Display`).
    #[error("plugin {plugin} answered {operation} with {}", source.code())]
    Answered {
        /// The plugin.
        plugin: String,
        /// The call.
        operation: host::Operation,
        /// The answer.
        #[source]
        source: host::ProviderError,
    },
    /// The call failed in the host: a trap, the deadline, the memory limit.
    #[error("plugin {plugin} failed")]
    Host {
        /// The plugin.
        plugin: String,
        /// Why.
        #[source]
        source: host::CallError,
    },
}

impl Failure {
    /// The plugin's `provider-error`, when it answered with one.
    pub fn answer(&self) -> Option<&host::ProviderError> {
        match self {
            Failure::Answered { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the lifecycle engine asks of the providers: which policy covers a path, and
/// the calls of the plugin contract (`wit/provider.wit`). [`Providers`] implements it
/// over the plugin host; the engine's unit tests use a scripted fake.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The policy of the first rule covering `path`, if any. Called whenever the
    /// engine plans `path` or starts an operation on it.
    fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>>;

    /// Whether any rule exists. Called when the engine plans every secret at once.
    fn has_rules(&self) -> bool;

    /// `validate`: whether `cred` works at the service. Called for health checks and
    /// `latchkey validate` (the current credential), before an admin write that asks
    /// for it (the candidate), and in rotation step 3 (the pending credential).
    async fn validate(&self, path: &SecretPath, cred: &Credential) -> Result<Validation, Failure>;

    /// `create-pending`: rotation step 1, a new credential beside `current`, with the
    /// plugin's randomness drawn from `seed` when given (a replayed step 1 passes the
    /// seed of the interrupted one).
    async fn create_pending(
        &self,
        path: &SecretPath,
        current: &Credential,
        seed: Option<&host::Seed>,
    ) -> Result<Credential, Failure>;

    /// `retire`: revokes `cred` at the service, after a grace window or when a
    /// rotation rolls its pending credential back.
    async fn retire(&self, path: &SecretPath, cred: &Credential) -> Result<(), Failure>;

    /// `refresh`: exchanges `cred` for a fresh one (an OAuth 2 refresh), on schedule
    /// before expiry or when an app reads an expired token. Fields the provider does
    /// not return are kept from `cred`.
    async fn refresh(&self, path: &SecretPath, cred: &Credential) -> Result<Credential, Failure>;
}

/// The answer of `validate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Whether the service accepted the credential.
    pub valid: bool,
    /// The provider's explanation (no secrets).
    pub detail: String,
    /// Permissions the service reported: name and whether granted.
    pub permissions: Vec<(String, bool)>,
    /// Expiry the service reported (unix seconds).
    pub expires_at: Option<u64>,
}

struct Rule {
    matchers: Vec<GlobMatcher>,
    plugin: String,
    config: Vec<(String, String)>,
    policy: Arc<LifecycleSpec>,
}

/// Plugins just loaded: by name, the section each was loaded from, and their host
/// with what it was built from.
struct Loaded {
    plugins: HashMap<String, host::Plugin>,
    from: HashMap<String, String>,
    host: (host::PluginHost, String),
}

/// The loaded plugins and the rules that pick one for a path.
pub struct Providers {
    plugins: HashMap<String, host::Plugin>,
    rules: Vec<Rule>,
    calls: crate::metrics::PluginCalls,
    /// The host the plugins run in, and what it was built from (a reload with the
    /// same `[[sql]]` connections and memory cap reuses it).
    host: Option<(host::PluginHost, String)>,
    /// Each plugin's section as loaded (a reload reuses a plugin whose section is
    /// unchanged: same file, digest, grants and limits).
    loaded_from: HashMap<String, String>,
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
        let reason = event.explain();
        tracing::warn!(plugin = %event.plugin, target = %event.target, reason = %reason, "plugin capability denied");
        record.detail = Some(reason.into());
        self.0.try_record(record);
    }
}

impl Providers {
    /// No plugins.
    pub fn none() -> Self {
        Providers {
            plugins: HashMap::new(),
            rules: Vec::new(),
            calls: crate::metrics::PluginCalls::default(),
            host: None,
            loaded_from: HashMap::new(),
        }
    }

    /// Loads every plugin (compiling once; cached in `cache_dir`) and the rules.
    pub async fn load(
        plugins: &[PluginConfig],
        rules: &[RuleConfig],
        sql: &[SqlConfig],
        cache_dir: PathBuf,
        audit: Audit,
    ) -> Result<Self, Error> {
        Self::build(None, plugins, rules, sql, cache_dir, audit).await
    }

    /// Loads the sections of a reloaded config: a plugin whose section is unchanged
    /// is reused as it is (a new digest or grant loads it anew), the host too when
    /// the `[[sql]]` connections and memory cap are the same. Counts calls where
    /// `self` does. `self` stays usable until the result replaces it.
    pub async fn reload(
        &self,
        plugins: &[PluginConfig],
        rules: &[RuleConfig],
        sql: &[SqlConfig],
        cache_dir: PathBuf,
        audit: Audit,
    ) -> Result<Self, Error> {
        Ok(
            Self::build(Some(self), plugins, rules, sql, cache_dir, audit)
                .await?
                .with_metrics(self.calls.clone()),
        )
    }

    /// The names of the plugins loaded, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    async fn build(
        previous: Option<&Self>,
        plugins: &[PluginConfig],
        rules: &[RuleConfig],
        sql: &[SqlConfig],
        cache_dir: PathBuf,
        audit: Audit,
    ) -> Result<Self, Error> {
        if plugins.is_empty() && rules.is_empty() {
            return Ok(Self::none());
        }
        let loaded = Self::load_plugins(
            previous,
            plugins,
            sql,
            cache_dir,
            Arc::new(AuditBridge(audit)),
        )
        .await?;
        let (loaded, loaded_from, plugin_host) = (loaded.plugins, loaded.from, loaded.host);
        let mut compiled = Vec::new();
        for (i, compiled_rule) in rules.iter().enumerate() {
            let rule = &compiled_rule.spec;
            if !loaded.contains_key(&rule.plugin) {
                return Err(Error::UnknownPlugin {
                    rule: i,
                    plugin: rule.plugin.clone(),
                });
            }
            compiled.push(Rule {
                matchers: compiled_rule.matchers.clone(),
                plugin: rule.plugin.clone(),
                config: rule.config.clone().into_iter().collect(),
                policy: Arc::new(rule.clone()),
            });
        }
        Ok(Providers {
            plugins: loaded,
            rules: compiled,
            calls: crate::metrics::PluginCalls::default(),
            host: Some(plugin_host),
            loaded_from,
        })
    }

    /// Loads every plugin as [`Providers::load`] does (digest, manifest, `info`,
    /// grants), for `latchkey check`: the first that fails is the error; otherwise
    /// what each load noticed, by plugin name. Nothing is kept.
    pub async fn check(
        plugins: &[PluginConfig],
        sql: &[SqlConfig],
        cache_dir: PathBuf,
    ) -> Result<Vec<(String, Vec<host::Warning>)>, Error> {
        let loaded =
            Self::load_plugins(None, plugins, sql, cache_dir, Arc::new(host::TracingAudit)).await?;
        Ok(plugins
            .iter()
            .filter_map(|p| {
                let plugin = loaded.plugins.get(&p.name)?;
                Some((p.name.clone(), plugin.warnings().to_vec()))
            })
            .collect())
    }

    /// The plugins of `plugins`, each loaded on one host with `sql` and `audit`;
    /// from `previous` (a reload) the host and each plugin whose section is
    /// unchanged are reused.
    async fn load_plugins(
        previous: Option<&Self>,
        plugins: &[PluginConfig],
        sql: &[SqlConfig],
        cache_dir: PathBuf,
        audit: Arc<dyn host::AuditSink>,
    ) -> Result<Loaded, Error> {
        let max_memory = plugins
            .iter()
            .map(|p| p.memory_bytes)
            .max()
            .unwrap_or(128 << 20);
        // The sections, not the connections (those hold the password, and a URL
        // from the environment is read once, at start).
        let host_key = format!("{sql:?} {max_memory}");
        let reused_host = previous
            .and_then(|p| p.host.as_ref())
            .filter(|(_, key)| *key == host_key)
            .map(|(h, _)| h.clone());
        let plugin_host = match &reused_host {
            Some(h) => h.clone(),
            None => host::PluginHost::new(host::HostConfig {
                cache_dir: Some(cache_dir),
                sql: sql
                    .iter()
                    .map(sql_connection)
                    .collect::<Result<Vec<_>, _>>()?,
                max_instance_memory: max_memory.max(16 << 20),
                audit,
                ..host::HostConfig::default()
            })
            .map_err(Error::Host)?,
        };
        let mut loaded = HashMap::new();
        let mut loaded_from = HashMap::new();
        for spec in plugins {
            let section = format!("{spec:?}");
            let same = previous
                .filter(|_| reused_host.is_some())
                .filter(|p| p.loaded_from.get(&spec.name) == Some(&section))
                .and_then(|p| p.plugins.get(&spec.name));
            if let Some(plugin) = same {
                loaded.insert(spec.name.clone(), plugin.clone());
                loaded_from.insert(spec.name.clone(), section);
                continue;
            }
            let manifest =
                host::Manifest::from_file(&spec.manifest).map_err(|source| Error::Manifest {
                    name: spec.name.clone(),
                    path: spec.manifest.clone(),
                    source: Box::new(source),
                })?;
            let plugin = plugin_host
                .load(host::LoadSpec {
                    wasm: spec.wasm.clone(),
                    manifest,
                    sha256: spec.sha256.clone(),
                    grants: host::Grants {
                        http: spec.http.clone(),
                        allowed_networks: spec.allowed_networks.clone(),
                        sql: spec.sql.clone(),
                    },
                    limits: host::Limits {
                        memory_bytes: spec.memory_bytes,
                        deadline: spec.deadline,
                        ..host::Limits::default()
                    },
                })
                .await
                .map_err(|source| Error::Load {
                    name: spec.name.clone(),
                    source,
                })?;
            tracing::info!(plugin = %spec.name, "plugin ready");
            loaded.insert(spec.name.clone(), plugin);
            loaded_from.insert(spec.name.clone(), section);
        }
        Ok(Loaded {
            plugins: loaded,
            from: loaded_from,
            host: (plugin_host, host_key),
        })
    }

    /// Counts every call in `calls` (the agent's `/metrics`).
    pub fn with_metrics(mut self, calls: crate::metrics::PluginCalls) -> Self {
        self.calls = calls;
        self
    }

    fn rule_for(&self, path: &SecretPath) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.matchers.iter().any(|m| m.is_match(path.as_str())))
    }

    fn plugin_for(&self, path: &SecretPath) -> Result<(&Rule, &host::Plugin), Failure> {
        let rule = self
            .rule_for(path)
            .ok_or_else(|| Failure::NoProvider(path.clone()))?;
        let plugin = self
            .plugins
            .get(&rule.plugin)
            .ok_or_else(|| Failure::NoProvider(path.clone()))?;
        Ok((rule, plugin))
    }

    /// The credential as the plugin gets it. A secret without a kind of its own (one
    /// synced from an upstream, which does not keep kinds) takes the first kind the
    /// manifest declares (the host passes no other), else `info`'s, so `generic`
    /// never reaches a provider that checks kinds.
    fn host_cred(plugin: &host::Plugin, cred: &Credential) -> host::Credential {
        let mut host_cred = cred.to_host();
        if host_cred.kind == crate::store::DEFAULT_KIND {
            let declared = plugin.manifest().kinds.first();
            if let Some(kind) = declared.or_else(|| plugin.info().and_then(|i| i.kinds.first())) {
                host_cred.kind = kind.clone();
            }
        }
        host_cred
    }

    /// Unfolds the host's two layers (host fault outside, plugin answer inside), and
    /// counts the call, which began at `started`.
    fn unfold<T>(
        &self,
        rule: &Rule,
        operation: host::Operation,
        started: std::time::Instant,
        result: host::CallResult<T>,
    ) -> Result<T, Failure> {
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(host::CallError::Timeout { .. }) => "timeout",
            Err(host::CallError::MemoryLimit { .. }) => "memory",
            Err(host::CallError::Trap { .. }) => "trap",
            Err(_) => "refused",
        };
        self.calls.record(
            &rule.plugin,
            operation.as_str(),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(Failure::Answered {
                plugin: rule.plugin.clone(),
                operation,
                source,
            }),
            Err(source) => Err(Failure::Host {
                plugin: rule.plugin.clone(),
                source,
            }),
        }
    }
}

#[async_trait]
impl Provider for Providers {
    fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        self.rule_for(path).map(|r| Arc::clone(&r.policy))
    }

    fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    async fn validate(&self, path: &SecretPath, cred: &Credential) -> Result<Validation, Failure> {
        let (rule, plugin) = self.plugin_for(path)?;
        let started = std::time::Instant::now();
        let answer = plugin
            .validate(rule.config.clone(), Self::host_cred(plugin, cred))
            .await;
        let v = self.unfold(rule, host::Operation::Validate, started, answer)?;
        Ok(Validation {
            valid: v.valid,
            detail: v.detail,
            permissions: v
                .permissions
                .into_iter()
                .map(|p| (p.name, p.granted))
                .collect(),
            expires_at: v.expires_at,
        })
    }

    async fn create_pending(
        &self,
        path: &SecretPath,
        current: &Credential,
        seed: Option<&host::Seed>,
    ) -> Result<Credential, Failure> {
        let (rule, plugin) = self.plugin_for(path)?;
        let started = std::time::Instant::now();
        let answer = plugin
            .create_pending_seeded(
                rule.config.clone(),
                Self::host_cred(plugin, current),
                seed.cloned(),
            )
            .await;
        self.unfold(rule, host::Operation::CreatePending, started, answer)
            .map(|c| Credential::from_host(&c))
    }

    async fn retire(&self, path: &SecretPath, cred: &Credential) -> Result<(), Failure> {
        let (rule, plugin) = self.plugin_for(path)?;
        let started = std::time::Instant::now();
        let answer = plugin
            .retire(rule.config.clone(), Self::host_cred(plugin, cred))
            .await;
        self.unfold(rule, host::Operation::Retire, started, answer)
    }

    async fn refresh(&self, path: &SecretPath, cred: &Credential) -> Result<Credential, Failure> {
        let (rule, plugin) = self.plugin_for(path)?;
        let started = std::time::Instant::now();
        let answer = plugin
            .refresh(rule.config.clone(), Self::host_cred(plugin, cred))
            .await;
        let fresh = self.unfold(rule, host::Operation::Refresh, started, answer)?;
        let mut fresh = Credential::from_host(&fresh);
        for (name, value) in cred.fields.iter() {
            if fresh.fields.get(name).is_none() {
                fresh.fields.insert(name.to_owned(), value.clone());
            }
        }
        Ok(fresh)
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

fn sql_connection(spec: &SqlConfig) -> Result<host::SqlConnectionConfig, Error> {
    let url = match &spec.url {
        // Taken out of the process environment at start (`crate::environment`).
        UrlSource::Env(var) => crate::environment::var_string(var)
            .map(|url| url.to_string())
            .ok_or_else(|| Error::SqlEnv {
                name: spec.name.clone(),
                var: var.clone(),
            })?,
        UrlSource::File(file) => std::fs::read_to_string(file)
            .map_err(|source| Error::SqlFile {
                name: spec.name.clone(),
                file: file.clone(),
                source,
            })?
            .trim()
            .to_owned(),
    };
    let dialect = match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => host::Dialect::Postgres,
        Some("mysql") => host::Dialect::Mysql,
        _ => {
            return Err(Error::SqlScheme {
                name: spec.name.clone(),
            })
        }
    };
    Ok(host::SqlConnectionConfig {
        name: spec.name.clone(),
        dialect,
        url: host::SecretString::new(url),
        max_connections: spec.max_connections,
    })
}
