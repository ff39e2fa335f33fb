//! In-process tests of the routes: a real store, audit trail and sync over the
//! store, a test policy, and requests handed straight to [`handle`] (no listener,
//! no TLS), so each route's answers and audit records are checked on their own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::{handle, watch, Conn, State};
use crate::audit::{Audit, Writer};
use crate::cache::HotCache;
use crate::crypto::LocalKek;
use crate::events::Events;
use crate::fallback::EnvFallback;
use crate::identity::Peer;
use crate::policy::{LivePolicy, Policy, Rule};
use crate::store::{Store, StoreConfig};
use crate::sync::{SyncConfig, Syncer};

const ADMIN: &str = "spiffe://td/app/admin";
const WEB: &str = "spiffe://td/app/web";
/// Named by no rule.
const NOBODY: &str = "spiffe://td/app/nobody";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

struct Fixture {
    state: Arc<State>,
    policy: Arc<LivePolicy>,
    writer: Writer,
    audit_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = LocalKek::generate_file(dir.path().join("kek")).expect("kek");
        let store = Store::open(&StoreConfig::new(dir.path().join("store")), &kek)
            .await
            .expect("open");
        let audit_path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(&audit_path, crate::audit::Reads::Each)
            .await
            .expect("audit");
        let cache = Arc::new(HotCache::new(64));
        let events = Events::new();
        let sync = Syncer::over_store(
            "local",
            store.clone(),
            cache.clone(),
            events.clone(),
            SyncConfig::for_test(),
        );
        let state = Arc::new(State {
            store,
            cache,
            audit,
            events,
            sync,
            fallback: EnvFallback::load(&[], |_| None),
            metrics: crate::metrics::Metrics::new(),
            providers: Arc::new(crate::providers::Live::new(
                crate::providers::Providers::none(),
            )),
            engine: std::sync::OnceLock::new(),
            max_body_bytes: 1024,
            body_timeout: Duration::from_secs(5),
            watchers: watch::Watchers::new(2),
            ca_root: None,
            reloads: None,
        });
        let policy = LivePolicy::new(Policy::new(vec![
            Rule::for_test(ADMIN, &["**"], &["read", "write", "list", "admin"]),
            Rule::for_test(WEB, &["web/**"], &["read", "list"]),
        ]));
        Fixture {
            state,
            policy,
            writer,
            audit_path,
            _dir: dir,
        }
    }

    fn conn(&self, id: &str) -> Arc<Conn> {
        let peer = Peer::for_test(id);
        Arc::new(Conn::new(peer, &self.policy))
    }

    async fn call(&self, who: &str, method: Method, uri: &str, body: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .expect("request");
        let res = handle(self.state.clone(), self.conn(who), req)
            .await
            .expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let json = if bytes.is_empty()
            || !headers[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap_or("")
                .contains("json")
        {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON answer")
        };
        Answer {
            status,
            headers,
            json,
        }
    }

    async fn put(&self, path: &str, body: &str) -> Answer {
        self.call(
            ADMIN,
            Method::PUT,
            &format!("/v1/secrets/{path}"),
            Some(body),
        )
        .await
    }

    /// Closes the trail (every held, coalesced record written) and reads it back.
    async fn audit(self) -> Vec<Value> {
        let Fixture {
            state,
            writer,
            audit_path,
            _dir,
            ..
        } = self;
        drop(state);
        writer.finish().await;
        std::fs::read_to_string(&audit_path)
            .expect("audit file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON audit line"))
            .collect()
    }
}

