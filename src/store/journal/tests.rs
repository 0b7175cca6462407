use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::*;
use crate::codec::{
    MqttStr, PropertyContext, PropertyFields, QoS, RetainHandling, SubscriptionOptions,
};
use crate::store::frame::encode_frame;
use crate::store::record::{Delivery, MessageRecord, WillRecord, EPOCH_SHIFT};
use crate::store::recover::InFlightMessage;
use crate::store::segment::HEADER_LEN;

const UNIX_MS: u64 = 1_780_000_000_000;

/// A clock that stands still unless told otherwise.
#[derive(Debug, Clone)]
struct TestClock {
    start: Instant,
    offset_ms: Rc<Cell<u64>>,
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.offset_ms.get())
    }
    fn unix_ms(&self) -> u64 {
        UNIX_MS + self.offset_ms.get()
    }
}

fn clock() -> TestClock {
    TestClock {
        start: Instant::now(),
        offset_ms: Rc::new(Cell::new(0)),
    }
}

fn options(limit: u64) -> JournalOptions {
    JournalOptions {
        shard: 1,
        shard_count: 2,
        epoch: 3,
        first_segment: 5,
        segment_limit: limit,
    }
}

fn journal(clock: &TestClock) -> StoreJournal {
    StoreJournal::new(options(DEFAULT_SEGMENT_LIMIT), Box::new(clock.clone()))
}

fn will() -> LastWill {
    LastWill {
        topic: MqttStr::from("dead/c"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::from(PropertyFields {
            will_delay_interval: Some(30),
            content_type: Some(MqttStr::from("text/plain")),
            ..PropertyFields::default()
        }),
    }
}

fn message(topic: &str, expires_at: Option<Instant>) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from(topic),
        payload: Bytes::from(format!("payload of {topic}")),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::from(PropertyFields {
            payload_format_indicator: Some(1),
            user_properties: vec![(MqttStr::from("k"), MqttStr::from("v"))],
            ..PropertyFields::default()
        }),
        publisher: MqttStr::from("pub"),
        expires_at,
        received_at: None,
        origin_packet_id: 0,
    })
}

