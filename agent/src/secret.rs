//! Secret values in memory.
//!
//! Every credential byte the agent holds lives in one of these types. They zeroize
//! their memory on drop and print `[REDACTED]` in `Debug`; they have no `Display` and
//! no `Serialize`. The bytes come out only through [`SecretString::expose`] /
//! [`SecretBytes::expose`] (and [`Fields::exposed`], a serializer view that writes the
//! values in clear), and `git grep 'expose('` reads as the list of places where a
//! value leaves the agent on purpose: a response body, a sealed record, an upstream
//! write, a rendered file, a child's environment.
//!
//! The types are defined in the `latchkey-secret` crate, shared with the plugin host
//! (whose `SecretString` is the same type), and re-exported here.

pub use latchkey_secret::{ExposedFields, Fields, SecretBytes, SecretString};
