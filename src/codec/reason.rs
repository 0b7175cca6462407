//! MQTT 5.0 reason codes (§2.4) and their MQTT 3.1/3.1.1 equivalents.

use std::fmt;

macro_rules! reason_codes {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        /// An MQTT 5.0 reason code. The same values serve as MQTT 3.1.1 SUBACK return codes
        /// (0x00–0x02, 0x80); CONNACK maps them with [`ReasonCode::to_v3_connack`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $(#[doc = $text] $name = $value,)*
        }

        impl ReasonCode {
            /// The code for a byte, if it is one MQTT 5.0 defines.
            pub fn from_u8(value: u8) -> Option<ReasonCode> {
                match value {
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }

            /// The specification's name for this code.
            pub fn description(self) -> &'static str {
                match self {
                    $(ReasonCode::$name => $text,)*
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00, "Success / Normal disconnection / Granted QoS 0";
    GrantedQos1 = 0x01, "Granted QoS 1";
    GrantedQos2 = 0x02, "Granted QoS 2";
    DisconnectWithWill = 0x04, "Disconnect with Will Message";
    NoMatchingSubscribers = 0x10, "No matching subscribers";
    NoSubscriptionExisted = 0x11, "No subscription existed";
    ContinueAuthentication = 0x18, "Continue authentication";
    ReAuthenticate = 0x19, "Re-authenticate";
    UnspecifiedError = 0x80, "Unspecified error";
    MalformedPacket = 0x81, "Malformed Packet";
    ProtocolError = 0x82, "Protocol Error";
    ImplementationSpecificError = 0x83, "Implementation specific error";
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version";
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid";
    BadUserNameOrPassword = 0x86, "Bad User Name or Password";
    NotAuthorized = 0x87, "Not authorized";
    ServerUnavailable = 0x88, "Server unavailable";
    ServerBusy = 0x89, "Server busy";
    Banned = 0x8A, "Banned";
    ServerShuttingDown = 0x8B, "Server shutting down";
    BadAuthenticationMethod = 0x8C, "Bad authentication method";
    KeepAliveTimeout = 0x8D, "Keep Alive timeout";
    SessionTakenOver = 0x8E, "Session taken over";
    TopicFilterInvalid = 0x8F, "Topic Filter invalid";
    TopicNameInvalid = 0x90, "Topic Name invalid";
    PacketIdentifierInUse = 0x91, "Packet Identifier in use";
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found";
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded";
    TopicAliasInvalid = 0x94, "Topic Alias invalid";
    PacketTooLarge = 0x95, "Packet too large";
    MessageRateTooHigh = 0x96, "Message rate too high";
    QuotaExceeded = 0x97, "Quota exceeded";
    AdministrativeAction = 0x98, "Administrative action";
    PayloadFormatInvalid = 0x99, "Payload format invalid";
    RetainNotSupported = 0x9A, "Retain not supported";
    QosNotSupported = 0x9B, "QoS not supported";
    UseAnotherServer = 0x9C, "Use another server";
    ServerMoved = 0x9D, "Server moved";
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported";
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded";
    MaximumConnectTime = 0xA0, "Maximum connect time";
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported";
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported";
}

/// Which packet a reason code appears in: each allows its own subset (MQTT 5.0 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonContext {
    /// CONNACK.
    ConnAck,
    /// PUBACK and PUBREC.
    PubAckOrRec,
    /// PUBREL and PUBCOMP.
    PubRelOrComp,
    /// SUBACK, one per filter.
    SubAck,
    /// UNSUBACK, one per filter.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl ReasonCode {
    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// True for 0x80 and above.
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// Whether the specification allows this code in `context`.
    pub fn allowed_in(self, context: ReasonContext) -> bool {
        use ReasonCode::*;
        match context {
            ReasonContext::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QosNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            ReasonContext::PubAckOrRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            ReasonContext::PubRelOrComp => matches!(self, Success | PacketIdentifierNotFound),
            ReasonContext::SubAck => matches!(
                self,
                Success
                    | GrantedQos1
                    | GrantedQos2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            ReasonContext::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWill
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QosNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::Auth => {
                matches!(self, Success | ContinueAuthentication | ReAuthenticate)
            }
        }
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code (§3.2.2.3) closest to this reason.
    pub fn to_v3_connack(self) -> u8 {
        use ReasonCode::*;
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            NotAuthorized | Banned => 5,
            _ => 3,
        }
    }

    /// The reason for an MQTT 3.1/3.1.1 CONNACK return code.
    pub fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code: granted QoS or 0x80 for any failure.
    pub fn to_v3_suback(self) -> u8 {
        match self {
            ReasonCode::Success | ReasonCode::GrantedQos1 | ReasonCode::GrantedQos2 => self.as_u8(),
            _ => 0x80,
        }
    }
}

// The variants come from a macro, where `#[default]` cannot be put on one of them.
#[allow(clippy::derivable_impls)]
impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::Success
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X} {}", self.as_u8(), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_byte_round_trips() {
        let mut defined = 0;
        for byte in 0..=255u8 {
            if let Some(code) = ReasonCode::from_u8(byte) {
                assert_eq!(code.as_u8(), byte);
                defined += 1;
            }
        }
        assert_eq!(defined, 43);
    }

    #[test]
    fn contexts_follow_the_spec() {
        assert!(ReasonCode::NoMatchingSubscribers.allowed_in(ReasonContext::PubAckOrRec));
        assert!(!ReasonCode::NoMatchingSubscribers.allowed_in(ReasonContext::PubRelOrComp));
        assert!(ReasonCode::PacketIdentifierNotFound.allowed_in(ReasonContext::PubRelOrComp));
        assert!(ReasonCode::SessionTakenOver.allowed_in(ReasonContext::Disconnect));
        assert!(!ReasonCode::SessionTakenOver.allowed_in(ReasonContext::ConnAck));
        assert!(ReasonCode::GrantedQos2.allowed_in(ReasonContext::SubAck));
        assert!(ReasonCode::ReAuthenticate.allowed_in(ReasonContext::Auth));
        assert!(!ReasonCode::ContinueAuthentication.allowed_in(ReasonContext::Disconnect));
    }

    #[test]
    fn v3_connack_mapping_is_reversible() {
        for code in 0..=5u8 {
            let reason = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(reason.to_v3_connack(), code);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
    }
}
