//! A minimal RFC 6455 WebSocket client for `--ws`: the HTTP/1.1 upgrade request (subprotocol
//! `mqtt`), the check of the 101 response and its `Sec-WebSocket-Accept`, masked binary frames
//! out, unmasked frames in (ping answered with pong, close ends the connection).
//!
//! MQTT over WebSocket is a byte stream: frames may hold several or partial MQTT packets, so
//! incoming data frames are unwrapped straight into the MQTT read buffer, and outgoing MQTT
//! bytes are framed in chunks of at most [`MAX_FRAME`] bytes.
//!
//! Masking keys and `Sec-WebSocket-Key` come from a per-connection splitmix64 generator seeded
//! by the engine: enough for a load generator talking to a broker it trusts.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use sha1::{Digest, Sha1};

/// RFC 6455's GUID appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest payload of one outgoing data frame.
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame (not MQTT: refused).
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID);
    BASE64.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 bytes.
pub fn new_key(rng: &mut Rng) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    raw[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    BASE64.encode(raw)
}

/// The upgrade request.
pub fn request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\
         \r\n"
    )
}

/// Checks the response head at the start of `buf`: `Ok(None)` while incomplete, `Ok(Some(n))`
/// with the head's length once a valid 101 with the right accept key is there.
pub fn parse_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("WebSocket handshake: response head too long".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| "WebSocket handshake: response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(format!(
            "WebSocket handshake: expected 101 Switching Protocols, got {status:?}"
        ));
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("WebSocket handshake: bad header line {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-accept" => accept = Some(value.to_string()),
            "sec-websocket-protocol" if value != "mqtt" => {
                return Err(format!(
                    "WebSocket handshake: broker chose subprotocol {value:?}, not mqtt"
                ));
            }
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err("WebSocket handshake: missing Upgrade: websocket / Connection: Upgrade".into());
    }
    match accept {
        Some(a) if a == expected_accept => Ok(Some(end + 4)),
        Some(a) => Err(format!(
            "WebSocket handshake: Sec-WebSocket-Accept {a:?}, expected {expected_accept:?}"
        )),
        None => Err("WebSocket handshake: no Sec-WebSocket-Accept".into()),
    }
}

