//! The subscription trie: topic filter -> subscribers, matched against topic names.
//!
//! Each node keys its literal children by level and keeps two dedicated slots for the
//! wildcards (FlashMQ style): a `+` child node and the subscribers of `#` at that position. A
//! match therefore never hashes or compares a wildcard level: at every level it follows at most
//! one literal child and one `+` child, and collects the `#` subscribers it passes.
//!
//! The node layout is generic over what a filter holds (the "slot") so that
//! [`crate::interest::InterestIndex`] reuses the same trie with a [`crate::interest::ShardSet`]
//! per filter instead of a subscriber list.
//!
//! ## Depth
//! Insert, remove, lookup and drop are iterative. Matching recurses only where it branches into
//! a `+` child, so its stack depth is bounded by the number of `+` levels of the deepest
//! matching filter. The broker bounds that by enforcing a level limit on every filter
//! ([`crate::topic::check_limits`]) before it reaches the trie.

use std::collections::HashMap;

/// Maps keyed by what clients choose (topic levels, client keys): a keyed hash (random per
/// process, so collisions cannot be chosen) that is several times cheaper than SipHash.
pub(crate) type LevelMap<K, V> = HashMap<K, V, ahash::RandomState>;
use std::fmt;
use std::hash::Hash;
use std::{mem, slice};

/// Literal children stay in a linear list up to this many: a scan of a few short strings beats
/// hashing, and most nodes have a single child.
const FEW_CHILDREN_MAX: usize = 8;
/// A hashed node falls back to the list only well below the upgrade point, so a node whose
/// child count hovers around the threshold does not convert back and forth on every change.
const FEW_CHILDREN_DOWNGRADE: usize = 4;
/// Subscribers of one filter stay in a list up to this many (the common case is 1–4).
const FEW_SUBSCRIBERS_MAX: usize = 8;
/// Same hysteresis as for children.
const FEW_SUBSCRIBERS_DOWNGRADE: usize = 4;

/// Splits the first level off `rest`; `None` for the remainder means it was the last level.
#[inline]
pub(crate) fn split_level(rest: &str) -> (&str, Option<&str>) {
    // A byte search: `str::find(char)` compares each candidate through a `memcmp` call, which
    // was most of the cost of matching short topics.
    match rest.bytes().position(|byte| byte == b'/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

/// How one level of a filter is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edge<'a> {
    Literal(&'a str),
    Plus,
    /// `#` as the last level. A `#` anywhere else is not a valid filter; it is stored as a
    /// literal level, which can never match a topic name (names cannot contain `#`).
    Hash,
}

#[inline]
pub(crate) fn classify(level: &str, is_last: bool) -> Edge<'_> {
    match level {
        "+" => Edge::Plus,
        "#" if is_last => Edge::Hash,
        _ => Edge::Literal(level),
    }
}

/// Iterates the levels of a filter as [`Edge`]s.
pub(crate) fn edges(filter: &str) -> impl Iterator<Item = Edge<'_>> {
    let mut rest = Some(filter);
    std::iter::from_fn(move || {
        let (level, next) = split_level(rest?);
        rest = next;
        Some(classify(level, next.is_none()))
    })
}

