//! MQTT over WebSocket (ws and wss) on the shard's engine: rumqttc's websocket transport (a
//! third-party client) over ws and wss, and a raw client for what rumqttc never sends: MQTT
//! packets split across frames and several in one frame, a bad path, a protocol violation that
//! closes only its own connection, and a thousand stalled upgrades closed at the connect
//! timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::certs::Certs;
use common::{connect_packet, encode, Broker, Client, TIMEOUT};
use shardmq::codec::{decode, Packet, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};

/// A broker with plain MQTT on listener 0, ws on 1 (and wss on 2 with `certs`).
fn ws_broker(certs: Option<&Certs>, tweak: impl FnOnce(&mut shardmq::config::Config)) -> Broker {
    Broker::start_with(|config| {
        config.ws_listen = vec!["127.0.0.1:0".parse().unwrap()];
        if let Some(certs) = certs {
            config.wss_listen = vec!["127.0.0.1:0".parse().unwrap()];
            config.certfile = Some(certs.pem("server"));
            config.keyfile = Some(certs.key("server"));
        }
        tweak(config);
    })
}

fn ws_options(url: String, client_id: &str, transport: rumqttc::Transport) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, url, 0);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(transport);
    options
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_over_ws_and_wss() {
    let certs = Certs::new("ws-rumqttc", &[]);
    let broker = ws_broker(Some(&certs), |_| {});
    let ws = broker.listen_addr(1);
    let wss = broker.listen_addr(2);
    let (subscriber, _) = Client::connect_with(ws_options(
        format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        "ws-sub",
        rumqttc::Transport::Ws,
    ))
    .await;
    subscriber
        .subscribe("web/#", rumqttc::QoS::ExactlyOnce)
        .await;
    let tls = rumqttc::TlsConfiguration::Rustls(certs.client_config("ca", None));
    let (publisher, _) = Client::connect_with(ws_options(
        format!("wss://localhost:{}/mqtt", wss.port()),
        "wss-pub",
        rumqttc::Transport::wss_with_config(tls),
    ))
    .await;
    for (i, qos) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        let payload = vec![i as u8; 3000 * (i + 1)];
        publisher.publish("web/x", qos, false, &payload).await;
        let publish = subscriber.recv_publish().await;
        assert_eq!(publish.topic, "web/x");
        assert_eq!(&publish.payload[..], &payload[..]);
    }
    // Plain TCP clients reach WebSocket subscribers too.
    let plain = Client::connect(broker.addr, "plain").await;
    plain
        .publish("web/plain", rumqttc::QoS::AtLeastOnce, false, b"tcp")
        .await;
    assert_eq!(&subscriber.recv_publish().await.payload[..], b"tcp");
}

/// A raw WebSocket client: frames are masked, as RFC 6455 requires of clients.
struct WsRaw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl WsRaw {
    /// Sends the upgrade request for `path`; returns the client and the answer's head.
    fn upgrade(addr: SocketAddr, path: &str) -> (WsRaw, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = WsRaw {
            stream,
            buffer: Vec::new(),
        };
        let head = loop {
            if let Some(end) = raw.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw.buffer[..end]).to_string();
                raw.buffer.drain(..end + 4);
                break head;
            }
            if raw.fill() == 0 {
                break String::from_utf8_lossy(&raw.buffer).to_string();
            }
        };
        (raw, head)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                n
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => 0,
            // A signal landed during the read: read again.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => self.fill(),
            Err(error) => panic!("read: {error}"),
        }
    }

    /// Sends one frame (`fin`, `opcode`) with a masked payload.
    fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n < 65536 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).unwrap();
    }

    /// The next server frame: (opcode, payload). `None` at EOF.
    fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 2 {
                let opcode = self.buffer[0] & 0x0f;
                assert_eq!(self.buffer[1] & 0x80, 0, "server frames are not masked");
                let (len, header) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    127 if self.buffer.len() >= 10 => (
                        u64::from_be_bytes(self.buffer[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// The next MQTT packet, reassembled from binary frames.
    fn recv_packet(&mut self, mqtt: &mut Vec<u8>) -> Packet {
        loop {
            let mut bytes = bytes::BytesMut::from(&mqtt[..]);
            if let Ok(Some(packet)) = decode(&mut bytes, ProtocolVersion::V3_1_1, 1 << 20) {
                *mqtt = bytes.to_vec();
                return packet;
            }
            let (opcode, payload) = self.recv_frame().expect("a frame before EOF");
            assert_eq!(opcode, 2, "MQTT comes in binary frames");
            mqtt.extend_from_slice(&payload);
        }
    }
}

#[test]
fn packets_split_across_frames_and_batched_in_one() {
    let broker = ws_broker(None, |_| {});
    let ws = broker.listen_addr(1);
    let (mut client, head) = WsRaw::upgrade(ws, "/mqtt");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{head}"
    );
    // CONNECT in two frames: a fragmented message (binary + continuation), with a ping
    // between the fragments (control frames may interleave).
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet("raw-ws", true))),
        ProtocolVersion::V3_1_1,
    );
    let (first, second) = connect.split_at(5);
    client.send_frame(false, 2, first, true);
    client.send_frame(true, 9, b"hello", true);
    client.send_frame(true, 0, second, true);
    let (opcode, payload) = client.recv_frame().expect("pong");
    assert_eq!((opcode, &payload[..]), (10, &b"hello"[..]));
    let mut mqtt = Vec::new();
    assert!(matches!(client.recv_packet(&mut mqtt), Packet::ConnAck(_)));
    // SUBSCRIBE and PINGREQ in one frame.
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            "raw/#".into(),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    });
    let mut batch = encode(&subscribe, ProtocolVersion::V3_1_1);
    batch.extend_from_slice(&encode(&Packet::PingReq, ProtocolVersion::V3_1_1));
    client.send_frame(true, 2, &batch, true);
    assert!(matches!(client.recv_packet(&mut mqtt), Packet::SubAck(_)));
    assert!(matches!(client.recv_packet(&mut mqtt), Packet::PingResp));
    // A publish from a TCP client arrives in a binary frame.
    let (mut tcp, _) = common::Raw::connect(broker.addr, "tcp-pub", true);
    tcp.publish("raw/t", b"over ws", QoS::AtMostOnce, false, 0);
    match client.recv_packet(&mut mqtt) {
        Packet::Publish(publish) => assert_eq!(&publish.payload[..], b"over ws"),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
    // A close frame is answered and the connection ends.
    client.send_frame(true, 8, &1000u16.to_be_bytes(), true);
    let (opcode, payload) = client.recv_frame().expect("close answer");
    assert_eq!(opcode, 8);
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    assert!(
        client.recv_frame().is_none(),
        "closed after the close handshake"
    );
}

