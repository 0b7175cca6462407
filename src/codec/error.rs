//! Typed codec errors. Each decode error knows the reason code the broker must answer with.

use core_router::topic::TopicError;

use super::ReasonCode;

/// Why bytes from the network could not be decoded. Incomplete input is *not* an error: the
/// decoder returns `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet grammar (MQTT 5.0 reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that break a protocol rule (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces a packet over the negotiated maximum (reason 0x95). Raised
    /// before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Announced size: fixed header plus remaining length.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT with a protocol level this server does not speak (CONNACK 0x84, or 0x01 in 3.1.1).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// A PUBLISH or will topic name that breaks the topic rules (reason 0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(TopicError),
    /// A SUBSCRIBE or UNSUBSCRIBE filter that breaks the topic rules (reason 0x8F).
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(TopicError),
}

impl DecodeError {
    /// The reason code for the CONNACK or DISCONNECT this error calls for.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TopicNameInvalid,
            DecodeError::TopicFilterInvalid(_) => ReasonCode::TopicFilterInvalid,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed a limit (the protocol's or the peer's maximum packet size).
    #[error("encoded packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Size the packet would have.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A string or binary field over 65,535 bytes.
    #[error("field of {0} bytes does not fit a two-byte length")]
    FieldTooLong(usize),
    /// The packet cannot be expressed in the target protocol version (e.g. AUTH in 3.1.1).
    #[error("{0} does not exist in this protocol version")]
    NotInVersion(&'static str),
    /// A field holds a value the protocol forbids (e.g. packet identifier 0 with QoS 1).
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
}
