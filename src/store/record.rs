//! The records of the store: every durable state change as owned plain data, and their binary
//! body encoding (the frame around a body is [`super::frame`]).
//!
//! Body = one type byte, then the fields in declaration order, little-endian:
//! integers fixed-width; `str` = u16 length + UTF-8 (MQTT strings are at most 65,535 bytes);
//! `bytes` = u32 length + bytes; `Option<T>` = 0 (none) or 1 followed by `T`; `bool` = 0 or 1;
//! `QoS` = 0, 1 or 2; subscription options = the MQTT 5.0 options byte; `Vec<u32>` = u16
//! count + values. Anything else (an unknown type byte, a 2 in a bool, bytes left over) is a
//! typed [`RecordError`], never a panic.

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{QoS, RetainHandling, SubscriptionOptions};

/// A per-session generation (or a retained topic's version): strictly increasing per client id
/// (per topic) over the whole life of the data directory, so that recovery keeps exactly the
/// newest owner's records whatever order the shards' files are read in. Built from the boot
/// epoch and a serial of the issuing shard: see [`generation`].
pub type Generation = u64;

/// Bits of a [`Generation`] below the boot epoch.
pub const EPOCH_SHIFT: u32 = 40;

/// The generation `serial` (issued by one shard, increasing) of boot `epoch`. A boot's epoch is
/// one more than the epoch of the newest generation recovered
/// ([`super::recover::RecoveredState::next_epoch`]), so every generation of a boot is newer than
/// every generation of the boots before it.
pub fn generation(epoch: u64, serial: u64) -> Generation {
    (epoch << EPOCH_SHIFT) | (serial & ((1 << EPOCH_SHIFT) - 1))
}

/// The boot epoch of a generation.
pub fn epoch_of(generation: Generation) -> u64 {
    generation >> EPOCH_SHIFT
}

/// Identifies a message body within one shard's files (a shard writes each body once, before
/// the first record that refers to it; references never cross shards' files).
pub type MessageId = u64;

/// A message body: written once per message per shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// The id later records refer to it by.
    pub id: MessageId,
    /// Topic name.
    pub topic: String,
    /// Client id of the publisher (MQTT 5.0 no-local).
    pub publisher: String,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag it was published with.
    pub retain: bool,
    /// MQTT 5.0 PUBLISH properties to forward: the wire block, length prefix included (empty:
    /// none).
    pub properties: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// When the message expires, wall-clock Unix milliseconds (`None`: never).
    pub expires_at_ms: Option<u64>,
}

/// A will message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillRecord {
    /// Topic.
    pub topic: String,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5.0 will properties: the wire block, length prefix included (empty: none).
    pub properties: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Will delay interval in seconds.
    pub delay_secs: u32,
}

/// How a message goes to one session: what its PUBLISH will carry besides the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// QoS of the delivery (the lower of the publish's and the subscription's).
    pub qos: QoS,
    /// The retain flag the delivery carries.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (MQTT 5.0).
    pub subscription_ids: Vec<u32>,
}

