//! Chunk-sized, page-aligned buffers, recycled through a pool.
//!
//! Why not `Vec<u8>`: full chunks are written with O_DIRECT, which needs the
//! memory page-aligned; and fresh memory is expensive to touch on virtual
//! machines (every new page faults and is cleared), so buffers are reused
//! rather than allocated per chunk.
//!
//! Why `mmap` rather than the allocator: the pool decides exactly how much
//! memory stays with the process. Buffers freed through malloc stay in
//! per-thread arenas, where a writer thread allocates and a sealer thread
//! frees; the daemon's RSS grew to 1.5 GiB during long copies that way
//! while the buffered bytes stayed at their 256 MiB cap. An mmap'd buffer is
//! either live, in the pool, or returned to the kernel.
//!
//! The pool keeps up to [`set_limit`] buffers (the daemon sets it to its
//! write budget, so a sustained copy never faults in fresh pages) and
//! [`trim`] returns the ones that sat unused for a whole trim interval.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::treehash::LEAF;

/// The alignment O_DIRECT needs (one page).
pub const ALIGN: usize = 4096;
/// Buffers kept for reuse unless [`set_limit`] says otherwise (64 MiB).
const POOL_DEFAULT: usize = 64;
/// Buffers [`trim`] always leaves in the pool.
const POOL_FLOOR: usize = 8;
/// A buffer unused for this long is returned to the kernel by [`trim`].
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

struct Pool {
    free: Vec<Raw>,
    limit: usize,
    /// The fewest free buffers since the last trim: that many were not
    /// needed during the interval.
    low: usize,
    last_trim: Option<Instant>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    limit: POOL_DEFAULT,
    low: 0,
    last_trim: None,
});

impl Pool {
    /// A free buffer, if the pool has one.
    fn pop(&mut self) -> Option<Raw> {
        let r = self.free.pop();
        self.low = self.low.min(self.free.len());
        r
    }

    /// Keeps `r` for reuse, or hands it back when the pool is full.
    fn push(&mut self, r: Raw) -> Option<Raw> {
        if self.free.len() < self.limit {
            self.free.push(r);
            None
        } else {
            Some(r)
        }
    }

    /// Sets the limit; returns the buffers that no longer fit.
    fn set_limit(&mut self, buffers: usize) -> Vec<Raw> {
        self.limit = buffers.max(1);
        let keep = self.free.len().min(self.limit);
        let over = self.free.split_off(keep);
        self.low = self.low.min(self.free.len());
        over
    }

    /// At most once per interval: takes out the buffers that were not
    /// needed during the interval, keeping `POOL_FLOOR`.
    fn trim(&mut self, now: Instant) -> Vec<Raw> {
        let due = self
            .last_trim
            .is_none_or(|t| now.duration_since(t) >= TRIM_INTERVAL);
        if !due {
            return Vec::new();
        }
        self.last_trim = Some(now);
        let idle = self.low.min(self.free.len().saturating_sub(POOL_FLOOR));
        let keep = self.free.len() - idle;
        let out = self.free.split_off(keep);
        self.low = self.free.len();
        out
    }
}

/// Sets how many free buffers the pool keeps (at least one). The daemon
/// sets its write budget in chunks, plus room for the sealer queue.
pub fn set_limit(buffers: usize) {
    let over = POOL.lock().set_limit(buffers);
    over.into_iter().for_each(Raw::unmap);
}

/// Returns to the kernel the buffers that stayed in the pool for a whole
/// interval (keeping a few). Called about once a second by a background
/// thread; does nothing until an interval has passed. Returns how many
/// buffers it released.
pub fn trim() -> usize {
    let out = POOL.lock().trim(Instant::now());
    let n = out.len();
    out.into_iter().for_each(Raw::unmap);
    n
}

struct Raw(NonNull<u8>);

// SAFETY: `Raw` owns its mapping exclusively; moving it between threads
// moves that ownership.
unsafe impl Send for Raw {}

