//! The MQTT lifecycle rules a session follows across connections: what CONNECT makes of it,
//! what DISCONNECT changes, what happens to the will when a connection ends. Sans-I/O like the
//! rest of the session: the shard applies these decisions.

use super::{PeerLimits, Session};
use crate::codec::{Connect, Disconnect, ReasonCode};

/// What to do with a will when its connection ends without a DISCONNECT that discards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillTiming {
    /// Publish it now.
    Now,
    /// Publish it after this many seconds unless the client reconnects first (MQTT 5.0 will
    /// delay interval; §3.1.3.2.2).
    After(u32),
}

impl Session {
    /// Applies a client's DISCONNECT. `Ok(true)` when the will must still be published (reason
    /// 0x04, "disconnect with will message"), `Ok(false)` when it is discarded; `Err` with the
    /// reason to close with when the DISCONNECT breaks a rule.
    pub fn on_disconnect(&mut self, disconnect: &Disconnect) -> Result<bool, ReasonCode> {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.clean && expiry != 0 {
                // MQTT 5.0 §3.14.2.2.2: a session that began with expiry 0 cannot be given one
                // at DISCONNECT.
                return Err(ReasonCode::ProtocolError);
            }
            self.clean = expiry == 0;
            self.expiry = (expiry != u32::MAX).then_some(expiry);
        }
        if disconnect.reason == ReasonCode::DisconnectWithWill {
            Ok(true)
        } else {
            self.will = None;
            Ok(false)
        }
    }

    /// When the will of a connection that just ended goes out: at once, unless MQTT 5.0 asked
    /// for a delay and the session outlives the connection (a session that ends now takes its
    /// will with it, §3.1.2.5).
    pub fn will_timing(&self, delay_secs: Option<u32>) -> WillTiming {
        match delay_secs.unwrap_or(0) {
            0 => WillTiming::Now,
            _ if self.clean => WillTiming::Now,
            delay => WillTiming::After(delay),
        }
    }

    /// Whether a takeover ends this session instead of handing it on: the new connection asked
    /// for a clean start, or the session was never meant to outlive its connection.
    pub fn ends_on_takeover(&self, clean_start: bool) -> bool {
        clean_start || self.clean
    }

    /// Adopts the settings of the CONNECT that (re)attaches this session: lifetime (MQTT 5.0
    /// session expiry; 3.x clean session with the broker's expiry for persistent sessions),
    /// the peer's limits and the new will.
    pub fn apply_connect(&mut self, connect: &Connect, persistent_expiry_secs: Option<u64>) {
        self.protocol = connect.protocol;
        if connect.protocol.is_v5() {
            // MQTT 5.0: clean start only discards an old session; how long this one lasts is
            // the session expiry interval (0, the default, ends it with the connection).
            let expiry = connect.properties.session_expiry_interval.unwrap_or(0);
            self.clean = expiry == 0;
            self.expiry = (expiry != u32::MAX).then_some(expiry);
            self.attach(PeerLimits {
                max_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
                topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
                receive_maximum: connect.properties.receive_maximum.unwrap_or(u16::MAX),
            });
        } else {
            self.clean = connect.clean_start;
            self.expiry =
                persistent_expiry_secs.map(|secs| u32::try_from(secs).unwrap_or(u32::MAX));
            self.attach(PeerLimits::default());
        }
        self.will = connect.will.clone().map(Box::new);
        self.username = connect.username.as_deref().map(Box::from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, Properties, PropertyFields, ProtocolVersion};
    use crate::session::SessionLimits;

    fn session(clean: bool) -> Session {
        Session::new(
            MqttStr::from("c"),
            ProtocolVersion::V5,
            clean,
            SessionLimits::default(),
        )
    }

    fn disconnect(reason: ReasonCode, expiry: Option<u32>) -> Disconnect {
        Disconnect {
            reason,
            properties: Properties::from(PropertyFields {
                session_expiry_interval: expiry,
                ..PropertyFields::default()
            }),
        }
    }

    #[test]
    fn disconnect_rules() {
        let mut s = session(true);
        assert_eq!(
            s.on_disconnect(&disconnect(ReasonCode::Success, Some(10))),
            Err(ReasonCode::ProtocolError),
            "a session that began with expiry 0 cannot get one at DISCONNECT"
        );
        let mut s = session(false);
        assert_eq!(
            s.on_disconnect(&disconnect(ReasonCode::Success, Some(0))),
            Ok(false)
        );
        assert!(s.clean, "expiry 0 at DISCONNECT ends the session");
        let mut s = session(false);
        assert_eq!(
            s.on_disconnect(&disconnect(ReasonCode::DisconnectWithWill, Some(u32::MAX))),
            Ok(true)
        );
        assert_eq!(s.expiry, None, "u32::MAX never expires");
    }

    #[test]
    fn will_timing() {
        assert_eq!(session(false).will_timing(Some(5)), WillTiming::After(5));
        assert_eq!(session(true).will_timing(Some(5)), WillTiming::Now);
        assert_eq!(session(false).will_timing(None), WillTiming::Now);
        assert!(session(true).ends_on_takeover(false));
        assert!(session(false).ends_on_takeover(true));
        assert!(!session(false).ends_on_takeover(false));
    }
}