/// A durable state change. Session records name the session by client id and the generation
/// of the claim that owns it: a new owner (takeover, move between shards, recovery) writes the
/// whole session again under its new generation, and recovery ignores older generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRecord {
    /// A session that outlives its connection was created or taken over (and its client is
    /// connected). Later records of `generation` build its state from empty.
    SessionStarted {
        /// Client identifier.
        client_id: String,
        /// The owning claim's generation.
        generation: Generation,
        /// The user name of the owner (only the same user may take the id over).
        username: Option<String>,
        /// Protocol level of the connection (3, 4 or 5).
        protocol: u8,
        /// Seconds the session lives after its connection ends (`None`: forever).
        expiry_secs: Option<u32>,
        /// When, wall-clock Unix milliseconds.
        at_ms: u64,
    },
    /// The session's connection ended; the session lives on (its expiry counts from `at_ms`).
    SessionDisconnected {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// When, wall-clock Unix milliseconds.
        at_ms: u64,
        /// The session expiry in force from now (MQTT 5.0 DISCONNECT may change it).
        expiry_secs: Option<u32>,
    },
    /// The session ended (expired, clean start, or discarded): nothing of it or older remains.
    SessionEnded {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
    },
    /// The session's will was set (at CONNECT) or kept pending after an abnormal disconnect.
    WillSet {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The will.
        will: WillRecord,
    },
    /// The will is gone (normal disconnect, or published).
    WillCleared {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
    },
    /// Deliveries of a QoS 2 PUBLISH routed here from another shard reached `clients`
    /// (durable sessions of this shard): until the publisher's shard has recorded the packet
    /// id (`OriginCleared`), a resend of it after a crash is not delivered to them again.
    OriginReceived {
        /// The publisher's client id.
        publisher: String,
        /// Its packet id.
        packet_id: u16,
        /// CRC-32C of the topic and payload (a resend carries the same).
        digest: u32,
        /// The subscribers' client ids.
        clients: Vec<String>,
    },
    /// The publisher's shard recorded the packet id: the resend will be recognised there.
    OriginCleared {
        /// The publisher's client id.
        publisher: String,
        /// Its packet id.
        packet_id: u16,
    },
    /// The last record of a session's image (what a new owner writes first): an image cut
    /// short by a torn write has none, and recovery then keeps the newest complete
    /// generation instead.
    ImageComplete {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
    },
    /// A subscription was added or replaced.
    Subscribed {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The filter (with any `$share/group/` prefix).
        filter: String,
        /// Its options.
        options: SubscriptionOptions,
        /// Its subscription identifier (0: none).
        subscription_id: u32,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The filter.
        filter: String,
    },
    /// A message body (referred to by id by later records of the same shard).
    Message(MessageRecord),
    /// A QoS 1/2 message was queued for the session.
    Enqueued {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The message body.
        message: MessageId,
        /// How it is delivered.
        delivery: Delivery,
    },
    /// A message was sent with `packet_id` (taken off the queue if it was queued) and waits
    /// for its PUBACK / PUBREC.
    InFlight {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The message body.
        message: MessageId,
        /// The packet identifier it was sent with.
        packet_id: u16,
        /// How it is delivered.
        delivery: Delivery,
    },
    /// The in-flight message with `packet_id` is resent with DUP set from now on.
    DupSet {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The packet identifier.
        packet_id: u16,
    },
    /// Outgoing QoS 2: PUBREC received, PUBREL due (the message itself is no longer needed).
    PubRecReceived {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The packet identifier.
        packet_id: u16,
    },
    /// The in-flight message with `packet_id` is done (PUBACK, PUBCOMP, or dropped).
    Acked {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The packet identifier.
        packet_id: u16,
    },
    /// A queued message was dropped before it was sent (expired, queue bound).
    Dequeued {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The message body.
        message: MessageId,
    },
    /// Inbound QoS 2: the PUBLISH with `packet_id` was accepted (PUBREC sent).
    InboundReceived {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The packet identifier.
        packet_id: u16,
    },
    /// Inbound QoS 2: PUBREL received, the packet id is free again.
    InboundReleased {
        /// Client identifier.
        client_id: String,
        /// Generation.
        generation: Generation,
        /// The packet identifier.
        packet_id: u16,
    },
    /// The topic's owner shard set its retained message.
    RetainedSet {
        /// The topic.
        topic: String,
        /// Version (a [`Generation`] issued by the topic's owner shard).
        version: Generation,
        /// The message body.
        message: MessageId,
    },
    /// The topic's owner shard cleared its retained message.
    RetainedCleared {
        /// The topic.
        topic: String,
        /// Version.
        version: Generation,
    },
    /// The last record of a snapshot: the state as of the end of log segment `through_segment`,
    /// made of the `records` records before this one.
    Checkpoint {
        /// The last log segment the snapshot covers.
        through_segment: u64,
        /// How many records precede this one in the snapshot.
        records: u64,
    },
}

/// Why a record body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The body ends inside a field.
    #[error("record truncated: {field} needs {needed} more bytes")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// An empty body (no type byte).
    #[error("empty record")]
    Empty,
    /// A type byte this version does not know.
    #[error("unknown record type {0:#04x}")]
    UnknownType(u8),
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field holds a value outside its range.
    #[error("invalid {field}: {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes left after the last field.
    #[error("{0} bytes after the end of a record")]
    TrailingBytes(usize),
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A string longer than 65,535 bytes.
    #[error("{field} is {len} bytes, more than 65535")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A byte field or list too long for its length prefix, or a body over the frame limit.
    #[error("{field} is {len} long, over the limit")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

