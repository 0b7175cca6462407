//! MQTT 5.0 properties (§2.2.2): every identifier with its type, the packets it may appear in,
//! the once-only rule, and the value rules the specification puts on it.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::wire::{prefixed_len, varint_len, write_binary, write_str, write_varint, Reader};
use super::{MqttStr, QoS};

/// The packet (or will) a property block belongs to: each allows its own set of properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT.
    Connect,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// The will properties inside CONNECT.
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where each property identifier may appear (MQTT 5.0 §2.2.2.2, table 2-4).
fn allowed_contexts(property: u8) -> Option<u16> {
    use PropertyContext::*;
    let set = |contexts: &[PropertyContext]| contexts.iter().fold(0u16, |acc, c| acc | c.bit());
    Some(match property {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => set(&[Publish, Will]),
        id::SUBSCRIPTION_IDENTIFIER => set(&[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => set(&[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => set(&[ConnAck]),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => set(&[Connect, ConnAck, Auth]),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => set(&[Connect]),
        id::WILL_DELAY_INTERVAL => set(&[Will]),
        id::SERVER_REFERENCE => set(&[ConnAck, Disconnect]),
        id::REASON_STRING => set(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            set(&[Connect, ConnAck])
        }
        id::TOPIC_ALIAS => set(&[Publish]),
        id::USER_PROPERTY => u16::MAX,
        _ => return None,
    })
}

/// Largest subscription identifier (a four-byte variable byte integer).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = super::wire::MAX_VARINT;

/// The properties of one packet, boxed, and nothing at all when there are none: most packets
/// carry none, and the fields are about 400 bytes that every decoded PUBLISH and acknowledgement
/// otherwise moved around inline. Reads go through `Deref` (an empty block reads as
/// [`PropertyFields::EMPTY`]); writes through `DerefMut` allocate the block on first use.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyFields>>);

/// The fields of a property block. Absent properties are `None` or empty; which ones may be
/// present depends on the packet ([`PropertyContext`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyFields {
    /// 0x01: 0 = unspecified bytes, 1 = UTF-8 payload.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<MqttStr>,
    /// 0x08: topic for a response (request/response).
    pub response_topic: Option<MqttStr>,
    /// 0x09: correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers; several may appear in a PUBLISH, order kept.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: seconds a session outlives its connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: the client id the server assigned.
    pub assigned_client_identifier: Option<MqttStr>,
    /// 0x13: keep-alive imposed by the server.
    pub server_keep_alive: Option<u16>,
    /// 0x15: enhanced authentication method.
    pub authentication_method: Option<MqttStr>,
    /// 0x16: enhanced authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: whether the client wants reason strings and user properties on failures.
    pub request_problem_information: Option<bool>,
    /// 0x18: seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client wants response information in CONNACK.
    pub request_response_information: Option<bool>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<MqttStr>,
    /// 0x1C: another server to use.
    pub server_reference: Option<MqttStr>,
    /// 0x1F: human-readable reason.
    pub reason_string: Option<MqttStr>,
    /// 0x21: maximum concurrent QoS 1/2 publishes the sender accepts (never 0).
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias of this PUBLISH (never 0).
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<bool>,
    /// 0x26: user properties, repeatable, order kept.
    pub user_properties: Vec<(MqttStr, MqttStr)>,
    /// 0x27: largest packet the sender accepts (never 0).
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
}

impl PropertyFields {
    /// No property set: what an empty [`Properties`] reads as.
    pub const EMPTY: PropertyFields = PropertyFields {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };
}

static NO_PROPERTIES: PropertyFields = PropertyFields::EMPTY;

impl Properties {
    /// True when no property is set (a check of the box first: most packets have none).
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(PropertyFields::is_empty)
    }

    /// The fields, `None` when no block was ever allocated.
    pub fn get(&self) -> Option<&PropertyFields> {
        self.0.as_deref()
    }

    /// The fields for writing, `None` (and nothing allocated) when there are none: for code on
    /// the path of every packet that only clears what is there.
    pub fn fields_mut(&mut self) -> Option<&mut PropertyFields> {
        self.0.as_deref_mut()
    }

    /// The same properties, without the block when taking fields out of it left it empty.
    pub fn compacted(self) -> Self {
        if self.is_empty() {
            Properties(None)
        } else {
            self
        }
    }

    /// The fields, owned.
    pub fn into_fields(self) -> PropertyFields {
        self.0.map(|boxed| *boxed).unwrap_or_default()
    }

    /// Reads a property block (its length, then the properties) for `context`.
    pub fn decode(reader: &mut Reader, context: PropertyContext) -> Result<Self, DecodeError> {
        if reader.peek_u8() == Some(0) {
            // The common case: an empty block, one zero byte.
            reader.u8("property length")?;
            return Ok(Properties(None));
        }
        PropertyFields::decode(reader, context).map(Properties::from)
    }

    /// Bytes of the whole block: length prefix plus properties.
    pub fn encoded_len(&self) -> usize {
        self.0.as_deref().map_or(1, PropertyFields::encoded_len)
    }

    /// Writes the block (length prefix, then properties in identifier order).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self.0.as_deref() {
            None => {
                out.put_u8(0);
                Ok(())
            }
            Some(fields) => fields.encode(out),
        }
    }
}