/// Every journal record with the store record it stands for (at `UNIX_MS`).
fn pairs(will: &LastWill) -> Vec<(JournalRecord<'_>, StoreRecord)> {
    let id = || "client-1".to_owned();
    let origin_clients: &'static [MqttStr] = Box::leak(Box::new([
        MqttStr::from("client-1"),
        MqttStr::from("client-2"),
    ]));
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let ids: &'static [u32] = &[1, 268_435_455];
    let delivery = Delivery {
        qos: QoS::ExactlyOnce,
        retain: true,
        subscription_ids: ids.to_vec(),
    };
    let mut will_properties = BytesMut::new();
    encode_properties(&will.properties, &mut will_properties).unwrap();
    let g = generation(3, 17);
    vec![
        (
            JournalRecord::SessionStarted {
                client_id: "client-1",
                generation: g,
                username: Some("alice"),
                protocol: 5,
                expiry: Some(3600),
            },
            StoreRecord::SessionStarted {
                client_id: id(),
                generation: g,
                username: Some("alice".into()),
                protocol: 5,
                expiry_secs: Some(3600),
                at_ms: UNIX_MS,
            },
        ),
        (
            JournalRecord::SessionDisconnected {
                client_id: "client-1",
                generation: g,
                expiry: None,
            },
            StoreRecord::SessionDisconnected {
                client_id: id(),
                generation: g,
                at_ms: UNIX_MS,
                expiry_secs: None,
            },
        ),
        (
            JournalRecord::SessionEnded {
                client_id: "client-1",
                generation: g,
            },
            StoreRecord::SessionEnded {
                client_id: id(),
                generation: g,
            },
        ),
        (
            JournalRecord::WillSet {
                client_id: "client-1",
                generation: g,
                will,
            },
            StoreRecord::WillSet {
                client_id: id(),
                generation: g,
                will: WillRecord {
                    topic: "dead/c".into(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: will_properties.freeze(),
                    payload: Bytes::from_static(b"gone"),
                    delay_secs: 30,
                },
            },
        ),
        (
            JournalRecord::WillCleared {
                client_id: "client-1",
                generation: g,
            },
            StoreRecord::WillCleared {
                client_id: id(),
                generation: g,
            },
        ),
        (
            JournalRecord::OriginReceived {
                publisher: "pub-1",
                packet_id: 7,
                digest: 0xdead_beef,
                clients: origin_clients,
            },
            StoreRecord::OriginReceived {
                publisher: "pub-1".into(),
                packet_id: 7,
                digest: 0xdead_beef,
                clients: vec![id(), "client-2".into()],
            },
        ),
        (
            JournalRecord::OriginCleared {
                publisher: "pub-1",
                packet_id: 7,
            },
            StoreRecord::OriginCleared {
                publisher: "pub-1".into(),
                packet_id: 7,
            },
        ),
        (
            JournalRecord::ImageComplete {
                client_id: "client-1",
                generation: g,
            },
            StoreRecord::ImageComplete {
                client_id: id(),
                generation: g,
            },
        ),
        (
            JournalRecord::Subscribed {
                client_id: "client-1",
                generation: g,
                filter: "$share/g/a/+/b",
                options,
                subscription_id: 42,
            },
            StoreRecord::Subscribed {
                client_id: id(),
                generation: g,
                filter: "$share/g/a/+/b".into(),
                options,
                subscription_id: 42,
            },
        ),
        (
            JournalRecord::Unsubscribed {
                client_id: "client-1",
                generation: g,
                filter: "a/#",
            },
            StoreRecord::Unsubscribed {
                client_id: id(),
                generation: g,
                filter: "a/#".into(),
            },
        ),
        (
            JournalRecord::Enqueued {
                client_id: "client-1",
                generation: g,
                message: 77,
                qos: QoS::ExactlyOnce,
                retain: true,
                subscription_ids: ids,
            },
            StoreRecord::Enqueued {
                client_id: id(),
                generation: g,
                message: 77,
                delivery: delivery.clone(),
            },
        ),
        (
            JournalRecord::InFlight {
                client_id: "client-1",
                generation: g,
                message: 77,
                packet_id: 65535,
                qos: QoS::ExactlyOnce,
                retain: true,
                subscription_ids: ids,
            },
            StoreRecord::InFlight {
                client_id: id(),
                generation: g,
                message: 77,
                packet_id: 65535,
                delivery,
            },
        ),
        (
            JournalRecord::DupSet {
                client_id: "client-1",
                generation: g,
                packet_id: 1,
            },
            StoreRecord::DupSet {
                client_id: id(),
                generation: g,
                packet_id: 1,
            },
        ),
        (
            JournalRecord::PubRecReceived {
                client_id: "client-1",
                generation: g,
                packet_id: 1,
            },
            StoreRecord::PubRecReceived {
                client_id: id(),
                generation: g,
                packet_id: 1,
            },
        ),
        (
            JournalRecord::Acked {
                client_id: "client-1",
                generation: g,
                packet_id: 1,
            },
            StoreRecord::Acked {
                client_id: id(),
                generation: g,
                packet_id: 1,
            },
        ),
        (
            JournalRecord::Dequeued {
                client_id: "client-1",
                generation: g,
                message: 77,
            },
            StoreRecord::Dequeued {
                client_id: id(),
                generation: g,
                message: 77,
            },
        ),
        (
            JournalRecord::InboundReceived {
                client_id: "client-1",
                generation: g,
                packet_id: 2,
            },
            StoreRecord::InboundReceived {
                client_id: id(),
                generation: g,
                packet_id: 2,
            },
        ),
        (
            JournalRecord::InboundReleased {
                client_id: "client-1",
                generation: g,
                packet_id: 2,
            },
            StoreRecord::InboundReleased {
                client_id: id(),
                generation: g,
                packet_id: 2,
            },
        ),
        (
            JournalRecord::RetainedSet {
                topic: "a/b",
                version: 4,
                message: 77,
            },
            StoreRecord::RetainedSet {
                topic: "a/b".into(),
                version: 4,
                message: 77,
            },
        ),
        (
            JournalRecord::RetainedCleared {
                topic: "a/b",
                version: 5,
            },
            StoreRecord::RetainedCleared {
                topic: "a/b".into(),
                version: 5,
            },
        ),
    ]
}

/// The header of the segment a batch starts, and the bytes after it.
fn split_header(bytes: &[u8]) -> (SegmentHeader, &[u8]) {
    (SegmentHeader::decode(bytes).unwrap(), &bytes[HEADER_LEN..])
}