/// Children keyed by level: a list while there are few, a hash map beyond that.
// The map is boxed so that the common list case keeps every node small.
#[allow(clippy::box_collection)]
pub(crate) enum Children<N> {
    Few(Vec<(Box<str>, N)>),
    Many(Box<LevelMap<Box<str>, N>>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl<N> Children<N> {
    #[inline]
    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        match self {
            Children::Few(list) => list
                .iter()
                .find(|(label, _)| &**label == level)
                .map(|(_, node)| node),
            Children::Many(map) => map.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            Children::Few(list) => list
                .iter_mut()
                .find(|(label, _)| &**label == level)
                .map(|(_, node)| node),
            Children::Many(map) => map.get_mut(level),
        }
    }

    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        if let Children::Few(list) = self {
            if list.len() >= FEW_CHILDREN_MAX && !list.iter().any(|(l, _)| &**l == level) {
                let map: LevelMap<Box<str>, N> = mem::take(list).into_iter().collect();
                *self = Children::Many(Box::new(map));
            }
        }
        match self {
            Children::Few(list) => {
                if let Some(i) = list.iter().position(|(l, _)| &**l == level) {
                    return &mut list[i].1;
                }
                // Most nodes have one child: grow one slot at a time instead of Vec's minimum
                // of four, which would multiply the size of long chains.
                list.reserve_exact(1);
                let i = list.len();
                list.push((level.into(), make()));
                &mut list[i].1
            }
            Children::Many(map) => {
                // `entry` would need an owned key even on a hit; look up first.
                if !map.contains_key(level) {
                    map.insert(level.into(), make());
                }
                match map.get_mut(level) {
                    Some(node) => node,
                    None => unreachable!("inserted just above"),
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        let removed = match self {
            Children::Few(list) => {
                let i = list.iter().position(|(l, _)| &**l == level)?;
                let (_, node) = list.swap_remove(i);
                if list.is_empty() {
                    // Give the allocation back so an emptied trie returns to its baseline.
                    *list = Vec::new();
                }
                node
            }
            Children::Many(map) => map.remove(level)?,
        };
        if let Children::Many(map) = self {
            if map.len() <= FEW_CHILDREN_DOWNGRADE {
                let mut list = Vec::with_capacity(map.len());
                list.extend(map.drain());
                *self = Children::Few(list);
            }
        }
        Some(removed)
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::Few(list) => list.len(),
            Children::Many(map) => map.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn for_each<'a>(&'a self, mut f: impl FnMut(&'a str, &'a N)) {
        match self {
            Children::Few(list) => list.iter().for_each(|(l, n)| f(l, n)),
            Children::Many(map) => map.iter().for_each(|(l, n)| f(l, n)),
        }
    }

    /// Keeps the children for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut N) -> bool) {
        match self {
            Children::Few(list) => {
                list.retain_mut(|(_, n)| keep(n));
                if list.is_empty() {
                    *list = Vec::new();
                }
            }
            Children::Many(map) => {
                map.retain(|_, n| keep(n));
                if map.len() <= FEW_CHILDREN_DOWNGRADE {
                    let list: Vec<_> = map.drain().collect();
                    *self = Children::Few(list);
                }
            }
        }
    }

    /// Moves every child into `out`, leaving this empty.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<N>) {
        match mem::take(self) {
            Children::Few(list) => out.extend(list.into_iter().map(|(_, n)| n)),
            Children::Many(map) => out.extend(map.into_values()),
        }
    }
}

/// What a filter position holds; empty slots on childless nodes get pruned.
pub(crate) trait Slot: Default {
    fn is_empty(&self) -> bool;
}

/// One level of the trie.
pub(crate) struct Node<S> {
    children: Children<Node<S>>,
    plus: Option<Box<Node<S>>>,
    /// The slot of the filter that ends in `#` right below this node. `#` never has children,
    /// so it needs no node of its own.
    hash: Option<Box<S>>,
    slot: S,
}

impl<S: Default> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            hash: None,
            slot: S::default(),
        }
    }
}

impl<S> Drop for Node<S> {
    fn drop(&mut self) {
        // The derived drop would recurse once per level; a long chain could overflow the stack.
        // Flatten the subtree so every node is dropped childless.
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.children.drain_into(&mut pending);
        if let Some(plus) = self.plus.take() {
            pending.push(*plus);
        }
        while let Some(mut node) = pending.pop() {
            node.children.drain_into(&mut pending);
            if let Some(plus) = node.plus.take() {
                pending.push(*plus);
            }
        }
    }
}

