//! A chunk-backed medium: a byte stream stored as a list of content-addressed
//! chunks in the chunk store, read as a medium. An archive imported into the
//! store (rather than attached by reference) is one; a tape read into the
//! store will be another.
//!
//! The layout is that of a native file (`volume/native/file.rs`), so one
//! stored byte stream can be read either way: chunk `i` covers bytes
//! `[i MiB, i MiB + len)`, a missing chunk is a hole that reads as zeros, and
//! a chunk shorter than 1 MiB reads as zeros after its end.
//!
//! Every read goes through [`ChunkAccess`], the one path to chunk data, so a
//! chunk that shelving has moved to a durable tier is recalled here as for
//! any native read, and its checks (CRC-32C per 4 KiB block) apply. Reads
//! take no pins: whoever holds the medium keeps its chunks referenced (in
//! the catalog) for as long as it exists.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::ReadAt;
use crate::error::{Error, ErrorKind, Result};
use crate::store::access::ChunkAccess;
use crate::store::chunks::hex;
use crate::store::treehash::{Hash, LEAF};

const LEAF64: u64 = LEAF as u64;

/// A medium of `size` bytes whose data lies in chunks.
pub struct ChunkedMedium {
    chunks: Arc<dyn ChunkAccess>,
    /// Chunk number to (chunk name, stored length).
    extents: BTreeMap<u64, (Hash, u32)>,
    size: u64,
    /// Names the medium in errors.
    label: String,
}

impl ChunkedMedium {
    /// A medium of `size` bytes made of `extents` (chunk number, chunk name,
    /// stored length), read through `chunks`. Fails, naming `label`, if an
    /// extent lies past `size` or is longer than a chunk.
    pub fn new(
        chunks: Arc<dyn ChunkAccess>,
        size: u64,
        extents: impl IntoIterator<Item = (u64, Hash, u32)>,
        label: &str,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (idx, hash, len) in extents {
            let start = idx.checked_mul(LEAF64).filter(|&s| s < size);
            if start.is_none() || len as usize > LEAF {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{label}: chunk {idx} ({}, {len} bytes) lies outside a medium of {size} \
                         bytes in chunks of {LEAF} bytes",
                        hex(&hash)
                    ),
                ));
            }
            map.insert(idx, (hash, len));
        }
        Ok(ChunkedMedium {
            chunks,
            extents: map,
            size,
            label: label.to_string(),
        })
    }
}

impl ReadAt for ChunkedMedium {
    /// Fills as much of `buf` as the medium holds from `offset`, across
    /// chunk boundaries; a failed chunk read fails the whole call.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let total = (self.size - offset).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < total {
            let pos = offset + done as u64;
            let idx = pos / LEAF64;
            let a = (pos % LEAF64) as usize;
            let n = (LEAF - a).min(total - done);
            let dst = &mut buf[done..done + n];
            match self.extents.get(&idx) {
                None => dst.fill(0),
                Some((hash, len)) => {
                    let stored = (*len as usize).saturating_sub(a).min(n);
                    dst[stored..].fill(0);
                    if stored > 0 {
                        self.chunks.read(hash, a, &mut dst[..stored]).map_err(|e| {
                            io::Error::other(format!(
                                "{}: offset {pos}: chunk {}: {e}",
                                self.label,
                                hex(hash)
                            ))
                        })?;
                    }
                }
            }
            done += n;
        }
        Ok(total)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medium::tests::store_as_chunks;
    use crate::store::access::HotChunks;
    use crate::store::chunks::ChunkStore;

    fn pattern(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8 | 1).collect();
        // Chunk 1 is a hole.
        v[LEAF..2 * LEAF].fill(0);
        v
    }

    #[test]
    fn reads_back_what_was_stored_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let data = pattern(3 * LEAF + 12_345);
        let (extents, _pins) = store_as_chunks(&store, &data);
        assert_eq!(extents.len(), 3, "the hole is not stored");
        let m = ChunkedMedium::new(
            HotChunks::new(store.clone()),
            data.len() as u64,
            extents,
            "t",
        )
        .unwrap();
        assert_eq!(m.size(), data.len() as u64);
        let mut whole = vec![0xAAu8; data.len() + 100];
        assert_eq!(m.read_at(&mut whole, 0).unwrap(), data.len());
        assert!(whole[..data.len()] == data[..]);
        for (at, len) in [
            (LEAF - 10, 20),
            (2 * LEAF - 1, 2),
            (LEAF - 1, LEAF + 2),
            (3 * LEAF - 5, 10),
            (3 * LEAF + 12_340, 100),
            (0, 1),
        ] {
            let mut buf = vec![0xAAu8; len];
            let n = m.read_at(&mut buf, at as u64).unwrap();
            let want = &data[at.min(data.len())..(at + len).min(data.len())];
            assert_eq!(n, want.len(), "at {at}");
            assert!(buf[..n] == *want, "at {at}");
        }
        assert_eq!(m.read_at(&mut [0u8; 10], data.len() as u64).unwrap(), 0);
        assert_eq!(m.read_at(&mut [0u8; 10], u64::MAX).unwrap(), 0);
    }

    #[test]
    fn a_short_chunk_reads_as_zeros_after_its_end_and_missing_data_fails() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let pin = store.put(b"short").unwrap();
        let m = ChunkedMedium::new(
            HotChunks::new(store.clone()),
            LEAF64 + 10,
            [(1, *pin.hash(), 5)],
            "t",
        )
        .unwrap();
        let mut buf = [0xAAu8; 20];
        assert_eq!(m.read_at(&mut buf, LEAF64 - 5).unwrap(), 15);
        assert_eq!(&buf[..15], b"\0\0\0\0\0short\0\0\0\0\0");

        let absent = crate::store::treehash::sha256(b"absent");
        let m =
            ChunkedMedium::new(HotChunks::new(store), 100, [(0, absent, 100)], "x.tar").unwrap();
        let e = m.read_at(&mut buf, 0).unwrap_err();
        assert!(e.to_string().starts_with("x.tar: offset 0: chunk "), "{e}");
    }

    #[test]
    fn extents_outside_the_medium_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let h = [7u8; 32];
        for (size, idx, len) in [
            (LEAF64, 1, 10),
            (10, 0, LEAF as u32 + 1),
            (u64::MAX, u64::MAX, 1),
            (0, 0, 0),
        ] {
            let e = ChunkedMedium::new(HotChunks::new(store.clone()), size, [(idx, h, len)], "m")
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::Invalid);
            assert!(e.to_string().starts_with("m: chunk "), "{e}");
        }
    }
}