#[test]
fn every_record_encodes_as_its_store_record() {
    let clock = clock();
    let will = will();
    let pairs = pairs(&will);
    // Every JournalRecord variant is covered.
    let kinds: std::collections::BTreeSet<_> = pairs.iter().map(|(r, _)| r.kind()).collect();
    assert_eq!(kinds.len(), 20);
    for (record, expected) in &pairs {
        let mut journal = journal(&clock);
        assert_eq!(journal.append(record), Durability::At(1));
        let batch = journal.take_batch().unwrap();
        assert_eq!(batch.last_sequence, 1);
        let (header, frames) = split_header(&batch.bytes);
        assert_eq!(header.kind, SegmentKind::Log);
        assert_eq!(
            (header.shard, header.shard_count, header.sequence),
            (1, 2, 5)
        );
        let mut want = Vec::new();
        encode_frame(expected, header.salt, &mut want).unwrap();
        assert_eq!(frames, &want[..], "{}", record.kind());
        assert_eq!(
            batch.parts,
            vec![BatchPart {
                target: BatchTarget::Log {
                    sequence: 5,
                    create: true
                },
                len: batch.bytes.len()
            }]
        );
    }
}

#[test]
fn message_bodies_encode_as_message_records_once_per_fan_out() {
    let clock = clock();
    let mut journal = journal(&clock);
    let expires = clock.now() + Duration::from_millis(5_000);
    let first = message("a/b", Some(expires));
    let id = journal.message_id(&first);
    assert_eq!(id >> EPOCH_SHIFT, 3);
    // Fan-out: the same body again is not written again.
    assert_eq!(journal.message_id(&first), id);
    assert_eq!(journal.message_id(&Arc::clone(&first)), id);
    let second = message("c", None);
    let id2 = journal.message_id(&second);
    assert_ne!(id2, id);
    // Back to the first: no longer the last body, written again under a new id.
    let id3 = journal.message_id(&first);
    assert!(id3 != id && id3 != id2);
    assert_eq!(journal.stats().bodies, 3);

    let batch = journal.take_batch().unwrap();
    let (header, frames) = split_header(&batch.bytes);
    let mut properties = BytesMut::new();
    encode_properties(&first.properties, &mut properties).unwrap();
    let expected = StoreRecord::Message(MessageRecord {
        id,
        topic: "a/b".into(),
        publisher: "pub".into(),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: properties.clone().freeze(),
        payload: first.payload.clone(),
        expires_at_ms: Some(UNIX_MS + 5_000),
    });
    let mut want = Vec::new();
    encode_frame(&expected, header.salt, &mut want).unwrap();
    assert_eq!(&frames[..want.len()], &want[..]);
    // The stored properties decode back to the message's.
    assert_eq!(
        decode_properties(&properties, PropertyContext::Publish).unwrap(),
        first.properties
    );
    assert_eq!(
        decode_properties(&[], PropertyContext::Publish).unwrap(),
        Properties::default()
    );
}

#[test]
fn sequences_barriers_and_batches() {
    let clock = clock();
    let mut journal = journal(&clock);
    assert_eq!(journal.barrier(), Durability::Now);
    assert!(!journal.has_batch());
    assert!(journal.take_batch().is_none());
    let ended = |n| JournalRecord::SessionEnded {
        client_id: "c",
        generation: n,
    };
    assert_eq!(journal.append(&ended(1)), Durability::At(1));
    assert_eq!(journal.append(&ended(2)), Durability::At(2));
    assert!(journal.has_batch());
    assert_eq!(journal.barrier(), Durability::At(2));
    let first = journal.take_batch().unwrap();
    assert_eq!(first.last_sequence, 2);
    // Group commit: while that batch is written, more records pile up for the next one.
    assert_eq!(journal.append(&ended(3)), Durability::At(3));
    journal.mark_durable(2);
    assert_eq!(journal.barrier(), Durability::At(3));
    let second = journal.take_batch().unwrap();
    assert_eq!(second.last_sequence, 3);
    assert_eq!(
        second.parts,
        vec![BatchPart {
            target: BatchTarget::Log {
                sequence: 5,
                create: false
            },
            len: second.bytes.len()
        }]
    );
    journal.mark_durable(3);
    assert_eq!(journal.barrier(), Durability::Now);
}