impl<S: Slot> Node<S> {
    fn is_empty(&self) -> bool {
        self.slot.is_empty()
            && self.hash.is_none()
            && self.plus.is_none()
            && self.children.is_empty()
    }

    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn child(&self, edge: Edge<'_>) -> Option<&Node<S>> {
        match edge {
            Edge::Literal(level) => self.children.get(level),
            Edge::Plus => self.plus.as_deref(),
            Edge::Hash => None,
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Node<S>> {
        match edge {
            Edge::Literal(level) => self.children.get_mut(level),
            Edge::Plus => self.plus.as_deref_mut(),
            Edge::Hash => None,
        }
    }

    fn count_nodes(&self) -> usize {
        let mut count = 0;
        let mut pending = vec![self];
        while let Some(node) = pending.pop() {
            count += 1;
            node.children.for_each(|_, child| pending.push(child));
            if let Some(plus) = &node.plus {
                pending.push(plus);
            }
        }
        count
    }

    /// Applies `f` to every slot below and including this node and prunes what became empty;
    /// returns true if this node is now empty.
    fn retain_slots(&mut self, f: &mut impl FnMut(&mut S)) -> bool {
        f(&mut self.slot);
        if let Some(hash) = &mut self.hash {
            f(hash);
            if hash.is_empty() {
                self.hash = None;
            }
        }
        if let Some(plus) = &mut self.plus {
            if plus.retain_slots(f) {
                self.plus = None;
            }
        }
        self.children.retain(|child| !child.retain_slots(f));
        self.is_empty()
    }
}

/// A trie of filters, each holding one slot `S`.
pub(crate) struct LevelTrie<S> {
    root: Node<S>,
}

impl<S: Slot> Default for LevelTrie<S> {
    fn default() -> Self {
        LevelTrie {
            root: Node::default(),
        }
    }
}

impl<S: Slot> LevelTrie<S> {
    /// The slot of exactly `filter`, if its node exists.
    pub(crate) fn slot(&self, filter: &str) -> Option<&S> {
        let mut node = &self.root;
        for edge in edges(filter) {
            if edge == Edge::Hash {
                return node.hash.as_deref();
            }
            node = node.child(edge)?;
        }
        Some(&node.slot)
    }

    /// The slot of exactly `filter`, creating the path to it.
    pub(crate) fn slot_mut(&mut self, filter: &str) -> &mut S {
        let mut node = &mut self.root;
        for edge in edges(filter) {
            node = match edge {
                Edge::Literal(level) => node.children.get_or_insert_with(level, Node::default),
                Edge::Plus => node.plus.get_or_insert_with(Box::default),
                Edge::Hash => return node.hash.get_or_insert_with(Box::default),
            };
        }
        &mut node.slot
    }

    /// Applies `f` to the slot of exactly `filter` if it exists, then prunes the nodes that
    /// became empty. Returns `f`'s result and whether the slot is empty afterwards.
    pub(crate) fn update<R>(
        &mut self,
        filter: &str,
        f: impl FnOnce(&mut S) -> R,
    ) -> Option<(R, bool)> {
        // Pass 1: apply. Borrowing rules make it simplest to walk again for the pruning instead
        // of keeping a stack of parents; the path is short and already in cache.
        let mut node = &mut self.root;
        let mut literal_depth = 0usize;
        let (result, slot_empty) = 'found: {
            for edge in edges(filter) {
                if edge == Edge::Hash {
                    let hash = node.hash.as_deref_mut()?;
                    let result = f(hash);
                    let empty = hash.is_empty();
                    if empty {
                        node.hash = None;
                    }
                    break 'found (result, empty);
                }
                node = node.child_mut(edge)?;
                literal_depth += 1;
            }
            let result = f(&mut node.slot);
            (result, node.slot.is_empty())
        };
        if literal_depth > 0 && node.is_empty() {
            self.prune(filter, literal_depth);
        }
        Some((result, slot_empty))
    }

    /// Removes the chain of empty nodes that ends at the node `depth` edges below the root on
    /// `filter`'s path.
    fn prune(&mut self, filter: &str, depth: usize) {
        // Pass 2: find the deepest node on the path that keeps something other than the path
        // itself; everything below it is an empty chain.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (d, edge) in edges(filter).take(depth).enumerate() {
            if d > 0 && (!node.slot.is_empty() || node.hash.is_some() || node.edge_count() > 1) {
                keep_depth = d;
            }
            match node.child(edge) {
                Some(child) => node = child,
                None => return,
            }
        }
        // Pass 3: cut the edge below the keeper.
        let mut node = &mut self.root;
        for (d, edge) in edges(filter).take(depth).enumerate() {
            if d == keep_depth {
                match edge {
                    Edge::Literal(level) => drop(node.children.remove(level)),
                    Edge::Plus => node.plus = None,
                    Edge::Hash => {}
                }
                return;
            }
            match node.child_mut(edge) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    /// Calls `f` with every non-empty slot whose filter matches the topic name `topic`.
    #[inline]
    pub(crate) fn for_each_match(&self, topic: &str, f: &mut impl FnMut(&S)) {
        let root = &self.root;
        if topic.starts_with('$') {
            // Filters starting with a wildcard never match `$` topics: skip the root's `+` and
            // `#` and continue on the literal path only.
            let (level, rest) = split_level(topic);
            if let Some(child) = root.children.get(level) {
                match_from(child, rest, f);
            }
        } else {
            match_from(root, Some(topic), f);
        }
    }

    pub(crate) fn node_count(&self) -> usize {
        self.root.count_nodes()
    }

    pub(crate) fn retain_slots(&mut self, mut f: impl FnMut(&mut S)) {
        self.root.retain_slots(&mut f);
    }
}

/// Matches the remaining levels `rest` (`None`: no levels left) starting at `node`.
fn match_from<S: Slot>(mut node: &Node<S>, mut rest: Option<&str>, f: &mut impl FnMut(&S)) {
    loop {
        // `#` matches its parent level too, so it matches whether or not levels remain.
        if let Some(hash) = &node.hash {
            f(hash);
        }
        let Some(levels) = rest else {
            if !node.slot.is_empty() {
                f(&node.slot);
            }
            return;
        };
        let (level, next) = split_level(levels);
        if let Some(plus) = &node.plus {
            match_from(plus, next, f);
        }
        match node.children.get(level) {
            Some(child) => {
                node = child;
                rest = next;
            }
            None => return,
        }
    }
}

/// The subscribers of one filter: inline for one, a list for a few, hashed beyond that so a
/// filter with 100k subscribers still inserts and removes in O(1).
// Boxed map: see `Children`.
#[allow(clippy::box_collection)]
#[derive(Default)]
pub(crate) enum Subscribers<K, V> {
    #[default]
    Empty,
    One(K, V),
    Few(Vec<(K, V)>),
    Many(Box<LevelMap<K, V>>),
}

impl<K, V> Slot for Subscribers<K, V> {
    #[inline]
    fn is_empty(&self) -> bool {
        matches!(self, Subscribers::Empty)
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subscribers::Empty => {
                *self = Subscribers::One(key, value);
                None
            }
            Subscribers::One(k, v) if *k == key => Some(mem::replace(v, value)),
            Subscribers::One(..) => {
                let Subscribers::One(k, v) = mem::take(self) else {
                    unreachable!("matched One above")
                };
                let mut list = Vec::with_capacity(4);
                list.push((k, v));
                list.push((key, value));
                *self = Subscribers::Few(list);
                None
            }
            Subscribers::Few(list) => {
                if let Some((_, v)) = list.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(v, value));
                }
                if list.len() < FEW_SUBSCRIBERS_MAX {
                    list.push((key, value));
                    return None;
                }
                let mut map: LevelMap<K, V> =
                    LevelMap::with_capacity_and_hasher(list.len() * 2, ahash::RandomState::new());
                map.extend(mem::take(list));
                map.insert(key, value);
                *self = Subscribers::Many(Box::new(map));
                None
            }
            Subscribers::Many(map) => map.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One(k, _) if *k != *key => None,
            Subscribers::One(..) => match mem::take(self) {
                Subscribers::One(_, v) => Some(v),
                _ => unreachable!("matched One above"),
            },
            Subscribers::Few(list) => {
                let i = list.iter().position(|(k, _)| k == key)?;
                let (_, v) = list.swap_remove(i);
                if list.len() == 1 {
                    if let Some((k, v)) = list.pop() {
                        *self = Subscribers::One(k, v);
                    }
                }
                Some(v)
            }
            Subscribers::Many(map) => {
                let v = map.remove(key)?;
                if map.len() <= FEW_SUBSCRIBERS_DOWNGRADE {
                    let mut list = Vec::with_capacity(FEW_SUBSCRIBERS_DOWNGRADE);
                    list.extend(map.drain());
                    *self = Subscribers::Few(list);
                }
                Some(v)
            }
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One(k, v) => (k == key).then_some(v),
            Subscribers::Few(list) => list.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Subscribers::Many(map) => map.get(key),
        }
    }
}

