//! The agent's configuration: `latchkey.toml` as written, then validated and typed.
//!
//! [`file::FileConfig`] mirrors the TOML exactly (unknown keys are refused); [`Config`]
//! is what the rest of the agent sees: paths resolved against the config file's
//! folder, durations parsed, policy rules compiled. Every problem is collected and
//! reported at once, each naming its key (`listen.tcp: ...`).

pub mod duration;
pub mod file;
mod lines;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::KekSource;
use crate::identity::TrustDomain;
use crate::path::Prefix;
use crate::policy::{Policy, Rule};
use crate::state_file::StateDir;
use crate::store::StoreConfig;
use crate::sync::SyncConfig;
use crate::tls::TlsFiles;
use crate::upstream::config::{OpenBaoAuthConfig, UpstreamConfig};

/// Why a config could not be used. Each entry names its key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (it names the line and key).
        message: String,
    },
    /// One or more values were refused.
    #[error("config {path} has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// One line per problem, each naming its key (and its line, when the key is
        /// in the file).
        problems: Vec<String>,
    },
}

/// Where and how the agent listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Unix socket path, if any.
    pub socket: Option<PathBuf>,
    /// Mode bits for the socket file.
    pub socket_mode: u32,
    /// Group of the socket file; the agent's own (or the folder's, if setgid) if unset.
    pub socket_group: Option<u32>,
    /// Loopback TCP address, if any.
    pub tcp: Option<SocketAddr>,
}

/// Bounds that keep a slow or hostile client from holding the agent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers.
    pub header_timeout: Duration,
    /// Time allowed to receive a request's body.
    pub body_timeout: Duration,
    /// Most concurrent connections past their handshake.
    pub max_connections: usize,
    /// Most connections in their TLS handshake at once; a new one past that cuts the
    /// oldest, so stalled handshakes cannot keep others out.
    pub max_handshakes: usize,
    /// Most connections of one identity at once.
    pub max_connections_per_identity: usize,
    /// Most connections (handshakes included) of one Unix-socket peer uid at once.
    pub max_connections_per_uid: usize,
    /// Most watch streams of one identity at once.
    pub max_watchers_per_identity: usize,
    /// Longest life of one connection (also never past its certificate's expiry).
    pub max_connection_age: Duration,
}

/// Where audit records go.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Append-only JSON-lines file.
    pub path: PathBuf,
    /// Which successful reads are recorded (denials and writes always are).
    pub reads: crate::audit::Reads,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub source: PathBuf,
    /// Trust domain of the SPIFFE ids this agent accepts.
    pub trust_domain: TrustDomain,
    /// Listeners.
    pub listen: Listen,
    /// Server certificate, key, client CA and CRL.
    pub tls: TlsFiles,
    /// The encrypted store.
    pub store: StoreConfig,
    /// Where the key-encryption key comes from.
    pub kek: KekSource,
    /// Entries in the hot (decrypted) cache.
    pub hot_cache_entries: u64,
    /// Request bounds.
    pub limits: Limits,
    /// Audit trail.
    pub audit: Audit,
    /// Access policy.
    pub policy: Policy,
    /// Files rendered from templates by the daemon.
    pub templates: Vec<crate::render::Template>,
    /// The upstream this agent caches, if any (`kind = "local"` counts as none).
    pub upstream: Option<Arc<UpstreamConfig>>,
    /// How the cache follows the upstream.
    pub sync: SyncConfig,
    /// Environment variables served when a secret is missing.
    pub env_fallback: Vec<crate::fallback::FallbackSpec>,
    /// Webhook sinks for events.
    pub webhooks: Vec<crate::webhook::Webhook>,
    /// Provider plugins, validated (loaded at start; paths anchored at `base`).
    pub plugins: Vec<crate::providers::PluginConfig>,
    /// Path patterns mapped to plugins, compiled.
    pub lifecycle: Vec<crate::providers::RuleConfig>,
    /// Database connections for plugins.
    pub sql: Vec<crate::providers::SqlConfig>,
    /// The lifecycle engine's settings.
    pub scheduler: crate::lifecycle::SchedulerSpec,
    /// Where `/metrics` and `/health` are served over plain HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The upstream's files (CA, token, AppRole, JWT), anchored, with their keys.
    upstream_files: Vec<(String, PathBuf)>,
    /// The config file's folder.
    pub base: PathBuf,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// What is allowed but probably not meant (`latchkey check` prints these; `run`
    /// logs them): each names its key.
    pub fn warnings(&self) -> Vec<String> {
        self.policy.warnings()
    }

    /// Parses and validates TOML text; `path` names the file and anchors relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, Error> {
        let raw: file::FileConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        let config = validate(path, base, raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                let lines = lines::Lines::new(text);
                Err(Error::Invalid {
                    path: path.to_owned(),
                    problems: problems.into_iter().map(|p| lines.locate(p)).collect(),
                })
            }
        }
    }
}

