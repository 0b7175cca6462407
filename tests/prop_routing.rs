//! Property test: for random filters and topics, what the live broker delivers equals what the
//! MQTT 3.1.1 matching rules (§4.7) say, for a subscriber on the publisher's shard (trie) and on
//! the other shard (replicated interest index).

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use common::{ack_publish, Broker, Raw, Sync};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use shardmq::codec::QoS;

const END: &str = "zz-end";

/// The 3.1.1 rules, written out independently of the broker's matchers.
fn spec_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            exact if i < t.len() && exact == t[i] => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

#[test]
fn spec_matcher_examples() {
    assert!(spec_matches("sport/#", "sport"));
    assert!(spec_matches("sport/+", "sport/"));
    assert!(!spec_matches("sport/+", "sport"));
    assert!(spec_matches("+/+", "/finance"));
    assert!(!spec_matches("#", "$SYS/x"));
    assert!(spec_matches("$SYS/#", "$SYS"));
}

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$x"])
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    let filter_level = prop::sample::select(vec!["a", "b", "", "$x", "+", "+"]);
    (prop::collection::vec(filter_level, 0..4), any::<bool>()).prop_filter_map(
        "empty filter",
        |(levels, hash)| {
            let mut levels: Vec<&str> = levels;
            if hash {
                levels.push("#");
            }
            let filter = levels.join("/");
            (!filter.is_empty()).then_some(filter)
        },
    )
}

#[test]
fn live_routing_matches_the_spec() {
    let broker = Broker::start();
    // `TestRunner::run` takes a `Fn`: the shared clients live in `RefCell`s.
    let sync = RefCell::new(Sync::new(&broker));
    let publisher = RefCell::new(Raw::connect(broker.shard(1), "prop-pub", true).0);
    let cases = Cell::new(0u32);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(filter(), 1..5),
        prop::collection::btree_set(topic(), 1..7),
    );
    runner
        .run(&strategy, |(filters, topics)| {
            let case = cases.get() + 1;
            cases.set(case);
            let mut publisher = publisher.borrow_mut();
            let mut subscribers = Vec::new();
            for (i, filter) in filters.iter().enumerate() {
                let shard = i % 2;
                let (mut sub, _) =
                    Raw::connect(broker.shard(shard), &format!("prop-{case}-{i}"), true);
                sub.subscribe_many(1, &[(filter, QoS::AtMostOnce), (END, QoS::AtLeastOnce)]);
                subscribers.push((filter.clone(), shard, sub));
            }
            sync.borrow_mut().settle();
            for (i, topic) in topics.iter().enumerate() {
                publisher.publish(
                    topic,
                    topic.as_bytes(),
                    QoS::AtLeastOnce,
                    false,
                    1 + i as u16,
                );
            }
            publisher.publish(END, b"", QoS::AtLeastOnce, false, 100);
            for (filter, shard, sub) in &mut subscribers {
                let mut got = BTreeSet::new();
                loop {
                    let publish = sub.recv_publish();
                    ack_publish(sub, &publish);
                    if publish.topic.as_str() == END {
                        break;
                    }
                    prop_assert!(
                        got.insert(publish.topic.to_string()),
                        "{} delivered twice to {filter}",
                        publish.topic
                    );
                }
                let expected: BTreeSet<String> = topics
                    .iter()
                    .filter(|t| spec_matches(filter, t))
                    .cloned()
                    .collect();
                prop_assert_eq!(&got, &expected, "filter {:?} on shard {}", filter, shard);
            }
            Ok(())
        })
        .unwrap();
}
