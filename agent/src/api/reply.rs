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

/// Permissions as every answer writes them (`POST /v1/validate`, `GET /v1/status`,
/// `latchkey plugin call`): `[{"name": "read", "granted": true}]`.
pub(super) fn permissions(list: &[(String, bool)]) -> serde_json::Value {
    list.iter()
        .map(|(name, granted)| serde_json::json!({ "name": name, "granted": granted }))
        .collect()
}

/// The time fields of a lifecycle status (unix seconds as kept) that answers write
/// as RFC 3339.
const STATUS_TIMES: [&str; 7] = [
    "since",
    "validated_at",
    "rotated_at",
    "refreshed_at",
    "next_check_at",
    "retry_at",
    "retire_at",
];

/// A lifecycle status as `GET /v1/status` answers it: the state file's shape with
/// times as RFC 3339 and permissions as objects, as in every other answer.
pub(super) fn status(
    path: &crate::path::SecretPath,
    status: &crate::lifecycle::Status,
) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        for key in STATUS_TIMES {
            if let Some(unix) = map.get(key).and_then(serde_json::Value::as_i64) {
                map.insert(key.to_owned(), rfc3339(unix).into());
            }
        }
        if map.contains_key("permissions") {
            map.insert("permissions".into(), permissions(&status.permissions));
        }
        map.insert("path".into(), path.as_str().into());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 7: one format everywhere.
    #[test]
    fn statuses_write_times_as_rfc3339_and_permissions_as_objects() {
        let path = crate::path::SecretPath::parse("ex/key").expect("path");
        let mut s = crate::lifecycle::Status::new("binance", 3, 1_700_000_000);
        s.validated_at = Some(1_700_000_060);
        s.permissions = vec![("read".into(), true), ("withdraw".into(), false)];
        let json = status(&path, &s);
        assert_eq!(json["since"], "2023-11-14T22:13:20Z");
        assert_eq!(json["validated_at"], "2023-11-14T22:14:20Z");
        assert_eq!(
            json["permissions"],
            serde_json::json!([
                {"name": "read", "granted": true},
                {"name": "withdraw", "granted": false}
            ])
        );
        assert_eq!(json["path"], "ex/key");
        assert_eq!(json["state"], "active");
    }

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
