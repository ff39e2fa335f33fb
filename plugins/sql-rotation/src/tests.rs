//! Unit tests of the rotation logic against an in-memory host: which role is picked,
//! which statements run (and which do not), the retire guard, and that no error
//! carries a password. The real servers are exercised by `tests/e2e/providers/databases.rs`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use latchkey_plugin_sdk::sql::{Dialect, QueryResult, SqlError, Value};
use latchkey_plugin_sdk::{secret, Credential, Field, ProviderError};

use crate::host::Host;
use crate::rotation::{create_pending, retire, scrub, validate};
use crate::settings::Product;

/// A server with roles that checks logins against the passwords the test sets; it
/// records statements instead of interpreting them.
struct Fake {
    dialect: Dialect,
    /// role → password it accepts (`None`: exists but refuses every login).
    roles: BTreeMap<String, Option<String>>,
    /// What `check-login` answers when it is not decided by `roles`.
    login_error: Option<SqlError>,
    /// Makes every statement without parameters fail, given its text.
    fail_ddl: Option<fn(&str) -> SqlError>,
    executed: RefCell<Vec<String>>,
    logs: RefCell<Vec<String>>,
    counter: Cell<u8>,
}

impl Fake {
    fn new(dialect: Dialect, roles: &[(&str, Option<&str>)]) -> Self {
        Self {
            dialect,
            roles: roles
                .iter()
                .map(|(r, p)| ((*r).to_owned(), p.map(str::to_owned)))
                .collect(),
            login_error: None,
            fail_ddl: None,
            executed: RefCell::new(Vec::new()),
            logs: RefCell::new(Vec::new()),
            counter: Cell::new(0),
        }
    }

    fn ddl(&self) -> Vec<String> {
        self.executed
            .borrow()
            .iter()
            .filter(|s| !s.starts_with("SELECT"))
            .cloned()
            .collect()
    }
}

impl Host for &Fake {
    fn dialect(&self) -> Result<Dialect, SqlError> {
        Ok(self.dialect)
    }

    fn execute(&self, statement: &str, params: &[Value]) -> Result<QueryResult, SqlError> {
        self.executed.borrow_mut().push(statement.to_owned());
        let mut result = QueryResult {
            columns: Vec::new(),
            rows: Vec::new(),
            rows_affected: 0,
        };
        if statement.starts_with("SELECT 1 FROM") {
            if let Some(Value::Text(role)) = params.first() {
                if self.roles.contains_key(role) {
                    result.columns.push("?column?".into());
                    result.rows.push(vec![Value::Int(1)]);
                }
            }
            return Ok(result);
        }
        match self.fail_ddl {
            Some(fail) => Err(fail(statement)),
            None => Ok(result),
        }
    }

    fn quote_identifier(&self, name: &str) -> Result<String, SqlError> {
        Ok(match self.dialect {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        })
    }

    fn quote_literal(&self, text: &str) -> Result<String, SqlError> {
        Ok(match self.dialect {
            Dialect::Postgres => format!("'{}'", text.replace('\'', "''")),
            Dialect::Mysql => format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''")),
        })
    }

    fn check_login(&self, user: &str, password: &str) -> Result<bool, SqlError> {
        if let Some(e) = &self.login_error {
            return Err(e.clone());
        }
        Ok(self
            .roles
            .get(user)
            .is_some_and(|p| p.as_deref() == Some(password)))
    }

    fn random_bytes(&self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.counter.set(self.counter.get().wrapping_add(37));
                self.counter.get()
            })
            .collect()
    }

    fn info(&self, message: &str) {
        self.logs.borrow_mut().push(message.to_owned());
    }
}

