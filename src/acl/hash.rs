//! A small non-keyed hash for the ACL's lookups (FxHash's multiply-rotate, as in rustc).
//!
//! The tables are built once from the ACL file and only read afterwards; a lookup key from a
//! client (a topic's first level) cannot add entries, so a keyed hash (SipHash, the std
//! default) buys no protection against flooding here and costs several times more per short
//! key on the publish path.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The hash of a topic level, as [`super::rules::RuleSet`] keys its buckets (computed once per
/// check, then used for every rule set).
#[inline]
pub(super) fn level_hash(level: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(level.as_bytes());
    hasher.finish()
}

/// A `HashMap` with [`FxHasher`].
pub(super) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// FxHash: `hash = (hash.rotate_left(5) ^ word) * SEED` over 8-byte words.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        // The tail byte by byte (a short copy into a buffer would be a `memcpy` call), and the
        // length, so that "a" and "a\0" differ.
        let mut word = 0u64;
        for (k, &b) in rest.iter().enumerate() {
            word |= u64::from(b) << (8 * k);
        }
        self.add(word ^ ((bytes.len() as u64) << 56));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn equal_keys_hash_equal_and_short_keys_differ() {
        let build = BuildHasherDefault::<FxHasher>::default();
        assert_eq!(build.hash_one("bh"), build.hash_one(String::from("bh")));
        assert_eq!(level_hash("bh"), level_hash(&String::from("bh")));
        assert_ne!(level_hash("a"), level_hash("a\0"));
        assert_ne!(level_hash(""), level_hash("\0"));
        // `str` hashing appends 0xff, so "a" and "a\0" differ; lengths past 8 bytes too.
        let keys = [
            "",
            "a",
            "a\0",
            "b",
            "bh",
            "telemetry",
            "telemetry/",
            "abcdefgh",
            "abcdefghi",
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(build.hash_one(a), build.hash_one(b), "{a:?} {b:?}");
            }
        }
        let mut map = FxHashMap::default();
        map.insert(Box::<str>::from("bh"), 1);
        assert_eq!(map.get("bh"), Some(&1));
        assert_eq!(map.get("bi"), None);
    }
}
