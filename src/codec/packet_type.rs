//! The fixed header (§2.1): packet type, flags and remaining length.

use super::error::DecodeError;
use super::wire::read_varint;

/// The 15 control packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15 (MQTT 5.0)
    Auth = 15,
}

impl PacketType {
    fn from_nibble(value: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match value {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The flags every type but PUBLISH must carry (§2.1.3).
    fn required_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// First byte of the fixed header for this type (`flags` only matter for PUBLISH).
    pub fn first_byte(self, publish_flags: u8) -> u8 {
        let flags = if self == PacketType::Publish {
            publish_flags & 0x0f
        } else {
            self.required_flags()
        };
        ((self as u8) << 4) | flags
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    pub header_len: usize,
    /// The remaining length: bytes after the fixed header.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// Parses the fixed header at the start of `buf`.
    ///
    /// `Ok(None)` when `buf` does not yet hold the whole fixed header. The reserved flag bits are
    /// checked and the frame size is compared with `max_packet_size` here, so an oversized packet
    /// is refused before its body is read.
    pub fn parse(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = PacketType::from_nibble(first >> 4)
            .ok_or(DecodeError::Malformed("reserved packet type 0"))?;
        let flags = first & 0x0f;
        if packet_type == PacketType::Publish {
            if (flags >> 1) & 0b11 == 0b11 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
        } else if flags != packet_type.required_flags() {
            return Err(DecodeError::Malformed("reserved fixed-header flags"));
        }
        let Some((remaining, varint_len)) = read_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header = FrameHeader {
            packet_type,
            flags,
            header_len: 1 + varint_len,
            remaining_len: remaining as usize,
        };
        if header.frame_len() > max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size: header.frame_len(),
                max: max_packet_size,
            });
        }
        Ok(Some(header))
    }

    /// The whole frame: fixed header plus remaining length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}
