//! `latchkey:provider/sql`: SQL on database connections the host holds.
//!
//! Connections are defined in the host configuration ([`SqlConnectionConfig`]: a name,
//! a dialect and an administrative URL the plugin never sees) and opened lazily as a
//! small pool on first use. A plugin names a connection; the call fails with
//! `sql-error.denied` (and an audit record) unless the plugin's grant lists it. Every
//! statement is bounded by the call's deadline. Parameter values and passwords are
//! never logged; server error messages are passed to the guest as they are.
//!
//! One call runs one statement. Every statement, with parameters or without, goes
//! through the server's prepared-statement path (PostgreSQL's extended protocol,
//! MySQL's `COM_STMT_PREPARE`, unnamed and not cached), where the server itself
//! refuses more than one statement: so a literal that was quoted wrongly, or text
//! pasted into DDL, cannot append a second statement to the admin connection's
//! call. DDL (`CREATE ROLE … PASSWORD '…'`) takes no parameters; the guest builds it
//! with [`quote_identifier`] / [`quote_literal`].
//!
//! Quoting does not depend on session settings the server or a DSN may choose:
//! PostgreSQL literals holding a backslash are written `E'…'` with the backslash
//! escaped, which reads the same whatever `standard_conforming_strings` says. The
//! session settings quoting does depend on are pinned on every connection when it
//! is opened: `client_encoding` UTF8 on PostgreSQL; on MySQL the connection
//! character set utf8mb4 (`SET NAMES`) and `NO_BACKSLASH_ESCAPES` off, checked after
//! being set. A connection that cannot be pinned is not used. A connection serves
//! one call and is closed when the call returns, so nothing one call leaves in its
//! session (a `SET`, a role, a temporary table, an open transaction) reaches the
//! next. Statement text (which may carry a quoted password) is never logged, by
//! sqlx either.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use serde::Deserialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Column, ConnectOptions, Connection, Either, Executor, Row};

use crate::audit::{AuditEvent, AuditSink, Capability, DenyReason};
use crate::bindings::sql::{self as wit, QueryResult, SqlError, Value};
use crate::secret::SecretString;
use crate::state::State;

/// Database flavour of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

/// One named connection in the host configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct SqlConnectionConfig {
    /// The name plugins use.
    pub name: String,
    /// PostgreSQL or MySQL/MariaDB.
    pub dialect: Dialect,
    /// `postgres://user:pass@host:port/db` or `mysql://…`. Secret: the plugin never
    /// sees it, and it is never logged.
    pub url: SecretString,
    /// Pool size (default 2).
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    2
}

enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

struct NamedConnection {
    config: SqlConnectionConfig,
    pool: OnceLock<Result<Pool, String>>,
}

/// All configured connections, shared by every plugin of one host.
#[derive(Default)]
pub(crate) struct SqlConnections {
    by_name: HashMap<String, NamedConnection>,
}

