//! The trie, the interest index and the retained store against the reference matcher
//! `topic::filter_matches`, after random interleavings of inserts and removes.

use std::collections::{BTreeMap, BTreeSet};

use core_router::interest::{InterestDelta, InterestIndex, LocalInterest, ShardSet};
use core_router::retained::RetainedStore;
use core_router::topic::{filter_matches, validate_topic_filter, validate_topic_name};
use core_router::trie::SubscriptionTrie;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Few levels so that random filters and topics collide often.
const NARROW: &[&str] = &["", "$SYS", "a", "b"];
/// Enough distinct levels to push nodes past the small-list threshold.
const WIDE: &[&str] = &[
    "", "$SYS", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l",
];
const TOPIC_EXTRA: &[&str] = &["", "$SYS", "a", "b", "c", "$x"];

fn filter_strategy(levels: &'static [&'static str]) -> impl Strategy<Value = String> {
    let level = prop_oneof![4 => select(levels), 1 => Just("+")];
    (
        prop::collection::vec(level, 0..4),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("valid filter", |f| validate_topic_filter(f).is_ok())
}

fn topic_strategy(levels: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(select(levels), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid name", |t| validate_topic_name(t).is_ok())
}

/// Topic names that the filters in `pool` are meant to hit: the wildcards replaced by levels.
fn topics_near(pool: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for filter in pool {
        for (plus, hash) in [("a", None), ("", Some("z/y")), ("$SYS", Some(""))] {
            let mut levels: Vec<&str> = filter
                .split('/')
                .map(|l| if l == "+" { plus } else { l })
                .collect();
            if levels.last() == Some(&"#") {
                levels.pop();
                levels.extend(hash);
            }
            let topic = levels.join("/");
            if validate_topic_name(&topic).is_ok() {
                out.push(topic);
            }
        }
    }
    out
}

/// 256 cases by default so the file runs in well under a second; `PROPTEST_CASES` raises it for
/// a deeper run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum TrieOp {
    Insert(Index, u8, u32),
    Remove(Index, u8),
}

fn trie_ops(keys: u8) -> impl Strategy<Value = Vec<TrieOp>> {
    let op = prop_oneof![
        3 => (any::<Index>(), 0..keys, any::<u32>()).prop_map(|(f, k, v)| TrieOp::Insert(f, k, v)),
        2 => (any::<Index>(), 0..keys).prop_map(|(f, k)| TrieOp::Remove(f, k)),
    ];
    prop::collection::vec(op, 1..60)
}

type Trie = SubscriptionTrie<u8, (String, u32)>;
type Model = BTreeMap<(String, u8), u32>;

fn check_trie(trie: &Trie, model: &Model, pool: &[String], topics: &[String]) {
    let near = topics_near(pool);
    assert_eq!(trie.len(), model.len());
    let filters: BTreeSet<_> = model.keys().map(|(f, _)| f).collect();
    assert_eq!(trie.filter_count(), filters.len());
    for topic in topics.iter().chain(near.iter()) {
        let mut got = Vec::new();
        trie.for_each_match(topic, |k, (f, v)| got.push((f.clone(), *k, *v)));
        got.sort();
        let want: Vec<_> = model
            .iter()
            .filter(|((f, _), _)| filter_matches(f, topic))
            .map(|((f, k), v)| (f.clone(), *k, *v))
            .collect();
        assert_eq!(got, want, "topic {topic:?}");
    }
    for filter in pool {
        let mut got: Vec<_> = trie
            .subscribers_of(filter)
            .map(|(k, (f, v))| {
                assert_eq!(f, filter);
                (*k, *v)
            })
            .collect();
        got.sort();
        let want: Vec<_> = model
            .range((filter.clone(), 0)..=(filter.clone(), u8::MAX))
            .map(|((_, k), v)| (*k, *v))
            .collect();
        assert_eq!(got, want, "subscribers of {filter:?}");
        for (k, v) in want {
            assert_eq!(trie.get(filter, &k).map(|(_, v)| *v), Some(v));
        }
    }
}

fn run_trie(pool: Vec<String>, ops: Vec<TrieOp>, topics: Vec<String>) {
    let mut trie = Trie::new();
    let mut model = Model::new();
    for op in ops {
        match op {
            TrieOp::Insert(f, k, v) => {
                let filter = f.get(&pool);
                let prev = trie.insert(filter, k, (filter.clone(), v));
                assert_eq!(prev.map(|(_, v)| v), model.insert((filter.clone(), k), v));
            }
            TrieOp::Remove(f, k) => {
                let filter = f.get(&pool);
                let prev = trie.remove(filter, &k);
                assert_eq!(prev.map(|(_, v)| v), model.remove(&(filter.clone(), k)));
            }
        }
        check_trie(&trie, &model, &pool, &topics);
    }
    for (filter, k) in model.keys() {
        assert!(trie.remove(filter, k).is_some());
    }
    assert!(trie.is_empty());
    assert_eq!(trie.filter_count(), 0);
    assert_eq!(trie.node_count(), 1, "removal must prune every node");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn trie_matches_oracle(
        pool in prop::collection::vec(filter_strategy(NARROW), 1..8),
        ops in trie_ops(4),
        topics in prop::collection::vec(topic_strategy(TOPIC_EXTRA), 1..10),
    ) {
        run_trie(pool, ops, topics);
    }

    #[test]
    fn wide_trie_matches_oracle(
        pool in prop::collection::vec(filter_strategy(WIDE), 1..24),
        ops in trie_ops(14),
        topics in prop::collection::vec(topic_strategy(WIDE), 1..10),
    ) {
        run_trie(pool, ops, topics);
    }
}

#[derive(Debug, Clone)]
enum InterestOp {
    Subscribe(usize, Index),
    Unsubscribe(usize, Index),
    /// Deliver up to n pending deltas of one origin to the live replica.
    Deliver(usize, usize),
    /// Re-deliver an already applied delta of one origin: must be refused.
    Duplicate(usize, Index),
    /// Start the late replica from snapshots.
    Bootstrap,
}

const ORIGINS: usize = 4;

fn interest_ops() -> impl Strategy<Value = Vec<InterestOp>> {
    let origin = 0..ORIGINS;
    let op = prop_oneof![
        4 => (origin.clone(), any::<Index>()).prop_map(|(o, f)| InterestOp::Subscribe(o, f)),
        3 => (origin.clone(), any::<Index>()).prop_map(|(o, f)| InterestOp::Unsubscribe(o, f)),
        3 => (origin.clone(), 1..4usize).prop_map(|(o, n)| InterestOp::Deliver(o, n)),
        1 => (origin, any::<Index>()).prop_map(|(o, i)| InterestOp::Duplicate(o, i)),
        1 => Just(InterestOp::Bootstrap),
    ];
    prop::collection::vec(op, 1..80)
}

fn truth(locals: &[LocalInterest], pool: &[String], topic: &str) -> ShardSet {
    let mut set = ShardSet::new();
    for (origin, local) in locals.iter().enumerate() {
        if pool
            .iter()
            .any(|f| local.count(f) > 0 && filter_matches(f, topic))
        {
            set.insert(origin);
        }
    }
    set
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn interest_index_matches_oracle(
        pool in prop::collection::vec(filter_strategy(NARROW), 1..8),
        ops in interest_ops(),
        topics in prop::collection::vec(topic_strategy(TOPIC_EXTRA), 1..10),
    ) {
        let mut locals: Vec<_> = (0..ORIGINS as u16).map(LocalInterest::new).collect();
        let mut logs: Vec<Vec<InterestDelta>> = vec![Vec::new(); ORIGINS];
        let mut delivered = [0usize; ORIGINS];
        let mut live = InterestIndex::new();
        let mut late: Option<InterestIndex> = None;
        for op in ops {
            match op {
                InterestOp::Subscribe(o, f) => {
                    let filter: &String = f.get(&pool);
                    let before = locals[o].count(filter);
                    let delta = locals[o].subscribe(filter);
                    prop_assert_eq!(delta.is_some(), before == 0);
                    logs[o].extend(delta);
                }
                InterestOp::Unsubscribe(o, f) => {
                    let filter: &String = f.get(&pool);
                    let before = locals[o].count(filter);
                    let delta = locals[o].unsubscribe(filter);
                    prop_assert_eq!(delta.is_some(), before == 1);
                    prop_assert_eq!(locals[o].count(filter), before.saturating_sub(1));
                    logs[o].extend(delta);
                }
                InterestOp::Deliver(o, n) => {
                    let end = (delivered[o] + n).min(logs[o].len());
                    for delta in &logs[o][delivered[o]..end] {
                        prop_assert!(live.apply(delta));
                    }
                    delivered[o] = end;
                }
                InterestOp::Duplicate(o, i) => {
                    if delivered[o] > 0 {
                        let delta = &logs[o][i.index(delivered[o])];
                        prop_assert!(!live.apply(delta));
                    }
                }
                InterestOp::Bootstrap => {
                    let mut index = InterestIndex::new();
                    for local in &locals {
                        for delta in local.snapshot() {
                            prop_assert!(index.apply(&delta));
                        }
                    }
                    late = Some(index);
                }
            }
        }
        for o in 0..ORIGINS {
            for delta in &logs[o][delivered[o]..] {
                prop_assert!(live.apply(delta));
            }
        }
        let mut replicas = vec![live];
        if let Some(mut late) = late {
            // The full logs overlap the snapshot: the overlap must be refused as stale.
            for log in &logs {
                for delta in log {
                    late.apply(delta);
                }
            }
            replicas.push(late);
        }
        let interesting: BTreeSet<_> = pool
            .iter()
            .filter(|f| locals.iter().any(|l| l.count(f) > 0))
            .collect();
        let near = topics_near(&pool);
        for index in &replicas {
            prop_assert_eq!(index.filter_count(), interesting.len());
            for topic in topics.iter().chain(near.iter()) {
                prop_assert_eq!(index.shards_for(topic), truth(&locals, &pool, topic), "topic {:?}", topic);
            }
        }
        // Unsubscribing everything empties every replica down to its root.
        let mut live = replicas.swap_remove(0);
        for (o, local) in locals.iter_mut().enumerate() {
            for filter in &pool {
                while local.count(filter) > 0 {
                    if let Some(delta) = local.unsubscribe(filter) {
                        prop_assert!(live.apply(&delta));
                    }
                }
            }
            prop_assert_eq!(local.filter_count(), 0, "origin {}", o);
        }
        prop_assert_eq!(live.filter_count(), 0);
        prop_assert_eq!(live.node_count(), 1);
    }
}

#[derive(Debug, Clone)]
enum RetainOp {
    Set(Index, u32),
    Remove(Index),
}

fn run_retained(
    pool: Vec<String>,
    ops: Vec<RetainOp>,
    filters: Vec<String>,
) -> Result<(), TestCaseError> {
    let mut store = RetainedStore::new();
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    for op in ops {
        match op {
            RetainOp::Set(t, v) => {
                let topic = t.get(&pool);
                let prev = store.set(topic, (topic.clone(), v));
                prop_assert_eq!(prev.map(|(_, v)| v), model.insert(topic.clone(), v));
            }
            RetainOp::Remove(t) => {
                let topic = t.get(&pool);
                prop_assert_eq!(store.remove(topic).map(|(_, v)| v), model.remove(topic));
            }
        }
        prop_assert_eq!(store.len(), model.len());
        for filter in filters.iter().chain(pool.iter()) {
            let mut got = Vec::new();
            store.for_each_match(filter, |(t, v)| got.push((t.clone(), *v)));
            got.sort();
            let want: Vec<_> = model
                .iter()
                .filter(|(t, _)| filter_matches(filter, t))
                .map(|(t, v)| (t.clone(), *v))
                .collect();
            prop_assert_eq!(got, want, "filter {:?}", filter);
        }
        for topic in &pool {
            prop_assert_eq!(store.get(topic).map(|(_, v)| *v), model.get(topic).copied());
        }
    }
    for topic in model.keys() {
        prop_assert!(store.remove(topic).is_some());
    }
    prop_assert!(store.is_empty());
    prop_assert_eq!(store.node_count(), 1);
    Ok(())
}

fn retain_ops() -> impl Strategy<Value = Vec<RetainOp>> {
    let op = prop_oneof![
        3 => (any::<Index>(), any::<u32>()).prop_map(|(t, v)| RetainOp::Set(t, v)),
        2 => any::<Index>().prop_map(RetainOp::Remove),
    ];
    prop::collection::vec(op, 1..50)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retained_matches_oracle(
        pool in prop::collection::vec(topic_strategy(TOPIC_EXTRA), 1..12),
        ops in retain_ops(),
        filters in prop::collection::vec(filter_strategy(NARROW), 1..10),
    ) {
        run_retained(pool, ops, filters)?;
    }

    #[test]
    fn wide_retained_matches_oracle(
        pool in prop::collection::vec(topic_strategy(WIDE), 1..30),
        ops in retain_ops(),
        filters in prop::collection::vec(filter_strategy(WIDE), 1..10),
    ) {
        run_retained(pool, ops, filters)?;
    }
}
