//! Flow control at the bounds: publisher throttling instead of QoS 1 loss (same shard, and what
//! happens across shards), cross-shard outbox backpressure under a QoS 0 flood, DISCONNECT 0x04
//! after a PUBLISH in the same read, and keep-alive under timer churn.
//!
//! Every wait has a deadline; elapsed times are never the pass/fail criterion except for the
//! generous keep-alive bound the MQTT specification sets.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    ack_publish, connect_packet, encode, publish_packet, wait_until, will, Broker, Raw, Recv, Sync,
    TIMEOUT,
};
use shardmq::codec::{Disconnect, Packet, ProtocolVersion, QoS, ReasonCode};

// ----- publisher throttling ------------------------------------------------------------------

/// QoS 1 messages in the throttling tests.
const MESSAGES: u32 = 1000;
/// How long the subscriber leaves everything unread before it starts draining.
const SUBSCRIBER_PAUSE: Duration = Duration::from_millis(1500);
/// The whole exchange (pause, flood, drain) must be over by then.
const FLOW_DEADLINE: Duration = Duration::from_secs(20);

/// How long to wait for the next packet of a flow that must keep moving: [`TIMEOUT`], cut at the
/// flow's deadline.
fn next_packet_wait(deadline: Instant) -> Duration {
    TIMEOUT.min(deadline.saturating_duration_since(Instant::now()))
}

/// Writes [`MESSAGES`] QoS 1 PUBLISHes to `topic` (payload and packet id = sequence number 1..)
/// in 4 KiB writes, without waiting for PUBACKs. About 15 KB: the socket buffers hold it all
/// while the broker does not read.
fn write_numbered_publishes(publisher: &mut Raw, topic: &str) {
    let bytes: Vec<u8> = (1..=MESSAGES)
        .flat_map(|seq| {
            let publish = publish_packet(
                topic,
                &seq.to_be_bytes(),
                QoS::AtLeastOnce,
                false,
                seq as u16,
            );
            encode(&Packet::Publish(publish), ProtocolVersion::V3_1_1)
        })
        .collect();
    for chunk in bytes.chunks(4096) {
        publisher.send_bytes(chunk).expect("write the publishes");
    }
}

/// A subscriber on shard 0 whose queue holds 100 messages (window 10) stops reading while a
/// publisher on `publisher_shard` writes [`MESSAGES`] QoS 1 publishes as fast as it can; then the
/// subscriber reads and acknowledges everything. No message may be lost: every one of them is
/// delivered and every PUBLISH is acknowledged to the publisher.
fn slow_subscriber_loses_no_qos1_message(publisher_shard: usize) {
    let broker = Broker::start_with(|c| {
        c.max_queued_messages = 100;
        c.max_inflight = 10;
    });
    let deadline = Instant::now() + FLOW_DEADLINE;
    let (mut sub, _) = Raw::connect_small_buffer(broker.shard(0), "flow-sub", 4096);
    sub.subscribe(1, "flow/t", QoS::AtLeastOnce);
    if publisher_shard != 0 {
        Sync::new(&broker).barrier(0, publisher_shard);
    }
    let (mut publisher, _) = Raw::connect(broker.shard(publisher_shard), "flow-pub", true);

    // The publisher: every PUBLISH written at once (in a few writes), then the PUBACKs as they
    // come. A throttled publisher is simply not read, so its PUBACKs are late, never missing.
    let publishing = thread::spawn(move || {
        write_numbered_publishes(&mut publisher, "flow/t");
        let mut acked = BTreeSet::new();
        while acked.len() < MESSAGES as usize {
            match publisher.recv_for(next_packet_wait(deadline)) {
                Recv::Packet(Packet::PubAck(ack)) => {
                    assert!(
                        acked.insert(ack.packet_id),
                        "PUBACK {} twice",
                        ack.packet_id
                    );
                }
                Recv::Packet(other) => panic!("publisher: expected PUBACK, got {other:?}"),
                Recv::Closed => panic!(
                    "the publisher was disconnected after {} PUBACKs",
                    acked.len()
                ),
                Recv::Timeout => break,
            }
        }
        acked
    });

    // The subscriber stays connected but reads nothing for a while, then drains.
    thread::sleep(SUBSCRIBER_PAUSE);
    let mut received = BTreeSet::new();
    let mut duplicates = 0;
    while received.len() < MESSAGES as usize {
        match sub.recv_for(next_packet_wait(deadline)) {
            Recv::Packet(Packet::Publish(publish)) => {
                let seq = u32::from_be_bytes(publish.payload[..].try_into().expect("4-byte seq"));
                if !received.insert(seq) {
                    duplicates += 1;
                }
                ack_publish(&mut sub, &publish);
            }
            Recv::Packet(other) => panic!("subscriber: expected PUBLISH, got {other:?}"),
            Recv::Closed => panic!(
                "the subscriber was disconnected after {} messages",
                received.len()
            ),
            Recv::Timeout => break,
        }
    }
    let acked = publishing.join().expect("the publisher thread");

    let missing: Vec<u32> = (1..=MESSAGES).filter(|s| !received.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "the subscriber (queue bound 100) received {} of {MESSAGES} QoS 1 messages ({duplicates} \
         duplicates); {} missing, the first: {:?}; the publisher got {} PUBACKs",
        received.len(),
        missing.len(),
        &missing[..missing.len().min(20)],
        acked.len()
    );
    assert_eq!(
        acked.len(),
        MESSAGES as usize,
        "the publisher got {} of {MESSAGES} PUBACKs",
        acked.len()
    );
    // The subscriber still works, and no extra copy arrives before its PINGRESP.
    sub.ping();
}

