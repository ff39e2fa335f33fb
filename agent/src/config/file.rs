//! `latchkey.toml` exactly as written: serde structs with defaults, unknown keys refused.
//!
//! Field docs here are user documentation; the README's key table follows them.

use std::path::PathBuf;

use serde::Deserialize;

use crate::crypto::KekSource;
use crate::policy::RuleSpec;
use crate::upstream::config::UpstreamConfig;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Trust domain of accepted SPIFFE ids, e.g. `latchkey.local`.
    pub trust_domain: String,
    /// Listeners.
    pub listen: ListenSection,
    /// Certificates and keys for mTLS.
    pub tls: TlsSection,
    /// The encrypted store.
    pub storage: StorageSection,
    /// Request bounds.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Audit trail.
    #[serde(default)]
    pub audit: AuditSection,
    /// Access rules: allow-only, everything else is denied.
    #[serde(default)]
    pub policy: Vec<RuleSpec>,
    /// Files rendered from templates and kept current (see `render::spec`).
    #[serde(default)]
    pub template: Vec<crate::render::TemplateSection>,
    /// The store this agent caches (OpenBao/Vault or AWS Secrets Manager). Without
    /// one, the embedded store is the source of truth.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// How the cache follows the upstream.
    #[serde(default)]
    pub sync: SyncSection,
    /// Environment variables served when a secret is missing (migration aid).
    #[serde(default)]
    pub env_fallback: Vec<crate::fallback::FallbackSpec>,
    /// Where events (rotations, failures, expiry) are POSTed, signed.
    #[serde(default)]
    pub webhook: Vec<crate::webhook::WebhookSpec>,
    /// Provider plugins (WebAssembly components), pinned by sha256.
    #[serde(default)]
    pub plugin: Vec<PluginSpec>,
    /// Which plugin looks after which secrets.
    #[serde(default)]
    pub lifecycle: Vec<crate::providers::LifecycleSpec>,
    /// Database connections the host holds for plugins (granted by `[[plugin]] sql`).
    #[serde(default)]
    pub sql: Vec<SqlSpec>,
    /// The lifecycle engine: leases, coordination records, concurrency.
    #[serde(default)]
    pub scheduler: crate::lifecycle::SchedulerSpec,
    /// A plain-HTTP loopback listener for scrapers and load balancers.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Loopback `ip:port` serving `GET /metrics` and `GET /health` over plain HTTP,
    /// with no identity: nothing else is served there.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[sync]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Prefixes pulled at start and on every poll (`""`: everything).
    #[serde(default = "default_prefixes")]
    pub prefixes: Vec<String>,
    /// Time between polls.
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    /// How long cached values are served while the upstream is down.
    #[serde(default = "default_grace")]
    pub grace: String,
    /// Most concurrent upstream requests.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Longest wait between retries while the upstream fails.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// The largest share (0 to 1) of a prefix's cached secrets that one poll may drop
    /// because they vanished from the upstream's listing; more is held as suspicious.
    #[serde(default = "default_max_deleted_share")]
    pub max_deleted_share: f64,
}

impl Default for SyncSection {
    fn default() -> Self {
        Self {
            prefixes: default_prefixes(),
            poll_interval: default_poll(),
            grace: default_grace(),
            concurrency: default_concurrency(),
            max_backoff: default_max_backoff(),
            max_deleted_share: default_max_deleted_share(),
        }
    }
}

fn default_prefixes() -> Vec<String> {
    vec![String::new()]
}
fn default_poll() -> String {
    "30s".to_owned()
}
fn default_grace() -> String {
    "24h".to_owned()
}
fn default_concurrency() -> usize {
    16
}
fn default_max_backoff() -> String {
    "60s".to_owned()
}
fn default_max_deleted_share() -> f64 {
    crate::sync::DEFAULT_MAX_DELETED_SHARE
}

