//! The provider configuration (`[[lifecycle]] config`), parsed and checked once per call.
//!
//! Pure: reads `config: list<field>` and answers [`Settings`] or `invalid-config`
//! naming the key. The flavour-specific keys (`host` for MySQL, `password-hashing`
//! for PostgreSQL) are parsed here too, so every key is documented in one place.

use latchkey_plugin_sdk::{config, secret, Field, ProviderError};

/// Shortest password the provider generates.
pub const MIN_PASSWORD_LENGTH: usize = 16;
/// Longest password the provider generates.
pub const MAX_PASSWORD_LENGTH: usize = 128;
/// Password length when `password-length` is not set.
pub const DEFAULT_PASSWORD_LENGTH: usize = 32;
/// Suffixes of the two roles when `alternate` is configured with a base `username`.
pub const ROLE_SUFFIXES: [&str; 2] = ["_a", "_b"];

/// How a rotation replaces the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One role; its password is changed in place. The previous password stops
    /// working as soon as the pending one is set.
    Single,
    /// Two roles with the same privileges; each rotation sets a fresh password on the
    /// role that is not in use, so the previous credential keeps working through the
    /// grace window, and `retire` then disables the previous role.
    Alternate {
        /// The two role names.
        roles: [String; 2],
    },
}

/// How PostgreSQL receives the new password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordHashing {
    /// The plugin computes the SCRAM-SHA-256 verifier and sends only that, so the
    /// password itself never reaches the server's statement log (what `psql`'s
    /// `\password` does).
    ScramSha256,
    /// The plugin sends the password; the server hashes it as its
    /// `password_encryption` setting says.
    Server,
}

/// What differs between the database products.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// PostgreSQL.
    Postgres {
        /// How the password is sent (`password-hashing`).
        hashing: PasswordHashing,
    },
    /// MySQL or MariaDB.
    Mysql {
        /// The account's host part (`host`, default `%`).
        host: String,
    },
}

/// Which flavour a plugin is, before the flavour's own keys are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Product {
    /// The provider name, which is also the default connection name.
    pub fn name(self) -> &'static str {
        match self {
            Product::Postgres => "postgres",
            Product::Mysql => "mysql",
        }
    }

    /// What the product calls the thing with a password: `role` or `user`.
    pub fn noun(self) -> &'static str {
        match self {
            Product::Postgres => "role",
            Product::Mysql => "user",
        }
    }

    /// The credential kind the provider handles.
    pub fn kind(self) -> &'static str {
        match self {
            Product::Postgres => "postgres-password",
            Product::Mysql => "mysql-password",
        }
    }
}

/// The checked configuration of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The host-held SQL connection (`connection`; default: the provider's name).
    pub connection: String,
    /// `strategy`: `single` (default) or `alternate`.
    pub strategy: Strategy,
    /// `password-length`, 16 to 128 (default 32).
    pub password_length: usize,
    /// `password-alphabet`: `password` (default, [`secret::PASSWORD`]) or
    /// `alphanumeric` ([`secret::ALPHANUMERIC`]).
    pub alphabet: &'static str,
    /// The product-specific part.
    pub flavour: Flavour,
}

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidConfig(message)
}

impl Settings {
    /// Reads the configuration of a `product` provider.
    pub fn parse(product: Product, cfg: &[Field]) -> Result<Self, ProviderError> {
        let connection = config::get(cfg, "connection")
            .unwrap_or(product.name())
            .to_owned();
        if connection.is_empty() {
            return Err(invalid("config connection is empty".into()));
        }
        let strategy = match config::get(cfg, "strategy").unwrap_or("single") {
            "single" => Strategy::Single,
            "alternate" => Strategy::Alternate {
                roles: alternate_roles(cfg)?,
            },
            other => {
                return Err(invalid(format!(
                    "config strategy {other:?} is not single or alternate"
                )))
            }
        };
        let password_length = match config::get(cfg, "password-length") {
            None => DEFAULT_PASSWORD_LENGTH,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (MIN_PASSWORD_LENGTH..=MAX_PASSWORD_LENGTH).contains(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "config password-length {text:?} is not a number from \
                         {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH}"
                    ))
                })?,
        };
        let alphabet = match config::get(cfg, "password-alphabet").unwrap_or("password") {
            "password" => secret::PASSWORD,
            "alphanumeric" => secret::ALPHANUMERIC,
            other => {
                return Err(invalid(format!(
                    "config password-alphabet {other:?} is not password or alphanumeric"
                )))
            }
        };
        let flavour = match product {
            Product::Postgres => Flavour::Postgres {
                hashing: match config::get(cfg, "password-hashing").unwrap_or("scram-sha-256") {
                    "scram-sha-256" => PasswordHashing::ScramSha256,
                    "server" => PasswordHashing::Server,
                    other => {
                        return Err(invalid(format!(
                            "config password-hashing {other:?} is not scram-sha-256 or server"
                        )))
                    }
                },
            },
            Product::Mysql => {
                let host = config::get(cfg, "host").unwrap_or("%");
                if host.is_empty() {
                    return Err(invalid("config host is empty (use % for any host)".into()));
                }
                Flavour::Mysql {
                    host: host.to_owned(),
                }
            }
        };
        Ok(Settings {
            connection,
            strategy,
            password_length,
            alphabet,
            flavour,
        })
    }

    /// The product these settings are for.
    pub fn product(&self) -> Product {
        match self.flavour {
            Flavour::Postgres { .. } => Product::Postgres,
            Flavour::Mysql { .. } => Product::Mysql,
        }
    }
}

