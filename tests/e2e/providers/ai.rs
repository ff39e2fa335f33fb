//! AI providers (`openai`, `anthropic`, `gemini`, `openrouter`, `groq`) through the real
//! `latchkey plugin call` against loopback fixtures of each service.
//!
//! Each fixture answers only a request with the service's exact path and auth scheme
//! (OpenAI, Groq, OpenRouter: `Authorization: Bearer`; Anthropic: `x-api-key` plus
//! `anthropic-version: 2023-06-01`; Gemini: `x-goog-api-key`, never `?key=`), with the
//! documented success and error bodies. Anything else gets a 404 the plugin would turn
//! into `rejected`, so a wrong path or header fails the test. Per provider: a good key
//! is valid with the service's details, a bad key is `valid: false` with the service's
//! reason (and the key appears nowhere in the output), 429 and 5xx are `unavailable`.
//! OpenAI also rotates project service accounts through its admin API.
//!
//! Each test installs the provider for its fixture ([`install`]); one test shows that
//! the shipped manifest alone does not reach another base URL.

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use super::common::{assert_no_secret, install, ok, Installed};
use crate::harness::fixture::{Fixture, Reply, Seen};
use crate::harness::wasm::{self, call, Called};

impl Installed {
    /// Validates an `api-key` credential (field `api-key`).
    fn validate_key(&self, key: &str) -> anyhow::Result<Called> {
        self.call("validate", json!({}), &api_key(key))
    }
}

fn api_key(key: &str) -> Value {
    json!({"kind": "api-key", "fields": {"api-key": key}, "expires_at": null})
}

/// The detail of a `valid: true` answer.
fn valid(called: &Called) -> anyhow::Result<String> {
    let answer = ok(called)?;
    ensure!(answer["valid"] == true, "expected valid, got {answer}");
    Ok(answer["detail"].as_str().unwrap_or_default().to_owned())
}

/// The detail of a `valid: false` answer; `key` must appear nowhere in the output.
fn refused(called: &Called, key: &str) -> anyhow::Result<String> {
    let answer = ok(called)?;
    ensure!(answer["valid"] == false, "expected invalid, got {answer}");
    assert_no_secret(called, &[key])?;
    Ok(answer["detail"].as_str().unwrap_or_default().to_owned())
}

/// The detail of an error answer with `code`; `key` must appear nowhere in the output.
fn error(called: &Called, code: &str, key: &str) -> anyhow::Result<String> {
    let (got, detail) = super::common::error(called)?;
    ensure!(got == code, "expected {code}, got {:?}", called.json);
    assert_no_secret(called, &[key])?;
    Ok(detail)
}

fn contains_all(detail: &str, parts: &[&str]) -> anyhow::Result<()> {
    for part in parts {
        ensure!(detail.contains(part), "{detail:?} lacks {part:?}");
    }
    Ok(())
}

/// Keys every fixture knows: one per answer the tests need.
const GOOD: &str = "sk-good-0123456789abcdefghij";
const BAD: &str = "sk-bad-0123456789abcdefghijk";
const LIMITED: &str = "sk-ratelimited-0123456789abc";
const BROKEN: &str = "sk-broken-0123456789abcdefgh";

/// The OpenAI-style mask of a key in an error message (`sk-bad-0*****hijk`).
fn masked(key: &str) -> String {
    let head: String = key.chars().take(8).collect();
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}{}{tail}", "*".repeat(key.len().saturating_sub(12)))
}

/// The key after `Bearer `, if the request carries exactly that scheme.
fn bearer(req: &Seen) -> Option<&str> {
    req.header("authorization")?.strip_prefix("Bearer ")
}

fn not_found(req: &Seen) -> Reply {
    Reply::json(
        404,
        json!({"error": {"message": format!("fixture: no route {} {}", req.method, req.path)}}),
    )
}

