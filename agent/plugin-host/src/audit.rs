//! Audit records for capabilities a plugin asked for and was refused.
//!
//! The agent supplies an [`AuditSink`] when it builds the [`crate::PluginHost`]; the
//! capability checks (`capability/http.rs`, `capability/sql.rs`) call it on every
//! denial, before the guest sees its error. Records name the plugin and the target
//! (an authority or a connection name), never a request body, header value or
//! credential.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which capability a denied request belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Outgoing HTTP through wasi:http.
    Http,
    /// The `latchkey:provider/sql` interface.
    Sql,
}

/// Why the host refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The HTTP target (`scheme://host:port`) is not in the plugin's grant: another
    /// host or port, or plaintext `http` where only `https` was granted.
    AuthorityNotGranted,
    /// The authority is granted, but its name resolved to an address outside the
    /// allowed networks (loopback, private, link-local… unless explicitly allowed).
    AddressProhibited,
    /// The request URI had no usable authority or scheme.
    MalformedRequest,
    /// The SQL connection is not granted to this plugin (or not configured).
    ConnectionNotGranted,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AuthorityNotGranted => "authority not granted",
            Self::AddressProhibited => "resolved address prohibited",
            Self::MalformedRequest => "malformed request",
            Self::ConnectionNotGranted => "connection not granted",
        })
    }
}

/// One denied capability request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The plugin's name (from its manifest).
    pub plugin: String,
    /// The capability asked for.
    pub capability: Capability,
    /// What was asked for: a normalized `scheme://host:port`, or a SQL connection
    /// name.
    pub target: String,
    /// Why it was refused.
    pub reason: DenyReason,
    /// For [`DenyReason::AddressProhibited`]: the non-public addresses the granted
    /// name resolved to (empty otherwise).
    pub resolved: Vec<IpAddr>,
}

impl AuditEvent {
    /// The reason in words, with what would change it: for an address the name
    /// resolved to, the addresses and the `allow_networks` entries that would let
    /// the grant reach them (`localhost` is a name like any other: it resolves to
    /// loopback, which is refused unless allowed).
    pub fn explain(&self) -> String {
        if self.reason != DenyReason::AddressProhibited || self.resolved.is_empty() {
            return self.reason.to_string();
        }
        let addresses: Vec<String> = self.resolved.iter().map(IpAddr::to_string).collect();
        let networks: Vec<String> = self
            .resolved
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(_) => format!("\"{ip}/32\""),
                IpAddr::V6(_) => format!("\"{ip}/128\""),
            })
            .collect();
        format!(
            "{}: {} resolved to {}, which is not a public address; to allow it, set \
             allow_networks = [{}] in the plugin's [[plugin]] section \
             (latchkey plugin call: --allow-network), or grant the address itself",
            self.reason,
            host_of(&self.target),
            addresses.join(", "),
            networks.join(", "),
        )
    }
}

/// The host part of a normalized `scheme://host:port` target.
fn host_of(target: &str) -> &str {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

/// Receives audit records from the plugin host.
///
/// Called synchronously on the thread running the plugin call, once per denial,
/// before the guest gets its error. Implementations must be quick and must not
/// block on I/O (queue the record instead).
pub trait AuditSink: Send + Sync + 'static {
    /// Records one denial.
    fn record(&self, event: AuditEvent);
}

/// Writes denials to the tracing log at `warn` (the default sink).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, event: AuditEvent) {
        tracing::warn!(
            plugin = %event.plugin,
            capability = ?event.capability,
            target = %event.target,
            reason = %event.explain(),
            "plugin capability denied"
        );
    }
}

/// Keeps denials in memory, for tests and for `latchkey plugin call` to print them.
#[derive(Clone, Debug, Default)]
pub struct RecordingAudit(Arc<Mutex<Vec<AuditEvent>>>);

impl RecordingAudit {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        match self.0.lock() {
            Ok(events) => events.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl AuditSink for RecordingAudit {
    fn record(&self, event: AuditEvent) {
        TracingAudit.record(event.clone());
        match self.0.lock() {
            Ok(mut events) => events.push(event),
            Err(poisoned) => poisoned.into_inner().push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 5: granting `localhost:PORT` is refused because the name
    /// resolves to loopback; the denial says so and names the setting.
    #[test]
    fn a_prohibited_address_names_the_setting_that_would_allow_it() {
        let event = AuditEvent {
            plugin: "acme".into(),
            capability: Capability::Http,
            target: "http://localhost:8080".into(),
            reason: DenyReason::AddressProhibited,
            resolved: vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        };
        let said = event.explain();
        assert!(
            said.starts_with("resolved address prohibited: localhost resolved to 127.0.0.1, ::1"),
            "{said}"
        );
        assert!(
            said.contains(r#"allow_networks = ["127.0.0.1/32", "::1/128"]"#),
            "{said}"
        );
        assert!(said.contains("--allow-network"), "{said}");
    }

    #[test]
    fn other_denials_say_only_their_reason() {
        let event = AuditEvent {
            plugin: "acme".into(),
            capability: Capability::Http,
            target: "https://other.example:443".into(),
            reason: DenyReason::AuthorityNotGranted,
            resolved: Vec::new(),
        };
        assert_eq!(event.explain(), "authority not granted");
    }
}