/// Same shard: the publisher that fills half of the subscriber's queue is paused instead of the
/// queue dropping the newest messages.
#[test]
fn publisher_on_the_subscribers_shard_is_throttled_not_dropped() {
    slow_subscriber_loses_no_qos1_message(0);
}

/// A subscriber that stops acknowledging altogether (here: never reads) is stuck, not slow: it
/// throttles the publisher only for the broker's stuck bound (10 s without an acknowledgement),
/// then its queue bound drops the surplus and the publisher runs at full speed. Throttled for
/// good, the publisher would get one read per 200 ms tick: 1,000 QoS 1 messages would take
/// over three minutes, so the 60 s bound below cannot pass by luck.
#[test]
fn a_stuck_subscriber_throttles_its_publisher_only_for_a_while() {
    let broker = Broker::start_with(|c| {
        c.max_queued_messages = 100;
        c.max_inflight = 10;
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut stuck, _) = Raw::connect_small_buffer(broker.shard(0), "stuck-sub", 4096);
    stuck.subscribe(1, "stuck/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(0), "stuck-pub", true);
    write_numbered_publishes(&mut publisher, "stuck/t");
    let mut acked = BTreeSet::new();
    while acked.len() < MESSAGES as usize {
        match publisher.recv_for(next_packet_wait(deadline)) {
            Recv::Packet(Packet::PubAck(ack)) => {
                acked.insert(ack.packet_id);
            }
            Recv::Packet(other) => panic!("publisher: expected PUBACK, got {other:?}"),
            Recv::Closed => panic!(
                "the publisher was disconnected after {} PUBACKs",
                acked.len()
            ),
            Recv::Timeout => break,
        }
    }
    assert_eq!(
        acked.len(),
        MESSAGES as usize,
        "the publisher got {} of {MESSAGES} PUBACKs within 60 s: still throttled by a stuck \
         subscriber",
        acked.len()
    );
    // The stuck subscriber is still connected: reading now, it gets at most its window, its
    // queue bound and what sat in the socket buffers, never all of them.
    let mut delivered = 0;
    while let Recv::Packet(Packet::Publish(publish)) = stuck.recv_for(Duration::from_millis(500)) {
        ack_publish(&mut stuck, &publish);
        delivered += 1;
    }
    assert!(
        delivered < MESSAGES as usize,
        "the stuck subscriber got all {delivered} messages: nothing was ever dropped"
    );
}

/// Across shards the publisher is not throttled today (README: "a publisher on another shard
/// still relies on queue bounds (drop newest, counted)"): the forwarded messages overflow the
/// subscriber's 100-message queue and QoS 1 messages are lost although the publisher got its
/// PUBACKs (measured: 110 of 1000 delivered, the window of 10 plus the queue of 100; 890 lost).
/// This test states the wanted behaviour; it fails until cross-shard publisher backpressure
/// exists.
#[test]
#[ignore = "cross-shard publisher backpressure: open"]
fn publisher_on_another_shard_loses_no_qos1_message() {
    slow_subscriber_loses_no_qos1_message(1);
}

// ----- cross-shard outbox backpressure ---------------------------------------------------------

/// QoS 0 publishes in the flood.
const FLOOD: usize = 300_000;

/// A fresh client on each shard connects, pings and disconnects: both shards accept and answer.
fn probe_both_shards(broker: &Broker, round: usize) {
    for shard in 0..2 {
        let (mut probe, _) = Raw::connect(
            broker.shard(shard),
            &format!("flood-probe-{round}-{shard}"),
            true,
        );
        probe.ping();
        probe.disconnect();
    }
}

/// PINGREQ, then PUBLISHes (counted) until the PINGRESP.
fn ping_past_publishes(raw: &mut Raw) -> usize {
    raw.send(Packet::PingReq);
    let mut publishes = 0;
    loop {
        match raw.recv_for(TIMEOUT) {
            Recv::Packet(Packet::Publish(_)) => publishes += 1,
            Recv::Packet(Packet::PingResp) => return publishes,
            other => panic!("waiting for PINGRESP after {publishes} PUBLISHes, got {other:?}"),
        }
    }
}

/// A publisher on shard 1 floods QoS 0 publishes that all go to a subscriber on shard 0 (which
/// reads everything): shard 1's outbox to shard 0 fills faster than shard 0 drains it. The
/// broker must stay responsive (new clients on both shards connect and get PINGRESP during and
/// after the flood), the publisher must not be disconnected, the subscriber must get messages,
/// and the connection count must come back to where it was.
#[test]
fn cross_shard_flood_keeps_both_shards_responsive() {
    // A mesh queue of 2 batches (at most 1 Ki messages in flight between the shards): the
    // outbox itself has to hold the surplus, so it passes its high-water mark (64 Ki messages)
    // and shard 1 stops reading its sockets, several times during the flood.
    let broker = Broker::start_with(|c| c.mesh_capacity = 2);
    let baseline = broker.connections();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sync = Sync::new(&broker);
    let (mut sub, _) = Raw::connect(broker.shard(0), "flood-sub", true);
    sub.subscribe(1, "flood/#", QoS::AtMostOnce);
    sync.barrier(0, 1);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "flood-pub", true);
    let one = encode(
        &Packet::Publish(publish_packet(
            "flood/x",
            b"12345678",
            QoS::AtMostOnce,
            false,
            0,
        )),
        ProtocolVersion::V3_1_1,
    );
    let flood = one.repeat(FLOOD);
    let stop = AtomicBool::new(false);

    let (received, rounds_during, mut sub, publisher) = thread::scope(|scope| {
        let subscribing = scope.spawn(|| {
            let mut received = 0usize;
            // Read everything until the publisher is done, then a PINGREQ: its PINGRESP comes
            // after everything queued before it.
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                match sub.recv_for(Duration::from_millis(100)) {
                    Recv::Packet(Packet::Publish(_)) => received += 1,
                    Recv::Packet(other) => panic!("subscriber: expected PUBLISH, got {other:?}"),
                    Recv::Closed => panic!("the subscriber was disconnected after {received}"),
                    Recv::Timeout => {}
                }
            }
            received += ping_past_publishes(&mut sub);
            (received, sub)
        });
        let publishing = scope.spawn(move || {
            for chunk in flood.chunks(64 * 1024) {
                publisher
                    .send_bytes(chunk)
                    .expect("the broker reads the flood (write timeout 5 s)");
            }
            // Answered once shard 1 has read the whole flood.
            publisher.ping();
            publisher
        });

        let mut rounds_during = 0;
        while !publishing.is_finished() {
            probe_both_shards(&broker, rounds_during);
            rounds_during += 1;
        }
        let publisher = publishing.join().expect("the publisher thread");
        stop.store(true, Ordering::Release);
        let (received, sub) = subscribing.join().expect("the subscriber thread");
        (received, rounds_during, sub, publisher)
    });

    assert!(
        received > 0,
        "the subscriber received nothing of {FLOOD} QoS 0 messages"
    );
    // After the flood: both shards still answer, the flood's clients still work (the subscriber
    // may still be receiving the tail of the flood, forwarded after its first PINGRESP).
    probe_both_shards(&broker, usize::MAX);
    let received = received + ping_past_publishes(&mut sub);
    // sync's 4 clients, the subscriber and the publisher: every probe is gone.
    wait_until(TIMEOUT, "the probes' connections to be closed", || {
        broker.connections() == baseline + 6
    });
    publisher.disconnect();
    sub.disconnect();
    drop(sync);
    wait_until(
        TIMEOUT,
        "the connection count to return to baseline",
        || broker.connections() == baseline,
    );
    assert!(!broker.failed(), "a shard died");
    eprintln!(
        "flood: {received} of {FLOOD} QoS 0 messages delivered, {rounds_during} probe rounds \
         during the flood"
    );
}