/// A written batch handed back ([`Journal::recycle`]) holds the batch after the next: its
/// buffers come back empty, with their capacity, and the bytes are those of a journal that
/// allocates every batch anew. A snapshot-sized buffer is not kept.
#[test]
fn recycled_batch_buffers_hold_a_later_batch() {
    let clock = clock();
    let mut recycling = journal(&clock);
    let mut fresh = journal(&clock);
    // Byte for byte the same: the same segment salt.
    fresh.log.salt = recycling.log.salt;
    let message = message("t/1", None);
    let mut batches = Vec::new();
    for round in 0..4u16 {
        let mut expected = None;
        for journal in [&mut recycling, &mut fresh] {
            let id = journal.message_id(&message);
            journal.append(&JournalRecord::InFlight {
                client_id: "sub",
                generation: 9,
                message: id,
                packet_id: round + 1,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: &[],
            });
            journal.append(&JournalRecord::Acked {
                client_id: "sub",
                generation: 9,
                packet_id: round + 1,
            });
            let batch = journal.take_batch().unwrap();
            match expected.take() {
                None => expected = Some(batch),
                Some(recycled) => {
                    let JournalBatch {
                        bytes,
                        last_sequence,
                        parts,
                    } = batch;
                    assert_eq!(bytes, recycled.bytes, "round {round}");
                    assert_eq!(last_sequence, recycled.last_sequence);
                    assert_eq!(parts, recycled.parts);
                    batches.push(recycled);
                }
            }
        }
        // The recycling journal gets its batch back once written; the other drops its own.
        if let Some(batch) = batches.pop() {
            let capacity = batch.bytes.capacity();
            recycling.recycle(batch);
            assert_eq!(
                recycling.spare.as_ref().map(|s| s.0.capacity()),
                Some(capacity)
            );
            assert!(recycling
                .spare
                .as_ref()
                .is_some_and(|s| s.0.is_empty() && s.1.is_empty()));
        }
    }
    // The next batch takes the spare; a snapshot-sized buffer does not become one.
    recycling.append(&JournalRecord::SessionEnded {
        client_id: "sub",
        generation: 9,
    });
    assert!(recycling.take_batch().is_some());
    assert!(recycling.spare.is_none());
    recycling.recycle(JournalBatch {
        bytes: Vec::with_capacity(MAX_SPARE + 1),
        ..JournalBatch::default()
    });
    assert!(recycling.spare.is_none());
}

/// A data directory in the test's temp dir.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shardmq-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the runtime's writer does with a batch, with blocking std I/O.
fn write_batch(dir: &Path, shard: u16, batch: JournalBatch) {
    use std::io::Write;
    let mut at = 0;
    for part in batch.parts {
        let bytes = &batch.bytes[at..at + part.len];
        at += part.len;
        match part.target {
            BatchTarget::Log { sequence, create } => {
                let name = SegmentName {
                    shard,
                    sequence,
                    kind: SegmentKind::Log,
                };
                let mut file = std::fs::OpenOptions::new()
                    .create(create)
                    .append(true)
                    .open(dir.join(name.file_name()))
                    .unwrap();
                file.write_all(bytes).unwrap();
            }
            BatchTarget::Snapshot { sequence } => {
                let name = SegmentName {
                    shard,
                    sequence,
                    kind: SegmentKind::Snapshot,
                };
                std::fs::write(dir.join(name.file_name()), bytes).unwrap();
                // Older files are covered.
                for old in crate::store::dir::list_segments(dir).unwrap() {
                    let covered = match old.kind {
                        SegmentKind::Log => old.sequence <= sequence,
                        SegmentKind::Snapshot => old.sequence < sequence,
                    };
                    if old.shard == shard && covered {
                        std::fs::remove_file(dir.join(old.file_name())).unwrap();
                    }
                }
            }
        }
    }
    assert_eq!(at, batch.bytes.len());
}

fn load_dir(dir: &Path) -> crate::store::Loaded {
    let names = crate::store::dir::list_segments(dir).unwrap();
    crate::store::load(names, |name| std::fs::read(dir.join(name.file_name()))).unwrap()
}

fn started(client_id: &str, generation: u64) -> JournalRecord<'_> {
    JournalRecord::SessionStarted {
        client_id,
        generation,
        username: Some("u"),
        protocol: 5,
        expiry: Some(60),
    }
}

