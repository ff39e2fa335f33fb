//! Decides whether a peer may perform an operation on a secret path.
//!
//! Pure and synchronous: takes a [`Peer`] from `identity` and a request from `api`,
//! returns a [`Decision`]. No I/O here; `api` records denials through `audit`.
//!
//! Rules only allow; anything no rule allows is denied. A rule names an identity
//! pattern, path patterns and operations. Patterns match whole `/`-separated
//! segments: `*` is one segment, `**` any number (also none), `db-*` a segment with
//! that prefix, and `{app}` / `{tenant}` the caller's own app or tenant name, so one
//! rule can give every app its own subtree:
//!
//! ```toml
//! [[policy]]
//! identity = "spiffe://latchkey.local/app/*"
//! paths = ["apps/{app}/**"]
//! operations = ["read"]
//! ```
//!
//! The rules that apply to a peer are picked once per connection
//! ([`Policy::for_peer`]); each request then costs a walk over a few segments and no
//! allocation.

use std::sync::Arc;

use serde::Deserialize;

use crate::identity::Peer;
use crate::path::{Prefix, SecretPath};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read a secret's value.
    Read,
    /// Create, update or delete a secret.
    Write,
    /// List paths under a prefix.
    List,
    /// Administrative operations (rotate, audit query, …).
    Admin,
}

impl Operation {
    /// Lowercase name, as in the config and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::List => "list",
            Operation::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Operation::Read => 1,
            Operation::Write => 2,
            Operation::List => 4,
            Operation::Admin => 8,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Operation::Read,
            "write" => Operation::Write,
            "list" => Operation::List,
            "admin" => Operation::Admin,
            _ => return None,
        })
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A rule allows it.
    Allow,
    /// No rule allows it.
    Deny,
}

/// A rule as written in `[[policy]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// SPIFFE id pattern (exact, or with `*` / `**` segments).
    pub identity: String,
    /// Path patterns.
    pub paths: Vec<String>,
    /// `read`, `write`, `list`, `admin`.
    pub operations: Vec<String>,
}

/// Why a rule could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// An operation name is not one of read/write/list/admin.
    #[error("unknown operation {0:?} (expected read, write, list or admin)")]
    Operation(String),
    /// A pattern is malformed.
    #[error("pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A rule lists no paths or no operations.
    #[error("a rule needs at least one path and one operation")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(Box<str>),
    /// A segment with `*` inside, e.g. `db-*`: the literal pieces in order.
    Glob(Box<[Box<str>]>),
    One,
    Many,
    App,
    Tenant,
}

/// A compiled segment pattern.
#[derive(Debug, Clone)]
struct Pattern(Box<[Seg]>);

impl Pattern {
    fn compile(text: &str, allow_placeholders: bool) -> Result<Self, RuleError> {
        let err = |reason| RuleError::Pattern {
            pattern: text.to_owned(),
            reason,
        };
        let body = text.trim_start_matches('/');
        if body.is_empty() {
            return Err(err("is empty"));
        }
        let mut segs = Vec::new();
        for s in body.split('/') {
            let seg = match s {
                "**" => Seg::Many,
                "*" => Seg::One,
                "{app}" if allow_placeholders => Seg::App,
                "{tenant}" if allow_placeholders => Seg::Tenant,
                "." | ".." => return Err(err("has a relative segment")),
                s if s.contains("**") => return Err(err("'**' must be a whole segment")),
                s if s.contains('{') || s.contains('}') => {
                    return Err(err("only {app} and {tenant} placeholders are known"))
                }
                s if s.contains('*') => Seg::Glob(s.split('*').map(Into::into).collect()),
                s => Seg::Literal(s.into()),
            };
            segs.push(seg);
        }
        Ok(Pattern(segs.into()))
    }