impl<K, V> Subscribers<K, V> {
    #[inline]
    fn for_each(&self, f: &mut impl FnMut(&K, &V)) {
        match self {
            Subscribers::Empty => {}
            Subscribers::One(k, v) => f(k, v),
            Subscribers::Few(list) => list.iter().for_each(|(k, v)| f(k, v)),
            Subscribers::Many(map) => map.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    fn iter(&self) -> SubscribersIter<'_, K, V> {
        match self {
            Subscribers::Empty => SubscribersIter::Few(<&[(K, V)]>::default().iter()),
            Subscribers::One(k, v) => SubscribersIter::One(Some((k, v))),
            Subscribers::Few(list) => SubscribersIter::Few(list.iter()),
            Subscribers::Many(map) => SubscribersIter::Many(map.iter()),
        }
    }
}

enum SubscribersIter<'a, K, V> {
    One(Option<(&'a K, &'a V)>),
    Few(slice::Iter<'a, (K, V)>),
    Many(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for SubscribersIter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SubscribersIter::One(one) => one.take(),
            SubscribersIter::Few(iter) => iter.next().map(|(k, v)| (k, v)),
            SubscribersIter::Many(iter) => iter.next(),
        }
    }
}

/// Filter -> subscribers, for one shard's local sessions.
///
/// `K` identifies a subscriber (a session), `V` is what the subscription carries (QoS, options,
/// subscription identifier...). One key holds at most one subscription per filter; subscribing
/// again to the same filter replaces the value, as MQTT requires.
///
/// Filters are stored as given: callers validate them ([`crate::topic::validate_topic_filter`])
/// and strip any `$share/{group}/` prefix they handle themselves.
pub struct SubscriptionTrie<K, V> {
    trie: LevelTrie<Subscribers<K, V>>,
    len: usize,
    filters: usize,
}

