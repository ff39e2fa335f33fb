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
//! `SecretString` deserializes from a plain string and `Fields` from a JSON object of
//! any values (each field keeps its JSON type), so configuration and upstream
//! responses can be read straight into them. A non-string field is kept as its JSON
//! text, in a `SecretString` like any value, and written back verbatim.
//!
//! The types live in their own small crate so that both the agent (`latchkey-agent`,
//! which re-exports them as `latchkey::secret`) and the plugin host
//! (`latchkey-plugin-host`, which must not depend on the agent and re-exports
//! `SecretString`) use the one definition.

use std::collections::{BTreeMap, BTreeSet};
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
/// Field names are not secret; values are. A field holds either a string or any other
/// JSON value (a number, a boolean, `null`, an array, an object), kept as its JSON
/// text: [`Fields::get`] gives the string, or the JSON text, either way (what an
/// environment variable or a rendered file gets), [`Fields::is_json`] says which, and
/// [`Fields::exposed`] writes each with its type. Deserializes from a JSON object of
/// any values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    values: BTreeMap<String, SecretString>,
    /// The names whose value is JSON text rather than a string.
    json: BTreeSet<String>,
}

/// A value given to [`Fields::insert_json`] that is not one JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson;

impl fmt::Display for NotJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a JSON value")
    }
}

impl std::error::Error for NotJson {}

impl Fields {
    /// An empty set of fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one string field, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        let name = name.into();
        self.json.remove(&name);
        self.values.insert(name, value);
    }

    /// Sets one field to the JSON value `text` (a number, boolean, null, array or
    /// object, kept verbatim; a JSON string is stored as the string it encodes).
    pub fn insert_json(
        &mut self,
        name: impl Into<String>,
        text: SecretString,
    ) -> Result<(), NotJson> {
        let name = name.into();
        let is_string = {
            let raw: &serde_json::value::RawValue =
                serde_json::from_str(text.expose()).map_err(|_| NotJson)?;
            raw.get().starts_with('"')
        };
        if is_string {
            let decoded: String = serde_json::from_str(text.expose()).map_err(|_| NotJson)?;
            self.insert(name, SecretString::new(decoded));
            return Ok(());
        }
        self.json.insert(name.clone());
        self.values.insert(name, text);
        Ok(())
    }

    /// Sets one field from a parsed JSON value, keeping its type.
    pub fn insert_value(&mut self, name: impl Into<String>, value: serde_json::Value) {
        match value {
            serde_json::Value::String(s) => self.insert(name, SecretString::new(s)),
            other => {
                let name = name.into();
                self.json.insert(name.clone());
                self.values
                    .insert(name, SecretString::new(other.to_string()));
            }
        }
    }

    /// One field's value: the string, or the JSON text of a non-string value.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.values.get(name)
    }

    /// Whether `name` holds a JSON value other than a string.
    pub fn is_json(&self, name: &str) -> bool {
        self.json.contains(name)
    }

    /// Field names in order (safe to log).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Name/value pairs in name order (JSON text for non-string values).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether every field is a string (as every field was before typed fields).
    pub fn all_strings(&self) -> bool {
        self.json.is_empty()
    }

    /// A serializer view that writes the values in clear, each with its JSON type.
    /// Use only at egress points (response bodies, sealed plaintexts, upstream
    /// writes). Non-string values are written verbatim, never parsed into copies.
    pub fn exposed(&self) -> ExposedFields<'_> {
        ExposedFields(self)
    }
}

impl FromIterator<(String, SecretString)> for Fields {
    fn from_iter<I: IntoIterator<Item = (String, SecretString)>>(iter: I) -> Self {
        Self {
            values: iter.into_iter().collect(),
            json: BTreeSet::new(),
        }
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.keys().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = Fields::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value: serde_json::Value = map.next_value()?;
                    fields.insert_value(name, value);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Serializes [`Fields`] with their values in clear; made only by [`Fields::exposed`].
pub struct ExposedFields<'a>(&'a Fields);

impl Serialize for ExposedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0.iter() {
            if self.0.is_json(name) {
                // Borrowed from the value itself: no copy of it is made.
                let raw: &serde_json::value::RawValue = serde_json::from_str(value.expose())
                    .map_err(|_| {
                        serde::ser::Error::custom(format!("field {name:?} holds malformed JSON"))
                    })?;
                map.serialize_entry(name, raw)?;
            } else {
                map.serialize_entry(name, value.expose())?;
            }
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
    fn fields_keep_each_json_type() {
        let text = r#"{"enabled":true,"nested":{"a":[1,2]},"nothing":null,"port":5432,"s":"5432"}"#;
        let fields: Fields = serde_json::from_str(text).expect("any JSON values");
        assert!(fields.is_json("port") && !fields.is_json("s"));
        assert_eq!(fields.get("port").map(SecretString::expose), Some("5432"));
        assert_eq!(fields.get("s").map(SecretString::expose), Some("5432"));
        assert_eq!(
            fields.get("nested").map(SecretString::expose),
            Some(r#"{"a":[1,2]}"#)
        );
        let back = serde_json::to_string(&fields.exposed()).expect("serializes");
        assert_eq!(back, text, "types and values round-trip");
        assert!(
            serde_json::from_str::<Fields>("[1]").is_err(),
            "an object only"
        );
    }

    #[test]
    fn insert_json_checks_the_text_and_unwraps_a_string() {
        let mut fields = Fields::new();
        assert_eq!(
            fields.insert_json("bad", SecretString::from("{")),
            Err(NotJson)
        );
        fields
            .insert_json("n", SecretString::from("1.5e3"))
            .expect("a number");
        fields
            .insert_json("s", SecretString::from(r#""a\nb""#))
            .expect("a string");
        assert!(fields.is_json("n"));
        assert!(!fields.is_json("s"));
        assert_eq!(fields.get("s").map(SecretString::expose), Some("a\nb"));
        fields.insert("n", SecretString::from("now a string"));
        assert!(!fields.is_json("n"));
    }
}