pub(super) mod tag {
    pub const SESSION_STARTED: u8 = 0x01;
    pub const SESSION_DISCONNECTED: u8 = 0x02;
    pub const SESSION_ENDED: u8 = 0x03;
    pub const WILL_SET: u8 = 0x04;
    pub const WILL_CLEARED: u8 = 0x05;
    pub const IMAGE_COMPLETE: u8 = 0x08;
    pub const ORIGIN_RECEIVED: u8 = 0x19;
    pub const ORIGIN_CLEARED: u8 = 0x1A;
    pub const SUBSCRIBED: u8 = 0x06;
    pub const UNSUBSCRIBED: u8 = 0x07;
    pub const MESSAGE: u8 = 0x10;
    pub const ENQUEUED: u8 = 0x11;
    pub const IN_FLIGHT: u8 = 0x12;
    pub const DUP_SET: u8 = 0x13;
    pub const PUBREC_RECEIVED: u8 = 0x14;
    pub const ACKED: u8 = 0x15;
    pub const DEQUEUED: u8 = 0x16;
    pub const INBOUND_RECEIVED: u8 = 0x17;
    pub const INBOUND_RELEASED: u8 = 0x18;
    pub const RETAINED_SET: u8 = 0x20;
    pub const RETAINED_CLEARED: u8 = 0x21;
    pub const CHECKPOINT: u8 = 0x30;
}

impl StoreRecord {
    /// The client id a session record is about (`None` for messages, retained, checkpoints).
    pub fn client_id(&self) -> Option<&str> {
        use StoreRecord::*;
        match self {
            SessionStarted { client_id, .. }
            | SessionDisconnected { client_id, .. }
            | SessionEnded { client_id, .. }
            | WillSet { client_id, .. }
            | WillCleared { client_id, .. }
            | ImageComplete { client_id, .. }
            | Subscribed { client_id, .. }
            | Unsubscribed { client_id, .. }
            | Enqueued { client_id, .. }
            | InFlight { client_id, .. }
            | DupSet { client_id, .. }
            | PubRecReceived { client_id, .. }
            | Acked { client_id, .. }
            | Dequeued { client_id, .. }
            | InboundReceived { client_id, .. }
            | InboundReleased { client_id, .. } => Some(client_id),
            Message(_)
            | RetainedSet { .. }
            | RetainedCleared { .. }
            | Checkpoint { .. }
            | OriginReceived { .. }
            | OriginCleared { .. } => None,
        }
    }

