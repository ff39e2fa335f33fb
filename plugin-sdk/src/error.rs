//! Error conversions: `?` on HTTP and SQL calls yields the right [`ProviderError`].
//!
//! | failure | becomes | what the host does |
//! | --- | --- | --- |
//! | host refused the HTTP authority or SQL connection | `denied` | audit, report a configuration error, no retry |
//! | network error, timeout, HTTP 408/429/5xx, database unreachable | `unavailable` | retry with backoff |
//! | HTTP 401/403, other 4xx, SQL statement refused | `rejected` | no retry: `validate` → `revoked`, `create-pending` → `invalid` (rolled back), `refresh` → `reauth-required` |
//! | malformed response (bad JSON) | `unavailable` | retry (the service may be degraded) |
//!
//! In `validate`, a credential the service refuses is an *answer*: return
//! `valid: false` (state `invalid`), as [`crate::validate::check`] does for 401 and
//! 403, rather than letting `?` turn the 401 into `rejected` (state `revoked`).
//! `wit/provider.wit` has the whole table: every answer → state, event, exit code.

use crate::bindings::latchkey::provider::sql::SqlError;
use crate::http;
use crate::ProviderError;

impl ProviderError {
    /// The error for an HTTP status the service answered with.
    pub fn from_status(status: u16) -> Self {
        match status {
            408 | 429 | 500..=599 => Self::Unavailable(format!("service answered {status}")),
            _ => Self::Rejected(format!("service answered {status}")),
        }
    }
}

impl From<http::Error> for ProviderError {
    fn from(e: http::Error) -> Self {
        match e {
            http::Error::Denied => Self::Denied("http request denied by the host".into()),
            http::Error::Status(status) => Self::from_status(status),
            http::Error::InvalidRequest(what) => Self::InvalidConfig(what),
            http::Error::Transport(what) => Self::Unavailable(what),
            http::Error::Json(what) => Self::Unavailable(format!("unexpected response: {what}")),
        }
    }
}

impl From<SqlError> for ProviderError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Denied(m) => Self::Denied(m),
            SqlError::Unavailable(m) => Self::Unavailable(m),
            SqlError::Failed(m) => Self::Rejected(m),
            SqlError::Invalid(m) => Self::InvalidConfig(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_retry_or_reject() {
        assert!(matches!(
            ProviderError::from_status(503),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            ProviderError::from_status(429),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            ProviderError::from_status(401),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            ProviderError::from(http::Error::Denied),
            ProviderError::Denied(_)
        ));
    }
}
