//! Shared helpers for the integration tests: an in-process broker guard, a raw-bytes MQTT client
//! over a blocking `TcpStream` (speaking through our own codec) and a wrapper around rumqttc.
//!
//! Everything waits with a deadline: a missing packet fails the test, it never hangs it.
#![allow(dead_code)]

pub mod certs;
pub mod process;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq::broker::BrokerHandle;
use shardmq::codec::{
    decode, Ack, ConnAck, Connect, LastWill, MqttStr, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use shardmq::config::Config;

/// How long to wait for something that must happen.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

static TRACING: Once = Once::new();

/// Waits until the broker closes `stream` (EOF or reset), discarding what it sends, until
/// `deadline`; fails the test if it is still open then.
pub fn expect_server_close(stream: &mut TcpStream, deadline: Instant, what: &str) {
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(10))))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return,
            // A signal landed during the read: read again.
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => panic!("{what} was not closed: {error}"),
        }
    }
}

/// `SHARDMQ_TEST_LOG=debug cargo test ...` shows the broker's logs.
fn init_tracing() {
    TRACING.call_once(|| {
        if let Ok(filter) = std::env::var("SHARDMQ_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

// ----- broker ------------------------------------------------------------------------------

/// A broker running in this process: 2 shards, each with its own loopback listener so a test
/// chooses the shard of every client. Shut down and joined on drop.
pub struct Broker {
    handle: Option<BrokerHandle>,
    /// The SO_REUSEPORT address (the kernel picks the shard).
    pub addr: SocketAddr,
    /// `shard_addrs[i]` reaches shard `i` only.
    pub shard_addrs: Vec<SocketAddr>,
    /// Every listener's bound address, in `Config::listeners` order.
    pub listen_addrs: Vec<SocketAddr>,
    /// The configuration it was started with (or last reloaded).
    config: Config,
}

impl Broker {
    /// A broker with the test defaults.
    pub fn start() -> Broker {
        Broker::start_with(|_| {})
    }

    /// A broker with the test defaults changed by `tweak`.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Broker {
        init_tracing();
        let mut config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            shards: Some(2),
            per_shard_listeners: true,
            ..Config::default()
        };
        tweak(&mut config);
        let handle = shardmq::broker::start(config.clone()).expect("the broker starts");
        let addr = handle.listen_addrs[0];
        let shard_addrs = handle.shard_addrs.clone();
        let listen_addrs = handle.listen_addrs.clone();
        assert_eq!(shard_addrs.len(), 2, "per-shard listeners are on");
        Broker {
            handle: Some(handle),
            addr,
            shard_addrs,
            listen_addrs,
            config,
        }
    }

    /// Reloads the broker with its configuration changed by `tweak` (the SIGHUP path): the
    /// shards apply it at their next tick.
    pub fn reload(&mut self, tweak: impl FnOnce(&mut Config)) {
        let mut config = self.config.clone();
        tweak(&mut config);
        self.handle
            .as_ref()
            .expect("the broker is running")
            .reload(config.clone())
            .expect("the configuration reloads");
        self.config = config;
    }

    /// Reloads the broker with `config` as given; the reload's verdict.
    pub fn try_reload(&mut self, config: Config) -> Result<(), String> {
        self.handle
            .as_ref()
            .expect("the broker is running")
            .reload(config.clone())
            .map_err(|error| error.to_string())?;
        self.config = config;
        Ok(())
    }

    /// The configuration it was started with (or last reloaded).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bound address of listener `i` (in `Config::listeners` order).
    pub fn listen_addr(&self, i: usize) -> SocketAddr {
        self.handle
            .as_ref()
            .expect("the broker is running")
            .listen_addrs[i]
    }

    /// The listener of shard `i`.
    pub fn shard(&self, i: usize) -> SocketAddr {
        self.shard_addrs[i]
    }

    /// Open client connections (all shards).
    pub fn connections(&self) -> usize {
        self.handle.as_ref().map_or(0, BrokerHandle::connections)
    }

    /// Asks the broker to stop, without waiting.
    pub fn signal_shutdown(&self) {
        if let Some(handle) = &self.handle {
            handle.shutdown();
        }
    }

    /// Stops the broker and waits (at most `within`) for every shard to exit. Returns whether
    /// the shards exited in time.
    pub fn stop(&mut self, within: Duration) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        handle.shutdown();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            handle.join();
            let _ = done_tx.send(());
        });
        done_rx.recv_timeout(within).is_ok()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let joined = self.stop(Duration::from_secs(10));
        if !joined && !std::thread::panicking() {
            panic!("the broker did not stop within 10 s of shutdown()");
        }
    }
}

