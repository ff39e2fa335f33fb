//! The one table from a provider's answer to what the engine does next.
//!
//! Rotation (steps 1 and 3, retirement), refresh, the health check and the check
//! before an admin write all call [`decide`] with the call they made and what came
//! back. The `provider-error` cases follow the contract in `wit/types.wit`: only
//! `unavailable` is retried; `rejected`, `denied`, `unsupported` and `invalid-config`
//! never are.
//!
//! | answer | check | before a write | create (1) | test (3) | retire | refresh |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | valid / done | proceed | proceed | proceed | proceed | proceed | proceed |
//! | `valid: false` | invalid | stop | | retry | | |
//! | a forbidden permission | invalid | stop | | retry | | |
//! | `rejected` | revoked | stop | invalid | stop | stop | reauth-required |
//! | `unavailable` | retry | retry | retry | retry | retry | retry |
//! | `denied`, `unsupported`, `invalid-config` | config error | config error | config error | config error | config error | config error |
//! | host fault: deadline, memory, trap | retry | retry | retry | retry | retry | retry |
//! | host: operation or credential kind not declared, no plugin | config error | config error | config error | config error | config error | config error |
//!
//! What each [`Next`] means for each caller is said on its variants. Failures that are
//! not a provider's answer (a lost check-and-set in steps 2 and 4, an upstream that
//! cannot be reached) are the engine's own and are retried with backoff.

use latchkey_plugin_host::{CallError, ProviderError};

use crate::providers::Failure;

/// The provider call an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `validate` of the current credential: the health check, `latchkey validate`,
    /// and whether the current credential still works when a rotation rolls back.
    Check,
    /// `validate` of a credential an admin is about to write.
    CheckWrite,
    /// Rotation step 1: `create-pending` beside the current credential.
    Create,
    /// Rotation step 3: `validate` of the pending credential.
    Test,
    /// `retire` of a previous (or rolled-back pending) credential.
    Retire,
    /// `refresh` of the current credential.
    Refresh,
}

/// What a call came back with.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// It did what was asked; for `validate`, the service accepts the credential.
    Done,
    /// `validate` answered `valid: false`.
    Invalid,
    /// `validate` reported a permission the policy forbids as granted.
    Forbidden,
    /// No answer of the kind asked for: the provider's `provider-error`, or a fault in
    /// the host.
    Failed(&'a Failure),
}

/// What the engine does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on: the answer is what the operation needed.
    Proceed,
    /// Transient: keep the current credential and try again later with backoff (a
    /// rotation rolls back first and counts the attempt against `max_attempts`; a
    /// health check keeps the state and looks again at its next check; a write fails
    /// now).
    Retry,
    /// Roll back what the operation started and do not try again on schedule: the
    /// current credential stays as it is (a write is refused).
    Stop,
    /// The current credential does not work: mark it `invalid`; a rotation that
    /// needed it rolls back and is not tried again on schedule.
    Invalid,
    /// The service no longer knows the current credential: mark it `revoked`.
    Revoked,
    /// The service refused the refresh token: mark `reauth-required` (a person must
    /// log in again); refresh is not tried again on schedule.
    ReauthRequired,
    /// The plugin or its configuration is wrong: stop as for [`Next::Stop`] and report a
    /// configuration error naming the plugin; an operator must change the config.
    ConfigError,
}

impl Next {
    /// Whether the engine tries the operation again on schedule.
    pub fn retries(self) -> bool {
        matches!(self, Next::Retry)
    }
}

/// The table (see the module docs).
pub fn decide(call: Call, answer: Answer<'_>) -> Next {
    match answer {
        Answer::Done => Next::Proceed,
        Answer::Invalid | Answer::Forbidden => match call {
            Call::Check => Next::Invalid,
            Call::Test => Next::Retry,
            _ => Next::Stop,
        },
        Answer::Failed(Failure::Answered { source, .. }) => match source {
            ProviderError::Rejected(_) => match call {
                Call::Check => Next::Revoked,
                Call::Create => Next::Invalid,
                Call::Refresh => Next::ReauthRequired,
                Call::CheckWrite | Call::Test | Call::Retire => Next::Stop,
            },
            ProviderError::Unavailable(_) => Next::Retry,
            ProviderError::Denied(_)
            | ProviderError::Unsupported(_)
            | ProviderError::InvalidConfig(_) => Next::ConfigError,
        },
        Answer::Failed(Failure::Host { source, .. }) => match source {
            CallError::NotDeclared { .. }
            | CallError::KindNotDeclared { .. }
            | CallError::UnknownOperation
            | CallError::BadArguments(_) => Next::ConfigError,
            // A hit limit, a trap, an exhausted pool: the next call may fare better,
            // and `max_attempts` bounds how often a rotation tries.
            _ => Next::Retry,
        },
        Answer::Failed(Failure::NoProvider(_)) => Next::ConfigError,
    }
}