/// The environment variables a config file names as holding secrets: the
/// key-encryption key's (`kek = { source = "env" }`), the `[[sql]] url_env`
/// variables and the `[[env_fallback]]` ones, plus [`DEFAULT_KEK_VAR`]. Read by
/// `main` before any thread starts, so they can be taken out of the environment;
/// a file that does not parse names only the default (loading it reports why).
///
/// [`DEFAULT_KEK_VAR`]: crate::environment::DEFAULT_KEK_VAR
pub fn secret_env_names(path: &Path) -> Vec<String> {
    let mut names = vec![crate::environment::DEFAULT_KEK_VAR.to_owned()];
    let Ok(text) = std::fs::read_to_string(path) else {
        return names;
    };
    let Ok(raw) = toml::from_str::<file::FileConfig>(&text) else {
        return names;
    };
    if let KekSource::Env { var } = raw.storage.kek {
        names.push(var);
    }
    names.extend(raw.sql.into_iter().filter_map(|s| s.url_env));
    names.extend(raw.env_fallback.into_iter().map(|f| f.var));
    names
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Anchors every file path of the sections that keep their written form (upstream
/// auth and CA, plugin wasm and manifest, sql URL files) at the config's folder, so
/// nothing later resolves a path against the working directory. Returns the
/// upstream's files with their keys, for [`Config::files`]: the one list of them.
fn resolve_section_paths(base: &Path, raw: &mut file::FileConfig) -> Vec<(String, PathBuf)> {
    let mut upstream = Vec::new();
    let mut anchor = |key: &str, p: &mut PathBuf| {
        *p = resolve(base, p);
        upstream.push((format!("upstream.{key}"), p.clone()));
    };
    if let Some(UpstreamConfig::OpenBao(bao)) = raw.upstream.as_mut() {
        if let Some(ca) = bao.ca_file.as_mut() {
            anchor("ca_file", ca);
        }
        match &mut bao.auth {
            OpenBaoAuthConfig::Token { token_file, .. } => {
                if let Some(f) = token_file.as_mut() {
                    anchor("auth.token_file", f);
                }
            }
            OpenBaoAuthConfig::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => {
                anchor("auth.role_id_file", role_id_file);
                if let Some(f) = secret_id_file.as_mut() {
                    anchor("auth.secret_id_file", f);
                }
            }
            OpenBaoAuthConfig::Jwt { jwt_file, .. } => anchor("auth.jwt_file", jwt_file),
        }
    }
    for plugin in &mut raw.plugin {
        plugin.wasm = resolve(base, &plugin.wasm);
        if let Some(m) = plugin.manifest.as_mut() {
            *m = resolve(base, m);
        }
    }
    for sql in &mut raw.sql {
        if let Some(f) = sql.url_file.as_mut() {
            *f = resolve(base, f);
        }
    }
    upstream
}

impl Config {
    /// Every file this config names that must exist when the agent starts, each with
    /// its key: certificates and keys, the KEK file, upstream credentials and CA,
    /// plugin modules and manifests, sql URL files, template sources. Paths are
    /// already resolved against the config's folder.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files = vec![
            ("tls.ca".to_owned(), self.tls.ca.clone()),
            ("tls.cert".to_owned(), self.tls.cert.clone()),
            ("tls.key".to_owned(), self.tls.key.clone()),
        ];
        if let Some(crl) = &self.tls.crl {
            files.push(("tls.crl".to_owned(), crl.clone()));
        }
        if let KekSource::File { path } = &self.kek {
            files.push(("storage.kek.path".to_owned(), path.clone()));
        }
        files.extend(self.upstream_files.iter().cloned());
        for (i, plugin) in self.plugins.iter().enumerate() {
            files.push((format!("plugin[{i}].wasm"), plugin.wasm.clone()));
            files.push((format!("plugin[{i}].manifest"), plugin.manifest.clone()));
        }
        for (i, sql) in self.sql.iter().enumerate() {
            if let crate::providers::UrlSource::File(f) = &sql.url {
                files.push((format!("sql[{i}].url_file"), f.clone()));
            }
        }
        for (i, template) in self.templates.iter().enumerate() {
            if let crate::render::spec::TemplateText::File(source) = &template.text {
                files.push((format!("template[{i}].source"), source.clone()));
            }
        }
        files
    }

    /// Opens each file of [`Config::files`]; one problem per file that cannot be
    /// opened for reading, naming its key, the path and the OS reason. Opened
    /// non-blocking, so a FIFO named where a file should be cannot stall the check.
    pub fn check_files(&self) -> Vec<String> {
        use std::os::unix::fs::OpenOptionsExt;
        self.files()
            .into_iter()
            .filter_map(|(key, path)| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .err()
                    .map(|e| format!("{key}: cannot open {}: {e}", path.display()))
            })
            .collect()
    }
}

