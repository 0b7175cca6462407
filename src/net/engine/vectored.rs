//! A send of several buffers (a connection's output with shared payloads, see
//! [`crate::codec::Output`]): the buffers still to send, and the iovec array and message
//! header the kernel reads while the `SENDMSG` is in flight. A short write advances through the
//! buffers; the rest goes out in the next `SENDMSG`.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// At most this many buffers per `SENDMSG` (the kernel's UIO_MAXIOV is 1024); the rest goes
/// in the next one, as after a short write.
const MAX_IOVECS: usize = 256;

pub(super) struct Vectored {
    segments: VecDeque<Bytes>,
    iovecs: Vec<libc::iovec>,
    header: libc::msghdr,
}

impl Vectored {
    pub(super) fn new(segments: Vec<Bytes>) -> Self {
        Vectored {
            segments: segments.into(),
            iovecs: Vec::new(),
            // SAFETY: an all-zero msghdr is valid (no name, no control data, no iovecs).
            header: unsafe { std::mem::zeroed() },
        }
    }

    /// Bytes not sent yet.
    pub(super) fn remaining(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum()
    }

    /// The header for the next `SENDMSG`, over the buffers not sent yet. It points into
    /// `self`: valid until `self` is touched again.
    pub(super) fn prepare(&mut self) -> *const libc::msghdr {
        self.iovecs.clear();
        self.iovecs.extend(
            self.segments
                .iter()
                .take(MAX_IOVECS)
                .map(|segment| libc::iovec {
                    iov_base: segment.as_ptr() as *mut libc::c_void,
                    iov_len: segment.len(),
                }),
        );
        self.header.msg_iov = self.iovecs.as_mut_ptr();
        self.header.msg_iovlen = self.iovecs.len() as _;
        &self.header
    }

    /// `written` bytes went out: drops the buffers sent whole and advances into the next.
    /// Returns how many bytes that was (at most what was left).
    pub(super) fn advance(&mut self, written: usize) -> usize {
        let mut left = written;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if front.len() > left {
                front.advance(left);
                left = 0;
            } else {
                left -= front.len();
                self.segments.pop_front();
            }
        }
        written - left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_writes_advance_across_buffers() {
        let mut sends = Vectored::new(vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"ij"),
        ]);
        assert_eq!(sends.remaining(), 10);
        assert_eq!(sends.advance(4), 4);
        assert_eq!(sends.remaining(), 6);
        // SAFETY: reading back the header just built.
        let header = unsafe { &*sends.prepare() };
        assert_eq!(header.msg_iovlen, 2);
        // SAFETY: two iovecs over live buffers.
        let first = unsafe { std::slice::from_raw_parts(header.msg_iov, 2) };
        assert_eq!(first[0].iov_len, 4, "the rest of `defgh`");
        assert_eq!(sends.advance(100), 6, "never more than what was left");
        assert_eq!(sends.remaining(), 0);
    }
}
