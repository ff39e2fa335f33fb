//! OAuth 2 provider: refreshes access tokens at the token endpoint and checks them
//! at the userinfo or introspection endpoint.
//!
//! Credential kind `oauth2`, fields `access-token`, `refresh-token` (optional),
//! `client-id`, `client-secret` (optional: public clients), `token-type` and `scope`
//! (optional); `expires-at` comes from the server's `expires_in`.
//!
//! - `refresh` ([`token`]): the `refresh_token` grant (RFC 6749 §6) or the
//!   `client_credentials` grant (§4.4), with `client_secret_basic` or
//!   `client_secret_post` authentication. A refused grant (`invalid_grant`,
//!   `invalid_client`, …) is `rejected`: the host stops refreshing and asks for
//!   re-authorization. 408/429/5xx and network failures are `unavailable` (retried).
//! - `validate` ([`check`]): expired → not valid; else userinfo, else introspection
//!   (RFC 7662), else valid while not expired.
//! - Endpoints come from the configuration ([`settings`]) or from the issuer's
//!   OpenID Connect discovery document ([`discovery`]).
//!
//! No state is kept between calls; the host's lifecycle engine decides when to
//! refresh. Token values never appear in details or logs ([`refusal`]).

use latchkey_plugin_sdk::{
    Credential, Field, Operation, Provider, ProviderError, ProviderInfo, Validation,
};

pub mod check;
pub mod discovery;
pub mod refusal;
pub mod settings;
pub mod token;

use settings::Settings;

/// The credential kind this provider handles.
pub const KIND: &str = "oauth2";

/// The provider (exported as the component's `provider` interface).
pub struct OAuth2;

/// Seconds since the Unix epoch, from the host's wall clock.
fn now() -> Result<u64, ProviderError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| ProviderError::Unavailable("the clock is before 1970".into()))
}

fn check_kind(cred: &Credential) -> Result<(), ProviderError> {
    if cred.kind == KIND {
        Ok(())
    } else {
        Err(ProviderError::Unsupported(format!(
            "credential kind {:?} (this provider handles {KIND})",
            cred.kind
        )))
    }
}

impl Provider for OAuth2 {
    fn info() -> ProviderInfo {
        // No fixed HTTP authorities: the operator names the authorization server.
        latchkey_plugin_sdk::info(
            "oauth2",
            env!("CARGO_PKG_VERSION"),
            &[KIND],
            &[Operation::Validate, Operation::Refresh],
        )
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        check_kind(&cred)?;
        let settings = Settings::from_fields(&cfg)?;
        if let Some(expired) = check::expired(&cred, now()?) {
            return Ok(expired);
        }
        let endpoints = discovery::resolve(&settings, |e| {
            e.userinfo.is_none() && e.introspection.is_none()
        })?;
        if let Some(url) = &endpoints.userinfo {
            check::with_userinfo(url, &cred)
        } else if let Some(url) = &endpoints.introspection {
            check::with_introspection(url, &settings, &cred)
        } else {
            Ok(check::unchecked(&cred))
        }
    }

    fn create_pending(_: Vec<Field>, _: Credential) -> Result<Credential, ProviderError> {
        Err(ProviderError::Unsupported(
            "create-pending: OAuth 2 tokens are refreshed, not rotated".into(),
        ))
    }

    fn retire(_: Vec<Field>, _: Credential) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("retire".into()))
    }

    fn refresh(cfg: Vec<Field>, cred: Credential) -> Result<Credential, ProviderError> {
        check_kind(&cred)?;
        let settings = Settings::from_fields(&cfg)?;
        let endpoints = discovery::resolve(&settings, |e| e.token.is_none())?;
        let endpoint = endpoints.token.ok_or_else(|| {
            ProviderError::InvalidConfig("config needs token-endpoint or issuer".into())
        })?;
        token::refresh(&endpoint, &settings, &cred, now()?)
    }
}

latchkey_plugin_sdk::export!(OAuth2);
