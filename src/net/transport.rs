//! The seam between socket bytes and the MQTT codec. A connection's transport turns received
//! bytes into MQTT bytes and MQTT output into socket bytes. Plain TCP is the identity and costs
//! nothing; TLS (rustls, driven through its buffer API) and WebSocket framing are the `Layered`
//! variant, whose state lives in a side map and is allocated at accept for their listeners only, so an idle
//! plain connection carries one byte of transport state and no buffer, and dispatch is static
//! (a `match`, no trait object, no task).

/// How a connection's bytes are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Transport {
    /// MQTT directly over TCP.
    #[default]
    Plain,
    /// TLS and/or WebSocket: the state is a [`super::layers::Layers`] in the engine's side
    /// map (allocated for such connections only).
    Layered,
}

impl Transport {
    /// Whether received bytes go to the codec unchanged (no copy through transport state).
    pub(crate) fn is_identity(self) -> bool {
        matches!(self, Transport::Plain)
    }
}
