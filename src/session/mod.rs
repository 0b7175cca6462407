//! The per-client session state machine: sans-I/O, no clocks, no sockets.
//!
//! A [`Session`] owns everything MQTT says outlives a network connection when clean session is
//! off: subscriptions, outgoing QoS 1/2 messages in flight, messages queued beyond the in-flight
//! window (or while offline) and inbound QoS 2 packet identifiers awaiting PUBREL. The shard
//! runtime feeds it packets and messages and gives it an output buffer; it writes the bytes to
//! send. Everything in it is plain `Send` data, so a session can move between shards on takeover
//! and, later, be written to disk.

mod message;

pub use message::{EncodeCache, Message};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::{
    Ack, LastWill, MqttStr, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
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

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 32,
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
    /// Acknowledgement state.
    pub state: InflightState,
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
}

/// What became of a message handed to [`Session::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Encoded into the output buffer.
    Sent,
    /// Queued (window full or client offline).
    Queued,
    /// Dropped: QoS 0 to an offline or congested client, or a queue at its bound.
    Dropped,
}

/// A broken acknowledgement rule, reported to the runtime which closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// PUBREC for a QoS 1 message or PUBCOMP before PUBREC and the like.
    #[error("acknowledgement does not match the message's QoS flow")]
    UnexpectedAck,
}

/// Session state for one client id.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: MqttStr,
    /// Protocol of the current (or last) connection.
    pub protocol: ProtocolVersion,
    /// Clean session: state ends with the connection.
    pub clean: bool,
    /// Subscriptions: filter (as sent, including `$share/...`) to options.
    pub subscriptions: HashMap<MqttStr, SubscriptionOptions>,
    /// The will of the current connection (boxed: most clients have none, and an idle
    /// connection's footprint matters).
    pub will: Option<Box<LastWill>>,
    limits: SessionLimits,
    next_packet_id: u16,
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    incoming_qos2: Vec<u16>,
    /// Messages dropped because a queue bound was reached (counted, as documented).
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped because the client was offline or congested.
    pub dropped_qos0: u64,
}

impl Session {
    /// A new, empty session.
    pub fn new(
        client_id: MqttStr,
        protocol: ProtocolVersion,
        clean: bool,
        limits: SessionLimits,
    ) -> Self {
        Session {
            client_id,
            protocol,
            clean,
            subscriptions: HashMap::new(),
            will: None,
            limits,
            next_packet_id: 1,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            incoming_qos2: Vec::new(),
            dropped_queue_full: 0,
            dropped_qos0: 0,
        }
    }

