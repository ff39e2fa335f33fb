//! The API's audit records, built in one place: who asked for what, and how it
//! ended. Denials go through [`deny`], which counts them and coalesces a flood of
//! like ones; admin-only routes check through [`admin_only`].

use super::{ApiError, Conn, State};
use crate::audit::{Outcome, Record};
use crate::path::SecretPath;
use crate::policy::{Decision, Operation};

/// A record of `op` on `what` by this connection's peer, stamped now (outcome ok).
pub(super) fn record(conn: &Conn, op: &'static str, what: Option<&str>) -> Record {
    Record::now(conn.peer.id.clone(), conn.peer.uid, op, what)
}

/// Marks `record` as failed with `err`'s status and code.
pub(super) fn failed(record: &mut Record, err: &ApiError) {
    record.outcome = Outcome::Failed;
    record.status = err.status.as_u16();
    record.code = Some(err.code.as_str());
}

/// Lets `op` on `path` through, or denies it (403, audited).
pub(super) async fn authorize(
    state: &State,
    conn: &Conn,
    op: Operation,
    path: &SecretPath,
) -> Result<(), ApiError> {
    if conn.policy().check(&conn.peer, op, path) == Decision::Allow {
        return Ok(());
    }
    let err = ApiError::forbidden(op.as_str(), path.as_str());
    deny(state, conn, op, path.as_str(), &err).await;
    Err(err)
}

/// Lets the request through when the caller may administer anything, or denies it:
/// the 403 says the caller may not `verb` `object`; the record names `audited_as`.
pub(super) async fn admin_only(
    state: &State,
    conn: &Conn,
    verb: &str,
    object: &str,
    audited_as: &str,
) -> Result<(), ApiError> {
    if conn.policy().allows_any(Operation::Admin) {
        return Ok(());
    }
    let err = ApiError::forbidden(verb, object);
    deny(state, conn, Operation::Admin, audited_as, &err).await;
    Err(err)
}

/// Records a denial (coalesced with like ones) and counts it.
pub(super) async fn deny(state: &State, conn: &Conn, op: Operation, what: &str, err: &ApiError) {
    let mut denied = record(conn, op.as_str(), Some(what));
    denied.outcome = Outcome::Denied;
    denied.status = err.status.as_u16();
    denied.code = Some(err.code.as_str());
    state.metrics.denial(op.as_str());
    state.audit.record_coalesced(denied).await;
}
