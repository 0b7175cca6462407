//! Match throughput of the subscription trie and the interest index.
//!
//! Filters look like `dev/{n}/sensor/{m}` (ten per device). The "exact" mix has only those; the
//! "wild" mix turns ~10% into `dev/{n}/+/{m}` and ~2% into `dev/{n}/#`. Every timed iteration
//! matches one topic name `dev/{n}/sensor/{m}` drawn from a fixed pseudo-random list, so the
//! reported time is nanoseconds per match.

use std::hint::black_box;
use std::time::Duration;

use core_router::interest::{InterestIndex, LocalInterest};
use core_router::trie::SubscriptionTrie;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const PER_DEVICE: usize = 10;
const TOPICS: usize = 1024;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn filter(i: usize, wild: bool) -> String {
    let (n, m) = (i / PER_DEVICE, i % PER_DEVICE);
    match splitmix(i as u64) % 100 {
        0..=9 if wild => format!("dev/{n}/+/{m}"),
        10..=11 if wild => format!("dev/{n}/#"),
        _ => format!("dev/{n}/sensor/{m}"),
    }
}

fn topics(size: usize) -> Vec<String> {
    let devices = (size / PER_DEVICE).max(1) as u64;
    (0..TOPICS as u64)
        .map(|i| {
            let r = splitmix(i ^ 0x5555);
            format!(
                "dev/{}/sensor/{}",
                r % devices,
                (r >> 32) % PER_DEVICE as u64
            )
        })
        .collect()
}

/// Resident memory in bytes, for a rough bytes-per-filter figure (Linux only).
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn configure<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group
}

fn trie_match(c: &mut Criterion) {
    let mut group = configure(c, "trie_for_each_match");
    for size in [1_000, 100_000, 1_000_000] {
        for (mix, wild) in [("exact", false), ("wild", true)] {
            let before = resident();
            let mut trie = SubscriptionTrie::new();
            for i in 0..size {
                trie.insert(&filter(i, wild), i as u32, ());
            }
            if let (Some(before), Some(after)) = (before, resident()) {
                eprintln!(
                    "trie {mix}/{size}: {} filters, ~{} bytes resident per filter",
                    trie.filter_count(),
                    after.saturating_sub(before) / size as u64
                );
            }
            let topics = topics(size);
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new(mix, size), |b| {
                b.iter(|| {
                    let topic = &topics[next % TOPICS];
                    next += 1;
                    let mut hits = 0u32;
                    trie.for_each_match(black_box(topic), |k, _| hits = hits.wrapping_add(*k));
                    hits
                })
            });
        }
    }
    group.finish();
}

fn interest_match(c: &mut Criterion) {
    let mut group = configure(c, "interest_shards_for");
    let size = 100_000;
    for (mix, wild) in [("exact", false), ("wild", true)] {
        let mut index = InterestIndex::new();
        let mut locals: Vec<_> = (0..16).map(LocalInterest::new).collect();
        for i in 0..size {
            let origin = (splitmix(i as u64 ^ 0xabcd) % 16) as usize;
            if let Some(delta) = locals[origin].subscribe(&filter(i, wild)) {
                index.apply(&delta);
            }
        }
        let topics = topics(size);
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new(mix, size), |b| {
            b.iter(|| {
                let topic = &topics[next % TOPICS];
                next += 1;
                index.shards_for(black_box(topic))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, trie_match, interest_match);
criterion_main!(benches);
