//! The decoder never holds more memory than the packet it is given allows: a counting global
//! allocator tracks the peak of live heap bytes while decoding hostile input. Decoded structures
//! may be larger than their wire form by a constant factor (a 4-byte SUBSCRIBE entry becomes a
//! 40-byte `(MqttStr, SubscriptionOptions)`), so the bound is "a constant times the frame", and the
//! frame itself is bounded by the maximum packet size before any of it is buffered.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use shardmq::codec::{decode, ProtocolVersion};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak live heap bytes above the starting point while `f` runs.
fn peak_while(f: impl FnOnce()) -> usize {
    let base = LIVE.with(|live| live.get());
    PEAK.with(|peak| peak.set(base));
    f();
    (PEAK.with(|peak| peak.get()) - base).max(0) as usize
}

/// Decodes everything in `bytes` (held in a read buffer allocated beforehand) and returns the
/// peak heap growth while doing it.
fn decode_cost(bytes: &[u8], max: usize) -> usize {
    let mut buf = BytesMut::from(bytes);
    peak_while(|| while let Ok(Some(_)) = decode(&mut buf, ProtocolVersion::V5, max) {})
}

#[test]
fn oversized_announcement_allocates_nothing() {
    // A fixed header announcing 256 MiB: refused from the header, nothing reserved.
    assert_eq!(decode_cost(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1 << 20), 0);
}

#[test]
fn allocation_is_bounded_by_the_frame_for_random_input() {
    // A simple deterministic generator: no dependency, reproducible.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias towards plausible headers so the bodies get parsed.
        if let Some(first) = bytes.first_mut() {
            *first = ((next() % 15 + 1) as u8) << 4 | (*first & 0x0f);
        }
        if bytes.len() > 1 {
            bytes[1] = (bytes.len() - 2).min(127) as u8;
        }
        let cost = decode_cost(&bytes, 256);
        // Vectors of user properties, filters and reason codes are bounded by the body; the
        // slack covers Vec doubling and the boxed CONNECT.
        assert!(
            cost <= 64 * bytes.len() + 1024,
            "{cost} bytes allocated for {} input bytes: {bytes:02x?}",
            bytes.len()
        );
    }
}

#[test]
fn a_flood_of_subscribe_entries_is_bounded() {
    // SUBSCRIBE with 20,000 one-byte filters: allocation stays proportional to the packet.
    let mut body = vec![0x00, 0x01, 0x00];
    for _ in 0..20_000 {
        body.extend_from_slice(&[0x00, 0x01, b'a', 0x00]);
    }
    let mut packet = vec![0x82];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let cost = decode_cost(&packet, 1 << 20);
    assert!(cost <= 24 * packet.len(), "{cost} for {}", packet.len());
}
