//! Secret values in memory, shared by the latchkey agent and its plugin host.
//!
//! Every credential byte latchkey holds lives in one of these types: a
//! [`SecretString`] (one text value), [`SecretBytes`] (keys, sealed plaintexts,
//! rendered response bodies) or [`Fields`] (the named values of one secret). They
//! zeroize their memory on drop and print `[REDACTED]` in `Debug`; they have no
//! `Display` and no `Serialize`. The bytes come out only through
//! [`SecretString::expose`] / [`SecretBytes::expose`] (and [`Fields::exposed`], a
//! serializer view that writes the values in clear), so `git grep 'expose('` reads as
//! the list of places where a value leaves latchkey on purpose: a response body, a
//! sealed record, an upstream write, a rendered file, a child's environment, a plugin
//! call.
//!
//! `SecretString` and `Fields` deserialize from plain strings (a JSON object of
//! strings for `Fields`), so configuration and upstream responses can be read
//! straight into them.
//!
//! The types live in their own small crate so that both the agent (`latchkey-agent`,
//! which re-exports them as `latchkey::secret`) and the plugin host
//! (`latchkey-plugin-host`, which must not depend on the agent and re-exports
//! `SecretString`) use the one definition.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// A secret text value. Zeroized on drop; `Debug` prints `SecretString([REDACTED])`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value. The caller's `String` moves in, so no copy stays behind.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself. Call only where the value must leave latchkey.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Secret bytes (keys, sealed plaintexts, rendered response bodies). Zeroized on drop.
///
/// Implements `AsRef<[u8]>` so a response body can be handed to hyper with
/// `Bytes::from_owner` without a copy: the bytes are wiped when the last reference
/// (the hot cache's or an in-flight response's) is dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps bytes; the vector moves in.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes themselves. Call only where they must be used.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(mut bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(std::mem::take(&mut *bytes))
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

/// The named fields of one secret, e.g. `username` and `password`.
///
/// Field names are not secret; values are. Deserializes from a JSON object of strings.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Fields(BTreeMap<String, SecretString>);

impl Fields {
    /// An empty set of fields.
    pub fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Sets one field, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        self.0.insert(name.into(), value);
    }

    /// One field's value.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// Field names in order (safe to log).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Name/value pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A serializer view that writes the values in clear. Use only at egress points
    /// (response bodies, sealed plaintexts, upstream writes).
    pub fn exposed(&self) -> ExposedFields<'_> {
        ExposedFields(self)
    }
}

impl FromIterator<(String, SecretString)> for Fields {
    fn from_iter<I: IntoIterator<Item = (String, SecretString)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}

/// Serializes [`Fields`] with their values in clear; made only by [`Fields::exposed`].
pub struct ExposedFields<'a>(&'a Fields);

impl Serialize for ExposedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0.iter() {
            map.serialize_entry(name, value.expose())?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "hunter2-very-secret";

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = SecretString::from(VALUE);
        assert!(!format!("{s:?}").contains(VALUE));
        assert_eq!(s.expose(), VALUE);
        let b = SecretBytes::new(VALUE.as_bytes().to_vec());
        assert!(!format!("{b:?}").contains(VALUE));
        let mut fields = Fields::new();
        fields.insert("password", s.clone());
        let dbg = format!("{fields:?}");
        assert!(!dbg.contains(VALUE));
        assert!(dbg.contains("password"));
    }

    #[test]
    fn exposed_fields_serialize_in_clear() {
        let fields: Fields =
            serde_json::from_str(r#"{"user":"app","password":"pw"}"#).expect("valid fields JSON");
        let json = serde_json::to_string(&fields.exposed()).expect("serializes");
        assert_eq!(json, r#"{"password":"pw","user":"app"}"#);
    }

    #[test]
    fn secret_string_deserializes_from_a_string_only() {
        let s: SecretString = serde_json::from_str(r#""pw""#).expect("a JSON string");
        assert_eq!(s.expose(), "pw");
        assert!(serde_json::from_str::<SecretString>("1").is_err());
    }

    #[test]
    fn fields_reject_non_string_values() {
        assert!(serde_json::from_str::<Fields>(r#"{"n":1}"#).is_err());
    }
}
