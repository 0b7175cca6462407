//! The 16-byte header at the front of every payload: publisher id, sequence number and send
//! time. 16 bytes is the Open MQTT Benchmark Suite's default payload, so the default costs no
//! extra bytes; larger payloads are zero-padded.

/// Bytes the header takes; the smallest payload the harness sends.
pub const HEADER_LEN: usize = 16;

/// What a receiver reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Global publisher index.
    pub publisher: u32,
    /// Per-publisher sequence number from 0.
    pub seq: u32,
    /// Send time, [`crate::sys::mono_ns`].
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the first 16 bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        out[4..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a header; `None` when the payload is too short (not one of ours).
    pub fn read(payload: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            publisher: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            seq: u32::from_be_bytes(bytes[4..8].try_into().ok()?),
            sent_ns: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let header = Header {
            publisher: 49_999,
            seq: 1_234_567,
            sent_ns: 987_654_321_000,
        };
        let mut buf = [0u8; 32];
        header.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(header));
        assert_eq!(Header::read(&buf[..15]), None);
    }
}
