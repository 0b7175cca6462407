//! MQTT over WebSocket (RFC 6455, MQTT 3.1.1 §6 / 5.0 §6): a sans-I/O server transport.
//!
//! [`WsServer`] is a pure state machine: it never reads or writes a socket, starts no task and
//! keeps no timer. The owner (the shard's engine, through the transport seam) hands it the
//! bytes a read returned and sends what it writes:
//!
//! - [`WsServer::on_bytes`] takes socket bytes. Before the upgrade they are the HTTP/1.1
//!   request (parsed with `httparse`, split across any number of reads, bounded by
//!   [`WsConfig::max_request_size`]); the `101 Switching Protocols` answer, or an HTTP error
//!   answer for a bad request, goes to `wire_out`. Bytes after the request head (an MQTT
//!   CONNECT in the same read) are kept and decoded as frames in the same call. After the
//!   upgrade the bytes are client frames: the unmasked payload of binary frames is appended to
//!   `app` — a plain MQTT byte stream, whatever the frame and fragment boundaries; pongs and
//!   close frames go to `wire_out`.
//! - [`WsServer::wrap`] (copying) or [`WsServer::reserve_header`] + [`WsServer::finish_frame`]
//!   (in place) turn the broker's MQTT output into server frames (binary, unmasked).
//! - [`WsServer::close`] starts a server-side close.
//!
//! # The write side: one header per flush, written in place
//! The output is framed per flush of the connection's output buffer, not per MQTT packet: all
//! the packets gathered during a pass become one binary frame. Rather than copying the payload
//! behind a header (what [`WsServer::wrap`] does, for callers that do not control their output
//! buffer) or keeping a second buffer for a vectored write, the recommended path reserves
//! [`MAX_HEADER_LEN`] bytes in front of the batch when the batch starts
//! ([`WsServer::reserve_header`]), lets the MQTT encoder append behind them, and at flush time
//! ([`WsServer::finish_frame`]) writes the header (2, 4 or 10 bytes) into the end of that room and
//! drops the unused front of it with an O(1) `advance`. The result is one contiguous buffer —
//! what the engine's single `Send` takes — and the payload is never copied. Control frames
//! ([`WsServer::on_bytes`]'s `wire_out`) must not land inside an open batch: finish the batch
//! before handing the same buffer to `on_bytes`, or give `on_bytes` a buffer of its own.
//! [`FrameHeader`] gives the header bytes alone, for a vectored write.
//!
//! # Memory
//! The state is one small struct (see `tests::state_size`; 88 bytes on 64-bit targets) plus a
//! scratch buffer that holds the request head during the handshake and is freed at the
//! upgrade; after it, the scratch holds only the payload of a control frame split across reads
//! (at most 125 bytes, freed when the frame is complete). Data frame payloads are unmasked
//! straight into `app`: nothing is buffered per frame, and the steady state allocates nothing
//! beyond the growth of the caller's buffers. The configuration is shared ([`Arc`]) by every
//! connection of a listener.

mod frame;
mod handshake;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};

pub use frame::{FrameError, FrameHeader, MAX_HEADER_LEN};
pub use handshake::{sec_websocket_accept, HandshakeError};

use frame::Decoder;

/// The request path served by default (the path MQTT clients use by convention).
pub const DEFAULT_PATH: &str = "/mqtt";
/// The default bound on the upgrade request's head.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 8 * 1024;
/// The default bound on one WebSocket message (all the fragments of it): MQTT's largest packet
/// (256 MiB) and its fixed header. The MQTT decoder applies the broker's own packet limit to
/// the byte stream anyway; this bounds what one message may announce.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 268_435_455 + 5;

/// A WebSocket listener's settings, shared by its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The path the upgrade request must name (the part of the target before any `?`):
    /// `Some("/mqtt")` by default; `None` accepts any path. Another path is answered 404.
    pub path: Option<String>,
    /// The largest request head (request line and headers) read before the upgrade; a larger
    /// one, or one with more than 32 headers, is answered 431.
    pub max_request_size: usize,
    /// The largest WebSocket message (the sum of its fragments' payloads); a frame that would
    /// exceed it closes the connection with 1009 (message too big).
    pub max_message_size: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: Some(DEFAULT_PATH.to_string()),
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// The WebSocket subprotocol agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// `mqtt`: MQTT 3.1.1 and 5.0 (preferred when the client offers both).
    Mqtt,
    /// `mqttv3.1`: what MQTT 3.1 clients offer.
    MqttV31,
}

