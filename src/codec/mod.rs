//! The MQTT 3.1 / 3.1.1 / 5.0 codec: sans-I/O, incremental and zero-copy.
//!
//! - [`decode`] takes bytes from a read buffer and returns a complete [`Packet`], `Ok(None)` when
//!   more bytes are needed, or a [`DecodeError`] carrying the reason code to answer with. The
//!   maximum packet size is checked from the fixed header, before the body is buffered.
//! - Topic names and payloads of decoded packets are [`Bytes`] slices of the read buffer: no copy.
//! - [`Packet::encode`] writes any packet for a protocol version; MQTT 5.0-only fields are dropped
//!   when writing 3.1/3.1.1. [`EncodedPublish`] serialises a PUBLISH once per layout and writes it
//!   to many subscribers, patching only the packet identifier.

mod ack;
mod connect;
mod encoded;
mod error;
mod output;
mod packet_type;
mod properties;
mod publish;
mod reason;
mod subscribe;
mod text;
pub mod wire;

pub use ack::{Ack, Auth, Disconnect};
pub use connect::{ConnAck, Connect, LastWill};
pub use encoded::{EncodedPublish, PublishParts};
pub use error::{DecodeError, EncodeError};
pub use output::{Output, OutputSink, SHARE_MIN};
pub use packet_type::{FrameHeader, PacketType};
pub use properties::{Properties, PropertyContext, PropertyFields, MAX_SUBSCRIPTION_IDENTIFIER};
pub use publish::Publish;
pub use reason::{ReasonCode, ReasonContext};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use text::MqttStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for 0, 1 or 2; `None` for 3 (which is malformed wherever it appears).
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Decodes the body of one complete frame. `version` is the connection's protocol version
    /// (ignored for CONNECT, which carries its own).
    pub fn decode_frame(
        header: FrameHeader,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let flags = header.flags;
        let mut reader = wire::Reader::new(body);
        let r = &mut reader;
        let packet = match header.packet_type {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(r)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
            PacketType::Publish => Packet::Publish(Publish::decode(flags, r, version)?),
            PacketType::PubAck => {
                Packet::PubAck(Ack::decode(r, version, ReasonContext::PubAckOrRec)?)
            }
            PacketType::PubRec => {
                Packet::PubRec(Ack::decode(r, version, ReasonContext::PubAckOrRec)?)
            }
            PacketType::PubRel => {
                Packet::PubRel(Ack::decode(r, version, ReasonContext::PubRelOrComp)?)
            }
            PacketType::PubComp => {
                Packet::PubComp(Ack::decode(r, version, ReasonContext::PubRelOrComp)?)
            }
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
            PacketType::Auth => {
                if !version.is_v5() {
                    return Err(DecodeError::Malformed("AUTH before MQTT 5.0"));
                }
                Packet::Auth(Auth::decode(r)?)
            }
        };
        if !reader.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after the packet"));
        }
        Ok(packet)
    }

    /// Appends the packet, encoded for `version`, to `out`.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(connect) => connect.encode(out),
            Packet::ConnAck(connack) => connack.encode(version, out),
            Packet::Publish(publish) => publish.encode(version, out),
            Packet::PubAck(ack) => ack.encode(PacketType::PubAck, version, out),
            Packet::PubRec(ack) => ack.encode(PacketType::PubRec, version, out),
            Packet::PubRel(ack) => ack.encode(PacketType::PubRel, version, out),
            Packet::PubComp(ack) => ack.encode(PacketType::PubComp, version, out),
            Packet::Subscribe(subscribe) => subscribe.encode(version, out),
            Packet::SubAck(suback) => suback.encode(version, out),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.encode(version, out),
            Packet::UnsubAck(unsuback) => unsuback.encode(version, out),
            Packet::PingReq => write_frame(out, PacketType::PingReq.first_byte(0), 0, |_| Ok(())),
            Packet::PingResp => write_frame(out, PacketType::PingResp.first_byte(0), 0, |_| Ok(())),
            Packet::Disconnect(disconnect) => disconnect.encode(version, out),
            Packet::Auth(auth) => {
                if !version.is_v5() {
                    return Err(EncodeError::NotInVersion("AUTH"));
                }
                auth.encode(out)
            }
        }
    }
}

/// Decodes one packet from the front of `buf`, consuming its bytes.
///
/// `Ok(None)` means the frame is incomplete; nothing is consumed. A frame larger than
/// `max_packet_size` (fixed header included) is refused from its fixed header alone.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FrameHeader::parse(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    if header.remaining_len == 2 {
        // An acknowledgement in its short form (a packet identifier alone, any version) keeps
        // no bytes: decoded in place, without a frame handle on the buffer to take and drop.
        let ack = |packet_id: u16| -> Result<Ack, DecodeError> {
            if packet_id == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            Ok(Ack::new(packet_id))
        };
        let short_ack: Option<fn(Ack) -> Packet> = match header.packet_type {
            PacketType::PubAck => Some(Packet::PubAck),
            PacketType::PubRec => Some(Packet::PubRec),
            PacketType::PubRel => Some(Packet::PubRel),
            PacketType::PubComp => Some(Packet::PubComp),
            _ => None,
        };
        if let Some(packet) = short_ack {
            let at = header.header_len;
            let packet_id = u16::from_be_bytes([buf[at], buf[at + 1]]);
            buf.advance(header.frame_len());
            return ack(packet_id).map(|ack| Some(packet(ack)));
        }
    }
    let mut frame = buf.split_to(header.frame_len());
    // Advanced before freezing: no second handle on the buffer for the header alone.
    frame.advance(header.header_len);
    Packet::decode_frame(header, frame.freeze(), version).map(Some)
}

/// Writes a fixed header with `body_len` as remaining length, then the body.
pub(crate) fn write_frame(
    out: &mut BytesMut,
    first_byte: u8,
    body_len: usize,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let remaining = u32::try_from(body_len).map_err(|_| EncodeError::PacketTooLarge {
        size: body_len,
        max: wire::MAX_VARINT as usize,
    })?;
    out.reserve(1 + wire::varint_len(remaining) + body_len);
    out.put_u8(first_byte);
    wire::write_varint(out, remaining)?;
    let start = out.len();
    body(out)?;
    debug_assert_eq!(out.len() - start, body_len, "body length mismatch");
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
