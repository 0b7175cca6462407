//! The data directory at run time: locked while a broker uses it, each shard's first image
//! written as a snapshot at start (older files removed once it is durable), journal records
//! written to log segments that `store::load` reads back.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_until, Broker, Raw};
use shardmq::codec::QoS;
use shardmq::config::{Config, SyncMode};
use shardmq::store::segment::{SegmentKind, SegmentName};

const WAIT: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shardmq-durable-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn segments(dir: &Path) -> Vec<SegmentName> {
    let mut names = shardmq::store::dir::list_segments(dir).unwrap_or_default();
    names.sort();
    names
}

fn snapshots(dir: &Path) -> Vec<(u16, u64)> {
    segments(dir)
        .into_iter()
        .filter(|name| name.kind == SegmentKind::Snapshot)
        .map(|name| (name.shard, name.sequence))
        .collect()
}

fn load(dir: &Path) -> shardmq::store::Loaded {
    let names = segments(dir);
    shardmq::store::load(names, |name| std::fs::read(dir.join(name.file_name()))).unwrap()
}

fn with_dir(dir: &Path, sync: SyncMode) -> impl FnOnce(&mut Config) + '_ {
    move |config| {
        config.data_dir = Some(dir.to_owned());
        config.sync = sync;
        config.sync_interval_ms = 50;
    }
}

#[test]
fn the_data_directory_is_locked_imaged_and_written() {
    let dir = TempDir::new("run");
    let mut broker = Broker::start_with(with_dir(&dir.0, SyncMode::Always));
    // Each shard's first image: snapshot 1, durable soon after start.
    wait_until(WAIT, "both shards' first snapshots", || {
        snapshots(&dir.0) == vec![(0, 1), (1, 1)]
    });
    assert!(dir.0.join("FORMAT").exists());

    // A second broker on the same directory is refused, clearly.
    let second = shardmq::broker::start(Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: Some(1),
        data_dir: Some(dir.0.clone()),
        ..Config::default()
    });
    let error = second.expect_err("the directory is locked").to_string();
    assert!(error.contains("in use"), "{error}");

    // A retained message is journaled by its topic's owner shard into a log segment.
    let (mut client, _) = Raw::connect(broker.shard(0), "durable-pub", true);
    client.publish("durable/t", b"kept", QoS::AtLeastOnce, true, 1);
    wait_until(WAIT, "the retained message in the journal", || {
        load(&dir.0).state.retained_at("durable/t").is_some()
    });
    let loaded = load(&dir.0);
    assert_eq!(loaded.corrupt_regions(), 0);
    assert_eq!(loaded.torn_tails(), 0);
    assert!(segments(&dir.0)
        .iter()
        .any(|name| name.kind == SegmentKind::Log && name.sequence == 2));
    client.disconnect();
    assert!(broker.stop(WAIT));

    // The next start: new first images (after every existing file), the old files removed.
    let broker = Broker::start_with(with_dir(&dir.0, SyncMode::Interval));
    wait_until(WAIT, "the second boot's snapshots, alone", || {
        let names = segments(&dir.0);
        names.len() == 2
            && names
                .iter()
                .all(|name| name.kind == SegmentKind::Snapshot && name.sequence == 3)
    });
    drop(broker);
}

/// A broker of `shards` shards on `dir` (without the test helper, which wants two shards).
fn start(dir: &Path, shards: usize, sync: SyncMode) -> shardmq::broker::BrokerHandle {
    let mut config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: Some(shards),
        ..Config::default()
    };
    with_dir(dir, sync)(&mut config);
    shardmq::broker::start(config).expect("the broker starts")
}

#[test]
fn files_of_shards_beyond_the_shard_count_go_once_every_first_image_is_durable() {
    let dir = TempDir::new("shrink");
    let broker = start(&dir.0, 3, SyncMode::Interval);
    wait_until(WAIT, "three first snapshots", || {
        snapshots(&dir.0).len() == 3
    });
    broker.shutdown();
    broker.join();
    let broker = start(&dir.0, 1, SyncMode::Always);
    wait_until(WAIT, "one snapshot of shard 0 alone", || {
        snapshots(&dir.0) == vec![(0, 2)] && segments(&dir.0).len() == 1
    });
    broker.shutdown();
    broker.join();
}