/// Starts a fixture of `api`, installs provider `name` for it and runs the valid /
/// refused / 429 / 5xx checks every provider passes: `good_parts` must be in the good
/// key's detail, `refused_parts` in the bad key's. Returns both for further checks.
fn check_key_answers(
    name: &str,
    api: fn(&Seen) -> Reply,
    good_parts: &[&str],
    refused_parts: &[&str],
) -> anyhow::Result<(Fixture, Installed)> {
    let fixture = Fixture::start(api)?;
    let p = install(name, &fixture)?;
    contains_all(&valid(&p.validate_key(GOOD)?)?, good_parts)?;
    contains_all(&refused(&p.validate_key(BAD)?, BAD)?, refused_parts)?;
    let limited = error(&p.validate_key(LIMITED)?, "unavailable", LIMITED)?;
    ensure!(limited.contains("service answered 429"), "{limited}");
    let broken = error(&p.validate_key(BROKEN)?, "unavailable", BROKEN)?;
    ensure!(broken.contains("service answered 5"), "{broken}");
    ensure!(
        fixture.requests().len() == 4,
        "expected one request per call, got {:?}",
        fixture.requests()
    );
    Ok((fixture, p))
}

// ---------------------------------------------------------------------------------
// OpenAI

const ADMIN: &str = "sk-admin-0123456789abcdefghij";
const PROJECT: &str = "proj_latchkey";
const NEW_KEY: &str = "sk-svcacct-new-0123456789abcdef";

