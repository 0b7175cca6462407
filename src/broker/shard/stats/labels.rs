//! The label values of the per-reason counter families: small fieldless enums whose variants
//! index fixed counter arrays in [`super::ShardStats`].

use crate::codec::ReasonCode;

/// Defines a fieldless enum whose variants index a counter array, with each variant's label
/// value (`ALL` lists them in index order, `COUNT` is the array length).
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in index order.
            pub const ALL: [$name; [$($label),*].len()] = [$($name::$variant),*];
            /// Number of variants (the length of the counter array it indexes).
            pub const COUNT: usize = Self::ALL.len();
            /// The label values, in index order.
            pub const LABELS: [&'static str; Self::COUNT] = [$($label),*];

            /// The value of the `reason` label.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }

            /// The index in a counter array.
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum! {
    /// Why a message was not delivered to a subscriber (`shardmq_messages_dropped_total`).
    pub enum DropReason {
        /// A session's queue was at `max_queued_messages` / `max_queued_bytes` (or a moving
        /// session's in-transit bound).
        QueueFull => "queue_full",
        /// QoS 0 for a client that is offline or over its write-buffer limit.
        Qos0SlowOrOffline => "qos0_slow_or_offline",
        /// The message expired (MQTT 5.0 message expiry interval) before it could be sent.
        Expired => "expired",
        /// Larger than the subscriber's maximum packet size (or too large to re-encode).
        TooLarge => "too_large",
        /// Refused by the authorization hook: a PUBLISH or will the publisher may not send, a
        /// delivery the subscriber may not read.
        NotAuthorized => "not_authorized",
        /// Refused because the data directory is full (a QoS 1/2 publish).
        StorageFull => "storage_full",
    }
}

label_enum! {
    /// Why a connection ended (`shardmq_disconnects_total`). Every closed connection counts
    /// once, so the family sums to `connections_closed`.
    pub enum DisconnectCause {
        /// The client sent DISCONNECT (its will discarded).
        ClientDisconnect => "client_disconnect",
        /// The client sent DISCONNECT with reason 0x04 (disconnect with will message).
        ClientDisconnectWithWill => "client_disconnect_with_will",
        /// Keep-alive expired (or the connect timeout, before CONNECT completed).
        KeepAliveTimeout => "keep_alive_timeout",
        /// The client broke the protocol: malformed packet, protocol error, invalid topic or
        /// alias, packet too large, receive maximum exceeded.
        ProtocolError => "protocol_error",
        /// Another connection took the client id over.
        TakenOver => "taken_over",
        /// The broker is shutting down.
        ServerShutdown => "server_shutdown",
        /// Its CONNECT was refused (see `shardmq_connack_refusals_total` for why).
        ConnectRefused => "connect_refused",
        /// The socket closed or failed without a DISCONNECT (the client went away).
        SocketClosed => "socket_closed",
        /// Closed by the server for another reason (administrative action and the like).
        Other => "other",
    }
}

label_enum! {
    /// The reason a CONNECT was refused (`shardmq_connack_refusals_total`): every MQTT 5.0
    /// CONNACK error code.
    ///
    /// A refusal is counted under the MQTT 5.0 reason the broker decided, whatever the client's
    /// protocol version, so one label set serves both. An MQTT 3.1/3.1.1 client receives the
    /// closest return code instead (`ReasonCode::to_v3_connack`); read back, each 3.x return
    /// code corresponds to these labels:
    ///
    /// | 3.x return code                      | labels                                        |
    /// |--------------------------------------|-----------------------------------------------|
    /// | 1 unacceptable protocol version      | `unsupported_protocol_version`                |
    /// | 2 identifier rejected                | `client_identifier_not_valid`                 |
    /// | 4 bad user name or password          | `bad_username_or_password`, `bad_authentication_method` |
    /// | 5 not authorized                     | `not_authorized`, `banned`                    |
    /// | 3 server unavailable                 | every other label (`server_unavailable`, `server_busy`, `quota_exceeded`, ...) |
    pub enum ConnackRefusal {
        /// 0x80.
        UnspecifiedError => "unspecified_error",
        /// 0x81.
        MalformedPacket => "malformed_packet",
        /// 0x82.
        ProtocolError => "protocol_error",
        /// 0x83.
        ImplementationSpecificError => "implementation_specific_error",
        /// 0x84 (3.x: 1).
        UnsupportedProtocolVersion => "unsupported_protocol_version",
        /// 0x85 (3.x: 2).
        ClientIdentifierNotValid => "client_identifier_not_valid",
        /// 0x86 (3.x: 4).
        BadUserNameOrPassword => "bad_username_or_password",
        /// 0x87 (3.x: 5).
        NotAuthorized => "not_authorized",
        /// 0x88 (3.x: 3).
        ServerUnavailable => "server_unavailable",
        /// 0x89.
        ServerBusy => "server_busy",
        /// 0x8A (3.x: 5).
        Banned => "banned",
        /// 0x8C (3.x: 4).
        BadAuthenticationMethod => "bad_authentication_method",
        /// 0x90.
        TopicNameInvalid => "topic_name_invalid",
        /// 0x95.
        PacketTooLarge => "packet_too_large",
        /// 0x97 (a connection limit).
        QuotaExceeded => "quota_exceeded",
        /// 0x99.
        PayloadFormatInvalid => "payload_format_invalid",
        /// 0x9A.
        RetainNotSupported => "retain_not_supported",
        /// 0x9B.
        QosNotSupported => "qos_not_supported",
        /// 0x9C.
        UseAnotherServer => "use_another_server",
        /// 0x9D.
        ServerMoved => "server_moved",
        /// 0x9F.
        ConnectionRateExceeded => "connection_rate_exceeded",
        /// A code MQTT 5.0 does not allow in a CONNACK (never sent as such).
        Other => "other",
    }
}

impl ConnackRefusal {
    /// The label for a refusing CONNACK's reason code.
    pub fn from_reason(reason: ReasonCode) -> ConnackRefusal {
        use ConnackRefusal as R;
        match reason {
            ReasonCode::UnspecifiedError => R::UnspecifiedError,
            ReasonCode::MalformedPacket => R::MalformedPacket,
            ReasonCode::ProtocolError => R::ProtocolError,
            ReasonCode::ImplementationSpecificError => R::ImplementationSpecificError,
            ReasonCode::UnsupportedProtocolVersion => R::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid => R::ClientIdentifierNotValid,
            ReasonCode::BadUserNameOrPassword => R::BadUserNameOrPassword,
            ReasonCode::NotAuthorized => R::NotAuthorized,
            ReasonCode::ServerUnavailable => R::ServerUnavailable,
            ReasonCode::ServerBusy => R::ServerBusy,
            ReasonCode::Banned => R::Banned,
            ReasonCode::BadAuthenticationMethod => R::BadAuthenticationMethod,
            ReasonCode::TopicNameInvalid => R::TopicNameInvalid,
            ReasonCode::PacketTooLarge => R::PacketTooLarge,
            ReasonCode::QuotaExceeded => R::QuotaExceeded,
            ReasonCode::PayloadFormatInvalid => R::PayloadFormatInvalid,
            ReasonCode::RetainNotSupported => R::RetainNotSupported,
            ReasonCode::QosNotSupported => R::QosNotSupported,
            ReasonCode::UseAnotherServer => R::UseAnotherServer,
            ReasonCode::ServerMoved => R::ServerMoved,
            ReasonCode::ConnectionRateExceeded => R::ConnectionRateExceeded,
            _ => R::Other,
        }
    }
}

impl DisconnectCause {
    /// The cause of a close the server decided with `reason` (anything but a CONNECT refusal
    /// or the client's own DISCONNECT, which are classified where they happen).
    pub fn from_reason(reason: ReasonCode) -> DisconnectCause {
        match reason {
            ReasonCode::KeepAliveTimeout | ReasonCode::MaximumConnectTime => {
                DisconnectCause::KeepAliveTimeout
            }
            ReasonCode::SessionTakenOver => DisconnectCause::TakenOver,
            ReasonCode::ServerShuttingDown => DisconnectCause::ServerShutdown,
            ReasonCode::MalformedPacket
            | ReasonCode::ProtocolError
            | ReasonCode::UnsupportedProtocolVersion
            | ReasonCode::TopicNameInvalid
            | ReasonCode::TopicFilterInvalid
            | ReasonCode::TopicAliasInvalid
            | ReasonCode::PacketTooLarge
            | ReasonCode::ReceiveMaximumExceeded
            | ReasonCode::PayloadFormatInvalid => DisconnectCause::ProtocolError,
            _ => DisconnectCause::Other,
        }
    }
}
