//! Moving bytes between files inside the daemon: the engine behind
//! `copy_file_range(2)` and offload writes.
//!
//! Where a source chunk and its destination are both 1 MiB-aligned and the
//! chunk is whole (or is the source's last chunk and becomes the
//! destination's last), the destination takes the chunk by reference: no
//! data is read or written, only catalog rows. Everything else is copied
//! one destination chunk at a time; a whole destination chunk is read by
//! the source straight into the chunk buffer the destination then keeps.

use super::ops::{OpenFile, Shared};
use crate::error::Result;
use crate::store::buf::ChunkBuf;
use crate::store::treehash::LEAF;

const LEAF64: u64 = LEAF as u64;

/// Where a transfer's bytes come from.
pub trait Source {
    /// Reads up to `len` bytes at `off` into `out` (replacing its content).
    fn read(&self, off: u64, len: u32, out: &mut Vec<u8>) -> Result<()>;
    /// Reads up to `buf.len()` bytes at `off` in place; returns how many.
    /// By default through `scratch` and one copy.
    fn read_into(&self, off: u64, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<usize> {
        super::ops::read_through(buf, scratch, |n, v| self.read(off, n, v))
    }
    /// The whole chunk at chunk-aligned `off`, if the source can lend it.
    fn extent_at(&self, off: u64) -> Result<Option<Shared>>;
}

/// An open file as a source: its bytes and chunks as they are now.
pub struct Live<'a>(pub &'a dyn OpenFile);

impl Source for Live<'_> {
    fn read(&self, off: u64, len: u32, out: &mut Vec<u8>) -> Result<()> {
        self.0.read(off, len, out)
    }
    fn read_into(&self, off: u64, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<usize> {
        self.0.read_into(off, buf, scratch)
    }
    fn extent_at(&self, off: u64) -> Result<Option<Shared>> {
        self.0.extent_at(off)
    }
}

/// Counts what a transfer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub bytes: u64,
    /// Bytes that moved by sharing chunks (no data copied).
    pub shared: u64,
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`.
/// Short only if the source ends first.
pub fn transfer(
    src: &dyn Source,
    src_off: u64,
    dst: &dyn OpenFile,
    dst_off: u64,
    len: u64,
) -> Result<Moved> {
    let mut moved = Moved::default();
    let mut buf = Vec::new();
    let end_after = dst.size()?.max(dst_off + len);
    while moved.bytes < len {
        let s = src_off + moved.bytes;
        let d = dst_off + moved.bytes;
        let remain = len - moved.bytes;
        if s.is_multiple_of(LEAF64)
            && d.is_multiple_of(LEAF64)
            && let Some(ext) = src.extent_at(s)?
        {
            let l = u64::from(ext.len);
            // A short chunk replaces the destination's whole chunk, so it may
            // only go where nothing follows it.
            let fits = l <= remain && (l == LEAF64 || (l == remain && d + l >= end_after));
            if fits && dst.share(d, ext)? {
                moved.bytes += l;
                moved.shared += l;
                continue;
            }
        }
        let n = remain.min(LEAF64 - d % LEAF64) as u32;
        if u64::from(n) == LEAF64 {
            // A whole destination chunk: the source fills a chunk buffer
            // in place and the destination keeps that buffer, so the bytes
            // are copied once (out of the source) instead of twice.
            let mut chunk = ChunkBuf::new();
            let got = src.read_into(s, chunk.spare(), &mut buf)?;
            if got == 0 {
                break;
            }
            chunk.set_len(got);
            dst.write_chunk(d, chunk)?;
            moved.bytes += got as u64;
            continue;
        }
        src.read(s, n, &mut buf)?;
        if buf.is_empty() {
            break;
        }
        dst.write_all(d, &buf)?;
        moved.bytes += buf.len() as u64;
    }
    Ok(moved)
}
