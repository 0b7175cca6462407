//! Shared-subscription delivery allocates the same per message whatever the group's size: the
//! member list is not copied per message (it once was). Measured with a counting global
//! allocator on one shard driven through its sans-I/O inputs (no runtime, no sockets).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shardmq::broker::handles::ConnId;
use shardmq::broker::{Global, Shard};
use shardmq::codec::{
    Connect, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use shardmq::config::Config;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size.saturating_sub(layout.size())));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

fn send(shard: &mut Shard, conn: ConnId, packet: Packet) {
    let mut bytes = BytesMut::new();
    packet.encode(ProtocolVersion::V3_1_1, &mut bytes).unwrap();
    shard.on_bytes(conn, bytes, Instant::now());
}

fn client(shard: &mut Shard, id: &str) -> ConnId {
    let conn = shard.on_accept(Instant::now()).unwrap();
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttStr::from(id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    send(shard, conn, Packet::Connect(Box::new(connect)));
    conn
}

/// Bytes allocated per published message with `members` members in the group.
fn bytes_per_message(members: usize) -> usize {
    let mut shard = Shard::new(
        0,
        1,
        Rc::new(Config::default()),
        Arc::new(Global::default()),
        Instant::now(),
    );
    let mut conns = Vec::new();
    for i in 0..members {
        let conn = client(&mut shard, &format!("member-{i}"));
        let subscribe = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                MqttStr::from("$share/g/t/#"),
                SubscriptionOptions::with_qos(QoS::AtMostOnce),
            )],
        };
        send(&mut shard, conn, Packet::Subscribe(subscribe));
        conns.push(conn);
    }
    let publisher = client(&mut shard, "publisher");
    let publish = |shard: &mut Shard| {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttStr::from("t/x"),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from_static(b"payload"),
        });
        send(shard, publisher, packet);
        // What a socket would take; the buffers keep their capacity.
        for &conn in &conns {
            if let Some(out) = shard.output(conn) {
                out.clear();
            }
        }
    };
    // Warm up: every member's output buffer has grown, every map has its entries.
    for _ in 0..4 * members {
        publish(&mut shard);
    }
    const MESSAGES: usize = 2000;
    let before = allocated();
    for _ in 0..MESSAGES {
        publish(&mut shard);
    }
    (allocated() - before) / MESSAGES
}

#[test]
fn shared_delivery_cost_does_not_grow_with_the_group() {
    let small = bytes_per_message(2);
    let large = bytes_per_message(200);
    // Copying a 200-member list per message would add ~200 x 24 = 4,800 bytes per message.
    assert!(
        large <= small + 256,
        "bytes allocated per message: {small} with 2 members, {large} with 200"
    );
}
