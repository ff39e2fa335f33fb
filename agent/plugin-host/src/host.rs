//! The plugin host: one wasmtime engine, its linker, and loading plugins into it.
//!
//! [`PluginHost::new`] builds the engine once (component model, epoch interruption,
//! the pooling allocator unless turned off), starts the epoch ticker thread, links
//! every import a plugin may have (WASI 0.2 granting nothing, wasi:http behind the
//! allow-list hook, `sql`, `log`) and opens the compiled-artifact cache.
//! [`PluginHost::load`] verifies a `.wasm` against its sha256 pin, compiles it (or
//! loads the cached artifact), pre-instantiates it, and checks its `info` against the
//! manifest. Calls are in [`crate::plugin`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::audit::{AuditSink, TracingAudit};
use crate::bindings;
use crate::cache::{ArtifactCache, CacheError, Source};
use crate::capability::http::{GrantError, HttpGrant, IpNet};
use crate::capability::sql::{SqlConnectionConfig, SqlConnections};
use crate::manifest::Manifest;
use crate::plugin::{CallError, Plugin, PluginInner};
use crate::state::State;
use crate::warning::Warning;

/// Host-wide settings, from the agent's configuration.
#[derive(Clone)]
pub struct HostConfig {
    /// Directory for compiled artifacts (`.cwasm`); `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (faster instantiation; reserves address
    /// space up front). On by default.
    pub pooling: bool,
    /// Pool size: instances that may be alive at once across all plugins.
    pub max_instances: u32,
    /// Largest linear memory any instance may have (pool slot size); every plugin's
    /// [`Limits::memory_bytes`] must be at most this.
    pub max_instance_memory: usize,
    /// Epoch tick: the resolution of call deadlines.
    pub epoch_tick: Duration,
    /// SQL connections plugins may be granted, by name.
    pub sql: Vec<SqlConnectionConfig>,
    /// Where denied capability requests are recorded.
    pub audit: Arc<dyn AuditSink>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pooling: true,
            max_instances: 100,
            max_instance_memory: 1 << 30,
            epoch_tick: Duration::from_millis(10),
            sql: Vec::new(),
            audit: Arc::new(TracingAudit),
        }
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("cache_dir", &self.cache_dir)
            .field("pooling", &self.pooling)
            .field("max_instances", &self.max_instances)
            .field("max_instance_memory", &self.max_instance_memory)
            .field("epoch_tick", &self.epoch_tick)
            .field("sql", &self.sql)
            .finish_non_exhaustive()
    }
}

/// Per-plugin bounds on every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: usize,
    /// Wall-clock deadline per call (epoch interruption; host calls are bounded too).
    pub deadline: Duration,
    /// Largest HTTP response body the plugin may receive, bytes.
    pub max_response_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            deadline: Duration::from_secs(10),
            max_response_body: 1 << 20,
        }
    }
}

/// A manifest entry that leaves the choice of authorities or connections to the
/// operator's grant.
const ANY: &str = "*";

/// What the configuration grants a plugin. The effective grant is this intersected
/// with what the manifest says the plugin needs (or, for a manifest `"*"`, all of it).
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Outgoing HTTP, `[scheme://]host[:port]`: `https://host[:port]` or a bare
    /// `host[:port]` grants HTTPS (no port means 443); only `http://host[:port]`
    /// grants plaintext HTTP (no port means 80).
    pub http: Vec<String>,
    /// Non-public networks that granted *names* may resolve into (e.g. a name for a
    /// service on loopback). IP literals in `http` need no entry here.
    pub allowed_networks: Vec<IpNet>,
    /// SQL connection names (defined in [`HostConfig::sql`]).
    pub sql: Vec<String>,
}

/// Everything needed to load one plugin.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The component file.
    pub wasm: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The sha256 pin from the configuration (64 hex digits).
    pub sha256: String,
    /// What the configuration grants.
    pub grants: Grants,
    /// Per-call limits.
    pub limits: Limits,
}