fn openai_error(status: u16, message: &str, kind: &str, code: Value) -> Reply {
    Reply::json(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn openai_api(req: &Seen) -> Reply {
    let projects = format!("/v1/organization/projects/{PROJECT}");
    let accounts = format!("{projects}/service_accounts");
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => {
            let key = bearer(req).unwrap_or_default();
            match key {
                GOOD | NEW_KEY => {
                    let mut reply = Reply::json(
                        200,
                        json!({"object": "list", "data": [
                            {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                            {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"},
                            {"id": "whisper-1", "object": "model", "created": 1677532384, "owned_by": "openai-internal"}
                        ]}),
                    )
                    .header("openai-organization", "org-latchkeytest")
                    .header("openai-processing-ms", "21")
                    .header("openai-version", "2020-10-01")
                    .header("x-request-id", "req_0123456789abcdef")
                    .header("x-ratelimit-limit-requests", "10000")
                    .header("x-ratelimit-remaining-requests", "9999");
                    // OpenAI answers with the project the request was scoped to.
                    if let Some(project) = req.header("openai-project") {
                        reply = reply.header("openai-project", project);
                    }
                    reply
                }
                LIMITED => openai_error(
                    429,
                    "Rate limit reached for requests",
                    "requests",
                    json!("rate_limit_exceeded"),
                ),
                BROKEN => openai_error(
                    500,
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    Value::Null,
                ),
                // A careless service echoing the whole key: the plugin must redact it.
                "sk-echoed-0123456789abcdefgh" => openai_error(
                    401,
                    &format!("Incorrect API key provided: {key}."),
                    "invalid_request_error",
                    json!("invalid_api_key"),
                ),
                _ => openai_error(
                    401,
                    &format!(
                        "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                        masked(key)
                    ),
                    "invalid_request_error",
                    json!("invalid_api_key"),
                ),
            }
        }
        _ if bearer(req) != Some(ADMIN) && req.path.starts_with("/v1/organization/") => {
            openai_error(
                401,
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    masked(bearer(req).unwrap_or_default())
                ),
                "invalid_request_error",
                json!("invalid_api_key"),
            )
        }
        ("GET", p) if p == projects => Reply::json(
            200,
            json!({"id": PROJECT, "object": "organization.project", "name": "Latchkey tests",
                   "created_at": 1711471533, "archived_at": null, "status": "active"}),
        ),
        ("POST", p) if p == accounts => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let name = body["name"].as_str().unwrap_or_default();
            let named = name
                .strip_prefix("latchkey-")
                .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
            let only_name = body.as_object().is_some_and(|o| o.len() == 1);
            if req.header("content-type") != Some("application/json") || !named || !only_name {
                return openai_error(
                    400,
                    "fixture: expected {\"name\": \"latchkey-<unix seconds>\"} as JSON",
                    "invalid_request_error",
                    Value::Null,
                );
            }
            Reply::json(
                200,
                json!({"object": "organization.project.service_account", "id": "svc_acct_new",
                       "name": name, "role": "member", "created_at": 1711471533,
                       "api_key": {"object": "organization.project.service_account.api_key",
                                   "value": NEW_KEY, "name": "Secret Key",
                                   "created_at": 1711471533, "id": "key_new"}}),
            )
        }
        ("DELETE", p) if p.starts_with(&format!("{accounts}/")) => {
            let id = &p[accounts.len() + 1..];
            match id {
                "svc_acct_old" => Reply::json(
                    200,
                    json!({"object": "organization.project.service_account.deleted",
                           "id": id, "deleted": true}),
                ),
                "svc_acct_flaky" => openai_error(
                    503,
                    "The engine is currently overloaded, please try again later.",
                    "server_error",
                    Value::Null,
                ),
                _ => openai_error(
                    404,
                    &format!("Service account with id {id} not found"),
                    "invalid_request_error",
                    Value::Null,
                ),
            }
        }
        _ => not_found(req),
    }
}

#[test]
fn openai_validates_keys_with_organization_project_and_limits() -> anyhow::Result<()> {
    let (api, p) = check_key_answers(
        "openai",
        openai_api,
        &[
            "key accepted by OpenAI",
            "organization org-latchkeytest",
            "models listed: 3",
            "requests: 9999 of 10000 remaining",
        ],
        &[
            "OpenAI refused the key",
            "401",
            "invalid_api_key",
            "Incorrect API key provided",
            "[redacted]",
        ],
    )?;
    for req in api.requests() {
        ensure!(req.method == "GET" && req.path == "/v1/models", "{req:?}");
        ensure!(bearer(&req).is_some(), "no bearer token: {req:?}");
        ensure!(
            req.header("openai-organization").is_none(),
            "org header without config"
        );
    }
    // The masked key OpenAI echoes is redacted too.
    let bad = p.validate_key(BAD)?;
    ensure!(!bad.json.to_string().contains(&masked(BAD)), "{}", bad.json);

    // Optional organisation and project headers, and the project OpenAI reports back.
    let scoped = p.call(
        "validate",
        json!({"organization": "org-latchkeytest", "project": "proj_scoped"}),
        &json!({"kind": "api-key", "fields": {"key": GOOD}, "expires_at": null}),
    )?;
    contains_all(
        &valid(&scoped)?,
        &["organization org-latchkeytest, project proj_scoped"],
    )?;
    let last = api.requests().pop().context("no request")?;
    ensure!(
        last.header("openai-organization") == Some("org-latchkeytest"),
        "{last:?}"
    );
    ensure!(
        last.header("openai-project") == Some("proj_scoped"),
        "{last:?}"
    );
    ensure!(
        bearer(&last) == Some(GOOD),
        "the `key` alias was not sent: {last:?}"
    );

    // A service that echoes the whole key in its error still never gets it printed.
    let echoed = "sk-echoed-0123456789abcdefgh";
    let detail = refused(&p.validate_key(echoed)?, echoed)?;
    ensure!(detail.contains("[redacted]"), "{detail}");
    Ok(())
}

#[test]
fn openai_rotates_project_service_accounts_with_the_admin_key() -> anyhow::Result<()> {
    let api = Fixture::start(openai_api)?;
    let p = install("openai", &api)?;
    let cfg = json!({"project-id": PROJECT});
    let current = json!({"kind": "openai-service-account", "expires_at": null, "fields": {
        "admin-key": ADMIN, "api-key": "sk-svcacct-old-0123456789", "service-account-id": "svc_acct_old"}});

    // create-pending: a new service account, its key, the admin key carried over.
    let created = p.call("create-pending", cfg.clone(), &current)?;
    let new = ok(&created)?.clone();
    ensure!(new["kind"] == "openai-service-account", "{new}");
    ensure!(new["fields"]["api-key"] == NEW_KEY, "{new}");
    ensure!(
        new["fields"]["service-account-id"] == "svc_acct_new",
        "{new}"
    );
    ensure!(new["fields"]["api-key-id"] == "key_new", "{new}");
    ensure!(new["fields"]["admin-key"] == ADMIN, "{new}");
    let post = api.requests().pop().context("no request")?;
    ensure!(post.method == "POST", "{post:?}");
    ensure!(
        post.path == format!("/v1/organization/projects/{PROJECT}/service_accounts"),
        "{post:?}"
    );
    ensure!(
        bearer(&post) == Some(ADMIN),
        "create must use the admin key: {post:?}"
    );
    ensure!(
        post.body_text().starts_with(r#"{"name":"latchkey-"#),
        "{}",
        post.body_text()
    );

    // The pending credential validates with its own key.
    let pending =
        json!({"kind": "openai-service-account", "fields": new["fields"], "expires_at": null});
    contains_all(
        &valid(&p.call("validate", cfg.clone(), &pending)?)?,
        &["key accepted by OpenAI"],
    )?;
    ensure!(bearer(&api.requests().pop().context("no request")?) == Some(NEW_KEY));

    // retire deletes the previous account; a second retire finds it gone: still ok.
    ensure!(ok(&p.call("retire", cfg.clone(), &current)?)?.is_null());
    ensure!(ok(&p.call("retire", cfg.clone(), &current)?)?.is_null());
    let deletes: Vec<Seen> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    ensure!(deletes.len() == 2, "{deletes:?}");
    for d in &deletes {
        ensure!(
            d.path == format!("/v1/organization/projects/{PROJECT}/service_accounts/svc_acct_old"),
            "{d:?}"
        );
        ensure!(
            bearer(d) == Some(ADMIN),
            "retire must use the admin key: {d:?}"
        );
    }

    // A service error while deleting is transient.
    let flaky = json!({"kind": "openai-service-account", "expires_at": null, "fields": {
        "admin-key": ADMIN, "api-key": "sk-x", "service-account-id": "svc_acct_flaky"}});
    error(
        &p.call("retire", cfg.clone(), &flaky)?,
        "unavailable",
        ADMIN,
    )?;

    // A credential holding only the admin key validates against the project.
    let admin_only = json!({"kind": "openai-service-account", "fields": {"admin-key": ADMIN}, "expires_at": null});
    contains_all(
        &valid(&p.call("validate", cfg.clone(), &admin_only)?)?,
        &[
            "admin key accepted by OpenAI",
            "project proj_latchkey",
            "\"Latchkey tests\"",
            "(active)",
        ],
    )?;

    // A refused admin key fails the rotation step without printing either key.
    let wrong_admin = "sk-admin-wrong-0123456789abcd";
    let refused_admin = json!({"kind": "openai-service-account", "expires_at": null, "fields": {
        "admin-key": wrong_admin, "api-key": "sk-svcacct-old-0123456789"}});
    let detail = error(
        &p.call("create-pending", cfg.clone(), &refused_admin)?,
        "rejected",
        wrong_admin,
    )?;
    contains_all(&detail, &["401", "invalid_api_key"])?;

    // Rotation needs the project and the service-account kind.
    let no_project = p.call("create-pending", json!({}), &current)?;
    let detail = error(&no_project, "invalid-config", ADMIN)?;
    ensure!(detail.contains("project-id"), "{detail}");
    let plain = p.call("create-pending", cfg, &api_key(GOOD))?;
    error(&plain, "unsupported", GOOD)?;
    Ok(())
}

#[test]
fn the_shipped_manifest_alone_does_not_reach_another_base_url() -> anyhow::Result<()> {
    let api = Fixture::start(openai_api)?;
    let wasm = wasm::plugin("openai")?;
    // The grant names the fixture, the shipped manifest only api.openai.com: the
    // host grants the intersection, which is empty.
    let called = call(
        &wasm,
        "validate",
        &json!({"base-url": api.url()}),
        &api_key(GOOD),
        &[
            "--grant-http",
            &api.grant(),
            "--allow-network",
            "127.0.0.0/8",
        ],
    )?;
    error(&called, "denied", GOOD)?;
    ensure!(
        api.requests().is_empty(),
        "a denied request reached the fixture"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Anthropic

fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message},
               "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
    )
    .header("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")
}

fn anthropic_api(req: &Seen) -> Reply {
    if (req.method.as_str(), req.path.as_str()) != ("GET", "/v1/models") {
        return anthropic_error(404, "not_found_error", "Not found");
    }
    if req.header("anthropic-version") != Some("2023-06-01") {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    if req.header("authorization").is_some() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "fixture: use x-api-key, not Authorization",
        );
    }
    match req.header("x-api-key").unwrap_or_default() {
        GOOD => Reply::json(
            200,
            json!({"data": [
                {"type": "model", "id": "claude-sonnet-4-20250514", "display_name": "Claude Sonnet 4",
                 "created_at": "2025-05-22T00:00:00Z"},
                {"type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5",
                 "created_at": "2024-10-22T00:00:00Z"}],
                "has_more": false, "first_id": "claude-sonnet-4-20250514",
                "last_id": "claude-3-5-haiku-20241022"}),
        )
        .header("anthropic-organization-id", "5d2c6a4e-1f0b-4c33-9d4e-8b7a6f5e4d3c")
        .header("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy"),
        LIMITED => anthropic_error(429, "rate_limit_error", "Number of requests has exceeded your rate limit"),
        BROKEN => anthropic_error(529, "overloaded_error", "Overloaded"),
        _ => anthropic_error(401, "authentication_error", "invalid x-api-key"),
    }
}