impl From<PropertyFields> for Properties {
    fn from(fields: PropertyFields) -> Self {
        if fields.is_empty() {
            Properties(None)
        } else {
            Properties(Some(Box::new(fields)))
        }
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertyFields;

    fn deref(&self) -> &PropertyFields {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyFields {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        PropertyFields::fmt(self, f)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn read_bool(reader: &mut Reader) -> Result<bool, DecodeError> {
    match reader.u8("property value")? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol("boolean property other than 0 or 1")),
    }
}

impl PropertyFields {
    /// True when no property is set. Field by field (every field named, so that a new one
    /// cannot be forgotten), not a comparison with a default: that built and dropped a whole
    /// block per call, on the path of every PUBLISH.
    pub fn is_empty(&self) -> bool {
        let PropertyFields {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        } = self;
        payload_format_indicator.is_none()
            && message_expiry_interval.is_none()
            && content_type.is_none()
            && response_topic.is_none()
            && correlation_data.is_none()
            && session_expiry_interval.is_none()
            && assigned_client_identifier.is_none()
            && server_keep_alive.is_none()
            && authentication_method.is_none()
            && authentication_data.is_none()
            && request_problem_information.is_none()
            && will_delay_interval.is_none()
            && request_response_information.is_none()
            && response_information.is_none()
            && server_reference.is_none()
            && reason_string.is_none()
            && receive_maximum.is_none()
            && topic_alias_maximum.is_none()
            && topic_alias.is_none()
            && maximum_qos.is_none()
            && retain_available.is_none()
            && maximum_packet_size.is_none()
            && wildcard_subscription_available.is_none()
            && subscription_identifier_available.is_none()
            && shared_subscription_available.is_none()
            && subscription_identifiers.is_empty()
            && user_properties.is_empty()
    }

    /// Reads a property block (its length, then the properties) for `context`.
    fn decode(reader: &mut Reader, context: PropertyContext) -> Result<Self, DecodeError> {
        let len = reader.varint("property length")? as usize;
        let mut block = reader.sub_reader(len, "property block longer than the packet")?;
        let mut props = PropertyFields::default();
        while !block.is_empty() {
            let identifier = block.varint("property identifier")?;
            let identifier = u8::try_from(identifier)
                .map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            let allowed = allowed_contexts(identifier)
                .ok_or(DecodeError::Malformed("unknown property identifier"))?;
            if allowed & context.bit() == 0 {
                return Err(DecodeError::Malformed(
                    "property not allowed in this packet",
                ));
            }
            props.decode_one(identifier, &mut block)?;
        }
        Ok(props)
    }

    fn decode_one(&mut self, identifier: u8, r: &mut Reader) -> Result<(), DecodeError> {
        const V: &str = "property value";
        match identifier {
            id::PAYLOAD_FORMAT_INDICATOR => {
                let value = r.u8(V)?;
                if value > 1 {
                    return Err(DecodeError::Protocol(
                        "payload format indicator other than 0 or 1",
                    ));
                }
                set_once(&mut self.payload_format_indicator, value)
            }
            id::MESSAGE_EXPIRY_INTERVAL => set_once(&mut self.message_expiry_interval, r.u32(V)?),
            id::CONTENT_TYPE => set_once(&mut self.content_type, r.string(V)?),
            id::RESPONSE_TOPIC => {
                let topic = r.string(V)?;
                core_router::topic::validate_topic_name(&topic)
                    .map_err(DecodeError::TopicNameInvalid)?;
                set_once(&mut self.response_topic, topic)
            }
            id::CORRELATION_DATA => set_once(&mut self.correlation_data, r.binary(V)?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let value = r.varint(V)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                self.subscription_identifiers.push(value);
                Ok(())
            }
            id::SESSION_EXPIRY_INTERVAL => set_once(&mut self.session_expiry_interval, r.u32(V)?),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                set_once(&mut self.assigned_client_identifier, r.string(V)?)
            }
            id::SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, r.u16(V)?),
            id::AUTHENTICATION_METHOD => set_once(&mut self.authentication_method, r.string(V)?),
            id::AUTHENTICATION_DATA => set_once(&mut self.authentication_data, r.binary(V)?),
            id::REQUEST_PROBLEM_INFORMATION => {
                set_once(&mut self.request_problem_information, read_bool(r)?)
            }
            id::WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, r.u32(V)?),
            id::REQUEST_RESPONSE_INFORMATION => {
                set_once(&mut self.request_response_information, read_bool(r)?)
            }
            id::RESPONSE_INFORMATION => set_once(&mut self.response_information, r.string(V)?),
            id::SERVER_REFERENCE => set_once(&mut self.server_reference, r.string(V)?),
            id::REASON_STRING => set_once(&mut self.reason_string, r.string(V)?),
            id::RECEIVE_MAXIMUM => {
                let value = r.u16(V)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("receive maximum 0"));
                }
                set_once(&mut self.receive_maximum, value)
            }
            id::TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, r.u16(V)?),
            id::TOPIC_ALIAS => {
                let value = r.u16(V)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("topic alias 0"));
                }
                set_once(&mut self.topic_alias, value)
            }
            id::MAXIMUM_QOS => {
                let qos = match r.u8(V)? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::Protocol("maximum QoS other than 0 or 1")),
                };
                set_once(&mut self.maximum_qos, qos)
            }
            id::RETAIN_AVAILABLE => set_once(&mut self.retain_available, read_bool(r)?),
            id::USER_PROPERTY => {
                let key = r.string(V)?;
                let value = r.string(V)?;
                self.user_properties.push((key, value));
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => {
                let value = r.u32(V)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                set_once(&mut self.maximum_packet_size, value)
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut self.wildcard_subscription_available, read_bool(r)?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                set_once(&mut self.subscription_identifier_available, read_bool(r)?)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut self.shared_subscription_available, read_bool(r)?)
            }
            _ => Err(DecodeError::Malformed("unknown property identifier")),
        }
    }

    /// Bytes of the properties themselves, without the length prefix.
    pub fn body_len(&self) -> usize {
        let str_len =
            |s: &Option<MqttStr>| s.as_ref().map_or(0, |s| 1 + prefixed_len(s.as_bytes()));
        let bin_len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| 1 + prefixed_len(b));
        let fixed = |present: bool, size: usize| if present { 1 + size } else { 0 };
        fixed(self.payload_format_indicator.is_some(), 1)
            + fixed(self.message_expiry_interval.is_some(), 4)
            + str_len(&self.content_type)
            + str_len(&self.response_topic)
            + bin_len(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + varint_len(v))
                .sum::<usize>()
            + fixed(self.session_expiry_interval.is_some(), 4)
            + str_len(&self.assigned_client_identifier)
            + fixed(self.server_keep_alive.is_some(), 2)
            + str_len(&self.authentication_method)
            + bin_len(&self.authentication_data)
            + fixed(self.request_problem_information.is_some(), 1)
            + fixed(self.will_delay_interval.is_some(), 4)
            + fixed(self.request_response_information.is_some(), 1)
            + str_len(&self.response_information)
            + str_len(&self.server_reference)
            + str_len(&self.reason_string)
            + fixed(self.receive_maximum.is_some(), 2)
            + fixed(self.topic_alias_maximum.is_some(), 2)
            + fixed(self.topic_alias.is_some(), 2)
            + fixed(self.maximum_qos.is_some(), 1)
            + fixed(self.retain_available.is_some(), 1)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + prefixed_len(k.as_bytes()) + prefixed_len(v.as_bytes()))
                .sum::<usize>()
            + fixed(self.maximum_packet_size.is_some(), 4)
            + fixed(self.wildcard_subscription_available.is_some(), 1)
            + fixed(self.subscription_identifier_available.is_some(), 1)
            + fixed(self.shared_subscription_available.is_some(), 1)
    }

    /// Bytes of the whole block: length prefix plus properties.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        varint_len(body as u32) + body
    }

    /// Writes the block (length prefix, then properties in identifier order).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let body = self.body_len();
        write_varint(out, u32::try_from(body).unwrap_or(u32::MAX))?;
        let put_str = |out: &mut BytesMut, ident: u8, value: &Option<MqttStr>| {
            if let Some(value) = value {
                out.put_u8(ident);
                write_str(out, value)?;
            }
            Ok::<(), EncodeError>(())
        };
        let put_bin = |out: &mut BytesMut, ident: u8, value: &Option<Bytes>| {
            if let Some(value) = value {
                out.put_u8(ident);
                write_binary(out, value)?;
            }
            Ok::<(), EncodeError>(())
        };
        let put_bool = |out: &mut BytesMut, ident: u8, value: Option<bool>| {
            if let Some(value) = value {
                out.put_u8(ident);
                out.put_u8(u8::from(value));
            }
        };
        let put_u16 = |out: &mut BytesMut, ident: u8, value: Option<u16>| {
            if let Some(value) = value {
                out.put_u8(ident);
                out.put_u16(value);
            }
        };
        let put_u32 = |out: &mut BytesMut, ident: u8, value: Option<u32>| {
            if let Some(value) = value {
                out.put_u8(ident);
                out.put_u32(value);
            }
        };
        if let Some(value) = self.payload_format_indicator {
            out.put_u8(id::PAYLOAD_FORMAT_INDICATOR);
            out.put_u8(value);
        }
        put_u32(
            out,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        put_str(out, id::CONTENT_TYPE, &self.content_type)?;
        put_str(out, id::RESPONSE_TOPIC, &self.response_topic)?;
        put_bin(out, id::CORRELATION_DATA, &self.correlation_data)?;
        for &value in &self.subscription_identifiers {
            if value == 0 || value > MAX_SUBSCRIPTION_IDENTIFIER {
                return Err(EncodeError::InvalidValue(
                    "subscription identifier out of range",
                ));
            }
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            write_varint(out, value)?;
        }
        put_u32(
            out,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        put_str(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        put_u16(out, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(out, id::AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_bin(out, id::AUTHENTICATION_DATA, &self.authentication_data)?;
        put_bool(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_u32(out, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_bool(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_str(out, id::RESPONSE_INFORMATION, &self.response_information)?;
        put_str(out, id::SERVER_REFERENCE, &self.server_reference)?;
        put_str(out, id::REASON_STRING, &self.reason_string)?;
        put_u16(out, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(out, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u16(out, id::TOPIC_ALIAS, self.topic_alias);
        if let Some(qos) = self.maximum_qos {
            out.put_u8(id::MAXIMUM_QOS);
            out.put_u8(qos as u8);
        }
        put_bool(out, id::RETAIN_AVAILABLE, self.retain_available);
        for (key, value) in &self.user_properties {
            out.put_u8(id::USER_PROPERTY);
            write_str(out, key)?;
            write_str(out, value)?;
        }
        put_u32(out, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_bool(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        put_bool(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], context: PropertyContext) -> Result<Properties, DecodeError> {
        let mut reader = Reader::new(Bytes::copy_from_slice(bytes));
        Properties::decode(&mut reader, context)
    }

    /// `is_empty` names every field: each one set alone (to a value that equals its type's
    /// default, where that could be mistaken for unset) makes the block non-empty.
    #[test]
    fn any_single_property_makes_the_block_non_empty() {
        assert!(Properties::default().is_empty());
        let setters: Vec<fn(&mut Properties)> = vec![
            |p: &mut Properties| p.payload_format_indicator = Some(0),
            |p: &mut Properties| p.message_expiry_interval = Some(0),
            |p: &mut Properties| p.content_type = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.response_topic = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.correlation_data = Some(Bytes::new()),
            |p: &mut Properties| p.subscription_identifiers = vec![1],
            |p: &mut Properties| p.session_expiry_interval = Some(0),
            |p: &mut Properties| p.assigned_client_identifier = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.server_keep_alive = Some(1),
            |p: &mut Properties| p.authentication_method = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.authentication_data = Some(Bytes::new()),
            |p: &mut Properties| p.request_problem_information = Some(false),
            |p: &mut Properties| p.will_delay_interval = Some(0),
            |p: &mut Properties| p.request_response_information = Some(false),
            |p: &mut Properties| p.response_information = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.server_reference = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.reason_string = Some(MqttStr::from_static("")),
            |p: &mut Properties| p.receive_maximum = Some(1),
            |p: &mut Properties| p.topic_alias_maximum = Some(1),
            |p: &mut Properties| p.topic_alias = Some(1),
            |p: &mut Properties| p.maximum_qos = Some(QoS::AtMostOnce),
            |p: &mut Properties| p.retain_available = Some(false),
            |p: &mut Properties| {
                p.user_properties = vec![(MqttStr::from_static("k"), MqttStr::from_static("v"))]
            },
            |p: &mut Properties| p.maximum_packet_size = Some(0),
            |p: &mut Properties| p.wildcard_subscription_available = Some(false),
            |p: &mut Properties| p.subscription_identifier_available = Some(false),
            |p: &mut Properties| p.shared_subscription_available = Some(false),
        ];
        for (index, set) in setters.iter().enumerate() {
            let mut props = Properties::default();
            set(&mut props);
            assert!(!props.is_empty(), "field {index} set, yet empty: {props:?}");
            assert_ne!(props, Properties::default());
        }
    }

    #[test]
    fn every_property_type_decodes() {
        // Hand-built from MQTT 5.0 §2.2.2.2: byte, four-byte, two-byte, varint, string, binary, pair.
        let bytes = [
            20, // property length
            0x01, 0x01, // payload format indicator = 1 (byte)
            0x02, 0x00, 0x00, 0x00, 0x3c, // message expiry = 60 (four-byte)
            0x23, 0x00, 0x05, // topic alias = 5 (two-byte)
            0x0b, 0x81, 0x01, // subscription identifier = 129 (varint)
            0x03, 0x00, 0x01, b't', // content type "t" (string)
            0x09, 0x00, 0x00, // correlation data, empty (binary)
        ];
        let props = decode(&bytes, PropertyContext::Publish).unwrap();
        assert_eq!(props.payload_format_indicator, Some(1));
        assert_eq!(props.message_expiry_interval, Some(60));
        assert_eq!(props.topic_alias, Some(5));
        assert_eq!(props.subscription_identifiers, vec![129]);
        assert_eq!(props.content_type.as_deref(), Some("t"));
        assert_eq!(props.correlation_data.as_deref(), Some(&b""[..]));
        let mut out = BytesMut::new();
        props.encode(&mut out).unwrap();
        assert_eq!(decode(&out, PropertyContext::Publish).unwrap(), props);
    }

    #[test]
    fn user_properties_repeat_in_order() {
        let bytes = [14, 0x26, 0, 1, b'a', 0, 1, b'2', 0x26, 0, 1, b'a', 0, 0, 0];
        assert!(
            decode(&bytes, PropertyContext::Connect).is_err(),
            "declared 14, holds 13"
        );
        let bytes = [
            14, 0x26, 0, 1, b'a', 0, 1, b'2', 0x26, 0, 1, b'a', 0, 1, b'1',
        ];
        let props = decode(&bytes, PropertyContext::Connect).unwrap();
        let values: Vec<_> = props
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(values, [("a", "2"), ("a", "1")]);
        let mut out = BytesMut::new();
        props.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn duplicates_are_protocol_errors() {
        let bytes = [6, 0x21, 0, 1, 0x21, 0, 2];
        assert_eq!(
            decode(&bytes, PropertyContext::Connect),
            Err(DecodeError::Protocol("property appears more than once"))
        );
        let bytes = [4, 0x0b, 1, 0x0b, 2];
        assert_eq!(
            decode(&bytes, PropertyContext::Publish)
                .unwrap()
                .subscription_identifiers,
            vec![1, 2]
        );
    }

    #[test]
    fn wrong_packet_and_bad_values_are_refused() {
        // Topic alias in CONNECT.
        assert!(matches!(
            decode(&[3, 0x23, 0, 1], PropertyContext::Connect),
            Err(DecodeError::Malformed(_))
        ));
        // Unknown identifier.
        assert!(decode(&[2, 0x7f, 0], PropertyContext::Publish).is_err());
        // Value rules.
        assert!(decode(&[3, 0x21, 0, 0], PropertyContext::Connect).is_err());
        assert!(decode(&[3, 0x23, 0, 0], PropertyContext::Publish).is_err());
        assert!(decode(&[2, 0x0b, 0], PropertyContext::Publish).is_err());
        assert!(decode(&[2, 0x17, 2], PropertyContext::Connect).is_err());
        assert!(decode(&[2, 0x01, 2], PropertyContext::Publish).is_err());
        assert!(decode(&[5, 0x27, 0, 0, 0, 0], PropertyContext::Connect).is_err());
        // Will delay only in will properties.
        assert!(decode(&[5, 0x18, 0, 0, 0, 1], PropertyContext::Connect).is_err());
        assert!(decode(&[5, 0x18, 0, 0, 0, 1], PropertyContext::Will).is_ok());
    }

    #[test]
    fn empty_block() {
        assert!(decode(&[0], PropertyContext::Ack).unwrap().is_empty());
        let mut out = BytesMut::new();
        Properties::default().encode(&mut out).unwrap();
        assert_eq!(&out[..], &[0]);
    }
}
