//! The replicated interest index: which shards have at least one subscriber to a filter.
//!
//! Every shard keeps a [`LocalInterest`] for its own subscriptions. It emits an
//! [`InterestDelta`] only when a filter gains its first or loses its last local subscriber, so
//! the replicas see one message per (filter, shard) transition, not one per SUBSCRIBE. Every
//! shard applies all shards' deltas to its own [`InterestIndex`] replica and asks it, once per
//! PUBLISH, which shards to forward to.
//!
//! ## Ordering
//! Each origin numbers its deltas 1, 2, 3, ... A replica remembers the last version applied
//! per origin and ignores anything at or below it, so a delta that is delivered twice (a retry,
//! or both a snapshot and the live stream) is harmless. Deltas from one origin must arrive in
//! order; deltas from different origins may interleave freely because they touch different bits.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::trie::{LevelTrie, Slot};

/// Largest number of shards the bitmap can represent. The broker refuses a configured shard
/// count above this at startup, which is what lets [`ShardSet`] ignore out-of-range indices
/// instead of failing at run time.
pub const MAX_SHARDS: usize = 256;

const WORDS: usize = MAX_SHARDS / 64;

/// A set of shard indices below [`MAX_SHARDS`], as a fixed 256-bit bitmap.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct ShardSet {
    bits: [u64; WORDS],
}

impl ShardSet {
    /// The empty set.
    pub fn new() -> Self {
        ShardSet { bits: [0; WORDS] }
    }

    /// Adds `shard`. An index `>= MAX_SHARDS` is a startup-validation bug: it trips a debug
    /// assertion and is otherwise ignored.
    #[inline]
    pub fn insert(&mut self, shard: usize) {
        debug_assert!(shard < MAX_SHARDS, "shard index {shard} out of range");
        if let Some(word) = self.bits.get_mut(shard / 64) {
            *word |= 1 << (shard % 64);
        }
    }

    /// Removes `shard`; out-of-range indices are treated as in [`ShardSet::insert`].
    #[inline]
    pub fn remove(&mut self, shard: usize) {
        debug_assert!(shard < MAX_SHARDS, "shard index {shard} out of range");
        if let Some(word) = self.bits.get_mut(shard / 64) {
            *word &= !(1 << (shard % 64));
        }
    }

    /// True if `shard` is in the set (false for any out-of-range index).
    #[inline]
    pub fn contains(&self, shard: usize) -> bool {
        self.bits
            .get(shard / 64)
            .is_some_and(|word| word & (1 << (shard % 64)) != 0)
    }

    /// True if no shard is in the set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&word| word == 0)
    }

    /// Number of shards in the set.
    #[inline]
    pub fn len(&self) -> usize {
        self.bits
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    /// Adds every shard of `other`.
    #[inline]
    pub fn union_with(&mut self, other: &ShardSet) {
        for (mine, theirs) in self.bits.iter_mut().zip(other.bits.iter()) {
            *mine |= theirs;
        }
    }

    /// The shards in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

impl FromIterator<usize> for ShardSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = ShardSet::new();
        iter.into_iter().for_each(|shard| set.insert(shard));
        set
    }
}

impl Slot for ShardSet {
    fn is_empty(&self) -> bool {
        ShardSet::is_empty(self)
    }
}

/// Whether an origin shard gained or lost interest in a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterestChange {
    /// The filter got its first subscriber on the origin shard.
    Added,
    /// The filter lost its last subscriber on the origin shard.
    Removed,
}

/// One (filter, shard) interest transition, broadcast from its origin to every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterestDelta {
    /// The shard whose local subscriptions changed.
    pub origin: u16,
    /// Position in the origin's sequence of deltas; the first is 1.
    pub version: u64,
    /// The filter, shared with the origin's bookkeeping so broadcasting does not copy it.
    pub filter: Arc<str>,
    /// Gained or lost.
    pub change: InterestChange,
}

/// Kept by each shard for its own subscriptions: counts local subscribers per filter and emits a
/// delta only on 0->1 and 1->0 transitions, with a per-origin version that increases by one per
/// delta.
#[derive(Debug)]
pub struct LocalInterest {
    origin: u16,
    version: u64,
    counts: HashMap<Arc<str>, usize>,
}

impl LocalInterest {
    /// Bookkeeping for shard `origin`, which must be below [`MAX_SHARDS`].
    pub fn new(origin: u16) -> Self {
        LocalInterest {
            origin,
            version: 0,
            counts: HashMap::new(),
        }
    }