    /// Messages awaiting acknowledgement.
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Number of queued messages.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Payload bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Replaces the limits (a resumed session takes the limits in force now).
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < usize::from(self.limits.max_inflight.max(1))
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|m| m.packet_id == id) {
                return id;
            }
        }
    }

    /// Hands a message to the session at `qos` (already the lower of published and granted).
    ///
    /// `out` is the connection's output buffer, `None` when the client is offline or its buffer
    /// is over the slow-consumer limit. QoS 0 is sent or dropped; QoS 1/2 is sent when the window
    /// has room, otherwise queued up to the limits.
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        out: Option<&mut BytesMut>,
        cache: &mut EncodeCache,
    ) -> Delivery {
        if qos == QoS::AtMostOnce {
            return match out {
                Some(out) => {
                    cache
                        .get(message, self.protocol, qos, retain)
                        .write_to(out, 0, false);
                    Delivery::Sent
                }
                None => {
                    self.dropped_qos0 += 1;
                    Delivery::Dropped
                }
            };
        }
        match out {
            Some(out) if self.window_open() && self.queue.is_empty() => {
                let packet_id = self.allocate_packet_id();
                cache
                    .get(message, self.protocol, qos, retain)
                    .write_to(out, packet_id, false);
                self.inflight.push_back(Inflight {
                    packet_id,
                    message: Arc::clone(message),
                    qos,
                    retain,
                    state: if qos == QoS::AtLeastOnce {
                        InflightState::AwaitPubAck
                    } else {
                        InflightState::AwaitPubRec
                    },
                });
                Delivery::Sent
            }
            _ => self.enqueue(Queued {
                message: Arc::clone(message),
                qos,
                retain,
            }),
        }
    }

    fn enqueue(&mut self, queued: Queued) -> Delivery {
        let size = queued.message.payload.len();
        let full_count = self.limits.max_queued_messages != 0
            && self.queue.len() >= self.limits.max_queued_messages;
        let full_bytes = self.limits.max_queued_bytes != 0
            && self.queued_bytes + size > self.limits.max_queued_bytes;
        if full_count || full_bytes {
            // Newest is dropped, as Mosquitto does: what was queued first keeps its place.
            self.dropped_queue_full += 1;
            return Delivery::Dropped;
        }
        self.queued_bytes += size;
        self.queue.push_back(queued);
        Delivery::Queued
    }

    /// Moves queued messages into the window while it has room. Returns how many were sent.
    pub fn fill_window(&mut self, out: &mut BytesMut) -> usize {
        let mut sent = 0;
        while self.window_open() {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= queued.message.payload.len();
            if queued.qos == QoS::AtMostOnce {
                queued
                    .message
                    .encode_to(out, self.protocol, queued.qos, queued.retain, 0, false);
                sent += 1;
                continue;
            }
            let packet_id = self.allocate_packet_id();
            queued.message.encode_to(
                out,
                self.protocol,
                queued.qos,
                queued.retain,
                packet_id,
                false,
            );
            self.inflight.push_back(Inflight {
                packet_id,
                state: if queued.qos == QoS::AtLeastOnce {
                    InflightState::AwaitPubAck
                } else {
                    InflightState::AwaitPubRec
                },
                message: queued.message,
                qos: queued.qos,
                retain: queued.retain,
            });
            sent += 1;
        }
        sent
    }

    /// On a resumed session: resend every unacknowledged PUBLISH with DUP set and every PUBREL,
    /// in their original order (MQTT 3.1.1 §4.4), then fill the window from the queue.
    pub fn resume(&mut self, out: &mut BytesMut) {
        for inflight in &self.inflight {
            match inflight.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    inflight.message.encode_to(
                        out,
                        self.protocol,
                        inflight.qos,
                        inflight.retain,
                        inflight.packet_id,
                        true,
                    )
                }
                InflightState::AwaitPubComp => {
                    let _ = Packet::PubRel(Ack::new(inflight.packet_id)).encode(self.protocol, out);
                }
            }
        }
        self.fill_window(out);
    }

    fn position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|m| m.packet_id == packet_id)
    }

    /// PUBACK from the client. Unknown identifiers are ignored (a late duplicate).
    pub fn on_puback(&mut self, packet_id: u16, out: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(index) = self.position(packet_id) {
            if self.inflight[index].state != InflightState::AwaitPubAck {
                return Err(SessionError::UnexpectedAck);
            }
            self.inflight.remove(index);
            self.fill_window(out);
        }
        Ok(())
    }

    /// PUBREC from the client: answers PUBREL (with 0x92 in MQTT 5.0 if the id is unknown).
    pub fn on_pubrec(
        &mut self,
        packet_id: u16,
        reason: ReasonCode,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let Some(index) = self.position(packet_id) else {
            let mut release = Ack::new(packet_id);
            release.reason = ReasonCode::PacketIdentifierNotFound;
            let _ = Packet::PubRel(release).encode(self.protocol, out);
            return Ok(());
        };
        match self.inflight[index].state {
            InflightState::AwaitPubRec if reason.is_error() => {
                // MQTT 5.0: a PUBREC with an error ends the flow; no PUBREL.
                self.inflight.remove(index);
                self.fill_window(out);
            }
            InflightState::AwaitPubRec | InflightState::AwaitPubComp => {
                self.inflight[index].state = InflightState::AwaitPubComp;
                let _ = Packet::PubRel(Ack::new(packet_id)).encode(self.protocol, out);
            }
            InflightState::AwaitPubAck => return Err(SessionError::UnexpectedAck),
        }
        Ok(())
    }

    /// PUBCOMP from the client. Unknown identifiers are ignored.
    pub fn on_pubcomp(&mut self, packet_id: u16, out: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(index) = self.position(packet_id) {
            if self.inflight[index].state != InflightState::AwaitPubComp {
                return Err(SessionError::UnexpectedAck);
            }
            self.inflight.remove(index);
            self.fill_window(out);
        }
        Ok(())
    }

    /// An inbound QoS 2 PUBLISH: `true` if it is new and must be routed, `false` for a
    /// retransmission of one not yet released (deduplicated until PUBREL).
    pub fn on_incoming_qos2(&mut self, packet_id: u16) -> bool {
        if self.incoming_qos2.contains(&packet_id) {
            return false;
        }
        self.incoming_qos2.push(packet_id);
        true
    }

    /// Inbound PUBREL: `true` if the identifier was awaiting release.
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        match self.incoming_qos2.iter().position(|&id| id == packet_id) {
            Some(index) => {
                self.incoming_qos2.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// Number of inbound QoS 2 identifiers awaiting PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }
}

#[cfg(test)]
mod tests;
