//! The token endpoint: building the refresh / client-credentials request (RFC 6749
//! §6 and §4.4) with the configured client authentication (§2.3.1), and reading the
//! answer (§5.1) into the refreshed credential.
//!
//! Request building and answer parsing are pure (they take the clock as an
//! argument) so they are unit-tested on the host; [`refresh`] does the one POST.

use latchkey_plugin_sdk::{http, sign, Credential, ProviderError};
use serde_json::Value;

use crate::refusal;
use crate::settings::{ClientAuth, Grant, Settings};

/// Credential field names (kind `oauth2`).
pub(crate) mod field {
    /// The access token.
    pub(crate) const ACCESS_TOKEN: &str = "access-token";
    /// The refresh token (optional).
    pub(crate) const REFRESH_TOKEN: &str = "refresh-token";
    /// The client id.
    pub(crate) const CLIENT_ID: &str = "client-id";
    /// The client secret (absent for public clients).
    pub(crate) const CLIENT_SECRET: &str = "client-secret";
    /// The token type, usually `Bearer`.
    pub(crate) const TOKEN_TYPE: &str = "token-type";
    /// The granted scope (optional).
    pub(crate) const SCOPE: &str = "scope";
}

/// A form request to an OAuth endpoint: body parameters plus client authentication.
/// Holds secrets, so it has no `Debug`.
pub(crate) struct FormRequest {
    /// `application/x-www-form-urlencoded` body pairs.
    pub(crate) form: Vec<(&'static str, String)>,
    /// The `authorization` header value, for `client_secret_basic`.
    pub(crate) authorization: Option<String>,
}

impl FormRequest {
    /// Sends it as a POST to `url`, asking for JSON.
    pub(crate) fn send(&self, url: &str) -> Result<http::Response, ProviderError> {
        let pairs: Vec<(&str, &str)> = self.form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut req = http::post(url)
            .header("accept", "application/json")
            .form(&pairs);
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        Ok(req.send()?)
    }
}

/// A non-empty credential field.
fn present<'a>(cred: &'a Credential, name: &str) -> Option<&'a str> {
    cred.field(name).filter(|v| !v.is_empty())
}

/// The grant `refresh` uses: the configured one, else refresh_token when the
/// credential has a refresh token, else client_credentials.
pub(crate) fn grant_for(settings: &Settings, cred: &Credential) -> Grant {
    settings.grant.unwrap_or_else(|| {
        if present(cred, field::REFRESH_TOKEN).is_some() {
            Grant::RefreshToken
        } else {
            Grant::ClientCredentials
        }
    })
}