/// A provider's error answer in words for status, audit and alerts: its code and the
/// plugin's explanation (which the host has scrubbed of credential values).
pub fn describe(e: &ProviderError) -> String {
    format!("{}: {}", e.code(), e.detail())
}

/// A failure in words, as [`describe`] does for the provider's answers and with the
/// cause chain for host faults.
pub fn describe_failure(failure: &Failure) -> String {
    match failure.answer() {
        Some(e) => describe(e),
        None => latchkey_plugin_host::error_chain(failure),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use latchkey_plugin_host::Operation;

    use super::*;
    use crate::path::SecretPath;

    const CALLS: [Call; 6] = [
        Call::Check,
        Call::CheckWrite,
        Call::Create,
        Call::Test,
        Call::Retire,
        Call::Refresh,
    ];

    fn answered(e: ProviderError) -> Failure {
        Failure::Answered {
            plugin: "svc".into(),
            operation: Operation::CreatePending,
            source: e,
        }
    }

    #[test]
    fn only_unavailable_among_the_provider_errors_is_retried() {
        let never = [
            ProviderError::Rejected("no".into()),
            ProviderError::Denied("sql".into()),
            ProviderError::Unsupported("refresh".into()),
            ProviderError::InvalidConfig("url".into()),
        ];
        for call in CALLS {
            let unavailable = answered(ProviderError::Unavailable("503".into()));
            assert_eq!(
                decide(call, Answer::Failed(&unavailable)),
                Next::Retry,
                "{call:?}"
            );
            for e in &never {
                let failure = answered(e.clone());
                let next = decide(call, Answer::Failed(&failure));
                assert!(!next.retries(), "{call:?} retries {}", e.code());
                assert_ne!(next, Next::Proceed, "{call:?} goes on after {}", e.code());
            }
        }
    }

    #[test]
    fn rejected_marks_what_was_refused() {
        let rejected = answered(ProviderError::Rejected("401".into()));
        let next = |call| decide(call, Answer::Failed(&rejected));
        assert_eq!(next(Call::Check), Next::Revoked);
        assert_eq!(next(Call::Create), Next::Invalid, "the current credential");
        assert_eq!(next(Call::Test), Next::Stop, "the pending one goes");
        assert_eq!(next(Call::CheckWrite), Next::Stop, "the write is refused");
        assert_eq!(next(Call::Retire), Next::Stop);
        assert_eq!(next(Call::Refresh), Next::ReauthRequired);
    }

    #[test]
    fn denied_unsupported_and_invalid_config_are_configuration_errors_everywhere() {
        for e in [
            ProviderError::Denied("sql pg".into()),
            ProviderError::Unsupported("refresh".into()),
            ProviderError::InvalidConfig("no url".into()),
        ] {
            let failure = answered(e);
            for call in CALLS {
                assert_eq!(
                    decide(call, Answer::Failed(&failure)),
                    Next::ConfigError,
                    "{call:?}"
                );
            }
        }
        let nobody = Failure::NoProvider(SecretPath::parse("a/b").expect("path"));
        assert_eq!(
            decide(Call::Refresh, Answer::Failed(&nobody)),
            Next::ConfigError
        );
    }

    #[test]
    fn validation_answers_depend_on_whose_credential_it_was() {
        for answer in [Answer::Invalid, Answer::Forbidden] {
            assert_eq!(decide(Call::Check, answer), Next::Invalid);
            assert_eq!(decide(Call::CheckWrite, answer), Next::Stop);
            assert_eq!(decide(Call::Test, answer), Next::Retry);
        }
        for call in CALLS {
            assert_eq!(decide(call, Answer::Done), Next::Proceed);
        }
    }

    #[test]
    fn host_faults_are_retried_unless_the_plugin_cannot_do_the_call() {
        let timeout = Failure::Host {
            plugin: "svc".into(),
            source: CallError::Timeout {
                plugin: "svc".into(),
                deadline: Duration::from_secs(1),
            },
        };
        assert_eq!(decide(Call::Create, Answer::Failed(&timeout)), Next::Retry);
        let undeclared = Failure::Host {
            plugin: "svc".into(),
            source: CallError::NotDeclared {
                plugin: "svc".into(),
                operation: Operation::Refresh,
            },
        };
        assert_eq!(
            decide(Call::Refresh, Answer::Failed(&undeclared)),
            Next::ConfigError
        );
        assert!(describe_failure(&timeout).contains("deadline"));
    }

    #[test]
    fn descriptions_carry_the_code_and_the_plugins_words() {
        let failure = answered(ProviderError::Unavailable("service answered 503".into()));
        assert_eq!(
            describe_failure(&failure),
            "unavailable: service answered 503"
        );
    }
}