#[test]
fn anthropic_validates_keys_with_x_api_key_and_version() -> anyhow::Result<()> {
    let (api, _) = check_key_answers(
        "anthropic",
        anthropic_api,
        &[
            "key accepted by Anthropic",
            "organization 5d2c6a4e-1f0b-4c33-9d4e-8b7a6f5e4d3c",
            "models listed: 2",
        ],
        &["Anthropic refused the key: 401: authentication_error: invalid x-api-key"],
    )?;
    // 500 as well as Anthropic's 529 overloaded is transient.
    let api500 = Fixture::start(|_| anthropic_error(500, "api_error", "Internal server error"))?;
    let p500 = install("anthropic", &api500)?;
    error(&p500.validate_key(GOOD)?, "unavailable", GOOD)?;
    for req in api.requests() {
        ensure!(
            req.header("anthropic-version") == Some("2023-06-01"),
            "{req:?}"
        );
        ensure!(req.header("x-api-key").is_some(), "{req:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Gemini

fn google_error(status: u16, state: &str, message: &str, reason: Option<&str>) -> Reply {
    let details: Vec<Value> = reason
        .map(|r| {
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": r,
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"}}),
            ]
        })
        .unwrap_or_default();
    let mut error = json!({"code": status, "message": message, "status": state});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    Reply::json(status, json!({ "error": error }))
}

fn gemini_api(req: &Seen) -> Reply {
    if (req.method.as_str(), req.path.as_str()) != ("GET", "/v1beta/models") {
        return google_error(404, "NOT_FOUND", "fixture: no such method", None);
    }
    // The key belongs in the header; a ?key= query would end up in access logs.
    if !req.query.is_empty() || req.header("authorization").is_some() {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "fixture: key outside x-goog-api-key",
            None,
        );
    }
    match req.header("x-goog-api-key") {
        Some(GOOD) => Reply::json(
            200,
            json!({"models": [
                {"name": "models/gemini-2.0-flash", "version": "2.0", "displayName": "Gemini 2.0 Flash",
                 "description": "Gemini 2.0 Flash", "inputTokenLimit": 1048576, "outputTokenLimit": 8192,
                 "supportedGenerationMethods": ["generateContent", "countTokens"]},
                {"name": "models/text-embedding-004", "version": "004", "displayName": "Text Embedding 004",
                 "inputTokenLimit": 2048, "outputTokenLimit": 1,
                 "supportedGenerationMethods": ["embedContent"]}],
                "nextPageToken": "Chhtb2RlbHMvZ2VtaW5pLTIuMC1mbGFzaA=="}),
        ),
        Some(LIMITED) => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            None,
        ),
        Some(BROKEN) => google_error(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            None,
        ),
        Some("AIzaSy-blocked-0123456789abcdef") => google_error(
            403,
            "PERMISSION_DENIED",
            "Requests to this API generativelanguage.googleapis.com method google.ai.generativelanguage.v1beta.ModelService.ListModels are blocked.",
            Some("API_KEY_SERVICE_BLOCKED"),
        ),
        Some(_) => google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
        ),
        None => google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            None,
        ),
    }
}

