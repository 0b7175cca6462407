//! Sizes an operator writes by hand: `512MiB`, `2G`, `65536`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, read from an integer or from a string with an optional suffix: `K`,
/// `M`, `G` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024); case is ignored, and a
/// trailing `B` is allowed (`64kB`). Written back as a plain integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Whether this is zero (the usual "no limit").
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?} (expected e.g. 65536, 64K, 512MiB or 2G)")]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ByteSizeError(text.to_string());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!("65536".parse(), Ok(ByteSize(65536)));
        assert_eq!("64K".parse(), Ok(ByteSize(64_000)));
        assert_eq!("64kB".parse(), Ok(ByteSize(64_000)));
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!(" 2G ".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("1gib".parse(), Ok(ByteSize(1 << 30)));
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in [
            "",
            "M",
            "12X",
            "-1",
            "1.5G",
            "99999999999999999999",
            "20000000000G",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_integers_and_strings_from_toml() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 1024\nb = \"1MiB\"").expect("parses");
        assert_eq!((t.a, t.b), (ByteSize(1024), ByteSize(1 << 20)));
        assert!(toml::from_str::<T>("a = 1\nb = \"lots\"").is_err());
    }
}