// ----- packets -------------------------------------------------------------------------------

/// A CONNECT for MQTT 3.1.1 with keep-alive off.
pub fn connect_packet(client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: clean,
        keep_alive: 0,
        client_id: MqttStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A will.
pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: MqttStr::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: Properties::default(),
    }
}

/// A PUBLISH.
pub fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: MqttStr::from(topic),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Encodes a packet for `version`.
pub fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet
        .encode(version, &mut out)
        .expect("test packet encodes");
    out.to_vec()
}

/// A remaining-length varint.
pub fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A frame from a first byte and a body, with the remaining length computed.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed MQTT string or binary field, bytes taken as they are (may be invalid).
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A raw PUBLISH frame whose topic bytes are not checked (for malformed-input tests).
pub fn raw_publish(flags: u8, topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | flags, &body)
}

// ----- raw client ----------------------------------------------------------------------------

/// What a raw read produced.
// Short-lived and matched on everywhere: boxing the packet would only make patterns noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Recv {
    /// A complete packet.
    Packet(Packet),
    /// The broker closed (or reset) the connection.
    Closed,
    /// Nothing within the time given.
    Timeout,
}

/// A blocking MQTT client that writes exactly the bytes it is told to and decodes what comes
/// back with the broker's own codec.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// Protocol used to encode and decode.
    pub version: ProtocolVersion,
    closed: bool,
}