impl SqlConnections {
    pub(crate) fn new(configs: Vec<SqlConnectionConfig>) -> Self {
        let by_name = configs
            .into_iter()
            .map(|c| {
                (
                    c.name.clone(),
                    NamedConnection {
                        config: c,
                        pool: OnceLock::new(),
                    },
                )
            })
            .collect();
        Self { by_name }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// Per-call SQL state: which connections this plugin may use.
pub(crate) struct SqlAccess {
    pub(crate) connections: Arc<SqlConnections>,
    pub(crate) granted: Arc<[String]>,
    pub(crate) audit: Arc<dyn AuditSink>,
}

impl State {
    fn connection(&self, name: &str) -> Result<&NamedConnection, SqlError> {
        let found = self
            .sql
            .granted
            .iter()
            .any(|g| g == name)
            .then(|| self.sql.connections.by_name.get(name))
            .flatten();
        found.ok_or_else(|| {
            self.sql.audit.record(AuditEvent {
                plugin: self.plugin.to_string(),
                capability: Capability::Sql,
                target: name.to_owned(),
                reason: DenyReason::ConnectionNotGranted,
                resolved: Vec::new(),
            });
            SqlError::Denied(format!("connection {name} is not granted"))
        })
    }

    /// Runs `fut` on the host's tokio runtime, bounded by the call's deadline.
    fn block<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let run = async move {
            tokio::time::timeout(remaining, fut)
                .await
                .unwrap_or_else(|_| Err(SqlError::Unavailable("deadline exceeded".into())))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(run),
            Err(_) => Err(SqlError::Unavailable("no async runtime".into())),
        }
    }
}

fn pool(conn: &NamedConnection) -> Result<&Pool, SqlError> {
    let made = conn.pool.get_or_init(|| {
        let url = conn.config.url.expose();
        let size = conn.config.max_connections.max(1);
        let acquire = Duration::from_secs(10);
        match conn.config.dialect {
            Dialect::Postgres => PgConnectOptions::from_str(url)
                .map(|o| {
                    Pool::Postgres(
                        PgPoolOptions::new()
                            .max_connections(size)
                            .acquire_timeout(acquire)
                            .after_connect(|c, _| pin_postgres(c))
                            .after_release(|_, _| one_call_per_session())
                            .connect_lazy_with(o.disable_statement_logging()),
                    )
                })
                .map_err(|_| "connection url is not valid".to_owned()),
            Dialect::Mysql => MySqlConnectOptions::from_str(url)
                .map(|o| {
                    Pool::Mysql(
                        MySqlPoolOptions::new()
                            .max_connections(size)
                            .acquire_timeout(acquire)
                            .after_connect(|c, _| pin_mysql(c))
                            .after_release(|_, _| one_call_per_session())
                            .connect_lazy_with(
                                o.charset(MYSQL_CHARSET)
                                    .set_names(true)
                                    .disable_statement_logging(),
                            ),
                    )
                })
                .map_err(|_| "connection url is not valid".to_owned()),
        }
    });
    made.as_ref().map_err(|e| SqlError::Unavailable(e.clone()))
}

/// Closes every connection when its call returns: a session serves one call. What a
/// call leaves in its session (a `SET ROLE`, a temporary table, a user variable, an
/// open transaction, a changed `sql_mode`) would otherwise be seen by the next
/// plugin's call, and no statement resets all of it on MariaDB (sqlx sends no
/// `COM_RESET_CONNECTION`). The pool still bounds how many run at once; calls are
/// rotation steps, not a hot path.
fn one_call_per_session() -> BoxFuture<'static, Result<bool, sqlx::Error>> {
    Box::pin(async { Ok(false) })
}

/// The character set every MySQL connection is pinned to: what the guest's UTF-8
/// text is, and one in which no multi-byte character contains a `'` or `\` byte.
const MYSQL_CHARSET: &str = "utf8mb4";

/// Pins `client_encoding` (sqlx asks for UTF8 at startup; a DSN's `options` or an
/// earlier call's `SET` could change it).
fn pin_postgres(c: &mut PgConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        c.execute("SET client_encoding TO 'UTF8'").await?;
        Ok(())
    })
}

/// Pins the connection character set and turns `NO_BACKSLASH_ESCAPES` off, then
/// checks that both hold: [`quote_literal`] escapes backslashes.
fn pin_mysql(c: &mut MySqlConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(pin_mysql_session(c))
}

async fn pin_mysql_session(c: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    c.execute(
        "SET NAMES utf8mb4, \
         SESSION sql_mode = (SELECT REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', ''))",
    )
    .await?;
    let row = sqlx::query(
        "SELECT @@SESSION.character_set_client, @@SESSION.character_set_connection, \
         @@SESSION.sql_mode",
    )
    .persistent(false)
    .fetch_one(&mut *c)
    .await?;
    let client: String = row.try_get(0)?;
    let connection: String = row.try_get(1)?;
    let mode: String = row.try_get(2)?;
    if client != MYSQL_CHARSET || connection != MYSQL_CHARSET {
        return Err(sqlx::Error::Configuration(
            format!("the connection character set is {client}/{connection}, not {MYSQL_CHARSET}")
                .into(),
        ));
    }
    if mode
        .split(',')
        .any(|m| m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"))
    {
        return Err(sqlx::Error::Configuration(
            "NO_BACKSLASH_ESCAPES cannot be turned off".into(),
        ));
    }
    Ok(())
}

fn map_err(e: sqlx::Error) -> SqlError {
    match e {
        sqlx::Error::Database(db) => SqlError::Failed(db.message().to_owned()),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => SqlError::Unavailable("database unreachable".into()),
        // Our own message from pinning a new connection's session (no secret in it).
        sqlx::Error::Configuration(e) => {
            SqlError::Unavailable(format!("connection could not be set up: {e}"))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            SqlError::Failed("cannot decode a result column".into())
        }
        _ => SqlError::Failed("statement failed".into()),
    }
}

/// Whether a login failure is the server refusing the credentials (SQLSTATE class 28).
fn is_auth_refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("28")),
        _ => false,
    }
}

