//! Per-publisher sequence tracking: which sequence numbers of one publisher a receiver (or a
//! shared-subscription group) has seen, to count lost, duplicated and reordered messages.
//!
//! A [`SeqSet`] is a bitmap with a moving base: every word of 64 consecutive sequence numbers
//! that is complete is dropped, so an in-order stream costs a few words however long it runs;
//! gaps (real losses, or a shared group member seeing every n-th message) cost one bit per
//! sequence number from the first gap on.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// What inserting one sequence number found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time, in order (above every number seen so far).
    New,
    /// First time, but below the highest number already seen.
    Reordered,
    /// Seen before.
    Duplicate,
}

/// The sequence numbers seen from one publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSet {
    /// Every number below `base` has been seen.
    base: u32,
    /// Bit `i` of word `w` stands for `base + 64 * w + i`.
    words: VecDeque<u64>,
    /// Highest number seen plus one (0 when none).
    top: u64,
    /// Distinct numbers seen.
    pub distinct: u64,
    /// Repeated deliveries.
    pub duplicates: u64,
    /// First deliveries that arrived after a higher number.
    pub reordered: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        SeqSet::default()
    }

    /// Records `seq`.
    pub fn insert(&mut self, seq: u32) -> Seen {
        if seq < self.base {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        let offset = (seq - self.base) as usize;
        let (word, bit) = (offset / 64, offset % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.words[word] & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.words[word] |= mask;
        self.distinct += 1;
        let seen = if u64::from(seq) + 1 < self.top {
            self.reordered += 1;
            Seen::Reordered
        } else {
            self.top = u64::from(seq) + 1;
            Seen::New
        };
        self.compact();
        seen
    }

    fn compact(&mut self) {
        while self.words.len() > 1 && self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    /// Whether `seq` has been seen.
    #[cfg(test)]
    pub fn contains(&self, seq: u32) -> bool {
        if seq < self.base {
            return true;
        }
        let offset = (seq - self.base) as usize;
        self.words
            .get(offset / 64)
            .is_some_and(|word| word & (1 << (offset % 64)) != 0)
    }

    /// Sequence numbers in `0..sent` that were never seen.
    #[cfg(test)]
    pub fn missing(&self, sent: u32) -> u64 {
        let seen_below = if sent <= self.base {
            u64::from(sent)
        } else {
            let span = (sent - self.base) as usize;
            let full = span / 64;
            let mut count = u64::from(self.base);
            for (i, word) in self.words.iter().enumerate() {
                if i < full {
                    count += u64::from(word.count_ones());
                } else if i == full {
                    let rest = span % 64;
                    if rest > 0 {
                        count += u64::from((word & ((1u64 << rest) - 1)).count_ones());
                    }
                    break;
                }
            }
            count
        };
        u64::from(sent) - seen_below
    }

    /// Union with another receiver's set (members of one shared-subscription group): a number
    /// both saw was delivered twice and counts as a duplicate.
    pub fn merge(&mut self, other: &SeqSet) {
        self.duplicates += other.duplicates;
        // Reordering is only meaningful per receiver; keep the sum.
        self.reordered += other.reordered;
        let other_top = other.top;
        // Numbers below other.base were all seen by other.
        for seq in 0..other.base {
            self.merge_one(seq);
        }
        for (w, word) in other.words.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                self.merge_one(other.base + 64 * w as u32 + bit);
            }
        }
        self.top = self.top.max(other_top);
    }

    fn merge_one(&mut self, seq: u32) {
        if self.insert(seq) == Seen::Reordered {
            // An artefact of merging, not a reordering any receiver saw: undo the count.
            self.reordered -= 1;
        }
    }
}

/// A fast hasher for small integer keys (publisher ids): a multiplicative hash, no SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Publisher id to its sequence set.
pub type SeqMap = HashMap<u32, SeqSet, BuildHasherDefault<IdHasher>>;

/// Merges `other` into `into` (shared-subscription group union).
pub fn merge_maps(into: &mut SeqMap, other: &SeqMap) {
    for (id, set) in other {
        into.entry(*id).or_default().merge(set);
    }
}

