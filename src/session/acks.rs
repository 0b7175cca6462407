//! Acknowledgements: the outgoing QoS 1/2 flows a client's PUBACK, PUBREC and PUBCOMP move on
//! (each may free a window slot for a queued message), and inbound QoS 2 identifiers awaiting
//! PUBREL.

use std::time::Instant;

use super::{Change, InflightState, Session, SessionError, SessionEvents};
use crate::codec::{Ack, OutputSink, Packet, ReasonCode};

impl Session {
    fn position(&self, packet_id: u16) -> Option<usize> {
        self.traffic()
            .inflight
            .iter()
            .position(|m| m.packet_id == packet_id)
    }

    /// PUBACK from the client. Unknown identifiers are ignored (a late duplicate).
    pub fn on_puback(
        &mut self,
        packet_id: u16,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> Result<(), SessionError> {
        self.finish_flow(packet_id, InflightState::AwaitPubAck, out, now, on_sent)
    }

    /// Ends the flow of `packet_id` if it is in `expected` state; frees its window slot.
    fn finish_flow(
        &mut self,
        packet_id: u16,
        expected: InflightState,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> Result<(), SessionError> {
        if let Some(index) = self.position(packet_id) {
            if self.traffic().inflight[index].state != expected {
                return Err(SessionError::UnexpectedAck);
            }
            self.traffic_mut().inflight.remove(index);
            on_sent.change(&self.client_id, Change::Acked(packet_id));
            self.fill_window(out, now, on_sent);
        }
        Ok(())
    }

    /// PUBREC from the client: answers PUBREL (with 0x92 in MQTT 5.0 if the id is unknown).
    pub fn on_pubrec(
        &mut self,
        packet_id: u16,
        reason: ReasonCode,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> Result<(), SessionError> {
        let Some(index) = self.position(packet_id) else {
            let mut release = Ack::new(packet_id);
            release.reason = ReasonCode::PacketIdentifierNotFound;
            let _ = Packet::PubRel(release).encode(self.protocol, out.bytes());
            return Ok(());
        };
        match self.traffic().inflight[index].state {
            InflightState::AwaitPubRec if reason.is_error() => {
                // MQTT 5.0: a PUBREC with an error ends the flow; no PUBREL.
                self.traffic_mut().inflight.remove(index);
                on_sent.change(&self.client_id, Change::Acked(packet_id));
                self.fill_window(out, now, on_sent);
            }
            InflightState::AwaitPubRec | InflightState::AwaitPubComp => {
                if self.traffic().inflight[index].state == InflightState::AwaitPubRec {
                    on_sent.change(&self.client_id, Change::PubRec(packet_id));
                }
                self.traffic_mut().inflight[index].state = InflightState::AwaitPubComp;
                let _ = Packet::PubRel(Ack::new(packet_id)).encode(self.protocol, out.bytes());
            }
            InflightState::AwaitPubAck => return Err(SessionError::UnexpectedAck),
        }
        Ok(())
    }

    /// PUBCOMP from the client. Unknown identifiers are ignored.
    pub fn on_pubcomp(
        &mut self,
        packet_id: u16,
        out: &mut impl OutputSink,
        now: Instant,
        on_sent: &mut impl SessionEvents,
    ) -> Result<(), SessionError> {
        self.finish_flow(packet_id, InflightState::AwaitPubComp, out, now, on_sent)
    }

    /// An inbound QoS 2 PUBLISH: `true` if it is new and must be routed, `false` for a
    /// retransmission of one not yet released (deduplicated until PUBREL).
    pub fn on_incoming_qos2(&mut self, packet_id: u16) -> bool {
        if self.traffic().incoming_qos2.contains(&packet_id) {
            return false;
        }
        self.traffic_mut().incoming_qos2.push(packet_id);
        true
    }

    /// Inbound PUBREL: `true` if the identifier was awaiting release.
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        match self
            .traffic()
            .incoming_qos2
            .iter()
            .position(|&id| id == packet_id)
        {
            Some(index) => {
                let traffic = self.traffic_mut();
                traffic.incoming_qos2.swap_remove(index);
                traffic.uncommitted_inbound.retain(|&id| id != packet_id);
                self.shed_idle_traffic();
                true
            }
            None => false,
        }
    }

    /// Whether `packet_id` is an inbound QoS 2 message awaiting PUBREL (a resend, not a new one).
    pub fn has_incoming_qos2(&self, packet_id: u16) -> bool {
        self.traffic().incoming_qos2.contains(&packet_id)
    }

    /// Number of inbound QoS 2 identifiers awaiting PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.traffic().incoming_qos2.len()
    }
}