/// Decodes one cell by trying the Rust types the driver can produce, in order.
macro_rules! cell {
    ($row:expr, $i:expr, $( $ty:ty => $wrap:expr ),+ $(,)?) => {{
        let row = $row;
        let i = $i;
        'found: {
            $(
                if let Ok(v) = row.try_get::<Option<$ty>, _>(i) {
                    break 'found match v {
                        Some(v) => $wrap(v),
                        None => Value::Null,
                    };
                }
            )+
            Value::Null
        }
    }};
}

fn pg_cell(row: &sqlx::postgres::PgRow, i: usize) -> Value {
    cell!(row, i,
        String => Value::Text,
        i64 => Value::Int,
        i32 => |v: i32| Value::Int(v.into()),
        i16 => |v: i16| Value::Int(v.into()),
        bool => Value::Boolean,
        f64 => Value::Float,
        f32 => |v: f32| Value::Float(v.into()),
        Vec<u8> => Value::Bytes,
    )
}

fn my_cell(row: &sqlx::mysql::MySqlRow, i: usize) -> Value {
    cell!(row, i,
        String => Value::Text,
        i64 => Value::Int,
        u64 => |v: u64| i64::try_from(v).map_or_else(|_| Value::Text(v.to_string()), Value::Int),
        bool => Value::Boolean,
        f64 => Value::Float,
        f32 => |v: f32| Value::Float(v.into()),
        Vec<u8> => Value::Bytes,
    )
}

/// Collects a stream of results and rows into a [`QueryResult`].
macro_rules! collect {
    ($stream:expr, $cell:path) => {{
        let mut stream = $stream;
        let mut out = QueryResult {
            columns: Vec::new(),
            rows: Vec::new(),
            rows_affected: 0,
        };
        while let Some(item) = stream.try_next().await.map_err(map_err)? {
            match item {
                Either::Left(done) => out.rows_affected += done.rows_affected(),
                Either::Right(row) => {
                    if out.columns.is_empty() {
                        out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                    }
                    out.rows
                        .push((0..row.len()).map(|i| $cell(&row, i)).collect());
                }
            }
        }
        Ok::<QueryResult, SqlError>(out)
    }};
}

macro_rules! bind_all {
    ($query:expr, $params:expr) => {{
        let mut q = $query;
        for p in $params {
            q = match p {
                Value::Null => q.bind(None::<String>),
                Value::Boolean(b) => q.bind(b),
                Value::Int(i) => q.bind(i),
                Value::Float(f) => q.bind(f),
                Value::Text(s) => q.bind(s),
                Value::Bytes(b) => q.bind(b),
            };
        }
        q
    }};
}

/// Runs `statement` as one prepared (unnamed, uncached) statement: the server refuses
/// a statement string that holds more than one.
#[allow(deprecated)] // `Query::fetch_many`: one statement, but we want rows *and* counts
async fn run(pool: &Pool, statement: &str, params: Vec<Value>) -> Result<QueryResult, SqlError> {
    match pool {
        Pool::Postgres(p) => {
            collect!(
                bind_all!(sqlx::query(statement).persistent(false), params).fetch_many(p),
                pg_cell
            )
        }
        Pool::Mysql(p) => {
            collect!(
                bind_all!(sqlx::query(statement).persistent(false), params).fetch_many(p),
                my_cell
            )
        }
    }
}

