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
//! A path pattern binds the caller's whole name, so tenant and non-tenant apps of the
//! same name never meet: `{app}` in a pattern without `{tenant}` matches only apps
//! outside any tenant (`.../app/a`, never `.../tenant/t/app/a`), and a pattern with
//! `{tenant}` matches only tenant apps. [`Policy::warnings`] names rules that use
//! `{app}` alone while their identity pattern also matches tenant apps (those rules
//! grant tenant apps nothing through that path).
//!
//! The rules that apply to a peer are picked once per connection
//! ([`Policy::for_peer`]), and again after a reload replaced the policy
//! ([`ConnPolicy`]); each request then costs a walk over a few segments and no
//! allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

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
struct Pattern {
    segs: Box<[Seg]>,
    /// Whether `{tenant}` appears: then `{app}` is the app within that tenant;
    /// otherwise `{app}` names a non-tenant app only.
    binds_tenant: bool,
}

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
        Ok(Pattern {
            binds_tenant: segs.contains(&Seg::Tenant),
            segs: segs.into(),
        })
    }

    fn uses_app(&self) -> bool {
        self.segs.contains(&Seg::App)
    }

    fn matches<'a>(&self, mut path: impl Iterator<Item = &'a str> + Clone, peer: &Peer) -> bool {
        match_segs(&self.segs, &mut path, &self.bind(peer))
    }

    /// The names the placeholders of this pattern stand for, for `peer`.
    fn bind<'p>(&self, peer: &'p Peer) -> Names<'p> {
        let tenant = peer.tenant.as_deref();
        Names {
            // `{app}` alone is a non-tenant app's name; a tenant app has none here.
            app: peer
                .app
                .as_deref()
                .filter(|_| self.binds_tenant || tenant.is_none()),
            tenant,
        }
    }

    /// Whether this (identity) pattern matches some id of the shape
    /// `spiffe://<any>/tenant/<any>/app/<any>`.
    fn could_match_tenant_app(&self) -> bool {
        use Shape::{Any, Lit};
        let shape = [
            Lit("spiffe:"),
            Lit(""),
            Any,
            Lit("tenant"),
            Any,
            Lit("app"),
            Any,
        ];
        intersects(&self.segs, &shape)
    }

    /// Whether some path under `prefix` could match (used to filter list results early).
    fn could_match_under(&self, prefix: &Prefix, peer: &Peer) -> bool {
        let text = prefix.as_str().trim_end_matches('/');
        if text.is_empty() {
            return true;
        }
        let names = self.bind(peer);
        let mut segs = self.segs.iter();
        for part in text.split('/') {
            match segs.next() {
                None => return false,
                Some(Seg::Many) => return true,
                Some(seg) => {
                    if !seg_matches(seg, part, &names) {
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

/// What `{app}` and `{tenant}` stand for in one pattern, for one peer (`None`: the
/// placeholder matches nothing).
struct Names<'p> {
    app: Option<&'p str>,
    tenant: Option<&'p str>,
}

fn seg_matches(seg: &Seg, s: &str, names: &Names<'_>) -> bool {
    match seg {
        Seg::Literal(l) => **l == *s,
        Seg::Glob(pieces) => glob_matches(pieces, s),
        Seg::One | Seg::Many => true,
        Seg::App => names.app == Some(s),
        Seg::Tenant => names.tenant == Some(s),
    }
}

/// A segment of an id shape: a fixed text, or any one segment.
#[derive(Clone, Copy)]
enum Shape {
    Lit(&'static str),
    Any,
}

/// Whether some concrete id matches both `pattern` and `shape`.
fn intersects(pattern: &[Seg], shape: &[Shape]) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return shape.is_empty();
    };
    if *first == Seg::Many {
        return (0..=shape.len()).any(|skip| intersects(rest, &shape[skip..]));
    }
    let Some((s, shape_rest)) = shape.split_first() else {
        return false;
    };
    let meets = match (first, s) {
        (_, Shape::Any) => true,
        (Seg::Literal(l), Shape::Lit(t)) => **l == **t,
        (Seg::Glob(pieces), Shape::Lit(t)) => glob_matches(pieces, t),
        (Seg::One | Seg::Many, Shape::Lit(_)) => true,
        // Identity patterns have no placeholders.
        (Seg::App | Seg::Tenant, Shape::Lit(_)) => false,
    };
    meets && intersects(rest, shape_rest)
}

fn match_segs<'a, I>(pattern: &[Seg], path: &mut I, names: &Names<'_>) -> bool
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
            if match_segs(rest, &mut probe.clone(), names) {
                return true;
            }
            if probe.next().is_none() {
                return false;
            }
        }
    }
    match path.next() {
        Some(s) if seg_matches(first, s, names) => match_segs(rest, path, names),
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
    /// A rule from literals that must compile (tests).
    #[cfg(test)]
    pub(crate) fn for_test(identity: &str, paths: &[&str], ops: &[&str]) -> Rule {
        Rule::compile(&RuleSpec {
            identity: identity.into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            operations: ops.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid rule")
    }

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

    /// What in this rule probably does not do what its author meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.identity.could_match_tenant_app() {
            for (p, text) in self.paths.iter().zip(&self.spec.paths) {
                if p.uses_app() && !p.binds_tenant {
                    out.push(format!(
                        "path {text:?} uses {{app}} without {{tenant}} while identity {:?} \
                         also matches tenant apps: {{app}} alone names non-tenant apps only, \
                         so it grants tenant apps nothing; add a path with \
                         tenants/{{tenant}}/... for them",
                        self.spec.identity
                    ));
                }
            }
        }
        out
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

    /// Warnings about the rules, each prefixed `policy[i]: ` (see [`Rule::warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        self.rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.warnings()
                    .into_iter()
                    .map(move |w| format!("policy[{i}]: {w}"))
            })
            .collect()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
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

