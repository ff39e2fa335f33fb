//! What latchkey records about a secret in the upstream itself, beside its values, so
//! that every agent reading that upstream agrees: the secret's `kind` and its expiry.
//!
//! | | OpenBao / Vault KV v2 | AWS Secrets Manager |
//! | --- | --- | --- |
//! | where | the secret's `custom_metadata` | the secret's tags |
//! | kind | `latchkey-kind` | `latchkey:kind` |
//! | expiry | `latchkey-expires-at` (unix seconds) | `latchkey:expires-at` (unix seconds) |
//!
//! They describe the secret (the upstream keeps one set per secret, not per
//! version), and are set by every write the agent makes; entries of other tools
//! beside them are left alone. A secret nobody wrote through latchkey has none, and
//! keeps the kind the agent already gave it.

use std::collections::BTreeMap;

/// The `custom_metadata` key of the kind in KV v2.
pub const BAO_KIND: &str = "latchkey-kind";
/// The `custom_metadata` key of the expiry in KV v2.
pub const BAO_EXPIRES_AT: &str = "latchkey-expires-at";
/// The tag key of the kind in AWS.
pub const AWS_KIND: &str = "latchkey:kind";
/// The tag key of the expiry in AWS.
pub const AWS_EXPIRES_AT: &str = "latchkey:expires-at";

/// The kind and expiry found in a map of metadata (`kind_key`, `expires_key`);
/// a value that does not parse is ignored.
pub fn read(
    entries: &BTreeMap<String, String>,
    kind_key: &str,
    expires_key: &str,
) -> (Option<String>, Option<i64>) {
    let kind = entries
        .get(kind_key)
        .filter(|k| crate::store::valid_kind(k))
        .cloned();
    let expires_at = entries.get(expires_key).and_then(|t| t.parse().ok());
    (kind, expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_recognises_and_ignores_the_rest() {
        let entries: BTreeMap<String, String> = [
            (BAO_KIND, "database"),
            (BAO_EXPIRES_AT, "1800000000"),
            ("team", "ops"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            read(&entries, BAO_KIND, BAO_EXPIRES_AT),
            (Some("database".to_owned()), Some(1_800_000_000))
        );
        let odd: BTreeMap<String, String> = [(BAO_KIND, "Not A Kind!"), (BAO_EXPIRES_AT, "soon")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(read(&odd, BAO_KIND, BAO_EXPIRES_AT), (None, None));
    }
}