#[test]
fn bad_path_and_bad_frames_close_only_their_connection() {
    let broker = ws_broker(None, |_| {});
    let ws = broker.listen_addr(1);
    let (mut steady, _) = WsRaw::upgrade(ws, "/mqtt");
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet("steady", true))),
        ProtocolVersion::V3_1_1,
    );
    steady.send_frame(true, 2, &connect, true);
    let mut mqtt = Vec::new();
    assert!(matches!(steady.recv_packet(&mut mqtt), Packet::ConnAck(_)));

    let (_, head) = WsRaw::upgrade(ws, "/not-mqtt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A client frame without a mask breaks RFC 6455: close 1002, then EOF.
    let (mut bad, _) = WsRaw::upgrade(ws, "/mqtt");
    bad.send_frame(true, 2, &connect, false);
    let (opcode, payload) = bad.recv_frame().expect("a close frame");
    assert_eq!(opcode, 8);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());
    assert!(bad.recv_frame().is_none());
    // A text frame is not MQTT: close 1003.
    let (mut text, _) = WsRaw::upgrade(ws, "/mqtt");
    text.send_frame(true, 1, b"hello", true);
    let (opcode, payload) = text.recv_frame().expect("a close frame");
    assert_eq!(opcode, 8);
    assert_eq!(&payload[..2], &1003u16.to_be_bytes());
    // Garbage MQTT inside valid frames: the MQTT layer closes it.
    let (mut garbage, _) = WsRaw::upgrade(ws, "/mqtt");
    garbage.send_frame(true, 2, &[0xff; 16], true);
    while garbage.recv_frame().is_some() {}
    // The first client is unaffected.
    steady.send_frame(
        true,
        2,
        &encode(&Packet::PingReq, ProtocolVersion::V3_1_1),
        true,
    );
    assert!(matches!(steady.recv_packet(&mut mqtt), Packet::PingResp));
}

/// 1,000 connections that stall in the HTTP upgrade (half a request, or nothing) are closed
/// at the connect timeout while a WebSocket client keeps working.
#[test]
fn stalled_upgrades_are_closed_at_the_connect_timeout() {
    let broker = ws_broker(None, |config| config.connect_timeout = 2);
    let ws = broker.listen_addr(1);
    let (mut steady, _) = WsRaw::upgrade(ws, "/mqtt");
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet("steady", true))),
        ProtocolVersion::V3_1_1,
    );
    steady.send_frame(true, 2, &connect, true);
    let mut mqtt = Vec::new();
    assert!(matches!(steady.recv_packet(&mut mqtt), Packet::ConnAck(_)));
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut stream = TcpStream::connect(ws).unwrap();
            if i % 2 == 0 {
                stream
                    .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgr")
                    .unwrap();
            }
            stream
        })
        .collect();
    for _ in 0..10 {
        steady.send_frame(
            true,
            2,
            &encode(&Packet::PingReq, ProtocolVersion::V3_1_1),
            true,
        );
        assert!(matches!(steady.recv_packet(&mut mqtt), Packet::PingResp));
    }
    let deadline = started + Duration::from_secs(15);
    for stream in &mut stalled {
        common::expect_server_close(stream, deadline, "a stalled upgrade");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the connect timeout"
    );
    steady.send_frame(
        true,
        2,
        &encode(&Packet::PingReq, ProtocolVersion::V3_1_1),
        true,
    );
    assert!(matches!(steady.recv_packet(&mut mqtt), Packet::PingResp));
}