impl<K: Eq + Hash + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
    /// An empty trie; allocates nothing until the first insert.
    pub fn new() -> Self {
        SubscriptionTrie {
            trie: LevelTrie::default(),
            len: 0,
            filters: 0,
        }
    }

    /// Adds or replaces `key`'s subscription to exactly `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let slot = self.trie.slot_mut(filter);
        let was_empty = slot.is_empty();
        let previous = slot.insert(key, value);
        if previous.is_none() {
            self.len += 1;
            self.filters += usize::from(was_empty);
        }
        previous
    }

    /// Removes `key`'s subscription to exactly `filter`; prunes emptied nodes so memory returns
    /// to baseline after removing everything.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (removed, now_empty) = self.trie.update(filter, |slot| slot.remove(key))?;
        if removed.is_some() {
            self.len -= 1;
            self.filters -= usize::from(now_empty);
        }
        removed
    }

    /// `key`'s subscription to exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.trie.slot(filter)?.get(key)
    }

    /// Calls `f` for every (key, value) whose filter matches the topic name `topic` (no
    /// wildcards). A key subscribed through several matching filters is reported once per
    /// filter; overlapping-subscription policy is the caller's. Allocates nothing.
    #[inline]
    pub fn for_each_match<F: FnMut(&K, &V)>(&self, topic: &str, mut f: F) {
        self.trie
            .for_each_match(topic, &mut |slot: &Subscribers<K, V>| slot.for_each(&mut f));
    }

    /// [`Self::for_each_match`], returning how many filters matched: with at most one, every
    /// key was reported at most once (a filter's subscribers are distinct keys), so a caller
    /// that merges a key's matches needs no sort.
    #[inline]
    pub fn for_each_match_in_filters<F: FnMut(&K, &V)>(&self, topic: &str, mut f: F) -> usize {
        let mut filters = 0;
        self.trie
            .for_each_match(topic, &mut |slot: &Subscribers<K, V>| {
                filters += 1;
                slot.for_each(&mut f)
            });
        filters
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// The subscribers of exactly `filter` (for UNSUBSCRIBE bookkeeping and diagnostics), in no
    /// particular order.
    pub fn subscribers_of(&self, filter: &str) -> impl Iterator<Item = (&K, &V)> {
        self.trie
            .slot(filter)
            .into_iter()
            .flat_map(Subscribers::iter)
    }

    /// Number of trie nodes including the root (diagnostics: it is 1 for an empty trie, which
    /// shows that removal pruned everything).
    pub fn node_count(&self) -> usize {
        self.trie.node_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::filter_matches;

    fn matches(
        trie: &SubscriptionTrie<u32, &'static str>,
        topic: &str,
    ) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((*k, *v)));
        out.sort();
        out
    }

    fn single(filter: &'static str, topic: &str) -> bool {
        let mut trie = SubscriptionTrie::new();
        trie.insert(filter, 1u32, filter);
        let hit = !matches(&trie, topic).is_empty();
        assert_eq!(hit, filter_matches(filter, topic), "{filter} vs {topic}");
        hit
    }

    #[test]
    fn spec_examples() {
        assert!(single("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(single(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(single(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(single("sport/#", "sport"));
        assert!(single("#", "sport/tennis"));
        assert!(single("sport/tennis/+", "sport/tennis/player1"));
        assert!(!single("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!single("sport/+", "sport"));
        assert!(single("sport/+", "sport/"));
        assert!(single("+/+", "/finance"));
        assert!(single("/+", "/finance"));
        assert!(!single("+", "/finance"));
        assert!(single("+/tennis/#", "sport/tennis/player1"));
        assert!(single("+/#", "sport"));
        assert!(!single("sport/tennis#", "sport/tennis"));
    }

    #[test]
    fn dollar_topics() {
        assert!(!single("#", "$SYS/x"));
        assert!(!single("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!single("+", "$SYS"));
        assert!(!single("+/#", "$SYS"));
        assert!(single("$SYS/#", "$SYS/monitor/Clients"));
        assert!(single("$SYS/#", "$SYS"));
        assert!(single("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // Only the first level is special.
        assert!(single("a/+", "a/$b"));
        assert!(single("a/#", "a/$b"));
    }

    #[test]
    fn empty_levels() {
        assert!(single("/", "/"));
        assert!(single("+/+", "/"));
        assert!(!single("+", "/"));
        assert!(single("a//b", "a//b"));
        assert!(!single("a/b", "a//b"));
        assert!(single("a/+/b", "a//b"));
        assert!(single("/#", "/"));
        assert!(single("/#", "/a/b"));
        assert!(!single("/#", "a"));
        assert!(single("a/", "a/"));
        assert!(!single("a/", "a"));
    }

    #[test]
    fn insert_replaces_and_counts() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert("a/b", 1u32, "x"), None);
        assert_eq!(trie.insert("a/b", 1, "y"), Some("x"));
        assert_eq!(trie.insert("a/b", 2, "z"), None);
        assert_eq!(trie.insert("a/#", 1, "h"), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.filter_count(), 2);
        assert_eq!(trie.get("a/b", &1), Some(&"y"));
        assert_eq!(trie.get("a/#", &1), Some(&"h"));
        assert_eq!(trie.get("a", &1), None);
        assert_eq!(trie.get("a/+", &1), None);
        assert_eq!(matches(&trie, "a/b"), vec![(1, "h"), (1, "y"), (2, "z")]);
        let mut subs: Vec<_> = trie.subscribers_of("a/b").map(|(k, v)| (*k, *v)).collect();
        subs.sort();
        assert_eq!(subs, vec![(1, "y"), (2, "z")]);
        assert_eq!(trie.subscribers_of("nope").count(), 0);
    }

    #[test]
    fn removal_prunes_to_baseline() {
        let mut trie = SubscriptionTrie::new();
        let filters = [
            "a/b/c",
            "a/b",
            "a/+/c",
            "a/#",
            "#",
            "+",
            "/",
            "a/b/c/d/e",
            "+/+/+/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i as u32, "v");
        }
        assert_eq!(trie.filter_count(), filters.len());
        // Remove in an order that leaves interior nodes needed by others for a while.
        for (i, f) in filters.iter().enumerate().rev() {
            assert_eq!(trie.remove(f, &(i as u32)), Some("v"), "{f}");
            assert_eq!(trie.remove(f, &(i as u32)), None);
            for rest in &filters[..i] {
                assert!(trie.subscribers_of(rest).next().is_some(), "{rest} lost");
            }
        }
        assert!(trie.is_empty());
        assert_eq!(trie.filter_count(), 0);
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn removing_absent_entries_changes_nothing() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/b/c", 1u32, "v");
        assert_eq!(trie.remove("a/b", &1), None);
        assert_eq!(trie.remove("a/b/c", &2), None);
        assert_eq!(trie.remove("a/#", &1), None);
        assert_eq!(trie.remove("x/y", &1), None);
        assert_eq!(trie.node_count(), 4);
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.filter_count(), 1);
    }

    #[test]
    fn many_subscribers_on_one_filter() {
        let mut trie = SubscriptionTrie::new();
        for k in 0..10_000u32 {
            assert_eq!(trie.insert("hot/topic", k, k), None);
        }
        assert_eq!(trie.insert("hot/topic", 5, 55), Some(5));
        assert_eq!(trie.filter_count(), 1);
        let mut seen = 0u64;
        trie.for_each_match("hot/topic", |_, v| seen += u64::from(*v));
        assert_eq!(seen, (0..10_000u64).sum::<u64>() + 50);
        for k in (0..10_000u32).rev() {
            assert!(trie.remove("hot/topic", &k).is_some());
            assert_eq!(trie.len(), k as usize);
        }
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn many_children_on_one_node() {
        let mut trie = SubscriptionTrie::new();
        for n in 0..1000u32 {
            trie.insert(&format!("dev/{n}/t"), n, ());
        }
        for n in 0..1000u32 {
            let mut hits = Vec::new();
            trie.for_each_match(&format!("dev/{n}/t"), |k, _| hits.push(*k));
            assert_eq!(hits, vec![n]);
        }
        for n in 0..1000u32 {
            assert_eq!(trie.remove(&format!("dev/{n}/t"), &n), Some(()));
        }
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn misplaced_hash_is_a_literal_level() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/#/b", 1u32, "bad");
        assert!(matches(&trie, "a/x/b").is_empty());
        assert!(matches(&trie, "a").is_empty());
        assert_eq!(trie.get("a/#/b", &1), Some(&"bad"));
        assert_eq!(trie.remove("a/#/b", &1), Some("bad"));
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let filter = vec!["x"; 200_000].join("/");
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter, 1u32, ());
        let mut hits = 0;
        trie.for_each_match(&filter, |_, _| hits += 1);
        assert_eq!(hits, 1);
        drop(trie);
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter, 1u32, ());
        assert_eq!(trie.remove(&filter, &1), Some(()));
        assert_eq!(trie.node_count(), 1);
    }
}
