//! latchkey provider for PostgreSQL role passwords (credential kind `postgres-password`,
//! fields `username` and `password`).
//!
//! The plugin works through a SQL connection the host holds and grants it (config
//! `connection`, default `postgres`); it never sees the admin URL. `validate` logs in
//! with the credential; `create-pending` sets a fresh password with `ALTER ROLE`, on
//! the role itself (`strategy = "single"`) or on the other role of a pair
//! (`"alternate"`); `retire` disables the previous role of a pair. By default the
//! plugin sends PostgreSQL the SCRAM-SHA-256 verifier rather than the password, so
//! the password never appears in the server's statement log.
//!
//! The logic lives in `latchkey-sql-rotation` (shared with the `mysql` provider);
//! see README.md for the configuration keys and an agent config.

use latchkey_sql_rotation::Product;

latchkey_sql_rotation::provider! {
    /// The PostgreSQL provider.
    Postgres = Product::Postgres
}
