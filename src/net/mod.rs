//! The shard-owned io_uring engine: the only code that touches client sockets.
//!
//! Each shard owns one [`Engine`]: one io_uring ([`ring`]), one ring of provided receive
//! buffers shared by every connection of the shard ([`bufring`]), and a slab of small socket
//! records (no task, no poll registration and no buffer per idle connection). Listeners are
//! served by multishot accepts; each connection has one multishot receive, armed once and
//! re-armed only when the kernel ends it (buffer ring empty, reading paused) — and at most one
//! send in flight, which carries everything the connection's output gathered during a pass.
//! Everything queued during a pass is submitted with one `io_uring_enter`.
//!
//! The engine drives a [`Handler`] (the shard's state machine) with bytes in and takes its
//! output; it decides nothing about MQTT. A connection record carries a [`Transport`], the seam
//! where TLS and WebSocket framing fit ([`layers`]: allocated for connections of TLS and
//! WebSocket listeners only).
//!
//! Request user data carries the socket's slot and generation ([`token`]): a late completion
//! for a slot that was freed and reused is recognised and ignored. A slot is freed only when
//! none of its requests is still in the kernel.

mod bufring;
mod doorbell;
mod engine;
mod layers;
mod ring;
mod token;
mod transport;
pub mod websocket;

#[cfg(test)]
mod tests;

pub use doorbell::Doorbell;
pub use engine::{Engine, EngineConfig, EngineStats, SocketRecordSize};
pub use layers::ListenerTransport;
pub use ring::{CompletionMode, RingCounters};

use std::time::Instant;

use crate::codec::Output;

use crate::broker::handles::ConnId;
use crate::broker::ReadState;

/// What the engine drives: a connection state machine that takes bytes and `now`, and says
/// what to write, whether to read, and when to close.
pub trait Handler {
    /// A connection arrived on listener `listener` (`None`: a listener without settings of
    /// its own). `None` refuses it: the socket is closed at once.
    /// `peer` is the client's address when the kernel could tell it.
    fn accept(
        &mut self,
        listener: Option<usize>,
        peer: Option<std::net::SocketAddr>,
        now: Instant,
    ) -> Option<ConnId>;
    /// The TLS handshake of `conn` completed; `common_name` is the subject CN of the client's
    /// certificate, when it presented one (`use_identity_as_username`). Called before any
    /// MQTT byte of the connection is passed on.
    fn identified(&mut self, _conn: ConnId, _common_name: Option<String>) {}
    /// Bytes arrived on `conn`.
    fn received(&mut self, conn: ConnId, bytes: &[u8], now: Instant);
    /// Input kept while reading was paused may be handled now (after [`ReadState::Reprocess`]).
    fn reprocess(&mut self, conn: ConnId, now: Instant);
    /// The bytes waiting to be written to `conn`. The engine takes them (leaving the buffer
    /// empty) when no send is in flight.
    fn output(&mut self, conn: ConnId) -> Option<&mut Output>;
    /// `bytes` of `conn`'s output reached the socket.
    fn written(&mut self, conn: ConnId, bytes: usize);
    /// Everything taken from `conn`'s output was written: the handler may queue more (returns
    /// whether it did).
    fn flushed(&mut self, conn: ConnId, now: Instant) -> bool;
    /// Whether to read `conn` now.
    fn read_state(&mut self, conn: ConnId) -> ReadState;
    /// Whether a close that the handler asked for should half-close and linger (discarding
    /// input for a while) so that the client reads the last packet instead of a reset.
    fn lingers(&self, conn: ConnId) -> bool;
    /// The socket of `conn` is being closed; the handler forgets it.
    fn closed(&mut self, conn: ConnId, now: Instant);
    /// Connections that need the engine's attention since the last call.
    fn drain_wakes(&mut self, wake: &mut dyn FnMut(ConnId));
}