    fn matches<'a>(&self, mut path: impl Iterator<Item = &'a str> + Clone, peer: &Peer) -> bool {
        match_segs(&self.0, &mut path, peer)
    }

    /// Whether some path under `prefix` could match (used to filter list results early).
    fn could_match_under(&self, prefix: &Prefix, peer: &Peer) -> bool {
        let text = prefix.as_str().trim_end_matches('/');
        if text.is_empty() {
            return true;
        }
        let mut segs = self.0.iter();
        for part in text.split('/') {
            match segs.next() {
                None => return false,
                Some(Seg::Many) => return true,
                Some(seg) => {
                    if !seg_matches(seg, part, peer) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

fn glob_matches(pieces: &[Box<str>], s: &str) -> bool {
    let (first, rest) = match pieces.split_first() {
        Some(x) => x,
        None => return true,
    };
    let Some(mut remaining) = s.strip_prefix(&**first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for piece in middle {
        match remaining.find(&**piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.ends_with(&**last)
}

fn seg_matches(seg: &Seg, s: &str, peer: &Peer) -> bool {
    match seg {
        Seg::Literal(l) => **l == *s,
        Seg::Glob(pieces) => glob_matches(pieces, s),
        Seg::One | Seg::Many => true,
        Seg::App => peer.app.as_deref() == Some(s),
        Seg::Tenant => peer.tenant.as_deref() == Some(s),
    }
}

fn match_segs<'a, I>(pattern: &[Seg], path: &mut I, peer: &Peer) -> bool
where
    I: Iterator<Item = &'a str> + Clone,
{
    let Some((first, rest)) = pattern.split_first() else {
        return path.next().is_none();
    };
    if *first == Seg::Many {
        if rest.is_empty() {
            return true;
        }
        // Try every split point: `**` takes zero, one, two … segments.
        let mut probe = path.clone();
        loop {
            if match_segs(rest, &mut probe.clone(), peer) {
                return true;
            }
            if probe.next().is_none() {
                return false;
            }
        }
    }
    match path.next() {
        Some(s) if seg_matches(first, s, peer) => match_segs(rest, path, peer),
        _ => false,
    }
}

/// One compiled `[[policy]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    identity: Pattern,
    paths: Box<[Pattern]>,
    ops: u8,
    spec: RuleSpec,
}

impl Rule {
    /// Compiles a rule as written.
    pub fn compile(spec: &RuleSpec) -> Result<Rule, RuleError> {
        if spec.paths.is_empty() || spec.operations.is_empty() {
            return Err(RuleError::Empty);
        }
        let mut ops = 0;
        for op in &spec.operations {
            ops |= Operation::parse(op)
                .ok_or_else(|| RuleError::Operation(op.clone()))?
                .bit();
        }
        Ok(Rule {
            identity: Pattern::compile(&spec.identity, false)?,
            paths: spec
                .paths
                .iter()
                .map(|p| Pattern::compile(p, true))
                .collect::<Result<_, _>>()?,
            ops,
            spec: spec.clone(),
        })
    }

    /// The rule as written.
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    fn applies_to(&self, peer: &Peer) -> bool {
        self.identity.matches(peer.id.split('/'), peer)
    }
}

/// Every rule.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Arc<[Rule]>,
}

impl Policy {
    /// A policy from compiled rules.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules: rules.into(),
        }
    }

    /// The rules that apply to `peer`, picked once per connection.
    pub fn for_peer(&self, peer: &Peer) -> PeerPolicy {
        let picked: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].applies_to(peer))
            .collect();
        PeerPolicy {
            rules: self.rules.clone(),
            picked: picked.into(),
        }
    }
}

/// The rules that apply to one peer.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    rules: Arc<[Rule]>,
    picked: Arc<[usize]>,
}

impl PeerPolicy {
    /// Whether `peer` may perform `op` on `path`.
    pub fn check(&self, peer: &Peer, op: Operation, path: &SecretPath) -> Decision {
        for &i in self.picked.iter() {
            let rule = &self.rules[i];
            if rule.ops & op.bit() != 0
                && rule.paths.iter().any(|p| p.matches(path.segments(), peer))
            {
                return Decision::Allow;
            }
        }
        Decision::Deny
    }

    /// Whether `peer` may perform `op` on anything at all (e.g. `admin` with no path).
    pub fn allows_any(&self, op: Operation) -> bool {
        self.picked
            .iter()
            .any(|&i| self.rules[i].ops & op.bit() != 0)
    }

