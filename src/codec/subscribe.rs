//! SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11).

use bytes::{BufMut, BytesMut};
use core_router::topic::{parse_shared, validate_topic_filter};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, PropertyContext};
use super::wire::{prefixed_len, write_str, Reader};
use super::{write_frame, MqttStr, PacketType, ProtocolVersion, QoS, ReasonCode, ReasonContext};

/// When retained messages are sent for a new subscription (MQTT 5.0 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendOnSubscribe = 0,
    /// Send them only if the subscription did not already exist.
    SendIfNew = 1,
    /// Never send them on subscribe.
    DoNotSend = 2,
}

/// Subscription options (the byte after each filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber wants.
    pub qos: QoS,
    /// Do not deliver the subscriber's own publishes back to it (MQTT 5.0).
    pub no_local: bool,
    /// Keep the publisher's retain flag on delivery (MQTT 5.0).
    pub retain_as_published: bool,
    /// Retained message behaviour on subscribe (MQTT 5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a QoS (all MQTT 3.1.1 can express).
    pub fn with_qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        if !version.is_v5() {
            if byte & 0xfc != 0 {
                return Err(DecodeError::Malformed("reserved subscription option bits"));
            }
            return Ok(SubscriptionOptions::with_qos(qos));
        }
        if byte & 0xc0 != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Malformed("retain handling 3")),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            if self.no_local {
                byte |= 0b100;
            }
            if self.retain_as_published {
                byte |= 0b1000;
            }
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

fn read_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16("packet identifier")?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

fn read_filter(r: &mut Reader) -> Result<MqttStr, DecodeError> {
    let filter = r.string("topic filter")?;
    validate_topic_filter(&filter).map_err(DecodeError::TopicFilterInvalid)?;
    Ok(filter)
}

fn check_packet_id(packet_id: u16) -> Result<(), EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::InvalidValue("packet identifier 0"));
    }
    Ok(())
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// Properties (MQTT 5.0): at most one subscription identifier, user properties.
    pub properties: Properties,
    /// At least one (filter, options) pair, in order.
    pub filters: Vec<(MqttStr, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = if version.is_v5() {
            let properties = Properties::decode(r, PropertyContext::Subscribe)?;
            if properties.subscription_identifiers.len() > 1 {
                return Err(DecodeError::Protocol(
                    "more than one subscription identifier",
                ));
            }
            properties
        } else {
            Properties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = read_filter(r)?;
            let options = SubscriptionOptions::decode(r.u8("subscription options")?, version)?;
            if options.no_local && parse_shared(&filter).is_some() {
                return Err(DecodeError::Protocol("no local on a shared subscription"));
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        check_packet_id(self.packet_id)?;
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidValue(
                "SUBSCRIBE without a topic filter",
            ));
        }
        let mut body_len = 2 + self
            .filters
            .iter()
            .map(|(f, _)| prefixed_len(f.as_bytes()) + 1)
            .sum::<usize>();
        if version.is_v5() {
            body_len += self.properties.encoded_len();
        }
        write_frame(out, PacketType::Subscribe.first_byte(0), body_len, |out| {
            out.put_u16(self.packet_id);
            if version.is_v5() {
                self.properties.encode(out)?;
            }
            for (filter, options) in &self.filters {
                write_str(out, filter)?;
                out.put_u8(options.encode(version));
            }
            Ok(())
        })
    }
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// Properties (MQTT 5.0).
    pub properties: Properties,
    /// One result per filter, in order: granted QoS or an error.
    pub reasons: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::SubAck)?
        } else {
            Properties::default()
        };
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let byte = r.u8("SUBACK code")?;
            let reason = ReasonCode::from_u8(byte)
                .filter(|reason| {
                    if version.is_v5() {
                        reason.allowed_in(ReasonContext::SubAck)
                    } else {
                        matches!(byte, 0 | 1 | 2 | 0x80)
                    }
                })
                .ok_or(DecodeError::Malformed("invalid SUBACK code"))?;
            reasons.push(reason);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        check_packet_id(self.packet_id)?;
        let mut body_len = 2 + self.reasons.len();
        if version.is_v5() {
            body_len += self.properties.encoded_len();
        }
        write_frame(out, PacketType::SubAck.first_byte(0), body_len, |out| {
            out.put_u16(self.packet_id);
            if version.is_v5() {
                self.properties.encode(out)?;
                for reason in &self.reasons {
                    out.put_u8(reason.as_u8());
                }
            } else {
                for reason in &self.reasons {
                    out.put_u8(reason.to_v3_suback());
                }
            }
            Ok(())
        })
    }
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// Properties (MQTT 5.0): user properties.
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<MqttStr>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Unsubscribe)?
        } else {
            Properties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(read_filter(r)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        check_packet_id(self.packet_id)?;
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidValue(
                "UNSUBSCRIBE without a topic filter",
            ));
        }
        let mut body_len = 2 + self
            .filters
            .iter()
            .map(|f| prefixed_len(f.as_bytes()))
            .sum::<usize>();
        if version.is_v5() {
            body_len += self.properties.encoded_len();
        }
        write_frame(
            out,
            PacketType::Unsubscribe.first_byte(0),
            body_len,
            |out| {
                out.put_u16(self.packet_id);
                if version.is_v5() {
                    self.properties.encode(out)?;
                }
                for filter in &self.filters {
                    write_str(out, filter)?;
                }
                Ok(())
            },
        )
    }
}

/// UNSUBACK. MQTT 3.1.1 carries only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// Properties (MQTT 5.0).
    pub properties: Properties,
    /// One result per filter (MQTT 5.0; empty in 3.1.1).
    pub reasons: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        if !version.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                ..Default::default()
            });
        }
        let properties = Properties::decode(r, PropertyContext::UnsubAck)?;
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let reason = ReasonCode::from_u8(r.u8("UNSUBACK code")?)
                .filter(|reason| reason.allowed_in(ReasonContext::UnsubAck))
                .ok_or(DecodeError::Malformed("invalid UNSUBACK code"))?;
            reasons.push(reason);
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        check_packet_id(self.packet_id)?;
        let body_len = if version.is_v5() {
            2 + self.properties.encoded_len() + self.reasons.len()
        } else {
            2
        };
        write_frame(out, PacketType::UnsubAck.first_byte(0), body_len, |out| {
            out.put_u16(self.packet_id);
            if version.is_v5() {
                self.properties.encode(out)?;
                for reason in &self.reasons {
                    out.put_u8(reason.as_u8());
                }
            }
            Ok(())
        })
    }
}
