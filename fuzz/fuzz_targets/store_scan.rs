//! Feeds arbitrary bytes to the store's segment reader: as a whole segment file (header and
//! frames) and as bare frames under a salt taken from the input. Scanning must never panic;
//! every record found must encode to a frame that decodes to itself; replaying what was found
//! must never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmq::store::frame::{decode_frame, encode_frame};
use shardmq::store::recover::Replayer;
use shardmq::store::segment::{open_segment, Scanner};
use shardmq::store::StoreRecord;

fn check(records: impl Iterator<Item = (usize, StoreRecord)>, salt: u32, replayer: &mut Replayer) {
    for (_, record) in records {
        let mut frame = Vec::new();
        if encode_frame(&record, salt, &mut frame).is_ok() {
            let (again, len) = decode_frame(&frame, salt).expect("a re-encoded record decodes");
            assert_eq!(len, frame.len());
            assert_eq!(again, record);
        }
        replayer.apply(0, record);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut replayer = Replayer::new();
    if let Ok((header, scanner)) = open_segment(data) {
        check(scanner, header.salt, &mut replayer);
    }
    if let Some((salt, frames)) = data.split_first_chunk::<4>() {
        let salt = u32::from_le_bytes(*salt);
        let mut scanner = Scanner::new(frames, salt);
        check(scanner.by_ref(), salt, &mut replayer);
        let stats = scanner.into_stats();
        if let Some(tail) = stats.torn_tail {
            assert_eq!(tail.offset + tail.len, frames.len());
        }
    }
    let _ = replayer.finish();
});
