//! PUBLISH (§3.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, PropertyContext};
use super::wire::{prefixed_len, write_str, Reader};
use super::{write_frame, MqttStr, PacketType, ProtocolVersion, QoS};

/// PUBLISH. `topic` and `payload` are slices of the frame they were decoded from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty only in MQTT 5.0 when a topic alias stands in for it.
    pub topic: MqttStr,
    /// Packet identifier; 0 for QoS 0 and never 0 otherwise.
    pub packet_id: u16,
    /// PUBLISH properties (MQTT 5.0).
    pub properties: Properties,
    /// Application payload, possibly empty.
    pub payload: Bytes,
}

pub(crate) const DUP_FLAG: u8 = 0b1000;
pub(crate) const RETAIN_FLAG: u8 = 0b0001;

pub(crate) fn publish_flags(dup: bool, qos: QoS, retain: bool) -> u8 {
    let mut flags = (qos as u8) << 1;
    if dup {
        flags |= DUP_FLAG;
    }
    if retain {
        flags |= RETAIN_FLAG;
    }
    flags
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
        let dup = flags & DUP_FLAG != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
        }
        let topic = r.string("topic name")?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            let id = r.u16("packet identifier")?;
            if id == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            id
        };
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        let aliased = properties.topic_alias.is_some();
        if !(topic.is_empty() && aliased) {
            core_router::topic::validate_topic_name(&topic)
                .map_err(DecodeError::TopicNameInvalid)?;
        }
        Ok(Publish {
            dup,
            qos,
            retain: flags & RETAIN_FLAG != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    /// Bytes after the fixed header for `version`.
    pub fn body_len(&self, version: ProtocolVersion) -> usize {
        let mut len = prefixed_len(self.topic.as_bytes()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version.is_v5() {
            len += self.properties.encoded_len();
        }
        len
    }

    pub(crate) fn check(&self) -> Result<(), EncodeError> {
        if self.qos != QoS::AtMostOnce && self.packet_id == 0 {
            return Err(EncodeError::InvalidValue(
                "packet identifier 0 with QoS > 0",
            ));
        }
        Ok(())
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.check()?;
        let first = PacketType::Publish.first_byte(publish_flags(self.dup, self.qos, self.retain));
        write_frame(out, first, self.body_len(version), |out| {
            write_str(out, &self.topic)?;
            if self.qos != QoS::AtMostOnce {
                out.put_u16(self.packet_id);
            }
            if version.is_v5() {
                self.properties.encode(out)?;
            }
            out.put_slice(&self.payload);
            Ok(())
        })
    }
}