#[test]
fn gemini_validates_keys_in_the_header_and_reads_400_api_key_invalid_as_refused(
) -> anyhow::Result<()> {
    let (api, p) = check_key_answers(
        "gemini",
        gemini_api,
        &["key accepted by Gemini", "models listed: 2+"],
        &[
            "Gemini refused the key: 400: INVALID_ARGUMENT: API key not valid. Please pass a valid API key.",
            "(API_KEY_INVALID)",
        ],
    )?;
    let blocked = "AIzaSy-blocked-0123456789abcdef";
    contains_all(
        &refused(&p.validate_key(blocked)?, blocked)?,
        &["403", "PERMISSION_DENIED", "(API_KEY_SERVICE_BLOCKED)"],
    )?;
    for req in api.requests() {
        ensure!(req.query.is_empty(), "key sent in the query: {req:?}");
        ensure!(req.header("x-goog-api-key").is_some(), "{req:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// OpenRouter

fn openrouter_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status, "message": message}}),
    )
}

fn openrouter_api(req: &Seen) -> Reply {
    if (req.method.as_str(), req.path.as_str()) != ("GET", "/api/v1/key") {
        return openrouter_error(404, "Not Found");
    }
    match bearer(req) {
        Some(GOOD) => Reply::json(
            200,
            json!({"data": {"label": "sk-or-v1-au7...890", "limit": 100, "usage": 25.5,
                "usage_daily": 25.5, "usage_weekly": 25.5, "usage_monthly": 25.5,
                "byok_usage": 17.38, "limit_remaining": 74.5, "limit_reset": "monthly",
                "include_byok_in_limit": false, "is_free_tier": false,
                "is_provisioning_key": false, "is_management_key": false,
                "creator_user_id": "user_2dHFtVWx2n56w6HkM0000000000",
                "expires_at": "2027-12-31T23:59:59Z",
                "rate_limit": {"requests": 1000, "interval": "1h",
                               "note": "This field is deprecated and safe to ignore."}}}),
        ),
        Some("sk-or-v1-free-0123456789abcdef") => Reply::json(
            200,
            json!({"data": {"label": "ci-deploy", "limit": null, "usage": 0, "limit_remaining": null,
                "is_free_tier": true, "is_provisioning_key": false,
                "rate_limit": {"requests": 20, "interval": "10s"}}}),
        ),
        Some(LIMITED) => openrouter_error(429, "Rate limit exceeded: free-models-per-min."),
        Some(BROKEN) => openrouter_error(502, "Provider returned error"),
        Some(_) => openrouter_error(401, "User not found."),
        None => openrouter_error(401, "No auth credentials found"),
    }
}