/// The host could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The wasmtime engine rejected its configuration (e.g. the pool cannot reserve
    /// its address space).
    #[error("cannot create the wasm engine")]
    Engine(#[source] wasmtime::Error),
    /// Linking the host interfaces failed.
    #[error("cannot link host interfaces")]
    Linker(#[source] wasmtime::Error),
    /// The artifact cache directory is unusable.
    #[error("cannot open the compiled artifact cache")]
    Cache(#[source] CacheError),
    /// The epoch ticker thread could not be started (without it no deadline fires).
    #[error("cannot start the epoch ticker thread")]
    Ticker(#[source] std::io::Error),
    /// Two SQL connections share a name.
    #[error("sql connection {name} is defined twice")]
    DuplicateConnection {
        /// The name.
        name: String,
    },
}

/// A plugin could not be loaded. The agent keeps running without it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The pin is not 64 hex digits.
    #[error("plugin {plugin}: sha256 pin is not 64 hex digits")]
    BadPin {
        /// Plugin name.
        plugin: String,
    },
    /// The `.wasm` file could not be read.
    #[error("plugin {plugin}: cannot read {path}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's sha256 is not the pinned one: it was replaced or tampered with.
    #[error("plugin {plugin}: {path} has sha256 {actual}, but the configuration pins {expected}; refusing to load it")]
    DigestMismatch {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file is not a valid component for this engine.
    #[error("plugin {plugin}: not a valid WebAssembly component")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
    /// The component imports something the host does not provide, or does not
    /// export the `latchkey:provider/provider` interface.
    #[error("plugin {plugin}: does not fit the latchkey:provider world")]
    Link {
        /// Plugin name.
        plugin: String,
        /// wasmtime's error (names the missing import or export).
        #[source]
        source: wasmtime::Error,
    },
    /// A granted HTTP authority or network is malformed.
    #[error("plugin {plugin}: invalid http grant")]
    Grant {
        /// Plugin name.
        plugin: String,
        /// The bad entry.
        #[source]
        source: GrantError,
    },
    /// A granted SQL connection is not defined in the host configuration.
    #[error("plugin {plugin}: sql connection {connection} is not configured")]
    UnknownConnection {
        /// Plugin name.
        plugin: String,
        /// The connection name.
        connection: String,
    },
    /// The memory limit exceeds the pool's slot size.
    #[error("plugin {plugin}: memory limit {limit} exceeds the host maximum {max}")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// Requested limit.
        limit: usize,
        /// Host maximum.
        max: usize,
    },
    /// Calling `info` failed.
    #[error("plugin {plugin}: info call failed")]
    Info {
        /// Plugin name.
        plugin: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The plugin's `info` disagrees with its manifest.
    #[error("plugin {plugin}: manifest and info disagree on {what}")]
    ManifestMismatch {
        /// Plugin name.
        plugin: String,
        /// `name` or `operations`.
        what: &'static str,
    },
    /// The blocking load task failed.
    #[error("plugin load task failed")]
    Join(#[source] tokio::task::JoinError),
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<State>,
    pub(crate) cache: Option<ArtifactCache>,
    pub(crate) sql: Arc<SqlConnections>,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) config: HostConfig,
}

impl HostInner {
    /// Epoch ticks for a deadline (rounded up, plus one for the partial first tick).
    pub(crate) fn ticks_for(&self, deadline: Duration) -> u64 {
        let tick = self.config.epoch_tick.as_nanos().max(1);
        u64::try_from(deadline.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX) + 1
    }
}

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    pub(crate) inner: Arc<HostInner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn pooling_config(config: &HostConfig) -> PoolingAllocationConfig {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // Sized for the interpreters (componentize-py / componentize-js components
    // have tens of core instances and several memories each).
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(10))
        .total_memories(n)
        .total_tables(n.saturating_mul(2))
        .max_memory_size(config.max_instance_memory)
        .table_elements(100_000)
        .max_core_instances_per_component(50)
        .max_memories_per_component(10)
        .max_tables_per_component(20);
    pool
}

impl PluginHost {
    /// Builds the engine and linker and starts the epoch ticker. Call once per agent.
    pub fn new(config: HostConfig) -> Result<Self, SetupError> {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        if config.pooling {
            cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&config)));
        }
        let engine = Engine::new(&cfg).map_err(SetupError::Engine)?;

        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(SetupError::Linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(SetupError::Linker)?;
        bindings::sql::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(SetupError::Linker)?;
        bindings::log::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(SetupError::Linker)?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine).map_err(SetupError::Cache)?),
            None => None,
        };
        let mut names = std::collections::HashSet::new();
        for c in &config.sql {
            if !names.insert(c.name.clone()) {
                return Err(SetupError::DuplicateConnection {
                    name: c.name.clone(),
                });
            }
        }
        start_ticker(&engine, config.epoch_tick).map_err(SetupError::Ticker)?;
        Ok(Self {
            inner: Arc::new(HostInner {
                engine,
                linker,
                cache,
                sql: Arc::new(SqlConnections::new(config.sql.clone())),
                audit: config.audit.clone(),
                config,
            }),
        })
    }

    /// Loads a plugin without blocking the async runtime (compilation runs on the
    /// blocking pool). Refuses a file whose sha256 differs from the pin.
    pub async fn load(&self, spec: LoadSpec) -> Result<Plugin, LoadError> {
        let host = self.clone();
        tokio::task::spawn_blocking(move || host.load_blocking(spec))
            .await
            .map_err(LoadError::Join)?
    }

    /// Blocking form of [`PluginHost::load`], for the CLI and benchmarks. Must be
    /// called inside a tokio runtime context if the plugin uses HTTP or SQL.
    pub fn load_blocking(&self, spec: LoadSpec) -> Result<Plugin, LoadError> {
        let plugin = spec.manifest.name.clone();
        let pin = spec.sha256.to_ascii_lowercase();
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LoadError::BadPin { plugin });
        }
        let bytes = std::fs::read(&spec.wasm).map_err(|source| LoadError::Read {
            plugin: plugin.clone(),
            path: spec.wasm.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != pin {
            return Err(LoadError::DigestMismatch {
                plugin,
                path: spec.wasm,
                expected: pin,
                actual,
            });
        }
        if self.inner.config.pooling
            && spec.limits.memory_bytes > self.inner.config.max_instance_memory
        {
            return Err(LoadError::MemoryLimit {
                plugin,
                limit: spec.limits.memory_bytes,
                max: self.inner.config.max_instance_memory,
            });
        }
        let (component, source) =
            self.compile(&actual, &bytes)
                .map_err(|source| LoadError::Compile {
                    plugin: plugin.clone(),
                    source,
                })?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(bindings::ProviderPluginPre::new)
            .map_err(|source| LoadError::Link {
                plugin: plugin.clone(),
                source,
            })?;

        let grant_err = |source| LoadError::Grant {
            plugin: plugin.clone(),
            source,
        };
        let granted = HttpGrant::new(&spec.grants.http, spec.grants.allowed_networks.clone())
            .map_err(grant_err)?;
        let mut warnings = Vec::new();
        // `*` in the manifest: the provider talks to whatever endpoint its operator
        // configures (an OAuth server, a gateway), so the grant alone decides.
        let http = if spec.manifest.needs.http.iter().any(|h| h == ANY) {
            granted
        } else {
            let needed =
                HttpGrant::new(&spec.manifest.needs.http, Vec::new()).map_err(grant_err)?;
            let http = granted.intersect(&needed);
            let kept = http.authorities();
            warnings.extend(
                granted
                    .authorities()
                    .into_iter()
                    .filter(|a| !kept.contains(a))
                    .map(|authority| Warning::HttpGrantCut { authority }),
            );
            http
        };
        let any_sql = spec.manifest.needs.sql.iter().any(|c| c == ANY);
        let mut sql = Vec::new();
        for name in &spec.grants.sql {
            if !self.inner.sql.contains(name) {
                return Err(LoadError::UnknownConnection {
                    plugin,
                    connection: name.clone(),
                });
            }
            if any_sql || spec.manifest.needs.sql.contains(name) {
                sql.push(name.clone());
            } else {
                warnings.push(Warning::SqlGrantCut {
                    connection: name.clone(),
                });
            }
        }

        let mut loaded = Plugin {
            inner: Arc::new(PluginInner {
                name: Arc::from(plugin.as_str()),
                manifest: spec.manifest,
                sha256: actual,
                info: None,
                pre,
                host: self.inner.clone(),
                http: Arc::new(http),
                sql: sql.into(),
                limits: spec.limits,
                source,
                warnings: Vec::new(),
            }),
        };
        let info = loaded.info_blocking().map_err(|source| LoadError::Info {
            plugin: plugin.clone(),
            source,
        })?;
        if info.name != plugin {
            return Err(LoadError::ManifestMismatch {
                plugin,
                what: "name",
            });
        }
        let manifest_ops = &loaded.inner.manifest.operations;
        if !manifest_ops.iter().all(|op| info.operations.contains(op)) {
            return Err(LoadError::ManifestMismatch {
                plugin,
                what: "operations",
            });
        }
        warnings.extend(crate::warning::disagreements(&loaded.inner.manifest, &info));
        // Only now, with every refusal behind it, is the plugin loaded.
        tracing::info!(
            plugin = %plugin,
            sha256 = %loaded.inner.sha256,
            cached = loaded.inner.source == Source::Cached,
            http = ?loaded.inner.http.authorities(),
            sql = ?loaded.inner.sql,
            "plugin loaded"
        );
        for warning in &warnings {
            tracing::warn!(plugin = %plugin, warning = %warning, "plugin loaded with a warning");
        }
        if let Some(inner) = Arc::get_mut(&mut loaded.inner) {
            inner.info = Some(info);
            inner.warnings = warnings;
        }
        Ok(loaded)
    }

    /// Compiles (or loads from the cache) a component.
    pub(crate) fn compile(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Source)> {
        match &self.inner.cache {
            Some(cache) => cache.get_or_compile(&self.inner.engine, sha256, bytes),
            None => Component::new(&self.inner.engine, bytes).map(|c| (c, Source::Compiled)),
        }
    }

    /// The host configuration.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file as lowercase hex (what a configuration pins).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| sha256_hex(&b))
}

/// Bumps the engine's epoch every `tick` until the engine is dropped (the thread
/// holds only a weak reference, so it ends with the last plugin and host).
fn start_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        })
        .map(drop)
}