// ----- DISCONNECT 0x04 -----------------------------------------------------------------------

/// An MQTT 5.0 client with a will writes, in one write, a QoS 1 PUBLISH (packet id 7) and
/// DISCONNECT 0x04 (disconnect with will message). The PUBLISH was accepted before the
/// DISCONNECT, so its PUBACK must reach the client before the connection closes; the message is
/// delivered and the will is published. The broker does not answer a client's DISCONNECT.
#[test]
fn disconnect_with_will_keeps_the_puback_of_the_same_read() {
    let broker = Broker::start();
    let (mut watch, _) = Raw::connect(broker.shard(1), "dw-watch", true);
    watch.subscribe_many(
        1,
        &[("dw/data", QoS::AtLeastOnce), ("dw/will", QoS::AtLeastOnce)],
    );
    Sync::new(&broker).barrier(1, 0);

    let mut connect = connect_packet("dw-client", true);
    connect.protocol = ProtocolVersion::V5;
    connect.will = Some(will("dw/will", b"will fired", QoS::AtLeastOnce, false));
    let (mut client, _) = Raw::connect_with(broker.shard(0), connect);
    let mut bytes = encode(
        &Packet::Publish(publish_packet(
            "dw/data",
            b"last words",
            QoS::AtLeastOnce,
            false,
            7,
        )),
        ProtocolVersion::V5,
    );
    bytes.extend(encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
        ProtocolVersion::V5,
    ));
    client
        .send_bytes(&bytes)
        .expect("write PUBLISH + DISCONNECT");
    let packets = client.expect_closed(TIMEOUT);

    // Both the message and the will reach the watcher (whatever their order).
    let mut delivered = Vec::new();
    for _ in 0..2 {
        let publish = watch.recv_publish();
        ack_publish(&mut watch, &publish);
        delivered.push((
            publish.topic.as_str().to_owned(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        ));
    }
    delivered.sort();
    watch.expect_silence(common::QUIET);

    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::PubAck(ack) if ack.packet_id == 7)),
        "no PUBACK for packet id 7 before the connection closed; received {packets:?}"
    );
    assert_eq!(
        delivered,
        vec![
            ("dw/data".to_owned(), "last words".to_owned()),
            ("dw/will".to_owned(), "will fired".to_owned()),
        ],
        "the published message and the will"
    );
    assert!(
        matches!(&packets[..], [Packet::PubAck(_)]),
        "after the client's DISCONNECT the broker sends nothing more: {packets:?}"
    );
}