/// The policy in force, replaced whole by a reload. Connections pick their rules
/// again at their first request after a replacement ([`ConnPolicy`]), so an open
/// connection keeps its identity and follows the new rules.
#[derive(Debug)]
pub struct LivePolicy {
    current: ArcSwap<Policy>,
    epoch: AtomicU64,
}

impl LivePolicy {
    /// The policy in force at start.
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(LivePolicy {
            current: ArcSwap::from_pointee(policy),
            epoch: AtomicU64::new(0),
        })
    }

    /// Puts `policy` in force for every request from now on.
    pub fn replace(&self, policy: Policy) {
        self.current.store(Arc::new(policy));
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }
}

/// One connection's picked rules, kept in step with a [`LivePolicy`].
#[derive(Debug)]
pub struct ConnPolicy {
    live: Arc<LivePolicy>,
    picked: ArcSwap<(u64, PeerPolicy)>,
}

impl ConnPolicy {
    /// Picks `peer`'s rules from the policy in force.
    pub fn new(live: Arc<LivePolicy>, peer: &Peer) -> Self {
        let epoch = live.epoch.load(Ordering::Acquire);
        let picked = live.current.load().for_peer(peer);
        ConnPolicy {
            live,
            picked: ArcSwap::from_pointee((epoch, picked)),
        }
    }

