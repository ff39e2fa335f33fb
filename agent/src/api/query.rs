//! Query strings: `key=value` pairs, percent-decoded, and the `?prefix=` every
//! listing route takes. A malformed escape or a value that is not UTF-8 is a 400.

use percent_encoding::percent_decode_str;

use super::ApiError;
use crate::path::Prefix;

/// `key=value` pairs of a query string, values percent-decoded (`+` is a space).
pub(crate) fn query_pairs(
    query: Option<&str>,
) -> impl Iterator<Item = (&str, Result<String, ApiError>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key, decode(value))
        })
}

/// The `?prefix=P` of a listing query (everything when absent); any other parameter
/// is refused.
pub(crate) fn prefix_param(query: Option<&str>) -> Result<Prefix, ApiError> {
    let mut prefix = Prefix::all();
    for (key, value) in query_pairs(query) {
        let value = value?;
        match key {
            "prefix" => prefix = Prefix::parse(&value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected prefix)"
                )))
            }
        }
    }
    Ok(prefix)
}

/// One percent-decoded value. The decoder passes a stray `%` through; here it is an
/// error, so `%zz` is not silently read as itself.
fn decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(ApiError::bad_request(
            "malformed percent-encoding in the query",
        ));
    }
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| ApiError::bad_request("query is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_decoded_and_plus_is_a_space() {
        assert_eq!(decode("a%2Fb").expect("ok"), "a/b");
        assert_eq!(decode("a+b").expect("ok"), "a b");
        assert_eq!(decode("a%2Bb").expect("ok"), "a+b");
        assert_eq!(decode("%C3%A9").expect("ok"), "é");
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused() {
        for bad in ["%zz", "%f", "abc%", "%ff", "%C3"] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn prefix_is_the_only_listing_parameter() {
        assert_eq!(
            prefix_param(Some("prefix=web%2F")).expect("ok").as_str(),
            Prefix::parse("web/").expect("prefix").as_str()
        );
        assert!(prefix_param(None).expect("ok").as_str().is_empty());
        assert!(prefix_param(Some("prefix=web&limit=3")).is_err());
    }
}