impl Raw {
    /// A TCP connection, nothing sent yet.
    pub fn tcp(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("TCP connect to the broker");
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V3_1_1,
            closed: false,
        }
    }

    /// A 3.1.1 client whose socket has a small receive buffer (set before connecting, so the
    /// TCP window stays small): the broker sees it as a slow reader. Clean session.
    pub fn connect_small_buffer(addr: SocketAddr, client_id: &str, bytes: usize) -> (Raw, ConnAck) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), TIMEOUT)
            .expect("TCP connect to the broker");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V3_1_1,
            closed: false,
        };
        raw.send(Packet::Connect(Box::new(connect_packet(client_id, true))));
        match raw.recv() {
            Packet::ConnAck(connack) => {
                assert_eq!(connack.reason, ReasonCode::Success);
                (raw, connack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with MQTT 3.1.1 and asserts a successful CONNACK.
    pub fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (Raw, ConnAck) {
        Raw::connect_with(addr, connect_packet(client_id, clean))
    }

    /// Sends `connect` and asserts a successful CONNACK.
    pub fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let (raw, connack) = Raw::try_connect(addr, connect);
        assert_eq!(connack.reason, ReasonCode::Success, "CONNACK: {connack:?}");
        (raw, connack)
    }

    /// Sends `connect` and returns the CONNACK whatever its code.
    pub fn try_connect(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::tcp(addr);
        raw.version = connect.protocol;
        raw.send(Packet::Connect(Box::new(connect)));
        match raw.recv() {
            Packet::ConnAck(connack) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a packet; panics if the socket is gone.
    pub fn send(&mut self, packet: Packet) {
        let bytes = encode(&packet, self.version);
        self.send_bytes(&bytes).expect("write to the broker");
    }

    /// Writes bytes as they are.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the socket abruptly (no DISCONNECT).
    pub fn drop_socket(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The next packet, end of stream, or nothing within `within`.
    pub fn recv_for(&mut self, within: Duration) -> Recv {
        let deadline = Instant::now() + within;
        loop {
            match decode(&mut self.buf, self.version, usize::MAX) {
                Ok(Some(packet)) => return Recv::Packet(packet),
                Ok(None) => {}
                Err(error) => panic!("the broker sent bytes our codec refuses: {error}"),
            }
            if self.closed {
                return Recv::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// The next packet; fails the test on timeout or close.
    pub fn recv(&mut self) -> Packet {
        match self.recv_for(TIMEOUT) {
            Recv::Packet(packet) => packet,
            Recv::Closed => panic!("the broker closed the connection; a packet was expected"),
            Recv::Timeout => panic!("no packet within {TIMEOUT:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives (and the connection stays open) for `within`.
    pub fn expect_silence(&mut self, within: Duration) {
        match self.recv_for(within) {
            Recv::Timeout => {}
            Recv::Packet(packet) => panic!("expected nothing, got {packet:?}"),
            Recv::Closed => panic!("expected nothing, but the connection was closed"),
        }
    }

    /// Waits for the broker to close the connection; returns the packets that came first.
    pub fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + within;
        let mut packets = Vec::new();
        loop {
            match self.recv_for(deadline.saturating_duration_since(Instant::now())) {
                Recv::Packet(packet) => packets.push(packet),
                Recv::Closed => return packets,
                Recv::Timeout => panic!(
                    "the broker did not close the connection within {within:?} (received {packets:?})"
                ),
            }
        }
    }

    /// SUBSCRIBE one filter and return the SUBACK.
    pub fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_many(packet_id, &[(filter, qos)])
    }

    /// SUBSCRIBE several filters and return the SUBACK.
    pub fn subscribe_many(&mut self, packet_id: u16, filters: &[(&str, QoS)]) -> SubAck {
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|&(f, q)| (MqttStr::from(f), SubscriptionOptions::with_qos(q)))
                .collect(),
        }));
        match self.recv() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                suback
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// UNSUBSCRIBE one filter and wait for the UNSUBACK.
    pub fn unsubscribe(&mut self, packet_id: u16, filter: &str) -> UnsubAck {
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![MqttStr::from(filter)],
        }));
        match self.recv() {
            Packet::UnsubAck(unsuback) => {
                assert_eq!(unsuback.packet_id, packet_id);
                unsuback
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// PUBLISH and complete the flow for its QoS (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) {
        self.send(Packet::Publish(publish_packet(
            topic, payload, qos, retain, packet_id,
        )));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv() {
                Packet::PubAck(ack) => assert_eq!(ack.packet_id, packet_id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv() {
                    Packet::PubRec(ack) => assert_eq!(ack.packet_id, packet_id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(Ack::new(packet_id)));
                match self.recv() {
                    Packet::PubComp(ack) => assert_eq!(ack.packet_id, packet_id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// A PINGREQ answered by a PINGRESP: proves the connection works and that everything the
    /// broker had to send before it has been received (the broker answers in order).
    pub fn ping(&mut self) {
        self.send(Packet::PingReq);
        match self.recv() {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and waits for the broker to close the socket.
    pub fn disconnect(mut self) {
        self.send(Packet::Disconnect(Default::default()));
        self.expect_closed(TIMEOUT);
    }
}

/// Acknowledges a received QoS 1/2 PUBLISH the way a well-behaved client does.
pub fn ack_publish(raw: &mut Raw, publish: &Publish) {
    match publish.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => raw.send(Packet::PubAck(Ack::new(publish.packet_id))),
        QoS::ExactlyOnce => {
            raw.send(Packet::PubRec(Ack::new(publish.packet_id)));
            match raw.recv() {
                Packet::PubRel(ack) => assert_eq!(ack.packet_id, publish.packet_id),
                other => panic!("expected PUBREL, got {other:?}"),
            }
            raw.send(Packet::PubComp(Ack::new(publish.packet_id)));
        }
    }
}

/// Waits until `check` holds, polling; panics after `within`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----- rumqttc -------------------------------------------------------------------------------

/// Events of a rumqttc event loop driven by a background task, kept for the test to inspect.
/// (tokio's `sync` feature is not enabled, so a mutex-guarded queue polled every few ms.)
pub struct Events<T> {
    queue: Arc<Mutex<VecDeque<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Events<T> {
    /// Removes and maps the first event `pick` accepts, waiting up to `within`. `pick` sees
    /// every queued event in order; events it refuses stay queued.
    pub async fn take<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&T) -> Option<R>,
    ) -> Option<R> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                let found = queue
                    .iter()
                    .enumerate()
                    .find_map(|(i, e)| pick(e).map(|r| (i, r)));
                if let Some((index, result)) = found {
                    queue.remove(index);
                    return Some(result);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Removes and returns the first event `pred` accepts, waiting up to `within`.
    pub async fn take_where(
        &self,
        within: Duration,
        mut pred: impl FnMut(&T) -> bool,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                if let Some(index) = queue.iter().position(&mut pred) {
                    return queue.remove(index);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// True once the event loop has stopped (it stops at its first error).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl<T> Drop for Events<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// MQTT 3.1.1 options for a client of `addr`; keep-alive 30 s, clean session.
pub fn mqtt_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

type V4Event = Result<rumqttc::Event, rumqttc::ConnectionError>;

/// A rumqttc (MQTT 3.1.1) client whose event loop runs in a background task.
pub struct Client {
    /// The request handle.
    pub client: rumqttc::AsyncClient,
    /// Everything the event loop reported.
    pub events: Events<V4Event>,
}

impl Client {
    /// Connects with default options; asserts the CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Client {
        Client::connect_with(mqtt_options(addr, client_id)).await.0
    }

    /// Connects with `options`; asserts an accepted CONNACK and returns it.
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (Client, rumqttc::ConnAck) {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let queue: Arc<Mutex<VecDeque<V4Event>>> = Arc::default();
        let sink = Arc::clone(&queue);
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                sink.lock().unwrap().push_back(event);
                if stop {
                    break;
                }
            }
        });
        let client = Client {
            client,
            events: Events { queue, task },
        };
        let connack = client
            .incoming(TIMEOUT, |p| match p {
                rumqttc::Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await
            .expect("CONNACK");
        assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
        (client, connack)
    }

    /// The first incoming packet `pick` accepts within `within`. Fails the test if the event
    /// loop reported an error first.
    pub async fn incoming<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&rumqttc::Packet) -> Option<R>,
    ) -> Option<R> {
        self.events
            .take(within, |event| match event {
                Ok(rumqttc::Event::Incoming(packet)) => pick(packet),
                Err(error) => panic!("rumqttc connection error: {error}"),
                _ => None,
            })
            .await
    }

    /// The first outgoing event `pick` accepts within `within`.
    pub async fn outgoing<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&rumqttc::Outgoing) -> Option<R>,
    ) -> Option<R> {
        self.events
            .take(within, |event| match event {
                Ok(rumqttc::Event::Outgoing(outgoing)) => pick(outgoing),
                Err(error) => panic!("rumqttc connection error: {error}"),
                _ => None,
            })
            .await
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.incoming(TIMEOUT, |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        self.incoming(TIMEOUT, |p| {
            matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
        })
        .await
        .expect("UNSUBACK");
    }

    /// Publishes and waits until the QoS flow is complete (written for QoS 0, PUBACK for 1,
    /// PUBCOMP for 2).
    pub async fn publish(&self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        match qos {
            rumqttc::QoS::AtMostOnce => self
                .outgoing(TIMEOUT, |o| {
                    matches!(o, rumqttc::Outgoing::Publish(_)).then_some(())
                })
                .await
                .expect("QoS 0 PUBLISH written"),
            rumqttc::QoS::AtLeastOnce => self
                .incoming(TIMEOUT, |p| {
                    matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                })
                .await
                .expect("PUBACK"),
            rumqttc::QoS::ExactlyOnce => self
                .incoming(TIMEOUT, |p| {
                    matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                })
                .await
                .expect("PUBCOMP"),
        }
    }

    /// The next PUBLISH received; fails the test after [`TIMEOUT`].
    pub async fn recv_publish(&self) -> rumqttc::Publish {
        self.try_recv_publish(TIMEOUT).await.expect("a PUBLISH")
    }

    /// The next PUBLISH received within `within`.
    pub async fn try_recv_publish(&self, within: Duration) -> Option<rumqttc::Publish> {
        self.incoming(within, |p| match p {
            rumqttc::Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts that no PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&self, within: Duration) {
        if let Some(publish) = self.try_recv_publish(within).await {
            panic!("expected no PUBLISH, got {publish:?}");
        }
    }

    /// Waits for the event loop to report that the connection is gone; returns the error.
    pub async fn wait_disconnected(&self, within: Duration) -> rumqttc::ConnectionError {
        match self.events.take_where(within, Result::is_err).await {
            Some(Err(error)) => error,
            _ => panic!("the connection was not closed within {within:?}"),
        }
    }

    /// Sends DISCONNECT and waits until it is written.
    pub async fn disconnect(&self) {
        self.client.disconnect().await.unwrap();
        let _ = self
            .events
            .take(TIMEOUT, |event| match event {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Some(()),
                Err(_) => Some(()),
                _ => None,
            })
            .await;
    }
}

type V5Event = Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

/// A rumqttc MQTT 5.0 client whose event loop runs in a background task.
pub struct ClientV5 {
    /// The request handle.
    pub client: rumqttc::v5::AsyncClient,
    /// Everything the event loop reported.
    pub events: Events<V5Event>,
}

impl ClientV5 {
    /// Connects (clean start, keep-alive 30 s); asserts an accepted CONNACK and returns it.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (ClientV5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let mut options =
            rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let queue: Arc<Mutex<VecDeque<V5Event>>> = Arc::default();
        let sink = Arc::clone(&queue);
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                sink.lock().unwrap().push_back(event);
                if stop {
                    break;
                }
            }
        });
        let client = ClientV5 {
            client,
            events: Events { queue, task },
        };
        let connack = client
            .incoming(TIMEOUT, |p| match p {
                rumqttc::v5::mqttbytes::v5::Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await
            .expect("CONNACK");
        assert_eq!(
            connack.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
        );
        (client, connack)
    }

    /// The first incoming packet `pick` accepts within `within`; fails on a connection error.
    pub async fn incoming<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&rumqttc::v5::mqttbytes::v5::Packet) -> Option<R>,
    ) -> Option<R> {
        self.events
            .take(within, |event| match event {
                Ok(rumqttc::v5::Event::Incoming(packet)) => pick(packet),
                Err(error) => panic!("rumqttc v5 connection error: {error}"),
                _ => None,
            })
            .await
    }

    /// The first connection error within `within`.
    pub async fn wait_disconnected(&self, within: Duration) -> rumqttc::v5::ConnectionError {
        match self.events.take_where(within, Result::is_err).await {
            Some(Err(error)) => error,
            _ => panic!("the connection was not closed within {within:?}"),
        }
    }
}

// ----- cross-shard barrier -------------------------------------------------------------------

/// Waits for the broker's cross-shard replicas to catch up.
///
/// Shards replicate subscriptions (interest) and retained messages asynchronously, one FIFO
/// queue per pair of shards. `barrier(from, to)` makes shard `from` send a fresh interest
/// change to shard `to` and waits until `to` has applied it (a probe published on `to` reaches
/// a subscriber on `from`): everything `from` sent to `to` before the call has then been
/// applied too. Probes use `$sync/<n>` topics, which `#` and `+` filters never match.
///
/// Tests that do not wait show the replication lag (see the `*_right_after_*` tests).
pub struct Sync {
    observers: Vec<Raw>,
    probes: Vec<Raw>,
    next: u16,
}

impl Sync {
    /// One observer and one probe publisher on each shard.
    pub fn new(broker: &Broker) -> Sync {
        static INSTANCES: AtomicUsize = AtomicUsize::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let mut observers = Vec::new();
        let mut probes = Vec::new();
        for (i, addr) in broker.shard_addrs.iter().enumerate() {
            observers.push(Raw::connect(*addr, &format!("sync-{n}-observer-{i}"), true).0);
            probes.push(Raw::connect(*addr, &format!("sync-{n}-probe-{i}"), true).0);
        }
        Sync {
            observers,
            probes,
            next: 0,
        }
    }

    /// Everything shard `from` sent to shard `to` before this call has been applied by `to`.
    pub fn barrier(&mut self, from: usize, to: usize) {
        self.next = self.next.wrapping_add(1).max(1);
        let id = self.next;
        let topic = format!("$sync/{id}");
        let observer = &mut self.observers[from];
        observer.subscribe(id, &topic, QoS::AtMostOnce);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.probes[to].send(Packet::Publish(publish_packet(
                &topic,
                b"",
                QoS::AtMostOnce,
                false,
                0,
            )));
            match observer.recv_for(Duration::from_millis(5)) {
                Recv::Packet(Packet::Publish(p)) if p.topic.as_str() == topic => break,
                Recv::Timeout => {}
                other => panic!("sync observer: unexpected {other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "shard {to} never learnt of shard {from}'s subscription to {topic}"
            );
        }
        observer.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: vec![MqttStr::from(topic.as_str())],
        }));
        loop {
            match observer.recv() {
                Packet::UnsubAck(_) => break,
                Packet::Publish(_) => {}
                other => panic!("sync observer: unexpected {other:?}"),
            }
        }
    }

    /// Both directions: every replica on every shard is up to date.
    pub fn settle(&mut self) {
        for from in 0..self.observers.len() {
            for to in 0..self.observers.len() {
                if from != to {
                    self.barrier(from, to);
                }
            }
        }
    }
}

// ----- rumqttc MQTT 5.0 conveniences ---------------------------------------------------------

/// Sets the session expiry interval in `options`' CONNECT properties (keeping the others).
pub fn v5_session_expiry(options: &mut rumqttc::v5::MqttOptions, secs: u32) {
    let mut properties = options.connect_properties().unwrap_or_default();
    properties.session_expiry_interval = Some(secs);
    options.set_connect_properties(properties);
}

impl ClientV5 {
    /// The first outgoing event `pick` accepts within `within`; fails on a connection error.
    pub async fn outgoing<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&rumqttc::Outgoing) -> Option<R>,
    ) -> Option<R> {
        self.events
            .take(within, |event| match event {
                Ok(rumqttc::v5::Event::Outgoing(outgoing)) => pick(outgoing),
                Err(error) => panic!("rumqttc v5 connection error: {error}"),
                _ => None,
            })
            .await
    }

    /// One SUBSCRIBE with `filters` (and `properties`); waits for the SUBACK and returns its
    /// reason codes.
    pub async fn subscribe_filters(
        &self,
        filters: Vec<rumqttc::v5::mqttbytes::v5::Filter>,
        properties: Option<rumqttc::v5::mqttbytes::v5::SubscribeProperties>,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        match properties {
            Some(properties) => self
                .client
                .subscribe_many_with_properties(filters, properties)
                .await
                .unwrap(),
            None => self.client.subscribe_many(filters).await.unwrap(),
        }
        self.incoming(TIMEOUT, |p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    /// Subscribes to one filter with default options and waits for the SUBACK.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.subscribe_filters(
            vec![rumqttc::v5::mqttbytes::v5::Filter::new(filter, qos)],
            None,
        )
        .await
    }

    /// Publishes (with `properties`) and waits until the QoS flow is complete. Returns the
    /// PUBACK reason for QoS 1.
    pub async fn publish_with(
        &self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        properties: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) -> Option<rumqttc::v5::mqttbytes::v5::PubAckReason> {
        use rumqttc::v5::mqttbytes::v5::Packet as P;
        use rumqttc::v5::mqttbytes::QoS as Q;
        let payload = payload.to_vec();
        match properties {
            Some(properties) => self
                .client
                .publish_with_properties(topic, qos, retain, payload, properties)
                .await
                .unwrap(),
            None => self
                .client
                .publish(topic, qos, retain, payload)
                .await
                .unwrap(),
        }
        match qos {
            Q::AtMostOnce => {
                self.outgoing(TIMEOUT, |o| {
                    matches!(o, rumqttc::Outgoing::Publish(_)).then_some(())
                })
                .await
                .expect("QoS 0 PUBLISH written");
                None
            }
            Q::AtLeastOnce => Some(
                self.incoming(TIMEOUT, |p| match p {
                    P::PubAck(ack) => Some(ack.reason),
                    _ => None,
                })
                .await
                .expect("PUBACK"),
            ),
            Q::ExactlyOnce => {
                self.incoming(TIMEOUT, |p| matches!(p, P::PubComp(_)).then_some(()))
                    .await
                    .expect("PUBCOMP");
                None
            }
        }
    }

    /// Publishes without properties; see [`ClientV5::publish_with`].
    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
    ) -> Option<rumqttc::v5::mqttbytes::v5::PubAckReason> {
        self.publish_with(topic, qos, retain, payload, None).await
    }

    /// The next PUBLISH received within `within`.
    pub async fn try_recv_publish(
        &self,
        within: Duration,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        self.incoming(within, |p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH received; fails the test after [`TIMEOUT`].
    pub async fn recv_publish(&self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.try_recv_publish(TIMEOUT).await.expect("a PUBLISH")
    }

    /// Asserts that no PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&self, within: Duration) {
        if let Some(publish) = self.try_recv_publish(within).await {
            panic!("expected no PUBLISH, got {publish:?}");
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close the connection.
    pub async fn disconnect(&self) {
        self.client.disconnect().await.unwrap();
        let _ = self.events.take_where(TIMEOUT, Result::is_err).await;
    }
}

// ----- shard health, storms and refusals -----------------------------------------------------

impl Broker {
    /// True once a shard thread has died (a panic): the broker is only half alive.
    pub fn failed(&self) -> bool {
        self.handle.as_ref().is_some_and(BrokerHandle::failed)
    }
}

/// A CONNECT for `protocol` with keep-alive `keep_alive`: persistent (clean session = 0 in
/// 3.x; clean start = 0 and session expiry `v5_expiry` in 5.0) or clean.
pub fn connect_packet_for(
    protocol: ProtocolVersion,
    client_id: &str,
    persistent: bool,
    keep_alive: u16,
    v5_expiry: u32,
) -> Connect {
    let mut connect = connect_packet(client_id, !persistent);
    connect.protocol = protocol;
    connect.keep_alive = keep_alive;
    if protocol.is_v5() && persistent {
        connect.properties.session_expiry_interval = Some(v5_expiry);
    }
    connect
}

impl Raw {
    /// A TCP connection, nothing sent yet; an error instead of a panic (for stress tests,
    /// where refusals and resets are expected).
    pub fn try_tcp(addr: SocketAddr, within: Duration) -> std::io::Result<Raw> {
        let stream = TcpStream::connect_timeout(&addr, within)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Raw {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V3_1_1,
            closed: false,
        })
    }

    /// Encodes and writes a packet; an error instead of a panic if the socket is gone.
    pub fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let bytes = encode(packet, self.version);
        self.send_bytes(&bytes)
    }

    /// Closes the socket with a TCP reset (SO_LINGER 0, then close): the broker sees
    /// ECONNRESET rather than an orderly end of stream.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }

    /// Closes the socket without shutdown(2): a plain close(2), FIN after what was written.
    pub fn close(self) {
        drop(self.stream);
    }
}

// ----- metrics -------------------------------------------------------------------------------

impl Broker {
    /// The broker's counters for other threads (what the metrics endpoint serves).
    pub fn stats_source(&self) -> shardmq::broker::StatsSource {
        self.handle
            .as_ref()
            .expect("the broker is running")
            .stats_source()
    }
}

impl Broker {
    /// Each shard's counters as of its last tick.
    pub fn stats(&self) -> Vec<shardmq::broker::ShardStats> {
        self.handle
            .as_ref()
            .map(BrokerHandle::stats)
            .unwrap_or_default()
    }
}

// ----- admin ---------------------------------------------------------------------------------

impl Broker {
    /// The administrative interface (what the `/admin` endpoints use).
    pub fn admin(&self) -> shardmq::broker::admin::Admin {
        self.handle.as_ref().expect("the broker is running").admin()
    }
}

impl Raw {
    /// The client's own address (what the broker sees as its peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }
}