fn cfg(pairs: &[(&str, &str)]) -> Vec<Field> {
    pairs
        .iter()
        .map(|(name, value)| Field {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect()
}

fn cred(kind: &str, user: &str, password: &str) -> Credential {
    Credential::new(
        kind,
        [
            ("username", user.to_owned()),
            ("password", password.to_owned()),
            ("database", "billing".to_owned()),
        ],
    )
}

const PG: &str = "postgres-password";
const MY: &str = "mysql-password";

#[test]
fn single_postgres_sends_a_scram_verifier_not_the_password() {
    let fake = Fake::new(Dialect::Postgres, &[("app", Some("old-password"))]);
    let new = create_pending(
        Product::Postgres,
        &[],
        &cred(PG, "app", "old-password"),
        |_| &fake,
    )
    .expect("rotates");
    let password = new.field("password").expect("has a password");
    assert_eq!(new.field("username"), Some("app"));
    assert_eq!(
        new.field("database"),
        Some("billing"),
        "other fields are kept"
    );
    assert_eq!(new.kind, PG);
    assert_eq!(password.chars().count(), 32);
    assert!(password.chars().all(|c| secret::PASSWORD.contains(c)));
    let ddl = fake.ddl();
    assert_eq!(ddl.len(), 1);
    assert!(
        ddl[0].starts_with("ALTER ROLE \"app\" WITH PASSWORD 'SCRAM-SHA-256$4096:"),
        "{}",
        ddl[0]
    );
    assert!(!ddl[0].contains(password));
}

#[test]
fn single_postgres_with_server_hashing_sends_the_password_literal() {
    let fake = Fake::new(Dialect::Postgres, &[("app", None)]);
    let new = create_pending(
        Product::Postgres,
        &cfg(&[("password-hashing", "server"), ("password-length", "16")]),
        &cred(PG, "app", "x"),
        |_| &fake,
    )
    .expect("rotates");
    let password = new.field("password").expect("has a password");
    assert_eq!(password.len(), 16);
    assert_eq!(
        fake.ddl(),
        vec![format!("ALTER ROLE \"app\" WITH PASSWORD '{password}'")]
    );
}

#[test]
fn alternate_mysql_sets_the_other_account_and_unlocks_it() {
    let fake = Fake::new(Dialect::Mysql, &[("app_a", Some("pw-a")), ("app_b", None)]);
    let config = cfg(&[
        ("strategy", "alternate"),
        ("username", "app"),
        ("host", "10.0.%"),
        ("password-alphabet", "alphanumeric"),
    ]);
    let new = create_pending(Product::Mysql, &config, &cred(MY, "app_a", "pw-a"), |_| {
        &fake
    })
    .expect("rotates");
    let password = new.field("password").expect("has a password");
    assert_eq!(new.field("username"), Some("app_b"));
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(
        fake.ddl(),
        vec![format!(
            "ALTER USER `app_b`@`10.0.%` IDENTIFIED BY '{password}' ACCOUNT UNLOCK"
        )]
    );
    // And back: from app_b the pending role is app_a.
    let back = create_pending(Product::Mysql, &config, &new, |_| &fake).expect("rotates");
    assert_eq!(back.field("username"), Some("app_a"));
}

#[test]
fn alternate_postgres_logs_the_other_role_in_again() {
    let fake = Fake::new(Dialect::Postgres, &[("blue", None), ("green", None)]);
    let config = cfg(&[("strategy", "alternate"), ("roles", "blue,green")]);
    let new = create_pending(Product::Postgres, &config, &cred(PG, "green", "g"), |_| {
        &fake
    })
    .expect("rotates");
    assert_eq!(new.field("username"), Some("blue"));
    let ddl = fake.ddl();
    assert!(
        ddl[0].starts_with("ALTER ROLE \"blue\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$"),
        "{}",
        ddl[0]
    );
}

#[test]
fn missing_roles_and_strangers_change_nothing() {
    let fake = Fake::new(Dialect::Postgres, &[("app_a", Some("pw"))]);
    let alternate = cfg(&[("strategy", "alternate"), ("username", "app")]);
    let missing_other = create_pending(
        Product::Postgres,
        &alternate,
        &cred(PG, "app_a", "pw"),
        |_| &fake,
    );
    assert!(
        matches!(&missing_other, Err(ProviderError::InvalidConfig(m)) if m.contains("app_b")),
        "{missing_other:?}"
    );
    let stranger = create_pending(
        Product::Postgres,
        &alternate,
        &cred(PG, "root", "pw"),
        |_| &fake,
    );
    assert!(matches!(stranger, Err(ProviderError::InvalidConfig(_))));
    let missing_single =
        create_pending(Product::Postgres, &[], &cred(PG, "ghost", "pw"), |_| &fake);
    assert!(
        matches!(&missing_single, Err(ProviderError::Rejected(m)) if m.contains("ghost")),
        "{missing_single:?}"
    );
    assert!(fake.ddl().is_empty(), "no ALTER ran: {:?}", fake.ddl());
}

#[test]
fn a_failed_alter_reports_the_server_without_the_password() {
    let mut fake = Fake::new(Dialect::Mysql, &[("app", Some("old"))]);
    // MySQL quotes (a truncated part of) the statement in syntax errors.
    fake.fail_ddl = Some(|statement| {
        let near: String = statement.chars().skip(30).take(20).collect();
        SqlError::Failed(format!("You have an error near '{near}' at line 1"))
    });
    let failed = create_pending(Product::Mysql, &[], &cred(MY, "app", "old"), |_| &fake);
    let Err(ProviderError::Rejected(detail)) = failed else {
        panic!("expected rejected, got {failed:?}");
    };
    let statement = fake.ddl().pop().expect("the ALTER ran");
    let password = statement
        .split('\'')
        .nth(1)
        .expect("the literal")
        .to_owned();
    assert!(!detail.contains(&password[..SCRUB_TEST_WINDOW]), "{detail}");
    assert!(detail.contains("withheld"), "{detail}");
}

const SCRUB_TEST_WINDOW: usize = 6;

#[test]
fn scrub_removes_whole_and_partial_secrets() {
    assert_eq!(
        scrub("bad 'hunter2hunter2' here", &["hunter2hunter2"]),
        "bad '[redacted]' here"
    );
    assert_eq!(
        scrub("near 'hunter2hun", &["hunter2hunter2"]),
        "the server's message quoted the statement and was withheld"
    );
    assert_eq!(
        scrub("role \"app\" does not exist", &["hunter2hunter2"]),
        "role \"app\" does not exist"
    );
}

#[test]
fn retire_single_touches_nothing() {
    let fake = Fake::new(Dialect::Postgres, &[("app", Some("pw"))]);
    retire(Product::Postgres, &[], &cred(PG, "app", "pw"), |_| &fake).expect("retires");
    assert!(fake.executed.borrow().is_empty());
}

#[test]
fn retire_alternate_disables_only_a_role_that_still_takes_the_old_password() {
    let config = cfg(&[("strategy", "alternate"), ("username", "app")]);
    // Still accepts the previous password: disabled.
    let fake = Fake::new(
        Dialect::Postgres,
        &[("app_a", Some("old")), ("app_b", None)],
    );
    retire(
        Product::Postgres,
        &config,
        &cred(PG, "app_a", "old"),
        |_| &fake,
    )
    .expect("retires");
    assert_eq!(
        fake.ddl(),
        vec!["ALTER ROLE \"app_a\" WITH NOLOGIN PASSWORD NULL".to_owned()]
    );
    // Has another password by now (a later rotation re-enabled it): left alone.
    let fake = Fake::new(Dialect::Postgres, &[("app_a", Some("newer"))]);
    retire(
        Product::Postgres,
        &config,
        &cred(PG, "app_a", "old"),
        |_| &fake,
    )
    .expect("already retired");
    assert!(fake.ddl().is_empty());
    // Gone: success.
    let fake = Fake::new(Dialect::Mysql, &[]);
    retire(Product::Mysql, &config, &cred(MY, "app_b", "old"), |_| {
        &fake
    })
    .expect("gone");
    assert!(fake.ddl().is_empty());
    // Not one of the pair: refused, nothing disabled.
    let fake = Fake::new(Dialect::Mysql, &[("root", Some("old"))]);
    let refused = retire(Product::Mysql, &config, &cred(MY, "root", "old"), |_| &fake);
    assert!(matches!(refused, Err(ProviderError::InvalidConfig(_))));
    assert!(fake.executed.borrow().is_empty());
}

#[test]
fn retire_alternate_mysql_locks_with_a_throwaway_password() {
    let config = cfg(&[("strategy", "alternate"), ("roles", "a,b")]);
    let mut fake = Fake::new(Dialect::Mysql, &[("b", Some("old"))]);
    // A locked account answers with a non-auth error: still disabled (idempotent).
    fake.login_error = Some(SqlError::Failed(
        "Access denied, this account is locked".into(),
    ));
    retire(Product::Mysql, &config, &cred(MY, "b", "old"), |_| &fake).expect("retires");
    let ddl = fake.ddl();
    assert_eq!(ddl.len(), 1);
    assert!(ddl[0].starts_with("ALTER USER `b`@`%` IDENTIFIED BY '"));
    assert!(ddl[0].ends_with("' ACCOUNT LOCK"));
}

#[test]
fn validate_answers_valid_invalid_or_unavailable() {
    let fake = Fake::new(Dialect::Postgres, &[("app", Some("right"))]);
    let good =
        validate(Product::Postgres, &[], &cred(PG, "app", "right"), |_| &fake).expect("answers");
    assert!(good.valid);
    let bad =
        validate(Product::Postgres, &[], &cred(PG, "app", "wrong"), |_| &fake).expect("answers");
    assert!(!bad.valid);
    assert!(!bad.detail.contains("wrong"));

    let mut locked = Fake::new(Dialect::Mysql, &[]);
    locked.login_error = Some(SqlError::Failed("account of secret-pw is locked".into()));
    let answer = validate(Product::Mysql, &[], &cred(MY, "app", "secret-pw"), |_| {
        &locked
    })
    .expect("answers");
    assert!(!answer.valid);
    assert!(!answer.detail.contains("secret-pw"), "{}", answer.detail);

    let mut down = Fake::new(Dialect::Mysql, &[]);
    down.login_error = Some(SqlError::Unavailable("database unreachable".into()));
    assert!(matches!(
        validate(Product::Mysql, &[], &cred(MY, "app", "pw"), |_| &down),
        Err(ProviderError::Unavailable(_))
    ));
}

#[test]
fn wrong_kind_or_dialect_is_refused_before_any_statement() {
    let fake = Fake::new(Dialect::Mysql, &[("app", Some("pw"))]);
    assert!(matches!(
        create_pending(Product::Postgres, &[], &cred(PG, "app", "pw"), |_| &fake),
        Err(ProviderError::InvalidConfig(m)) if m.contains("not a postgres connection")
    ));
    assert!(matches!(
        validate(Product::Mysql, &[], &cred(PG, "app", "pw"), |_| &fake),
        Err(ProviderError::Unsupported(_))
    ));
    assert!(fake.executed.borrow().is_empty());
}

#[test]
fn info_lists_the_kind_operations_and_default_connection() {
    let info = crate::info(Product::Mysql, "0.1.0");
    assert_eq!(info.name, "mysql");
    assert_eq!(info.kinds, vec!["mysql-password".to_owned()]);
    assert_eq!(info.operations.len(), 3);
    assert_eq!(info.sql_connections, vec!["mysql".to_owned()]);
}
