//! An application message as the broker routes it, and the per-publish encoding cache.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{
    EncodedPublish, MqttStr, Properties, ProtocolVersion, Publish, PublishParts, QoS,
};

/// A published message, shared (`Arc`) by every shard and subscriber it reaches. The payload is
/// a slice of the buffer it was read into: it is never copied per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never an alias: aliases are resolved on the way in).
    pub topic: MqttStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag it was published with.
    pub retain: bool,
    /// PUBLISH properties to forward (MQTT 5.0); topic alias and subscription ids removed.
    pub properties: MessageProperties,
    /// Client id of the publisher (for MQTT 5.0 no-local).
    pub publisher: MqttStr,
    /// The packet id of a QoS 2 PUBLISH from a durable session (0: none): the shards it is
    /// routed to remember it, so that a resend after a crash that lost the publisher's record
    /// of it is not delivered twice.
    pub origin_packet_id: u16,
    /// When the message expires (MQTT 5.0 message expiry interval), if ever.
    pub expires_at: Option<Instant>,
    /// When the broker read the PUBLISH this message came from (the `now` of that read), for
    /// the publish latency histogram. `None` for what is not measured: messages the broker
    /// makes itself (`$SYS`, wills) and retained copies replayed at subscribe time.
    pub received_at: Option<Instant>,
}

/// A message's PUBLISH properties: [`Properties`] is already boxed, and nothing when there are
/// none, so a message held in a queue or retained (millions after a large recovery) pays 8 bytes
/// for them.
pub type MessageProperties = Properties;

impl Message {
    /// True once the message's expiry interval has elapsed: it must not be delivered.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH a subscriber receives (packet id and DUP filled in at write time). The
    /// message expiry interval is the time remaining at `now`, as MQTT 5.0 §3.3.2.3.3 requires.
    pub fn to_publish(&self, qos: QoS, retain: bool, now: Instant) -> Publish {
        // Most messages have none: cloning an empty block copies a null pointer.
        let mut properties = self.properties.clone();
        if let Some(at) = self.expires_at {
            let remaining = at.saturating_duration_since(now);
            properties.message_expiry_interval = Some(
                u32::try_from(remaining.as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1),
            );
        }
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id: 0,
            properties,
            payload: self.payload.clone(),
        }
    }
}

/// Encodings of one message, one per (protocol version, QoS, retain) layout, built on first use:
/// a fan-out to thousands of subscribers serialises the message at most 18 times.
#[derive(Debug, Default)]
pub struct EncodeCache {
    for_message: Option<Arc<Message>>,
    /// Remaining expiry the cached encodings carry: they are stale once it changes.
    expiry_secs: Option<u64>,
    layouts: [Option<EncodedPublish>; 18],
    /// Which `layouts` hold an encoding (bit per index): clearing touches only those.
    filled: u32,
}

impl EncodeCache {
    /// Forgets everything (call before each new message).
    pub fn clear(&mut self) {
        self.for_message = None;
        while self.filled != 0 {
            let index = self.filled.trailing_zeros() as usize;
            self.filled &= self.filled - 1;
            self.layouts[index] = None;
        }
    }

    /// The encoding of `message` for a layout.
    pub fn get(
        &mut self,
        message: &Arc<Message>,
        version: ProtocolVersion,
        qos: QoS,
        retain: bool,
        now: Instant,
    ) -> Option<&EncodedPublish> {
        // Holding the Arc (not a pointer) rules out a freed message's address being reused.
        let expiry_secs = message
            .expires_at
            .map(|at| at.saturating_duration_since(now).as_secs());
        if !self
            .for_message
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, message))
            || self.expiry_secs != expiry_secs
        {
            self.clear();
            self.for_message = Some(Arc::clone(message));
            self.expiry_secs = expiry_secs;
        }
        let version_index = match version {
            ProtocolVersion::V3_1 => 0,
            ProtocolVersion::V3_1_1 => 1,
            ProtocolVersion::V5 => 2,
        };
        let index = version_index * 6 + (qos as usize) * 2 + usize::from(retain);
        if self.layouts[index].is_none() {
            self.filled |= 1 << index;
            // A message too large to re-encode (remaining length over the protocol's limit
            // once the broker's properties are added) yields None: the caller drops it.
            self.layouts[index] = if message.expires_at.is_none() {
                let parts = PublishParts {
                    topic: &message.topic,
                    properties: &message.properties,
                    payload: &message.payload,
                };
                EncodedPublish::from_parts(parts, version, qos, retain).ok()
            } else {
                // The expiry interval is rewritten per delivery time.
                EncodedPublish::new(&message.to_publish(qos, retain, now), version, qos, retain)
                    .ok()
            };
        }
        self.layouts[index].as_ref()
    }
}
