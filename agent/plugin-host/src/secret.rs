//! Secret values crossing the plugin boundary.
//!
//! Same pattern as the agent's `secret` module (kept as a copy so this crate does not
//! depend on the agent): zeroized on drop, `Debug` prints `[REDACTED]`, no `Display`,
//! no `Serialize`. Credential field values enter a plugin call through this type and
//! come back out of it in this type; the plain `String`s the component model needs
//! exist only for the duration of the call and are wiped afterwards.

use std::fmt;

use zeroize::Zeroize;

/// A secret text value. Zeroized on drop; `Debug` prints `SecretString([REDACTED])`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value. The caller's `String` moves in, so no copy stays behind.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself. Call only where the value must leave the host.
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

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = SecretString::from("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
