//! Feeds arbitrary bytes to the decoder under every protocol version, and re-encodes whatever
//! decodes: decoding must never panic, and a decoded packet must encode and decode to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq::codec::{decode, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 16) {
            let mut out = BytesMut::new();
            if packet.encode(version, &mut out).is_ok() {
                let again = decode(&mut out, version, usize::MAX)
                    .expect("re-encoded packet decodes")
                    .expect("re-encoded packet is complete");
                assert_eq!(again, packet);
            }
        }
    }
});
