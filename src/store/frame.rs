//! The frame around every record on disk:
//!
//! ```text
//! magic  0xD5 0x5A     2 bytes
//! length u32 LE        bytes of type + payload (the body), 1 ..= MAX_BODY_LEN
//! check  u16 LE        low 16 bits of CRC-32C(salt u32 LE, length u32 LE)
//! crc    u32 LE        CRC-32C of the segment's salt (u32 LE) followed by the body
//! body   type u8 + payload (see super::record)
//! ```
//!
//! The magic lets a scanner find the next frame after damage; the checksum tells a real frame
//! from bytes that happen to look like one. The header check rejects a false candidate in
//! constant time: without it, every magic-looking pair inside a damaged frame would cost a
//! checksum over the length it claims, and a payload crafted full of them (a client's message,
//! up to 256 MiB) would make resynchronising quadratic. The salt, random per segment file and
//! kept in its header, makes a frame valid only in its own segment: a frame-shaped message
//! payload (a client publishing a segment's bytes) never checks out when resynchronisation
//! lands inside it, and nobody who cannot read the file can craft a header that passes.

use thiserror::Error;

use super::crc::Crc32c;
use super::record::{EncodeError, RecordError, StoreRecord};

/// The first bytes of every frame.
pub const FRAME_MAGIC: [u8; 2] = [0xD5, 0x5A];
/// Magic, length, header check and checksum.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest body: an MQTT packet is at most 256 MiB, a record holds one message.
pub const MAX_BODY_LEN: usize = 1 << 29;

/// Why the bytes at a position are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The bytes end before the frame does (a torn write, or the end of the data).
    #[error("frame incomplete: {needed} more bytes needed")]
    Incomplete {
        /// Bytes missing.
        needed: usize,
    },
    /// The frame does not start with the magic bytes.
    #[error("no frame magic")]
    BadMagic,
    /// The header check does not match the length (not a frame, or a damaged length).
    #[error("frame header check mismatch")]
    BadHeader,
    /// The length field is 0 or over [`MAX_BODY_LEN`].
    #[error("frame length {0} out of range")]
    BadLength(u32),
    /// The body does not match its checksum.
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The frame is intact but its body is not a record this version understands.
    #[error("undecodable record: {0}")]
    Record(#[from] RecordError),
}

/// The header check of a frame of `len` body bytes in a segment with `salt`.
pub fn header_check(salt: u32, len: u32) -> u16 {
    let mut crc = Crc32c::new();
    crc.update(&salt.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.finish() as u16
}

/// The checksum of a frame's body in a segment with `salt`.
pub fn frame_crc(salt: u32, body: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&salt.to_le_bytes());
    crc.update(body);
    crc.finish()
}

/// Appends `record` as one frame of a segment with `salt` to `out`; returns the frame's
/// length. On error `out` is left as it was.
pub fn encode_frame(
    record: &StoreRecord,
    salt: u32,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    encode_frame_with(salt, out, |out| record.encode_body(out))
}

/// Appends one frame of a segment with `salt` to `out`, its body written by `body`; returns
/// the frame's length. On error `out` is left as it was.
pub fn encode_frame_with(
    salt: u32,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN - 2]);
    let body_start = out.len();
    if let Err(error) = body(out) {
        out.truncate(start);
        return Err(error);
    }
    let body_len = out.len() - body_start;
    if body_len > MAX_BODY_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong {
            field: "record",
            len: body_len,
        });
    }
    let crc = frame_crc(salt, &out[body_start..]);
    let len = body_len as u32;
    out[start + 2..start + 6].copy_from_slice(&len.to_le_bytes());
    out[start + 6..start + 8].copy_from_slice(&header_check(salt, len).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Checks the framing of the frame at the start of `buf` (magic, length, checksum with the
/// segment's `salt`) without decoding the body; returns the body and the frame's total length.
pub fn check_frame(buf: &[u8], salt: u32) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < FRAME_MAGIC.len() {
        if FRAME_MAGIC.starts_with(buf) {
            return Err(FrameError::Incomplete {
                needed: FRAME_HEADER_LEN - buf.len(),
            });
        }
        return Err(FrameError::BadMagic);
    }
    if buf[..2] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_LEN - buf.len(),
        });
    };
    let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    if u16::from_le_bytes([header[6], header[7]]) != header_check(salt, len) {
        return Err(FrameError::BadHeader);
    }
    let stored = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len == 0 || len as usize > MAX_BODY_LEN {
        return Err(FrameError::BadLength(len));
    }
    let total = FRAME_HEADER_LEN + len as usize;
    let Some(body) = buf.get(FRAME_HEADER_LEN..total) else {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    };
    let computed = frame_crc(salt, body);
    if computed != stored {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    Ok((body, total))
}

/// Decodes the frame at the start of `buf` (a segment with `salt`): the record and the
/// frame's total length.
pub fn decode_frame(buf: &[u8], salt: u32) -> Result<(StoreRecord, usize), FrameError> {
    let (body, total) = check_frame(buf, salt)?;
    Ok((StoreRecord::decode_body(body)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::samples;

    const SALT: u32 = 0x5eed_1234;

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = Vec::new();
        let records = samples();
        for record in &records {
            encode_frame(record, SALT, &mut buf).unwrap();
        }
        let mut at = 0;
        for record in &records {
            let (decoded, len) = decode_frame(&buf[at..], SALT).unwrap();
            assert_eq!(&decoded, record);
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn damage_is_a_typed_error() {
        let mut buf = Vec::new();
        let len = encode_frame(&samples()[0], SALT, &mut buf).unwrap();
        for cut in 0..len {
            assert!(matches!(
                decode_frame(&buf[..cut], SALT),
                Err(FrameError::Incomplete { .. })
            ));
        }
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert_eq!(decode_frame(&bad, SALT), Err(FrameError::BadMagic));
        let mut bad = buf.clone();
        bad[len - 1] ^= 0x10;
        assert!(matches!(
            decode_frame(&bad, SALT),
            Err(FrameError::BadChecksum { .. })
        ));
        let mut bad = buf.clone();
        bad[2..6].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_frame(&bad, SALT), Err(FrameError::BadHeader));
        bad[6..8].copy_from_slice(&header_check(SALT, 0).to_le_bytes());
        assert_eq!(decode_frame(&bad, SALT), Err(FrameError::BadLength(0)));
        // The same frame in a segment with another salt.
        assert_eq!(decode_frame(&buf, SALT ^ 1), Err(FrameError::BadHeader));
        assert_eq!(decode_frame(&[0x00], SALT), Err(FrameError::BadMagic));
        assert!(matches!(
            decode_frame(&[0xD5], SALT),
            Err(FrameError::Incomplete { .. })
        ));
    }

    #[test]
    fn an_intact_frame_with_an_unknown_type_is_a_record_error() {
        let body = [0xee, 1, 2, 3];
        let mut buf = FRAME_MAGIC.to_vec();
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&header_check(SALT, body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&frame_crc(SALT, &body).to_le_bytes());
        buf.extend_from_slice(&body);
        assert_eq!(check_frame(&buf, SALT).map(|(_, len)| len), Ok(buf.len()));
        // The same bytes are no frame in a segment with another salt.
        assert!(check_frame(&buf, SALT ^ 1).is_err());
        assert_eq!(
            decode_frame(&buf, SALT),
            Err(FrameError::Record(RecordError::UnknownType(0xee)))
        );
    }
}
