//! Secret paths and list prefixes: validated once, at the edge.
//!
//! A [`SecretPath`] is what every other module takes: `billing/db/main`. Segments are
//! separated by `/` and made of `A-Z a-z 0-9 _ - . @ + = ,`; there are no empty
//! segments, no `.` or `..`, no leading or trailing slash, and no `%`, so nothing
//! can be smuggled in by percent-encoding. One leading and one trailing slash are
//! tolerated on input and dropped, so `/a/b/` and `a/b` name the same secret.

use std::fmt;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 512;
/// Most segments in one path.
pub const MAX_SEGMENTS: usize = 32;

/// Why a path or prefix was refused. The offending text is included: paths are not secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing left after trimming slashes.
    #[error("path is empty")]
    Empty,
    /// Over [`MAX_PATH_LEN`] bytes.
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// Over [`MAX_SEGMENTS`] segments.
    #[error("path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// `a//b`.
    #[error("path {0:?} has an empty segment")]
    EmptySegment(String),
    /// `.` or `..` as a segment.
    #[error("path {0:?} has a relative segment ('.' or '..')")]
    Relative(String),
    /// A byte outside the allowed set (this includes `%`, `\`, spaces and controls).
    #[error("path {path:?} has a character that is not allowed: {ch:?}")]
    BadChar {
        /// The path as given (control characters escaped by `Debug`).
        path: String,
        /// The first refused character.
        ch: char,
    },
}

/// A validated, normalised secret path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath(Box<str>);

impl SecretPath {
    /// Validates and normalises `raw`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let trimmed = trim_one_slash(raw);
        if trimmed.is_empty() {
            return Err(PathError::Empty);
        }
        check(trimmed, raw)?;
        Ok(Self(trimmed.into()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its segments, in order.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether this path lies under `prefix`.
    pub fn has_prefix(&self, prefix: &Prefix) -> bool {
        prefix.matches(self)
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for SecretPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SecretPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for SecretPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A list prefix: empty (everything) or a path-like text. `billing/` matches
/// `billing/db` but not `billing-old/db`; `billing` (no trailing slash) matches both
/// `billing` itself and everything under `billing/`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prefix(Box<str>);

impl Prefix {
    /// Everything.
    pub fn all() -> Self {
        Self("".into())
    }

    /// Validates a prefix; the same characters as a path, a trailing `/` kept.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let body = raw.strip_prefix('/').unwrap_or(raw);
        if body.is_empty() {
            return Ok(Self::all());
        }
        let (inner, slash) = match body.strip_suffix('/') {
            Some(inner) => (inner, true),
            None => (body, false),
        };
        if inner.is_empty() {
            return Err(PathError::EmptySegment(raw.to_owned()));
        }
        check(inner, raw)?;
        Ok(Self(if slash { body.into() } else { inner.into() }))
    }

    /// The prefix text ("" for everything).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` lies under this prefix.
    pub fn matches(&self, path: &SecretPath) -> bool {
        let p = path.as_str();
        let pre = &*self.0;
        if pre.is_empty() || pre.ends_with('/') {
            return p.starts_with(pre);
        }
        p == pre || (p.starts_with(pre) && p.as_bytes().get(pre.len()) == Some(&b'/'))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn trim_one_slash(raw: &str) -> &str {
    let s = raw.strip_prefix('/').unwrap_or(raw);
    s.strip_suffix('/').unwrap_or(s)
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'+' | b'=' | b',')
}

fn check(body: &str, raw: &str) -> Result<(), PathError> {
    if body.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let mut count = 0;
    for segment in body.split('/') {
        count += 1;
        if count > MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        if segment.is_empty() {
            return Err(PathError::EmptySegment(raw.to_owned()));
        }
        if segment == "." || segment == ".." {
            return Err(PathError::Relative(raw.to_owned()));
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !c.is_ascii() || !allowed(*c as u8))
        {
            return Err(PathError::BadChar {
                path: raw.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_one_leading_and_trailing_slash() {
        let p = SecretPath::parse("/billing/db/").expect("valid");
        assert_eq!(p.as_str(), "billing/db");
        assert_eq!(p, SecretPath::parse("billing/db").expect("valid"));
    }

    #[test]
    fn refuses_traversal_and_encodings() {
        for bad in [
            "",
            "/",
            "a//b",
            "a/../b",
            "..",
            "./a",
            "a/%2e%2e/b",
            "a%2Fb",
            "a\\b",
            "a b",
            "a/\u{0}/b",
            "caf\u{e9}",
            "//a",
        ] {
            assert!(SecretPath::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn accepts_ordinary_paths() {
        for good in [
            "a",
            "billing/db-main",
            "tenants/acme/exchanges/binance@v2",
            "x.y_z+1=2,3",
        ] {
            assert!(SecretPath::parse(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn limits_length_and_depth() {
        assert_eq!(
            SecretPath::parse(&"a".repeat(MAX_PATH_LEN + 1)),
            Err(PathError::TooLong)
        );
        let deep = vec!["a"; MAX_SEGMENTS + 1].join("/");
        assert_eq!(SecretPath::parse(&deep), Err(PathError::TooManySegments));
    }

    #[test]
    fn prefix_matches_whole_segments_unless_open() {
        let path = SecretPath::parse("billing/db").expect("valid");
        let other = SecretPath::parse("billing-old/db").expect("valid");
        let closed = Prefix::parse("billing").expect("valid");
        assert!(closed.matches(&path));
        assert!(!closed.matches(&other));
        let slash = Prefix::parse("billing/").expect("valid");
        assert!(slash.matches(&path));
        assert!(!slash.matches(&other));
        assert!(Prefix::all().matches(&other));
        assert!(Prefix::parse("bill/../x").is_err());
    }
}
