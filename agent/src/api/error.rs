//! The one place where errors become HTTP responses: store, sync and lifecycle
//! errors are mapped here, by variant, to a status and a [`Code`].
//!
//! Every error answer is `{"error": {"code": "...", "message": "..."}}` with a stable,
//! documented `code` that clients branch on. Messages are short and name paths or
//! keys, never values; details go to the log inside the request's span. A 405 carries
//! the methods the route allows as data, sent as the `Allow` header.

use std::sync::Arc;

use http::{header, Response, StatusCode};
use latchkey_plugin_host::ProviderError;

use super::Body;
use crate::lifecycle::{next, Error as EngineError};
use crate::path::PathError;
use crate::providers::Failure;
use crate::store;

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// The stable codes of error answers (see the README's error table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// The code as clients see it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

codes! {
    /// Malformed request (query, body framing).
    BadRequest => "bad_request",
    /// A secret path or prefix that does not parse.
    BadPath => "bad_path",
    /// A body that is not the expected JSON.
    BadJson => "bad_json",
    /// A client certificate the listener refused.
    BadIdentity => "bad_identity",
    /// Policy refused the operation.
    Forbidden => "forbidden",
    /// No such secret or state.
    NotFound => "not_found",
    /// The version asked for was deleted (or destroyed) upstream; older ones stay.
    Deleted => "deleted",
    /// No such endpoint.
    NoRoute => "no_route",
    /// The route exists, the method does not.
    MethodNotAllowed => "method_not_allowed",
    /// The body did not arrive in time.
    BodyTimeout => "body_timeout",
    /// A lost check-and-set.
    Conflict => "conflict",
    /// The agent has no upstream to sync with.
    NoUpstream => "no_upstream",
    /// The agent has no CA key to sign a certificate with.
    NoCa => "no_ca",
    /// The body is larger than the limit.
    BodyTooLarge => "body_too_large",
    /// The body is not JSON.
    UnsupportedMediaType => "unsupported_media_type",
    /// A well-formed request the store refuses.
    Invalid => "invalid",
    /// No lifecycle rule names a provider for the path.
    NoProvider => "no_provider",
    /// The provider or the service refused the credential.
    CredentialRejected => "credential_rejected",
    /// Too many watch streams for one identity.
    TooManyWatchers => "too_many_watchers",
    /// Something went wrong inside the agent.
    Internal => "internal",
    /// A stored record failed its integrity check.
    IntegrityError => "integrity_error",
    /// The store could not read or write.
    StorageError => "storage_error",
    /// The store's data key could not be unwrapped.
    KeyUnwrapFailed => "key_unwrap_failed",
    /// Encryption or decryption failed.
    CryptoError => "crypto_error",
    /// The upstream refused the agent.
    UpstreamDenied => "upstream_denied",
    /// The upstream answered with an error.
    UpstreamError => "upstream_error",
    /// A provider plugin could not be called.
    PluginFailed => "plugin_failed",
    /// The provider's service is unavailable.
    ProviderUnavailable => "provider_unavailable",
    /// The upstream is unreachable (past the grace period for reads).
    UpstreamUnavailable => "upstream_unavailable",
    /// The agent is stopping.
    ShuttingDown => "shutting_down",
    /// A lifecycle operation failed otherwise.
    LifecycleFailed => "lifecycle_failed",
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: Code,
    /// One-line explanation for a human.
    pub message: String,
    /// The methods the route allows, for a 405's `Allow` header.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::BadRequest, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(op: &str, what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            format!("not allowed to {op} {what}"),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("{what} not found"),
        )
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(allowed: &'static str) -> Self {
        ApiError {
            allow: Some(allowed),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::MethodNotAllowed,
                format!("allowed methods: {allowed}"),
            )
        }
    }

    /// 404 `no_route`.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NoRoute,
            format!("no such endpoint: {path}"),
        )
    }

    /// 422 `no_provider`.
    pub fn no_provider(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, Code::NoProvider, message)
    }

    /// 422 `no_provider` for a path no `[[lifecycle]]` rule gives a plugin.
    pub fn no_plugin_for(path: impl std::fmt::Display) -> Self {
        Self::no_provider(format!("no [[lifecycle]] rule names a plugin for {path}"))
    }

    /// 413 `body_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::BodyTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 500 `internal`.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "internal error; see the agent log",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Body> {
        let body =
            serde_json::json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = Response::new(Body::full(bytes));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if let Some(allowed) = self.allow {
            res.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
        }
        res
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::BadPath, e.to_string())
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        use store::Error as S;
        let (status, code) = match &e {
            S::Conflict { .. } => (StatusCode::CONFLICT, Code::Conflict),
            S::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, Code::Invalid),
            S::Integrity { .. }
            | S::MissingDataKey { .. }
            | S::Damaged { .. }
            | S::CountersUnreadable => (StatusCode::INTERNAL_SERVER_ERROR, Code::IntegrityError),
            S::NotFound { .. } => (StatusCode::NOT_FOUND, Code::NotFound),
            S::KeyUnwrap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, Code::KeyUnwrapFailed),
            S::Storage(_)
            | S::CreateDir { .. }
            | S::StateFile { .. }
            | S::FileMode { .. }
            | S::InUse { .. } => (StatusCode::INTERNAL_SERVER_ERROR, Code::StorageError),
            S::Crypto(_) => (StatusCode::INTERNAL_SERVER_ERROR, Code::CryptoError),
        };
        match &e {
            S::Integrity { .. } | S::Conflict { .. } | S::Invalid(_) | S::NotFound { .. } => {
                Self::new(status, code, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                Self::new(status, code, "storage failure; see the agent log")
            }
        }
    }
}

