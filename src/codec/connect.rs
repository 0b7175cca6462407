//! CONNECT (§3.1) and CONNACK (§3.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, PropertyContext};
use super::wire::{prefixed_len, write_binary, write_str, Reader};
use super::{write_frame, MqttStr, PacketType, ProtocolVersion, QoS, ReasonCode, ReasonContext};

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic to publish to.
    pub topic: MqttStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS of the will publish.
    pub qos: QoS,
    /// Retain flag of the will publish.
    pub retain: bool,
    /// Will properties (MQTT 5.0).
    pub properties: Properties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version the client speaks.
    pub protocol: ProtocolVersion,
    /// Clean session (3.1.1) / clean start (5.0).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: MqttStr,
    /// The will, if any.
    pub will: Option<LastWill>,
    /// User name.
    pub username: Option<MqttStr>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5.0).
    pub properties: Properties,
}

const USERNAME_FLAG: u8 = 0x80;
const PASSWORD_FLAG: u8 = 0x40;
const WILL_RETAIN_FLAG: u8 = 0x20;
const WILL_FLAG: u8 = 0x04;
const CLEAN_START_FLAG: u8 = 0x02;
const RESERVED_FLAG: u8 = 0x01;

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        let protocol = match (&name[..], level) {
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT", _) | (b"MQIsdp", _) => {
                return Err(DecodeError::UnsupportedProtocolVersion(level))
            }
            _ => return Err(DecodeError::Malformed("unknown protocol name")),
        };
        let flags = r.u8("connect flags")?;
        if flags & RESERVED_FLAG != 0 {
            return Err(DecodeError::Malformed("reserved connect flag set"));
        }
        let will_qos = (flags >> 3) & 0b11;
        let has_will = flags & WILL_FLAG != 0;
        if !has_will && (will_qos != 0 || flags & WILL_RETAIN_FLAG != 0) {
            return Err(DecodeError::Malformed("will QoS or retain without a will"));
        }
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
        let has_username = flags & USERNAME_FLAG != 0;
        let has_password = flags & PASSWORD_FLAG != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::Malformed("password without user name"));
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if protocol.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                Properties::decode(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string("will topic")?;
            core_router::topic::validate_topic_name(&topic)
                .map_err(DecodeError::TopicNameInvalid)?;
            let payload = r.binary("will payload")?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: flags & WILL_RETAIN_FLAG != 0,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary("password")?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & CLEAN_START_FLAG != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let name_len = if self.protocol == ProtocolVersion::V3_1 {
            6
        } else {
            4
        };
        let mut len = 2 + name_len + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len();
        }
        len += prefixed_len(self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.encoded_len();
            }
            len += prefixed_len(will.topic.as_bytes()) + prefixed_len(&will.payload);
        }
        if let Some(username) = &self.username {
            len += prefixed_len(username.as_bytes());
        }
        if let Some(password) = &self.password {
            len += prefixed_len(password);
        }
        len
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.password.is_some() && self.username.is_none() && !self.protocol.is_v5() {
            return Err(EncodeError::InvalidValue("password without user name"));
        }
        let first = PacketType::Connect.first_byte(0);
        write_frame(out, first, self.body_len(), |out| {
            let name = if self.protocol == ProtocolVersion::V3_1 {
                "MQIsdp"
            } else {
                "MQTT"
            };
            write_str(out, name)?;
            out.put_u8(self.protocol.level());
            let mut flags = 0u8;
            if self.username.is_some() {
                flags |= USERNAME_FLAG;
            }
            if self.password.is_some() {
                flags |= PASSWORD_FLAG;
            }
            if let Some(will) = &self.will {
                flags |= WILL_FLAG | ((will.qos as u8) << 3);
                if will.retain {
                    flags |= WILL_RETAIN_FLAG;
                }
            }
            if self.clean_start {
                flags |= CLEAN_START_FLAG;
            }
            out.put_u8(flags);
            out.put_u16(self.keep_alive);
            if self.protocol.is_v5() {
                self.properties.encode(out)?;
            }
            write_str(out, &self.client_id)?;
            if let Some(will) = &self.will {
                if self.protocol.is_v5() {
                    will.properties.encode(out)?;
                }
                write_str(out, &will.topic)?;
                write_binary(out, &will.payload)?;
            }
            if let Some(username) = &self.username {
                write_str(out, username)?;
            }
            if let Some(password) = &self.password {
                write_binary(out, password)?;
            }
            Ok(())
        })
    }
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The outcome; written as a 3.1.1 return code for older clients
    /// ([`ReasonCode::to_v3_connack`]).
    pub reason: ReasonCode,
    /// CONNACK properties (MQTT 5.0).
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8("connack flags")?;
        if flags & 0xfe != 0 {
            return Err(DecodeError::Malformed("reserved connack flags"));
        }
        let code = r.u8("connack code")?;
        let (reason, properties) = if version.is_v5() {
            let reason = ReasonCode::from_u8(code)
                .filter(|reason| reason.allowed_in(ReasonContext::ConnAck))
                .ok_or(DecodeError::Malformed("invalid CONNACK reason code"))?;
            (reason, Properties::decode(r, PropertyContext::ConnAck)?)
        } else {
            let reason = ReasonCode::from_v3_connack(code)
                .ok_or(DecodeError::Malformed("invalid CONNACK return code"))?;
            (reason, Properties::default())
        };
        let session_present = flags & 1 != 0;
        if session_present && reason != ReasonCode::Success {
            return Err(DecodeError::Protocol(
                "session present on a refused connection",
            ));
        }
        Ok(ConnAck {
            session_present,
            reason,
            properties,
        })
    }

    pub(crate) fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        let body_len = 2 + if v5 { self.properties.encoded_len() } else { 0 };
        write_frame(out, PacketType::ConnAck.first_byte(0), body_len, |out| {
            out.put_u8(u8::from(
                self.session_present && self.reason == ReasonCode::Success,
            ));
            if v5 {
                out.put_u8(self.reason.as_u8());
                self.properties.encode(out)
            } else {
                out.put_u8(self.reason.to_v3_connack());
                Ok(())
            }
        })
    }
}