/// Adds client authentication to a form request (RFC 6749 §2.3.1): HTTP Basic over
/// the form-urlencoded id and secret, or both in the body; a public client (no
/// secret) sends only `client_id` in the body (§3.2.1).
pub(crate) fn authenticate(
    mut form: Vec<(&'static str, String)>,
    settings: &Settings,
    cred: &Credential,
) -> Result<FormRequest, ProviderError> {
    let client_id = present(cred, field::CLIENT_ID).ok_or_else(|| {
        ProviderError::InvalidConfig(format!("credential has no field {}", field::CLIENT_ID))
    })?;
    let mut authorization = None;
    match (present(cred, field::CLIENT_SECRET), settings.client_auth) {
        (Some(secret), ClientAuth::Basic) => {
            let pair = format!(
                "{}:{}",
                http::form_urlencode(client_id),
                http::form_urlencode(secret)
            );
            authorization = Some(format!("Basic {}", sign::base64(pair.as_bytes())));
        }
        (Some(secret), ClientAuth::Body) => {
            form.push(("client_id", client_id.to_owned()));
            form.push(("client_secret", secret.to_owned()));
        }
        (None, _) => form.push(("client_id", client_id.to_owned())),
    }
    Ok(FormRequest {
        form,
        authorization,
    })
}

/// The token request for `cred`.
pub(crate) fn request(
    settings: &Settings,
    cred: &Credential,
) -> Result<FormRequest, ProviderError> {
    let grant = grant_for(settings, cred);
    let mut form = vec![("grant_type", grant.as_str().to_owned())];
    let scope = match grant {
        Grant::RefreshToken => {
            let token = present(cred, field::REFRESH_TOKEN).ok_or_else(|| {
                ProviderError::InvalidConfig(format!(
                    "the refresh_token grant needs credential field {}",
                    field::REFRESH_TOKEN
                ))
            })?;
            form.push(("refresh_token", token.to_owned()));
            // §6: omitted scope means "the scope originally granted".
            settings.scope.clone()
        }
        Grant::ClientCredentials => settings
            .scope
            .clone()
            .or_else(|| present(cred, field::SCOPE).map(str::to_owned)),
    };
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    if let Some(audience) = &settings.audience {
        form.push(("audience", audience.clone()));
    }
    authenticate(form, settings, cred)
}

/// Every secret value of `cred`, to keep them out of error details.
pub(crate) fn secrets(cred: &Credential) -> Vec<&str> {
    [
        field::ACCESS_TOKEN,
        field::REFRESH_TOKEN,
        field::CLIENT_SECRET,
    ]
    .iter()
    .filter_map(|name| present(cred, name))
    .collect()
}

/// A JSON number of seconds, also accepted as a decimal string (some servers send one).
pub(crate) fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The refreshed credential from a successful token answer (§5.1), at time `now`.
///
/// Fields the server did not return are kept from `cred`: the refresh token when no
/// new one is issued (§6), the scope when none is echoed (§5.1: then it is the
/// requested one). Error messages name fields, never values.
pub(crate) fn refreshed(
    cred: &Credential,
    requested_scope: Option<&str>,
    answer: &Value,
    now: u64,
) -> Result<Credential, ProviderError> {
    let text = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let access = text("access_token")
        .ok_or_else(|| ProviderError::Unavailable("the token answer has no access_token".into()))?;
    let mut out = cred.clone();
    set(&mut out, field::ACCESS_TOKEN, access);
    set(
        &mut out,
        field::TOKEN_TYPE,
        text("token_type").unwrap_or("Bearer"),
    );
    if let Some(refresh) = text("refresh_token") {
        set(&mut out, field::REFRESH_TOKEN, refresh);
    }
    if let Some(scope) = text("scope").or(requested_scope) {
        set(&mut out, field::SCOPE, scope);
    }
    out.expires_at = answer
        .get("expires_in")
        .and_then(seconds)
        .map(|s| now.saturating_add(s));
    Ok(out)
}

/// Sets (or adds) one field.
fn set(cred: &mut Credential, name: &str, value: &str) {
    match cred.fields.iter_mut().find(|f| f.name == name) {
        Some(f) => value.clone_into(&mut f.value),
        None => cred.fields.push(latchkey_plugin_sdk::Field {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
    }
}

/// Runs the grant at `endpoint` and returns the refreshed credential.
pub(crate) fn refresh(
    endpoint: &str,
    settings: &Settings,
    cred: &Credential,
    now: u64,
) -> Result<Credential, ProviderError> {
    let req = request(settings, cred)?;
    let res = req.send(endpoint)?;
    if !(200..300).contains(&res.status) {
        return Err(refusal::from_answer(
            "token endpoint",
            res.status,
            &res.body,
            &secrets(cred),
        ));
    }
    let answer: Value = serde_json::from_slice(&res.body).map_err(|_| {
        ProviderError::Unavailable("the token endpoint answered with invalid JSON".into())
    })?;
    let requested = req
        .form
        .iter()
        .find(|(k, _)| *k == "scope")
        .map(|(_, v)| v.as_str());
    refreshed(cred, requested, &answer, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(auth: ClientAuth) -> Settings {
        Settings {
            token_endpoint: Some("https://idp/token".into()),
            issuer: None,
            grant: None,
            client_auth: auth,
            scope: None,
            audience: None,
            userinfo_endpoint: None,
            introspection_endpoint: None,
        }
    }

    fn cred(fields: &[(&'static str, &str)]) -> Credential {
        Credential::new("oauth2", fields.iter().map(|(n, v)| (*n, (*v).to_owned())))
    }

    fn form(req: &FormRequest) -> Vec<(&str, &str)> {
        req.form.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret() {
        // RFC 6749 §2.3.1: encode with application/x-www-form-urlencoded, then base64.
        let c = cred(&[
            ("client-id", "my app:1"),
            ("client-secret", "s&cr/t"),
            ("refresh-token", "rt"),
        ]);
        let req = request(&settings(ClientAuth::Basic), &c).expect("request");
        assert_eq!(
            req.authorization.as_deref(),
            Some(format!("Basic {}", sign::base64(b"my+app%3A1:s%26cr%2Ft")).as_str())
        );
        assert_eq!(
            form(&req),
            [("grant_type", "refresh_token"), ("refresh_token", "rt")]
        );
    }

    #[test]
    fn body_auth_puts_client_in_the_form() {
        let c = cred(&[("client-id", "app"), ("client-secret", "s")]);
        let mut s = settings(ClientAuth::Body);
        s.scope = Some("read".into());
        s.audience = Some("https://api".into());
        let req = request(&s, &c).expect("request");
        assert!(req.authorization.is_none());
        assert_eq!(
            form(&req),
            [
                ("grant_type", "client_credentials"),
                ("scope", "read"),
                ("audience", "https://api"),
                ("client_id", "app"),
                ("client_secret", "s"),
            ]
        );
    }

    #[test]
    fn public_client_sends_only_its_id() {
        let c = cred(&[("client-id", "spa"), ("refresh-token", "rt")]);
        let req = request(&settings(ClientAuth::Basic), &c).expect("request");
        assert!(req.authorization.is_none());
        assert_eq!(
            form(&req),
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt"),
                ("client_id", "spa"),
            ]
        );
    }

    #[test]
    fn refresh_grant_without_refresh_token_is_a_config_error() {
        let mut s = settings(ClientAuth::Basic);
        s.grant = Some(Grant::RefreshToken);
        let c = cred(&[("client-id", "app"), ("client-secret", "s")]);
        assert!(matches!(
            request(&s, &c),
            Err(ProviderError::InvalidConfig(_))
        ));
    }

    #[test]
    fn answer_sets_token_and_expiry_and_keeps_the_old_refresh_token() {
        let c = cred(&[
            ("access-token", "old"),
            ("refresh-token", "rt-1"),
            ("client-id", "app"),
        ]);
        let answer = json!({"access_token": "new", "token_type": "Bearer", "expires_in": 300});
        let out = refreshed(&c, None, &answer, 1_000).expect("refreshed");
        assert_eq!(out.field("access-token"), Some("new"));
        assert_eq!(out.field("refresh-token"), Some("rt-1"));
        assert_eq!(out.field("token-type"), Some("Bearer"));
        assert_eq!(out.field("client-id"), Some("app"));
        assert_eq!(out.expires_at, Some(1_300));
    }

    #[test]
    fn answer_replaces_refresh_token_and_scope_when_returned() {
        let c = cred(&[("access-token", "old"), ("refresh-token", "rt-1")]);
        let answer = json!({
            "access_token": "new", "token_type": "bearer", "expires_in": "60",
            "refresh_token": "rt-2", "scope": "a b",
        });
        let out = refreshed(&c, Some("a"), &answer, 10).expect("refreshed");
        assert_eq!(out.field("refresh-token"), Some("rt-2"));
        assert_eq!(out.field("scope"), Some("a b"));
        assert_eq!(out.expires_at, Some(70));
    }

    #[test]
    fn answer_without_access_token_is_unavailable_and_names_no_value() {
        let c = cred(&[("refresh-token", "rt-secret")]);
        let e = refreshed(&c, None, &json!({"token_type": "Bearer"}), 0);
        assert!(matches!(e, Err(ProviderError::Unavailable(d)) if !d.contains("rt-secret")));
    }

    #[test]
    fn no_expires_in_means_unknown_expiry() {
        let mut c = cred(&[]);
        c.expires_at = Some(5);
        let out = refreshed(&c, None, &json!({"access_token": "a"}), 100).expect("refreshed");
        assert_eq!(out.expires_at, None);
    }
}
