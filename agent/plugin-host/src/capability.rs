//! The capabilities a plugin may be granted, one file each: [`http`] (wasi:http behind
//! an allow-list), [`sql`] (host-held database connections), [`log`] (guest log ->
//! tracing). Each holds its per-call state in [`crate::state::State`]; `http` and `sql`
//! check their grant there, auditing every denial.

pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod sql;
