//! The provider operations, over any [`Host`]: validate, create-pending, retire.
//!
//! Each call parses its [`Settings`], checks the credential kind and the connection's
//! dialect, then runs as few statements as it can. Every error that follows a
//! statement carrying a password is scrubbed of it ([`scrub`]).

use latchkey_plugin_sdk::sql::{Dialect, SqlError};
use latchkey_plugin_sdk::{secret, Credential, Field, ProviderError, Validation};

use crate::host::Host;
use crate::settings::{Product, Settings, Strategy};
use crate::statements;

/// Shortest piece of a secret that may not appear in an error message.
const SCRUB_WINDOW: usize = 6;

/// Removes `secrets` from a server message. If a piece of one remains (a server
/// quoting a truncated statement), the whole message is withheld.
pub fn scrub(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "[redacted]");
    }
    let leaks = secrets.iter().any(|s| {
        let chars: Vec<char> = s.chars().collect();
        chars.len() >= SCRUB_WINDOW
            && chars.windows(SCRUB_WINDOW).any(|w| {
                let piece: String = w.iter().collect();
                out.contains(&piece)
            })
    });
    if leaks {
        "the server's message quoted the statement and was withheld".to_owned()
    } else {
        out
    }
}

/// The [`ProviderError`] for `e`, its message scrubbed of `secrets`.
fn redacted(e: SqlError, secrets: &[&str]) -> ProviderError {
    let e = match e {
        SqlError::Denied(m) => SqlError::Denied(scrub(&m, secrets)),
        SqlError::Unavailable(m) => SqlError::Unavailable(scrub(&m, secrets)),
        SqlError::Failed(m) => SqlError::Failed(scrub(&m, secrets)),
        SqlError::Invalid(m) => SqlError::Invalid(scrub(&m, secrets)),
    };
    ProviderError::from(e)
}

fn check_kind(product: Product, cred: &Credential) -> Result<(), ProviderError> {
    if cred.kind == product.kind() {
        Ok(())
    } else {
        Err(ProviderError::Unsupported(format!(
            "credential kind {} (the {} provider handles {})",
            cred.kind,
            product.name(),
            product.kind()
        )))
    }
}

fn check_dialect(host: &impl Host, settings: &Settings) -> Result<(), ProviderError> {
    let (expected, wanted) = match settings.product() {
        Product::Postgres => (Dialect::Postgres, "postgres"),
        Product::Mysql => (Dialect::Mysql, "mysql"),
    };
    let actual = host.dialect()?;
    if actual == expected {
        Ok(())
    } else {
        Err(ProviderError::InvalidConfig(format!(
            "connection {} is not a {wanted} connection",
            settings.connection
        )))
    }
}

fn answer(valid: bool, detail: String) -> Validation {
    Validation {
        valid,
        detail,
        permissions: Vec::new(),
        expires_at: None,
    }
}

/// `validate`: whether the credential's `username` and `password` log in.
pub fn validate<H: Host>(
    product: Product,
    cfg: &[Field],
    cred: &Credential,
    connect: impl Fn(&str) -> H,
) -> Result<Validation, ProviderError> {
    let settings = Settings::parse(product, cfg)?;
    check_kind(product, cred)?;
    let user = cred.require("username")?;
    let password = cred.require("password")?;
    let host = connect(&settings.connection);
    check_dialect(&host, &settings)?;
    match host.check_login(user, password) {
        Ok(true) => Ok(answer(true, format!("{} {user} logged in", product.noun()))),
        Ok(false) => Ok(answer(
            false,
            format!(
                "the server refused the password of {} {user}",
                product.noun()
            ),
        )),
        // Refused for another reason than the password: a locked account, no access
        // to the connection's database. The credential does not work either way.
        Err(SqlError::Failed(m)) => Ok(answer(
            false,
            format!(
                "the server refused the login of {} {user}: {}",
                product.noun(),
                scrub(&m, &[password])
            ),
        )),
        Err(e) => Err(redacted(e, &[password])),
    }
}

/// The role of the pair that `current` is not.
fn other_role<'a>(roles: &'a [String; 2], current: &str) -> Result<&'a str, ProviderError> {
    match roles.iter().position(|r| r == current) {
        Some(0) => Ok(&roles[1]),
        Some(_) => Ok(&roles[0]),
        None => Err(ProviderError::InvalidConfig(format!(
            "the current credential's username {current} is not one of the roles {} and {}",
            roles[0], roles[1]
        ))),
    }
}

