//! Property tests of the scanner against damage: random record sequences, encoded, then
//! truncated or with bytes flipped. Whatever the damage, the scan never panics, returns every
//! record before the first damaged byte, and finds every intact frame after it.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use super::frame::encode_frame;
use super::load::{encode_segment, load};
use super::record::{Delivery, MessageRecord, StoreRecord, WillRecord};
use super::recover::{replay, InFlightMessage, RecoveredState, Replayer};
use super::segment::{open_segment, Scanner, SegmentKind, SegmentName};
use super::snapshot::SnapshotWriter;
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};

const SALT: u32 = 0xA5A5_0001;

/// Fields enough for any record; `record` picks the kind.
type Raw = (u8, u8, u64, u16, u64, Vec<u8>, u8);

fn raw() -> impl Strategy<Value = Raw> {
    (
        0u8..20,
        0u8..4,
        0u64..6,
        any::<u16>(),
        0u64..8,
        proptest::collection::vec(any::<u8>(), 0..48),
        any::<u8>(),
    )
}

fn record((kind, client, generation, packet_id, message, payload, bits): Raw) -> StoreRecord {
    let client_id = format!("client-{client}");
    let qos = QoS::from_u8(bits % 3).unwrap_or_default();
    let payload = Bytes::from(payload);
    let delivery = Delivery {
        qos,
        retain: bits & 4 != 0,
        subscription_ids: (0..(bits % 3) as u32).collect(),
    };
    let topic = format!("t/{}", message % 3);
    match kind {
        0 => StoreRecord::SessionStarted {
            client_id,
            generation,
            username: (bits & 8 != 0).then(|| "user".to_owned()),
            protocol: 3 + bits % 3,
            expiry_secs: (bits & 16 != 0).then_some(u32::from(packet_id)),
            at_ms: message,
        },
        1 => StoreRecord::SessionDisconnected {
            client_id,
            generation,
            at_ms: message,
            expiry_secs: None,
        },
        2 => StoreRecord::SessionEnded {
            client_id,
            generation,
        },
        3 => StoreRecord::WillSet {
            client_id,
            generation,
            will: WillRecord {
                topic,
                qos,
                retain: bits & 1 != 0,
                properties: Bytes::new(),
                payload,
                delay_secs: u32::from(packet_id),
            },
        },
        4 => StoreRecord::WillCleared {
            client_id,
            generation,
        },
        5 => StoreRecord::Subscribed {
            client_id,
            generation,
            filter: topic,
            options: SubscriptionOptions {
                qos,
                no_local: bits & 8 != 0,
                retain_as_published: bits & 16 != 0,
                retain_handling: RetainHandling::SendIfNew,
            },
            subscription_id: u32::from(packet_id),
        },
        6 => StoreRecord::Unsubscribed {
            client_id,
            generation,
            filter: topic,
        },
        7 => StoreRecord::Message(MessageRecord {
            id: message,
            topic,
            publisher: client_id,
            qos,
            retain: bits & 1 != 0,
            properties: Bytes::from_static(&[0x05, 0x02, 0, 0, 0, 10]),
            payload,
            expires_at_ms: (bits & 32 != 0).then_some(generation),
        }),
        8 => StoreRecord::Enqueued {
            client_id,
            generation,
            message,
            delivery,
        },
        9 => StoreRecord::InFlight {
            client_id,
            generation,
            message,
            packet_id,
            delivery,
        },
        10 => StoreRecord::DupSet {
            client_id,
            generation,
            packet_id,
        },
        11 => StoreRecord::PubRecReceived {
            client_id,
            generation,
            packet_id,
        },
        12 => StoreRecord::Acked {
            client_id,
            generation,
            packet_id,
        },
        13 => StoreRecord::Dequeued {
            client_id,
            generation,
            message,
        },
        14 => StoreRecord::InboundReceived {
            client_id,
            generation,
            packet_id,
        },
        15 => StoreRecord::InboundReleased {
            client_id,
            generation,
            packet_id,
        },
        16 => StoreRecord::RetainedSet {
            topic,
            version: generation,
            message,
        },
        17 => StoreRecord::RetainedCleared {
            topic,
            version: generation,
        },
        18 => StoreRecord::Checkpoint {
            through_segment: generation,
            records: message,
        },
        _ => StoreRecord::ImageComplete {
            client_id,
            generation,
        },
    }
}

/// The records, their frames back to back, and each frame's byte range.
fn encode(records: &[StoreRecord]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    for record in records {
        let start = buf.len();
        let len = encode_frame(record, SALT, &mut buf).expect("small records encode");
        spans.push((start, start + len));
    }
    (buf, spans)
}

