//! Durations written as text in the config (`"90s"`, `"12h"`, `"30d"`), for serde's
//! `with = "…"` on fields deserialized straight into their section's struct.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
    humantime::parse_duration(text).map_err(|_| E::custom(format!("{text:?} is not a duration")))
}

/// A required duration.
pub mod required {
    use super::*;

    /// Deserializes `"30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }
}

/// An optional duration (absent or `"30s"`).
pub mod optional {
    use super::*;

    /// Deserializes an absent value or `"30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| parse(&t))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(serde::Deserialize)]
    struct Section {
        #[serde(with = "super::required")]
        every: Duration,
        #[serde(default, with = "super::optional")]
        grace: Option<Duration>,
    }

    #[test]
    fn parses_text_durations_and_names_bad_ones() {
        let s: Section = toml::from_str("every = \"2m\"").expect("valid");
        assert_eq!((s.every, s.grace), (Duration::from_secs(120), None));
        let s: Section = toml::from_str("every = \"1s\"\ngrace = \"1h\"").expect("valid");
        assert_eq!(s.grace, Some(Duration::from_secs(3600)));
        let Err(e) = toml::from_str::<Section>("every = \"soon\"") else {
            panic!("\"soon\" is not a duration");
        };
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
    }
}