/// `create-pending`: a fresh password on the current role (`single`) or on the other
/// role of the pair (`alternate`, which also re-enables that role). Fields of
/// `current` other than `username` and `password` (a host name, a database) are
/// copied to the new credential.
///
/// Nothing changes unless the one `ALTER` succeeds, so a failure leaves the current
/// password working.
pub fn create_pending<H: Host>(
    product: Product,
    cfg: &[Field],
    current: &Credential,
    connect: impl Fn(&str) -> H,
) -> Result<Credential, ProviderError> {
    let settings = Settings::parse(product, cfg)?;
    check_kind(product, current)?;
    let noun = product.noun();
    let current_user = current.require("username")?;
    let (target, alternate) = match &settings.strategy {
        Strategy::Single => (current_user, false),
        Strategy::Alternate { roles } => (other_role(roles, current_user)?, true),
    };
    let host = connect(&settings.connection);
    check_dialect(&host, &settings)?;
    if !statements::role_exists(&host, &settings.flavour, target)? {
        return Err(if alternate {
            ProviderError::InvalidConfig(format!(
                "{noun} {target} (the other of the pair) does not exist; create it \
                 with the privileges of {current_user}"
            ))
        } else {
            ProviderError::Rejected(format!("{noun} {target} does not exist"))
        });
    }
    let password = secret::from_alphabet(settings.password_length, settings.alphabet, |n| {
        host.random_bytes(n)
    });
    let change = statements::set_password(&host, &settings.flavour, target, &password, alternate)
        .map_err(|e| redacted(e, &[&password]))?;
    let secrets: Vec<&str> = change.secrets.iter().map(String::as_str).collect();
    host.execute(&change.statement, &[])
        .map_err(|e| redacted(e, &secrets))?;
    host.info(&format!("set a new password on {noun} {target}"));

    let mut fields = vec![
        Field {
            name: "username".into(),
            value: target.to_owned(),
        },
        Field {
            name: "password".into(),
            value: password,
        },
    ];
    fields.extend(
        current
            .fields
            .iter()
            .filter(|f| f.name != "username" && f.name != "password")
            .cloned(),
    );
    Ok(Credential {
        kind: current.kind.clone(),
        fields,
        expires_at: None,
    })
}

/// `retire`: with `single`, nothing (the previous password was replaced in place by
/// `create-pending`; the role is the current one). With `alternate`, disables the
/// previous role, unless it no longer accepts the previous password (already retired,
/// or re-enabled with a new password by a later rotation, which must not be undone)
/// or no longer exists.
pub fn retire<H: Host>(
    product: Product,
    cfg: &[Field],
    previous: &Credential,
    connect: impl Fn(&str) -> H,
) -> Result<(), ProviderError> {
    let settings = Settings::parse(product, cfg)?;
    check_kind(product, previous)?;
    let noun = product.noun();
    let user = previous.require("username")?;
    let Strategy::Alternate { roles } = &settings.strategy else {
        return Ok(());
    };
    if !roles.iter().any(|r| r == user) {
        return Err(ProviderError::InvalidConfig(format!(
            "the previous credential's username {user} is not one of the roles {} and {}; \
             not disabling it",
            roles[0], roles[1]
        )));
    }
    let password = previous.require("password")?;
    let host = connect(&settings.connection);
    check_dialect(&host, &settings)?;
    match host.check_login(user, password) {
        Ok(false) => {
            host.info(&format!(
                "{noun} {user} no longer accepts the previous password: already retired"
            ));
            return Ok(());
        }
        // Logged in, or refused for another reason (a locked account): disable it.
        Ok(true) | Err(SqlError::Failed(_)) => {}
        Err(e) => return Err(redacted(e, &[password])),
    }
    if !statements::role_exists(&host, &settings.flavour, user)? {
        host.info(&format!("{noun} {user} is gone: already retired"));
        return Ok(());
    }
    let change = statements::disable(&host, &settings.flavour, user)?;
    let secrets: Vec<&str> = change.secrets.iter().map(String::as_str).collect();
    host.execute(&change.statement, &[])
        .map_err(|e| redacted(e, &secrets))?;
    host.info(&format!("disabled {noun} {user}"));
    Ok(())
}
