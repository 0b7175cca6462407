//! RFC 6455 framing: the streaming decoder of client frames (masked, checked as soon as their
//! first two bytes arrive) and the encoding of server frames (unmasked).
//!
//! The decoder keeps no payload: a data frame's payload is unmasked into the caller's buffer as
//! it arrives, whatever the read boundaries; only the header (at most 14 bytes) is gathered.

use bytes::{BufMut, BytesMut};

use super::CloseCode;

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// The largest control frame payload (RFC 6455 §5.5).
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header of a server frame: 2 bytes and a 64-bit length (no masking key).
pub const MAX_HEADER_LEN: usize = 10;

/// The longest header of a client frame: 2 bytes, a 64-bit length and the masking key.
const MAX_CLIENT_HEAD: usize = 14;

/// A client frame that breaks RFC 6455 or the MQTT binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A client frame without a masking key (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1-3 set, while no extension was negotiated.
    #[error("reserved bits set while no extension was negotiated")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame while no fragmented message is in progress.
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message awaits its continuation.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    /// A text frame: MQTT travels in binary frames only (MQTT-6.0.0-1).
    #[error("text frame (MQTT travels in binary frames)")]
    Text,
    /// A message (all its fragments) larger than the configured limit.
    #[error("message larger than {limit} bytes")]
    MessageTooBig {
        /// The configured limit ([`super::WsConfig::max_message_size`]).
        limit: u64,
    },
    /// A close frame whose payload is one byte (a code takes two).
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    /// A close code that may not be sent (RFC 6455 §7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl FrameError {
    /// The close code the server answers the error with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::Text => CloseCode::UNSUPPORTED_DATA,
            FrameError::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            FrameError::InvalidCloseReason => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Whether `opcode` is a control frame's (close, ping, pong).
pub(super) fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// The header of a server frame (FIN set, no mask), for callers that write the header and the
/// payload separately (a vectored send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl FrameHeader {
    /// The header of a binary frame carrying `payload_len` bytes.
    pub fn binary(payload_len: usize) -> FrameHeader {
        FrameHeader::new(OP_BINARY, payload_len as u64)
    }

    fn new(opcode: u8, payload_len: u64) -> FrameHeader {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        bytes[0] = 0x80 | opcode;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&payload_len.to_be_bytes());
            10
        };
        FrameHeader { bytes, len }
    }

    /// The header's bytes (2, 4 or 10).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends a server frame (FIN set, unmasked).
pub(super) fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let header = FrameHeader::new(opcode, payload.len() as u64);
    out.reserve(header.as_bytes().len() + payload.len());
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
}

/// Appends a close frame carrying `code` (no reason), or nothing at all.
pub(super) fn put_close(out: &mut BytesMut, code: Option<u16>) {
    match code {
        Some(code) => put_frame(out, OP_CLOSE, &code.to_be_bytes()),
        None => put_frame(out, OP_CLOSE, &[]),
    }
}

/// Checks a received close frame's payload; returns its code, if any.
pub(super) fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::CloseTooShort),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // 1004-1006 and 1015 are reserved for local use, never sent; 1016-2999 are for
            // future standards; 3000-4999 belong to libraries and applications.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::InvalidCloseReason)?;
            Ok(Some(code))
        }
    }
}

/// XORs `buf` with the masking key `mask` (its first byte applying to `buf[0]`), eight bytes at
/// a time.
pub(super) fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // Whole words leave the key in phase.
    for (byte, key) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// The client frame decoder's state between reads.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    /// Payload bytes of the current frame not read yet.
    remaining: u64,
    /// Payload bytes of the fragmented message in progress, announced so far.
    message_len: u64,
    /// The header gathered so far (while not in a payload).
    head: [u8; MAX_CLIENT_HEAD],
    head_len: u8,
    /// The masking key, rotated so that its first byte applies to the next payload byte.
    mask: [u8; 4],
    /// The current frame's opcode.
    opcode: u8,
    /// Whether a frame's payload is being read (else a header).
    in_payload: bool,
    /// Whether a fragmented message awaits continuation frames.
    fragmented: bool,
}

impl Decoder {
    pub(super) fn in_payload(&self) -> bool {
        self.in_payload
    }

    pub(super) fn remaining(&self) -> u64 {
        self.remaining
    }

    pub(super) fn opcode(&self) -> u8 {
        self.opcode
    }

    /// Gathers header bytes from `input`; returns how many it used and whether the header is
    /// complete (then the frame's payload starts, possibly empty).
    pub(super) fn read_head(
        &mut self,
        input: &[u8],
        max_message: u64,
    ) -> Result<(usize, bool), FrameError> {
        let mut used = 0;
        loop {
            let have = usize::from(self.head_len);
            let need = self.head_need();
            if have >= need {
                break;
            }
            let take = (need - have).min(input.len() - used);
            if take == 0 {
                return Ok((used, false));
            }
            self.head[have..have + take].copy_from_slice(&input[used..used + take]);
            self.head_len += take as u8;
            used += take;
            if have < 2 && self.head_len >= 2 {
                self.check_start()?;
            }
        }
        self.start_frame(max_message)?;
        Ok((used, true))
    }

    /// The header's length, as far as its bytes so far tell.
    fn head_need(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + 4
    }

    /// Checks the first two header bytes: everything but the length's value.
    fn check_start(&self) -> Result<(), FrameError> {
        let [first, second, ..] = self.head;
        if first & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            other => return Err(FrameError::ReservedOpcode(other)),
        }
        if second & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        match opcode {
            OP_CONTINUATION if !self.fragmented => Err(FrameError::UnexpectedContinuation),
            OP_TEXT | OP_BINARY if self.fragmented => Err(FrameError::ExpectedContinuation),
            OP_TEXT => Err(FrameError::Text),
            _ if is_control(opcode) && !fin => Err(FrameError::FragmentedControl),
            _ if is_control(opcode) && usize::from(second & 0x7f) > MAX_CONTROL_PAYLOAD => {
                Err(FrameError::ControlTooLong)
            }
            _ => Ok(()),
        }
    }

    /// The header is complete: reads the length and the key, and starts the payload.
    fn start_frame(&mut self, max_message: u64) -> Result<(), FrameError> {
        let head = &self.head;
        let (len, key_at) = match head[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
            127 => {
                let mut long = [0u8; 8];
                long.copy_from_slice(&head[2..10]);
                let len = u64::from_be_bytes(long);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        // Lengths in a longer form than needed are accepted (only senders are bound to the
        // shortest form).
        let opcode = head[0] & 0x0f;
        let fin = head[0] & 0x80 != 0;
        self.mask.copy_from_slice(&head[key_at..key_at + 4]);
        if !is_control(opcode) {
            let total = self
                .message_len
                .checked_add(len)
                .filter(|&total| total <= max_message)
                .ok_or(FrameError::MessageTooBig { limit: max_message })?;
            self.fragmented = !fin;
            self.message_len = if fin { 0 } else { total };
        }
        self.opcode = opcode;
        self.remaining = len;
        self.head_len = 0;
        self.in_payload = true;
        Ok(())
    }

    /// Unmasks the next payload bytes of the current frame, in place.
    pub(super) fn unmask(&mut self, buf: &mut [u8]) {
        apply_mask(buf, self.mask);
        self.mask.rotate_left(buf.len() % 4);
    }

    /// `n` payload bytes of the current frame were consumed.
    pub(super) fn end_payload(&mut self, n: usize) {
        self.remaining = self.remaining.saturating_sub(n as u64);
        if self.remaining == 0 {
            self.in_payload = false;
        }
    }
}
