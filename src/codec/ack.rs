//! PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4–3.7), DISCONNECT (§3.14) and AUTH (§3.15): a reason
//! code and properties that MQTT 5.0 lets the sender omit when they are the defaults.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, PropertyContext};
use super::wire::Reader;
use super::{write_frame, PacketType, ProtocolVersion, ReasonCode, ReasonContext};

fn decode_reason(r: &mut Reader, context: ReasonContext) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(r.u8("reason code")?)
        .filter(|reason| reason.allowed_in(context))
        .ok_or(DecodeError::Malformed(
            "reason code not valid for this packet",
        ))
}

/// The shared body of PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Packet identifier being acknowledged (never 0).
    pub packet_id: u16,
    /// Outcome (MQTT 5.0; always success in 3.1.1).
    pub reason: ReasonCode,
    /// Properties (MQTT 5.0): reason string and user properties.
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: u16) -> Self {
        Ack {
            packet_id,
            ..Ack::default()
        }
    }

    pub(crate) fn decode(
        r: &mut Reader,
        version: ProtocolVersion,
        context: ReasonContext,
    ) -> Result<Self, DecodeError> {
        let packet_id = r.u16("packet identifier")?;
        if packet_id == 0 {
            return Err(DecodeError::Protocol("packet identifier 0"));
        }
        let mut ack = Ack::new(packet_id);
        if version.is_v5() && !r.is_empty() {
            ack.reason = decode_reason(r, context)?;
            if !r.is_empty() {
                ack.properties = Properties::decode(r, PropertyContext::Ack)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn encode(
        &self,
        packet_type: PacketType,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::InvalidValue("packet identifier 0"));
        }
        let with_props = version.is_v5() && !self.properties.is_empty();
        let with_reason = version.is_v5() && (with_props || self.reason != ReasonCode::Success);
        let body_len = 2
            + usize::from(with_reason)
            + if with_props {
                self.properties.encoded_len()
            } else {
                0
            };
        write_frame(out, packet_type.first_byte(0), body_len, |out| {
            out.put_u16(self.packet_id);
            if with_reason {
                out.put_u8(self.reason.as_u8());
            }
            if with_props {
                self.properties.encode(out)?;
            }
            Ok(())
        })
    }
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why (MQTT 5.0); normal disconnection in 3.1.1.
    pub reason: ReasonCode,
    /// Properties (MQTT 5.0): session expiry, reason string, server reference, user properties.
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut disconnect = Disconnect::default();
        if version.is_v5() && !r.is_empty() {
            disconnect.reason = decode_reason(r, ReasonContext::Disconnect)?;
            if !r.is_empty() {
                disconnect.properties = Properties::decode(r, PropertyContext::Disconnect)?;
            }
        }
        Ok(disconnect)
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let with_reason =
            version.is_v5() && (!self.properties.is_empty() || self.reason != ReasonCode::Success);
        // The property length may be left out after a reason code (3.14.2.2.1), but some
        // clients (rumqttc 0.24) then wait for it and never see the reason: always write it.
        let with_props = with_reason;
        let body_len = usize::from(with_reason)
            + if with_props {
                self.properties.encoded_len()
            } else {
                0
            };
        write_frame(out, PacketType::Disconnect.first_byte(0), body_len, |out| {
            if with_reason {
                out.put_u8(self.reason.as_u8());
            }
            if with_props {
                self.properties.encode(out)?;
            }
            Ok(())
        })
    }
}

/// AUTH (MQTT 5.0 enhanced authentication).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, continue authentication or re-authenticate.
    pub reason: ReasonCode,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut auth = Auth::default();
        if !r.is_empty() {
            auth.reason = decode_reason(r, ReasonContext::Auth)?;
            if !r.is_empty() {
                auth.properties = Properties::decode(r, PropertyContext::Auth)?;
            }
        }
        Ok(auth)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let short = self.reason == ReasonCode::Success && self.properties.is_empty();
        let body_len = if short {
            0
        } else {
            1 + self.properties.encoded_len()
        };
        write_frame(out, PacketType::Auth.first_byte(0), body_len, |out| {
            if !short {
                out.put_u8(self.reason.as_u8());
                self.properties.encode(out)?;
            }
            Ok(())
        })
    }
}
