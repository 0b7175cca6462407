//! A connection's pending output: the encoded bytes, with large payloads shared rather than
//! copied between them. A fan-out PUBLISH's payload is one allocation referenced by every
//! subscriber's output until its send completes; only the small encoded head of each delivery
//! is copied. The engine (`crate::net`) sends such output as several buffers in one `SENDMSG`.

use bytes::{BufMut, Bytes, BytesMut};

/// Payloads at least this long are referenced, not copied: below it a copy costs less than the
/// extra buffer of a vectored send.
pub const SHARE_MIN: usize = 2048;

/// Output bytes with shared payloads spliced in (see the module documentation). Derefs to the
/// encoded bytes, so packets encode into it as into any `BytesMut`.
#[derive(Debug, Default)]
pub struct Output {
    bytes: BytesMut,
    /// Payloads spliced in. Boxed: most connections never hold one, and the record is per
    /// connection.
    shared: Option<Box<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Payloads that follow `bytes[..offset]`, in order of their offsets.
    payloads: Vec<(usize, Bytes)>,
    /// Their total length (the output's length is asked for per delivery).
    len: usize,
}

impl Output {
    /// Bytes of output in all: encoded and shared.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared.as_ref().map_or(0, |shared| shared.len)
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.has_shared()
    }

    /// Whether any payload is shared (the output is not one contiguous buffer).
    pub fn has_shared(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| !shared.payloads.is_empty())
    }

    /// Appends `payload`: referenced if it is at least [`SHARE_MIN`] bytes, copied otherwise.
    pub fn put_payload(&mut self, payload: &Bytes) {
        if payload.len() >= SHARE_MIN {
            let at = self.bytes.len();
            let shared = self.shared.get_or_insert_with(Default::default);
            shared.payloads.push((at, payload.clone()));
            shared.len += payload.len();
        } else {
            self.bytes.put_slice(payload);
        }
    }

    /// The output as the buffers to send, in order (the encoded bytes split where payloads
    /// are spliced in); empty buffers are left out.
    pub fn into_segments(self) -> Vec<Bytes> {
        let mut bytes = self.bytes.freeze();
        let mut segments = Vec::new();
        let mut consumed = 0;
        let payloads = self
            .shared
            .map(|shared| shared.payloads)
            .unwrap_or_default();
        for (at, payload) in payloads {
            let head = bytes.split_to(at - consumed);
            consumed = at;
            if !head.is_empty() {
                segments.push(head);
            }
            if !payload.is_empty() {
                segments.push(payload);
            }
        }
        if !bytes.is_empty() {
            segments.push(bytes);
        }
        segments
    }

    /// The output as one contiguous buffer (shared payloads copied in): for transports that
    /// transform the bytes anyway (TLS, WebSocket) and for tests.
    pub fn into_contiguous(self) -> BytesMut {
        if !self.has_shared() {
            return self.bytes;
        }
        let mut flat = BytesMut::with_capacity(self.len());
        for segment in self.into_segments() {
            flat.put_slice(&segment);
        }
        flat
    }

    /// Leaves the output empty (keeping the encoded buffer's memory).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.shared = None;
    }
}

impl From<BytesMut> for Output {
    fn from(bytes: BytesMut) -> Self {
        Output {
            bytes,
            shared: None,
        }
    }
}

impl std::ops::Deref for Output {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.bytes
    }
}

impl std::ops::DerefMut for Output {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
}

/// Where a session writes: any `BytesMut` (payloads copied), or an [`Output`] (large payloads
/// shared).
pub trait OutputSink {
    /// The encoded bytes, for packets written whole.
    fn bytes(&mut self) -> &mut BytesMut;
    /// Appends a PUBLISH's payload after its head.
    fn put_payload(&mut self, payload: &Bytes) {
        self.bytes().put_slice(payload);
    }
    /// Bytes of output in all.
    fn output_len(&self) -> usize;
}

impl OutputSink for BytesMut {
    fn bytes(&mut self) -> &mut BytesMut {
        self
    }
    fn output_len(&self) -> usize {
        self.len()
    }
}

impl OutputSink for Output {
    fn bytes(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
    fn put_payload(&mut self, payload: &Bytes) {
        Output::put_payload(self, payload);
    }
    fn output_len(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_are_shared_and_small_ones_copied() {
        let large = Bytes::from(vec![7u8; SHARE_MIN]);
        let small = Bytes::from_static(b"small");
        let mut out = Output::default();
        out.put_slice(b"head1");
        out.put_payload(&large);
        out.put_slice(b"head2");
        out.put_payload(&small);
        out.put_slice(b"tail");
        assert!(out.has_shared());
        assert_eq!(out.len(), 5 + SHARE_MIN + 5 + 5 + 4);
        let segments = out.into_segments();
        assert_eq!(segments.len(), 3);
        assert_eq!(&segments[0][..], b"head1");
        assert_eq!(
            segments[1].as_ptr(),
            large.as_ptr(),
            "referenced, not copied"
        );
        assert_eq!(&segments[2][..], b"head2smalltail");
    }

    #[test]
    fn contiguous_form_keeps_the_order() {
        let large = Bytes::from((0..3 * SHARE_MIN).map(|i| i as u8).collect::<Vec<_>>());
        let mut out = Output::default();
        out.put_payload(&large);
        out.put_slice(b"x");
        out.put_payload(&large);
        let mut want = large.to_vec();
        want.push(b'x');
        want.extend_from_slice(&large);
        assert_eq!(&out.into_contiguous()[..], &want[..]);
    }
}
