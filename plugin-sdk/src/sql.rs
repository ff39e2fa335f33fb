//! SQL on a connection the host holds (`latchkey:provider/sql`).
//!
//! The plugin names a connection from its grant; it never sees the DSN. Use
//! parameters (`$1` on PostgreSQL, `?` on MySQL) for data, and
//! [`Connection::quote_identifier`] / [`Connection::quote_literal`] for DDL, which
//! cannot take parameters.
//!
//! ```no_run
//! use latchkey_plugin_sdk::sql::{Connection, Value};
//! # fn run() -> Result<(), latchkey_plugin_sdk::ProviderError> {
//! let db = Connection::new("app-admin");
//! let role = db.quote_identifier("app_user")?;
//! let pw = db.quote_literal(&latchkey_plugin_sdk::secret::password(32))?;
//! db.execute(&format!("ALTER ROLE {role} PASSWORD {pw}"), &[])?;
//! let rows = db.execute("SELECT 1 WHERE $1", &[Value::Boolean(true)])?;
//! # Ok(()) }
//! ```

pub use crate::bindings::latchkey::provider::sql::{Dialect, QueryResult, SqlError, Value};

use crate::bindings::latchkey::provider::sql as host;

/// A named connection from the plugin's grant.
#[derive(Debug, Clone)]
pub struct Connection {
    name: String,
}

impl Connection {
    /// Refers to connection `name` (nothing is checked until the first call).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// PostgreSQL or MySQL.
    pub fn dialect(&self) -> Result<Dialect, SqlError> {
        host::connection_dialect(&self.name)
    }

    /// Runs one statement (see the WIT docs for parameters and the simple protocol).
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<QueryResult, SqlError> {
        host::execute(&self.name, statement, params)
    }

    /// Quotes an identifier for this connection's dialect.
    pub fn quote_identifier(&self, name: &str) -> Result<String, SqlError> {
        host::quote_identifier(&self.name, name)
    }

    /// Quotes a string literal for this connection's dialect.
    pub fn quote_literal(&self, text: &str) -> Result<String, SqlError> {
        host::quote_literal(&self.name, text)
    }

    /// Whether `user`/`password` can log in to this connection's server and database.
    pub fn check_login(&self, user: &str, password: &str) -> Result<bool, SqlError> {
        host::check_login(&self.name, user, password)
    }
}
