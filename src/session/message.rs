//! An application message as the broker routes it, and the per-publish encoding cache.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{EncodedPublish, MqttStr, Properties, ProtocolVersion, Publish, QoS};

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

/// A message's PUBLISH properties, boxed, and nothing when there are none: most messages have
/// none and [`Properties`] is about 400 bytes, which every message held in a queue or retained
/// (millions after a large recovery) paid for inline. Reads go through `Deref`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties(Option<Box<Properties>>);

static NO_PROPERTIES: std::sync::LazyLock<Properties> =
    std::sync::LazyLock::new(Properties::default);

impl MessageProperties {
    /// The properties, `None` when there are none (a check of the box, not a comparison of
    /// every field with the defaults).
    pub fn get(&self) -> Option<&Properties> {
        self.0.as_deref()
    }

    /// The properties, owned.
    pub fn into_inner(self) -> Properties {
        self.0.map(|boxed| *boxed).unwrap_or_default()
    }
}

impl From<Properties> for MessageProperties {
    fn from(properties: Properties) -> Self {
        if properties.is_empty() {
            MessageProperties(None)
        } else {
            MessageProperties(Some(Box::new(properties)))
        }
    }
}

impl std::ops::Deref for MessageProperties {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl Message {
    /// True once the message's expiry interval has elapsed: it must not be delivered.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH a subscriber receives (packet id and DUP filled in at write time). The
    /// message expiry interval is the time remaining at `now`, as MQTT 5.0 §3.3.2.3.3 requires.
    pub fn to_publish(&self, qos: QoS, retain: bool, now: Instant) -> Publish {
        // Most messages have none: no 400-byte field-by-field clone for them.
        let mut properties = if self.properties.0.is_none() {
            Properties::default()
        } else {
            Properties::clone(&self.properties)
        };
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
}

impl EncodeCache {
    /// Forgets everything (call before each new message).
    pub fn clear(&mut self) {
        self.for_message = None;
        for slot in &mut self.layouts {
            *slot = None;
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
            // A message too large to re-encode (remaining length over the protocol's limit
            // once the broker's properties are added) yields None: the caller drops it.
            self.layouts[index] =
                EncodedPublish::new(&message.to_publish(qos, retain, now), version, qos, retain)
                    .ok();
        }
        self.layouts[index].as_ref()
    }
}
