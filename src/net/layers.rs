//! Transport layers between the socket and MQTT: TLS (rustls' buffer API: bytes in, bytes
//! out, no I/O of its own), WebSocket ([`super::websocket::WsServer`]), or both (wss: WebSocket
//! inside TLS). Only connections of TLS or WebSocket listeners have a [`Layers`], allocated at
//! accept; plain MQTT connections have none.
//!
//! Input: socket bytes go through TLS (decrypted), then WebSocket (unframed); what comes out
//! is the MQTT byte stream ([`Layers::app`]). Bytes the layers must send on their own
//! (handshake messages, alerts, the HTTP upgrade answer, pongs, close frames) gather in
//! [`Layers::wire`]. Output: the broker's MQTT bytes are framed, then encrypted, into `wire`.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rustls::{ServerConfig, ServerConnection};

use super::websocket::{CloseCode, WsConfig, WsError, WsEvent, WsServer};

/// What a listener's connections speak above TCP, shared by its connections.
#[derive(Clone, Default)]
pub struct ListenerTransport {
    /// TLS: the configuration new connections start from (replaced on reload).
    pub tls: Option<Arc<ServerConfig>>,
    /// WebSocket: the upgrade path and size limits.
    pub ws: Option<Arc<WsConfig>>,
}

impl std::fmt::Debug for ListenerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTransport")
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws)
            .finish()
    }
}

impl ListenerTransport {
    /// Whether connections need layers at all.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.ws.is_none()
    }
}

/// Why a connection's transport ended on its own (after `wire` is sent, the socket closes).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayerError {
    /// The TLS handshake failed or a record was bad (the alert is in `wire`).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The WebSocket handshake was refused or a frame broke the protocol (the HTTP answer or
    /// close frame is in `wire`).
    #[error("{0}")]
    WebSocket(#[from] WsError),
    /// The peer closed the transport (TLS close_notify, WebSocket close frame).
    #[error("closed by the peer")]
    PeerClosed,
    /// The client sent more than a handshake needs while its handshake waited for the budget.
    #[error("too much input while the TLS handshake waited")]
    HandshakeFlood,
    /// rustls refused bytes for a reason of its own (its buffers are bounded).
    #[error("TLS buffer: {0}")]
    Buffer(std::io::Error),
}

/// One connection's transport state (see the module documentation).
pub(crate) struct Layers {
    tls: Option<ServerConnection>,
    ws: Option<WsServer>,
    /// MQTT bytes decoded from the last input, for the handler (cleared by the engine).
    pub app: BytesMut,
    /// Bytes for the socket, waiting for the next send.
    pub wire: BytesMut,
    /// Plaintext between TLS and WebSocket (wss only), reused.
    between: BytesMut,
    /// Handler output bytes encoded into `wire` and not yet in a completed send.
    pub app_pending: usize,
    /// Handler output bytes carried by the send in flight.
    pub app_in_flight: usize,
    /// Socket bytes that wait for a handshake budget (see the engine's per-pass budget).
    pub deferred: BytesMut,
    /// The TLS handshake completed and its identity was reported.
    identity_reported: bool,
}

impl Layers {
    /// The layers of a new connection of a listener with `transport` (`None` for plain TCP).
    pub fn new(transport: &ListenerTransport) -> Option<Box<Layers>> {
        if transport.is_plain() {
            return None;
        }
        let tls = match &transport.tls {
            Some(config) => match ServerConnection::new(Arc::clone(config)) {
                Ok(mut connection) => {
                    // The engine drains rustls' output into `wire` after every call, and the
                    // handler bounds its own output: no second bound here.
                    connection.set_buffer_limit(None);
                    Some(connection)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot start a TLS connection");
                    return None;
                }
            },
            None => None,
        };
        Some(Box::new(Layers {
            tls,
            ws: transport
                .ws
                .as_ref()
                .map(|config| WsServer::new(Arc::clone(config))),
            app: BytesMut::new(),
            wire: BytesMut::new(),
            between: BytesMut::new(),
            app_pending: 0,
            app_in_flight: 0,
            deferred: BytesMut::new(),
            identity_reported: false,
        }))
    }

