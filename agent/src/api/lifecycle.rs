//! Admin routes of the lifecycle engine: rotate now and status.
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | POST | `/v1/rotate/{path}` | 200 `{"outcome":"rotated","version":N}`; 409 busy; 502 rolled back; 503 the agent is stopping |
//! | GET | `/v1/status[?prefix=P]` | every looked-after credential's state |
//! | GET | `/v1/status/{path}` | one credential's state |

use http::{Response, StatusCode};

use super::error::engine_error;
use super::query::prefix_param;
use super::reply::json_response;
use super::trail::{admin_only, authorize, failed, record};
use super::{ApiError, Body, Conn, State};
use crate::audit::Outcome;
use crate::lifecycle::{Engine, RotationOutcome};
use crate::path::SecretPath;
use crate::policy::{Decision, Operation};

fn engine(state: &State) -> Result<&Engine, ApiError> {
    state
        .engine
        .get()
        .ok_or_else(|| ApiError::no_provider("no [[lifecycle]] rule is configured"))
}

/// `POST /v1/rotate/{path}`: runs a rotation now and answers when it is done.
pub(super) async fn rotate(
    state: &State,
    conn: &Conn,
    raw: &str,
) -> Result<Response<Body>, ApiError> {
    let path = SecretPath::parse(raw)?;
    authorize(state, conn, Operation::Admin, &path).await?;
    let engine = engine(state)?;
    let mut audited = record(conn, "rotate-now", Some(path.as_str()));
    let outcome = engine.rotate_now(&path).await.map_err(engine_error);
    let answer = match outcome {
        Ok(o) => {
            let status = match &o {
                RotationOutcome::Rotated { .. } => StatusCode::OK,
                RotationOutcome::Busy { .. } | RotationOutcome::NotDue => StatusCode::CONFLICT,
                RotationOutcome::RolledBack { .. } => StatusCode::BAD_GATEWAY,
            };
            audited.status = status.as_u16();
            match &o {
                RotationOutcome::Rotated { version } => audited.version = Some(*version),
                // The new credential did not take: the old one is back, and that is a
                // failure of the request, not an ok.
                RotationOutcome::RolledBack { .. } => audited.outcome = Outcome::Failed,
                RotationOutcome::Busy { .. } | RotationOutcome::NotDue => {}
            }
            let mut body = serde_json::to_value(&o).unwrap_or_default();
            body["path"] = path.as_str().into();
            Ok(json_response(status, &body))
        }
        Err(e) => {
            failed(&mut audited, &e);
            Err(e)
        }
    };
    state.audit.record(audited).await;
    answer
}

/// `GET /v1/status[?prefix=P]` and `GET /v1/status/{path}`.
pub(super) async fn status(
    state: &State,
    conn: &Conn,
    raw: Option<&str>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    match raw {
        Some(raw) => {
            let path = SecretPath::parse(raw)?;
            authorize(state, conn, Operation::Admin, &path).await?;
            let status = engine(state)?
                .status(&path)
                .ok_or_else(|| ApiError::not_found(format_args!("lifecycle status of {path}")))?;
            Ok(json_response(
                StatusCode::OK,
                &super::reply::status(&path, &status),
            ))
        }
        None => {
            let prefix = prefix_param(query)?;
            admin_only(state, conn, "admin", prefix.as_str(), prefix.as_str()).await?;
            let policy = conn.policy();
            let list: Vec<serde_json::Value> = engine(state)?
                .statuses(&prefix)
                .into_iter()
                // Only what this admin may administer.
                .filter(|(path, _)| {
                    policy.check(&conn.peer, Operation::Admin, path) == Decision::Allow
                })
                .map(|(path, status)| super::reply::status(&path, &status))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "credentials": list }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use latchkey_plugin_host::{CallError, Operation as Call, ProviderError};

    use super::*;
    use crate::lifecycle::{Error, Refusal};
    use crate::providers::Failure;

    fn answered(source: ProviderError) -> Error {
        Error::Provider(Failure::Answered {
            plugin: "svc".into(),
            operation: Call::Refresh,
            source,
        })
    }

    #[test]
    fn engine_errors_map_to_statuses_and_codes_by_variant() {
        let cases = [
            (Error::ShuttingDown, 503, "shutting_down"),
            (
                Error::Refused {
                    path: SecretPath::parse("svc/key").expect("path"),
                    reason: Refusal::Forbidden {
                        permission: "withdraw".into(),
                    },
                },
                422,
                "credential_rejected",
            ),
            (
                answered(ProviderError::Rejected("invalid_grant".into())),
                422,
                "credential_rejected",
            ),
            (
                answered(ProviderError::Unavailable("503".into())),
                502,
                "provider_unavailable",
            ),
            (
                Error::Provider(Failure::Host {
                    plugin: "svc".into(),
                    source: CallError::UnknownOperation,
                }),
                502,
                "plugin_failed",
            ),
            (
                Error::NoPolicy(SecretPath::parse("svc/key").expect("path")),
                422,
                "no_provider",
            ),
        ];
        for (error, status, code) in cases {
            let what = format!("{error:?}");
            let answer = engine_error(error);
            assert_eq!(
                (answer.status.as_u16(), answer.code.as_str()),
                (status, code),
                "{what}"
            );
        }
    }

    #[test]
    fn a_rejected_refresh_says_what_the_service_said() {
        let answer = engine_error(answered(ProviderError::Rejected("invalid_grant".into())));
        assert_eq!(
            answer.message,
            "the service rejected the refresh: invalid_grant"
        );
    }
}
