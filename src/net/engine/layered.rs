//! The engine's side of TLS and WebSocket connections: output through the layers, handshake
//! input held back by the per-pass budget, and transport failures.

use std::io;
use std::time::Instant;

use bytes::BytesMut;

use super::{feed, peer_address, Engine, Socket, SocketId};
use crate::broker::handles::ConnId;
use crate::codec::Output;
use crate::net::layers::LayerError;
use crate::net::Handler;

impl Engine {
    /// What to send next for `conn`'s socket: the handler's output as it is (plain TCP), or
    /// framed and encrypted along with what the layers have to send of their own. `closing`
    /// adds the layers' close (a WebSocket close frame, a TLS close_notify). `Err(None)`: the
    /// handler has no output for the connection any more (it is gone).
    pub(super) fn next_output(
        &mut self,
        handler: &mut impl Handler,
        id: SocketId,
        conn: ConnId,
        closing: bool,
    ) -> Result<Option<Output>, Option<LayerError>> {
        let Some(out) = handler.output(conn) else {
            return Err(None);
        };
        let layered = self
            .sockets
            .get(id)
            .is_some_and(|socket| !socket.transport.is_identity());
        let Some(layers) = layered.then(|| self.layers.get_mut(&id)).flatten() else {
            return Ok((!out.is_empty()).then(|| std::mem::take(out)));
        };
        if out.has_shared() {
            // Framing and encryption read the bytes in order anyway: one contiguous buffer.
            *out = Output::from(std::mem::take(out).into_contiguous());
        }
        let encoded = layers.encode(out);
        out.clear();
        if closing {
            // Whatever the layers can still say goes out (a close frame answering the peer's
            // is already in `wire`).
            layers.close(false);
        } else {
            encoded.map_err(Some)?;
        }
        if layers.wire.is_empty() {
            return Ok(None);
        }
        layers.app_in_flight += std::mem::take(&mut layers.app_pending);
        Ok(Some(Output::from(std::mem::take(&mut layers.wire))))
    }

    /// Counts and logs a transport that failed on its own (a refused TLS or WebSocket
    /// handshake, a bad record or frame); the caller closes the socket.
    pub(super) fn transport_failed(&mut self, id: SocketId, error: &LayerError) {
        if matches!(error, LayerError::PeerClosed) {
            return;
        }
        self.stats.transport_errors += 1;
        let peer = self
            .sockets
            .get(id)
            .and_then(|socket| peer_address(socket.fd));
        tracing::info!(
            peer = %peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
            %error,
            "closing a connection whose transport failed"
        );
    }

    /// Runs handshake input that an earlier pass put off, within this pass's budget. Returns
    /// whether there was any.
    pub(super) fn run_deferred(
        &mut self,
        handler: &mut impl Handler,
        now: Instant,
    ) -> io::Result<bool> {
        if self.deferred.is_empty() {
            return Ok(false);
        }
        let waiting = std::mem::take(&mut self.deferred);
        let mut still = Vec::new();
        for id in waiting {
            let conn = self.sockets.get(id).and_then(Socket::live_conn);
            let Some(layers) = self.layers.get_mut(&id) else {
                continue;
            };
            let Some(conn) = conn else {
                layers.deferred = BytesMut::new();
                continue;
            };
            if layers.handshaking() {
                if self.handshakes_left == 0 {
                    still.push(id);
                    continue;
                }
                self.handshakes_left -= 1;
            }
            let input = std::mem::take(&mut layers.deferred);
            match feed(layers, handler, conn, &input, now) {
                Ok(()) => self.mark_dirty(id),
                Err(error) => {
                    self.transport_failed(id, &error);
                    self.close(handler, id, now, false)?;
                }
            }
        }
        self.deferred.extend(still);
        Ok(true)
    }
}