/// XORs `buf` with `mask`, `offset` bytes into the masked payload.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Appends one final, masked frame.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    out.reserve(payload.len() + 14);
    out.put_u8(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.put_u8(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(0x80 | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(len as u64);
    }
    out.put_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// A control frame received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Ping with its payload (to echo in a pong).
    Ping(Vec<u8>),
    /// Close with its status code, if any.
    Close(Option<u16>),
}

/// Incoming frames, decoded incrementally (headers and payloads may be split anywhere).
#[derive(Debug, Default)]
pub struct Decoder {
    head: [u8; 14],
    head_len: usize,
    in_frame: bool,
    opcode: u8,
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_offset: usize,
    control: Vec<u8>,
    closed: bool,
}

fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl Decoder {
    /// Unwraps data frames of `data` into `out`; control frames go to `events`. After a close
    /// frame the rest is ignored.
    pub fn decode(
        &mut self,
        mut data: &[u8],
        out: &mut BytesMut,
        events: &mut Vec<Control>,
    ) -> Result<(), String> {
        while !data.is_empty() && !self.closed {
            if !self.in_frame {
                // Header bytes: 2, then the rest once the length kind and mask bit are known.
                let need_for = |head: &[u8; 14], len: usize| {
                    if len >= 2 {
                        header_len(head[1])
                    } else {
                        2
                    }
                };
                let mut need = need_for(&self.head, self.head_len);
                while self.head_len < need && !data.is_empty() {
                    let take = (need - self.head_len).min(data.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
                    self.head_len += take;
                    data = &data[take..];
                    need = need_for(&self.head, self.head_len);
                }
                if self.head_len < need {
                    return Ok(());
                }
                self.start_frame()?;
                if self.remaining == 0 {
                    self.end_frame(events);
                }
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let chunk = &data[..take];
            let buf: &mut [u8] = if self.opcode < 8 {
                let start = out.len();
                out.extend_from_slice(chunk);
                &mut out[start..]
            } else {
                // Control payloads are at most 125 bytes (checked in start_frame).
                let start = self.control.len();
                self.control.extend_from_slice(chunk);
                &mut self.control[start..]
            };
            if let Some(mask) = self.mask {
                apply_mask(buf, mask, self.mask_offset);
            }
            self.mask_offset += take;
            self.remaining -= take as u64;
            data = &data[take..];
            if self.remaining == 0 {
                self.end_frame(events);
            }
        }
        Ok(())
    }

    fn start_frame(&mut self) -> Result<(), String> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err("WebSocket frame with reserved bits set (no extension negotiated)".into());
        }
        let opcode = b0 & 0x0f;
        let mut len = u64::from(b1 & 0x7f);
        let mut at = 2;
        if len == 126 {
            len = u64::from(u16::from_be_bytes([self.head[2], self.head[3]]));
            at = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes"));
            at = 10;
        }
        self.mask = (b1 & 0x80 != 0).then(|| {
            self.head[at..at + 4]
                .try_into()
                .expect("4 bytes of masking key")
        });
        match opcode {
            OP_CONTINUATION | OP_BINARY => {}
            OP_TEXT => return Err("WebSocket text frame (MQTT needs binary frames)".into()),
            OP_CLOSE | OP_PING | OP_PONG => {
                if b0 & 0x80 == 0 || len > 125 {
                    return Err("WebSocket control frame fragmented or longer than 125".into());
                }
            }
            other => return Err(format!("WebSocket frame with unknown opcode {other:#x}")),
        }
        self.opcode = opcode;
        self.remaining = len;
        self.mask_offset = 0;
        self.in_frame = true;
        self.head_len = 0;
        self.control.clear();
        Ok(())
    }

    fn end_frame(&mut self, events: &mut Vec<Control>) {
        self.in_frame = false;
        match self.opcode {
            OP_PING => events.push(Control::Ping(std::mem::take(&mut self.control))),
            OP_CLOSE => {
                let code = (self.control.len() >= 2)
                    .then(|| u16::from_be_bytes([self.control[0], self.control[1]]));
                events.push(Control::Close(code));
                self.closed = true;
            }
            _ => {}
        }
    }
}

/// splitmix64: masking keys and handshake keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc6455_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn request_has_the_upgrade_headers() {
        let mut rng = Rng::new(7);
        let key = new_key(&mut rng);
        assert_eq!(BASE64.decode(&key).unwrap().len(), 16);
        let req = request("127.0.0.1:8080", "/mqtt", &key);
        assert!(req.starts_with("GET /mqtt HTTP/1.1\r\n"));
        assert!(req.contains("\r\nSec-WebSocket-Protocol: mqtt\r\n"));
        assert!(req.contains(&format!("\r\nSec-WebSocket-Key: {key}\r\n")));
        assert!(req.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parses_the_101_response() {
        let accept = accept_key("dGhlIHNhbXBsZSBub25jZQ==");
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&[0x82, 0x02, 0x20, 0x02]);
        assert_eq!(parse_response(&buf, &accept), Ok(Some(head.len())));
        // Incomplete.
        assert_eq!(parse_response(&buf[..head.len() - 1], &accept), Ok(None));
        // Wrong key, wrong status, wrong subprotocol, missing headers.
        assert!(parse_response(&buf, "AAAA").is_err());
        let bad = head.replace("101 Switching Protocols", "404 Not Found");
        assert!(parse_response(bad.as_bytes(), &accept).is_err());
        let bad = head.replace("Protocol: mqtt", "Protocol: mqttv3.1");
        assert!(parse_response(bad.as_bytes(), &accept).is_err());
        let bad = head.replace("upgrade: WebSocket\r\n", "");
        assert!(parse_response(bad.as_bytes(), &accept).is_err());
        let bad = head.replace(&format!("Sec-WebSocket-Accept: {accept}\r\n"), "");
        assert!(parse_response(bad.as_bytes(), &accept).is_err());
    }

    #[test]
    fn masks_like_rfc6455_example() {
        // RFC 6455, section 5.7: a masked "Hello".
        let mut out = BytesMut::new();
        encode_frame(OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
        assert_eq!(
            &out[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn frame_lengths_and_mask_round_trip() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = BytesMut::new();
            encode_frame(OP_BINARY, &payload, [1, 2, 3, 4], &mut out);
            let head = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            } + 4;
            assert_eq!(out.len(), head + len);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
            // The decoder unmasks (servers do not mask, but it copes), fed in odd pieces.
            let mut dec = Decoder::default();
            let (mut got, mut events) = (BytesMut::new(), Vec::new());
            for piece in out.chunks(3) {
                dec.decode(piece, &mut got, &mut events).unwrap();
            }
            assert_eq!(&got[..], &payload[..]);
            assert!(events.is_empty());
        }
    }

    #[test]
    fn mask_with_offset_matches_whole_mask() {
        let data: Vec<u8> = (0..37).collect();
        let mask = [9, 8, 7, 6];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut split = data.clone();
        apply_mask(&mut split[..5], mask, 0);
        apply_mask(&mut split[5..], mask, 5);
        assert_eq!(whole, split);
    }

    #[test]
    fn decodes_unmasked_server_frames() {
        // Two binary frames (one of them fragmented), a ping, a 16-bit length, then a close.
        let mut wire = vec![0x02, 0x02, 0x20, 0x02]; // binary, not final
        wire.extend_from_slice(&[0x80, 0x02, 0x00, 0x00]); // continuation, final
        wire.extend_from_slice(&[0x89, 0x03, b'a', b'b', b'c']); // ping "abc"
        let big = vec![0x55u8; 300];
        wire.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        wire.extend_from_slice(&big);
        wire.extend_from_slice(&[0x8a, 0x00]); // pong, ignored
        wire.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]); // close 1000
        wire.extend_from_slice(&[0x82, 0x01, 0xff]); // after close: ignored
        for step in [1, 2, 5, wire.len()] {
            let mut dec = Decoder::default();
            let (mut out, mut events) = (BytesMut::new(), Vec::new());
            for piece in wire.chunks(step) {
                dec.decode(piece, &mut out, &mut events).unwrap();
            }
            let mut expect = vec![0x20, 0x02, 0x00, 0x00];
            expect.extend_from_slice(&big);
            assert_eq!(&out[..], &expect[..], "step {step}");
            assert_eq!(
                events,
                vec![Control::Ping(b"abc".to_vec()), Control::Close(Some(1000))]
            );
        }
    }

    #[test]
    fn empty_control_frame_at_the_end_of_a_read() {
        let (mut out, mut events) = (BytesMut::new(), Vec::new());
        let mut dec = Decoder::default();
        dec.decode(&[0x82, 0x01, 0x07, 0x89], &mut out, &mut events)
            .unwrap();
        assert!(events.is_empty());
        dec.decode(&[0x00], &mut out, &mut events).unwrap();
        assert_eq!(events, vec![Control::Ping(Vec::new())]);
        dec.decode(&[0x88, 0x00], &mut out, &mut events).unwrap();
        assert_eq!(events[1], Control::Close(None));
        assert_eq!(&out[..], &[0x07]);
    }

    #[test]
    fn refuses_bad_frames() {
        let (mut out, mut events) = (BytesMut::new(), Vec::new());
        for wire in [
            &[0x81u8, 0x01, b'x'][..],   // text
            &[0xc2, 0x01, 0x00][..],     // RSV1 without an extension
            &[0x83, 0x00][..],           // reserved opcode
            &[0x09, 0x00][..],           // fragmented ping
            &[0x89, 126, 0x00, 126][..], // ping longer than 125
        ] {
            assert!(Decoder::default()
                .decode(wire, &mut out, &mut events)
                .is_err());
        }
    }
}
