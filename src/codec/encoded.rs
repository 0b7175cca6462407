//! Serialise once, send many: a PUBLISH encoded for one (protocol version, QoS, retain) layout,
//! written to any number of subscribers with only the packet identifier and DUP flag patched.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::EncodeError;
use super::publish::{publish_flags, DUP_FLAG};
use super::wire::{varint_len, write_str, write_varint};
use super::{MqttStr, OutputSink, PacketType, Properties, ProtocolVersion, Publish, QoS};

/// What an encoding needs of a PUBLISH, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct PublishParts<'a> {
    /// Topic name.
    pub topic: &'a MqttStr,
    /// Properties (encoded for MQTT 5.0 only).
    pub properties: &'a Properties,
    /// Payload (the encoding keeps a handle on it).
    pub payload: &'a Bytes,
}

/// A PUBLISH split into an encoded head (fixed header, topic, packet identifier placeholder,
/// properties) and the payload, which stays the publisher's buffer: zero-copy up to the socket
/// write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPublish {
    head: Bytes,
    payload: Bytes,
    packet_id_offset: Option<usize>,
}

impl EncodedPublish {
    /// Encodes `publish` with the given QoS and retain flag (the subscriber's layout) for
    /// `version`. `publish.packet_id` and `publish.dup` are ignored: they are set per write.
    pub fn new(
        publish: &Publish,
        version: ProtocolVersion,
        qos: QoS,
        retain: bool,
    ) -> Result<Self, EncodeError> {
        let parts = PublishParts {
            topic: &publish.topic,
            properties: &publish.properties,
            payload: &publish.payload,
        };
        Self::from_parts(parts, version, qos, retain)
    }

    /// [`EncodedPublish::new`] from borrowed parts: no `Publish` is built (and no reference
    /// count of topic or payload touched but the one the encoding keeps).
    pub fn from_parts(
        parts: PublishParts<'_>,
        version: ProtocolVersion,
        qos: QoS,
        retain: bool,
    ) -> Result<Self, EncodeError> {
        let publish = parts;
        let mut head_body = 2 + publish.topic.len();
        if qos != QoS::AtMostOnce {
            head_body += 2;
        }
        if version.is_v5() {
            head_body += publish.properties.encoded_len();
        }
        let remaining = head_body + publish.payload.len();
        let remaining_u32 = u32::try_from(remaining).map_err(|_| EncodeError::PacketTooLarge {
            size: remaining,
            max: super::wire::MAX_VARINT as usize,
        })?;
        let mut head = BytesMut::with_capacity(1 + varint_len(remaining_u32) + head_body);
        head.put_u8(PacketType::Publish.first_byte(publish_flags(false, qos, retain)));
        write_varint(&mut head, remaining_u32)?;
        write_str(&mut head, publish.topic)?;
        let packet_id_offset = if qos != QoS::AtMostOnce {
            let offset = head.len();
            head.put_u16(0);
            Some(offset)
        } else {
            None
        };
        if version.is_v5() {
            publish.properties.encode(&mut head)?;
        }
        Ok(EncodedPublish {
            head: head.freeze(),
            payload: publish.payload.clone(),
            packet_id_offset,
        })
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// Never true: a PUBLISH has at least a fixed header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The encoded head for QoS 0 (identical for every subscriber): can be queued as is.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The payload, shared with the publisher's buffer.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Appends the packet with `packet_id` (ignored for QoS 0) and the DUP flag.
    pub fn write_to(&self, out: &mut BytesMut, packet_id: u16, dup: bool) {
        out.reserve(self.len());
        self.write_into(out, packet_id, dup);
    }

    /// [`EncodedPublish::write_to`] for any output: into an [`Output`](super::Output), a large
    /// payload is referenced instead of copied.
    pub fn write_into(&self, out: &mut impl OutputSink, packet_id: u16, dup: bool) {
        let bytes = out.bytes();
        let start = bytes.len();
        bytes.put_slice(&self.head);
        if let Some(offset) = self.packet_id_offset {
            bytes[start + offset..start + offset + 2].copy_from_slice(&packet_id.to_be_bytes());
            if dup {
                bytes[start] |= DUP_FLAG;
            }
        }
        out.put_payload(&self.payload);
    }
}
