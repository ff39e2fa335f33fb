//! Reading provider configuration (`config: list<field>`) and credential fields.

use crate::{Field, ProviderError};

/// The value of field `name`, if present.
pub fn get<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// The value of field `name`, or `invalid-config` naming it.
///
/// ```
/// use latchkey_plugin_sdk::{config, Field, ProviderError};
/// let cfg = vec![Field { name: "base-url".into(), value: "https://api.example.com".into() }];
/// assert_eq!(config::require(&cfg, "base-url").unwrap(), "https://api.example.com");
/// assert!(matches!(config::require(&cfg, "account"), Err(ProviderError::InvalidConfig(_))));
/// ```
pub fn require<'a>(fields: &'a [Field], name: &str) -> Result<&'a str, ProviderError> {
    get(fields, name).ok_or_else(|| ProviderError::InvalidConfig(format!("missing config {name}")))
}
