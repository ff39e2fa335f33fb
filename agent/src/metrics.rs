//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text) to admin peers.
//!
//! Labels are operations, status codes and lifecycle states: never paths (unbounded)
//! and never values. Counting costs a hash lookup under a read lock and no
//! allocation; gauges that reflect state (secrets held, upstream freshness) are read
//! when scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::sync::Freshness;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `read`, `write`, `list`, `watch`, `sync`, `health`, `metrics`, `other`.
    pub op: &'static str,
    /// HTTP status sent.
    pub status: u16,
}

/// Labels of a denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation refused.
    pub op: &'static str,
}

/// Labels of the lifecycle state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `active`, `rotating`, `invalid`, `reauth-required`, ...
    pub state: &'static str,
}

/// Labels of the lifecycle outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LifecycleLabels {
    /// The provider plugin's name (from the config: a bounded set).
    pub plugin: String,
    /// `rotate`, `refresh`, `validate`, `retire`, …
    pub op: &'static str,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// The lifecycle engine's outcome counter, handed to the engine (cheap to clone: it
/// shares the registered family).
#[derive(Clone, Debug, Default)]
pub struct LifecycleOutcomes(Family<LifecycleLabels, Counter>);

impl LifecycleOutcomes {
    /// Counts one finished operation.
    pub fn count(&self, plugin: &str, op: &'static str, ok: bool) {
        self.0
            .get_or_create(&LifecycleLabels {
                plugin: plugin.to_owned(),
                op,
                outcome: if ok { "ok" } else { "failed" },
            })
            .inc();
    }
}

/// Labels of the certificate expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// Whose: `server`, `ca`, or a client's SPIFFE id.
    pub certificate: String,
}

/// Seconds left on each watched certificate: set by the expiry task, and read
/// again from the files when scraped or asked for health (a renewed certificate
/// shows at once).
#[derive(Clone, Debug, Default)]
pub struct CertificateExpiry(
    Family<CertificateLabels, Gauge>,
    std::sync::Arc<std::sync::Mutex<Option<crate::expiry::Certificates>>>,
);

impl CertificateExpiry {
    /// Sets `holder`'s seconds left: its certificate ends at `not_after`, seen at
    /// `now` (negative once expired).
    pub fn set(&self, holder: &str, not_after: i64, now: i64) {
        self.0
            .get_or_create(&CertificateLabels {
                certificate: holder.to_owned(),
            })
            .set(not_after - now);
    }

    /// Watches `certificates` from now on.
    pub fn watch(&self, certificates: crate::expiry::Certificates) {
        *self.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(certificates);
    }

    /// Each watched certificate's holder and end of validity (unix seconds), read
    /// now; the gauges follow.
    pub fn ends(&self, now: i64) -> std::collections::BTreeMap<String, i64> {
        let certificates = self.1.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(certificates) = certificates else {
            return Default::default();
        };
        certificates
            .watched()
            .into_iter()
            .map(|w| {
                self.set(&w.holder, w.not_after, now);
                (w.holder, w.not_after)
            })
            .collect()
    }
}

/// Labels of the plugin call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCallLabels {
    /// The plugin's name (from the config).
    pub plugin: String,
    /// `validate`, `create-pending`, `retire`, `refresh`, …
    pub call: &'static str,
    /// `ok`, `error` (the plugin answered with its error), `timeout`, `memory`,
    /// `trap`, `refused` (not instantiated or not declared).
    pub outcome: &'static str,
}

/// Labels of the plugin call duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The call.
    pub call: &'static str,
}

/// Plugin calls by outcome and their durations, handed to the providers.
#[derive(Clone, Debug)]
pub struct PluginCalls(
    Family<PluginCallLabels, Counter>,
    Family<PluginLabels, Histogram, fn() -> Histogram>,
);

impl Default for PluginCalls {
    fn default() -> Self {
        PluginCalls(
            Family::default(),
            Family::new_with_constructor(plugin_histogram),
        )
    }
}

/// Plugin calls: 100 µs (a warm validate without I/O) to about 100 s, ×4.
fn plugin_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 4.0, 11))
}

impl PluginCalls {
    /// Counts one finished call that took `seconds`.
    pub fn record(&self, plugin: &str, call: &'static str, outcome: &'static str, seconds: f64) {
        self.0
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_owned(),
                call,
                outcome,
            })
            .inc();
        self.1
            .get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
                call,
            })
            .observe(seconds);
    }
}

/// Labels of the sync poll counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Polls of the upstream by outcome, handed to the sync loop.
#[derive(Clone, Debug, Default)]
pub struct SyncPolls(Family<PollLabels, Counter>);

impl SyncPolls {
    /// Counts one finished poll.
    pub fn count(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.0.get_or_create(&PollLabels { outcome }).inc();
    }
}

/// Labels of the template render counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabels {
    /// The template's name (from the config).
    pub template: String,
    /// `changed`, `unchanged`, `failed`, `action-failed`.
    pub outcome: &'static str,
}