/// Writes that fail (here: the next log segment is /dev/full, every write ENOSPC) do not bring
/// the broker down: the records wait and are retried, clients are served, and shutdown gives
/// the last records up after a few tries instead of hanging.
#[test]
fn a_full_disk_is_survived() {
    full_disk_is_survived(SyncMode::Always);
}

/// The same with `sync = interval`, whose logs are mapped: a log that cannot be mapped (here a
/// device) is written with io_uring instead, and that write failing is the same storage full.
#[test]
fn a_full_disk_is_survived_with_mapped_logs() {
    full_disk_is_survived(SyncMode::Interval);
}

fn full_disk_is_survived(sync: SyncMode) {
    let dir = TempDir::new(match sync {
        SyncMode::Always => "full",
        SyncMode::Interval => "full-interval",
    });
    let mut broker = Broker::start_with(with_dir(&dir.0, sync));
    wait_until(WAIT, "both shards' first snapshots", || {
        snapshots(&dir.0) == vec![(0, 1), (1, 1)]
    });
    for shard in 0..2 {
        let name = SegmentName {
            shard,
            sequence: 2,
            kind: SegmentKind::Log,
        };
        std::os::unix::fs::symlink("/dev/full", dir.0.join(name.file_name())).unwrap();
    }
    let (mut client, _) = Raw::connect(broker.shard(0), "full-pub", true);
    for i in 0..4 {
        client.publish(&format!("full/{i}"), b"x", QoS::AtMostOnce, true, 0);
    }
    client.ping();
    std::thread::sleep(Duration::from_millis(500));
    let (mut other, _) = Raw::connect(broker.shard(1), "full-other", true);
    other.ping();
    assert!(!broker.failed());
    assert!(
        broker.stop(WAIT),
        "the broker stops despite the failing journal"
    );
}

/// Writes a large data directory for measuring start-up (`SHARDMQ_GEN_DIR`, `SHARDMQ_GEN_SHARDS`,
/// `SHARDMQ_GEN_SESSIONS` per shard, 10 queued 100-byte messages each). Run by hand:
/// `SHARDMQ_GEN_DIR=/tmp/big cargo test --test durable_store -- --ignored generate`.
#[test]
#[ignore]
fn generate_a_large_directory() {
    use bytes::Bytes;
    use shardmq::store::record::{generation, Delivery, MessageRecord, StoreRecord};
    let Ok(dir) = std::env::var("SHARDMQ_GEN_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let shards = var("SHARDMQ_GEN_SHARDS", 2) as u16;
    let sessions = var("SHARDMQ_GEN_SESSIONS", 50_000);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("FORMAT"), "shardmq-data 1\n").unwrap();
    for shard in 0..shards {
        let mut records = Vec::new();
        let mut id = 0;
        for s in 0..sessions {
            let client_id = format!("client-{shard}-{s}");
            let g = generation(1, u64::from(shard) << 32 | s);
            records.push(StoreRecord::SessionStarted {
                client_id: client_id.clone(),
                generation: g,
                username: None,
                protocol: 4,
                expiry_secs: None,
                at_ms: 1,
            });
            records.push(StoreRecord::Subscribed {
                client_id: client_id.clone(),
                generation: g,
                filter: format!("t/{s}/#"),
                options: Default::default(),
                subscription_id: 0,
            });
            for _ in 0..10 {
                id += 1;
                records.push(StoreRecord::Message(MessageRecord {
                    id,
                    topic: format!("t/{s}/x"),
                    publisher: "p".into(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Bytes::new(),
                    payload: Bytes::from(vec![b'x'; 100]),
                    expires_at_ms: None,
                }));
                records.push(StoreRecord::Enqueued {
                    client_id: client_id.clone(),
                    generation: g,
                    message: id,
                    delivery: Delivery {
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: vec![],
                    },
                });
            }
        }
        let name = SegmentName {
            shard,
            sequence: 1,
            kind: SegmentKind::Log,
        };
        let bytes = shardmq::store::load::encode_segment(name, shards, &records);
        std::fs::write(dir.join(name.file_name()), bytes).unwrap();
    }
}
