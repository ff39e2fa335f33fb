//! Secret values crossing the plugin boundary.
//!
//! [`SecretString`] comes from the `latchkey-secret` crate, shared with the agent (so
//! this crate does not depend on the agent, and both use the same type): zeroized on
//! drop, `Debug` prints `[REDACTED]`, no `Display`, no `Serialize`. Credential field
//! values enter a plugin call through this type and come back out of it in this type;
//! the plain `String`s the component model needs exist only for the duration of the
//! call and are wiped afterwards.

pub use latchkey_secret::SecretString;