#[tokio::test]
async fn secrets_round_trip_and_their_errors_carry_stable_codes() {
    let fx = Fixture::new().await;
    let put = fx
        .put(
            "web/db",
            r#"{"fields":{"password":"pw-1"},"kind":"password"}"#,
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(put.json["version"], 1);
    assert_eq!(put.headers[http::header::CACHE_CONTROL], "no-store");

    let got = fx.call(WEB, Method::GET, "/v1/secrets/web/db", None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json["fields"]["password"], "pw-1");
    assert_eq!(got.json["stale"], false);
    // Served again from the hot cache: the same answer.
    let again = fx.call(WEB, Method::GET, "/v1/secrets/web/db", None).await;
    assert_eq!(again.json, got.json);

    let stale_cas = fx
        .put("web/db", r#"{"fields":{"password":"pw-2"},"cas":0}"#)
        .await;
    assert_eq!(stale_cas.status, StatusCode::CONFLICT, "{}", stale_cas.json);
    assert_eq!(stale_cas.code(), "conflict");
    let second = fx
        .put("web/db", r#"{"fields":{"password":"pw-2"},"cas":1}"#)
        .await;
    assert_eq!(second.json["version"], 2);
    let old = fx
        .call(WEB, Method::GET, "/v1/secrets/web/db?version=1", None)
        .await;
    assert_eq!(old.json["fields"]["password"], "pw-1");
    let now = fx.call(WEB, Method::GET, "/v1/secrets/web/db", None).await;
    assert_eq!(
        now.json["fields"]["password"], "pw-2",
        "the cache was invalidated"
    );

    let cases: &[(Method, &str, Option<&str>, StatusCode, &str)] = &[
        (
            Method::GET,
            "/v1/secrets/web/none",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/secrets/web/db?version=x",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/secrets/web/db?label=BAD%20LABEL",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/secrets/web/db?size=1",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/secrets/web/db?version=%zz",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/secrets/web/../etc",
            None,
            StatusCode::BAD_REQUEST,
            "bad_path",
        ),
        (
            Method::PUT,
            "/v1/secrets/web/x",
            Some("{"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            Method::PUT,
            "/v1/secrets/web/x",
            Some(r#"{"fields":{}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            Method::PUT,
            "/v1/secrets/web/x",
            Some(r#"{"fields":{"a":"b"},"colour":1}"#),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            Method::PUT,
            "/v1/secrets/web/x",
            Some(r#"{"fields":{"a":"b"},"expires_at":"soon"}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::PUT,
            "/v1/secrets/web/x?validate=true",
            Some(r#"{"fields":{"a":"b"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_provider",
        ),
        (
            Method::DELETE,
            "/v1/secrets/web/none",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/secrets/web/db",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let got = fx.call(ADMIN, method.clone(), uri, *body).await;
        assert_eq!(
            (got.status, got.code()),
            (*status, *code),
            "{method} {uri}: {}",
            got.json
        );
    }
    let oversized = format!(r#"{{"fields":{{"a":"{}"}}}}"#, "x".repeat(2048));
    let big = fx.put("web/big", &oversized).await;
    assert_eq!(
        (big.status, big.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let wrong = fx
        .call(ADMIN, Method::POST, "/v1/secrets/web/db", None)
        .await;
    assert_eq!(wrong.headers[http::header::ALLOW], "GET, PUT, DELETE");

    let deleted = fx
        .call(ADMIN, Method::DELETE, "/v1/secrets/web/db", None)
        .await;
    assert_eq!(deleted.json["deleted"], true);
    let gone = fx.call(WEB, Method::GET, "/v1/secrets/web/db", None).await;
    assert_eq!(
        gone.status,
        StatusCode::NOT_FOUND,
        "a deleted secret is not served from the cache"
    );

    let trail = fx.audit().await;
    let writes: Vec<&Value> = trail
        .iter()
        .filter(|r| r["op"] == "write" && r["outcome"] == "ok")
        .collect();
    assert_eq!(writes.len(), 3, "two writes and a delete: {trail:?}");
    assert!(
        trail.iter().all(|r| !r.to_string().contains("pw-")),
        "no value reaches the trail"
    );
    let conflict = trail
        .iter()
        .find(|r| r["code"] == "conflict")
        .expect("the lost check-and-set is recorded");
    assert_eq!(conflict["outcome"], "failed");
    assert_eq!(conflict["status"], 409);
}

#[tokio::test]
async fn listing_shows_only_what_the_caller_may_list() {
    let fx = Fixture::new().await;
    for path in ["web/a", "web/b", "billing/key"] {
        let put = fx.put(path, r#"{"fields":{"v":"1"}}"#).await;
        assert_eq!(put.status, StatusCode::OK);
    }
    let all = fx.call(ADMIN, Method::GET, "/v1/secrets", None).await;
    let paths = |a: &Answer| -> Vec<String> {
        a.json["secrets"]
            .as_array()
            .expect("secrets")
            .iter()
            .map(|e| e["path"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(paths(&all), ["billing/key", "web/a", "web/b"]);
    let web = fx
        .call(WEB, Method::GET, "/v1/secrets?prefix=web", None)
        .await;
    assert_eq!(paths(&web), ["web/a", "web/b"]);
    let escaped = fx
        .call(WEB, Method::GET, "/v1/secrets?prefix=web%2Fa", None)
        .await;
    assert_eq!(paths(&escaped), ["web/a"]);
    let bad = fx.call(WEB, Method::GET, "/v1/secrets?limit=1", None).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

#[tokio::test]
async fn denials_are_forbidden_and_audited_as_denied() {
    let fx = Fixture::new().await;
    fx.put("billing/key", r#"{"fields":{"v":"s3cret"}}"#).await;
    let denied: &[(&str, Method, &str, Option<&str>)] = &[
        (WEB, Method::GET, "/v1/secrets/billing/key", None),
        (
            WEB,
            Method::PUT,
            "/v1/secrets/web/a",
            Some(r#"{"fields":{"v":"1"}}"#),
        ),
        (WEB, Method::DELETE, "/v1/secrets/web/a", None),
        (WEB, Method::GET, "/v1/secrets?prefix=billing", None),
        (WEB, Method::POST, "/v1/sync", None),
        (WEB, Method::POST, "/v1/validate/web/a", None),
        (WEB, Method::POST, "/v1/rotate/web/a", None),
        (WEB, Method::GET, "/v1/status", None),
        (WEB, Method::GET, "/v1/status/web/a", None),
        (WEB, Method::GET, "/metrics", None),
        (WEB, Method::POST, "/v1/store/acknowledge", None),
        // A peer that may read something may watch (events are filtered per path);
        // one that may read nothing may not.
        (NOBODY, Method::GET, "/v1/watch?prefix=billing", None),
    ];
    for (who, method, uri, body) in denied {
        let got = fx.call(who, method.clone(), uri, *body).await;
        assert_eq!(
            (got.status, got.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{who} {method} {uri}: {}",
            got.json
        );
        assert!(!got.json.to_string().contains("s3cret"));
    }
    let trail = fx.audit().await;
    let denials: u64 = trail
        .iter()
        .filter(|r| r["outcome"] == "denied" && r["peer"] != ADMIN)
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(
        denials,
        denied.len() as u64,
        "every denial is counted: {trail:?}"
    );
    assert!(
        trail
            .iter()
            .all(|r| r["outcome"] != "ok" || r["peer"] == ADMIN),
        "nothing denied was done: {trail:?}"
    );
}

#[tokio::test]
async fn admin_routes_answer_with_their_own_codes() {
    let fx = Fixture::new().await;
    let whoami = fx.call(WEB, Method::GET, "/v1/whoami", None).await;
    assert_eq!(whoami.json["id"], WEB);
    assert_eq!(whoami.json["app"], "web");
    let health = fx.call(WEB, Method::GET, "/v1/health", None).await;
    assert_eq!(
        (health.status, &health.json["status"]),
        (StatusCode::OK, &Value::from("ok"))
    );

    let sync = fx.call(ADMIN, Method::POST, "/v1/sync", None).await;
    assert_eq!(
        (sync.status, sync.code()),
        (StatusCode::CONFLICT, "no_upstream")
    );
    let metrics = fx.call(ADMIN, Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.headers[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or("")
        .starts_with("application/openmetrics-text"));
    let ack = fx
        .call(ADMIN, Method::POST, "/v1/store/acknowledge", None)
        .await;
    assert_eq!(
        (ack.status, &ack.json["acknowledged"]),
        (StatusCode::OK, &Value::from(0))
    );

    fx.put("web/a", r#"{"fields":{"v":"1"}}"#).await;
    let cases: &[(Method, &str, StatusCode, &str)] = &[
        (
            Method::POST,
            "/v1/validate/web/a",
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_provider",
        ),
        (
            Method::POST,
            "/v1/validate/web/none",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/rotate/web/a",
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_provider",
        ),
        (
            Method::GET,
            "/v1/status/web/a",
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_provider",
        ),
        (
            Method::GET,
            "/v1/status?prefix=%zz",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/nothing",
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            Method::DELETE,
            "/metrics",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/sync",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/rotate/web/a",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/v1/status",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/v1/secrets",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, status, code) in cases {
        let got = fx.call(ADMIN, method.clone(), uri, None).await;
        assert_eq!(
            (got.status, got.code()),
            (*status, *code),
            "{method} {uri}: {}",
            got.json
        );
    }
    let wrong = fx.call(ADMIN, Method::GET, "/v1/sync", None).await;
    assert_eq!(wrong.headers[http::header::ALLOW], "POST");
}

#[tokio::test]
async fn an_open_connection_follows_a_reloaded_policy_from_its_next_request() {
    let fx = Fixture::new().await;
    fx.put("billing/key", r#"{"fields":{"v":"1"}}"#).await;
    // One connection, kept across the reload.
    let web = fx.conn(WEB);
    let read = |conn: Arc<Conn>| {
        let req = Request::builder()
            .uri("/v1/secrets/billing/key")
            .body(Full::new(Bytes::new()))
            .expect("request");
        handle(fx.state.clone(), conn, req)
    };
    let before = read(web.clone()).await.expect("infallible");
    assert_eq!(before.status(), StatusCode::FORBIDDEN);
    fx.policy.replace(Policy::new(vec![Rule::for_test(
        WEB,
        &["billing/**"],
        &["read"],
    )]));
    let after = read(web.clone()).await.expect("infallible");
    assert_eq!(
        after.status(),
        StatusCode::OK,
        "the same connection, the new rules"
    );
    assert_eq!(web.peer.id.as_ref(), WEB, "and the same identity");
    let web_paths = read(web).await.expect("infallible");
    assert_eq!(web_paths.status(), StatusCode::OK);
}