#[test]
fn written_batches_load_back() {
    let dir = TempDir::new("load");
    let clock = clock();
    let mut journal = journal(&clock);
    let will = will();
    let g = generation(3, 1);
    journal.append(&started("a", g));
    journal.append(&JournalRecord::WillSet {
        client_id: "a",
        generation: g,
        will: &will,
    });
    journal.append(&JournalRecord::Subscribed {
        client_id: "a",
        generation: g,
        filter: "t/#",
        options: SubscriptionOptions::default(),
        subscription_id: 0,
    });
    let m1 = message("t/1", None);
    let m2 = message("t/2", None);
    let id1 = journal.message_id(&m1);
    journal.append(&JournalRecord::Enqueued {
        client_id: "a",
        generation: g,
        message: id1,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: &[],
    });
    write_batch(&dir.0, 1, journal.take_batch().unwrap());
    let id2 = journal.message_id(&m2);
    journal.append(&JournalRecord::Enqueued {
        client_id: "a",
        generation: g,
        message: id2,
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: &[7],
    });
    journal.append(&JournalRecord::InFlight {
        client_id: "a",
        generation: g,
        message: id1,
        packet_id: 10,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: &[],
    });
    journal.append(&JournalRecord::InboundReceived {
        client_id: "a",
        generation: g,
        packet_id: 3,
    });
    journal.append(&JournalRecord::RetainedSet {
        topic: "t/2",
        version: generation(3, 2),
        message: id2,
    });
    journal.append(&JournalRecord::SessionDisconnected {
        client_id: "a",
        generation: g,
        expiry: Some(120),
    });
    write_batch(&dir.0, 1, journal.take_batch().unwrap());

    let loaded = load_dir(&dir.0);
    assert_eq!(loaded.corrupt_regions(), 0);
    assert_eq!(loaded.torn_tails(), 0);
    let state = &loaded.state;
    let a = &state.sessions["a"];
    assert!(a.started);
    assert_eq!(a.generation, g);
    assert_eq!(a.source_shard, 1);
    assert_eq!(a.username.as_deref(), Some("u"));
    assert_eq!(a.expiry_secs, Some(120));
    assert_eq!(a.disconnected_at_ms, Some(UNIX_MS));
    let stored_will = a.will.as_ref().unwrap();
    assert_eq!(stored_will.delay_secs, 30);
    assert_eq!(
        decode_properties(&stored_will.properties, PropertyContext::Will).unwrap(),
        will.properties
    );
    assert_eq!(a.subscriptions.keys().collect::<Vec<_>>(), vec!["t/#"]);
    assert_eq!(a.queue.len(), 1);
    assert_eq!(a.queue[0].message.topic, "t/2");
    assert_eq!(a.queue[0].delivery.subscription_ids, vec![7]);
    assert!(matches!(
        &a.inflight[&10],
        InFlightMessage::Published { message, .. } if message.topic == "t/1"
    ));
    assert!(a.inbound_qos2.contains(&3));
    assert_eq!(
        state.retained_at("t/2").unwrap().message.payload,
        m2.payload
    );
    assert_eq!(state.retained_at("t/2").unwrap().source_shard, 1);
    assert_eq!(state.next_epoch(), 4);
}

