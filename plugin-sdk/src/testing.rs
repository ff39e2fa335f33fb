//! Run a built plugin in-process on the real host, for plugin authors' tests.
//!
//! Host side only (feature `testing`): this links wasmtime, so use it from the
//! plugin crate's `tests/` built for the host, after building the plugin for
//! `wasm32-wasip2`. The plugin is loaded exactly as the agent loads it — sha256 pin
//! (computed here from the file), manifest check, grants, limits — so a test that
//! passes here behaves the same in production.
//!
//! ```ignore
//! use latchkey_plugin_sdk::testing::{Harness, host::{Credential, SecretString}};
//! let plugin = Harness::new("target/wasm32-wasip2/release/my_plugin.wasm", include_str!("../plugin.toml"))
//!     .grant_http("http://127.0.0.1:8080")
//!     .load()
//!     .expect("plugin loads");
//! let cred = Credential::new("api-key", [("key", SecretString::from("test-key"))]);
//! let answer = plugin.validate(&[("base-url", "http://127.0.0.1:8080")], &cred);
//! assert!(answer.expect("no trap").expect("validated").valid);
//! ```

use std::path::PathBuf;
use std::sync::Arc;

pub use latchkey_plugin_host as host;
use latchkey_plugin_host::{
    CallResult, Credential, Grants, HostConfig, Limits, LoadError, LoadSpec, Manifest, Plugin,
    PluginHost, ProviderInfo, RecordingAudit, SqlConnectionConfig, Validation,
};

/// Why the harness could not load the plugin.
#[derive(Debug)]
pub enum Error {
    /// The manifest text is invalid.
    Manifest(latchkey_plugin_host::ManifestError),
    /// The `.wasm` could not be read.
    Read(std::io::Error),
    /// The host could not be built.
    Setup(latchkey_plugin_host::SetupError),
    /// The host refused the plugin.
    Load(LoadError),
    /// No tokio runtime could be started.
    Runtime(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e: &dyn std::error::Error = match self {
            Self::Manifest(e) => e,
            Self::Read(e) | Self::Runtime(e) => e,
            Self::Setup(e) => e,
            Self::Load(e) => e,
        };
        f.write_str(&latchkey_plugin_host::error_chain(e))
    }
}

impl std::error::Error for Error {}

/// Builds a host with the grants a test needs and loads one plugin into it.
#[derive(Debug)]
pub struct Harness {
    wasm: PathBuf,
    manifest: String,
    grants: Grants,
    limits: Limits,
    sql: Vec<SqlConnectionConfig>,
}

impl Harness {
    /// A harness for the component at `wasm` with manifest text `manifest_toml`.
    pub fn new(wasm: impl Into<PathBuf>, manifest_toml: &str) -> Self {
        Self {
            wasm: wasm.into(),
            manifest: manifest_toml.to_owned(),
            grants: Grants::default(),
            limits: Limits::default(),
            sql: Vec::new(),
        }
    }

    /// Grants HTTP to `[scheme://]host[:port]` (no scheme: HTTPS only; a plaintext
    /// loopback fixture needs `http://127.0.0.1:PORT`).
    pub fn grant_http(mut self, authority: &str) -> Self {
        self.grants.http.push(authority.to_owned());
        self
    }

    /// Defines and grants a SQL connection.
    pub fn grant_sql(mut self, connection: SqlConnectionConfig) -> Self {
        self.grants.sql.push(connection.name.clone());
        self.sql.push(connection);
        self
    }

    /// Sets the call limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Loads the plugin.
    pub fn load(self) -> Result<Loaded, Error> {
        let manifest = Manifest::from_toml(&self.manifest).map_err(Error::Manifest)?;
        let sha256 = latchkey_plugin_host::sha256_file(&self.wasm).map_err(Error::Read)?;
        let audit = RecordingAudit::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let host = PluginHost::new(HostConfig {
            sql: self.sql,
            audit: Arc::new(audit.clone()),
            ..HostConfig::default()
        })
        .map_err(Error::Setup)?;
        let spec = LoadSpec {
            wasm: self.wasm,
            manifest,
            sha256,
            grants: self.grants,
            limits: self.limits,
        };
        let plugin = runtime.block_on(host.load(spec)).map_err(Error::Load)?;
        Ok(Loaded {
            plugin,
            audit,
            runtime,
        })
    }
}

/// A loaded plugin plus the runtime it runs on.
#[derive(Debug)]
pub struct Loaded {
    plugin: Plugin,
    audit: RecordingAudit,
    runtime: tokio::runtime::Runtime,
}

fn owned(config: &[(&str, &str)]) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Loaded {
    /// The plugin's `info` answer.
    pub fn info(&self) -> Option<&ProviderInfo> {
        self.plugin.info()
    }

    /// Calls `validate`.
    pub fn validate(&self, config: &[(&str, &str)], cred: &Credential) -> CallResult<Validation> {
        self.runtime
            .block_on(self.plugin.validate(owned(config), cred.clone()))
    }

    /// Calls `create-pending`.
    pub fn create_pending(
        &self,
        config: &[(&str, &str)],
        cred: &Credential,
    ) -> CallResult<Credential> {
        self.runtime
            .block_on(self.plugin.create_pending(owned(config), cred.clone()))
    }

    /// Calls `retire`.
    pub fn retire(&self, config: &[(&str, &str)], cred: &Credential) -> CallResult<()> {
        self.runtime
            .block_on(self.plugin.retire(owned(config), cred.clone()))
    }

    /// Calls `refresh`.
    pub fn refresh(&self, config: &[(&str, &str)], cred: &Credential) -> CallResult<Credential> {
        self.runtime
            .block_on(self.plugin.refresh(owned(config), cred.clone()))
    }

    /// Capability denials recorded so far.
    pub fn denials(&self) -> Vec<latchkey_plugin_host::AuditEvent> {
        self.audit.events()
    }

    /// The underlying plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}
