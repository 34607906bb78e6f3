//! Chunk-sized, page-aligned buffers, recycled through a small pool.
//!
//! Why not `Vec<u8>`: full chunks are written with O_DIRECT, which needs the
//! memory page-aligned; and fresh memory is expensive to touch on virtual
//! machines (every new page faults to the host), so buffers are reused
//! rather than allocated per chunk.

use std::alloc::{Layout, alloc, dealloc};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use parking_lot::Mutex;

use super::treehash::LEAF;

/// The alignment O_DIRECT needs (one page).
pub const ALIGN: usize = 4096;
/// Buffers kept for reuse (64 MiB at most).
const POOL_MAX: usize = 64;

static POOL: Mutex<Vec<Raw>> = Mutex::new(Vec::new());

struct Raw(NonNull<u8>);

// SAFETY: `Raw` owns its allocation exclusively; moving it between threads
// moves that ownership.
unsafe impl Send for Raw {}

fn layout() -> Layout {
    // LEAF and ALIGN are non-zero powers of two, so this cannot fail.
    Layout::from_size_align(LEAF, ALIGN).unwrap_or_else(|_| unreachable!())
}

impl Raw {
    fn take() -> Raw {
        if let Some(r) = POOL.lock().pop() {
            return r;
        }
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc(layout()) };
        match NonNull::new(p) {
            Some(p) => Raw(p),
            None => std::alloc::handle_alloc_error(layout()),
        }
    }

    fn give_back(self) {
        let mut pool = POOL.lock();
        if pool.len() < POOL_MAX {
            pool.push(self);
        } else {
            // SAFETY: allocated in `take` with the same layout, not freed yet.
            unsafe { dealloc(self.0.as_ptr(), layout()) };
        }
    }
}

/// Up to 1 MiB of bytes in page-aligned memory.
pub struct ChunkBuf {
    raw: Option<Raw>,
    len: usize,
}

// SAFETY: a ChunkBuf owns its memory; shared access is read-only through
// `Deref`, mutation needs `&mut`.
unsafe impl Send for ChunkBuf {}
unsafe impl Sync for ChunkBuf {}

impl ChunkBuf {
    pub fn new() -> Self {
        ChunkBuf {
            raw: Some(Raw::take()),
            len: 0,
        }
    }

    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::new();
        b.extend_from_slice(data);
        b
    }

    fn ptr(&self) -> *mut u8 {
        match &self.raw {
            Some(r) => r.0.as_ptr(),
            None => NonNull::dangling().as_ptr(),
        }
    }

    pub fn capacity(&self) -> usize {
        LEAF
    }

    /// Appends; everything past 1 MiB is dropped (callers split at chunk
    /// boundaries, so this never happens).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let n = data.len().min(LEAF - self.len);
        // SAFETY: `len + n <= LEAF`, the allocation's size; the source is a
        // separate borrow, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr().add(self.len), n) };
        self.len += n;
    }

    /// Grows (with zeros) or shrinks to `len` bytes, at most 1 MiB.
    pub fn resize(&mut self, len: usize) {
        let len = len.min(LEAF);
        if len > self.len {
            // SAFETY: writes zeros within the allocation.
            unsafe { std::ptr::write_bytes(self.ptr().add(self.len), 0, len - self.len) };
        }
        self.len = len;
    }

    /// True if the buffer suits O_DIRECT: a whole number of pages.
    pub fn direct_io_ok(&self) -> bool {
        self.len > 0 && self.len.is_multiple_of(ALIGN)
    }
}

impl Default for ChunkBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for ChunkBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (every write path
        // initialises what it counts).
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, with exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(r) = self.raw.take() {
            r.give_back();
        }
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_shrinks_and_aligns() {
        let mut b = ChunkBuf::new();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        b.extend_from_slice(b"abc");
        b.resize(10);
        assert_eq!(&b[..], b"abc\0\0\0\0\0\0\0");
        b[5] = 7;
        b.resize(6);
        assert_eq!(&b[..], [b'a', b'b', b'c', 0, 0, 7]);
        assert!(!b.direct_io_ok());
        b.resize(LEAF);
        assert!(b.direct_io_ok());
        b.resize(LEAF + 10);
        assert_eq!(b.len(), LEAF, "never past one chunk");
        let c = b.clone();
        assert_eq!(&c[..6], [b'a', b'b', b'c', 0, 0, 7]);
        drop(b);
        let again = ChunkBuf::new();
        assert_eq!(again.len(), 0, "a recycled buffer starts empty");
    }
}
