//! The secret routes: read (hot cache, then store, then one upstream fetch, then the
//! environment fallback), write and delete (through the sync's one commit), and
//! list (only what the caller may list).
//!
//! | method | path | operation |
//! | --- | --- | --- |
//! | GET | `/v1/secrets/{path}[?version=N \| ?label=L]` | read |
//! | PUT | `/v1/secrets/{path}[?cas=V][&validate=true]` body `{"fields":{..},"kind":..,"expires_at":..,"cas":V}` (V: a version number, or an upstream version id such as AWS's `VersionId`) | write |
//! | DELETE | `/v1/secrets/{path}` | write |
//! | GET | `/v1/secrets[?prefix=P]` | list |

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::error::{engine_error, json_error, sync_error, Code};
use super::query::{prefix_param, query_pairs};
use super::reply::{json_response, rfc3339, secret_response};
use super::trail::{deny, record};
use super::{request_body, ApiError, Body, Conn, State};
use crate::cache::Cached;
use crate::path::SecretPath;
use crate::policy::{Decision, Operation};
use crate::secret::Fields;
use crate::store::{self, Secret, Selector};
use crate::sync::{Change, Committed, Freshness};

/// The end of every secret read's body. The cached part stops before it, so a
/// response can say whether it is stale without copying the cached bytes.
const FRESH_TAIL: &[u8] = b",\"stale\":false}";
/// The tail while the store reports damage: what is served may not be all there is.
const DAMAGED_TAIL: &[u8] = b",\"stale\":false,\"store_damaged\":true}";

/// An answer, and the version it read or wrote (for the audit record).
pub(super) type Answer = (Response<Body>, Option<u64>);

/// Whether a read of `path` must refresh it first (expired, under a refresh policy).
fn refreshes_on_read(state: &State, path: &SecretPath, expires_at: Option<i64>) -> bool {
    state
        .engine
        .get()
        .is_some_and(|e| e.refreshes_on_read(path, expires_at))
}

/// What a read asks for: the current version, a version number or a label.
fn selector(query: Option<&str>) -> Result<Selector, ApiError> {
    let mut selector = Selector::Current;
    for (key, value) in query_pairs(query) {
        let value = value?;
        selector = match key {
            "version" => Selector::Version(value.parse().map_err(|_| {
                ApiError::bad_request(format!("version {value:?} is not a whole number"))
            })?),
            "label" => {
                // Store labels are lowercase; an upstream's may not be (AWS stages).
                if value.is_empty()
                    || value.len() > 256
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(ApiError::bad_request(format!(
                        "label {value:?} is not valid"
                    )));
                }
                Selector::Label(value)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected version or label)"
                )))
            }
        };
    }
    Ok(selector)
}

/// `GET /v1/secrets/{path}`.
pub(super) async fn read(
    state: &State,
    conn: &Conn,
    path: &SecretPath,
    query: Option<&str>,
) -> Result<Answer, ApiError> {
    let selector = selector(query)?;
    let tail = freshness_tail(state)?;
    let is_current = matches!(selector, Selector::Current);
    if is_current {
        if let Some(hit) = state.cache.get(path) {
            if !refreshes_on_read(state, path, hit.expires_at) {
                state.metrics.cache(true);
                return Ok((secret_response(hit.body.clone(), tail), Some(hit.version)));
            }
        }
    }
    state.metrics.cache(false);
    let seen = state.cache.generation();
    let mut secret = lookup(state, path, selector.clone()).await?;
    if secret.is_none() {
        // Deleted upstream with older versions kept: 410, never a fetch or a stand-in.
        gone_if_deleted(state, path, &selector).await?;
    }
    // A miss: ask the upstream once (shared with concurrent misses).
    if secret.is_none() && is_current && state.sync.fetch(path).await.map_err(sync_error)? {
        secret = lookup(state, path, selector.clone()).await?;
    }
    let Some(secret) = secret else {
        if let Selector::Label(label) = &selector {
            if label == "pending" {
                if let Some(answer) = pending(state, conn, path, &tail).await? {
                    return Ok(answer);
                }
            }
            // The store has the versions it pulled; the upstream may label others
            // (AWSPENDING from a rotation Lambda, a custom stage).
            if let Some(remote) = state
                .sync
                .read_label(path, label)
                .await
                .map_err(sync_error)?
            {
                let view = Secret {
                    path: path.clone(),
                    version: remote.version,
                    labels: vec![label.clone()],
                    kind: remote
                        .kind
                        .unwrap_or_else(|| crate::store::DEFAULT_KIND.to_owned()),
                    fields: remote.fields,
                    created_at: remote.updated_at,
                    updated_at: remote.updated_at,
                    expires_at: remote.expires_at,
                };
                let body = render(&view)?;
                return Ok((secret_response(body, tail), Some(view.version)));
            }
            return Err(ApiError::not_found(format_args!(
                "secret {path} with label {label:?} (no version carries it here or upstream; labels: current, previous, pending, a rotation's, and an upstream's own such as AWS staging labels)"
            )));
        }
        if let Some(fields) = is_current.then(|| state.fallback.get(path)).flatten() {
            let stand_in = Secret {
                path: path.clone(),
                version: 0,
                labels: vec!["env-fallback".to_owned()],
                kind: "env-fallback".to_owned(),
                fields: fields.clone(),
                created_at: state.fallback.loaded_at,
                updated_at: state.fallback.loaded_at,
                expires_at: None,
            };
            let body = render(&stand_in)?;
            return Ok((secret_response(body, tail), Some(0)));
        }
        return Err(ApiError::not_found(format_args!("secret {path}")));
    };
    let secret = match state.engine.get() {
        // An expired OAuth token: refresh it now (concurrent reads share one refresh).
        Some(engine) if is_current && refreshes_on_read(state, path, secret.expires_at) => {
            engine.refresh(path, true).await.map_err(engine_error)?
        }
        _ => secret,
    };
    let body = render(&secret)?;
    if is_current {
        state.cache.insert_if_unchanged(
            path.clone(),
            Arc::new(Cached {
                version: secret.version,
                expires_at: secret.expires_at,
                body: body.clone(),
            }),
            seen,
        );
    }
    Ok((secret_response(body, tail), Some(secret.version)))
}