    /// Whether a list under `prefix` could return anything for this peer.
    pub fn may_list_under(&self, peer: &Peer, prefix: &Prefix) -> bool {
        self.picked.iter().any(|&i| {
            let rule = &self.rules[i];
            rule.ops & Operation::List.bit() != 0
                && rule.paths.iter().any(|p| p.could_match_under(prefix, peer))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Peer {
        Peer::for_test(id)
    }

    fn rule(identity: &str, paths: &[&str], ops: &[&str]) -> Rule {
        Rule::compile(&RuleSpec {
            identity: identity.into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            operations: ops.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid rule")
    }

    fn path(p: &str) -> SecretPath {
        SecretPath::parse(p).expect("valid path")
    }

    #[test]
    fn denies_peer_without_matching_rule() {
        let policy = Policy::new(vec![rule(
            "spiffe://td/app/billing",
            &["billing/**"],
            &["read"],
        )]);
        let other = peer("spiffe://td/app/web");
        let pp = policy.for_peer(&other);
        assert_eq!(
            pp.check(&other, Operation::Read, &path("billing/db")),
            Decision::Deny
        );
        let billing = peer("spiffe://td/app/billing");
        let pp = policy.for_peer(&billing);
        assert_eq!(
            pp.check(&billing, Operation::Read, &path("billing/db")),
            Decision::Allow
        );
        assert_eq!(
            pp.check(&billing, Operation::Write, &path("billing/db")),
            Decision::Deny
        );
        assert_eq!(
            pp.check(&billing, Operation::Read, &path("web/db")),
            Decision::Deny
        );
    }

    #[test]
    fn star_is_one_segment_and_double_star_any() {
        let policy = Policy::new(vec![rule(
            "spiffe://td/app/*",
            &["a/*/c", "x/**"],
            &["read"],
        )]);
        let p = peer("spiffe://td/app/one");
        let pp = policy.for_peer(&p);
        assert_eq!(
            pp.check(&p, Operation::Read, &path("a/b/c")),
            Decision::Allow
        );
        assert_eq!(
            pp.check(&p, Operation::Read, &path("a/b/b/c")),
            Decision::Deny
        );
        assert_eq!(pp.check(&p, Operation::Read, &path("x")), Decision::Allow);
        assert_eq!(
            pp.check(&p, Operation::Read, &path("x/y/z")),
            Decision::Allow
        );
        // `*` in the identity does not cross a segment.
        let nested = peer("spiffe://td/tenant/t/app/one");
        assert!(!policy.for_peer(&nested).allows_any(Operation::Read));
    }

    #[test]
    fn placeholders_bind_to_the_callers_own_names() {
        let policy = Policy::new(vec![rule(
            "spiffe://td/tenant/*/app/*",
            &["tenants/{tenant}/apps/{app}/**"],
            &["read"],
        )]);
        let p = peer("spiffe://td/tenant/acme/app/web");
        let pp = policy.for_peer(&p);
        assert_eq!(
            pp.check(&p, Operation::Read, &path("tenants/acme/apps/web/db")),
            Decision::Allow
        );
        assert_eq!(
            pp.check(&p, Operation::Read, &path("tenants/other/apps/web/db")),
            Decision::Deny
        );
        assert_eq!(
            pp.check(&p, Operation::Read, &path("tenants/acme/apps/api/db")),
            Decision::Deny
        );
    }

    #[test]
    fn segment_globs_match_inside_a_segment() {
        let policy = Policy::new(vec![rule("spiffe://td/app/x", &["db-*-ro/*"], &["read"])]);
        let p = peer("spiffe://td/app/x");
        let pp = policy.for_peer(&p);
        assert_eq!(
            pp.check(&p, Operation::Read, &path("db-main-ro/k")),
            Decision::Allow
        );
        assert_eq!(
            pp.check(&p, Operation::Read, &path("db-main-rw/k")),
            Decision::Deny
        );
        assert_eq!(
            pp.check(&p, Operation::Read, &path("db--ro/k")),
            Decision::Allow
        );
    }

    #[test]
    fn list_prefix_filter() {
        let policy = Policy::new(vec![rule(
            "spiffe://td/app/x",
            &["apps/{app}/**"],
            &["list"],
        )]);
        let p = peer("spiffe://td/app/x");
        let pp = policy.for_peer(&p);
        assert!(pp.may_list_under(&p, &Prefix::parse("apps/x/").expect("prefix")));
        assert!(pp.may_list_under(&p, &Prefix::all()));
        assert!(!pp.may_list_under(&p, &Prefix::parse("apps/y").expect("prefix")));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (paths, ops) in [
            (vec!["a/**b"], vec!["read"]),
            (vec!["a/{user}"], vec!["read"]),
            (vec!["a/../b"], vec!["read"]),
            (vec!["a"], vec!["fly"]),
            (vec![], vec!["read"]),
        ] {
            let spec = RuleSpec {
                identity: "spiffe://td/app/x".into(),
                paths: paths.into_iter().map(String::from).collect(),
                operations: ops.into_iter().map(String::from).collect(),
            };
            assert!(Rule::compile(&spec).is_err(), "{spec:?}");
        }
    }
}