async fn check_login(
    config: &SqlConnectionConfig,
    user: &str,
    password: &str,
) -> Result<bool, SqlError> {
    let bad_url = || SqlError::Unavailable("connection url is not valid".into());
    let url = config.url.expose();
    let result = match config.dialect {
        Dialect::Postgres => {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|_| bad_url())?
                .username(user)
                .password(password);
            match PgConnection::connect_with(&opts).await {
                Ok(c) => {
                    // Logged in; a failed goodbye does not change that.
                    let _ = c.close().await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Dialect::Mysql => {
            let opts = MySqlConnectOptions::from_str(url)
                .map_err(|_| bad_url())?
                .username(user)
                .password(password);
            match MySqlConnection::connect_with(&opts).await {
                Ok(c) => {
                    // Logged in; a failed goodbye does not change that.
                    let _ = c.close().await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_auth_refused(&e) => Ok(false),
        Err(e) => Err(map_err(e)),
    }
}

/// Quotes an identifier for `dialect`. Refuses NUL bytes (no dialect allows them).
pub fn quote_identifier(dialect: Dialect, name: &str) -> Option<String> {
    if name.contains('\0') {
        return None;
    }
    Some(match dialect {
        Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
        Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
    })
}

/// Quotes a string literal for `dialect`. Refuses NUL bytes.
///
/// PostgreSQL: quotes doubled; text holding a backslash is written as an escape
/// string, `E'…'` with the backslash doubled, so the literal reads the same whether
/// `standard_conforming_strings` is on or off (without a backslash, `'…'` already
/// does). MySQL: quotes doubled and backslashes escaped, which is exact on the
/// host's connections: they are pinned to utf8mb4 with `NO_BACKSLASH_ESCAPES` off.
pub fn quote_literal(dialect: Dialect, text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    Some(match dialect {
        Dialect::Postgres if text.contains('\\') => {
            format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
        }
        Dialect::Postgres => format!("'{}'", text.replace('\'', "''")),
        Dialect::Mysql => format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''")),
    })
}

impl wit::Host for State {
    fn connection_dialect(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<wit::Dialect, SqlError>> {
        Ok(self
            .connection(&connection)
            .map(|c| match c.config.dialect {
                Dialect::Postgres => wit::Dialect::Postgres,
                Dialect::Mysql => wit::Dialect::Mysql,
            }))
    }

    fn execute(
        &mut self,
        connection: String,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, SqlError>> {
        let conn = match self.connection(&connection) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        tracing::debug!(plugin = %self.plugin, connection = %connection, params = params.len(), "plugin sql statement");
        Ok(self.block(async {
            let pool = pool(conn)?;
            run(pool, &statement, params).await
        }))
    }

    fn quote_identifier(
        &mut self,
        connection: String,
        name: String,
    ) -> wasmtime::Result<Result<String, SqlError>> {
        Ok(self.connection(&connection).and_then(|c| {
            quote_identifier(c.config.dialect, &name)
                .ok_or_else(|| SqlError::Invalid("identifier contains a NUL byte".into()))
        }))
    }

    fn quote_literal(
        &mut self,
        connection: String,
        text: String,
    ) -> wasmtime::Result<Result<String, SqlError>> {
        Ok(self.connection(&connection).and_then(|c| {
            quote_literal(c.config.dialect, &text)
                .ok_or_else(|| SqlError::Invalid("literal contains a NUL byte".into()))
        }))
    }

    fn check_login(
        &mut self,
        connection: String,
        user: String,
        password: String,
    ) -> wasmtime::Result<Result<bool, SqlError>> {
        let password = SecretString::new(password);
        let conn = match self.connection(&connection) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.block(check_login(&conn.config, &user, password.expose())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(
            quote_identifier(Dialect::Postgres, "a\"b").as_deref(),
            Some("\"a\"\"b\"")
        );
        assert_eq!(
            quote_identifier(Dialect::Mysql, "a`b").as_deref(),
            Some("`a``b`")
        );
        assert_eq!(
            quote_literal(Dialect::Postgres, "it's").as_deref(),
            Some("'it''s'")
        );
        assert_eq!(
            quote_literal(Dialect::Mysql, "it's \\").as_deref(),
            Some("'it''s \\\\'")
        );
        assert_eq!(quote_literal(Dialect::Mysql, "a\0"), None);
        assert_eq!(quote_literal(Dialect::Postgres, "a\0"), None);
    }

    #[test]
    fn r15_a_postgres_literal_with_a_backslash_is_an_escape_string() {
        // `'…\'` would end the literal early with standard_conforming_strings off.
        assert_eq!(
            quote_literal(Dialect::Postgres, "it's \\").as_deref(),
            Some("E'it''s \\\\'")
        );
        assert_eq!(
            quote_literal(Dialect::Postgres, "\\'; DROP ROLE x; --").as_deref(),
            Some("E'\\\\''; DROP ROLE x; --'")
        );
        // No backslash: the plain form, the same under either setting.
        assert_eq!(
            quote_literal(Dialect::Postgres, "SCRAM-SHA-256$4096:c2FsdA==$a:b").as_deref(),
            Some("'SCRAM-SHA-256$4096:c2FsdA==$a:b'")
        );
    }
}
