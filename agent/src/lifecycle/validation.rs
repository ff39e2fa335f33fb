//! Validation: the health check of a current credential and the check of one an
//! admin is about to write.
//!
//! [`Engine::validate_now`] runs on schedule (`validate_every`), for `latchkey
//! validate` and for `POST /v1/validate`: it asks the provider, records the state the
//! answer leads to (as [`super::next`] decides: `active`, `invalid`, `revoked`, or the
//! state kept when the provider could not tell) and publishes `validated` or
//! `invalid`. [`Engine::check_before_write`] asks the provider about a candidate when
//! the policy (`validate_on_write`) or the writer wants it, and refuses what the
//! provider does not accept. Both refuse a credential that holds a permission the
//! policy forbids (`forbid_permissions`).

use latchkey_plugin_host::ProviderError;

use super::next::{self, Answer, Call, Next};
use super::{Engine, Error, State, Status};
use crate::audit::Outcome;
use crate::events::{Event, Kind};
use crate::path::SecretPath;
use crate::providers::{Credential, Failure, LifecycleSpec, Validation};

/// What a validation found, as `POST /v1/validate` answers it.
#[derive(Debug)]
pub struct Checked {
    /// The plugin asked.
    pub plugin: String,
    /// Whether the service accepted the credential.
    pub valid: bool,
    /// The provider's explanation (no secrets).
    pub detail: String,
    /// Permissions the service reported: name and whether granted.
    pub permissions: Vec<(String, bool)>,
    /// Expiry the service reported (unix seconds).
    pub expires_at: Option<u64>,
    /// The provider's error answer, when it gave one instead of a validation.
    pub error: Option<ProviderError>,
    /// What the answer came to, one word per row of the contract's table
    /// (`wit/provider.wit`): `valid`, `invalid` (`valid: false`), `forbidden` (valid,
    /// but holding a permission the policy forbids), `rejected`, or the code of the
    /// provider error that left the question open (`unavailable`, `denied`,
    /// `unsupported`, `invalid-config`).
    pub outcome: &'static str,
    /// The credential's state after this answer (kept as it was when the provider
    /// could not tell).
    pub state: State,
}

impl Checked {
    /// The code of a provider error that left the question open (`unavailable`,
    /// `denied`, …). `rejected` is not one: it is an answer (the service refused the
    /// credential).
    pub fn undecided(&self) -> Option<&'static str> {
        self.error
            .as_ref()
            .filter(|e| !matches!(e, ProviderError::Rejected(_)))
            .map(ProviderError::code)
    }
}

/// Why a credential an admin is about to write is refused. `Display` is the reason
/// the admin reads (the provider's words, which never hold values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The service does not accept it (`valid: false`, or the provider's `rejected`).
    Rejected {
        /// The provider's explanation.
        detail: String,
    },
    /// It holds a permission the policy forbids.
    Forbidden {
        /// The permission.
        permission: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rejected { detail } => {
                write!(f, "the provider rejected the credential: {detail}")
            }
            Refusal::Forbidden { permission } => {
                write!(f, "the credential holds forbidden permission {permission}")
            }
        }
    }
}

/// The first forbidden permission the validation reports as granted.
pub(super) fn forbidden(policy: &LifecycleSpec, checked: &Validation) -> Option<String> {
    checked
        .permissions
        .iter()
        .find(|(name, granted)| {
            *granted
                && policy
                    .forbid_permissions
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name))
        })
        .map(|(name, _)| name.clone())
}

/// A validation's answer as the outcome table reads it.
pub(super) fn answer<'a>(
    policy: &LifecycleSpec,
    checked: &'a Result<Validation, Failure>,
) -> Answer<'a> {
    match checked {
        Ok(v) if forbidden(policy, v).is_some() => Answer::Forbidden,
        Ok(v) if v.valid => Answer::Done,
        Ok(_) => Answer::Invalid,
        Err(failure) => Answer::Failed(failure),
    }
}

