//! Connection limits (`max_connections`, `max_connections_per_shard`): a client over the limit
//! is told why. The broker reads its CONNECT and answers CONNACK 0x03 "server unavailable"
//! (MQTT 3.1/3.1.1) or 0x97 "quota exceeded" (MQTT 5.0) before closing, instead of closing a
//! connection the client cannot tell from a network failure. Room freed by a disconnect is
//! given to the next client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{connect_packet, encode, wait_until, Broker, Raw, Recv, TIMEOUT};
use shardmq::codec::{ConnAck, Packet, ProtocolVersion, ReasonCode};

/// Connects with `protocol` (clean session) and expects to be refused: a CONNACK with
/// `expected` and no session present, then the close with nothing else.
fn expect_refused(addr: SocketAddr, client_id: &str, protocol: ProtocolVersion) -> ConnAck {
    let mut connect = connect_packet(client_id, true);
    connect.protocol = protocol;
    let mut raw = Raw::tcp(addr);
    raw.version = protocol;
    // The broker may close as soon as it has answered: a failed write must not hide the
    // CONNACK that is already in our receive buffer, so read whatever happens.
    let written = raw.send_bytes(&encode(&Packet::Connect(Box::new(connect)), protocol));
    let connack = match raw.recv_for(TIMEOUT) {
        Recv::Packet(Packet::ConnAck(connack)) => connack,
        Recv::Packet(other) => {
            panic!("{client_id} ({protocol:?}): expected CONNACK, got {other:?}")
        }
        Recv::Closed => panic!(
            "{client_id} ({protocol:?}) over the connection limit: closed without a CONNACK \
             telling why (CONNECT write: {written:?})"
        ),
        Recv::Timeout => panic!(
            "{client_id} ({protocol:?}) over the connection limit: no CONNACK within {TIMEOUT:?}"
        ),
    };
    let expected = if protocol.is_v5() {
        ReasonCode::QuotaExceeded
    } else {
        ReasonCode::ServerUnavailable
    };
    assert_eq!(
        connack.reason, expected,
        "{client_id} ({protocol:?}): refusal reason"
    );
    assert!(
        !connack.session_present,
        "{client_id}: a refusal never has session present"
    );
    let after = raw.expect_closed(TIMEOUT);
    assert!(
        after.is_empty(),
        "{client_id}: nothing after the refusing CONNACK, got {after:?}"
    );
    connack
}

/// The refusal codes on the wire: 3 in MQTT 3.1.1, 0x97 in 5.0.
#[test]
fn refusal_codes_on_the_wire() {
    assert_eq!(ReasonCode::ServerUnavailable.to_v3_connack(), 0x03);
    assert_eq!(
        ReasonCode::from_v3_connack(0x03),
        Some(ReasonCode::ServerUnavailable)
    );
    assert_eq!(ReasonCode::QuotaExceeded.as_u8(), 0x97);
    // What the broker writes when it refuses a 3.1.1 client over the limit is whatever its
    // reason maps to; every non-specific reason maps to 3.
    assert_eq!(ReasonCode::QuotaExceeded.to_v3_connack(), 0x03);
}

/// `max_connections = 2`: two clients (one per shard) are in; a third is refused with CONNACK
/// 0x03 (3.1, 3.1.1) or 0x97 (5.0) on either shard, then closed. Once one of the two leaves, a
/// new client is accepted, and the limit holds again.
#[test]
fn global_limit_refuses_with_connack() {
    let broker = Broker::start_with(|config| config.max_connections = 2);
    let (mut a, _) = Raw::connect(broker.shard(0), "lim-a", true);
    let (mut b, _) = Raw::connect(broker.shard(1), "lim-b", true);
    assert_eq!(broker.connections(), 2);

    for shard in [0, 1] {
        expect_refused(
            broker.shard(shard),
            &format!("lim-v311-{shard}"),
            ProtocolVersion::V3_1_1,
        );
        expect_refused(
            broker.shard(shard),
            &format!("lim-v31-{shard}"),
            ProtocolVersion::V3_1,
        );
        expect_refused(
            broker.shard(shard),
            &format!("lim-v5-{shard}"),
            ProtocolVersion::V5,
        );
    }
    // The refused connections are gone; the two accepted ones are untouched.
    wait_until(TIMEOUT, "the refused connections to be released", || {
        broker.connections() == 2
    });
    a.ping();
    b.ping();

    a.disconnect();
    wait_until(TIMEOUT, "the broker to count 1 connection", || {
        broker.connections() == 1
    });
    let (mut c, connack) = Raw::connect(broker.shard(0), "lim-c", true);
    assert_eq!(connack.reason, ReasonCode::Success);
    c.ping();
    b.ping();
    // Full again.
    expect_refused(broker.shard(1), "lim-v5-again", ProtocolVersion::V5);
    expect_refused(broker.shard(0), "lim-v311-again", ProtocolVersion::V3_1_1);
    c.ping();
    b.ping();
}

