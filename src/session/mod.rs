//! The per-client session state machine: sans-I/O, no clocks, no sockets.
//!
//! A [`Session`] owns everything MQTT says outlives a network connection when clean session is
//! off: subscriptions, outgoing QoS 1/2 messages in flight, messages queued beyond the in-flight
//! window (or while offline) and inbound QoS 2 packet identifiers awaiting PUBREL. The shard
//! runtime feeds it packets and messages and gives it an output buffer; it writes the bytes to
//! send. Everything in it is plain `Send` data, so a session can move between shards on takeover
//! and, later, be written to disk.

mod acks;
mod lifecycle;
mod message;
mod subscriptions;

pub use lifecycle::WillTiming;
pub use message::{EncodeCache, Message, MessageProperties};
pub use subscriptions::{Subscription, Subscriptions};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{
    Ack, EncodedPublish, LastWill, MqttStr, OutputSink, Packet, ProtocolVersion, QoS, SHARE_MIN,
};

/// Limits that shape a session's queues (from the broker configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Outgoing QoS 1/2 messages awaiting acknowledgement before further ones are queued.
    pub max_inflight: u16,
    /// Messages queued beyond the in-flight window or while offline; 0 = unlimited.
    pub max_queued_messages: usize,
    /// Payload bytes queued; 0 = unlimited.
    pub max_queued_bytes: usize,
}

/// The broker's defaults (`Config::default()` agrees; a test in the broker checks it).
impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 512,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
        }
    }
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    AwaitPubRec,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitPubComp,
}

/// An outgoing message awaiting acknowledgement.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier it was sent with.
    pub packet_id: u16,
    /// The message.
    pub message: Arc<Message>,
    /// QoS it was sent at (the lower of published and granted).
    pub qos: QoS,
    /// Retain flag it was sent with.
    pub retain: bool,
    /// Subscription identifiers it was sent with (MQTT 5.0).
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/...` filter) it came through, if any.
    pub group: Option<MqttStr>,
    /// Acknowledgement state.
    pub state: InflightState,
    /// The id its body has in the journal (0: not recorded).
    pub store_id: u64,
}

/// A message waiting for room in the in-flight window (or for the client to come back).
#[derive(Debug, Clone)]
pub struct Queued {
    /// The message.
    pub message: Arc<Message>,
    /// QoS to send it at.
    pub qos: QoS,
    /// Retain flag to send it with.
    pub retain: bool,
    /// Subscription identifiers to send it with (MQTT 5.0).
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/...` filter) it came through, if any.
    pub group: Option<MqttStr>,
    /// The id its body has in the journal (0: not recorded).
    pub store_id: u64,
}

/// What became of a message handed to [`Session::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Encoded into the output buffer.
    Sent,
    /// Queued (window full or client offline).
    Queued,
    /// Dropped: QoS 0 to an offline or congested client, a queue at its bound, an expired
    /// message, or one larger than the client accepts.
    Dropped,
}

/// A change of a session's outgoing messages that a durable session records (the journal's
/// view of the queue and the in-flight window). Messages carry the id the recorder gave
/// them when they entered the session (`store_id`).
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Queued for later (window full, client offline). The recorder returns its store id.
    Queued {
        /// The message.
        message: &'a Arc<Message>,
        /// QoS of the delivery.
        qos: QoS,
        /// Retain flag of the delivery.
        retain: bool,
        /// Subscription identifiers of the delivery.
        subscription_ids: &'a [u32],
    },
    /// Sent at once with `packet_id`, never queued. The recorder returns its store id.
    SentNew {
        /// The message.
        message: &'a Arc<Message>,
        /// Packet identifier.
        packet_id: u16,
        /// QoS of the delivery.
        qos: QoS,
        /// Retain flag of the delivery.
        retain: bool,
        /// Subscription identifiers of the delivery.
        subscription_ids: &'a [u32],
    },
    /// The queued message `store_id` was sent with `packet_id`.
    SentQueued {
        /// Its store id.
        store_id: u64,
        /// Packet identifier.
        packet_id: u16,
        /// QoS of the delivery.
        qos: QoS,
        /// Retain flag of the delivery.
        retain: bool,
        /// Subscription identifiers of the delivery.
        subscription_ids: &'a [u32],
    },
    /// The in-flight `packet_id` was resent with DUP set.
    Dup(u16),
    /// PUBREC received for `packet_id`: PUBREL due.
    PubRec(u16),
    /// The in-flight `packet_id` is done.
    Acked(u16),
    /// The queued message `store_id` was dropped unsent (expired, too large).
    Dequeued(u64),
}

