//! Tenants and placeholders: `{app}` and `{tenant}` never let a tenant app reach a
//! non-tenant app's subtree, or the reverse.