/// `?label=pending` during a rotation: the credential being tested or promoted, so
/// a consumer can warm up with it before the switch. Only for identities that may
/// administer the path (a rotator role): apps get a credential once it is current.
/// `None` when no rotation has one in flight.
async fn pending(
    state: &State,
    conn: &Conn,
    path: &SecretPath,
    tail: &Bytes,
) -> Result<Option<Answer>, ApiError> {
    let Some(engine) = state.engine.get() else {
        return Ok(None);
    };
    let Some((_, cred)) = engine.pending(path).await.map_err(engine_error)? else {
        return Ok(None);
    };
    if conn
        .policy()
        .check(&conn.peer, crate::policy::Operation::Admin, path)
        != Decision::Allow
    {
        let err = ApiError::forbidden("read the pending credential of", path.as_str());
        super::trail::deny(
            state,
            conn,
            crate::policy::Operation::Admin,
            path.as_str(),
            &err,
        )
        .await;
        return Err(err);
    }
    let now = crate::clock::unix_now();
    let view = Secret {
        path: path.clone(),
        // Not a version yet: it gets one when promoted.
        version: 0,
        labels: vec!["pending".to_owned()],
        kind: cred.kind,
        fields: cred.fields,
        created_at: now,
        updated_at: now,
        expires_at: cred.expires_at,
    };
    let body = render(&view)?;
    Ok(Some((secret_response(body, tail.clone()), Some(0))))
}

/// 410 `deleted` when the upstream deleted the version `selector` names (the current
/// one, or that number) while older versions stay readable by number.
async fn gone_if_deleted(
    state: &State,
    path: &SecretPath,
    selector: &Selector,
) -> Result<(), ApiError> {
    let probe = path.clone();
    let Some(deletion) = state
        .store
        .blocking(move |store| store.deletion(&probe))
        .await?
    else {
        return Ok(());
    };
    let names_it = match selector {
        Selector::Current => true,
        Selector::Version(v) => *v == deletion.version,
        Selector::Label(_) => false,
    };
    if !names_it {
        return Ok(());
    }
    let how = if deletion.destroyed {
        "destroyed"
    } else {
        "deleted"
    };
    Err(ApiError::new(
        StatusCode::GONE,
        Code::Deleted,
        format!(
            "version {} of secret {path} was {how} upstream; older versions are readable with ?version=N",
            deletion.version
        ),
    ))
}

/// One secret from the store, on the blocking pool.
pub(super) async fn lookup(
    state: &State,
    path: &SecretPath,
    selector: Selector,
) -> Result<Option<Secret>, ApiError> {
    let path = path.clone();
    Ok(state
        .store
        .blocking(move |store| store.get(&path, selector))
        .await?)
}

