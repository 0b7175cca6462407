//! Heap accounting: matching allocates nothing, and removing everything gives every byte back.
//!
//! A counting global allocator tracks the current thread only, so tests running in parallel
//! threads do not disturb each other's numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use core_router::interest::{InterestIndex, LocalInterest};
use core_router::retained::RetainedStore;
use core_router::trie::SubscriptionTrie;

struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn track(delta: isize, allocations: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + delta));
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + allocations));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize, 1);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize), 0);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn filters() -> Vec<String> {
    let mut out = Vec::new();
    for n in 0..300 {
        out.push(format!("dev/{n}/sensor/{}", n % 7));
        out.push(format!("dev/{n}/+/temp"));
        out.push(format!("dev/{n}/#"));
        out.push(format!("+/{n}/sensor/#"));
    }
    out.extend(["#", "+", "/", "//", "$SYS/#", "hot"].map(String::from));
    out
}

/// The keyed hash of large trie levels draws its process-wide seed (a small allocation kept
/// for the process's life) on first use: drawn before any baseline is taken.
fn seed_hashes() {
    let _ = ahash::RandomState::new();
}

#[test]
fn subscription_trie_returns_to_baseline_and_matches_without_allocating() {
    let filters = filters();
    let mut trie = SubscriptionTrie::new();
    seed_hashes();
    let baseline = live_bytes();
    for round in 0..2 {
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i as u64, round);
        }
        // Enough subscribers on one filter to go through every representation.
        for k in 0..1000u64 {
            trie.insert("hot", 1_000_000 + k, round);
        }
        assert!(live_bytes() > baseline);

        let before = allocations();
        let mut hits = 0usize;
        for n in 0..300 {
            for topic in [format!("dev/{n}/sensor/1"), format!("dev/{n}/x/temp")] {
                let start = allocations();
                trie.for_each_match(&topic, |_, _| hits += 1);
                assert_eq!(allocations(), start, "for_each_match({topic}) allocated");
            }
        }
        let start = allocations();
        trie.for_each_match("hot", |_, _| hits += 1);
        trie.for_each_match("$SYS/x", |_, _| hits += 1);
        assert_eq!(allocations(), start);
        assert!(hits > 1000 && allocations() > before);

        for k in 0..1000u64 {
            trie.remove("hot", &(1_000_000 + k));
        }
        for (i, f) in filters.iter().enumerate() {
            assert!(trie.remove(f, &(i as u64)).is_some());
        }
        assert!(trie.is_empty());
        assert_eq!(live_bytes(), baseline, "round {round}: memory not returned");
    }
}

#[test]
fn interest_index_returns_to_baseline_and_matches_without_allocating() {
    let filters = filters();
    let mut index = InterestIndex::new();
    let mut locals: Vec<_> = (0..4).map(LocalInterest::new).collect();
    let mut adds = Vec::new();
    let mut removals = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        adds.extend(locals[i % 4].subscribe(f));
    }
    for (i, f) in filters.iter().enumerate() {
        removals.extend(locals[i % 4].unsubscribe(f));
    }
    seed_hashes();
    let baseline = live_bytes();
    for d in &adds {
        assert!(index.apply(d));
    }
    assert!(live_bytes() > baseline);
    let start = allocations();
    let mut total = 0;
    total += index.shards_for("dev/7/sensor/0").len();
    total += index.shards_for("$SYS/x").len();
    total += index.shards_for("a/b/c/d/e").len();
    assert_eq!(allocations(), start, "shards_for allocated");
    assert!(total >= 3);
    for d in &removals {
        assert!(index.apply(d));
    }
    assert_eq!(index.filter_count(), 0);
    assert_eq!(live_bytes(), baseline, "memory not returned");
}

#[test]
fn retained_store_returns_to_baseline_and_literal_matching_does_not_allocate() {
    let mut store = RetainedStore::new();
    let topics: Vec<String> = (0..500)
        .map(|n| format!("dev/{}/sensor/{}", n / 10, n % 10))
        .chain(["$SYS/x", "/", "a"].map(String::from))
        .collect();
    seed_hashes();
    let baseline = live_bytes();
    for round in 0..2u32 {
        for t in &topics {
            store.set(t, round);
        }
        let start = allocations();
        let mut hits = 0;
        store.for_each_match("dev/3/sensor/4", |_| hits += 1);
        store.for_each_match("dev/+/sensor/4", |_| hits += 1);
        store.for_each_match("+/+/+/+", |_| hits += 1);
        store.for_each_match("dev/3/sensor/4/#", |_| hits += 1);
        assert_eq!(allocations(), start, "literal and + matching allocated");
        assert_eq!(hits, 1 + 50 + 500 + 1);
        for t in &topics {
            assert!(store.remove(t).is_some());
        }
        assert_eq!(live_bytes(), baseline, "round {round}: memory not returned");
    }
}