/// `max_connections_per_shard = 1`: a second client on a shard is refused with the CONNACK,
/// while a client on the other shard is accepted; leaving frees the place.
#[test]
fn per_shard_limit_refuses_with_connack() {
    let broker = Broker::start_with(|config| config.max_connections_per_shard = 1);
    let (mut a, _) = Raw::connect(broker.shard(0), "shl-a", true);
    expect_refused(broker.shard(0), "shl-v311", ProtocolVersion::V3_1_1);
    expect_refused(broker.shard(0), "shl-v5", ProtocolVersion::V5);
    let (mut b, connack) = Raw::connect(broker.shard(1), "shl-b", true);
    assert_eq!(
        connack.reason,
        ReasonCode::Success,
        "the other shard has room"
    );
    expect_refused(broker.shard(1), "shl-v5-1", ProtocolVersion::V5);
    a.ping();
    b.ping();

    a.disconnect();
    wait_until(TIMEOUT, "shard 0's connection to be released", || {
        broker.connections() == 1
    });
    let (mut c, connack) = Raw::connect(broker.shard(0), "shl-c", true);
    assert_eq!(
        connack.reason,
        ReasonCode::Success,
        "shard 0 has room again"
    );
    c.ping();
    b.ping();
}

/// At the limit, a client that never sends CONNECT is closed after the connect timeout, with
/// nothing written to it, and the limit still lets the accepted client work.
#[test]
fn silent_client_over_the_limit_is_closed_after_the_connect_timeout() {
    let broker = Broker::start_with(|config| {
        config.max_connections = 1;
        config.connect_timeout = 1;
    });
    let (mut a, _) = Raw::connect(broker.shard(0), "silent-a", true);
    let mut silent = Raw::tcp(broker.shard(1));
    let packets = silent.expect_closed(TIMEOUT + Duration::from_secs(1));
    assert!(
        packets.is_empty(),
        "no CONNECT, no CONNACK: got {packets:?}"
    );
    a.ping();
    expect_refused(broker.shard(1), "silent-v5", ProtocolVersion::V5);
    a.ping();
}

/// A `[[listener]]` table's own `max_connections`: counted across shards for that listener
/// only; other listeners are not affected.
#[test]
fn per_listener_limit_refuses_with_connack() {
    let broker = Broker::start_with(|config| {
        config.listen = vec![];
        config.listener = vec![
            shardmq::config::ListenerConfig {
                max_connections: 1,
                ..shardmq::config::ListenerConfig::mqtt("127.0.0.1:0".parse().unwrap())
            },
            shardmq::config::ListenerConfig::mqtt("127.0.0.1:0".parse().unwrap()),
        ];
    });
    let limited = broker.addr;
    let (mut first, connack) = Raw::try_connect(limited, connect_packet("listener-a", true));
    assert_eq!(connack.reason, ReasonCode::Success);
    let refused = expect_refused(limited, "listener-b", ProtocolVersion::V5);
    assert_eq!(refused.reason, ReasonCode::QuotaExceeded);
    // The per-shard test listeners are not that listener: still open.
    let (mut other, connack) =
        Raw::try_connect(broker.shard(1), connect_packet("listener-c", true));
    assert_eq!(connack.reason, ReasonCode::Success);
    other.ping();
    first.ping();
    first.disconnect();
    wait_until(TIMEOUT, "the listener's count to drop", || {
        broker.connections() == 1
    });
    let (mut again, connack) = Raw::try_connect(limited, connect_packet("listener-d", true));
    assert_eq!(connack.reason, ReasonCode::Success);
    again.ping();
}