/// The end of a read's body: whether the value may be out of date, and how long ago
/// it was last confirmed with the upstream. Past the grace period, reads fail.
fn freshness_tail(state: &State) -> Result<Bytes, ApiError> {
    let damaged = state.store.is_damaged();
    let Some(freshness) = state.sync.freshness() else {
        return Ok(Bytes::from_static(if damaged {
            DAMAGED_TAIL
        } else {
            FRESH_TAIL
        }));
    };
    let mark = if damaged {
        ",\"store_damaged\":true"
    } else {
        ""
    };
    let (stale, age) = match freshness {
        Freshness::Fresh { age_seconds } => (false, age_seconds),
        Freshness::Stale { age_seconds } => (true, age_seconds),
        Freshness::Expired { age_seconds } => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::UpstreamUnavailable,
                format!(
                    "upstream {} has been unreachable past the grace period; last good sync {age_seconds}s ago",
                    state.sync.upstream_name()
                ),
            ))
        }
    };
    Ok(Bytes::from(match age {
        Some(age) => format!(",\"stale\":{stale},\"age_seconds\":{age}{mark}}}"),
        None => format!(",\"stale\":{stale},\"age_seconds\":null{mark}}}"),
    }))
}

/// The body of a secret read, as JSON.
#[derive(Serialize)]
struct SecretView<'a> {
    path: &'a str,
    version: u64,
    labels: &'a [String],
    kind: &'a str,
    fields: crate::secret::ExposedFields<'a>,
    created_at: String,
    updated_at: String,
    expires_at: Option<String>,
}

/// The body of a read without its closing brace (the per-request tail closes it), in
/// a zeroizing buffer of exactly its length.
fn render(secret: &Secret) -> Result<Bytes, ApiError> {
    let view = SecretView {
        path: secret.path.as_str(),
        version: secret.version,
        labels: &secret.labels,
        kind: &secret.kind,
        fields: secret.fields.exposed(),
        created_at: rfc3339(secret.created_at),
        updated_at: rfc3339(secret.updated_at),
        expires_at: secret.expires_at.map(rfc3339),
    };
    // Exactly sized, so the buffer holding values is never reallocated (a reallocation
    // would leave a copy behind that nothing zeroizes).
    let body =
        Bytes::from_owner(super::exact::to_secret_bytes(&view).map_err(|_| ApiError::internal())?);
    if body.last() != Some(&b'}') {
        return Err(ApiError::internal());
    }
    Ok(body.slice(..body.len() - 1))
}

fn parse_time(key: &str, text: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| ApiError::bad_request(format!("{key}: {text:?} is not an RFC 3339 time")))
}

/// The body of `PUT /v1/secrets/{path}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    fields: Fields,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    cas: Option<Cas>,
}

/// The version a check-and-set write is based on: the agent's version number, or
/// the upstream's own id of it (AWS's `VersionId`, as boto3 reports it).
#[derive(Deserialize)]
#[serde(untagged)]
enum Cas {
    Number(u64),
    VersionId(String),
}

impl Cas {
    fn parse(text: &str) -> Result<Cas, ApiError> {
        match text.parse::<u64>() {
            Ok(n) => Ok(Cas::Number(n)),
            Err(_) if !text.is_empty() && !text.starts_with(['-', '+']) => {
                Ok(Cas::VersionId(text.to_owned()))
            }
            Err(_) => Err(ApiError::bad_request(format!(
                "cas {text:?} is neither a version number nor an upstream version id"
            ))),
        }
    }

    /// The version number, asking the upstream for the number of a version id.
    async fn number(self, state: &State, path: &SecretPath) -> Result<u64, ApiError> {
        let id = match self {
            Cas::Number(n) => return Ok(n),
            Cas::VersionId(id) => id,
        };
        match state.sync.version_of(path, &id).await.map_err(sync_error)? {
            Some(n) => Ok(n),
            None => Err(ApiError::bad_request(format!(
                "cas {id:?} is not a whole number, and upstream {} has no version ids",
                state.sync.upstream_name()
            ))),
        }
    }
}

/// `?cas=N` and `?validate=true` of a write.
fn write_params(query: Option<&str>) -> Result<(Option<Cas>, bool), ApiError> {
    let mut cas = None;
    let mut validate = false;
    for (key, value) in query_pairs(query) {
        let value = value?;
        match key {
            "cas" => cas = Some(Cas::parse(&value)?),
            "validate" => {
                validate = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "validate {value:?} is not true or false"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected cas or validate)"
                )))
            }
        }
    }
    Ok((cas, validate))
}