/// What a session tells its owner as it works: each PUBLISH it writes (for counters) and, for
/// durable sessions, each change of its queue and window (for the journal).
pub trait SessionEvents {
    /// A PUBLISH of `message` went into the output at `qos`.
    fn sent(&mut self, message: &Message, qos: QoS);
    /// A change to the session of `client_id` to record; returns the store id of a message
    /// entering the session (0 when nothing is recorded). The session passes its client id
    /// (a borrow): a recorder need not hold a copy of its own while the session works.
    fn change(&mut self, _client_id: &str, _change: Change<'_>) -> u64 {
        0
    }
}

impl<F: FnMut(&Message, QoS)> SessionEvents for F {
    fn sent(&mut self, message: &Message, qos: QoS) {
        self(message, qos)
    }
}

/// A broken acknowledgement rule, reported to the runtime which closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// PUBREC for a QoS 1 message or PUBCOMP before PUBREC and the like.
    #[error("acknowledgement does not match the message's QoS flow")]
    UnexpectedAck,
}

/// What the client of the current connection declared it accepts (MQTT 5.0 CONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest packet it accepts; larger messages are not sent to it.
    pub max_packet_size: u32,
    /// Highest topic alias it accepts; 0 = no aliases.
    pub topic_alias_max: u16,
    /// Most unacknowledged QoS 1/2 PUBLISHes it accepts at once.
    pub receive_maximum: u16,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_packet_size: u32::MAX,
            topic_alias_max: 0,
            receive_maximum: u16::MAX,
        }
    }
}

/// The part of a session that only exists while messages flow.
#[derive(Debug, Default)]
struct Traffic {
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    incoming_qos2: Vec<u16>,
    /// Inbound QoS 2 ids whose acceptance is not journaled yet (a durable session's: its
    /// deliveries on other shards are not known to be durable). A snapshot leaves them out.
    uncommitted_inbound: Vec<u16>,
    /// How many more packet ids may be handed out without scanning the window for a clash
    /// (0: scan). Ids go out in sequence and the window keeps them in that order, so after the
    /// window was seen empty the next 65,534 ids cannot clash with one in flight; the scan
    /// (up to `max_inflight` entries, per delivery) is only needed past that.
    unscanned_ids: u16,
}

impl Traffic {
    fn is_empty(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.incoming_qos2.is_empty()
            && self.uncommitted_inbound.is_empty()
    }
}

/// What an idle session's traffic reads as.
static NO_TRAFFIC: Traffic = Traffic {
    inflight: VecDeque::new(),
    queue: VecDeque::new(),
    queued_bytes: 0,
    incoming_qos2: Vec::new(),
    uncommitted_inbound: Vec::new(),
    unscanned_ids: 0,
};

