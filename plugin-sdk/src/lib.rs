//! Write latchkey provider plugins in Rust.
//!
//! A provider is a WebAssembly component that exports the `latchkey:provider/provider`
//! interface from `wit/`. This crate gives a plugin author:
//!
//! - the generated [`bindings`] and short names for the contract's types
//!   ([`Credential`], [`Validation`], [`ProviderError`], …) and the [`Provider`] trait;
//! - [`export!`], which turns a type implementing [`Provider`] into the component's
//!   export;
//! - [`http`]: one HTTP client over wasi:http with JSON helpers;
//! - [`sign`]: HMAC-SHA256/512 with hex and base64 output, for request signing;
//! - [`secret`]: passwords and tokens from the host's randomness;
//! - [`sql`] and [`log`]: the host's SQL capability and logging;
//! - [`time`]: the host's clock as Unix time, RFC 3339 and HTTP `Date` parsing;
//! - [`validate`]: check an API key with one authenticated request and sort the
//!   answer into valid / refused / unavailable, with service text redacted;
//! - [`unsupported!`]: the operations a provider does not offer, in one line each;
//! - error conversions so `?` turns HTTP and SQL failures into the right
//!   [`ProviderError`] (denied, unavailable, rejected);
//! - with the `testing` feature (host side), a harness that runs a built plugin
//!   in-process on the real host.
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the output is a
//! component. See `README.md` for a complete example.
//!
//! ```no_run
//! use latchkey_plugin_sdk::{config, Credential, Field, Operation, Provider, ProviderError,
//!     ProviderInfo, Validation};
//!
//! struct Echo;
//!
//! impl Provider for Echo {
//!     fn info() -> ProviderInfo {
//!         latchkey_plugin_sdk::info("echo", "0.1.0", &["api-key"], &[Operation::Validate])
//!     }
//!     fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
//!         let _base = config::require(&cfg, "base-url")?;
//!         Ok(Validation { valid: !cred.fields.is_empty(), detail: "ok".into(),
//!             permissions: vec![], expires_at: None })
//!     }
//!     latchkey_plugin_sdk::unsupported! {
//!         create_pending: "create-pending",
//!         retire: "retire",
//!         refresh: "refresh",
//!     }
//! }
//!
//! latchkey_plugin_sdk::export!(Echo);
//! ```

#![deny(missing_docs)]

/// Bindings generated from `wit/` by wit-bindgen (world `provider-plugin`).
#[allow(missing_docs, clippy::all, unreachable_pub)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "latchkey:provider/provider-plugin",
        pub_export_macro: true,
        default_bindings_module: "latchkey_plugin_sdk::bindings",
        export_macro_name: "export_provider",
        generate_all,
    });
}

pub mod config;
pub mod error;
pub mod http;
pub mod log;
pub mod secret;
pub mod sign;
pub mod sql;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod validate;

pub use bindings::exports::latchkey::provider::provider::Guest as Provider;
pub use bindings::latchkey::provider::types::{
    Credential, Field, Operation, Permission, ProviderError, ProviderInfo, Validation,
};

/// Exports `$t` (the name of a type implementing [`Provider`]) as this component's provider.
/// Use once per plugin crate, at the crate root.
///
/// The export exists only when building for wasm: its symbol names
/// (`latchkey:provider/provider@0.1.0#validate`) are not valid in a native linker's
/// version script, so a plugin crate with `crate-type = ["cdylib", "rlib"]` could not
/// be built for the host (to run its unit tests) otherwise. On the host the macro only
/// names `$t`'s implementation, so the type does not count as unused.
#[macro_export]
macro_rules! export {
    ($t:ident) => {
        #[cfg(target_family = "wasm")]
        $crate::bindings::export_provider!($t with_types_in $crate::bindings);
        #[cfg(not(target_family = "wasm"))]
        const _: fn() -> $crate::ProviderInfo = <$t as $crate::Provider>::info;
    };
}

/// Implements, inside `impl Provider for …`, the operations a provider does not offer:
/// each answers `unsupported` with the given detail. Name any of `create_pending`,
/// `retire` and `refresh`:
///
/// ```ignore
/// latchkey_plugin_sdk::unsupported! {
///     create_pending: "create-pending: keys are created in the console",
///     retire: "retire: keys are deleted in the console",
///     refresh: "refresh: API keys do not expire",
/// }
/// ```
#[macro_export]
macro_rules! unsupported {
    (@op create_pending, $why:expr) => {
        fn create_pending(
            _: ::std::vec::Vec<$crate::Field>,
            _: $crate::Credential,
        ) -> ::core::result::Result<$crate::Credential, $crate::ProviderError> {
            ::core::result::Result::Err($crate::ProviderError::Unsupported(
                ::std::string::String::from($why),
            ))
        }
    };
    (@op retire, $why:expr) => {
        fn retire(
            _: ::std::vec::Vec<$crate::Field>,
            _: $crate::Credential,
        ) -> ::core::result::Result<(), $crate::ProviderError> {
            ::core::result::Result::Err($crate::ProviderError::Unsupported(
                ::std::string::String::from($why),
            ))
        }
    };
    (@op refresh, $why:expr) => {
        fn refresh(
            _: ::std::vec::Vec<$crate::Field>,
            _: $crate::Credential,
        ) -> ::core::result::Result<$crate::Credential, $crate::ProviderError> {
            ::core::result::Result::Err($crate::ProviderError::Unsupported(
                ::std::string::String::from($why),
            ))
        }
    };
    ($($op:ident: $why:expr),+ $(,)?) => {
        $($crate::unsupported!(@op $op, $why);)+
    };
}

/// Builds a [`ProviderInfo`] with no HTTP or SQL needs; add them with
/// [`ProviderInfo::with_http`], struct update syntax or by pushing to the fields.
pub fn info(name: &str, version: &str, kinds: &[&str], operations: &[Operation]) -> ProviderInfo {
    ProviderInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        operations: operations.to_vec(),
        http_authorities: Vec::new(),
        sql_connections: Vec::new(),
    }
}

impl ProviderInfo {
    /// This info with `authorities` (`host[:port]`, as in the manifest's `needs.http`)
    /// as the HTTP destinations the provider calls.
    pub fn with_http(mut self, authorities: &[&str]) -> Self {
        self.http_authorities = authorities.iter().map(|a| (*a).to_owned()).collect();
        self
    }
}

impl Validation {
    /// Whether the answer reports permission `name` as granted; `None` if it does not
    /// report it at all.
    pub fn granted(&self, name: &str) -> Option<bool> {
        self.permissions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.granted)
    }
}

impl Credential {
    /// A credential of `kind` with the given `(name, value)` fields.
    pub fn new<'a>(kind: &str, fields: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Credential {
            kind: kind.to_owned(),
            fields: fields
                .into_iter()
                .map(|(name, value)| Field {
                    name: name.to_owned(),
                    value,
                })
                .collect(),
            expires_at: None,
        }
    }

    /// One field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        config::get(&self.fields, name)
    }

    /// One field's value, or `invalid-config` naming the missing field.
    pub fn require(&self, name: &str) -> Result<&str, ProviderError> {
        self.field(name)
            .ok_or_else(|| ProviderError::InvalidConfig(format!("credential has no field {name}")))
    }
}
