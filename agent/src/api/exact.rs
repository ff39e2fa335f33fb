//! JSON holding secret values, written into a buffer of exactly its length.
//!
//! A growing `Vec` leaves the bytes it held behind in freed memory each time it
//! reallocates, and nothing zeroizes them. So the value is serialized twice: once into
//! a counter, to learn its exact length (escapes included: a control character takes
//! six bytes), then into a zeroizing buffer of that capacity that refuses to grow. No
//! partial copy of a value is left anywhere but in that buffer. serde_json writes
//! straight to the writer when it serializes (its scratch buffer is only used to parse),
//! so the counting pass copies nothing.

use std::io::{self, Write};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// Serializes `value` as JSON into a buffer whose capacity is exactly its length.
pub fn to_secret_bytes<T: Serialize + ?Sized>(value: &T) -> Result<SecretBytes, serde_json::Error> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut out = Fixed(Zeroizing::new(Vec::with_capacity(counter.0)));
    serde_json::to_writer(&mut out, value)?;
    Ok(SecretBytes::from(out.0))
}

/// Counts the bytes written to it, keeping none.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A buffer that fails a write rather than reallocate.
struct Fixed(Zeroizing<Vec<u8>>);

impl Write for Fixed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > self.0.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the JSON is longer than it measured",
            ));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Fields, SecretString};

    #[test]
    fn control_characters_fill_the_buffer_exactly_and_round_trip() {
        // Every control character (six bytes escaped, or two for \n \t ...), quotes,
        // backslashes and multi-byte characters: far past any per-byte estimate.
        let nasty: String = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'é', '€', '😀'])
            .cycle()
            .take(4096)
            .collect();
        let mut fields = Fields::new();
        fields.insert("value", SecretString::new(nasty.clone()));
        fields.insert("\u{1}name\n", SecretString::from("\u{0}"));
        let bytes = to_secret_bytes(&fields.exposed()).expect("serializes");
        let raw = bytes.expose();
        assert!(raw.len() > nasty.len() * 2, "escapes make it longer");
        let back: serde_json::Value = serde_json::from_slice(raw).expect("parses");
        assert_eq!(back["value"].as_str(), Some(nasty.as_str()));
        assert_eq!(back["\u{1}name\n"].as_str(), Some("\u{0}"));
    }

    #[test]
    fn the_buffer_never_reallocates() {
        let value = "\u{1}".repeat(1000);
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, &value).expect("counts");
        let mut fixed = Fixed(Zeroizing::new(Vec::with_capacity(counter.0)));
        let before = fixed.0.as_ptr();
        serde_json::to_writer(&mut fixed, &value).expect("fits");
        assert_eq!(fixed.0.len(), fixed.0.capacity());
        assert_eq!(fixed.0.as_ptr(), before, "same allocation");
        assert_eq!(fixed.0.len(), 6 * 1000 + 2);
        // One byte short fails instead of growing.
        let mut short = Fixed(Zeroizing::new(Vec::with_capacity(counter.0 - 1)));
        assert!(serde_json::to_writer(&mut short, &value).is_err());
    }
}
