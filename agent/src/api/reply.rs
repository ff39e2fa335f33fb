//! Building answers: JSON bodies with the headers every answer carries (`no-store`:
//! nothing the agent says is for a cache), and times as RFC 3339.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::Body;

/// A secret read: the rendered, cached head and the per-request freshness tail.
pub(super) fn secret_response(head: Bytes, tail: Bytes) -> Response<Body> {
    with_json_headers(Response::new(Body::two(head, tail)))
}

/// Marks an answer as JSON that no cache may keep.
pub(super) fn with_json_headers(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A JSON answer with `status`.
pub(super) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut res = with_json_headers(Response::new(Body::full(bytes)));
    *res.status_mut() = status;
    res
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn every_json_answer_is_no_store() {
        let res = json_response(StatusCode::CREATED, &serde_json::json!({"a": 1}));
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }
}