impl Subprotocol {
    /// The token, as sent in `Sec-WebSocket-Protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::Mqtt => "mqtt",
            Subprotocol::MqttV31 => "mqttv3.1",
        }
    }
}

/// A WebSocket close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going away (shutdown).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type that is not accepted (a text frame: MQTT travels in binary frames).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: data inconsistent with its type (a close reason that is not UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
}

/// What an [`WsServer::on_bytes`] call changed, besides the bytes it appended to `app` (MQTT
/// bytes for the decoder) and `wire_out` (bytes to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsEvent {
    /// No change of state.
    Progress,
    /// The opening handshake completed in this call: `wire_out` starts with the `101`
    /// answer, and the connection now carries MQTT (`app` may already hold a CONNECT).
    Upgraded,
    /// The transport is closed: the peer's close frame was answered (or, after a server-side
    /// close, the peer's answer arrived), or it was closed before. `app` may still hold MQTT
    /// bytes that preceded the close frame (typically a DISCONNECT: handle them first); then
    /// send `wire_out` and close the socket. Later input is ignored.
    Closed,
}

/// Why the transport closed on its own. When an error is returned, `wire_out` holds the answer
/// (an HTTP error response, or a close frame with [`WsError::close_code`]) and the transport is
/// closed: send `wire_out`, then close the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The upgrade request was refused (HTTP status [`HandshakeError::status`]).
    #[error("WebSocket handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// A client frame broke RFC 6455 or the MQTT binding (close code
    /// [`FrameError::close_code`]).
    #[error("WebSocket protocol error: {0}")]
    Frame(#[from] FrameError),
    /// Output was offered while the connection is not open (before the upgrade, or after a
    /// close frame was sent or received): it was dropped.
    #[error("the WebSocket connection is not open")]
    NotOpen,
    /// [`WsServer::finish_frame`] was given a slot that its buffer no longer holds.
    #[error("the output buffer no longer holds the reserved frame header room")]
    LostSlot,
}

impl WsError {
    /// The close code sent for a frame error.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            WsError::Frame(error) => Some(error.close_code()),
            _ => None,
        }
    }

    /// The HTTP status answered to a refused handshake.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            WsError::Handshake(error) => Some(error.status()),
            _ => None,
        }
    }
}

/// Where a batch of output started: header room reserved by [`WsServer::reserve_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSlot {
    start: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// Upgraded: MQTT flows both ways.
    Open,
    /// The server sent a close frame and waits for the client's (input is discarded).
    CloseSent,
    /// Done: nothing more is read or sent.
    Closed,
}

/// One connection's WebSocket server transport. See the [module documentation](self).
#[derive(Debug)]
pub struct WsServer {
    config: Arc<WsConfig>,
    /// The request head while it is incomplete (handshake), then the unmasked payload of a
    /// control frame split across reads. Empty, without an allocation, otherwise.
    scratch: BytesMut,
    decoder: Decoder,
    state: State,
    upgraded: bool,
    subprotocol: Option<Subprotocol>,
}

impl WsServer {
    /// A transport waiting for the upgrade request.
    pub fn new(config: Arc<WsConfig>) -> WsServer {
        WsServer {
            config,
            scratch: BytesMut::new(),
            decoder: Decoder::default(),
            state: State::Handshake,
            upgraded: false,
            subprotocol: None,
        }
    }

    /// Whether the upgrade completed (stays true after a close).
    pub fn handshake_done(&self) -> bool {
        self.upgraded
    }

    /// Whether MQTT flows both ways (upgraded, no close frame sent or received).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether a server-side close was sent and the client's answer is awaited.
    pub fn is_closing(&self) -> bool {
        self.state == State::CloseSent
    }

    /// Whether the transport is done: the socket should be closed once `wire_out` is sent.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The subprotocol agreed in the handshake (`None`: the client offered none, and the
    /// answer named none).
    pub fn subprotocol(&self) -> Option<Subprotocol> {
        self.subprotocol
    }