/// Session state for one client id.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: MqttStr,
    /// The user name the session's client connected with (the owner of the client id).
    pub username: Option<Box<str>>,
    /// Protocol of the current (or last) connection.
    pub protocol: ProtocolVersion,
    /// Clean session: state ends with the connection.
    pub clean: bool,
    /// Seconds the session outlives its connection (`None`: forever). MQTT 5.0 session expiry
    /// interval, or the broker's setting for MQTT 3.x persistent sessions.
    pub expiry: Option<u32>,
    /// Subscriptions: filter (as sent, including `$share/...`) to options and identifier.
    pub subscriptions: Subscriptions,
    /// The will of the current connection (boxed: most clients have none, and an idle
    /// connection's footprint matters).
    pub will: Option<Box<LastWill>>,
    // Shared with the shard (the same for every session it creates): 8 bytes, not 24.
    limits: Arc<SessionLimits>,
    peer: PeerLimits,
    // Boxed on purpose: 8 bytes for the many clients without aliases instead of a 48-byte map.
    #[allow(clippy::box_collection)]
    aliases: Option<Box<HashMap<MqttStr, u16>>>,
    next_packet_id: u16,
    /// In-flight window, queue and inbound QoS 2 ids: allocated with the first message and
    /// freed when all of it is empty again, so an idle session pays one pointer for them.
    traffic: Option<Box<Traffic>>,
    // Per-session drop counters are u32 (wrapping; the shard sums differences into u64
    // totals): they are in every session, and an idle session's footprint matters.
    /// Messages dropped because a queue bound was reached (counted, as documented).
    pub dropped_queue_full: u32,
    /// QoS 0 messages dropped because the client was offline or congested.
    pub dropped_qos0: u32,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: u32,
    /// Messages not sent because they exceed the client's maximum packet size.
    pub dropped_too_large: u32,
}

impl Session {
    /// A new, empty session.
    pub fn new(
        client_id: MqttStr,
        protocol: ProtocolVersion,
        clean: bool,
        limits: impl Into<Arc<SessionLimits>>,
    ) -> Self {
        Session {
            client_id,
            username: None,
            protocol,
            clean,
            expiry: None,
            subscriptions: Subscriptions::new(),
            will: None,
            limits: limits.into(),
            peer: PeerLimits::default(),
            aliases: None,
            next_packet_id: 1,
            traffic: None,
            dropped_queue_full: 0,
            dropped_qos0: 0,
            dropped_expired: 0,
            dropped_too_large: 0,
        }
    }

    fn traffic(&self) -> &Traffic {
        self.traffic.as_deref().unwrap_or(&NO_TRAFFIC)
    }

    fn traffic_mut(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_with(Default::default)
    }

    /// Frees the traffic state once nothing is in flight, queued or awaiting release.
    fn shed_idle_traffic(&mut self) {
        if self.traffic.as_ref().is_some_and(|t| t.is_empty()) {
            self.traffic = None;
        }
    }

