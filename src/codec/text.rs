//! [`MqttStr`]: a UTF-8 string that shares the memory of the packet it came from.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use super::DecodeError;

/// A UTF-8 string as MQTT defines it (§1.5.4): well-formed UTF-8 (so no surrogates), no U+0000,
/// at most 65,535 bytes when encoded. Backed by [`Bytes`], so decoding does not copy.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MqttStr(Bytes);

/// Hashes exactly as the `str` it holds, as `Borrow<str>` requires: a map keyed by `MqttStr`
/// can be looked up with a `&str`.
impl std::hash::Hash for MqttStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl MqttStr {
    /// Checks `raw` and wraps it without copying.
    pub fn from_utf8(raw: Bytes) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(&raw)
            .map_err(|_| DecodeError::Malformed("string is not well-formed UTF-8"))?;
        if text.as_bytes().contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(MqttStr(raw))
    }

    /// A string from a static literal (must not contain U+0000; checked in debug builds).
    pub fn from_static(text: &'static str) -> Self {
        debug_assert!(!text.contains('\0'));
        MqttStr(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor admits only well-formed UTF-8 and the field is private and
        // immutable; re-checking here would scan every topic on the hot path.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The backing buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The backing buffer, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for MqttStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MqttStr {
    /// Copies the text. U+0000 is replaced by U+FFFD so the result is always a legal MQTT string.
    fn from(text: &str) -> Self {
        if text.contains('\0') {
            MqttStr(Bytes::from(text.replace('\0', "\u{FFFD}")))
        } else {
            MqttStr(Bytes::copy_from_slice(text.as_bytes()))
        }
    }
}

impl From<String> for MqttStr {
    fn from(text: String) -> Self {
        if text.contains('\0') {
            MqttStr(Bytes::from(text.replace('\0', "\u{FFFD}")))
        } else {
            MqttStr(Bytes::from(text))
        }
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keyed_by_mqtt_str_are_found_by_str() {
        let mut map = std::collections::HashMap::new();
        map.insert(MqttStr::from("client/1"), 7);
        assert_eq!(map.get("client/1"), Some(&7));
        assert_eq!(map.get("client/2"), None);
    }

    #[test]
    fn utf8_rules() {
        assert!(MqttStr::from_utf8(Bytes::from_static(b"a/b")).is_ok());
        assert!(MqttStr::from_utf8(Bytes::from_static(b"")).is_ok());
        // U+0000.
        assert!(MqttStr::from_utf8(Bytes::from_static(b"a\0b")).is_err());
        // A UTF-16 surrogate (U+D800) encoded as UTF-8 bytes.
        assert!(MqttStr::from_utf8(Bytes::from_static(&[0xed, 0xa0, 0x80])).is_err());
        // Overlong encoding of '/'.
        assert!(MqttStr::from_utf8(Bytes::from_static(&[0xc0, 0xaf])).is_err());
        // Truncated sequence.
        assert!(MqttStr::from_utf8(Bytes::from_static(&[0xe2, 0x82])).is_err());
        // U+FEFF (BOM) is allowed and kept.
        let bom = MqttStr::from_utf8(Bytes::from_static(&[0xef, 0xbb, 0xbf])).unwrap();
        assert_eq!(bom.as_str(), "\u{feff}");
    }

    #[test]
    fn from_str_never_holds_nul() {
        assert_eq!(MqttStr::from("a\0b").as_str(), "a\u{FFFD}b");
    }
}
