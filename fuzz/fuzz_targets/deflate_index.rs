//! Fuzzes the checkpointed deflate reader: any stream, declared size and read
//! pattern must give bytes or an error, never a panic; and when the stream is
//! valid, reads at random offsets (resumed from checkpoints, or decoded from
//! the start on a fresh index) must agree with one sequential pass.
//!
//! Input: declared size (u32 LE, taken modulo 2 MiB), a seed for the read
//! pattern (u32 LE), then the raw deflate stream.
#![no_main]

use fsd::volume::archive::deflate_index::check_reads_agree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from(u32::from_le_bytes(data[0..4].try_into().unwrap())) % (2 << 20);
    let seed = u64::from(u32::from_le_bytes(data[4..8].try_into().unwrap()));
    check_reads_agree(data[8..].to_vec(), size, seed);
});