    /// Messages awaiting acknowledgement.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.traffic().inflight.iter()
    }

    /// Every message the session holds for its client: in flight first, then queued.
    pub fn pending_messages(&self) -> impl Iterator<Item = &Arc<Message>> {
        let traffic = self.traffic();
        traffic
            .inflight
            .iter()
            .map(|i| &i.message)
            .chain(traffic.queue.iter().map(|q| &q.message))
    }

    /// The messages that reached this session through a shared subscription and were not
    /// acknowledged (or not yet sent): when a member leaves, they go to another member
    /// (MQTT 5.0 §4.8.2). A QoS 2 message already PUBREC'd counts as received.
    pub fn take_shared_undelivered(&mut self) -> Vec<(MqttStr, Arc<Message>)> {
        let mut taken = Vec::new();
        let Some(traffic) = self.traffic.as_mut() else {
            return taken;
        };
        traffic.inflight.retain(|m| match (&m.group, m.state) {
            (Some(group), InflightState::AwaitPubAck | InflightState::AwaitPubRec) => {
                taken.push((group.clone(), Arc::clone(&m.message)));
                false
            }
            _ => true,
        });
        let mut queued_bytes = 0;
        traffic.queue.retain(|q| match &q.group {
            Some(group) => {
                taken.push((group.clone(), Arc::clone(&q.message)));
                false
            }
            None => {
                queued_bytes += q.message.payload.len();
                true
            }
        });
        traffic.queued_bytes = queued_bytes;
        self.shed_idle_traffic();
        taken
    }

    /// Number of queued messages.
    pub fn queued_len(&self) -> usize {
        self.traffic().queue.len()
    }

    /// Payload bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.traffic().queued_bytes
    }

    /// Replaces the limits (a resumed session takes the limits in force now).
    pub fn set_limits(&mut self, limits: impl Into<Arc<SessionLimits>>) {
        self.limits = limits.into();
    }

    /// A new connection takes over the session: its declared limits apply and topic aliases
    /// start afresh (they belong to a connection, not a session).
    pub fn attach(&mut self, peer: PeerLimits) {
        self.peer = peer;
        self.aliases = None;
    }

    fn window_open(&self) -> bool {
        let window = self
            .limits
            .max_inflight
            .min(self.peer.receive_maximum)
            .max(1);
        self.traffic().inflight.len() < usize::from(window)
    }

    fn allocate_packet_id(&mut self) -> u16 {
        let traffic = self.traffic.get_or_insert_with(Box::default);
        if traffic.inflight.is_empty() {
            traffic.unscanned_ids = u16::MAX - 1;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if traffic.unscanned_ids > 0 {
                traffic.unscanned_ids -= 1;
                return id;
            }
            if !traffic.inflight.iter().any(|m| m.packet_id == id) {
                return id;
            }
        }
    }

    /// Encodes one PUBLISH for this client: the shared per-layout encoding when nothing about
    /// it is specific to this client, otherwise a tailored one (subscription identifiers, topic
    /// alias). Returns false, writing nothing, when it exceeds the client's maximum packet size.
    #[allow(clippy::too_many_arguments)]
    fn write_publish(
        &mut self,
        out: &mut impl OutputSink,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        packet_id: u16,
        dup: bool,
        cache: Option<&mut EncodeCache>,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> bool {
        let v5 = self.protocol.is_v5();
        let tailored = v5 && (!subscription_ids.is_empty() || self.peer.topic_alias_max > 0);
        if let (false, Some(cache)) = (tailored, cache) {
            let Some(encoded) = cache.get(message, self.protocol, qos, retain, now) else {
                return false;
            };
            if encoded.len() > self.peer.max_packet_size as usize {
                return false;
            }
            encoded.write_into(out, packet_id, dup);
            on_sent.sent(message, qos);
            return true;
        }
        let mut publish = message.to_publish(qos, retain, now);
        publish.packet_id = if qos == QoS::AtMostOnce { 0 } else { packet_id };
        publish.dup = dup && qos != QoS::AtMostOnce;
        if v5 && !subscription_ids.is_empty() {
            publish.properties.subscription_identifiers = subscription_ids.to_vec();
        }
        let full_len = 5 + publish.body_len(self.protocol);
        let mut new_alias = None;
        if v5 && self.peer.topic_alias_max > 0 && !dup {
            let aliases = self.aliases.get_or_insert_with(Default::default);
            match aliases.get(&publish.topic) {
                Some(&alias) => {
                    publish.properties.topic_alias = Some(alias);
                    publish.topic = MqttStr::default();
                }
                None if aliases.len() < usize::from(self.peer.topic_alias_max) => {
                    let alias = aliases.len() as u16 + 1;
                    publish.properties.topic_alias = Some(alias);
                    new_alias = Some(alias);
                }
                None => {}
            }
        }
        if full_len.min(5 + publish.body_len(self.protocol)) > self.peer.max_packet_size as usize {
            return false;
        }
        if let Some(alias) = new_alias {
            if let Some(aliases) = self.aliases.as_mut() {
                aliases.insert(message.topic.clone(), alias);
            }
        }
        let written = if publish.payload.len() >= SHARE_MIN {
            // Encoded head, then the payload by reference where the output can hold one (a
            // message sent from the queue or the window, or tailored for this client).
            let (packet_id, dup) = (publish.packet_id, publish.dup);
            match EncodedPublish::new(&publish, self.protocol, qos, publish.retain) {
                Ok(encoded) => {
                    encoded.write_into(out, packet_id, dup);
                    true
                }
                Err(_) => false,
            }
        } else {
            Packet::Publish(publish)
                .encode(self.protocol, out.bytes())
                .is_ok()
        };
        if written {
            on_sent.sent(message, qos);
        }
        written
    }

    /// Hands a message to the session at `qos` (already the lower of published and granted).
    ///
    /// `out` is the connection's output buffer, `None` when the client is offline or its buffer
    /// is over the slow-consumer limit. QoS 0 is sent or dropped; QoS 1/2 is sent when the window
    /// has room, otherwise queued up to the limits. Expired messages and messages larger than
    /// the client accepts are dropped, never sent.
    ///
    /// `on_sent` is told of each PUBLISH written into `out` (here and in every other method that
    /// writes them): the message and the QoS it went out at, for the broker's counters.
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&MqttStr>,
        out: Option<&mut impl OutputSink>,
        cache: &mut EncodeCache,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> Delivery {
        if message.is_expired(now) {
            self.dropped_expired = self.dropped_expired.wrapping_add(1);
            return Delivery::Dropped;
        }
        if qos == QoS::AtMostOnce {
            return match out {
                Some(out) => {
                    if self.write_publish(
                        out,
                        message,
                        qos,
                        retain,
                        subscription_ids,
                        0,
                        false,
                        Some(cache),
                        now,
                        on_sent,
                    ) {
                        Delivery::Sent
                    } else {
                        self.dropped_too_large = self.dropped_too_large.wrapping_add(1);
                        Delivery::Dropped
                    }
                }
                None => {
                    self.dropped_qos0 = self.dropped_qos0.wrapping_add(1);
                    Delivery::Dropped
                }
            };
        }
        match out {
            Some(out) if self.window_open() && self.traffic().queue.is_empty() => {
                let packet_id = self.allocate_packet_id();
                if !self.write_publish(
                    out,
                    message,
                    qos,
                    retain,
                    subscription_ids,
                    packet_id,
                    false,
                    Some(cache),
                    now,
                    on_sent,
                ) {
                    self.dropped_too_large = self.dropped_too_large.wrapping_add(1);
                    // Allocating the id may have created the traffic state.
                    self.shed_idle_traffic();
                    return Delivery::Dropped;
                }
                let store_id = on_sent.change(
                    &self.client_id,
                    Change::SentNew {
                        message,
                        packet_id,
                        qos,
                        retain,
                        subscription_ids,
                    },
                );
                self.traffic_mut().inflight.push_back(Inflight {
                    packet_id,
                    message: Arc::clone(message),
                    qos,
                    retain,
                    subscription_ids: subscription_ids.to_vec(),
                    group: group.cloned(),
                    state: if qos == QoS::AtLeastOnce {
                        InflightState::AwaitPubAck
                    } else {
                        InflightState::AwaitPubRec
                    },
                    store_id,
                });
                Delivery::Sent
            }
            _ => {
                let delivery = self.enqueue(Queued {
                    message: Arc::clone(message),
                    qos,
                    retain,
                    subscription_ids: subscription_ids.to_vec(),
                    group: group.cloned(),
                    store_id: 0,
                });
                if delivery == Delivery::Queued {
                    let store_id = on_sent.change(
                        &self.client_id,
                        Change::Queued {
                            message,
                            qos,
                            retain,
                            subscription_ids,
                        },
                    );
                    if let Some(last) = self.traffic_mut().queue.back_mut() {
                        last.store_id = store_id;
                    }
                }
                delivery
            }
        }
    }

    fn enqueue(&mut self, queued: Queued) -> Delivery {
        let size = queued.message.payload.len();
        let traffic = self.traffic();
        let full_count = self.limits.max_queued_messages != 0
            && traffic.queue.len() >= self.limits.max_queued_messages;
        let full_bytes = self.limits.max_queued_bytes != 0
            && traffic.queued_bytes + size > self.limits.max_queued_bytes;
        if full_count || full_bytes {
            // Newest is dropped, as Mosquitto does: what was queued first keeps its place.
            self.dropped_queue_full = self.dropped_queue_full.wrapping_add(1);
            return Delivery::Dropped;
        }
        let traffic = self.traffic_mut();
        traffic.queued_bytes += size;
        traffic.queue.push_back(queued);
        Delivery::Queued
    }

    /// Moves queued messages into the window while it has room. Returns how many were sent.
    pub fn fill_window(
        &mut self,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> usize {
        let mut sent = 0;
        while self.window_open() {
            let Some(traffic) = self.traffic.as_mut() else {
                break;
            };
            let Some(queued) = traffic.queue.pop_front() else {
                break;
            };
            traffic.queued_bytes -= queued.message.payload.len();
            if queued.message.is_expired(now) {
                self.dropped_expired = self.dropped_expired.wrapping_add(1);
                on_sent.change(&self.client_id, Change::Dequeued(queued.store_id));
                continue;
            }
            let packet_id = if queued.qos == QoS::AtMostOnce {
                0
            } else {
                self.allocate_packet_id()
            };
            let ids = queued.subscription_ids;
            if !self.write_publish(
                out,
                &queued.message,
                queued.qos,
                queued.retain,
                &ids,
                packet_id,
                false,
                None,
                now,
                on_sent,
            ) {
                self.dropped_too_large = self.dropped_too_large.wrapping_add(1);
                on_sent.change(&self.client_id, Change::Dequeued(queued.store_id));
                continue;
            }
            sent += 1;
            if queued.qos == QoS::AtMostOnce {
                on_sent.change(&self.client_id, Change::Dequeued(queued.store_id));
            } else {
                on_sent.change(
                    &self.client_id,
                    Change::SentQueued {
                        store_id: queued.store_id,
                        packet_id,
                        qos: queued.qos,
                        retain: queued.retain,
                        subscription_ids: &ids,
                    },
                );
                self.traffic_mut().inflight.push_back(Inflight {
                    packet_id,
                    state: if queued.qos == QoS::AtLeastOnce {
                        InflightState::AwaitPubAck
                    } else {
                        InflightState::AwaitPubRec
                    },
                    message: queued.message,
                    qos: queued.qos,
                    retain: queued.retain,
                    subscription_ids: ids,
                    group: queued.group,
                    store_id: queued.store_id,
                });
            }
        }
        self.shed_idle_traffic();
        sent
    }

    /// Reports the whole outgoing state to `events` as changes (a new owner's or a snapshot's
    /// records), in window-then-queue order, and keeps the store ids it hands out.
    pub fn record_image(&mut self, events: &mut impl SessionEvents) {
        let Some(traffic) = self.traffic.as_mut() else {
            return;
        };
        for entry in traffic.inflight.iter_mut() {
            if entry.state == InflightState::AwaitPubComp {
                events.change(&self.client_id, Change::PubRec(entry.packet_id));
                continue;
            }
            entry.store_id = events.change(
                &self.client_id,
                Change::SentNew {
                    message: &entry.message,
                    packet_id: entry.packet_id,
                    qos: entry.qos,
                    retain: entry.retain,
                    subscription_ids: &entry.subscription_ids,
                },
            );
            // Sent at least once already: any resend carries DUP.
            events.change(&self.client_id, Change::Dup(entry.packet_id));
        }
        for queued in traffic.queue.iter_mut() {
            queued.store_id = events.change(
                &self.client_id,
                Change::Queued {
                    message: &queued.message,
                    qos: queued.qos,
                    retain: queued.retain,
                    subscription_ids: &queued.subscription_ids,
                },
            );
        }
    }

    /// Recovery: puts back an in-flight message (resent with DUP when the client returns).
    pub fn restore_inflight(&mut self, inflight: Inflight) {
        let traffic = self.traffic_mut();
        // An id from elsewhere: the next ones are checked against the window.
        traffic.unscanned_ids = 0;
        traffic.inflight.push_back(inflight);
    }

    /// Recovery: puts back a queued message (outside the queue bounds: it was accepted).
    pub fn restore_queued(&mut self, queued: Queued) {
        let traffic = self.traffic_mut();
        traffic.queued_bytes += queued.message.payload.len();
        traffic.queue.push_back(queued);
    }

    /// Recovery: an inbound QoS 2 packet id still awaiting its PUBREL.
    pub fn restore_incoming_qos2(&mut self, packet_id: u16) {
        self.on_incoming_qos2(packet_id);
    }

    /// Inbound QoS 2 packet identifiers awaiting PUBREL whose acceptance is journaled (see
    /// [`Session::mark_inbound_uncommitted`]).
    pub fn committed_incoming_qos2(&self) -> impl Iterator<Item = u16> + '_ {
        let traffic = self.traffic();
        traffic
            .incoming_qos2
            .iter()
            .copied()
            .filter(|id| !traffic.uncommitted_inbound.contains(id))
    }

    /// Whether inbound QoS 2 `packet_id` was accepted but its acceptance is not journaled.
    pub fn is_incoming_qos2_uncommitted(&self, packet_id: u16) -> bool {
        self.traffic().uncommitted_inbound.contains(&packet_id)
    }

    /// Inbound QoS 2 packet identifiers accepted but not journaled yet.
    pub fn uncommitted_incoming_qos2(&self) -> Vec<u16> {
        self.traffic().uncommitted_inbound.clone()
    }

    /// The inbound QoS 2 `packet_id` was accepted, but its acceptance is not journaled yet.
    pub fn mark_inbound_uncommitted(&mut self, packet_id: u16) {
        let traffic = self.traffic_mut();
        if !traffic.uncommitted_inbound.contains(&packet_id) {
            traffic.uncommitted_inbound.push(packet_id);
        }
    }

    /// The acceptance of inbound QoS 2 `packet_id` is journaled.
    pub fn commit_inbound(&mut self, packet_id: u16) {
        if let Some(traffic) = self.traffic.as_mut() {
            traffic.uncommitted_inbound.retain(|&id| id != packet_id);
        }
        self.shed_idle_traffic();
    }

    /// On a resumed session: resend every unacknowledged PUBLISH with DUP set and every PUBREL,
    /// in their original order (MQTT 3.1.1 §4.4), then fill the window from the queue.
    pub fn resume(
        &mut self,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) {
        let inflight = match self.traffic.as_mut() {
            Some(traffic) => std::mem::take(&mut traffic.inflight),
            None => VecDeque::new(),
        };
        for entry in &inflight {
            match entry.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    // Already promised to the client: sent even if it has expired since.
                    let ids = entry.subscription_ids.clone();
                    self.write_publish(
                        out,
                        &entry.message,
                        entry.qos,
                        entry.retain,
                        &ids,
                        entry.packet_id,
                        true,
                        None,
                        now,
                        on_sent,
                    );
                    on_sent.change(&self.client_id, Change::Dup(entry.packet_id));
                }
                InflightState::AwaitPubComp => {
                    let _ = Packet::PubRel(Ack::new(entry.packet_id))
                        .encode(self.protocol, out.bytes());
                }
            }
        }
        if !inflight.is_empty() {
            self.traffic_mut().inflight = inflight;
        }
        self.fill_window(out, now, on_sent);
    }
}

#[cfg(test)]
mod tests;