#[test]
fn an_image_becomes_a_snapshot_and_later_records_a_new_log() {
    let dir = TempDir::new("image");
    let clock = clock();
    let mut journal = StoreJournal::new(options(200), Box::new(clock.clone()));
    let g = generation(3, 1);
    let m = message("t/1", None);
    // Log 5: enough to fill it.
    journal.append(&started("a", g));
    let id = journal.message_id(&m);
    journal.append(&JournalRecord::Enqueued {
        client_id: "a",
        generation: g,
        message: id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: &[],
    });
    journal.append(&started("gone", g));
    assert!(journal.image_due());
    // Something from another shard's old files rides along in the first image.
    let mut carried = crate::store::recover::replay([
        (
            0,
            StoreRecord::SessionStarted {
                client_id: "elsewhere".into(),
                generation: generation(2, 9),
                username: None,
                protocol: 4,
                expiry_secs: None,
                at_ms: 1,
            },
        ),
        (
            0,
            StoreRecord::Message(MessageRecord {
                id: 1,
                topic: "r".into(),
                publisher: "p".into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Bytes::new(),
                payload: Bytes::from_static(b"kept"),
                expires_at_ms: None,
            }),
        ),
        (
            0,
            StoreRecord::RetainedSet {
                topic: "r".into(),
                version: generation(2, 3),
                message: 1,
            },
        ),
    ]);
    journal.carry_into_next_image(Carry {
        sessions: std::mem::take(&mut carried.sessions)
            .into_values()
            .collect(),
        retained: std::mem::take(&mut carried.retained).into_iter().collect(),
        origins: Vec::new(),
    });
    // The image: the shard's whole state, as the shard writes it (the same body twice is
    // written once).
    journal.begin_image();
    assert!(!journal.has_batch());
    assert!(journal.take_batch().is_none());
    let g2 = generation(3, 2);
    journal.append(&started("a", g2));
    for _ in 0..2 {
        let id = journal.message_id(&m);
        journal.append(&JournalRecord::Enqueued {
            client_id: "a",
            generation: g2,
            message: id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: &[],
        });
    }
    journal.end_image();
    assert!(!journal.image_due());
    assert_eq!(journal.current_segment(), 6);
    // After it, log 6.
    journal.append(&JournalRecord::Subscribed {
        client_id: "a",
        generation: g2,
        filter: "x",
        options: SubscriptionOptions::default(),
        subscription_id: 0,
    });
    let batch = journal.take_batch().unwrap();
    let targets: Vec<_> = batch.parts.iter().map(|part| part.target).collect();
    assert_eq!(
        targets,
        vec![
            BatchTarget::Log {
                sequence: 5,
                create: true
            },
            BatchTarget::Snapshot { sequence: 5 },
            BatchTarget::Log {
                sequence: 6,
                create: true
            },
        ]
    );
    write_batch(&dir.0, 1, batch);
    let names = crate::store::dir::list_segments(&dir.0).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");

    let loaded = load_dir(&dir.0);
    assert!(loaded
        .files
        .iter()
        .all(|file| file.used == crate::store::load::FileUse::Replayed));
    let state = &loaded.state;
    assert_eq!(
        state.sessions.keys().collect::<Vec<_>>(),
        vec!["a", "elsewhere"]
    );
    let a = &state.sessions["a"];
    assert_eq!(a.generation, g2);
    assert_eq!(a.queue.len(), 2);
    assert!(Arc::ptr_eq(&a.queue[0].message, &a.queue[1].message));
    assert_eq!(a.subscriptions.keys().collect::<Vec<_>>(), vec!["x"]);
    assert_eq!(state.sessions["elsewhere"].generation, generation(2, 9));
    assert_eq!(
        state.retained_at("r").unwrap().message.payload,
        Bytes::from_static(b"kept")
    );
    assert_eq!(state.stats.missing_messages, 0);
    // Message ids never repeat within the shard's files.
    let mut ids = HashMap::new();
    for name in crate::store::dir::list_segments(&dir.0).unwrap() {
        let file = std::fs::read(dir.0.join(name.file_name())).unwrap();
        let (_, scanner) = crate::store::segment::open_segment(&file).unwrap();
        for (_, record) in scanner {
            if let StoreRecord::Message(body) = record {
                assert!(ids.insert(body.id, name).is_none(), "id {} twice", body.id);
            }
        }
    }
    assert_eq!(ids.len(), 2);
}

#[test]
fn a_startup_image_without_records_before_it_writes_no_empty_log() {
    let clock = clock();
    let mut journal = journal(&clock);
    journal.begin_image();
    journal.end_image();
    let batch = journal.take_batch().unwrap();
    assert_eq!(batch.parts.len(), 1);
    assert_eq!(batch.parts[0].target, BatchTarget::Snapshot { sequence: 5 });
    let (header, frames) = split_header(&batch.bytes);
    assert_eq!(header.kind, SegmentKind::Snapshot);
    let records: Vec<_> = crate::store::segment::Scanner::new(frames, header.salt)
        .map(|(_, record)| record)
        .collect();
    assert_eq!(
        records,
        vec![StoreRecord::Checkpoint {
            through_segment: 5,
            records: 0
        }]
    );
    assert_eq!(journal.current_segment(), 6);
}

#[test]
fn expiry_instants_convert_through_the_anchor() {
    let clock = clock();
    let mut journal = journal(&clock);
    let base = clock.now();
    assert_eq!(
        journal.unix_ms_at(base + Duration::from_secs(2)),
        UNIX_MS + 2_000
    );
    // After a minute the anchor is taken again (the wall clock may have been adjusted).
    clock.offset_ms.set(61_000);
    assert_eq!(
        journal.unix_ms_at(base + Duration::from_secs(62)),
        UNIX_MS + 62_000
    );
}