impl Engine {
    /// Validates the current version now (the health check, `latchkey validate` and
    /// `POST /v1/validate`), records the state and publishes `validated` or `invalid`.
    /// A plugin that fails in the host (trap, deadline) is an error; any answer of
    /// the provider, its errors included, is a [`Checked`].
    pub async fn validate_now(&self, path: &SecretPath) -> Result<Checked, Error> {
        let _op = self.begin()?;
        let policy = self
            .policy(path)
            .ok_or_else(|| Error::NoPolicy(path.clone()))?;
        let secret = self.required(path).await?;
        let asked = self
            .inner
            .provider
            .validate(path, &Credential::of(&secret))
            .await;
        let next = next::decide(Call::Check, answer(&policy, &asked));
        let forbidden = asked.as_ref().ok().and_then(|v| forbidden(&policy, v));
        let mut checked = match asked {
            Ok(v) => Checked {
                plugin: policy.plugin.clone(),
                valid: v.valid,
                detail: v.detail,
                permissions: v.permissions,
                expires_at: v.expires_at,
                error: None,
                outcome: match (&forbidden, v.valid) {
                    (Some(_), _) => "forbidden",
                    (None, true) => "valid",
                    (None, false) => "invalid",
                },
                state: State::Active,
            },
            Err(Failure::Answered { source, .. }) => Checked {
                plugin: policy.plugin.clone(),
                valid: false,
                detail: source.detail().to_owned(),
                permissions: Vec::new(),
                expires_at: None,
                outcome: source.code(),
                error: Some(source),
                state: State::Active,
            },
            Err(failure) => return Err(failure.into()),
        };
        let now = self.now();
        let (state, detail) = match next {
            Next::Proceed => (Some(State::Active), checked.detail.clone()),
            Next::Invalid => (
                Some(State::Invalid),
                match &forbidden {
                    Some(p) => format!("holds forbidden permission {p}"),
                    None => checked.detail.clone(),
                },
            ),
            Next::Revoked => (
                Some(State::Revoked),
                format!("the service refused the credential: {}", checked.detail),
            ),
            // Could not tell: keep the state, say why, look again at the next check.
            other => {
                let code = checked
                    .error
                    .as_ref()
                    .map_or("unknown", ProviderError::code);
                if other == Next::ConfigError {
                    tracing::error!(path = %path, plugin = %policy.plugin, code, "the provider cannot validate: its configuration must change");
                }
                (
                    None,
                    format!("validation failed: {code}: {}", checked.detail),
                )
            }
        };
        let after = self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| {
                s.version = secret.version;
                s.checked_at = Some(now);
                s.permissions = checked.permissions.clone();
                match state {
                    Some(State::Active) => {
                        s.validated_at = Some(now);
                        let keep = matches!(s.state, State::Rotating | State::Refreshing);
                        if !keep {
                            s.set(State::Active, &detail, now);
                        }
                    }
                    Some(other) => s.set(other, &detail, now),
                    None => s.detail = detail.clone(),
                }
                s.state
            },
        );
        checked.state = after;
        if let Some(state) = state {
            let kind = if state == State::Active {
                Kind::Validated
            } else {
                Kind::Invalid
            };
            self.inner
                .events
                .publish(Event::now(kind, path.clone(), Some(secret.version)));
        }
        self.audit(
            "validate",
            path,
            Some(secret.version),
            if state == Some(State::Active) {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            &detail,
        );
        Ok(checked)
    }

    /// Checks a credential an admin is about to write, when the policy asks for it
    /// (`validate_on_write`) or the writer does. A credential the provider does not
    /// accept is refused ([`Error::Refused`], audited); a provider that cannot tell
    /// now fails the write with its answer ([`Error::Provider`]).
    pub async fn check_before_write(
        &self,
        path: &SecretPath,
        cred: &Credential,
        asked: bool,
    ) -> Result<(), Error> {
        let Some(policy) = self.policy(path) else {
            if asked {
                return Err(Error::NoPolicy(path.clone()));
            }
            return Ok(());
        };
        if !(asked || policy.validate_on_write) {
            return Ok(());
        }
        let _op = self.begin()?;
        let checked = self.inner.provider.validate(path, cred).await;
        let next = next::decide(Call::CheckWrite, answer(&policy, &checked));
        if next == Next::Proceed {
            return Ok(());
        }
        let reason = match checked {
            Ok(v) => match forbidden(&policy, &v) {
                Some(permission) => Refusal::Forbidden { permission },
                None => Refusal::Rejected { detail: v.detail },
            },
            Err(failure) if next == Next::Stop => Refusal::Rejected {
                detail: failure.answer().map_or("", |e| e.detail()).to_owned(),
            },
            // The provider could not tell now: the write fails with its answer.
            Err(failure) => return Err(failure.into()),
        };
        self.audit(
            "validate-write",
            path,
            None,
            Outcome::Denied,
            &reason.to_string(),
        );
        Err(Error::Refused {
            path: path.clone(),
            reason,
        })
    }
}
