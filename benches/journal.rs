//! The journal's share of one durable QoS 1 point-to-point message, in isolation: its body,
//! Enqueued, InFlight and Acked records encoded by [`StoreJournal`] (through `dyn Journal`, as
//! the shard calls it), and a batch taken every 64 messages and turned into what the writer
//! hands to the ring. `cargo bench --bench journal`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardmq::broker::hooks::{Journal, JournalBatch, JournalRecord};
use shardmq::codec::{MqttStr, QoS};
use shardmq::session::Message;
use shardmq::store::journal::{JournalOptions, StoreJournal, SystemClock};

/// Messages per batch: a group commit takes what arrived during the previous write.
const PER_BATCH: usize = 64;

fn journal() -> Box<dyn Journal> {
    Box::new(StoreJournal::new(
        JournalOptions {
            shard: 0,
            shard_count: 2,
            epoch: 1,
            first_segment: 1,
            // Never an image: the bench measures the log path.
            segment_limit: u64::MAX,
        },
        Box::new(SystemClock),
    ))
}

/// A message as the harness publishes it (16-byte payload, a topic per pair).
fn message(i: usize) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from(format!("bench/p2p/{i:05}").as_str()),
        payload: Bytes::from(vec![0x5a; 16]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: MqttStr::from(format!("bench-pub-{i:05}").as_str()),
        origin_packet_id: 0,
        expires_at: None,
        received_at: None,
    })
}

/// One message's records: body (through `message_id`), Enqueued, InFlight, Acked.
fn one_message(journal: &mut dyn Journal, message: &Arc<Message>, client_id: &str, packet_id: u16) {
    let generation = 7 << 40 | 3;
    let id = journal.message_id(message);
    journal.append(&JournalRecord::Enqueued {
        client_id,
        generation,
        message: id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: &[],
    });
    journal.append(&JournalRecord::InFlight {
        client_id,
        generation,
        message: id,
        packet_id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: &[],
    });
    journal.append(&JournalRecord::Acked {
        client_id,
        generation,
        packet_id,
    });
}

/// What the writer does with a batch of one log part: the buffer it hands to `write_at`.
fn to_ring(batch: &mut JournalBatch) -> Vec<u8> {
    batch.bytes.to_vec()
}

fn journal_benches(c: &mut Criterion) {
    let messages: Vec<Arc<Message>> = (0..2).map(message).collect();
    let client_id = MqttStr::from("bench-sub-00042");
    let mut group = c.benchmark_group("journal_p2p_qos1");
    group.throughput(Throughput::Elements(PER_BATCH as u64));
    group.bench_function("records", |b| {
        let mut journal = journal();
        let mut packet_id = 0u16;
        b.iter(|| {
            for i in 0..PER_BATCH {
                packet_id = packet_id.wrapping_add(1).max(1);
                one_message(&mut *journal, &messages[i % 2], &client_id, packet_id);
            }
            black_box(journal.take_batch());
            // (Dropped, not recycled: what the writer did before `Journal::recycle`.)
        })
    });
    group.bench_function("records_and_write_buffer", |b| {
        let mut journal = journal();
        let mut packet_id = 0u16;
        b.iter(|| {
            for i in 0..PER_BATCH {
                packet_id = packet_id.wrapping_add(1).max(1);
                one_message(&mut *journal, &messages[i % 2], &client_id, packet_id);
            }
            let mut batch = journal.take_batch().expect("a batch");
            let buffer = to_ring(&mut batch);
            black_box(buffer);
            // Written: its buffers go back to the journal, as the writer does.
            journal.recycle(batch);
        })
    });
    group.finish();
}

criterion_group!(benches, journal_benches);
criterion_main!(benches);
