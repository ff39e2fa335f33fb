//! The one place the agent builds HTTP clients for upstreams.
//!
//! [`client`] builds the `reqwest::Client` every HTTP upstream uses (rustls with the
//! *ring* provider, the configured CA, timeouts, user agent); [`aws_http_client`]
//! builds the AWS SDK's client (rustls on *ring* too, with the system roots). Each is
//! built once per upstream and reused for every call, never per request.
//! [`sensitive`] turns a token into a header value that `Debug` and HTTP tracing
//! redact.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderValue;

use super::{BoxError, Error};
use crate::secret::SecretString;

/// The `User-Agent` sent to upstreams.
pub const USER_AGENT: &str = concat!("latchkey/", env!("CARGO_PKG_VERSION"));

/// How to reach an upstream over HTTP.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// PEM file of the CA(s) to trust. When set, only these are trusted (the system
    /// roots are not), as with `VAULT_CACERT`; when unset, the system roots are.
    pub ca_file: Option<PathBuf>,
    /// Limit for establishing a TCP + TLS connection (a dead node fails fast and the
    /// next address is tried).
    pub connect_timeout: Duration,
    /// Limit for a whole request, including reading the body.
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Builds the HTTP client of one upstream. `upstream` names it in errors.
pub fn client(upstream: &str, settings: &HttpSettings) -> Result<reqwest::Client, Error> {
    #[allow(clippy::disallowed_methods)] // this is the one allowed place
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(ca_file) = &settings.ca_file {
        let config_error = |reason: String, source: Option<BoxError>| Error::Config {
            upstream: upstream.to_owned(),
            reason,
            source,
        };
        let pem = std::fs::read(ca_file).map_err(|e| {
            config_error(
                format!("ca_file {} cannot be read", ca_file.display()),
                Some(Box::new(e)),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            config_error(
                format!("ca_file {} is not PEM", ca_file.display()),
                Some(Box::new(e)),
            )
        })?;
        if certs.is_empty() {
            return Err(config_error(
                format!("ca_file {} holds no certificate", ca_file.display()),
                None,
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| Error::Config {
        upstream: upstream.to_owned(),
        reason: "cannot build the HTTP client".to_owned(),
        source: Some(Box::new(e)),
    })
}

/// The AWS SDK's HTTP client: hyper with rustls on *ring* (no aws-lc), system roots.
pub fn aws_http_client() -> aws_sdk_secretsmanager::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A header value carrying a credential, marked sensitive so that it is redacted in
/// `Debug` output and HTTP/2 header compression never indexes it.
pub fn sensitive(upstream: &str, token: &SecretString) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(token.expose()).map_err(|_| Error::Invalid {
        upstream: upstream.to_owned(),
        what: "token".to_owned(),
        reason: "not a valid header value".to_owned(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_header_is_redacted_in_debug() {
        let v = sensitive("bao", &SecretString::from("s.very-secret-token")).expect("valid");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("very-secret"));
    }

    #[test]
    fn unreadable_ca_file_is_a_config_error_naming_the_file() {
        let settings = HttpSettings {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..HttpSettings::default()
        };
        let err = client("bao", &settings).expect_err("must fail");
        assert!(matches!(err, Error::Config { .. }));
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