/// The two roles of the `alternate` strategy: `roles = "a,b"`, or `username = "app"`
/// for `app_a` and `app_b`.
fn alternate_roles(cfg: &[Field]) -> Result<[String; 2], ProviderError> {
    if let Some(list) = config::get(cfg, "roles") {
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        return match names.as_slice() {
            [a, b] if !a.is_empty() && !b.is_empty() && a != b => {
                Ok([(*a).to_owned(), (*b).to_owned()])
            }
            _ => Err(invalid(format!(
                "config roles {list:?} must name two different roles, like \"app_a,app_b\""
            ))),
        };
    }
    match config::get(cfg, "username") {
        Some(base) if !base.is_empty() => Ok(ROLE_SUFFIXES.map(|s| format!("{base}{s}"))),
        _ => Err(invalid(
            "strategy alternate needs config roles (\"app_a,app_b\") or username (the base \
             name of <username>_a and <username>_b)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(name, value)| Field {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect()
    }

    #[test]
    fn defaults_are_single_32_password_and_the_product_connection() {
        let s = Settings::parse(Product::Mysql, &[]).expect("defaults are valid");
        assert_eq!(s.connection, "mysql");
        assert_eq!(s.strategy, Strategy::Single);
        assert_eq!(s.password_length, 32);
        assert_eq!(s.alphabet, secret::PASSWORD);
        assert_eq!(s.flavour, Flavour::Mysql { host: "%".into() });
        let p = Settings::parse(Product::Postgres, &[]).expect("defaults are valid");
        assert_eq!(
            p.flavour,
            Flavour::Postgres {
                hashing: PasswordHashing::ScramSha256
            }
        );
    }

    #[test]
    fn alternate_takes_roles_or_a_base_username() {
        let s = Settings::parse(
            Product::Postgres,
            &cfg(&[("strategy", "alternate"), ("roles", " blue , green ")]),
        )
        .expect("valid");
        assert_eq!(
            s.strategy,
            Strategy::Alternate {
                roles: ["blue".into(), "green".into()]
            }
        );
        let s = Settings::parse(
            Product::Postgres,
            &cfg(&[("strategy", "alternate"), ("username", "app")]),
        )
        .expect("valid");
        assert_eq!(
            s.strategy,
            Strategy::Alternate {
                roles: ["app_a".into(), "app_b".into()]
            }
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let bad = [
            vec![("strategy", "rolling")],
            vec![("strategy", "alternate")],
            vec![("strategy", "alternate"), ("roles", "same,same")],
            vec![("strategy", "alternate"), ("roles", "one")],
            vec![("strategy", "alternate"), ("roles", "a,b,c")],
            vec![("password-length", "15")],
            vec![("password-length", "129")],
            vec![("password-length", "lots")],
            vec![("password-alphabet", "emoji")],
            vec![("password-hashing", "md5")],
            vec![("connection", "")],
        ];
        for case in bad {
            let key = case.last().map(|(k, _)| *k).unwrap_or_default();
            match Settings::parse(Product::Postgres, &cfg(&case)) {
                Err(ProviderError::InvalidConfig(m)) => {
                    assert!(m.contains(key) || m.contains("roles"), "{m} names {key}");
                }
                other => panic!("{case:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            Settings::parse(Product::Mysql, &cfg(&[("host", "")])),
            Err(ProviderError::InvalidConfig(_))
        ));
    }

    #[test]
    fn accepts_the_length_bounds_and_alphanumeric() {
        for n in ["16", "128"] {
            let s = Settings::parse(
                Product::Mysql,
                &cfg(&[
                    ("password-length", n),
                    ("password-alphabet", "alphanumeric"),
                ]),
            )
            .expect("valid");
            assert_eq!(s.password_length.to_string(), n);
            assert_eq!(s.alphabet, secret::ALPHANUMERIC);
        }
    }
}