/// Totals over many sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTotals {
    /// Distinct messages.
    pub distinct: u64,
    /// Repeated deliveries.
    pub duplicates: u64,
    /// Out-of-order first deliveries.
    pub reordered: u64,
}

impl SeqTotals {
    /// Adds one set.
    pub fn add(&mut self, set: &SeqSet) {
        self.distinct += set.distinct;
        self.duplicates += set.duplicates;
        self.reordered += set.reordered;
    }

    /// Adds other totals.
    pub fn merge(&mut self, other: &SeqTotals) {
        self.distinct += other.distinct;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
    }
}

/// Lost messages: what should have arrived minus what did (distinct). Never negative.
pub fn lost(expected: u64, distinct: u64) -> u64 {
    expected.saturating_sub(distinct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_stays_small() {
        let mut set = SeqSet::new();
        for seq in 0..100_000 {
            assert_eq!(set.insert(seq), Seen::New);
        }
        assert_eq!(set.distinct, 100_000);
        assert_eq!(set.duplicates, 0);
        assert_eq!(set.missing(100_000), 0);
        assert!(set.words.len() <= 2, "compacted: {} words", set.words.len());
    }

    #[test]
    fn detects_loss() {
        let mut set = SeqSet::new();
        for seq in (0..1000).filter(|s| s % 100 != 7) {
            set.insert(seq);
        }
        assert_eq!(set.distinct, 990);
        assert_eq!(set.missing(1000), 10);
        // Messages sent after the last one received are lost too.
        assert_eq!(set.missing(1005), 15);
        assert!(!set.contains(7));
        assert!(set.contains(8));
        assert_eq!(lost(1005, set.distinct), 15);
    }

    #[test]
    fn detects_duplicates_before_and_after_compaction() {
        let mut set = SeqSet::new();
        for seq in 0..200 {
            set.insert(seq);
        }
        assert_eq!(set.insert(3), Seen::Duplicate); // below base
        assert_eq!(set.insert(199), Seen::Duplicate); // in the bitmap
        assert_eq!(set.duplicates, 2);
        assert_eq!(set.distinct, 200);
        assert_eq!(set.missing(200), 0);
    }

    #[test]
    fn detects_reordering() {
        let mut set = SeqSet::new();
        assert_eq!(set.insert(0), Seen::New);
        assert_eq!(set.insert(2), Seen::New);
        assert_eq!(set.insert(1), Seen::Reordered);
        assert_eq!(set.insert(3), Seen::New);
        assert_eq!(set.reordered, 1);
        assert_eq!(set.missing(4), 0);
    }

    #[test]
    fn shared_group_union_counts_overlap_as_duplicates() {
        // Three group members, each receiving every third message; one message goes to two
        // members, one goes to none.
        let mut members = [SeqSet::new(), SeqSet::new(), SeqSet::new()];
        for seq in 0..3000u32 {
            if seq == 1234 {
                continue;
            }
            members[(seq % 3) as usize].insert(seq);
        }
        members[0].insert(2000); // 2000 % 3 == 2: member 2 got it too
        let mut group = SeqSet::new();
        for member in &members {
            group.merge(member);
        }
        assert_eq!(group.distinct, 2999);
        assert_eq!(group.duplicates, 1);
        assert_eq!(group.missing(3000), 1);
        assert!(!group.contains(1234));
        // Member 0 got 2000 after 2997: its own reordering, kept in the sum.
        assert_eq!(group.reordered, 1);
    }

    #[test]
    fn merge_maps_by_publisher() {
        let mut a = SeqMap::default();
        let mut b = SeqMap::default();
        a.entry(1).or_default().insert(0);
        b.entry(1).or_default().insert(1);
        b.entry(2).or_default().insert(0);
        merge_maps(&mut a, &b);
        assert_eq!(a[&1].distinct, 2);
        assert_eq!(a[&2].distinct, 1);
        let mut totals = SeqTotals::default();
        a.values().for_each(|s| totals.add(s));
        assert_eq!(totals.distinct, 3);
    }

    #[test]
    fn serde_round_trip() {
        let mut set = SeqSet::new();
        for seq in [0, 1, 5, 70, 71, 500] {
            set.insert(seq);
        }
        let json = serde_json::to_string(&set).unwrap();
        let back: SeqSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.missing(501), 495);
    }
}
