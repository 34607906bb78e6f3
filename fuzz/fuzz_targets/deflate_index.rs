//! Fuzzes the checkpointed deflate reader: any stream, declared size and read
//! pattern must give bytes or an error, never a panic; and when the stream is
//! valid, reads at random offsets (resumed from checkpoints, or decoded from
//! the start on a fresh index) must agree with one sequential pass.
//!
//! Input: declared size (u32 LE, taken modulo 2 MiB), a seed for the read
//! pattern (u32 LE), then the raw deflate stream.
#![no_main]

use std::sync::Arc;

use fsd::volume::archive::cache::DecompCache;
use fsd::volume::archive::deflate_index::{DeflateIndex, Stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from(u32::from_le_bytes(data[0..4].try_into().unwrap())) % (2 << 20);
    let mut x = u64::from(u32::from_le_bytes(data[4..8].try_into().unwrap())) | 1;
    let body = data[8..].to_vec();
    let stream = Stream {
        csize: body.len() as u64,
        source: Arc::new(body),
        offset: 0,
        size,
        crc32: None,
        label: "fuzz".into(),
    };
    // The smallest interval (one cache block), so checkpoints are made and used.
    let seq = DeflateIndex::new(stream.clone(), DecompCache::new(64 << 20, 1));
    let _hold = seq.hold();
    let mut whole = Vec::new();
    let valid = loop {
        match seq.read(None, whole.len() as u64, 1 << 20) {
            Ok(v) if v.is_empty() => break true,
            Ok(v) => whole.extend_from_slice(&v),
            Err(_) => break false,
        }
    };
    if valid {
        assert_eq!(whole.len() as u64, size);
    }
    let fresh = DeflateIndex::new(stream, DecompCache::new(1 << 20, 1));
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = if size == 0 { x % 16 } else { x % size };
        let len = ((x >> 24) % 300_000) as usize + 1;
        for idx in [&seq, &fresh] {
            let r = idx.read(None, off, len);
            if valid {
                let v = r.expect("a read of a valid stream failed");
                let end = (off as usize + len).min(whole.len());
                let want = whole.get(off as usize..end).unwrap_or(&[]);
                assert_eq!(v, want, "read at {off} len {len}");
            }
        }
    }
});