    fn delta(&mut self, filter: Arc<str>, change: InterestChange) -> InterestDelta {
        self.version += 1;
        InterestDelta {
            origin: self.origin,
            version: self.version,
            filter,
            change,
        }
    }

    /// Counts one more local subscriber to `filter`; a delta if it is the first.
    pub fn subscribe(&mut self, filter: &str) -> Option<InterestDelta> {
        if let Some(count) = self.counts.get_mut(filter) {
            *count += 1;
            return None;
        }
        let filter: Arc<str> = filter.into();
        self.counts.insert(filter.clone(), 1);
        Some(self.delta(filter, InterestChange::Added))
    }

    /// Counts one fewer local subscriber to `filter`; a delta if it was the last. `None`, and no
    /// change, if the count was already 0.
    pub fn unsubscribe(&mut self, filter: &str) -> Option<InterestDelta> {
        let count = self.counts.get_mut(filter)?;
        if *count > 1 {
            *count -= 1;
            return None;
        }
        let (filter, _) = self.counts.remove_entry(filter)?;
        Some(self.delta(filter, InterestChange::Removed))
    }

    /// Number of local subscribers to exactly `filter`.
    pub fn count(&self, filter: &str) -> usize {
        self.counts.get(filter).copied().unwrap_or(0)
    }

    /// The shard this bookkeeping belongs to.
    pub fn origin(&self) -> u16 {
        self.origin
    }

    /// Version of the last delta emitted (0 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of filters with at least one local subscriber.
    pub fn filter_count(&self) -> usize {
        self.counts.len()
    }

    /// All currently-interesting filters as `Added` deltas (to bootstrap a replica that joined
    /// late).
    ///
    /// The deltas carry consecutive versions ending at [`LocalInterest::version`], so a fresh
    /// replica (or one cleared with [`InterestIndex::forget_origin`]) that applies the snapshot
    /// and then every later live delta ends up exact. Every interesting filter cost at least one
    /// delta, so the versions never go below 1.
    pub fn snapshot(&self) -> Vec<InterestDelta> {
        let first = (self.version + 1).saturating_sub(self.counts.len() as u64);
        self.counts
            .keys()
            .zip(first..)
            .map(|(filter, version)| InterestDelta {
                origin: self.origin,
                version,
                filter: filter.clone(),
                change: InterestChange::Added,
            })
            .collect()
    }
}

/// One replica per shard: filter -> shards with local subscribers, stored in the same trie as
/// [`crate::trie::SubscriptionTrie`] with a [`ShardSet`] per filter that matching ORs together.
pub struct InterestIndex {
    trie: LevelTrie<ShardSet>,
    /// Last version applied per origin; 0 means none yet.
    versions: Box<[u64; MAX_SHARDS]>,
    filters: usize,
}