    /// Takes bytes read from the socket. MQTT payload bytes are appended to `app`, bytes to
    /// send (the handshake answer, pongs, close frames) to `wire_out`. Never panics, whatever
    /// the input; see [`WsEvent`] and [`WsError`] for what to do next.
    pub fn on_bytes(
        &mut self,
        input: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<WsEvent, WsError> {
        match self.state {
            State::Handshake => self.on_request(input, app, wire_out),
            State::Open | State::CloseSent => match self.on_frames(input, app, wire_out) {
                Ok(true) => Ok(WsEvent::Closed),
                Ok(false) => Ok(WsEvent::Progress),
                Err(error) => Err(self.fail(error, wire_out)),
            },
            State::Closed => Ok(WsEvent::Closed),
        }
    }

    /// Appends `mqtt` to `wire_out` as one binary frame (header, then a copy of the payload).
    /// Nothing is written for empty input. Prefer [`WsServer::reserve_header`] and
    /// [`WsServer::finish_frame`] when the caller builds the output buffer: they frame in place.
    pub fn wrap(&self, mqtt: &[u8], wire_out: &mut BytesMut) -> Result<(), WsError> {
        if self.state != State::Open {
            return Err(WsError::NotOpen);
        }
        if mqtt.is_empty() {
            return Ok(());
        }
        let header = FrameHeader::binary(mqtt.len());
        wire_out.reserve(header.as_bytes().len() + mqtt.len());
        wire_out.put_slice(header.as_bytes());
        wire_out.put_slice(mqtt);
        Ok(())
    }

    /// Starts a batch of output at the end of `out`: reserves [`MAX_HEADER_LEN`] bytes for the
    /// frame header. Append MQTT bytes to `out` behind it, then call
    /// [`WsServer::finish_frame`] once, at flush time. Bytes already in `out` (earlier frames)
    /// stay in front.
    pub fn reserve_header(out: &mut BytesMut) -> FrameSlot {
        let start = out.len();
        out.put_bytes(0, MAX_HEADER_LEN);
        FrameSlot { start }
    }

    /// Ends the batch started at `slot`: everything appended to `out` after the reserved room
    /// becomes one binary frame, its header written into the end of that room and the unused
    /// front of the room dropped (an O(1) `advance` when the batch starts the buffer; otherwise
    /// the bytes in front of it are moved forward, never the payload). An empty batch leaves no
    /// trace. On an error the batch is removed from `out`.
    pub fn finish_frame(&self, out: &mut BytesMut, slot: FrameSlot) -> Result<(), WsError> {
        let start = slot.start;
        let Some(payload_start) = start
            .checked_add(MAX_HEADER_LEN)
            .filter(|&at| at <= out.len())
        else {
            return Err(WsError::LostSlot);
        };
        let len = out.len() - payload_start;
        if self.state != State::Open {
            out.truncate(start);
            return Err(WsError::NotOpen);
        }
        if len == 0 {
            out.truncate(start);
            return Ok(());
        }
        let header = FrameHeader::binary(len);
        let header = header.as_bytes();
        let gap = MAX_HEADER_LEN - header.len();
        out[payload_start - header.len()..payload_start].copy_from_slice(header);
        if gap > 0 {
            out.copy_within(0..start, gap);
            out.advance(gap);
        }
        Ok(())
    }

    /// Starts a server-side close: sends a close frame with `code` and waits for the client's
    /// (see [`WsServer::is_closing`]); MQTT output is refused from now on. Before the upgrade
    /// nothing is sent and the transport is simply closed; once closing or closed, nothing
    /// happens.
    pub fn close(&mut self, code: CloseCode, wire_out: &mut BytesMut) {
        match self.state {
            State::Handshake => {
                self.state = State::Closed;
                self.scratch = BytesMut::new();
            }
            State::Open => {
                frame::put_close(wire_out, Some(code.0));
                self.state = State::CloseSent;
            }
            State::CloseSent | State::Closed => {}
        }
    }

    /// Handshake: gathers the request head (bounded), answers it, and decodes the bytes that
    /// followed it as frames.
    fn on_request(
        &mut self,
        input: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<WsEvent, WsError> {
        let max = self.config.max_request_size;
        let parsed = if self.scratch.is_empty() {
            // The common case: the whole request arrived in one read; parsed where it lies.
            let window = &input[..input.len().min(max)];
            handshake::parse(window, &self.config).map(|parsed| (parsed, 0))
        } else {
            let take = input.len().min(max.saturating_sub(self.scratch.len()));
            self.scratch.extend_from_slice(&input[..take]);
            handshake::parse(&self.scratch, &self.config).map(|parsed| (parsed, take))
        };
        let (parsed, taken) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Err(self.refuse(error, wire_out)),
        };
        let Some(accepted) = parsed else {
            let held = if self.scratch.is_empty() {
                input.len()
            } else {
                self.scratch.len()
            };
            if held >= max {
                return Err(self.refuse(HandshakeError::TooLarge, wire_out));
            }
            if self.scratch.is_empty() {
                self.scratch.extend_from_slice(input);
            }
            return Ok(WsEvent::Progress);
        };
        handshake::put_accept(wire_out, &accepted);
        self.state = State::Open;
        self.upgraded = true;
        self.subprotocol = accepted.subprotocol;
        // Bytes after the head: in the scratch (then the rest of this input), or in the input.
        let scratch = std::mem::take(&mut self.scratch);
        let closed = if scratch.is_empty() {
            self.on_frames(&input[accepted.head_len..], app, wire_out)
        } else {
            let buffered = scratch.get(accepted.head_len..).unwrap_or_default();
            match self.on_frames(buffered, app, wire_out) {
                Ok(false) => self.on_frames(&input[taken..], app, wire_out),
                other => other,
            }
        };
        // The handshake buffer is freed here.
        drop(scratch);
        match closed {
            Ok(true) => Ok(WsEvent::Closed),
            Ok(false) => Ok(WsEvent::Upgraded),
            Err(error) => Err(self.fail(error, wire_out)),
        }
    }

    /// Answers a refused handshake and closes.
    fn refuse(&mut self, error: HandshakeError, wire_out: &mut BytesMut) -> WsError {
        handshake::put_refusal(wire_out, &error);
        self.state = State::Closed;
        self.scratch = BytesMut::new();
        WsError::Handshake(error)
    }

    /// Closes on a frame error: a close frame with its code (unless one was sent already).
    fn fail(&mut self, error: FrameError, wire_out: &mut BytesMut) -> WsError {
        if self.state == State::Open {
            frame::put_close(wire_out, Some(error.close_code().0));
        }
        self.state = State::Closed;
        self.scratch = BytesMut::new();
        WsError::Frame(error)
    }

    /// Decodes client frames; returns whether the connection closed.
    fn on_frames(
        &mut self,
        mut input: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<bool, FrameError> {
        let max_message = self.config.max_message_size;
        while !input.is_empty() {
            if !self.decoder.in_payload() {
                let (used, complete) = self.decoder.read_head(input, max_message)?;
                input = &input[used..];
                if !complete {
                    return Ok(false);
                }
                if self.decoder.remaining() > 0 {
                    continue;
                }
                // A frame without payload ends here, input left or not.
            }
            let remaining = self.decoder.remaining();
            let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
            let (chunk, rest) = input.split_at(n);
            input = rest;
            let opcode = self.decoder.opcode();
            if frame::is_control(opcode) {
                let complete = n as u64 == remaining;
                if complete && self.scratch.is_empty() {
                    // The whole payload is here (the common case): unmasked on the stack.
                    let mut payload = [0u8; frame::MAX_CONTROL_PAYLOAD];
                    let payload = &mut payload[..n];
                    payload.copy_from_slice(chunk);
                    self.decoder.unmask(payload);
                    self.decoder.end_payload(n);
                    if self.on_control(opcode, payload, wire_out)? {
                        return Ok(true);
                    }
                } else {
                    let at = self.scratch.len();
                    self.scratch.extend_from_slice(chunk);
                    self.decoder.unmask(&mut self.scratch[at..]);
                    self.decoder.end_payload(n);
                    if complete {
                        let payload = std::mem::take(&mut self.scratch);
                        if self.on_control(opcode, &payload, wire_out)? {
                            return Ok(true);
                        }
                    }
                }
            } else {
                if self.state == State::Open {
                    let at = app.len();
                    app.extend_from_slice(chunk);
                    self.decoder.unmask(&mut app[at..]);
                }
                self.decoder.end_payload(n);
            }
        }
        Ok(false)
    }

    /// Acts on a complete control frame; returns whether the connection closed.
    fn on_control(
        &mut self,
        opcode: u8,
        payload: &[u8],
        wire_out: &mut BytesMut,
    ) -> Result<bool, FrameError> {
        match opcode {
            frame::OP_PING => {
                if self.state == State::Open {
                    frame::put_frame(wire_out, frame::OP_PONG, payload);
                }
                Ok(false)
            }
            frame::OP_CLOSE => {
                let code = frame::parse_close(payload)?;
                if self.state == State::Open {
                    frame::put_close(wire_out, code);
                }
                self.state = State::Closed;
                self.scratch = BytesMut::new();
                Ok(true)
            }
            // Pong (unsolicited or not): nothing to do.
            _ => Ok(false),
        }
    }
}
