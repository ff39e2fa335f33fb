//! The SQL each product needs: does a role exist, set its password, disable it.
//!
//! Identifiers and literals are quoted only by the host (`quote-identifier`,
//! `quote-literal`), never here. Statements that carry a password are DDL, which
//! cannot take parameters; they are returned as [`Secret`] so the caller can keep
//! the password out of any error it reports.

use latchkey_plugin_sdk::sql::{SqlError, Value};

use crate::host::Host;
use crate::scram;
use crate::settings::{Flavour, PasswordHashing};

/// A statement that contains secret text, and that text (for redaction).
pub struct Secret {
    /// The statement to run.
    pub statement: String,
    /// Strings inside it that must never appear in an error or log.
    pub secrets: Vec<String>,
}

/// Whether the role (PostgreSQL) or account `role@host` (MySQL) exists.
pub fn role_exists(host: &impl Host, flavour: &Flavour, role: &str) -> Result<bool, SqlError> {
    let found = match flavour {
        Flavour::Postgres { .. } => host.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[Value::Text(role.to_owned())],
        )?,
        Flavour::Mysql { host: account_host } => host.execute(
            "SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?",
            &[
                Value::Text(role.to_owned()),
                Value::Text(account_host.clone()),
            ],
        )?,
    };
    Ok(!found.rows.is_empty())
}

/// The role as SQL: `"role"` (PostgreSQL) or `` `user`@`host` `` (MySQL).
pub fn account(host: &impl Host, flavour: &Flavour, role: &str) -> Result<String, SqlError> {
    let name = host.quote_identifier(role)?;
    Ok(match flavour {
        Flavour::Postgres { .. } => name,
        Flavour::Mysql { host: account_host } => {
            format!("{name}@{}", host.quote_identifier(account_host)?)
        }
    })
}

/// Sets `role`'s password to `password`. With `enable`, also lets the role log in
/// again (undoing [`disable`]).
pub fn set_password(
    host: &impl Host,
    flavour: &Flavour,
    role: &str,
    password: &str,
    enable: bool,
) -> Result<Secret, SqlError> {
    let who = account(host, flavour, role)?;
    let mut secrets = vec![password.to_owned()];
    let statement = match flavour {
        Flavour::Postgres { hashing } => {
            let sent = match hashing {
                PasswordHashing::ScramSha256 => {
                    let salt = host.random_bytes(scram::SALT_LEN);
                    scram::verifier(password, &salt, scram::ITERATIONS)
                }
                PasswordHashing::Server => password.to_owned(),
            };
            let literal = host.quote_literal(&sent)?;
            let login = if enable { "LOGIN " } else { "" };
            secrets.push(sent);
            format!("ALTER ROLE {who} WITH {login}PASSWORD {literal}")
        }
        Flavour::Mysql { .. } => {
            let literal = host.quote_literal(password)?;
            let unlock = if enable { " ACCOUNT UNLOCK" } else { "" };
            format!("ALTER USER {who} IDENTIFIED BY {literal}{unlock}")
        }
    };
    Ok(Secret { statement, secrets })
}

/// Makes `role` unusable for logins. PostgreSQL: `NOLOGIN` and no password. MySQL:
/// `ACCOUNT LOCK` plus a random password nobody keeps, so the old password fails
/// even where locking is not enforced.
pub fn disable(host: &impl Host, flavour: &Flavour, role: &str) -> Result<Secret, SqlError> {
    let who = account(host, flavour, role)?;
    Ok(match flavour {
        Flavour::Postgres { .. } => Secret {
            statement: format!("ALTER ROLE {who} WITH NOLOGIN PASSWORD NULL"),
            secrets: Vec::new(),
        },
        Flavour::Mysql { .. } => {
            let throwaway = latchkey_plugin_sdk::sign::hex(&host.random_bytes(32));
            let literal = host.quote_literal(&throwaway)?;
            Secret {
                statement: format!("ALTER USER {who} IDENTIFIED BY {literal} ACCOUNT LOCK"),
                secrets: vec![throwaway],
            }
        }
    })
}