impl Default for InterestIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InterestIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterestIndex")
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl InterestIndex {
    /// An empty replica.
    pub fn new() -> Self {
        InterestIndex {
            trie: LevelTrie::default(),
            versions: Box::new([0; MAX_SHARDS]),
            filters: 0,
        }
    }

    /// Applies a delta; returns false and changes nothing if it is stale or a duplicate
    /// (version <= last applied version from that origin), or if its origin is not below
    /// [`MAX_SHARDS`].
    ///
    /// A gap (version > last + 1) is applied and the replica moves on to the new version: the
    /// missing deltas can no longer be applied, so the replica may be wrong about filters they
    /// touched until the origin resends its state, which the broker does with
    /// [`InterestIndex::forget_origin`] followed by the origin's [`LocalInterest::snapshot`].
    /// Within one process the cross-shard queues are lossless and ordered, so gaps do not occur.
    pub fn apply(&mut self, delta: &InterestDelta) -> bool {
        let origin = usize::from(delta.origin);
        let Some(last) = self.versions.get_mut(origin) else {
            return false;
        };
        if delta.version <= *last {
            return false;
        }
        *last = delta.version;
        match delta.change {
            InterestChange::Added => {
                let set = self.trie.slot_mut(&delta.filter);
                self.filters += usize::from(set.is_empty());
                set.insert(origin);
            }
            InterestChange::Removed => {
                let update = self.trie.update(&delta.filter, |set| {
                    let had = set.contains(origin);
                    set.remove(origin);
                    had
                });
                if let Some((true, true)) = update {
                    self.filters -= 1;
                }
            }
        }
        true
    }

    /// The shards that have at least one subscriber whose filter matches the topic name `topic`.
    #[inline]
    pub fn shards_for(&self, topic: &str) -> ShardSet {
        let mut shards = ShardSet::new();
        self.trie
            .for_each_match(topic, &mut |set: &ShardSet| shards.union_with(set));
        shards
    }

    /// Number of filters that at least one shard is interested in.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// The shards interested in exactly `filter`.
    pub fn shards_of(&self, filter: &str) -> ShardSet {
        self.trie.slot(filter).copied().unwrap_or_default()
    }

    /// Last version applied from `origin` (0 if none, or if `origin` is out of range).
    pub fn version(&self, origin: u16) -> u64 {
        self.versions.get(usize::from(origin)).copied().unwrap_or(0)
    }

    /// Drops everything learned from `origin` and resets its version to 0, so that its
    /// [`LocalInterest::snapshot`] can be applied from scratch (after a gap or a shard restart).
    /// Walks the whole index.
    pub fn forget_origin(&mut self, origin: u16) {
        let origin = usize::from(origin);
        let Some(last) = self.versions.get_mut(origin) else {
            return;
        };
        *last = 0;
        let mut filters = 0;
        self.trie.retain_slots(|set| {
            set.remove(origin);
            filters += usize::from(!set.is_empty());
        });
        self.filters = filters;
    }

    /// Number of trie nodes including the root (diagnostics).
    pub fn node_count(&self) -> usize {
        self.trie.node_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(shards: &[usize]) -> ShardSet {
        shards.iter().copied().collect()
    }

    #[test]
    fn shard_set_basics() {
        let mut s = ShardSet::new();
        assert!(s.is_empty());
        for shard in [0, 1, 63, 64, 127, 200, 255] {
            s.insert(shard);
        }
        assert_eq!(s.len(), 7);
        assert!(s.contains(63) && s.contains(64) && s.contains(255));
        assert!(!s.contains(2) && !s.contains(256) && !s.contains(usize::MAX));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![0, 1, 63, 64, 127, 200, 255]
        );
        s.remove(64);
        s.remove(64);
        assert!(!s.contains(64));
        let mut t = set(&[5, 64]);
        t.union_with(&s);
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            vec![0, 1, 5, 63, 64, 127, 200, 255]
        );
        assert_eq!(ShardSet::default(), ShardSet::new());
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_range_shards_are_ignored() {
        let mut s = ShardSet::new();
        s.insert(MAX_SHARDS);
        s.remove(MAX_SHARDS + 7);
        assert!(s.is_empty());
    }

    #[test]
    fn local_interest_emits_only_transitions() {
        let mut local = LocalInterest::new(3);
        let first = local.subscribe("a/+").expect("first subscriber");
        assert_eq!(first.origin, 3);
        assert_eq!(first.version, 1);
        assert_eq!(&*first.filter, "a/+");
        assert_eq!(first.change, InterestChange::Added);
        assert_eq!(local.subscribe("a/+"), None);
        assert_eq!(local.count("a/+"), 2);
        assert_eq!(local.unsubscribe("a/+"), None);
        let last = local.unsubscribe("a/+").expect("last subscriber");
        assert_eq!((last.version, last.change), (2, InterestChange::Removed));
        assert_eq!(local.unsubscribe("a/+"), None);
        assert_eq!(local.unsubscribe("never"), None);
        assert_eq!(local.count("a/+"), 0);
        assert_eq!(local.version(), 2);
        assert_eq!(local.subscribe("a/+").map(|d| d.version), Some(3));
    }

    #[test]
    fn index_matches_and_unions() {
        let mut index = InterestIndex::new();
        let mut locals: Vec<_> = (0..3).map(LocalInterest::new).collect();
        let subs = [
            (0, "a/b"),
            (1, "a/+"),
            (2, "#"),
            (1, "$SYS/#"),
            (0, "a/b/#"),
        ];
        for (origin, filter) in subs {
            let delta = locals[origin].subscribe(filter).expect("first");
            assert!(index.apply(&delta));
        }
        assert_eq!(index.filter_count(), 5);
        assert_eq!(index.shards_for("a/b"), set(&[0, 1, 2]));
        assert_eq!(index.shards_for("a/c"), set(&[1, 2]));
        assert_eq!(index.shards_for("a/b/c"), set(&[0, 2]));
        assert_eq!(index.shards_for("$SYS/load"), set(&[1]));
        assert_eq!(index.shards_for("$other"), set(&[]));
        assert_eq!(index.shards_of("a/+"), set(&[1]));

        let delta = locals[2].unsubscribe("#").expect("last");
        assert!(index.apply(&delta));
        assert_eq!(index.shards_for("a/c"), set(&[1]));
        assert_eq!(index.shards_for("x"), set(&[]));
        assert_eq!(index.filter_count(), 4);
    }

    #[test]
    fn same_filter_from_several_origins() {
        let mut index = InterestIndex::new();
        let mut a = LocalInterest::new(0);
        let mut b = LocalInterest::new(200);
        assert!(index.apply(&a.subscribe("t").expect("first")));
        assert!(index.apply(&b.subscribe("t").expect("first")));
        assert_eq!(index.filter_count(), 1);
        assert_eq!(index.shards_for("t"), set(&[0, 200]));
        assert!(index.apply(&a.unsubscribe("t").expect("last")));
        assert_eq!(index.shards_for("t"), set(&[200]));
        assert_eq!(index.filter_count(), 1);
        assert!(index.apply(&b.unsubscribe("t").expect("last")));
        assert_eq!(index.filter_count(), 0);
        assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn stale_and_duplicate_deltas_are_ignored() {
        let mut index = InterestIndex::new();
        let mut local = LocalInterest::new(1);
        let add = local.subscribe("a").expect("first");
        let remove = local.unsubscribe("a").expect("last");
        assert!(index.apply(&add));
        assert!(!index.apply(&add), "duplicate");
        assert!(index.apply(&remove));
        assert!(!index.apply(&remove), "duplicate");
        assert!(!index.apply(&add), "stale: would resurrect the filter");
        assert_eq!(index.shards_for("a"), set(&[]));
        assert_eq!(index.version(1), 2);

        let zero = InterestDelta {
            version: 0,
            ..add.clone()
        };
        assert!(!index.apply(&zero), "versions start at 1");
        let foreign = InterestDelta {
            origin: MAX_SHARDS as u16,
            version: 1,
            ..add
        };
        assert!(!index.apply(&foreign), "origin out of range");
        assert_eq!(index.filter_count(), 0);
    }

    #[test]
    fn gaps_are_applied() {
        let mut index = InterestIndex::new();
        let mut local = LocalInterest::new(0);
        let _lost = local.subscribe("lost");
        let seen = local.subscribe("seen").expect("first");
        assert_eq!(seen.version, 2);
        assert!(index.apply(&seen));
        assert_eq!(index.shards_for("seen"), set(&[0]));
        assert_eq!(index.shards_for("lost"), set(&[]));
        // Resync: forget and replay the snapshot.
        index.forget_origin(0);
        assert_eq!(index.version(0), 0);
        for delta in local.snapshot() {
            assert!(index.apply(&delta));
        }
        assert_eq!(index.shards_for("lost"), set(&[0]));
        assert_eq!(index.version(0), local.version());
        assert!(index.apply(&local.unsubscribe("lost").expect("last")));
        assert_eq!(index.shards_for("lost"), set(&[]));
    }

    #[test]
    fn snapshot_bootstraps_a_late_replica() {
        let mut local = LocalInterest::new(4);
        for f in ["a", "b", "c", "d"] {
            local.subscribe(f);
        }
        local.unsubscribe("b");
        local.subscribe("c");
        let snapshot = local.snapshot();
        assert_eq!(snapshot.len(), 3);
        let mut versions: Vec<_> = snapshot.iter().map(|d| d.version).collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![3, 4, 5]);

        let mut late = InterestIndex::new();
        for delta in &snapshot {
            assert!(late.apply(delta));
        }
        assert!(late.apply(&local.subscribe("e").expect("first")));
        for f in ["a", "c", "d", "e"] {
            assert_eq!(late.shards_for(f), set(&[4]), "{f}");
        }
        assert_eq!(late.shards_for("b"), set(&[]));
        assert_eq!(late.filter_count(), 4);
    }

    #[test]
    fn forget_origin_prunes() {
        let mut index = InterestIndex::new();
        let mut a = LocalInterest::new(0);
        let mut b = LocalInterest::new(1);
        for f in ["x/y", "x/+", "x/#", "z"] {
            index.apply(&a.subscribe(f).expect("first"));
        }
        index.apply(&b.subscribe("x/y").expect("first"));
        index.forget_origin(0);
        assert_eq!(index.filter_count(), 1);
        assert_eq!(index.shards_for("x/y"), set(&[1]));
        assert_eq!(index.node_count(), 3);
        index.forget_origin(1);
        assert_eq!(index.filter_count(), 0);
        assert_eq!(index.node_count(), 1);
    }
}