fn scan(buf: &[u8]) -> (Vec<StoreRecord>, super::segment::ScanStats) {
    let mut scanner = Scanner::new(buf, SALT);
    let records = scanner.by_ref().map(|(_, record)| record).collect();
    (records, scanner.into_stats())
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn truncation_keeps_exactly_the_complete_frames() {
    let strategy = (
        proptest::collection::vec(raw(), 1..40),
        any::<prop::sample::Index>(),
    );
    runner()
        .run(&strategy, |(raws, cut)| {
            let records: Vec<_> = raws.into_iter().map(record).collect();
            let (buf, spans) = encode(&records);
            let cut = cut.index(buf.len() + 1);
            let (found, stats) = scan(&buf[..cut]);
            let complete: Vec<_> = records
                .iter()
                .zip(&spans)
                .filter(|(_, (_, end))| *end <= cut)
                .map(|(record, _)| record.clone())
                .collect();
            prop_assert_eq!(&found, &complete);
            prop_assert!(stats.corrupt.is_empty());
            let boundary = spans.iter().any(|(_, end)| *end == cut) || cut == 0;
            prop_assert_eq!(stats.torn_tail.is_none(), boundary);
            if let Some(tail) = stats.torn_tail {
                prop_assert_eq!(tail.offset + tail.len, cut);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn flipped_bytes_lose_only_the_frames_they_hit() {
    let strategy = (
        proptest::collection::vec(raw(), 1..40),
        proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..5),
    );
    runner()
        .run(&strategy, |(raws, flips)| {
            let records: Vec<_> = raws.into_iter().map(record).collect();
            let (mut buf, spans) = encode(&records);
            let original = buf.clone();
            for (at, mask) in flips {
                let at = at.index(buf.len());
                buf[at] ^= mask;
            }
            // The bytes that differ in the end: two flips of one byte with the same mask
            // cancel out, and that frame is intact.
            let damaged: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] != original[i]).collect();
            if damaged.is_empty() {
                return Ok(());
            }
            let first = damaged.iter().copied().min().unwrap_or(buf.len());
            let (found, stats) = scan(&buf);
            let hit = |(start, end): (usize, usize)| damaged.iter().any(|&d| d >= start && d < end);
            // Every frame no flip touched is found, in order, and nothing else: before the
            // first damaged byte by plain reading, after it by resynchronisation.
            let intact: Vec<_> = records
                .iter()
                .zip(&spans)
                .filter(|(_, span)| !hit(**span))
                .map(|(record, _)| record.clone())
                .collect();
            prop_assert_eq!(&found, &intact);
            let before = spans.iter().filter(|(_, end)| *end <= first).count();
            prop_assert_eq!(&found[..before], &records[..before]);
            prop_assert!(!stats.corrupt.is_empty() || stats.torn_tail.is_some());
            prop_assert_eq!(stats.undecodable, 0);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_bytes_never_panic_anywhere() {
    // Random bytes, sprinkled with frame magics and valid frames, through the scanner, the
    // segment reader, the whole load and the replay.
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(raw(), 0..6),
        any::<u32>(),
    );
    runner()
        .run(&strategy, |(mut bytes, raws, seed)| {
            let records: Vec<_> = raws.into_iter().map(record).collect();
            let (frames, _) = encode(&records);
            let at = (seed as usize) % (bytes.len() + 1);
            bytes.splice(at..at, frames);
            if seed & 1 == 0 && bytes.len() > 4 {
                let at = (seed as usize >> 8) % (bytes.len() - 2);
                bytes[at..at + 2].copy_from_slice(&super::frame::FRAME_MAGIC);
            }
            let (found, _) = scan(&bytes);
            let _ = replay(found.into_iter().map(|record| (0, record)));
            if let Ok((_, scanner)) = open_segment(&bytes) {
                let _ = scanner.count();
            }
            // As a whole file (after a valid header) through `load`.
            let name = SegmentName {
                shard: 0,
                sequence: 1,
                kind: if seed & 2 == 0 {
                    SegmentKind::Log
                } else {
                    SegmentKind::Snapshot
                },
            };
            let mut file = encode_segment(name, 1, &[]);
            file.extend_from_slice(&bytes);
            let _ = load([name], |_| Ok(file.clone()));
            Ok(())
        })
        .unwrap();
}

#[test]
fn per_shard_replays_merge_to_the_sequential_replay() {
    // Records spread over three shards; a generation (version) belongs to one shard, as the
    // ownership protocol guarantees. Replaying the shards interleaved in any order, or each
    // shard alone and merging, gives the same sessions and retained messages.
    let strategy = (
        proptest::collection::vec((raw(), 0u16..3), 0..80),
        proptest::collection::vec(any::<prop::sample::Index>(), 80),
    );
    runner()
        .run(&strategy, |(raws, picks)| {
            let mut per_shard: Vec<Vec<StoreRecord>> = vec![Vec::new(); 3];
            for (mut raw, shard) in raws {
                raw.2 = raw.2 * 3 + u64::from(shard);
                per_shard[usize::from(shard)].push(record(raw));
            }
            // A random interleaving that keeps each shard's order.
            let mut cursors = [0usize; 3];
            let mut interleaved = Vec::new();
            let mut pick = picks.iter();
            while cursors.iter().zip(&per_shard).any(|(c, r)| *c < r.len()) {
                let open: Vec<usize> = (0..3)
                    .filter(|&s| cursors[s] < per_shard[s].len())
                    .collect();
                let shard = pick
                    .next()
                    .map_or(open[0], |index| open[index.index(open.len())]);
                interleaved.push((shard as u16, per_shard[shard][cursors[shard]].clone()));
                cursors[shard] += 1;
            }
            let sequential = replay(interleaved);
            let mut merged = Replayer::new();
            for (shard, records) in per_shard.into_iter().enumerate().rev() {
                let mut one = Replayer::new();
                for record in records {
                    one.apply(shard as u16, record);
                }
                merged.merge(one);
            }
            let merged = merged.finish();
            prop_assert_eq!(&merged.sessions, &sequential.sessions);
            let (mut merged_retained, mut sequential_retained) =
                (merged.retained, sequential.retained);
            merged_retained.sort_by(|a, b| a.0.cmp(&b.0));
            sequential_retained.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(merged_retained, sequential_retained);
            prop_assert_eq!(merged.max_generation, sequential.max_generation);
            Ok(())
        })
        .unwrap();
}

/// The state with what a snapshot does not keep erased: message ids (re-numbered), whether
/// the start record was found (a snapshot always writes one), the source shard and the counts.
fn normalized(state: &RecoveredState) -> RecoveredState {
    let body = |message: &std::sync::Arc<MessageRecord>| {
        std::sync::Arc::new(MessageRecord {
            id: 0,
            ..MessageRecord::clone(message)
        })
    };
    let mut state = state.clone();
    state.stats = Default::default();
    state.max_generation = 0;
    for session in state.sessions.values_mut() {
        session.started = true;
        session.source_shard = 0;
        for queued in &mut session.queue {
            queued.message = body(&queued.message);
        }
        for entry in session.inflight.values_mut() {
            if let InFlightMessage::Published { message, .. } = entry {
                *message = body(message);
            }
        }
    }
    // Retained messages come in no particular order.
    state.retained.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, retained) in state.retained.iter_mut() {
        retained.message = body(&retained.message);
        retained.source_shard = 0;
    }
    state
}

#[test]
fn a_snapshot_of_any_recovered_state_replays_to_the_same_state() {
    // Records biased towards one session so that queues, in-flight entries and wills build up.
    let strategy = proptest::collection::vec(raw(), 0..120);
    let rich = std::sync::atomic::AtomicUsize::new(0);
    runner()
        .run(&strategy, |raws| {
            let records = raws.into_iter().enumerate().map(|(i, mut raw)| {
                // Two clients, a new generation only late, few ends: state accumulates.
                raw.0 = match raw.0 {
                    2 if raw.6 % 4 != 0 => 7,
                    18 => 8,
                    kind => kind,
                };
                raw.1 %= 2;
                raw.2 = 1 + u64::from(i >= 100);
                raw.3 %= 4;
                record(raw)
            });
            let state = replay(records.map(|record| (0, record)));
            let pending = state.sessions.values().any(|session| {
                !session.queue.is_empty()
                    && !session.inflight.is_empty()
                    && !session.subscriptions.is_empty()
            });
            if pending && !state.retained.is_empty() {
                rich.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut writer = SnapshotWriter::new(1000);
            for session in state.sessions.values() {
                writer.session(session);
            }
            for (topic, retained) in &state.retained {
                writer.retained(topic, retained);
            }
            let snapshot = writer.finish(7);
            let complete = matches!(
                snapshot.last(),
                Some(StoreRecord::Checkpoint { through_segment: 7, records })
                    if *records + 1 == snapshot.len() as u64
            );
            prop_assert!(complete, "the snapshot ends with its checkpoint");
            let again = replay(snapshot.into_iter().map(|record| (3, record)));
            prop_assert_eq!(again.stats.missing_messages, 0);
            prop_assert_eq!(again.stats.missing_entries, 0);
            prop_assert_eq!(normalized(&again), normalized(&state));
            Ok(())
        })
        .unwrap();
    // Not vacuous: many cases had queues, in-flight entries, subscriptions and retained.
    let rich = rich.into_inner();
    assert!(rich > 20, "{rich}");
}
