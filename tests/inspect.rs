//! `shardmq inspect DIR`: segment files written with the store's encoder, read back by the
//! binary. Needs no io_uring (the broker is not started).

use std::path::PathBuf;
use std::process::{Command, Output};

use bytes::Bytes;
use shardmq::codec::{QoS, SubscriptionOptions};
use shardmq::store::frame::encode_frame;
use shardmq::store::load::{encode_segment, encode_snapshot};
use shardmq::store::record::{generation, Delivery, MessageRecord, StoreRecord, WillRecord};
use shardmq::store::segment::{SegmentHeader, SegmentKind, SegmentName};
use shardmq::store::FORMAT_VERSION;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shardmq-inspect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }

    fn format(&self, version: u32) {
        self.write("FORMAT", format!("shardmq-data {version}\n").as_bytes());
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inspect(dir: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["inspect", dir])
        .env_remove("RUST_LOG")
        .output()
        .expect("the shardmq binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn log(shard: u16, sequence: u64) -> SegmentName {
    SegmentName {
        shard,
        sequence,
        kind: SegmentKind::Log,
    }
}

fn started(client: &str, generation: u64, user: Option<&str>) -> StoreRecord {
    StoreRecord::SessionStarted {
        client_id: client.into(),
        generation,
        username: user.map(str::to_owned),
        protocol: 5,
        expiry_secs: Some(3600),
        at_ms: 1_780_000_000_000,
    }
}

fn subscribed(client: &str, generation: u64, filter: &str) -> StoreRecord {
    StoreRecord::Subscribed {
        client_id: client.into(),
        generation,
        filter: filter.into(),
        options: SubscriptionOptions::with_qos(QoS::ExactlyOnce),
        subscription_id: 0,
    }
}

fn message(id: u64, topic: &str) -> StoreRecord {
    StoreRecord::Message(MessageRecord {
        id,
        topic: topic.into(),
        publisher: "publisher".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Bytes::new(),
        payload: Bytes::from(format!("payload {id}")),
        expires_at_ms: None,
    })
}

fn enqueued(client: &str, generation: u64, message: u64) -> StoreRecord {
    StoreRecord::Enqueued {
        client_id: client.into(),
        generation,
        message,
        delivery: Delivery {
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        },
    }
}

/// Two shards: "sensor" lives on shard 0 with a queue and an in-flight message; "mover" moved
/// from shard 0 (generation 1) to shard 1 (generation 2); shard 1 also owns two retained
/// topics, one since cleared; shard 0 has a snapshot and a log after it.
fn write_two_shards(dir: &TempDir) {
    dir.format(FORMAT_VERSION);
    let g = |serial| generation(1, serial);
    let snapshot = SegmentName {
        shard: 0,
        sequence: 1,
        kind: SegmentKind::Snapshot,
    };
    dir.write(
        &log(0, 1).file_name(),
        &encode_segment(log(0, 1), 2, &[started("sensor", g(1), None)]),
    );
    dir.write(
        &snapshot.file_name(),
        &encode_snapshot(
            snapshot,
            2,
            &[
                started("sensor", g(1), Some("alice")),
                subscribed("sensor", g(1), "cmd/#"),
                subscribed("sensor", g(1), "cfg/+"),
                started("mover", g(2), None),
                subscribed("mover", g(2), "old/#"),
            ],
        ),
    );
    dir.write(
        &log(0, 2).file_name(),
        &encode_segment(
            log(0, 2),
            2,
            &[
                message(1, "cmd/a"),
                message(2, "cmd/b"),
                message(3, "cmd/c"),
                enqueued("sensor", g(1), 1),
                enqueued("sensor", g(1), 2),
                enqueued("sensor", g(1), 3),
                StoreRecord::InFlight {
                    client_id: "sensor".into(),
                    generation: g(1),
                    message: 1,
                    packet_id: 1,
                    delivery: Delivery {
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: vec![],
                    },
                },
                StoreRecord::WillSet {
                    client_id: "sensor".into(),
                    generation: g(1),
                    will: WillRecord {
                        topic: "dead/sensor".into(),
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        properties: Bytes::new(),
                        payload: Bytes::from_static(b"bye"),
                        delay_secs: 5,
                    },
                },
                // The old owner's last word about "mover": stale once shard 1's generation
                // is read.
                subscribed("mover", g(2), "old/late"),
            ],
        ),
    );
    dir.write(
        &log(1, 1).file_name(),
        &encode_segment(
            log(1, 1),
            2,
            &[
                started("mover", g(3), None),
                subscribed("mover", g(3), "new/#"),
                message(1, "r/1"),
                message(2, "r/2"),
                StoreRecord::RetainedSet {
                    topic: "r/1".into(),
                    version: g(4),
                    message: 1,
                },
                StoreRecord::RetainedSet {
                    topic: "r/2".into(),
                    version: g(5),
                    message: 2,
                },
                StoreRecord::RetainedCleared {
                    topic: "r/2".into(),
                    version: g(6),
                },
            ],
        ),
    );
}

#[test]
fn inspect_prints_sessions_queues_and_retained() {
    let dir = TempDir::new("two-shards");
    write_two_shards(&dir);
    dir.write("notes.txt", b"not a segment");
    let out = inspect(dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for line in [
        "format version: 2",
        "segments: 4 (3 replayed)",
        "covered by a snapshot (not used)",
        "written with 2 shards",
        "corrupt regions: 0 (0 bytes skipped)",
        "torn tails: 0",
        "1 sessions superseded by a newer owner",
        "sessions: 2",
        "\"mover\": generation 0x10000000003, shard 1, 1 subscriptions, 0 queued, 0 in flight",
        "\"sensor\": generation 0x10000000001, shard 0, 2 subscriptions, 2 queued, 1 in flight",
        "user \"alice\", will pending, connected at the end",
        "messages: 2 queued, 1 in flight",
        "retained messages: 1",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

#[test]
fn inspect_reports_damage_and_keeps_what_survives() {
    let dir = TempDir::new("damage");
    dir.format(FORMAT_VERSION);
    let name = log(0, 1);
    let mut file = encode_segment(
        name,
        1,
        &[
            started("a", 1, None),
            subscribed("a", 1, "first"),
            subscribed("a", 1, "second"),
            subscribed("a", 1, "third"),
        ],
    );
    let salt = SegmentHeader::decode(&file).unwrap().salt;
    // A corrupt record in the middle: flip a byte of the second subscription's filter.
    let second = file
        .windows(6)
        .position(|w| w == b"second")
        .expect("the filter is in the file");
    file[second] ^= 0x20;
    // A torn tail: half of one more record.
    let mut tail = Vec::new();
    encode_frame(&subscribed("a", 1, "fourth"), salt, &mut tail).unwrap();
    file.extend_from_slice(&tail[..tail.len() / 2]);
    dir.write(&name.file_name(), &file);

    let out = inspect(dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for line in [
        "records: 3",
        "corrupt regions: 1",
        "BadChecksum",
        "torn tails: 1",
        "\"a\": generation 0x1, shard 0, 2 subscriptions",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

#[test]
fn inspect_refuses_a_newer_format_and_a_stranger_directory() {
    let dir = TempDir::new("newer");
    dir.format(FORMAT_VERSION + 1);
    let out = inspect(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("newer than this shardmq supports"),
        "{stderr}"
    );

    let empty = TempDir::new("empty");
    let out = inspect(empty.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a shardmq data directory"));

    let out = inspect("/nonexistent/shardmq-data");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/shardmq-data"));
}

#[test]
fn inspect_is_listed_in_the_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("--help")
        .output()
        .expect("the shardmq binary runs");
    assert!(text(&out.stdout).contains("inspect"));
}
