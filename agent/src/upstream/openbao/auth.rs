//! Logging in to OpenBao / Vault and keeping the token alive.
//!
//! Three methods: a token (inline or from a file; looked up once to learn its TTL),
//! AppRole (role id from a file, secret id inline or from a file, read at each login)
//! and JWT (a JWT read from a file at each login, so a rotated Kubernetes
//! service-account token is picked up). The session token is renewed with
//! `renew-self` once two thirds of its lease have passed; when renewal fails or the
//! token is rejected with a 403, the next call logs in again (AppRole, JWT, a token
//! file that may have been replaced). Tokens live in [`SecretString`] and go out only
//! as sensitive header values.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::transport::{Idempotency, Transport};
use crate::secret::SecretString;
use crate::upstream::{http, Error};

/// Where a credential comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Given in the config.
    Inline(SecretString),
    /// Read from this file at each login.
    File(PathBuf),
}

/// A login method with its settings.
#[derive(Debug)]
pub(crate) enum LoginMethod {
    Token(Source),
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id: Source,
    },
    Jwt {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

impl LoginMethod {
    fn label(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AppRole { .. } => "approle",
            Self::Jwt { .. } => "jwt",
        }
    }

    /// Whether a fresh login can produce a different token than the one rejected.
    fn can_relogin(&self) -> bool {
        !matches!(self, Self::Token(Source::Inline(_)))
    }
}

struct Session {
    /// The token, as a sensitive header value.
    header: HeaderValue,
    generation: u64,
    renewable: bool,
    /// `None`: the token does not expire (a root or periodic-less token with TTL 0).
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
}

/// The login state of one upstream. Cheap to share; calls serialize on a short lock.
pub(crate) struct Auth {
    upstream: String,
    method: LoginMethod,
    session: tokio::sync::Mutex<Option<Session>>,
    generation: AtomicU64,
}

