//! The exit codes of every verb, in one table (README, "Exit codes"): what a script
//! can branch on without parsing messages.
//!
//! | code | meaning |
//! | ---: | --- |
//! | 0 | ok |
//! | 1 | any other failure |
//! | 2 | usage: bad arguments |
//! | 3 | not found: the secret (or a field of it) does not exist |
//! | 4 | denied: policy or identity refused it |
//! | 5 | conflict: a lost check-and-set, a rotation already running |
//! | 6 | invalid: the service refuses the credential (`valid: false`), or it holds a forbidden permission; `status`: a credential is not active |
//! | 7 | rejected: the provider answered `rejected` (the credential is now `revoked`) |
//! | 8 | unavailable: the provider could not tell now (`unavailable`); try again later |
//! | 9 | denied: the host refused the plugin a capability (`denied`): grant it in the config |
//! | 10 | unsupported: the plugin does not do this operation or kind (`unsupported`, not in its manifest) |
//! | 11 | invalid-config: the provider configuration is missing or malformed (`invalid-config`) |
//! | 12 | plugin fault: the call trapped, ran past its deadline or its memory cap |
//! | 64 | the config does not validate |
//!
//! Codes 6–12 are the outcomes of a provider call, the same for `latchkey validate`
//! (through the agent) and `latchkey plugin call` (on its own); [`of_outcome`] is
//! the one mapping, and `wit/provider.wit` has the table of what each outcome does
//! to the credential.
//!
//! `latchkey exec` passes its child's own exit code through once the child runs;
//! these codes are for what happens before.

/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad arguments.
pub const USAGE: u8 = 2;
/// The secret or field does not exist.
pub const NOT_FOUND: u8 = 3;
/// Policy or identity refused it.
pub const DENIED: u8 = 4;
/// A lost check-and-set, or a rotation already running.
pub const CONFLICT: u8 = 5;
/// The service refuses the credential (`valid: false`, a forbidden permission), or
/// (`status`) a credential is not active.
pub const INVALID: u8 = 6;
/// The provider answered `rejected`.
pub const REJECTED: u8 = 7;
/// The provider could not tell now (`unavailable`).
pub const UNAVAILABLE: u8 = 8;
/// The host refused the plugin a capability (`denied`).
pub const PROVIDER_DENIED: u8 = 9;
/// The plugin does not do this operation or credential kind.
pub const UNSUPPORTED: u8 = 10;
/// The provider configuration is missing or malformed.
pub const INVALID_CONFIG: u8 = 11;
/// The plugin call trapped or hit a limit.
pub const PLUGIN_FAULT: u8 = 12;
/// The config does not validate.
pub const CONFIG: u8 = 64;

/// The exit code of a provider call's outcome: `valid` and `ok` (any other operation
/// that succeeded) are 0; `invalid` and `forbidden`, and each `provider-error` code,
/// have their own; `fault` is a trap or a hit limit. An unknown word is a failure.
pub fn of_outcome(outcome: &str) -> u8 {
    match outcome {
        "valid" | "ok" => 0,
        "invalid" | "forbidden" => INVALID,
        "rejected" => REJECTED,
        "unavailable" => UNAVAILABLE,
        "denied" => PROVIDER_DENIED,
        "unsupported" => UNSUPPORTED,
        "invalid-config" => INVALID_CONFIG,
        "fault" => PLUGIN_FAULT,
        _ => FAILURE,
    }
}

/// The exit code of an API error answer's status.
pub fn of_status(status: u16) -> u8 {
    match status {
        404 => NOT_FOUND,
        401 | 403 => DENIED,
        409 => CONFLICT,
        _ => FAILURE,
    }
}

/// The exit code of an error, by the first cause in its chain that has one.
pub fn of_error(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<crate::config::Error>().is_some() {
            return CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<crate::exec::Error>() {
            match e {
                crate::exec::Error::MissingSecret { .. }
                | crate::exec::Error::MissingField { .. } => return NOT_FOUND,
                crate::exec::Error::Binding(_) | crate::exec::Error::AmbiguousField { .. } => {
                    return USAGE
                }
                _ => {}
            }
        }
        if let Some(crate::render::source::Error::Status { status, .. }) =
            cause.downcast_ref::<crate::render::source::Error>()
        {
            return of_status(*status);
        }
    }
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::SecretPath;

    /// Issue 15, item 2: `valid: false`, `rejected` and `unavailable` all exited 6.
    #[test]
    fn every_provider_outcome_has_its_own_code() {
        let outcomes = [
            "valid",
            "invalid",
            "rejected",
            "unavailable",
            "denied",
            "unsupported",
            "invalid-config",
            "fault",
        ];
        assert_eq!(
            outcomes.map(of_outcome),
            [
                0,
                INVALID,
                REJECTED,
                UNAVAILABLE,
                PROVIDER_DENIED,
                UNSUPPORTED,
                INVALID_CONFIG,
                PLUGIN_FAULT
            ]
        );
        assert_eq!(of_outcome("forbidden"), INVALID);
        assert_eq!(of_outcome("ok"), 0);
        assert_eq!(of_outcome("something new"), FAILURE);
        let mut codes: Vec<u8> = outcomes.map(of_outcome).to_vec();
        codes.dedup();
        assert_eq!(codes.len(), outcomes.len(), "one code per outcome");
    }

    #[test]
    fn statuses_map_to_their_codes() {
        assert_eq!(
            [404, 401, 403, 409, 500, 502].map(of_status),
            [NOT_FOUND, DENIED, DENIED, CONFLICT, FAILURE, FAILURE]
        );
    }

    #[test]
    fn errors_map_by_their_cause() {
        let path = SecretPath::parse("apps/db").expect("path");
        let missing = anyhow::Error::new(crate::exec::Error::MissingSecret {
            name: "DB".into(),
            path: path.clone(),
        });
        assert_eq!(of_error(&missing), NOT_FOUND);
        let denied = anyhow::Error::new(crate::exec::Error::Fetch {
            path,
            source: crate::render::source::Error::Status {
                status: 403,
                code: "forbidden".into(),
            },
        })
        .context("exec");
        assert_eq!(of_error(&denied), DENIED);
        let config = anyhow::Error::new(crate::config::Error::Invalid {
            path: "x.toml".into(),
            problems: vec!["line 1: a: b".into()],
        });
        assert_eq!(of_error(&config), CONFIG);
        assert_eq!(of_error(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