/// A JSON body that failed to parse. serde's messages can quote the offending value
/// (`invalid type: integer 1234`), so only the position and, for unknown or missing
/// keys, the key name are passed on.
pub fn json_error(e: &serde_json::Error) -> ApiError {
    let text = e.to_string();
    let message = if text.starts_with("unknown field") || text.starts_with("missing field") {
        text
    } else {
        let what = match e.classify() {
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Data => "a value of the wrong type",
            serde_json::error::Category::Io => "unreadable body",
        };
        format!("{what} at line {} column {}", e.line(), e.column())
    };
    ApiError::new(StatusCode::BAD_REQUEST, Code::BadJson, message)
}

/// Maps a sync failure to an answer: a lost check-and-set is a conflict, an
/// unreachable upstream a 503, anything else the upstream said a 502.
pub fn sync_error(e: crate::sync::Error) -> ApiError {
    use crate::upstream::Error as U;
    match e {
        crate::sync::Error::Store(e) | crate::sync::Error::Upstream(U::Store(e)) => e.into(),
        crate::sync::Error::Shared(shared) => match Arc::try_unwrap(shared) {
            Ok(e) => sync_error(e),
            Err(shared) => shared_sync_error(&shared),
        },
        crate::sync::Error::Upstream(e) => match &e {
            U::Conflict { .. } | U::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, Code::Conflict, e.to_string())
            }
            U::Unavailable { .. } => {
                tracing::warn!(error = %e, "upstream unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::UpstreamUnavailable,
                    e.to_string(),
                )
            }
            U::Denied { .. } | U::Login { .. } => {
                tracing::error!(error = %e, "upstream refused the agent");
                ApiError::new(StatusCode::BAD_GATEWAY, Code::UpstreamDenied, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "upstream error");
                ApiError::new(StatusCode::BAD_GATEWAY, Code::UpstreamError, e.to_string())
            }
        },
    }
}

fn shared_sync_error(e: &crate::sync::Error) -> ApiError {
    match e.upstream() {
        Some(u) if u.is_transient() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::UpstreamUnavailable,
            e.to_string(),
        ),
        Some(_) => ApiError::new(StatusCode::BAD_GATEWAY, Code::UpstreamError, e.to_string()),
        None => ApiError::internal(),
    }
}

/// Maps an engine error to an answer, by variant; provider reasons are passed on
/// (they never hold values).
pub fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::NoPolicy(p) | EngineError::Provider(Failure::NoProvider(p)) => {
            ApiError::no_plugin_for(p)
        }
        EngineError::NotFound(p) => ApiError::not_found(format_args!("secret {p}")),
        EngineError::Refused { reason, .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::CredentialRejected,
            reason.to_string(),
        ),
        EngineError::Provider(Failure::Answered {
            operation, source, ..
        }) => match source {
            ProviderError::Rejected(detail) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::CredentialRejected,
                format!("the service rejected the {operation}: {detail}"),
            ),
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                Code::ProviderUnavailable,
                format!("{operation} failed: {}", next::describe(&other)),
            ),
        },
        EngineError::Provider(e @ Failure::Host { .. }) => {
            let message = latchkey_plugin_host::error_chain(&e);
            tracing::warn!(error = %message, "plugin call failed");
            ApiError::new(StatusCode::BAD_GATEWAY, Code::PluginFailed, message)
        }
        EngineError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::ShuttingDown,
            "the agent is stopping; try again once it is back",
        ),
        other => {
            tracing::warn!(error = %other, "lifecycle operation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::LifecycleFailed,
                other.to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_values() {
        let err = serde_json::from_str::<crate::secret::Fields>(r#"["987654321"]"#)
            .expect_err("not an object");
        let api = json_error(&err);
        assert!(!api.message.contains("987654321"), "{}", api.message);
        assert_eq!(api.code, "bad_json");
    }
}
