//! Wire primitives shared by every packet: the variable byte integer, two- and four-byte
//! integers, UTF-8 strings and binary data (MQTT 5.0 §1.5), read zero-copy from a frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::MqttStr;

/// Largest value a variable byte integer can hold (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Decodes a variable byte integer from the start of `buf`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((value, bytes_used)))` otherwise. A fifth
/// continuation byte is malformed.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Number of bytes `value` takes as a variable byte integer.
pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a variable byte integer.
pub fn write_varint(out: &mut BytesMut, value: u32) -> Result<(), EncodeError> {
    if value > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge {
            size: value as usize,
            max: MAX_VARINT as usize,
        });
    }
    let mut rest = value;
    loop {
        let mut byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Appends a length-prefixed UTF-8 string (already known to be valid).
pub fn write_str(out: &mut BytesMut, value: &str) -> Result<(), EncodeError> {
    write_binary(out, value.as_bytes())
}

/// Appends length-prefixed binary data.
pub fn write_binary(out: &mut BytesMut, value: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong(value.len()))?;
    out.put_u16(len);
    out.put_slice(value);
    Ok(())
}

/// Encoded size of a length-prefixed string or binary field.
pub fn prefixed_len(value: &[u8]) -> usize {
    2 + value.len()
}

/// A cursor over one complete packet body. Every slice it returns shares the frame's memory.
#[derive(Debug)]
pub struct Reader {
    frame: Bytes,
    pos: usize,
}

impl Reader {
    /// Starts reading `frame` from its first byte.
    pub fn new(frame: Bytes) -> Self {
        Reader { frame, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.frame.len() - self.pos
    }

    /// True once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Malformed(what));
        }
        let slice = self.frame.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(slice)
    }

    /// The next byte, without consuming it.
    pub fn peek_u8(&self) -> Option<u8> {
        self.frame.get(self.pos).copied()
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let byte = *self
            .frame
            .get(self.pos)
            .ok_or(DecodeError::Malformed(what))?;
        self.pos += 1;
        Ok(byte)
    }

    /// A big-endian two-byte integer.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let bytes = self
            .frame
            .get(self.pos..self.pos + 2)
            .ok_or(DecodeError::Malformed(what))?;
        self.pos += 2;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A big-endian four-byte integer.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let bytes = self
            .frame
            .get(self.pos..self.pos + 4)
            .ok_or(DecodeError::Malformed(what))?;
        self.pos += 4;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A variable byte integer that must be complete within the frame.
    pub fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match read_varint(&self.frame[self.pos..])? {
            Some((value, used)) => {
                self.pos += used;
                Ok(value)
            }
            None => Err(DecodeError::Malformed(what)),
        }
    }

    /// Length-prefixed binary data.
    pub fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)? as usize;
        self.take(len, what)
    }

    /// A length-prefixed UTF-8 string, checked as MQTT requires.
    pub fn string(&mut self, what: &'static str) -> Result<MqttStr, DecodeError> {
        let raw = self.binary(what)?;
        MqttStr::from_utf8(raw)
    }

    /// Everything not read yet (e.g. a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        // Moved out, not sliced: a slice would cost a reference count increment now and a
        // decrement when the reader drops its frame.
        let mut rest = std::mem::take(&mut self.frame);
        rest.advance(self.pos);
        self.pos = 0;
        rest
    }

    /// A sub-reader over the next `len` bytes (a property block).
    pub fn sub_reader(&mut self, len: usize, what: &'static str) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len, what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_from_the_spec_table() {
        // MQTT 5.0 §1.5.5, table 1-1.
        let cases: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (value, bytes) in cases {
            let mut out = BytesMut::new();
            write_varint(&mut out, value).unwrap();
            assert_eq!(&out[..], bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(read_varint(bytes).unwrap(), Some((value, bytes.len())));
        }
    }

    #[test]
    fn varint_incomplete_and_too_long() {
        assert_eq!(read_varint(&[]).unwrap(), None);
        assert_eq!(read_varint(&[0x80, 0x80]).unwrap(), None);
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(write_varint(&mut BytesMut::new(), MAX_VARINT + 1).is_err());
    }
}
