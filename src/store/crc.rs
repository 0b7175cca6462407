//! CRC-32C (Castagnoli, the polynomial of iSCSI, ext4 and RocksDB): the SSE 4.2 `crc32`
//! instruction where the CPU has it (every x86-64 server since 2008; 8 bytes per instruction),
//! else slicing-by-8 over tables built at compile time. No dependency. Every journal record is
//! checksummed on the shard thread, so this is on the durable publish path.

const POLY: u32 = 0x82F6_3B78; // 0x1EDC6F41 reflected

const fn tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        t += 1;
    }
    tables
}

static TABLES: [[u32; 256]; 8] = tables();

/// A running CRC-32C.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    /// A checksum over no bytes yet.
    pub const fn new() -> Self {
        Crc32c(!0)
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2 (checked just above; the check is cached).
            self.0 = unsafe { update_sse42(self.0, bytes) };
            return;
        }
        self.0 = update_tables(self.0, bytes);
    }

    /// The checksum of everything added.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// The running (uninverted) checksum `crc` over `bytes`, by the `crc32` instruction, which
/// computes the same reflected CRC-32C as the tables.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut wide = u64::from(crc);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        wide = _mm_crc32_u64(wide, u64::from_le_bytes(word));
    }
    // The instruction leaves the 32-bit CRC in the low half.
    let mut crc = wide as u32;
    for &byte in chunks.remainder() {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

/// The running (uninverted) checksum `crc` over `bytes`, slicing by 8.
fn update_tables(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = crc;
    {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let lo = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ crc;
            crc = TABLES[7][(lo & 0xff) as usize]
                ^ TABLES[6][((lo >> 8) & 0xff) as usize]
                ^ TABLES[5][((lo >> 16) & 0xff) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][chunk[4] as usize]
                ^ TABLES[2][chunk[5] as usize]
                ^ TABLES[1][chunk[6] as usize]
                ^ TABLES[0][chunk[7] as usize];
        }
        for &byte in chunks.remainder() {
            crc = (crc >> 8) ^ TABLES[0][((crc ^ byte as u32) & 0xff) as usize];
        }
    }
    crc
}

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference.
    fn slow(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn slicing_matches_the_reference_and_is_incremental() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000] {
            assert_eq!(crc32c(&data[..len]), slow(&data[..len]), "len {len}");
        }
        let mut crc = Crc32c::new();
        crc.update(&data[..13]);
        crc.update(&data[13..500]);
        crc.update(&data[500..]);
        assert_eq!(crc.finish(), slow(&data));
    }

    /// Both ways of computing agree (whichever `update` picks on this machine).
    #[test]
    fn tables_and_instruction_agree() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for start in [0, 1, 3, 8] {
            for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4000] {
                let bytes = &data[start..start + len];
                let tables = !update_tables(!0, bytes);
                assert_eq!(tables, slow(bytes), "tables, len {len}");
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("sse4.2") {
                    // SAFETY: checked just above.
                    let instruction = !unsafe { update_sse42(!0, bytes) };
                    assert_eq!(instruction, tables, "instruction, len {len}");
                }
            }
        }
    }
}