    /// Appends the body (type byte and fields) to `out`. On error `out` may hold a partial
    /// body: the frame encoder truncates it back.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        use StoreRecord::*;
        let mut w = Writer(out);
        match self {
            SessionStarted {
                client_id,
                generation,
                username,
                protocol,
                expiry_secs,
                at_ms,
            } => {
                w.u8(tag::SESSION_STARTED);
                w.session(client_id, *generation)?;
                w.opt_str("username", username.as_deref())?;
                w.u8(*protocol);
                w.opt_u32(*expiry_secs);
                w.u64(*at_ms);
            }
            SessionDisconnected {
                client_id,
                generation,
                at_ms,
                expiry_secs,
            } => {
                w.u8(tag::SESSION_DISCONNECTED);
                w.session(client_id, *generation)?;
                w.u64(*at_ms);
                w.opt_u32(*expiry_secs);
            }
            SessionEnded {
                client_id,
                generation,
            } => {
                w.u8(tag::SESSION_ENDED);
                w.session(client_id, *generation)?;
            }
            WillSet {
                client_id,
                generation,
                will,
            } => {
                w.u8(tag::WILL_SET);
                w.session(client_id, *generation)?;
                w.str("will topic", &will.topic)?;
                w.u8(will.qos as u8);
                w.bool(will.retain);
                w.bytes("will properties", &will.properties)?;
                w.bytes("will payload", &will.payload)?;
                w.u32(will.delay_secs);
            }
            WillCleared {
                client_id,
                generation,
            } => {
                w.u8(tag::WILL_CLEARED);
                w.session(client_id, *generation)?;
            }
            ImageComplete {
                client_id,
                generation,
            } => {
                w.u8(tag::IMAGE_COMPLETE);
                w.session(client_id, *generation)?;
            }
            OriginReceived {
                publisher,
                packet_id,
                digest,
                clients,
            } => w.origin_received(publisher, *packet_id, *digest, clients)?,
            OriginCleared {
                publisher,
                packet_id,
            } => {
                w.u8(tag::ORIGIN_CLEARED);
                w.origin(publisher, *packet_id)?;
            }
            Subscribed {
                client_id,
                generation,
                filter,
                options,
                subscription_id,
            } => {
                w.u8(tag::SUBSCRIBED);
                w.session(client_id, *generation)?;
                w.str("filter", filter)?;
                w.u8(options_byte(options));
                w.u32(*subscription_id);
            }
            Unsubscribed {
                client_id,
                generation,
                filter,
            } => {
                w.u8(tag::UNSUBSCRIBED);
                w.session(client_id, *generation)?;
                w.str("filter", filter)?;
            }
            Message(message) => {
                w.u8(tag::MESSAGE);
                w.u64(message.id);
                w.str("topic", &message.topic)?;
                w.str("publisher", &message.publisher)?;
                w.u8(message.qos as u8);
                w.bool(message.retain);
                w.bytes("properties", &message.properties)?;
                w.bytes("payload", &message.payload)?;
                w.opt_u64(message.expires_at_ms);
            }
            Enqueued {
                client_id,
                generation,
                message,
                delivery,
            } => {
                w.u8(tag::ENQUEUED);
                w.session(client_id, *generation)?;
                w.u64(*message);
                w.delivery(delivery)?;
            }
            InFlight {
                client_id,
                generation,
                message,
                packet_id,
                delivery,
            } => {
                w.u8(tag::IN_FLIGHT);
                w.session(client_id, *generation)?;
                w.u64(*message);
                w.u16(*packet_id);
                w.delivery(delivery)?;
            }
            DupSet {
                client_id,
                generation,
                packet_id,
            } => w.packet(tag::DUP_SET, client_id, *generation, *packet_id)?,
            PubRecReceived {
                client_id,
                generation,
                packet_id,
            } => w.packet(tag::PUBREC_RECEIVED, client_id, *generation, *packet_id)?,
            Acked {
                client_id,
                generation,
                packet_id,
            } => w.packet(tag::ACKED, client_id, *generation, *packet_id)?,
            Dequeued {
                client_id,
                generation,
                message,
            } => {
                w.u8(tag::DEQUEUED);
                w.session(client_id, *generation)?;
                w.u64(*message);
            }
            InboundReceived {
                client_id,
                generation,
                packet_id,
            } => w.packet(tag::INBOUND_RECEIVED, client_id, *generation, *packet_id)?,
            InboundReleased {
                client_id,
                generation,
                packet_id,
            } => w.packet(tag::INBOUND_RELEASED, client_id, *generation, *packet_id)?,
            RetainedSet {
                topic,
                version,
                message,
            } => {
                w.u8(tag::RETAINED_SET);
                w.str("topic", topic)?;
                w.u64(*version);
                w.u64(*message);
            }
            RetainedCleared { topic, version } => {
                w.u8(tag::RETAINED_CLEARED);
                w.str("topic", topic)?;
                w.u64(*version);
            }
            Checkpoint {
                through_segment,
                records,
            } => {
                w.u8(tag::CHECKPOINT);
                w.u64(*through_segment);
                w.u64(*records);
            }
        }
        Ok(())
    }

    /// Decodes a whole body (type byte and fields; nothing may follow).
    pub fn decode_body(body: &[u8]) -> Result<StoreRecord, RecordError> {
        use StoreRecord::*;
        let mut r = Reader(body);
        let kind = r.u8("type").map_err(|_| RecordError::Empty)?;
        let record = match kind {
            tag::SESSION_STARTED => {
                let (client_id, generation) = r.session()?;
                SessionStarted {
                    client_id,
                    generation,
                    username: r.opt_str("username")?,
                    protocol: r.u8("protocol")?,
                    expiry_secs: r.opt_u32("expiry")?,
                    at_ms: r.u64("time")?,
                }
            }
            tag::SESSION_DISCONNECTED => {
                let (client_id, generation) = r.session()?;
                SessionDisconnected {
                    client_id,
                    generation,
                    at_ms: r.u64("time")?,
                    expiry_secs: r.opt_u32("expiry")?,
                }
            }
            tag::SESSION_ENDED => {
                let (client_id, generation) = r.session()?;
                SessionEnded {
                    client_id,
                    generation,
                }
            }
            tag::WILL_SET => {
                let (client_id, generation) = r.session()?;
                let will = WillRecord {
                    topic: r.str("will topic")?,
                    qos: r.qos("will QoS")?,
                    retain: r.bool("will retain")?,
                    properties: r.bytes("will properties")?,
                    payload: r.bytes("will payload")?,
                    delay_secs: r.u32("will delay")?,
                };
                WillSet {
                    client_id,
                    generation,
                    will,
                }
            }
            tag::WILL_CLEARED => {
                let (client_id, generation) = r.session()?;
                WillCleared {
                    client_id,
                    generation,
                }
            }
            tag::ORIGIN_RECEIVED => {
                let publisher = r.str("publisher")?;
                let packet_id = r.u16("packet id")?;
                let digest = r.u32("digest")?;
                let count = r.u16("origin client count")? as usize;
                // Every client id needs at least its 2-byte length.
                let mut clients = Vec::with_capacity(count.min(r.0.len() / 2));
                for _ in 0..count {
                    clients.push(r.str("client id")?);
                }
                OriginReceived {
                    publisher,
                    packet_id,
                    digest,
                    clients,
                }
            }
            tag::ORIGIN_CLEARED => OriginCleared {
                publisher: r.str("publisher")?,
                packet_id: r.u16("packet id")?,
            },
            tag::IMAGE_COMPLETE => {
                let (client_id, generation) = r.session()?;
                ImageComplete {
                    client_id,
                    generation,
                }
            }
            tag::SUBSCRIBED => {
                let (client_id, generation) = r.session()?;
                Subscribed {
                    client_id,
                    generation,
                    filter: r.str("filter")?,
                    options: options_from_byte(r.u8("subscription options")?)?,
                    subscription_id: r.u32("subscription id")?,
                }
            }
            tag::UNSUBSCRIBED => {
                let (client_id, generation) = r.session()?;
                Unsubscribed {
                    client_id,
                    generation,
                    filter: r.str("filter")?,
                }
            }
            tag::MESSAGE => Message(MessageRecord {
                id: r.u64("message id")?,
                topic: r.str("topic")?,
                publisher: r.str("publisher")?,
                qos: r.qos("QoS")?,
                retain: r.bool("retain")?,
                properties: r.bytes("properties")?,
                payload: r.bytes("payload")?,
                expires_at_ms: r.opt_u64("expiry")?,
            }),
            tag::ENQUEUED => {
                let (client_id, generation) = r.session()?;
                Enqueued {
                    client_id,
                    generation,
                    message: r.u64("message id")?,
                    delivery: r.delivery()?,
                }
            }
            tag::IN_FLIGHT => {
                let (client_id, generation) = r.session()?;
                InFlight {
                    client_id,
                    generation,
                    message: r.u64("message id")?,
                    packet_id: r.u16("packet id")?,
                    delivery: r.delivery()?,
                }
            }
            tag::DUP_SET => {
                let (client_id, generation, packet_id) = r.packet()?;
                DupSet {
                    client_id,
                    generation,
                    packet_id,
                }
            }
            tag::PUBREC_RECEIVED => {
                let (client_id, generation, packet_id) = r.packet()?;
                PubRecReceived {
                    client_id,
                    generation,
                    packet_id,
                }
            }
            tag::ACKED => {
                let (client_id, generation, packet_id) = r.packet()?;
                Acked {
                    client_id,
                    generation,
                    packet_id,
                }
            }
            tag::DEQUEUED => {
                let (client_id, generation) = r.session()?;
                Dequeued {
                    client_id,
                    generation,
                    message: r.u64("message id")?,
                }
            }
            tag::INBOUND_RECEIVED => {
                let (client_id, generation, packet_id) = r.packet()?;
                InboundReceived {
                    client_id,
                    generation,
                    packet_id,
                }
            }
            tag::INBOUND_RELEASED => {
                let (client_id, generation, packet_id) = r.packet()?;
                InboundReleased {
                    client_id,
                    generation,
                    packet_id,
                }
            }
            tag::RETAINED_SET => RetainedSet {
                topic: r.str("topic")?,
                version: r.u64("version")?,
                message: r.u64("message id")?,
            },
            tag::RETAINED_CLEARED => RetainedCleared {
                topic: r.str("topic")?,
                version: r.u64("version")?,
            },
            tag::CHECKPOINT => Checkpoint {
                through_segment: r.u64("segment")?,
                records: r.u64("record count")?,
            },
            other => return Err(RecordError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(RecordError::TrailingBytes(r.0.len()));
        }
        Ok(record)
    }
}