/// Template renders by outcome, and which templates fail now (for `/v1/health`);
/// handed to the agent's renderer.
#[derive(Clone, Debug, Default)]
pub struct TemplateRenders(
    Family<TemplateLabels, Counter>,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
);

impl TemplateRenders {
    /// Counts one render of `template`; `failing` says whether its file is now
    /// behind (the render or its on_change action failed).
    pub fn record(&self, template: &str, outcome: &'static str, failing: bool) {
        self.0
            .get_or_create(&TemplateLabels {
                template: template.to_owned(),
                outcome,
            })
            .inc();
        let mut set = self.1.lock().unwrap_or_else(|e| e.into_inner());
        if failing {
            set.insert(template.to_owned());
        } else {
            set.remove(template);
        }
    }

    /// Forgets which templates failed (a new set of templates replaces the old).
    pub fn reset(&self) {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The templates whose last render failed.
    pub fn failing(&self) -> Vec<String> {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Labels of the breaker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabels {
    /// The upstream address as configured.
    pub address: String,
}

/// Request durations: 25 µs to about 0.8 s, doubling (a cached read is tens of
/// microseconds, a miss that goes upstream tens of milliseconds).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

/// Every metric the agent keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    denials: Family<OpLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    integrity_errors: Counter,
    store_problems: Gauge,
    secrets: Gauge,
    upstream_stale: Gauge,
    upstream_age: Gauge,
    held_deletions: Gauge,
    breakers: Family<AddressLabels, Gauge>,
    credentials: Family<StateLabels, Gauge>,
    outcomes: LifecycleOutcomes,
    certificates: CertificateExpiry,
    plugin_calls: PluginCalls,
    renders: TemplateRenders,
    sync_polls: SyncPolls,
    secrets_stale: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let denials = Family::<OpLabels, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let integrity_errors = Counter::default();
        let store_problems = Gauge::default();
        let secrets = Gauge::default();
        let upstream_stale = Gauge::default();
        let upstream_age = Gauge::default();
        let held_deletions = Gauge::default();
        let breakers = Family::<AddressLabels, Gauge>::default();
        let credentials = Family::<StateLabels, Gauge>::default();
        let outcomes = LifecycleOutcomes::default();
        let certificates = CertificateExpiry::default();
        let plugin_calls = PluginCalls::default();
        let renders = TemplateRenders::default();
        let sync_polls = SyncPolls::default();
        let secrets_stale = Gauge::default();
        registry.register(
            "sync_polls",
            "Polls of the upstream by the sync loop, by outcome (ok, failed)",
            sync_polls.0.clone(),
        );
        registry.register(
            "secrets_stale",
            "Secrets answered as stale now: every cached secret while the upstream fails, else those the deletion guard holds; upstream_last_sync_age_seconds says how old they are",
            secrets_stale.clone(),
        );
        registry.register(
            "template_renders",
            "Renders of the agent's templates by template and outcome (changed, unchanged, failed, action-failed)",
            renders.0.clone(),
        );
        registry.register(
            "plugin_calls",
            "Calls into provider plugins by plugin, call and outcome (ok, error, timeout, memory, trap, refused)",
            plugin_calls.0.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "How long plugin calls took, by plugin and call",
            plugin_calls.1.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each watched certificate expires (the server's, the CA's, the newest one the CA issued to each identity); negative once expired",
            certificates.0.clone(),
        );
        registry.register(
            "lifecycle_operations",
            "Finished lifecycle operations (rotation, refresh, validation, retirement) by provider plugin and outcome",
            outcomes.0.clone(),
        );
        registry.register(
            "credentials",
            "Credentials under a lifecycle policy, by state",
            credentials.clone(),
        );
        registry.register(
            "requests",
            "API requests by operation and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's head, by operation and status",
            durations.clone(),
        );
        registry.register(
            "denials",
            "Requests refused by policy or identity",
            denials.clone(),
        );
        registry.register(
            "cache_hits",
            "Reads served from the hot cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Reads that went to the store",
            cache_misses.clone(),
        );
        registry.register(
            "integrity_errors",
            "Records that failed their integrity check",
            integrity_errors.clone(),
        );
        registry.register(
            "store_problems",
            "Problems the store found in itself and not yet acknowledged (lost writes, unreadable pages, a missing state file); see /v1/health",
            store_problems.clone(),
        );
        registry.register("secrets", "Secrets held in the store", secrets.clone());
        registry.register(
            "upstream_stale",
            "1 while the upstream fails and cached values are served stale, 2 past the grace period",
            upstream_stale.clone(),
        );
        registry.register(
            "upstream_last_sync_age_seconds",
            "Seconds since the last good sync with the upstream (-1: never)",
            upstream_age.clone(),
        );
        registry.register(
            "upstream_held_deletions",
            "Cached secrets the upstream no longer lists that the deletion guard keeps (latchkey sync --accept-deletions drops them)",
            held_deletions.clone(),
        );
        registry.register(
            "upstream_breaker",
            "Each upstream address's circuit breaker: 0 closed, 1 open (skipped), 2 half-open (the next request probes it)",
            breakers.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            denials,
            cache_hits,
            cache_misses,
            integrity_errors,
            store_problems,
            secrets,
            upstream_stale,
            upstream_age,
            held_deletions,
            breakers,
            credentials,
            outcomes,
            certificates,
            plugin_calls,
            renders,
            sync_polls,
            secrets_stale,
        }
    }

    /// The sync poll counter, for the sync loop.
    pub fn sync_polls(&self) -> SyncPolls {
        self.sync_polls.clone()
    }

    /// The template render counters, for the renderer.
    pub fn template_renders(&self) -> TemplateRenders {
        self.renders.clone()
    }

    /// The plugin call counters, for the providers.
    pub fn plugin_calls(&self) -> PluginCalls {
        self.plugin_calls.clone()
    }

    /// The certificate expiry gauge, for the expiry task.
    pub fn certificate_expiry(&self) -> CertificateExpiry {
        self.certificates.clone()
    }

    /// The lifecycle outcome counter, for the engine.
    pub fn lifecycle_outcomes(&self) -> LifecycleOutcomes {
        self.outcomes.clone()
    }

    /// Sets the lifecycle state gauge (called when scraped).
    pub fn lifecycle(&self, counts: &std::collections::BTreeMap<crate::lifecycle::State, usize>) {
        for (state, n) in counts {
            self.credentials
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one answered request, `seconds` after it arrived.
    pub fn request(&self, op: &'static str, status: u16, seconds: f64) {
        let labels = RequestLabels { op, status };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    /// Counts one denial.
    pub fn denial(&self, op: &'static str) {
        self.denials.get_or_create(&OpLabels { op }).inc();
    }

    /// Counts a hot-cache hit or miss.
    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// Counts a record that failed its integrity check.
    pub fn integrity_error(&self) {
        self.integrity_errors.inc();
    }

    /// Sets the store problems gauge (called when scraped).
    pub fn store_problems(&self, problems: usize) {
        self.store_problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }

    /// Sets the upstream's gauges: deletions held and each address's breaker.
    pub fn upstream(&self, held: usize, addresses: &[crate::upstream::AddressState]) {
        use crate::upstream::breaker::BreakerState;
        self.held_deletions
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        for a in addresses {
            let value = match a.breaker {
                BreakerState::Closed => 0,
                BreakerState::Open { .. } => 1,
                BreakerState::HalfOpen => 2,
            };
            self.breakers
                .get_or_create(&AddressLabels {
                    address: a.address.clone(),
                })
                .set(value);
        }
    }

    /// The text exposition, with state gauges read now.
    pub fn render(&self, secrets: usize, freshness: Option<Freshness>) -> String {
        self.secrets.set(secrets as i64);
        let (stale, age) = match freshness {
            None => (0, None),
            Some(Freshness::Fresh { age_seconds }) => (0, age_seconds),
            Some(Freshness::Stale { age_seconds }) => (1, age_seconds),
            Some(Freshness::Expired { age_seconds }) => (2, Some(age_seconds)),
        };
        self.upstream_stale.set(stale);
        self.secrets_stale.set(if stale > 0 {
            i64::try_from(secrets).unwrap_or(i64::MAX)
        } else {
            self.held_deletions.get()
        });
        self.upstream_age
            .set(age.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX)));
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::new();
        m.request("read", 200, 0.000_03);
        m.request("read", 200, 0.2);
        m.denial("read");
        m.cache(true);
        m.lifecycle_outcomes().count("openai", "rotate", false);
        m.upstream(
            2,
            &[crate::upstream::AddressState {
                address: "http://127.0.0.1:8200".into(),
                breaker: crate::upstream::breaker::BreakerState::Open {
                    retry_in: std::time::Duration::from_secs(3),
                },
            }],
        );
        let text = m.render(
            3,
            Some(Freshness::Stale {
                age_seconds: Some(12),
            }),
        );
        assert!(
            text.contains("latchkey_requests_total{op=\"read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "latchkey_request_duration_seconds_bucket{le=\"5.0e-5\",op=\"read\",status=\"200\"} 1"
            ) || text.contains("latchkey_request_duration_seconds_bucket{le=\"0.00005\",op=\"read\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("latchkey_request_duration_seconds_count{op=\"read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("latchkey_denials_total{op=\"read\"} 1"),
            "{text}"
        );
        assert!(text.contains("latchkey_secrets 3"), "{text}");
        assert!(
            text.contains(
                "latchkey_lifecycle_operations_total{plugin=\"openai\",op=\"rotate\",outcome=\"failed\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("latchkey_store_problems 0"), "{text}");
        assert!(text.contains("latchkey_upstream_stale 1"), "{text}");
        assert!(text.contains("latchkey_secrets_stale 3"), "{text}");
        assert!(
            text.contains("latchkey_upstream_held_deletions 2"),
            "{text}"
        );
        assert!(
            text.contains("latchkey_upstream_breaker{address=\"http://127.0.0.1:8200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("latchkey_upstream_last_sync_age_seconds 12"),
            "{text}"
        );
    }
}