impl Raw {
    fn take() -> Raw {
        if let Some(r) = POOL.lock().pop() {
            return r;
        }
        // SAFETY: an anonymous private mapping of LEAF bytes; the result is
        // checked before use. Anonymous memory is zero-filled, so every byte
        // of a buffer is initialised from the start.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEAF,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let layout =
                std::alloc::Layout::from_size_align(LEAF, ALIGN).unwrap_or_else(|_| unreachable!());
            std::alloc::handle_alloc_error(layout);
        }
        match NonNull::new(p.cast::<u8>()) {
            Some(p) => Raw(p),
            None => unreachable!("mmap returned a null mapping"),
        }
    }

    fn give_back(self) {
        let over = POOL.lock().push(self);
        if let Some(r) = over {
            r.unmap();
        }
    }

    fn unmap(self) {
        // SAFETY: mapped in `take` with this length and not unmapped yet;
        // `self` is consumed, so nothing refers to it afterwards.
        unsafe { libc::munmap(self.0.as_ptr().cast(), LEAF) };
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

    /// The whole 1 MiB of the buffer, for a reader to fill in place; then
    /// [`Self::set_len`] says how much of it counts. Bytes past the current
    /// length are zeros or what an earlier user of the buffer left there.
    pub fn spare(&mut self) -> &mut [u8] {
        // SAFETY: every byte of a buffer is initialised (mmap zero-fills,
        // and nothing de-initialises memory), and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), LEAF) }
    }

    /// Sets the length (at most 1 MiB) without touching the bytes: for
    /// data written through [`Self::spare`].
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(LEAF);
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
        // SAFETY: every byte of the mapping is initialised (see `spare`).
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

    #[test]
    fn spare_fills_in_place() {
        let mut b = ChunkBuf::new();
        assert_eq!(b.spare().len(), LEAF);
        b.spare()[..4].copy_from_slice(b"wxyz");
        b.set_len(4);
        assert_eq!(&b[..], b"wxyz");
        b.set_len(LEAF + 1);
        assert_eq!(b.len(), LEAF);
    }

    fn local(limit: usize) -> Pool {
        Pool {
            free: Vec::new(),
            limit,
            low: 0,
            last_trim: None,
        }
    }

    #[test]
    fn pool_keeps_up_to_its_limit() {
        let mut p = local(2);
        assert!(p.push(Raw::take()).is_none());
        assert!(p.push(Raw::take()).is_none());
        let over = p.push(Raw::take()).expect("a third buffer does not fit");
        over.unmap();
        assert_eq!(p.free.len(), 2);
        let out = p.set_limit(1);
        assert_eq!((out.len(), p.free.len()), (1, 1));
        out.into_iter().chain(p.free.drain(..)).for_each(Raw::unmap);
    }

    #[test]
    fn trim_returns_only_buffers_idle_for_an_interval() {
        let mut p = local(64);
        for _ in 0..20 {
            assert!(p.push(Raw::take()).is_none());
        }
        let t0 = Instant::now();
        // The first trim starts the interval; `low` is still 0.
        assert!(p.trim(t0).is_empty());
        assert_eq!(p.low, 20);
        // During the interval 5 buffers were in use at once.
        let busy: Vec<Raw> = (0..5).filter_map(|_| p.pop()).collect();
        busy.into_iter().for_each(|r| assert!(p.push(r).is_none()));
        assert!(p.trim(t0 + TRIM_INTERVAL / 2).is_empty(), "not due yet");
        let out = p.trim(t0 + TRIM_INTERVAL);
        // 15 were never needed; they go, except that the pool keeps its
        // floor of 8.
        assert_eq!(out.len(), 12);
        assert_eq!(p.free.len(), POOL_FLOOR);
        out.into_iter().for_each(Raw::unmap);
        // A busy interval (every buffer used) releases nothing.
        let all: Vec<Raw> = std::iter::from_fn(|| p.pop()).collect();
        all.into_iter().for_each(|r| assert!(p.push(r).is_none()));
        assert!(p.trim(t0 + 2 * TRIM_INTERVAL).is_empty());
        p.free.drain(..).for_each(Raw::unmap);
    }
}