    /// Whether a TLS handshake is still under way (its steps are what the engine's per-pass
    /// handshake budget counts: key exchange and signature are the expensive part).
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Takes socket bytes: MQTT bytes go to [`Layers::app`], bytes to send to
    /// [`Layers::wire`]. An error ends the transport (send `wire`, then close).
    pub fn on_input(&mut self, mut input: &[u8]) -> Result<(), LayerError> {
        let Some(tls) = self.tls.as_mut() else {
            let ws = self.ws.as_mut().ok_or(LayerError::PeerClosed)?;
            return ws_input(ws, input, &mut self.app, &mut self.wire);
        };
        let mut result = Ok(());
        while !input.is_empty() && result.is_ok() {
            if let Err(error) = tls.read_tls(&mut input) {
                result = Err(LayerError::Buffer(error));
                break;
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    result = Err(LayerError::Tls(error));
                    break;
                }
            };
            let plaintext = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            if plaintext > 0 {
                let target = if self.ws.is_some() {
                    &mut self.between
                } else {
                    &mut self.app
                };
                let start = target.len();
                target.resize(start + plaintext, 0);
                if let Err(error) = tls.reader().read_exact(&mut target[start..]) {
                    result = Err(LayerError::Buffer(error));
                }
            }
            if let Some(ws) = self.ws.as_mut().filter(|_| !self.between.is_empty()) {
                let mut ws_wire = BytesMut::new();
                result = result.and(ws_input(ws, &self.between, &mut self.app, &mut ws_wire));
                self.between.clear();
                if !ws_wire.is_empty() {
                    if let Err(error) = tls.writer().write_all(&ws_wire) {
                        result = Err(LayerError::Buffer(error));
                    }
                }
            }
            if peer_closed && result.is_ok() {
                result = Err(LayerError::PeerClosed);
            }
        }
        self.flush_tls();
        result
    }

    /// The client certificate's subject CN, once, when the TLS handshake has completed
    /// (`Some(None)`: completed without a certificate, or one without a CN).
    pub fn take_identity(&mut self) -> Option<Option<String>> {
        let tls = self.tls.as_ref()?;
        if self.identity_reported || tls.is_handshaking() {
            return None;
        }
        self.identity_reported = true;
        let common_name = tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_common_name(leaf.as_ref()));
        Some(common_name)
    }

    /// Frames and encrypts the handler's MQTT output into [`Layers::wire`].
    pub fn encode(&mut self, mqtt: &[u8]) -> Result<(), LayerError> {
        if mqtt.is_empty() {
            return Ok(());
        }
        self.app_pending += mqtt.len();
        match (self.tls.as_mut(), self.ws.as_ref()) {
            (None, Some(ws)) => ws.wrap(mqtt, &mut self.wire)?,
            (Some(tls), None) => tls.writer().write_all(mqtt).map_err(LayerError::Buffer)?,
            (Some(tls), Some(ws)) => {
                ws.wrap(mqtt, &mut self.between)?;
                let written = tls.writer().write_all(&self.between);
                self.between.clear();
                written.map_err(LayerError::Buffer)?;
            }
            (None, None) => self.wire.extend_from_slice(mqtt),
        }
        self.flush_tls();
        Ok(())
    }

    /// Starts a server-side close: a WebSocket close frame (1000, or 1001 when the broker shuts
    /// down) and a TLS close_notify go into [`Layers::wire`].
    pub fn close(&mut self, going_away: bool) {
        if let Some(ws) = self.ws.as_mut() {
            let code = if going_away {
                CloseCode::GOING_AWAY
            } else {
                CloseCode::NORMAL
            };
            match self.tls.as_mut() {
                Some(tls) => {
                    let mut frame = BytesMut::new();
                    ws.close(code, &mut frame);
                    if tls.writer().write_all(&frame).is_err() {
                        tracing::debug!("close frame not queued");
                    }
                }
                None => ws.close(code, &mut self.wire),
            }
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        self.flush_tls();
    }

    fn flush_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let mut writer = (&mut self.wire).writer();
        while tls.wants_write() {
            match tls.write_tls(&mut writer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn ws_input(
    ws: &mut WsServer,
    input: &[u8],
    app: &mut BytesMut,
    wire: &mut BytesMut,
) -> Result<(), LayerError> {
    match ws.on_bytes(input, app, wire)? {
        WsEvent::Progress | WsEvent::Upgraded => Ok(()),
        WsEvent::Closed => Err(LayerError::PeerClosed),
    }
}

/// The subject CN of a DER certificate (UTF8String, PrintableString or IA5String).
fn subject_common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::Decode;
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let common_name = x509_cert::der::oid::db::rfc4519::CN;
    certificate
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attribute| attribute.oid == common_name)
        .and_then(|attribute| {
            let value = &attribute.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_listeners_have_no_layers() {
        assert!(Layers::new(&ListenerTransport::default()).is_none());
    }

    #[test]
    fn websocket_layer_upgrades_and_unframes() {
        let transport = ListenerTransport {
            tls: None,
            ws: Some(Arc::new(WsConfig::default())),
        };
        let mut layers = Layers::new(&transport).expect("ws layers");
        let request =
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: mqtt\r\n\r\n";
        layers.on_input(request).expect("upgrade");
        let answer = String::from_utf8_lossy(&layers.wire).to_string();
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert!(answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{answer}");
        layers.wire.clear();
        // A masked binary frame carrying a PINGREQ (0xC0 0x00).
        let mask = [1u8, 2, 3, 4];
        let frame = [0x82, 0x82, 1, 2, 3, 4, 0xC0 ^ mask[0], mask[1]];
        layers.on_input(&frame).expect("frame");
        assert_eq!(&layers.app[..], &[0xC0, 0x00]);
        layers.encode(&[0xD0, 0x00]).expect("encode");
        assert_eq!(&layers.wire[..], &[0x82, 0x02, 0xD0, 0x00]);
        assert_eq!(layers.app_pending, 2);
    }
}