fn duration(key: &str, text: &str, problems: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("{key}: must be longer than zero"));
            Duration::from_secs(1)
        }
        Err(e) => {
            problems.push(format!("{key}: {text:?} is not a duration ({e})"));
            Duration::from_secs(1)
        }
    }
}

/// `[[plugin]]` number `i`, checked and typed; what is wrong goes to `problems`.
fn plugin_config(
    i: usize,
    plugin: &file::PluginSpec,
    problems: &mut Vec<String>,
) -> crate::providers::PluginConfig {
    if plugin.sha256.len() != 64 || !plugin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(format!("plugin[{i}].sha256: must be 64 hex digits"));
    }
    let deadline = match humantime::parse_duration(&plugin.deadline) {
        Ok(d) if d >= Duration::from_millis(10) => d,
        Ok(_) => {
            problems.push(format!("plugin[{i}].deadline: must be at least 10ms"));
            Duration::from_secs(10)
        }
        Err(_) => {
            problems.push(format!(
                "plugin[{i}].deadline: {:?} is not a duration",
                plugin.deadline
            ));
            Duration::from_secs(10)
        }
    };
    for (j, entry) in plugin.http.iter().enumerate() {
        if let Err(e) = latchkey_plugin_host::check_grant_entry(entry) {
            problems.push(format!("plugin[{i}].http[{j}]: {e}"));
        }
    }
    let mut allowed_networks = Vec::new();
    for (j, entry) in plugin.allow_networks.iter().enumerate() {
        match entry.parse::<latchkey_plugin_host::IpNet>() {
            Ok(net) => allowed_networks.push(net),
            Err(e) => problems.push(format!("plugin[{i}].allow_networks[{j}]: {e}")),
        }
    }
    if plugin.memory_mb == 0 || plugin.memory_mb > 4096 {
        problems.push(format!("plugin[{i}].memory_mb: must be 1..=4096"));
    }
    // Paths are anchored already; the manifest defaults to `<wasm>.toml`, else a
    // `plugin.toml` beside the module.
    let manifest = plugin.manifest.clone().unwrap_or_else(|| {
        let beside = plugin.wasm.with_extension("toml");
        if beside.is_file() {
            beside
        } else {
            plugin.wasm.with_file_name("plugin.toml")
        }
    });
    crate::providers::PluginConfig {
        name: plugin.name.clone(),
        wasm: plugin.wasm.clone(),
        sha256: plugin.sha256.to_ascii_lowercase(),
        manifest,
        http: plugin.http.clone(),
        allowed_networks,
        sql: plugin.sql.clone(),
        memory_bytes: plugin.memory_mb.clamp(1, 4096) << 20,
        deadline,
    }
}