    /// `peer`'s rules under the policy in force now (picked again after a reload).
    pub fn get(&self, peer: &Peer) -> PeerPolicy {
        let epoch = self.live.epoch.load(Ordering::Acquire);
        let held = self.picked.load();
        if held.0 == epoch {
            return held.1.clone();
        }
        let picked = self.live.current.load().for_peer(peer);
        self.picked.store(Arc::new((epoch, picked.clone())));
        picked
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
        Rule::for_test(identity, paths, ops)
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

    /// Issue 11, item 4: every identity kind against every placeholder combination,
    /// under a rule whose identity pattern matches all of them.
    #[test]
    fn r11_placeholders_never_let_tenant_and_non_tenant_apps_meet() {
        let policy = Policy::new(vec![rule(
            "spiffe://td/**",
            &[
                "byapp/{app}/**",
                "bytenant/{tenant}/**",
                "both/{tenant}/{app}/**",
            ],
            &["read", "list"],
        )]);
        let plain_a = peer("spiffe://td/app/a");
        let tenant_a = peer("spiffe://td/tenant/t/app/a");
        let other_tenant_a = peer("spiffe://td/tenant/u/app/a");
        let tenant_named_a = peer("spiffe://td/tenant/a/app/a");
        let admin = peer("spiffe://td/admin/a");
        let cases: &[(&Peer, &str, Decision)] = &[
            // {app} alone: non-tenant apps only.
            (&plain_a, "byapp/a/x", Decision::Allow),
            (&plain_a, "byapp/b/x", Decision::Deny),
            (&tenant_a, "byapp/a/x", Decision::Deny),
            (&tenant_named_a, "byapp/a/x", Decision::Deny),
            (&admin, "byapp/a/x", Decision::Deny),
            // {tenant} alone: tenant apps of that tenant only.
            (&plain_a, "bytenant/a/x", Decision::Deny),
            (&tenant_a, "bytenant/t/x", Decision::Allow),
            (&tenant_a, "bytenant/u/x", Decision::Deny),
            (&other_tenant_a, "bytenant/t/x", Decision::Deny),
            (&admin, "bytenant/a/x", Decision::Deny),
            // Both: the app within its tenant.
            (&tenant_a, "both/t/a/x", Decision::Allow),
            (&tenant_a, "both/u/a/x", Decision::Deny),
            (&tenant_a, "both/t/b/x", Decision::Deny),
            (&other_tenant_a, "both/t/a/x", Decision::Deny),
            (&other_tenant_a, "both/u/a/x", Decision::Allow),
            (&plain_a, "both/a/a/x", Decision::Deny),
            (&admin, "both/a/a/x", Decision::Deny),
        ];
        for (n, (p, target, expected)) in cases.iter().enumerate() {
            let pp = policy.for_peer(p);
            assert_eq!(
                pp.check(p, Operation::Read, &path(target)),
                *expected,
                "case {n}: {} reading {target}",
                p.id
            );
        }
        // Listing follows the same binding.
        let pp = policy.for_peer(&tenant_a);
        assert!(!pp.may_list_under(&tenant_a, &Prefix::parse("byapp/a/").expect("prefix")));
        let pp = policy.for_peer(&plain_a);
        assert!(pp.may_list_under(&plain_a, &Prefix::parse("byapp/a/").expect("prefix")));
    }

    #[test]
    fn r11_app_without_tenant_under_an_identity_matching_tenant_apps_warns() {
        let warns = |identity: &str, paths: &[&str]| rule(identity, paths, &["read"]).warnings();
        for identity in [
            "spiffe://td/**",
            "spiffe://*/tenant/*/app/*",
            "spiffe://td/tenant/acme/app/**",
            "spiffe://td/*/acme/**",
        ] {
            let w = warns(identity, &["byapp/{app}/**"]);
            assert_eq!(w.len(), 1, "{identity}: {w:?}");
            assert!(w[0].contains("byapp/{app}/**"), "{w:?}");
            assert!(
                warns(identity, &["t/{tenant}/{app}/**", "shared/**"]).is_empty(),
                "{identity}"
            );
        }
        // Identity patterns that only match non-tenant apps are fine.
        for identity in [
            "spiffe://td/app/*",
            "spiffe://td/app/web",
            "spiffe://td/*/*",
        ] {
            assert!(
                warns(identity, &["byapp/{app}/**"]).is_empty(),
                "{identity}"
            );
        }
        let policy = Policy::new(vec![
            rule("spiffe://td/app/*", &["apps/{app}/**"], &["read"]),
            rule("spiffe://td/**", &["byapp/{app}/**"], &["read"]),
        ]);
        let all = policy.warnings();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("policy[1]: "), "{all:?}");
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
