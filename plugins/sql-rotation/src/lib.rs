//! Password rotation for database roles, shared by the `postgres` and `mysql`
//! providers (`plugins/postgres`, `plugins/mysql`), which are thin wrappers around it.
//!
//! A provider names a connection the host holds (config `connection`); it never sees
//! the admin URL. It rotates the password of a role in one of two ways:
//!
//! - `single`: `create-pending` sets a fresh password on the role itself; `retire` has
//!   nothing left to revoke.
//! - `alternate`: two roles with the same privileges take turns. `create-pending` sets
//!   a fresh password on the role not in use (and lets it log in again); the previous
//!   credential keeps working through the grace window; `retire` then disables it.
//!
//! The modules follow one call: [`settings`] reads the config, [`rotation`] runs the
//! operation on a [`host::Host`], [`statements`] builds each product's SQL through the
//! host's quoting, and [`scram`] computes PostgreSQL verifiers so that passwords stay
//! out of server logs. Nothing here is wasm-specific except [`host::Wasi`], so the
//! logic is unit-tested on the host against an in-memory fake.
//!
//! [`provider!`] turns all this into a provider: each wrapper crate is its module
//! docs, `plugin.toml` and one invocation of it.

pub mod host;
pub mod rotation;
pub mod scram;
pub mod settings;
pub mod statements;

#[cfg(test)]
mod tests;

use latchkey_plugin_sdk::{Operation, ProviderInfo};

/// The SDK, for [`provider!`]'s expansion in the wrapper crates.
#[doc(hidden)]
pub use latchkey_plugin_sdk as sdk;
pub use settings::Product;

/// Defines and exports the provider `$name` of `$product` (a [`Product`]): `info`
/// from [`info`] with the calling crate's version; `validate`, `create-pending` and
/// `retire` run [`rotation`] on the real host ([`host::Wasi`]); `refresh` is
/// `unsupported` (passwords do not expire by themselves). Under `cargo test` it adds
/// a test that `info` agrees with the calling crate's `plugin.toml`, as the host
/// refuses a plugin whose `info` disagrees with its manifest.
///
/// ```ignore
/// latchkey_sql_rotation::provider! {
///     /// The PostgreSQL provider.
///     Postgres = Product::Postgres
/// }
/// ```
#[macro_export]
macro_rules! provider {
    ($(#[$meta:meta])* $name:ident = $product:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl $crate::sdk::Provider for $name {
            fn info() -> $crate::sdk::ProviderInfo {
                $crate::info($product, env!("CARGO_PKG_VERSION"))
            }

            fn validate(
                config: ::std::vec::Vec<$crate::sdk::Field>,
                cred: $crate::sdk::Credential,
            ) -> ::core::result::Result<$crate::sdk::Validation, $crate::sdk::ProviderError> {
                $crate::rotation::validate($product, &config, &cred, $crate::host::Wasi::new)
            }

            fn create_pending(
                config: ::std::vec::Vec<$crate::sdk::Field>,
                current: $crate::sdk::Credential,
            ) -> ::core::result::Result<$crate::sdk::Credential, $crate::sdk::ProviderError> {
                let connect = $crate::host::Wasi::new;
                $crate::rotation::create_pending($product, &config, &current, connect)
            }

            fn retire(
                config: ::std::vec::Vec<$crate::sdk::Field>,
                previous: $crate::sdk::Credential,
            ) -> ::core::result::Result<(), $crate::sdk::ProviderError> {
                $crate::rotation::retire($product, &config, &previous, $crate::host::Wasi::new)
            }

            $crate::sdk::unsupported! {
                refresh: ::std::format!(
                    "refresh: {} passwords do not expire by themselves; rotate them",
                    $crate::Product::name($product)
                ),
            }
        }

        $crate::sdk::export!($name);

        #[cfg(test)]
        mod provider_tests {
            use $crate::sdk::Provider as _;

            /// The host refuses a plugin whose `info` disagrees with its manifest.
            #[test]
            fn info_matches_the_manifest() {
                let manifest = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.toml"));
                let info = super::$name::info();
                assert!(manifest.contains(&format!("name = \"{}\"", info.name)));
                assert!(manifest.contains(&format!("version = \"{}\"", info.version)));
                let kinds = info.kinds.join("\", \"");
                assert!(manifest.contains(&format!("kinds = [\"{kinds}\"]")));
                assert!(manifest.contains("operations = [\"validate\", \"create-pending\", \"retire\"]"));
                assert_eq!(info.operations.len(), 3);
                assert!(manifest.contains(&format!(
                    "sql = [\"{}\"]",
                    info.sql_connections.join("\", \"")
                )));
            }
        }
    };
}

/// The `info` answer of a `product` provider: its kind, `validate`, `create-pending`
/// and `retire`, and the default connection name.
pub fn info(product: Product, version: &str) -> ProviderInfo {
    let mut info = latchkey_plugin_sdk::info(
        product.name(),
        version,
        &[product.kind()],
        &[
            Operation::Validate,
            Operation::CreatePending,
            Operation::Retire,
        ],
    );
    info.sql_connections.push(product.name().to_owned());
    info
}