// ----- keep-alive under timer churn ---------------------------------------------------------

/// Connects and disconnects clients with keep-alive 1 s on `shard` until `stop`, so wheel
/// entries of closed connections (and reused connection slots) pile up around the client under
/// test. Returns how many clients it ran.
fn churn(addr: std::net::SocketAddr, stop: &AtomicBool, tag: &str) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let mut connect = connect_packet(&format!("{tag}-{n}"), true);
        connect.keep_alive = 1;
        let (mut raw, _) = Raw::connect_with(addr, connect);
        if n % 2 == 0 {
            raw.ping();
            raw.disconnect();
        } else {
            raw.drop_socket();
        }
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    n
}

/// keep-alive 1 s, a PINGREQ every 300 ms for 5 s, while other keep-alive connections come and
/// go on the same shard: every PINGREQ is answered and the connection is never closed.
#[test]
fn pinging_client_stays_connected_through_timer_churn() {
    let broker = Broker::start();
    let stop = AtomicBool::new(false);
    let churned = thread::scope(|scope| {
        let churning = scope.spawn(|| churn(broker.shard(0), &stop, "ka-churn"));
        let mut connect = connect_packet("ka-steady", true);
        connect.keep_alive = 1;
        let (mut raw, _) = Raw::connect_with(broker.shard(0), connect);
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(300));
            raw.send(Packet::PingReq);
            match raw.recv_for(TIMEOUT) {
                Recv::Packet(Packet::PingResp) => pings += 1,
                other => {
                    stop.store(true, Ordering::Release);
                    panic!(
                        "PINGREQ {} after {:?}: expected PINGRESP, got {other:?}",
                        pings + 1,
                        start.elapsed()
                    );
                }
            }
        }
        stop.store(true, Ordering::Release);
        raw.disconnect();
        churning.join().expect("the churn thread")
    });
    assert!(churned > 0);
}

/// keep-alive 1 s: a client that pinged for a while (each packet moving its deadline) and then
/// goes silent, among churning connections, is still closed: within 4 s of its last packet
/// (1.5 × keep-alive plus the wheel's one-second buckets and tick slack).
#[test]
fn silent_client_is_closed_after_pings_and_churn() {
    let broker = Broker::start();
    let stop = Arc::new(AtomicBool::new(false));
    let churning = {
        let stop = Arc::clone(&stop);
        let addr = broker.shard(1);
        thread::spawn(move || churn(addr, &stop, "ka-churn-silent"))
    };
    let mut connect = connect_packet("ka-goes-silent", true);
    connect.keep_alive = 1;
    let (mut raw, _) = Raw::connect_with(broker.shard(1), connect);
    for _ in 0..7 {
        thread::sleep(Duration::from_millis(300));
        raw.ping();
    }
    let result = raw.recv_for(Duration::from_secs(4));
    stop.store(true, Ordering::Release);
    churning.join().expect("the churn thread");
    assert!(
        matches!(result, Recv::Closed),
        "keep-alive 1 s: expected the broker to close the silent connection within 4 s, got \
         {result:?}"
    );
}
