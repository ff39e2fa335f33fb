//! Revocation reaches connections that were open before it: keep-alive
//! connections and watch streams of a revoked certificate are closed.