/// The MQTT 5.0 subscription options byte.
pub(super) fn options_byte(options: &SubscriptionOptions) -> u8 {
    options.qos as u8
        | (options.no_local as u8) << 2
        | (options.retain_as_published as u8) << 3
        | (options.retain_handling as u8) << 4
}

fn options_from_byte(byte: u8) -> Result<SubscriptionOptions, RecordError> {
    let invalid = RecordError::InvalidValue {
        field: "subscription options",
        value: byte as u64,
    };
    let qos = QoS::from_u8(byte & 0b11).ok_or(invalid.clone())?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(invalid),
    };
    if byte & 0xc0 != 0 {
        return Err(invalid);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

/// Appends fields in the body encoding (shared with the journal, which encodes from borrowed
/// records: the bytes must be the same).
pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    pub(super) fn bool(&mut self, value: bool) {
        self.0.push(value as u8);
    }
    pub(super) fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    pub(super) fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    pub(super) fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    pub(super) fn opt_u32(&mut self, value: Option<u32>) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                self.u32(value);
            }
        }
    }
    pub(super) fn opt_u64(&mut self, value: Option<u64>) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                self.u64(value);
            }
        }
    }
    pub(super) fn str(&mut self, field: &'static str, value: &str) -> Result<(), EncodeError> {
        let len = u16::try_from(value.len()).map_err(|_| EncodeError::StringTooLong {
            field,
            len: value.len(),
        })?;
        self.u16(len);
        self.0.extend_from_slice(value.as_bytes());
        Ok(())
    }
    pub(super) fn opt_str(
        &mut self,
        field: &'static str,
        value: Option<&str>,
    ) -> Result<(), EncodeError> {
        match value {
            None => {
                self.u8(0);
                Ok(())
            }
            Some(value) => {
                self.u8(1);
                self.str(field, value)
            }
        }
    }
    pub(super) fn bytes(&mut self, field: &'static str, value: &[u8]) -> Result<(), EncodeError> {
        let len = u32::try_from(value.len()).map_err(|_| EncodeError::TooLong {
            field,
            len: value.len(),
        })?;
        self.u32(len);
        self.0.extend_from_slice(value);
        Ok(())
    }
    pub(super) fn origin(&mut self, publisher: &str, packet_id: u16) -> Result<(), EncodeError> {
        self.str("publisher", publisher)?;
        self.u16(packet_id);
        Ok(())
    }

    /// The body of an `OriginReceived` record, from owned or borrowed client ids.
    pub(super) fn origin_received<C: std::ops::Deref<Target = str>>(
        &mut self,
        publisher: &str,
        packet_id: u16,
        digest: u32,
        clients: &[C],
    ) -> Result<(), EncodeError> {
        self.u8(tag::ORIGIN_RECEIVED);
        self.origin(publisher, packet_id)?;
        self.u32(digest);
        let len = clients.len();
        let count = u16::try_from(len).map_err(|_| EncodeError::TooLong {
            field: "origin clients",
            len,
        })?;
        self.u16(count);
        for client in clients {
            self.str("client id", client)?;
        }
        Ok(())
    }

    pub(super) fn session(
        &mut self,
        client_id: &str,
        generation: Generation,
    ) -> Result<(), EncodeError> {
        self.str("client id", client_id)?;
        self.u64(generation);
        Ok(())
    }
    pub(super) fn packet(
        &mut self,
        tag: u8,
        client_id: &str,
        generation: Generation,
        packet_id: u16,
    ) -> Result<(), EncodeError> {
        self.u8(tag);
        self.session(client_id, generation)?;
        self.u16(packet_id);
        Ok(())
    }
    pub(super) fn delivery(&mut self, delivery: &Delivery) -> Result<(), EncodeError> {
        self.delivery_parts(delivery.qos, delivery.retain, &delivery.subscription_ids)
    }
    pub(super) fn delivery_parts(
        &mut self,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
    ) -> Result<(), EncodeError> {
        self.u8(qos as u8);
        self.bool(retain);
        let count = u16::try_from(subscription_ids.len()).map_err(|_| EncodeError::TooLong {
            field: "subscription ids",
            len: subscription_ids.len(),
        })?;
        self.u16(count);
        for id in subscription_ids {
            self.u32(*id);
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < len {
            return Err(RecordError::Truncated {
                field,
                needed: len - self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, RecordError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(RecordError::InvalidValue {
                field,
                value: value as u64,
            }),
        }
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, RecordError> {
        self.bool(field)
    }
    fn qos(&mut self, field: &'static str) -> Result<QoS, RecordError> {
        let value = self.u8(field)?;
        QoS::from_u8(value).ok_or(RecordError::InvalidValue {
            field,
            value: value as u64,
        })
    }
    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, RecordError> {
        Ok(if self.flag(field)? {
            Some(self.u32(field)?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, RecordError> {
        Ok(if self.flag(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }
    fn str(&mut self, field: &'static str) -> Result<String, RecordError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(field, len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RecordError::InvalidUtf8(field))
    }
    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, RecordError> {
        Ok(if self.flag(field)? {
            Some(self.str(field)?)
        } else {
            None
        })
    }
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, RecordError> {
        let len = self.u32(field)? as usize;
        Ok(Bytes::copy_from_slice(self.take(field, len)?))
    }
    fn session(&mut self) -> Result<(String, Generation), RecordError> {
        Ok((self.str("client id")?, self.u64("generation")?))
    }
    fn packet(&mut self) -> Result<(String, Generation, u16), RecordError> {
        let (client_id, generation) = self.session()?;
        Ok((client_id, generation, self.u16("packet id")?))
    }
    fn delivery(&mut self) -> Result<Delivery, RecordError> {
        let qos = self.qos("delivery QoS")?;
        let retain = self.bool("delivery retain")?;
        let count = self.u16("subscription id count")? as usize;
        // Every id needs 4 bytes: refuse a count the body cannot hold before allocating.
        if self.0.len() < count * 4 {
            return Err(RecordError::Truncated {
                field: "subscription ids",
                needed: count * 4 - self.0.len(),
            });
        }
        let mut subscription_ids = Vec::with_capacity(count);
        for _ in 0..count {
            subscription_ids.push(self.u32("subscription id")?);
        }
        Ok(Delivery {
            qos,
            retain,
            subscription_ids,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One record of every kind.
    pub(crate) fn samples() -> Vec<StoreRecord> {
        let id = || "client-1".to_owned();
        let delivery = Delivery {
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![1, 268_435_455],
        };
        vec![
            StoreRecord::SessionStarted {
                client_id: id(),
                generation: generation(3, 17),
                username: Some("alice".into()),
                protocol: 5,
                expiry_secs: Some(3600),
                at_ms: 1_780_000_000_000,
            },
            StoreRecord::SessionDisconnected {
                client_id: id(),
                generation: 9,
                at_ms: 5,
                expiry_secs: None,
            },
            StoreRecord::SessionEnded {
                client_id: id(),
                generation: 9,
            },
            StoreRecord::WillSet {
                client_id: id(),
                generation: 9,
                will: WillRecord {
                    topic: "dead/client-1".into(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Bytes::from_static(&[0x02, 0x01, 0x01]),
                    payload: Bytes::from_static(b"gone"),
                    delay_secs: 30,
                },
            },
            StoreRecord::WillCleared {
                client_id: id(),
                generation: 9,
            },
            StoreRecord::Subscribed {
                client_id: id(),
                generation: 9,
                filter: "$share/g/a/+/b".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                subscription_id: 42,
            },
            StoreRecord::Unsubscribed {
                client_id: id(),
                generation: 9,
                filter: "a/#".into(),
            },
            StoreRecord::Message(MessageRecord {
                id: 77,
                topic: "a/b".into(),
                publisher: "pub".into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Bytes::new(),
                payload: Bytes::from_static(b"hello"),
                expires_at_ms: Some(1_780_000_060_000),
            }),
            StoreRecord::Enqueued {
                client_id: id(),
                generation: 9,
                message: 77,
                delivery: delivery.clone(),
            },
            StoreRecord::InFlight {
                client_id: id(),
                generation: 9,
                message: 77,
                packet_id: 65535,
                delivery,
            },
            StoreRecord::DupSet {
                client_id: id(),
                generation: 9,
                packet_id: 1,
            },
            StoreRecord::PubRecReceived {
                client_id: id(),
                generation: 9,
                packet_id: 1,
            },
            StoreRecord::Acked {
                client_id: id(),
                generation: 9,
                packet_id: 1,
            },
            StoreRecord::Dequeued {
                client_id: id(),
                generation: 9,
                message: 77,
            },
            StoreRecord::InboundReceived {
                client_id: id(),
                generation: 9,
                packet_id: 2,
            },
            StoreRecord::InboundReleased {
                client_id: id(),
                generation: 9,
                packet_id: 2,
            },
            StoreRecord::RetainedSet {
                topic: "a/b".into(),
                version: 4,
                message: 77,
            },
            StoreRecord::RetainedCleared {
                topic: "a/b".into(),
                version: 5,
            },
            StoreRecord::Checkpoint {
                through_segment: 12,
                records: 1000,
            },
            StoreRecord::ImageComplete {
                client_id: id(),
                generation: 9,
            },
            StoreRecord::OriginReceived {
                publisher: "pub-1".into(),
                packet_id: 7,
                digest: 0xdead_beef,
                clients: vec![id(), "client-2".into()],
            },
            StoreRecord::OriginCleared {
                publisher: "pub-1".into(),
                packet_id: 7,
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for record in samples() {
            let mut body = Vec::new();
            record.encode_body(&mut body).unwrap();
            assert_eq!(StoreRecord::decode_body(&body), Ok(record.clone()));
            // Every strict prefix is an error, never a panic.
            for len in 0..body.len() {
                assert!(
                    StoreRecord::decode_body(&body[..len]).is_err(),
                    "{record:?} at {len}"
                );
            }
            body.push(0);
            assert_eq!(
                StoreRecord::decode_body(&body),
                Err(RecordError::TrailingBytes(1))
            );
        }
    }

    #[test]
    fn invalid_values_are_typed_errors() {
        assert_eq!(
            StoreRecord::decode_body(&[0xee]),
            Err(RecordError::UnknownType(0xee))
        );
        assert_eq!(StoreRecord::decode_body(&[]), Err(RecordError::Empty));
        // A session-ended record with a client id that is not UTF-8.
        let body = [tag::SESSION_ENDED, 1, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            StoreRecord::decode_body(&body),
            Err(RecordError::InvalidUtf8("client id"))
        );
        // QoS 3 in a message.
        let mut body = Vec::new();
        samples()[7].encode_body(&mut body).unwrap();
        let qos_at = 1 + 8 + (2 + 3) + (2 + 3);
        body[qos_at] = 3;
        assert!(matches!(
            StoreRecord::decode_body(&body),
            Err(RecordError::InvalidValue { field: "QoS", .. })
        ));
        // A huge subscription-id count in a short body.
        let mut body = vec![tag::ENQUEUED, 1, 0, b'c'];
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&[1, 0, 0xff, 0xff]);
        assert!(matches!(
            StoreRecord::decode_body(&body),
            Err(RecordError::Truncated { .. })
        ));
    }

    #[test]
    fn over_long_strings_do_not_encode() {
        let record = StoreRecord::SessionEnded {
            client_id: "x".repeat(70_000),
            generation: 1,
        };
        assert!(matches!(
            record.encode_body(&mut Vec::new()),
            Err(EncodeError::StringTooLong { .. })
        ));
    }

    #[test]
    fn generations_order_by_epoch_first() {
        assert!(generation(2, 1) > generation(1, (1 << EPOCH_SHIFT) - 1));
        assert_eq!(epoch_of(generation(7, 123)), 7);
    }
}
