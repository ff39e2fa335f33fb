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
//! | 6 | rejected by its provider (`validate`) |
//! | 64 | the config does not validate |
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
/// The provider rejected the credential.
pub const REJECTED: u8 = 6;
/// The config does not validate.
pub const CONFIG: u8 = 64;

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
