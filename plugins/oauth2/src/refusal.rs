//! Turns an OAuth 2 error answer (RFC 6749 §5.2) into a [`ProviderError`].
//!
//! Token and introspection endpoints answer a refused request with `400` or `401` and
//! `{"error": "invalid_grant", "error_description": "..."}`. That becomes `rejected`
//! (the host stops and asks for re-authorization); 408, 429 and 5xx become
//! `unavailable` (retried). The detail carries the error code and description but
//! never a credential value: the description is the server's text, so any secret
//! the server echoed is cut out of it.

use latchkey_plugin_sdk::ProviderError;

/// Longest description kept in a detail.
const MAX_DESCRIPTION: usize = 200;

/// The error for a non-2xx answer of `endpoint` (e.g. "token endpoint").
/// `secrets` are the credential values that must never appear in the detail.
pub(crate) fn from_answer(
    endpoint: &str,
    status: u16,
    body: &[u8],
    secrets: &[&str],
) -> ProviderError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let code = field("error")
        .filter(|c| is_error_code(c))
        .filter(|c| !secrets.iter().any(|s| !s.is_empty() && c.contains(s)));
    let description = field("error_description").map(|d| clean(&d, secrets));
    let mut detail = format!("{endpoint} answered {status}");
    if let Some(code) = &code {
        detail.push_str(": ");
        detail.push_str(code);
    }
    if let Some(description) = description.filter(|d| !d.is_empty()) {
        detail.push_str(" (");
        detail.push_str(&description);
        detail.push(')');
    }
    // RFC 6749 names these two for servers that cannot answer right now.
    let transient_code = matches!(
        code.as_deref(),
        Some("temporarily_unavailable" | "server_error")
    );
    match status {
        408 | 429 | 500..=599 => ProviderError::Unavailable(detail),
        _ if transient_code => ProviderError::Unavailable(detail),
        _ => ProviderError::Rejected(detail),
    }
}

/// RFC 6749 error codes are printable ASCII without `"` and `\`; anything else (or
/// anything long) is not an error code and is left out.
fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// `text` without control characters, shortened; withheld whole if it contains any
/// non-empty secret (cutting the secret out would garble short ones into hints).
pub(crate) fn clean(text: &str, secrets: &[&str]) -> String {
    if secrets.iter().any(|s| !s.is_empty() && text.contains(s)) {
        return "description withheld: it contains a credential value".into();
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.chars().count() > MAX_DESCRIPTION {
        out = out.chars().take(MAX_DESCRIPTION).collect::<String>() + "…";
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_grant_is_rejected_with_code_and_description() {
        let e = from_answer(
            "token endpoint",
            400,
            br#"{"error":"invalid_grant","error_description":"refresh token rt-123 revoked"}"#,
            &["rt-123", ""],
        );
        let ProviderError::Rejected(detail) = e else {
            panic!("not rejected: {e:?}");
        };
        assert_eq!(
            detail,
            "token endpoint answered 400: invalid_grant (description withheld: it contains a credential value)"
        );
    }

    #[test]
    fn invalid_client_on_401_is_rejected() {
        let e = from_answer("token endpoint", 401, br#"{"error":"invalid_client"}"#, &[]);
        assert!(matches!(e, ProviderError::Rejected(d) if d.ends_with("401: invalid_client")));
    }

    #[test]
    fn rate_limits_and_server_errors_are_unavailable() {
        for (status, body) in [
            (429, &b"slow down"[..]),
            (503, &b"<html>down</html>"[..]),
            (400, &br#"{"error":"temporarily_unavailable"}"#[..]),
        ] {
            assert!(matches!(
                from_answer("token endpoint", status, body, &[]),
                ProviderError::Unavailable(_)
            ));
        }
    }

    #[test]
    fn non_json_bodies_and_odd_codes_are_left_out() {
        let e = from_answer("token endpoint", 403, b"forbidden secret-x", &["secret-x"]);
        let e2 = from_answer(
            "token endpoint",
            401,
            br#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
            &["a"],
        );
        assert!(matches!(e2, ProviderError::Rejected(d) if d.contains("withheld")));
        assert!(matches!(e, ProviderError::Rejected(d) if d == "token endpoint answered 403"));
        let e = from_answer("token endpoint", 400, br#"{"error":"a\"b"}"#, &[]);
        assert!(matches!(e, ProviderError::Rejected(d) if d == "token endpoint answered 400"));
    }
}
