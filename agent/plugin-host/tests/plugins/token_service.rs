//! A token service for the SDK example providers: the HTTP shape their READMEs
//! document, as a loopback [`Fixture`] (hyper, `127.0.0.1`, a port the OS picked).
//! Shared by the plugin host's tests and the end-to-end tests.
//!
//! - `GET /v1/token/introspect` answers by the bearer token: `good` → 200 with account,
//!   scopes and expiry; `large-body` → 200 with a body over [`BIG_BODY`] bytes whose account
//!   comes last (so a cut body fails to parse); `refused…` → 401 whose message echoes
//!   the token; `forbidden` → 403; `limited` → 429; `broken` → 503; `slow` → 200 after
//!   [`SLOW`]; `not-json` → 200 with HTML; `fresh-…` (what a refresh hands out) → 200.
//! - `POST /v1/token/refresh` reads `{"refresh_token": …}`: `revoked` → 400
//!   `invalid_grant`; `flaky` → 503; any other → 200 with the access token
//!   `fresh-<length of the refresh token received>`, the refresh token `refresh-2` and
//!   `expires_in: 3600`.

use std::time::Duration;

use serde_json::json;

use super::fixture::{Fixture, Reply, Seen};

/// Size of the `big` introspection answer's padding: well past one 64 KiB read.
pub(crate) const BIG_BODY: usize = 300 * 1024;
/// How long the `slow` token takes to answer.
pub(crate) const SLOW: Duration = Duration::from_secs(4);

/// Starts the service.
pub(crate) fn start() -> anyhow::Result<Fixture> {
    Fixture::start(answer)
}

fn answer(req: &Seen) -> Reply {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/token/introspect") => {
            let token = req
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            introspect(token)
        }
        ("POST", "/v1/token/refresh") => refresh(&req.body),
        _ => Reply::json(404, json!({"error": "no such endpoint"})),
    }
}

fn introspect(token: &str) -> Reply {
    let good = json!({
        "account": "acme",
        "scopes": ["read", "write"],
        "expires_at": "2030-01-01T00:00:00Z",
    });
    match token {
        "good" => Reply::json(200, good),
        t if t.starts_with("fresh-") => Reply::json(200, good),
        "large-body" => {
            // Padding first, the account last: a body read short does not parse.
            let body = format!(
                r#"{{"padding":"{}","scopes":["read"],"account":"acme-big"}}"#,
                "x".repeat(BIG_BODY)
            );
            Reply::text(200, &body).header("content-type", "application/json")
        }
        "forbidden" => Reply::json(403, json!({"error": {"message": "token lacks scope"}})),
        "limited" => Reply::json(429, json!({"error": "slow down"})),
        "broken" => Reply::json(503, json!({"error": "maintenance"})),
        "slow" => {
            std::thread::sleep(SLOW);
            Reply::json(200, good)
        }
        "not-json" => Reply::text(200, "<html>portal</html>"),
        other => Reply::json(
            401,
            json!({"error": {"code": "invalid_token", "message": format!("token {other} is not valid")}}),
        ),
    }
}

fn refresh(body: &[u8]) -> Reply {
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(token) = parsed["refresh_token"].as_str() else {
        return Reply::json(400, json!({"error": "invalid_request"}));
    };
    match token {
        "revoked" => Reply::json(
            400,
            json!({"error": "invalid_grant", "error_description": "refresh token revoked"}),
        ),
        "flaky" => Reply::json(503, json!({"error": "try later"})),
        _ => Reply::json(
            200,
            json!({
                "access_token": format!("fresh-{}", token.len()),
                "refresh_token": "refresh-2",
                "expires_in": 3600,
            }),
        ),
    }
}