/// `[listen]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Octal mode of the socket file; no bits for others.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group of the socket file (name or number), for the group bits of its mode.
    pub socket_group: Option<String>,
    /// Loopback `ip:port`.
    pub tcp: Option<String>,
    /// Permit a non-loopback TCP address (off: a sidecar serves its own host).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA that signs client certificates.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// Certificate revocation list, reloaded when it changes.
    pub crl: Option<PathBuf>,
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Folder of the sled database.
    pub path: PathBuf,
    /// Folder of the agent's state files (last sync, expiry warnings sent, node id,
    /// lifecycle states, compiled plugins); created `0700` if missing. Without it
    /// (configs written before this key) they stay beside `path`, as
    /// `<path>.sync.json` and so on.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Versions kept per secret.
    #[serde(default = "default_versions")]
    pub versions: usize,
    /// Secrets kept decrypted in the hot cache.
    #[serde(default = "default_hot_entries")]
    pub hot_cache_entries: u64,
    /// sled page cache, MiB.
    #[serde(default = "default_page_cache")]
    pub page_cache_mib: u64,
    /// Key-encryption key source.
    pub kek: KekSource,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request body in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most request headers.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// TLS handshake deadline.
    #[serde(default = "default_5s")]
    pub handshake_timeout: String,
    /// Deadline for a request's headers.
    #[serde(default = "default_5s")]
    pub header_timeout: String,
    /// Deadline for a request's body.
    #[serde(default = "default_10s")]
    pub body_timeout: String,
    /// Most concurrent connections past their handshake.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections still in their TLS handshake; past that the oldest is cut.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Most connections of one identity at once.
    #[serde(default = "default_max_per_identity")]
    pub max_connections_per_identity: usize,
    /// Most connections of one Unix-socket peer uid at once (handshakes included).
    #[serde(default = "default_max_per_uid")]
    pub max_connections_per_uid: usize,
    /// Most watch streams of one identity at once.
    #[serde(default = "default_max_watchers")]
    pub max_watchers_per_identity: usize,
    /// Longest life of one connection; then it is closed (gracefully).
    #[serde(default = "default_connection_age")]
    pub max_connection_age: String,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_headers: default_max_headers(),
            handshake_timeout: default_5s(),
            header_timeout: default_5s(),
            body_timeout: default_10s(),
            max_connections: default_max_connections(),
            max_handshakes: default_max_handshakes(),
            max_connections_per_identity: default_max_per_identity(),
            max_connections_per_uid: default_max_per_uid(),
            max_watchers_per_identity: default_max_watchers(),
            max_connection_age: default_connection_age(),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// JSON-lines file, created 0600.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Successful reads: `true` or `"aggregate"` (the first read of each version by
    /// each reader, then counted repeats per `read_window`), `"each"` (every read),
    /// `false` (none).
    #[serde(default = "default_reads")]
    pub reads: ReadsSetting,
    /// How long repeats of a read are counted before their record is written.
    #[serde(default = "default_read_window")]
    pub read_window: String,
}

/// `audit.reads` as written: a flag or a mode name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ReadsSetting {
    /// `true` (aggregate) or `false` (off).
    Flag(bool),
    /// `"aggregate"` or `"each"`.
    Mode(String),
}

fn default_reads() -> ReadsSetting {
    ReadsSetting::Flag(true)
}
fn default_read_window() -> String {
    "1s".to_owned()
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
            reads: default_reads(),
            read_window: default_read_window(),
        }
    }
}

fn default_socket_mode() -> String {
    "0660".to_owned()
}
fn default_versions() -> usize {
    10
}
fn default_hot_entries() -> u64 {
    10_000
}
fn default_page_cache() -> u64 {
    16
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    64
}
fn default_5s() -> String {
    "5s".to_owned()
}
fn default_10s() -> String {
    "10s".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_per_identity() -> usize {
    64
}
fn default_max_per_uid() -> usize {
    256
}
fn default_max_watchers() -> usize {
    32
}
fn default_connection_age() -> String {
    "1h".to_owned()
}
fn default_audit_path() -> PathBuf {
    PathBuf::from("audit.log")
}

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
    /// Outgoing HTTP granted, `[scheme://]host[:port]`: a bare `host[:port]` (or
    /// `https://…`) grants HTTPS only, `http://host[:port]` plaintext HTTP.
    #[serde(default)]
    pub http: Vec<String>,
    /// Non-public networks granted names may resolve into (CIDR; an IPv4-mapped
    /// entry such as `::ffff:10.0.0.0/104` is the IPv4 network `10.0.0.0/8`).
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