#[test]
fn openrouter_reports_label_limit_usage_and_expiry() -> anyhow::Result<()> {
    let (api, p) = check_key_answers(
        "openrouter",
        openrouter_api,
        &[
            "key accepted by OpenRouter",
            "(label \"[redacted]\")",
            "usage 25.5",
            "limit 100, 74.5 remaining, resets monthly",
            "expires 2027-12-31T23:59:59Z",
        ],
        &["OpenRouter refused the key: 401: User not found."],
    )?;
    let good = p.validate_key(GOOD)?;
    ensure!(
        ok(&good)?["expires_at"] == latchkey::api::rfc3339(1_830_297_599),
        "{:?}",
        good.json
    );
    ensure!(
        !good.json.to_string().contains("au7...890"),
        "masked key shown: {}",
        good.json
    );

    let free = "sk-or-v1-free-0123456789abcdef";
    contains_all(
        &valid(&p.validate_key(free)?)?,
        &[
            "(label \"ci-deploy\")",
            "usage 0",
            "no credit limit",
            "free tier",
        ],
    )?;
    for req in api.requests() {
        ensure!(bearer(&req).is_some(), "{req:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Groq

fn groq_error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Reply {
    let mut error = json!({"message": message, "type": kind});
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    Reply::json(status, json!({ "error": error }))
}

fn groq_api(req: &Seen) -> Reply {
    if (req.method.as_str(), req.path.as_str()) != ("GET", "/openai/v1/models") {
        return groq_error(
            404,
            "Unknown request URL",
            "invalid_request_error",
            Some("unknown_url"),
        );
    }
    match bearer(req) {
        Some(GOOD) => Reply::json(
            200,
            json!({"object": "list", "data": [
                {"id": "llama-3.3-70b-versatile", "object": "model", "created": 1733447754,
                 "owned_by": "Meta", "active": true, "context_window": 131072,
                 "public_apps": null, "max_completion_tokens": 32768},
                {"id": "whisper-large-v3", "object": "model", "created": 1693721698,
                 "owned_by": "OpenAI", "active": true, "context_window": 448,
                 "public_apps": null, "max_completion_tokens": 448}]}),
        )
        .header("x-ratelimit-limit-requests", "14400")
        .header("x-ratelimit-remaining-requests", "14399")
        .header("x-ratelimit-limit-tokens", "6000")
        .header("x-ratelimit-remaining-tokens", "6000"),
        Some(LIMITED) => groq_error(
            429,
            "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01`",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        Some(BROKEN) => groq_error(503, "Service Unavailable", "internal_server_error", None),
        _ => groq_error(
            401,
            "Invalid API Key",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
    }
}

#[test]
fn groq_validates_keys_and_reports_rate_limits() -> anyhow::Result<()> {
    let (api, _) = check_key_answers(
        "groq",
        groq_api,
        &[
            "key accepted by Groq",
            "models listed: 2",
            "requests: 14399 of 14400 remaining",
            "tokens: 6000 of 6000 remaining",
        ],
        &["Groq refused the key: 401: invalid_api_key: Invalid API Key"],
    )?;
    for req in api.requests() {
        ensure!(bearer(&req).is_some(), "{req:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Every provider

#[test]
fn info_names_kinds_operations_and_hosts() -> anyhow::Result<()> {
    let expected = [
        (
            "openai",
            vec!["api-key", "openai-service-account"],
            vec!["validate", "create-pending", "retire"],
            "api.openai.com",
        ),
        (
            "anthropic",
            vec!["api-key"],
            vec!["validate"],
            "api.anthropic.com",
        ),
        (
            "gemini",
            vec!["api-key"],
            vec!["validate"],
            "generativelanguage.googleapis.com",
        ),
        (
            "openrouter",
            vec!["api-key"],
            vec!["validate"],
            "openrouter.ai",
        ),
        ("groq", vec!["api-key"], vec!["validate"], "api.groq.com"),
    ];
    for (name, kinds, operations, host) in expected {
        let info = super::common::info(name)?;
        ensure!(info["name"] == name, "{info}");
        ensure!(info["kinds"] == json!(kinds), "{name}: {info}");
        ensure!(info["operations"] == json!(operations), "{name}: {info}");
        ensure!(info["http_authorities"] == json!([host]), "{name}: {info}");
        // The host never calls an operation the manifest does not declare.
        if name != "openai" {
            let retire = call(
                &wasm::plugin(name)?,
                "retire",
                &json!({}),
                &api_key("unused"),
                &[],
            )?;
            if retire.success || !retire.stderr.contains("does not declare operation retire") {
                bail!(
                    "{name}: retire answered {:?} {}",
                    retire.json,
                    retire.stderr
                );
            }
        }
    }
    Ok(())
}

#[test]
fn a_missing_key_or_bad_base_url_is_a_config_error() -> anyhow::Result<()> {
    let api = Fixture::start(groq_api)?;
    let p = install("groq", &api)?;
    let no_key = p.call(
        "validate",
        json!({}),
        &json!({"kind": "api-key", "fields": {"token": GOOD}, "expires_at": null}),
    )?;
    let detail = error(&no_key, "invalid-config", GOOD)?;
    ensure!(detail.contains("api-key"), "{detail}");
    let wrong_kind = p.call(
        "validate",
        json!({}),
        &json!({"kind": "oauth2", "fields": {"api-key": GOOD}, "expires_at": null}),
    )?;
    // Another kind never reaches the plugin: the host refuses it (exit 10, unsupported).
    ensure!(
        wrong_kind.code == Some(10)
            && wrong_kind
                .stderr
                .contains("does not declare credential kind oauth2"),
        "{wrong_kind:?}"
    );
    assert_no_secret(&wrong_kind, &[GOOD])?;
    let bad_url = call(
        &p.wasm,
        "validate",
        &json!({"base-url": "api.groq.com"}),
        &api_key(GOOD),
        &[],
    )?;
    error(&bad_url, "invalid-config", GOOD)?;
    ensure!(api.requests().is_empty(), "{:?}", api.requests());
    Ok(())
}
