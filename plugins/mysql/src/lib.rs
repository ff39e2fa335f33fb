//! latchkey provider for MySQL and MariaDB account passwords (credential kind
//! `mysql-password`, fields `username` and `password`).
//!
//! The plugin works through a SQL connection the host holds and grants it (config
//! `connection`, default `mysql`); it never sees the admin URL. `validate` logs in
//! with the credential; `create-pending` sets a fresh password with
//! `ALTER USER 'user'@'host' IDENTIFIED BY …`, on the account itself
//! (`strategy = "single"`) or on the other account of a pair (`"alternate"`, which
//! also unlocks it); `retire` locks the previous account of a pair. The account's
//! host part is config `host` (default `%`).
//!
//! The logic lives in `latchkey-sql-rotation` (shared with the `postgres` provider);
//! see README.md for the configuration keys and an agent config.

use latchkey_sql_rotation::Product;

latchkey_sql_rotation::provider! {
    /// The MySQL / MariaDB provider.
    Mysql = Product::Mysql
}
