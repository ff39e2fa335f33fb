//! The one place where errors become HTTP responses.
//!
//! Every error answer is `{"error": {"code": "...", "message": "..."}}` with a stable,
//! documented `code` that clients branch on. Messages are short and name paths or
//! keys, never values; details go to the log inside the request's span.

use http::{header, Response, StatusCode};

use super::Body;
use crate::path::PathError;
use crate::store;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (see the README's error table).
    pub code: &'static str,
    /// One-line explanation for a human.
    pub message: String,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(op: &str, what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("not allowed to {op} {what}"),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("allowed methods: {allowed}"),
        )
    }

    /// 413 `body_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 500 `internal`.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the agent log",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = Response::new(Body::full(bytes));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            if let Some(allowed) = self.message.strip_prefix("allowed methods: ") {
                if let Ok(v) = header::HeaderValue::from_str(allowed) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
            }
        }
        res
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string())
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        let status = match &e {
            store::Error::Integrity { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            store::Error::Conflict { .. } => StatusCode::CONFLICT,
            store::Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &e {
            store::Error::Integrity { .. }
            | store::Error::Conflict { .. }
            | store::Error::Invalid(_) => Self::new(status, e.code(), e.to_string()),
            _ => {
                tracing::error!(error = %e, "store failure");
                Self::new(status, e.code(), "storage failure; see the agent log")
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
    ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_values() {
        let err = serde_json::from_str::<crate::secret::Fields>(r#"{"password": 987654321}"#)
            .expect_err("wrong type");
        let api = json_error(&err);
        assert!(!api.message.contains("987654321"), "{}", api.message);
        assert_eq!(api.code, "bad_json");
    }
}
