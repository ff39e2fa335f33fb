//! What a rotation needs from the plugin host: SQL on one granted connection and
//! randomness.
//!
//! [`Wasi`] is the real one (the `latchkey:provider/sql` import and wasi:random);
//! unit tests use an in-memory fake that behaves like a server with roles, so the
//! rotation logic is tested on the host without a database.

use latchkey_plugin_sdk::sql::{Connection, Dialect, QueryResult, SqlError, Value};
use latchkey_plugin_sdk::{log, secret};

/// SQL on one connection, plus randomness.
pub trait Host {
    /// The connection's dialect.
    fn dialect(&self) -> Result<Dialect, SqlError>;
    /// Runs one statement (prepared when `params` is not empty).
    fn execute(&self, statement: &str, params: &[Value]) -> Result<QueryResult, SqlError>;
    /// Quotes an identifier for the connection's dialect.
    fn quote_identifier(&self, name: &str) -> Result<String, SqlError>;
    /// Quotes a string literal for the connection's dialect.
    fn quote_literal(&self, text: &str) -> Result<String, SqlError>;
    /// Whether `user` / `password` can log in to the connection's server and database.
    fn check_login(&self, user: &str, password: &str) -> Result<bool, SqlError>;
    /// `n` bytes from a CSPRNG.
    fn random_bytes(&self, n: usize) -> Vec<u8>;
    /// Writes an informational message to the host's log (never a secret).
    fn info(&self, message: &str);
}

/// The plugin host, through the SDK: a granted connection and wasi:random.
#[derive(Debug, Clone)]
pub struct Wasi {
    connection: Connection,
}

impl Wasi {
    /// The host's connection `name` (nothing is checked until the first call).
    pub fn new(name: &str) -> Self {
        Self {
            connection: Connection::new(name),
        }
    }
}

impl Host for Wasi {
    fn dialect(&self) -> Result<Dialect, SqlError> {
        self.connection.dialect()
    }

    fn execute(&self, statement: &str, params: &[Value]) -> Result<QueryResult, SqlError> {
        self.connection.execute(statement, params)
    }

    fn quote_identifier(&self, name: &str) -> Result<String, SqlError> {
        self.connection.quote_identifier(name)
    }

    fn quote_literal(&self, text: &str) -> Result<String, SqlError> {
        self.connection.quote_literal(text)
    }

    fn check_login(&self, user: &str, password: &str) -> Result<bool, SqlError> {
        self.connection.check_login(user, password)
    }

    fn random_bytes(&self, n: usize) -> Vec<u8> {
        secret::random_bytes(n)
    }

    fn info(&self, message: &str) {
        log::info(message);
    }
}