fn validate(
    path: &Path,
    base: &Path,
    mut raw: file::FileConfig,
    problems: &mut Vec<String>,
) -> Option<Config> {
    let upstream_files = resolve_section_paths(base, &mut raw);
    let trust_domain = match TrustDomain::new(&raw.trust_domain) {
        Ok(td) => Some(td),
        Err(e) => {
            problems.push(format!("trust_domain: {e}"));
            None
        }
    };

    let socket_mode = match u32::from_str_radix(raw.listen.socket_mode.trim_start_matches("0o"), 8)
    {
        Ok(mode) if mode <= 0o777 && mode & 0o007 == 0 => mode,
        Ok(_) => {
            problems.push(format!(
                "listen.socket_mode: {:?} must be an octal mode with no access for others (e.g. \"0660\")",
                raw.listen.socket_mode
            ));
            0o660
        }
        Err(_) => {
            problems.push(format!(
                "listen.socket_mode: {:?} is not an octal mode",
                raw.listen.socket_mode
            ));
            0o660
        }
    };
    let socket_group = raw.listen.socket_group.as_deref().and_then(|g| {
        let gid = crate::render::spec::lookup_id("/etc/group", g);
        if gid.is_none() {
            problems.push(format!("listen.socket_group: no group {g:?}"));
        }
        gid
    });
    let tcp = match raw.listen.tcp.as_deref() {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() || raw.listen.allow_non_loopback => Some(addr),
            Ok(addr) => {
                problems.push(format!(
                    "listen.tcp: {addr} is not a loopback address (set listen.allow_non_loopback = true to allow it)"
                ));
                None
            }
            Err(_) => {
                problems.push(format!(
                    "listen.tcp: {text:?} is not an address like 127.0.0.1:8443"
                ));
                None
            }
        },
    };
    let socket = raw.listen.socket.as_deref().map(|p| resolve(base, p));
    if socket.is_none() && tcp.is_none() && raw.listen.tcp.is_none() {
        problems.push("listen: set socket, tcp, or both".to_owned());
    }

    let tls = TlsFiles {
        ca: resolve(base, &raw.tls.ca),
        cert: resolve(base, &raw.tls.cert),
        key: resolve(base, &raw.tls.key),
        crl: raw.tls.crl.as_deref().map(|p| resolve(base, p)),
    };

    if raw.storage.versions == 0 || raw.storage.versions > 1000 {
        problems.push(format!(
            "storage.versions: {} is out of range 1..=1000",
            raw.storage.versions
        ));
    }
    let store_path = resolve(base, &raw.storage.path);
    // The one place the state folder is decided; see `state_file::StateDir`.
    let state_dir = match raw.storage.state_dir.as_deref() {
        Some(dir) => StateDir::Folder(resolve(base, dir)),
        None => StateDir::BesideStore(store_path.clone()),
    };
    if let StateDir::Folder(dir) = &state_dir {
        if *dir == store_path {
            problems.push(
                "storage.state_dir: must not be the store's own folder (storage.path)".to_owned(),
            );
        }
    }
    let store = StoreConfig {
        path: store_path,
        max_versions: raw.storage.versions.clamp(1, 1000),
        cache_capacity_bytes: raw.storage.page_cache_mib.saturating_mul(1024 * 1024),
        state_dir,
    };
    let kek = match raw.storage.kek {
        KekSource::File { path } => KekSource::File {
            path: resolve(base, &path),
        },
        other => other,
    };

    let l = &raw.limits;
    let limits = Limits {
        max_body_bytes: l.max_body_bytes,
        max_headers: l.max_headers,
        handshake_timeout: duration("limits.handshake_timeout", &l.handshake_timeout, problems),
        header_timeout: duration("limits.header_timeout", &l.header_timeout, problems),
        body_timeout: duration("limits.body_timeout", &l.body_timeout, problems),
        max_connections: l.max_connections,
        max_handshakes: l.max_handshakes,
        max_connections_per_identity: l.max_connections_per_identity,
        max_connections_per_uid: l.max_connections_per_uid,
        max_watchers_per_identity: l.max_watchers_per_identity,
        max_connection_age: duration("limits.max_connection_age", &l.max_connection_age, problems),
    };
    if limits.max_body_bytes == 0 || limits.max_body_bytes > 16 * 1024 * 1024 {
        problems.push("limits.max_body_bytes: must be 1..=16777216".to_owned());
    }
    if !(8..=1024).contains(&limits.max_headers) {
        problems.push("limits.max_headers: must be 8..=1024".to_owned());
    }
    for (key, value) in [
        ("max_connections", limits.max_connections),
        ("max_handshakes", limits.max_handshakes),
        (
            "max_connections_per_identity",
            limits.max_connections_per_identity,
        ),
        ("max_connections_per_uid", limits.max_connections_per_uid),
        (
            "max_watchers_per_identity",
            limits.max_watchers_per_identity,
        ),
    ] {
        if value == 0 {
            problems.push(format!("limits.{key}: must be at least 1"));
        }
    }

    let read_window = duration("audit.read_window", &raw.audit.read_window, problems);
    let audit = Audit {
        path: resolve(base, &raw.audit.path),
        reads: match &raw.audit.reads {
            file::ReadsSetting::Flag(false) => crate::audit::Reads::Off,
            file::ReadsSetting::Mode(mode) if mode == "each" => crate::audit::Reads::Each,
            file::ReadsSetting::Flag(true) => crate::audit::Reads::Aggregate(read_window),
            file::ReadsSetting::Mode(mode) if mode == "aggregate" => {
                crate::audit::Reads::Aggregate(read_window)
            }
            file::ReadsSetting::Mode(other) => {
                problems.push(format!(
                    "audit.reads: {other:?} is not true, false, \"aggregate\" or \"each\""
                ));
                crate::audit::Reads::Off
            }
        },
    };

    let mut rules = Vec::new();
    for (i, rule) in raw.policy.iter().enumerate() {
        match Rule::compile(rule) {
            Ok(rule) => rules.push(rule),
            Err(e) => problems.push(format!("policy[{i}]: {e}")),
        }
    }

    let templates = crate::render::spec::validate(base, &raw.template, problems);

    let mut prefixes = Vec::new();
    for (i, p) in raw.sync.prefixes.iter().enumerate() {
        match Prefix::parse(p) {
            Ok(p) => prefixes.push(p),
            Err(e) => problems.push(format!("sync.prefixes[{i}]: {e}")),
        }
    }
    if raw.sync.concurrency == 0 || raw.sync.concurrency > 1024 {
        problems.push("sync.concurrency: must be 1..=1024".to_owned());
    }
    let share = raw.sync.max_deleted_share;
    if !(0.0..=1.0).contains(&share) {
        problems.push(format!(
            "sync.max_deleted_share: {share} is not a share between 0 and 1"
        ));
    }
    let sync = SyncConfig {
        prefixes,
        poll_interval: duration("sync.poll_interval", &raw.sync.poll_interval, problems),
        grace: duration("sync.grace", &raw.sync.grace, problems),
        concurrency: raw.sync.concurrency.clamp(1, 1024),
        max_backoff: duration("sync.max_backoff", &raw.sync.max_backoff, problems),
        max_deleted_share: share.clamp(0.0, 1.0),
    };
    match &raw.upstream {
        Some(UpstreamConfig::OpenBao(bao)) => {
            problems.extend(crate::upstream::openbao::problems(bao));
        }
        Some(UpstreamConfig::Aws(aws)) => problems.extend(crate::upstream::aws::problems(aws)),
        Some(UpstreamConfig::Local(_)) | None => {}
    }
    let upstream = match raw.upstream {
        Some(UpstreamConfig::Local(_)) | None => None,
        Some(other) => Some(Arc::new(other)),
    };
    let transit_ready = matches!(
        upstream.as_deref(),
        Some(UpstreamConfig::OpenBao(b)) if b.transit.is_some()
    );
    if kek == KekSource::Transit && !transit_ready {
        problems.push(
            "storage.kek: source \"transit\" needs [upstream] kind = \"openbao\" with a transit section"
                .to_owned(),
        );
    }

    let mut webhooks = Vec::new();
    for (i, spec) in raw.webhook.iter().enumerate() {
        match crate::webhook::Webhook::from_spec(spec, base) {
            Ok(hook) => webhooks.push(hook),
            Err(e) => problems.push(format!("webhook[{i}]: {e}")),
        }
    }

    let plugins: Vec<_> = raw
        .plugin
        .iter()
        .enumerate()
        .map(|(i, plugin)| plugin_config(i, plugin, problems))
        .collect();
    let mut lifecycle = Vec::new();
    for (i, rule) in raw.lifecycle.iter().enumerate() {
        if !raw.plugin.iter().any(|p| p.name == rule.plugin) {
            problems.push(format!(
                "lifecycle[{i}].plugin: no [[plugin]] named {:?}",
                rule.plugin
            ));
        }
        if rule.paths.is_empty() {
            problems.push(format!("lifecycle[{i}].paths: give at least one pattern"));
        }
        let mut matchers = Vec::new();
        for (j, pattern) in rule.paths.iter().enumerate() {
            match globset::Glob::new(pattern.trim_start_matches('/')) {
                Ok(glob) => matchers.push(glob.compile_matcher()),
                Err(e) => problems.push(format!(
                    "lifecycle[{i}].paths[{j}]: {pattern:?}: {}",
                    e.kind()
                )),
            }
        }
        lifecycle.push(crate::providers::RuleConfig {
            spec: rule.clone(),
            matchers,
        });
        if rule.max_attempts == 0 {
            problems.push(format!("lifecycle[{i}].max_attempts: must be at least 1"));
        }
        for (key, value) in [
            ("validate_every", rule.validate_every),
            ("rotate_every", rule.rotate_every),
        ] {
            if value.is_some_and(|d| d < std::time::Duration::from_secs(1)) {
                problems.push(format!("lifecycle[{i}].{key}: must be at least 1s"));
            }
        }
    }
    // Coordination records live at `<ledger_prefix>/<path>`: the prefix must be a
    // path itself, or every rotation would fail when it writes its record.
    if let Err(e) = crate::path::SecretPath::parse(raw.scheduler.ledger_prefix.trim_matches('/')) {
        problems.push(format!(
            "scheduler.ledger_prefix: {:?} is not a secret path ({e})",
            raw.scheduler.ledger_prefix
        ));
    }
    if raw.scheduler.concurrency == 0 {
        problems.push("scheduler.concurrency: must be at least 1".to_owned());
    }
    if raw
        .scheduler
        .node_id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty())
    {
        problems.push(
            "scheduler.node_id: must not be empty (leave it out for a generated one)".to_owned(),
        );
    }
    let metrics_listen = match raw.metrics.listen.as_deref() {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(addr) => {
                problems.push(format!(
                    "metrics.listen: {addr} is not a loopback address (it is plain HTTP)"
                ));
                None
            }
            Err(_) => {
                problems.push(format!(
                    "metrics.listen: {text:?} is not an address like 127.0.0.1:9464"
                ));
                None
            }
        },
    };
    let mut sql = Vec::new();
    for (i, spec) in raw.sql.iter().enumerate() {
        let url = match (&spec.url_env, &spec.url_file) {
            (Some(var), None) => Some(crate::providers::UrlSource::Env(var.clone())),
            (None, Some(file)) => Some(crate::providers::UrlSource::File(file.clone())),
            _ => {
                problems.push(format!(
                    "sql[{i}] ({:?}): give exactly one of url_env and url_file",
                    spec.name
                ));
                None
            }
        };
        if spec.max_connections == 0 {
            problems.push(format!("sql[{i}].max_connections: must be at least 1"));
        }
        sql.extend(url.map(|url| crate::providers::SqlConfig {
            name: spec.name.clone(),
            url,
            max_connections: spec.max_connections.max(1),
        }));
    }
    for (i, plugin) in raw.plugin.iter().enumerate() {
        for name in &plugin.sql {
            if !raw.sql.iter().any(|s| &s.name == name) {
                problems.push(format!("plugin[{i}].sql: no [[sql]] named {name:?}"));
            }
        }
    }

    Some(Config {
        source: path.to_owned(),
        trust_domain: trust_domain?,
        listen: Listen {
            socket,
            socket_mode,
            socket_group,
            tcp,
        },
        tls,
        store,
        kek,
        hot_cache_entries: raw.storage.hot_cache_entries,
        limits,
        audit,
        policy: Policy::new(rules),
        templates,
        upstream,
        sync,
        env_fallback: raw.env_fallback,
        webhooks,
        plugins,
        lifecycle,
        sql,
        scheduler: raw.scheduler,
        metrics_listen,
        upstream_files,
        base: base.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
trust_domain = "latchkey.local"
[listen]
socket = "run/latchkey.sock"
[tls]
ca = "ca/ca.pem"
cert = "server/server.pem"
key = "server/server.key"
[storage]
path = "data"
kek = { source = "file", path = "keys/kek" }
[[policy]]
identity = "spiffe://latchkey.local/admin/*"
paths = ["**"]
operations = ["read", "write", "list", "admin"]
"#;

    #[test]
    fn state_files_follow_state_dir_or_stay_beside_an_old_config_store() {
        let cfg = Config::from_toml(Path::new("/etc/lk/latchkey.toml"), MINIMAL).expect("valid");
        assert_eq!(
            cfg.store.state_dir,
            StateDir::BesideStore(PathBuf::from("/etc/lk/data"))
        );
        let text = MINIMAL.replace("path = \"data\"", "path = \"data\"\nstate_dir = \"state\"");
        let cfg = Config::from_toml(Path::new("/etc/lk/latchkey.toml"), &text).expect("valid");
        assert_eq!(
            cfg.store.state_dir.file(crate::state_file::NODE_ID),
            Path::new("/etc/lk/state/node-id")
        );
        let text = MINIMAL.replace("path = \"data\"", "path = \"data\"\nstate_dir = \"data\"");
        let err = Config::from_toml(Path::new("/etc/lk/latchkey.toml"), &text)
            .expect_err("the store's folder");
        assert!(err.to_string().contains("storage.state_dir"), "{err}");
    }

    #[test]
    fn minimal_config_resolves_relative_paths() {
        let cfg = Config::from_toml(Path::new("/etc/latchkey/latchkey.toml"), MINIMAL)
            .expect("valid config");
        assert_eq!(
            cfg.listen.socket.as_deref(),
            Some(Path::new("/etc/latchkey/run/latchkey.sock"))
        );
        assert_eq!(cfg.store.path, Path::new("/etc/latchkey/data"));
        assert_eq!(cfg.store.max_versions, 10);
        assert_eq!(cfg.listen.socket_mode, 0o660);
        assert!(
            matches!(cfg.kek, KekSource::File { ref path } if path == Path::new("/etc/latchkey/keys/kek"))
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = MINIMAL.replace("[listen]", "[listen]\nsockett = 1");
        let err = Config::from_toml(Path::new("x.toml"), &text).expect_err("must fail");
        assert!(err.to_string().contains("sockett"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = MINIMAL
            .replace(
                "[listen]",
                "[listen]\ntcp = \"0.0.0.0:1\"\nsocket_mode = \"0666\"",
            )
            .replace("[storage]", "[storage]\nversions = 0");
        let err = Config::from_toml(Path::new("x.toml"), &text).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("listen.tcp"), "{msg}");
        assert!(msg.contains("listen.socket_mode"), "{msg}");
        assert!(msg.contains("storage.versions"), "{msg}");
    }

    #[test]
    fn r7_bad_http_grants_and_networks_are_refused_at_load_naming_the_entry() {
        let plugin = r#"
[[plugin]]
name = "p"
wasm = "p.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
http = ["api.example.com", "http://127.0.0.1:8080", "ftp://files.example.com", "user@host"]
allow_networks = ["::ffff:10.0.0.0/104", "10.0.0.0/33", "::ffff:10.0.0.0/90", "10.0.0.1/8", "10.0.0.0/+8"]
"#;
        let text = format!("{MINIMAL}{plugin}");
        let err = Config::from_toml(Path::new("x.toml"), &text).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("6 problem(s)"), "{msg}");
        for expected in [
            "plugin[0].http[2]: http grant entry \"ftp://files.example.com\": only http:// and https:// can be granted",
            "plugin[0].http[3]: http grant entry \"user@host\"",
            "plugin[0].allow_networks[1]: network \"10.0.0.0/33\": prefix /33 is longer than the 32-bit address",
            "plugin[0].allow_networks[2]: network \"::ffff:10.0.0.0/90\": an IPv4-mapped network needs a prefix of at least /96",
            "plugin[0].allow_networks[3]: network \"10.0.0.1/8\": address has bits set below the prefix (the network is 10.0.0.0/8)",
            "plugin[0].allow_networks[4]: network \"10.0.0.0/+8\": not address/prefix",
        ] {
            assert!(msg.contains(expected), "{expected:?} not in:\n{msg}");
        }
        for fine in ["http[0]", "http[1]", "allow_networks[0]"] {
            assert!(!msg.contains(fine), "{fine} is valid:\n{msg}");
        }
    }

    #[test]
    fn r2_secret_env_names_lists_every_variable_holding_a_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("latchkey.toml");
        let text = MINIMAL.replace(
            r#"kek = { source = "file", path = "keys/kek" }"#,
            r#"kek = { source = "env", var = "MY_KEK" }"#,
        ) + r#"
[[sql]]
name = "db"
url_env = "MY_DSN"
[[env_fallback]]
path = "legacy/key"
var = "MY_FALLBACK"
"#;
        std::fs::write(&path, text).expect("write");
        assert_eq!(
            secret_env_names(&path),
            ["LATCHKEY_KEK", "MY_KEK", "MY_DSN", "MY_FALLBACK"]
        );
        assert_eq!(secret_env_names(&dir.path().join("none")), ["LATCHKEY_KEK"]);
    }

    #[test]
    fn bad_policy_operation_names_the_rule() {
        let text = MINIMAL.replace("\"admin\"]", "\"fly\"]");
        let err = Config::from_toml(Path::new("x.toml"), &text).expect_err("must fail");
        assert!(err.to_string().contains("policy[0]"), "{err}");
    }

    /// Each `tests/fixtures/config/invalid/NAME.toml` is refused, and every line of
    /// `NAME.expected` beside it appears in the error.
    #[test]
    fn every_invalid_fixture_is_refused_with_its_expected_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/config/invalid");
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        entries.sort();
        assert!(entries.len() >= 5, "fixtures in {}", dir.display());
        for toml in entries {
            let text = std::fs::read_to_string(&toml).expect("fixture");
            let expected = std::fs::read_to_string(toml.with_extension("expected"))
                .unwrap_or_else(|e| panic!("{}: no .expected beside it: {e}", toml.display()));
            let err = Config::from_toml(&toml, &text)
                .err()
                .unwrap_or_else(|| panic!("{} was accepted", toml.display()));
            let msg = err.to_string();
            for line in expected.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    msg.contains(line),
                    "{}: {line:?} not in:\n{msg}",
                    toml.display()
                );
            }
        }
    }

    #[test]
    fn upstream_and_plugin_files_are_anchored_at_the_config_folder() {
        let text = format!(
            "{MINIMAL}{}",
            r#"
[upstream]
kind = "openbao"
addresses = ["https://127.0.0.1:1"]
ca_file = "bao-ca.pem"
auth = { method = "approle", role_id_file = "role", secret_id_file = "/abs/sid" }
[[plugin]]
name = "p"
wasm = "plugins/p.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[sql]]
name = "db"
url_file = "dsn"
"#
        );
        let cfg = Config::from_toml(Path::new("/etc/latchkey/latchkey.toml"), &text)
            .expect("valid config");
        let files: std::collections::BTreeMap<_, _> = cfg.files().into_iter().collect();
        for (key, path) in [
            ("upstream.ca_file", "/etc/latchkey/bao-ca.pem"),
            ("upstream.auth.role_id_file", "/etc/latchkey/role"),
            ("upstream.auth.secret_id_file", "/abs/sid"),
            ("plugin[0].wasm", "/etc/latchkey/plugins/p.wasm"),
            ("sql[0].url_file", "/etc/latchkey/dsn"),
            ("tls.key", "/etc/latchkey/server/server.key"),
        ] {
            assert_eq!(
                files.get(key).map(PathBuf::as_path),
                Some(Path::new(path)),
                "{key}"
            );
        }
        let missing = cfg.check_files();
        assert!(
            missing.iter().any(|m| m.starts_with(
                "upstream.auth.role_id_file: cannot open /etc/latchkey/role: No such file"
            )),
            "{missing:?}"
        );
    }

    #[test]
    fn check_files_does_not_stall_on_a_fifo_named_as_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("dsn");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo");
        let text = format!("{MINIMAL}\n[[sql]]\nname = \"db\"\nurl_file = \"dsn\"\n");
        let cfg = Config::from_toml(&dir.path().join("latchkey.toml"), &text).expect("valid");
        // Opening a FIFO for reading blocks until a writer comes, unless non-blocking.
        let missing = cfg.check_files();
        assert!(
            !missing.iter().any(|m| m.starts_with("sql[0].url_file")),
            "{missing:?}"
        );
        assert!(
            missing.iter().any(|m| m.starts_with("tls.ca")),
            "{missing:?}"
        );
    }
}