/// The `auth` block of a login or renew answer.
#[derive(Deserialize)]
struct AuthBlock {
    client_token: SecretString,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct AuthReply {
    auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
struct LookupReply {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

/// What a caller needs to send an authenticated request.
pub(crate) struct Credential {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
}

impl Auth {
    pub(crate) fn new(upstream: &str, method: LoginMethod) -> Self {
        Self {
            upstream: upstream.to_owned(),
            method,
            session: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether a 403 should be answered by logging in again and retrying once.
    pub(crate) fn can_relogin(&self) -> bool {
        self.method.can_relogin()
    }

    /// The token header to send now: logs in if there is no session or it expired,
    /// renews it first if renewal is due.
    pub(crate) async fn credential(&self, transport: &Transport) -> Result<Credential, Error> {
        let mut guard = self.session.lock().await;
        let now = Instant::now();
        let expired = guard
            .as_ref()
            .and_then(|s| s.expires_at)
            .is_some_and(|at| now >= at);
        if guard.is_none() || expired {
            *guard = Some(self.login(transport).await?);
        } else if let Some(session) = guard.as_mut() {
            if session.renewable && session.renew_at.is_some_and(|at| now >= at) {
                match self.renew(transport, session).await {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        // Keep the current token: it is still valid until it expires,
                        // and the next call tries again.
                        tracing::warn!(upstream = %self.upstream, error = %e, "token renewal failed; will retry");
                    }
                    Err(e) if self.can_relogin() => {
                        tracing::info!(upstream = %self.upstream, error = %e, "token renewal refused; logging in again");
                        *guard = Some(self.login(transport).await?);
                    }
                    Err(e) => {
                        // Nothing better to do than use the token until it expires.
                        tracing::warn!(upstream = %self.upstream, error = %e, "token renewal refused");
                        session.renewable = false;
                    }
                }
            }
        }
        let session = guard
            .as_ref()
            .ok_or_else(|| self.login_error("no session", None))?;
        Ok(Credential {
            header: session.header.clone(),
            generation: session.generation,
        })
    }

    /// Forgets the session that produced `generation` (its token was rejected), so the
    /// next [`Auth::credential`] logs in again. A newer session is left alone.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.generation == generation) {
            *guard = None;
        }
    }

    /// Renews the session now if renewal is due (or logs in if there is none). The
    /// sync loop calls this on a timer so that an idle agent keeps its token.
    pub(crate) async fn renew_if_due(&self, transport: &Transport) -> Result<(), Error> {
        self.credential(transport).await.map(|_| ())
    }

    /// Renews the current session now, whatever its age. Returns the new lease.
    pub(crate) async fn renew_now(&self, transport: &Transport) -> Result<Duration, Error> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = Some(self.login(transport).await?);
        }
        let session = guard
            .as_mut()
            .ok_or_else(|| self.login_error("no session", None))?;
        self.renew(transport, session).await?;
        Ok(session
            .expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::ZERO))
    }

    async fn renew(&self, transport: &Transport, session: &mut Session) -> Result<(), Error> {
        let reply = transport
            .send(
                Method::POST,
                "auth/token/renew-self",
                Some(&session.header),
                Some(b"{}"),
                Idempotency::Safe,
            )
            .await?;
        if reply.status != StatusCode::OK {
            return Err(self.status_error("renew-self", reply.status));
        }
        let block = parse_auth(&reply.body)
            .ok_or_else(|| self.login_error("renew answer has no auth block", None))?;
        let now = Instant::now();
        session.renewable = block.renewable;
        (session.renew_at, session.expires_at) = schedule(now, block.lease_duration);
        Ok(())
    }

    async fn login(&self, transport: &Transport) -> Result<Session, Error> {
        let label = self.method.label();
        let (token, lease, renewable) = match &self.method {
            LoginMethod::Token(source) => {
                let token = self.read_source(source).await?;
                let header = http::sensitive(&self.upstream, &token)?;
                let reply = transport
                    .send(
                        Method::GET,
                        "auth/token/lookup-self",
                        Some(&header),
                        None,
                        Idempotency::Safe,
                    )
                    .await?;
                if reply.status != StatusCode::OK {
                    return Err(self.status_error("token lookup-self", reply.status));
                }
                let lookup: LookupReply = serde_json::from_slice(&reply.body)
                    .map_err(|_| self.login_error("lookup-self answer is not understood", None))?;
                (token, lookup.data.ttl, lookup.data.renewable)
            }
            LoginMethod::AppRole {
                mount,
                role_id_file,
                secret_id,
            } => {
                let role_id = self.read_file(role_id_file).await?;
                let secret_id = self.read_source(secret_id).await?;
                let body = Zeroizing::new(
                    serde_json::to_vec(&serde_json::json!({
                        "role_id": role_id.expose(),
                        "secret_id": secret_id.expose(),
                    }))
                    .map_err(|_| self.login_error("cannot encode the login request", None))?,
                );
                self.post_login(transport, &format!("auth/{mount}/login"), &body)
                    .await?
            }
            LoginMethod::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = self.read_file(jwt_file).await?;
                let body = Zeroizing::new(
                    serde_json::to_vec(&serde_json::json!({ "role": role, "jwt": jwt.expose() }))
                        .map_err(|_| self.login_error("cannot encode the login request", None))?,
                );
                self.post_login(transport, &format!("auth/{mount}/login"), &body)
                    .await?
            }
        };
        let header = http::sensitive(&self.upstream, &token)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (renew_at, expires_at) = schedule(Instant::now(), lease);
        tracing::info!(upstream = %self.upstream, method = label, lease_secs = lease, renewable, "logged in");
        Ok(Session {
            header,
            generation,
            renewable,
            renew_at,
            expires_at,
        })
    }

    async fn post_login(
        &self,
        transport: &Transport,
        api_path: &str,
        body: &[u8],
    ) -> Result<(SecretString, u64, bool), Error> {
        let reply = transport
            .send(Method::POST, api_path, None, Some(body), Idempotency::Safe)
            .await?;
        if reply.status != StatusCode::OK {
            return Err(self.status_error(api_path, reply.status));
        }
        let block = parse_auth(&reply.body)
            .ok_or_else(|| self.login_error("login answer has no auth block", None))?;
        Ok((block.client_token, block.lease_duration, block.renewable))
    }

    async fn read_source(&self, source: &Source) -> Result<SecretString, Error> {
        match source {
            Source::Inline(value) => Ok(value.clone()),
            Source::File(path) => self.read_file(path).await,
        }
    }

    async fn read_file(&self, path: &Path) -> Result<SecretString, Error> {
        let raw = Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(|e| {
            self.login_error(
                &format!("cannot read {}: {e}", path.display()),
                Some(Box::new(e)),
            )
        })?);
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(self.login_error(&format!("{} is empty", path.display()), None));
        }
        Ok(SecretString::from(trimmed))
    }

    fn status_error(&self, what: &str, status: StatusCode) -> Error {
        if matches!(status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED) {
            Error::Denied {
                upstream: self.upstream.clone(),
                operation: what.to_owned(),
            }
        } else {
            self.login_error(&format!("{what} answered {status}"), None)
        }
    }

    fn login_error(&self, reason: &str, source: Option<crate::upstream::BoxError>) -> Error {
        Error::Login {
            upstream: self.upstream.clone(),
            method: self.method.label(),
            reason: reason.to_owned(),
            source,
        }
    }
}

fn parse_auth(body: &[u8]) -> Option<AuthBlock> {
    serde_json::from_slice::<AuthReply>(body).ok()?.auth
}

/// When to renew (after two thirds of the lease) and when the token expires.
fn schedule(now: Instant, lease_secs: u64) -> (Option<Instant>, Option<Instant>) {
    if lease_secs == 0 {
        return (None, None);
    }
    let lease = Duration::from_secs(lease_secs);
    (Some(now + lease * 2 / 3), Some(now + lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_after_two_thirds_of_the_lease() {
        let now = Instant::now();
        let (renew, expire) = schedule(now, 30);
        assert_eq!(renew, Some(now + Duration::from_secs(20)));
        assert_eq!(expire, Some(now + Duration::from_secs(30)));
        assert_eq!(schedule(now, 0), (None, None));
    }

    #[test]
    fn login_answer_token_is_not_in_debug() {
        let body =
            br#"{"auth":{"client_token":"hvs.secret-token","lease_duration":60,"renewable":true}}"#;
        let block = parse_auth(body).expect("parses");
        assert_eq!(block.client_token.expose(), "hvs.secret-token");
        assert!(!format!("{:?}", block.client_token).contains("secret-token"));
        assert!(parse_auth(br#"{"auth":null}"#).is_none());
    }

    #[test]
    fn only_an_inline_token_cannot_log_in_again() {
        assert!(!LoginMethod::Token(Source::Inline("t".into())).can_relogin());
        assert!(LoginMethod::Token(Source::File("/t".into())).can_relogin());
    }
}