/// `PUT /v1/secrets/{path}`: validated by its provider first when asked (or when a
/// lifecycle rule says so), then committed upstream-first by the sync.
pub(super) async fn write<B>(
    state: &State,
    path: &SecretPath,
    req: Request<B>,
) -> Result<Answer, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (cas, validate) = write_params(req.uri().query())?;
    let body = request_body::read(state, req).await?;
    let put: PutBody = serde_json::from_slice(body.expose()).map_err(|e| json_error(&e))?;
    drop(body);
    if put.fields.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::Invalid,
            "fields must hold at least one field",
        ));
    }
    let expires_at = match put.expires_at.as_deref() {
        Some(text) => Some(parse_time("expires_at", text)?),
        None => None,
    };
    let cas = match put.cas.or(cas) {
        Some(cas) => Some(cas.number(state, path).await?),
        None => None,
    };
    let write = store::Write {
        fields: put.fields,
        kind: put.kind,
        expires_at,
        cas,
    };
    // Validation before storage: a credential the provider rejects is not stored.
    match state.engine.get() {
        Some(engine) => {
            let candidate = crate::providers::Credential {
                kind: write
                    .kind
                    .clone()
                    .unwrap_or_else(|| store::DEFAULT_KIND.to_owned()),
                fields: write.fields.clone(),
                expires_at: write.expires_at,
            };
            engine
                .check_before_write(path, &candidate, validate)
                .await
                .map_err(engine_error)?;
        }
        None if validate => return Err(ApiError::no_plugin_for(path)),
        None => {}
    }
    // Upstream first; the commit stores, flushes, invalidates and publishes.
    let secret = match state
        .sync
        .commit(path, Change::Write(write))
        .await
        .map_err(sync_error)?
    {
        Committed::Written(secret) => secret,
        Committed::Deleted { .. } => return Err(ApiError::internal()),
    };
    let res = json_response(
        StatusCode::OK,
        &serde_json::json!({
            "path": secret.path.as_str(),
            "version": secret.version,
            "labels": secret.labels,
            "kind": secret.kind,
            "created_at": rfc3339(secret.created_at),
            "updated_at": rfc3339(secret.updated_at),
            "expires_at": secret.expires_at.map(rfc3339),
        }),
    );
    Ok((res, Some(secret.version)))
}

/// `DELETE /v1/secrets/{path}`: through the sync's commit; 404 when nothing was there.
pub(super) async fn delete(state: &State, path: &SecretPath) -> Result<Answer, ApiError> {
    let committed = state
        .sync
        .commit(path, Change::Delete)
        .await
        .map_err(sync_error)?;
    if matches!(
        committed,
        Committed::Deleted {
            existed: Some(false)
        }
    ) {
        return Err(ApiError::not_found(format_args!("secret {path}")));
    }
    Ok((
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "path": path.as_str(), "deleted": true }),
        ),
        None,
    ))
}

#[derive(Serialize)]
struct ListEntry<'a> {
    path: &'a str,
    version: u64,
    kind: &'a str,
    updated_at: String,
    expires_at: Option<String>,
    /// The upstream deleted the current version (its number); older ones stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_version: Option<u64>,
}

/// `GET /v1/secrets[?prefix=P]`: what the caller may list under the prefix.
pub(super) async fn list(
    state: &State,
    conn: &Conn,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let prefix = prefix_param(query)?;
    // Picked once: the filter below asks it for every entry.
    let policy = conn.policy();
    if !policy.may_list_under(&conn.peer, &prefix) {
        let err = ApiError::forbidden("list", &format!("prefix {:?}", prefix.as_str()));
        deny(state, conn, Operation::List, prefix.as_str(), &err).await;
        return Err(err);
    }
    let scan = prefix.clone();
    let entries = state.store.blocking(move |store| store.list(&scan)).await?;
    let visible: Vec<ListEntry<'_>> = entries
        .iter()
        .filter(|e| policy.check(&conn.peer, Operation::List, &e.path) == Decision::Allow)
        .map(|e| ListEntry {
            path: e.path.as_str(),
            version: e.current_version,
            kind: &e.kind,
            updated_at: rfc3339(e.updated_at),
            expires_at: e.expires_at.map(rfc3339),
            deleted_version: e.deleted.map(|d| d.version),
        })
        .collect();
    state
        .audit
        .record_read(record(conn, "list", Some(prefix.as_str())))
        .await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "prefix": prefix.as_str(), "secrets": visible }),
    ))
}
