//! File data of native volumes: write buffers, sealing, reads, commits.
//!
//! Chunk `i` of a file covers bytes `[i MiB, (i+1) MiB)`; a missing chunk is
//! a hole. Every open inode has one shared [`State`] (all descriptors of a
//! file see the same bytes), holding:
//!
//! * `dirty`: chunks being written, as plain buffers;
//! * `patches`: chunks with sealed data that are being written sparsely,
//!   as the 4 KiB pages written (see [`super::patch`]); merged with the
//!   sealed chunk when sealed, or turned into a `dirty` buffer when dense;
//! * `sealing`: full chunks handed to the sealer, still readable;
//! * `extents`: the chunk map, committed or sealed since the last commit;
//! * `changed`: chunk numbers whose extent the catalog does not have yet.
//!
//! A commit (on flush, fsync, release, truncate, fallocate) seals every dirty
//! chunk, waits for the sealer, and writes the changed extents, size and
//! times in one catalog transaction. It is all or nothing: if sealing failed
//! (ENOSPC, I/O error) the inode rolls back to its last committed state,
//! chunks written for the failed commit are removed, and the error is
//! returned; the catalog never points at data that was only half written.
//!
//! Invariant kept by every commit: the extent of chunk `i` has length
//! `min(1 MiB, size - i MiB)`, so the tree hash of a file is computed from its
//! chunk names alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::meta::{self, Ext};
use super::patch::{self, Patch};
use super::quota::Quota;
use super::sealer::{Budget, Sealer};
use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::ops::Shared;
use crate::fs::types::Timespec;
use crate::store::access::ChunkAccess;
use crate::store::buf::ChunkBuf;
use crate::store::catalog::Catalog;
use crate::store::chunks::{ChunkStore, Pin, hex};
use crate::store::reaper::{self, Reaper};
use crate::store::treehash::{self, Hash, LEAF};

const LEAF64: u64 = LEAF as u64;
/// The largest file size (FUSE and the kernel cap offsets at 2^63; chunk
/// numbers must fit the catalog's integers with room to spare).
pub const MAX_FILE: u64 = 1 << 52;

/// What native volumes share: the catalog, the chunk store, the sealer
/// pool and the write-buffer budget.
pub struct Env {
    pub catalog: Arc<Catalog>,
    pub store: Arc<ChunkStore>,
    /// Every read of chunk data goes through here (see
    /// [`crate::store::access`]), not to `store` directly.
    pub chunks: Arc<dyn ChunkAccess>,
    pub sealer: Arc<Sealer>,
    pub budget: Arc<Budget>,
    pub watch: Watch,
    /// Chunks written but never committed whose removal found them pinned
    /// (a reader had them at that moment); later collections retry.
    pub stale: Mutex<std::collections::HashSet<Hash>>,
    /// Wakes the background collector.
    pub reaper: Arc<Reaper>,
    /// Open native files with direct I/O (`native.direct_io`).
    pub direct_io: bool,
    /// The `[limits]` of the configuration (per-user limits, quotas).
    pub limits: crate::config::LimitsConfig,
}

/// Tells the offload engine about changes to files that change-vulnerable
/// tokens watch. Costs one atomic load per change while no token watches.
#[derive(Default)]
pub struct Watch {
    /// Number of watched inodes; 0 skips the hook entirely.
    pub active: std::sync::atomic::AtomicUsize,
    #[allow(clippy::type_complexity)]
    hook: parking_lot::RwLock<Option<Box<dyn Fn(i64, u64, u64) + Send + Sync>>>,
}

impl Watch {
    /// Installs the hook, called with (inode row, offset, length) of every
    /// change while `active` is non-zero. It must not lock inode state.
    pub fn set_hook(&self, f: Box<dyn Fn(i64, u64, u64) + Send + Sync>) {
        *self.hook.write() = Some(f);
    }

    pub fn changed(&self, ino: i64, off: u64, len: u64) {
        if self.active.load(std::sync::atomic::Ordering::Acquire) == 0 || len == 0 {
            return;
        }
        if let Some(h) = &*self.hook.read() {
            h(ino, off, len);
        }
    }
}

/// The open state of one inode.
pub struct Inode {
    pub ino: i64,
    pub st: Mutex<State>,
    pub cv: Condvar,
    /// Users of this state: open descriptors plus short internal uses.
    pub users: AtomicU32,
    /// Set when the last name of the inode is removed while it is open; the
    /// inode is deleted when the last user goes.
    pub unlinked: AtomicBool,
}

pub struct State {
    pub size: u64,
    pub committed_size: u64,
    pub extents: BTreeMap<u64, Ext>,
    pub dirty: BTreeMap<u64, ChunkBuf>,
    /// The byte ranges written into a dirty buffer that has a gap (a write
    /// landed beyond its end, as concurrent requests of one large write
    /// can). Absent when the buffer is written from 0 without a gap, the
    /// usual case. A chunk is sealed early only once fully written, so a
    /// reordered sequential write does not seal it with a hole of zeros
    /// and rewrite it later.
    pub gaps: BTreeMap<u64, Vec<(usize, usize)>>,
    pub patches: BTreeMap<u64, Patch>,
    pub sealing: BTreeMap<u64, Arc<ChunkBuf>>,
    pub changed: BTreeSet<u64>,
    pub pins: Vec<Pin>,
    pub mtime: i64,
    pub ctime: i64,
    pub times_dirty: bool,
    /// A sealing failure, reported by the next write, flush or fsync.
    pub error: Option<Error>,
}

impl State {
    /// Makes a freshly sealed chunk (or a hole, for `None`) the content of
    /// chunk `idx`, to be committed with the file. Returns the pin of the
    /// chunk it supersedes, if that one was sealed since the last commit
    /// (see [`State::supersede`]); the caller releases it.
    #[must_use]
    fn install(&mut self, idx: u64, chunk: Option<(Pin, u32)>) -> Option<Pin> {
        let old = match &chunk {
            Some((pin, _)) if self.extents.get(&idx).map(|e| &e.hash) == Some(pin.hash()) => None,
            _ => self.supersede(idx),
        };
        match chunk {
            Some((pin, len)) => {
                self.extents.insert(
                    idx,
                    Ext {
                        hash: *pin.hash(),
                        len,
                    },
                );
                self.pins.push(pin);
            }
            None => {
                self.extents.remove(&idx);
            }
        }
        self.changed.insert(idx);
        old
    }

    /// Takes back the pin of chunk `idx`'s current extent when that extent
    /// was sealed since the last commit and is about to be replaced.
    ///
    /// Such a chunk is referenced by nothing durable: the catalog still
    /// holds the committed extent, and a crash returns the file to it. So
    /// it can go as soon as it is superseded rather than at the next
    /// commit; otherwise a file rewritten over and over while it stays
    /// open (no close, no fsync) keeps every version it ever sealed, and
    /// the hot tier grows without bound. With this, an open file holds at
    /// most its committed chunks plus one sealed version of each chunk
    /// index (plus write buffers), whatever it rewrites. The crash
    /// semantics are unchanged: committed chunks are never touched here,
    /// and the chunk file is removed only if no catalog row references it
    /// and nobody pins it (another extent of this file with the same
    /// content, a reader, a token), see [`discard_one`].
    fn supersede(&mut self, idx: u64) -> Option<Pin> {
        if !self.changed.contains(&idx) {
            return None;
        }
        let old = self.extents.get(&idx)?.hash;
        let at = self.pins.iter().rposition(|p| *p.hash() == old)?;
        Some(self.pins.swap_remove(at))
    }

    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
            && self.patches.is_empty()
            && self.sealing.is_empty()
            && self.changed.is_empty()
            && !self.times_dirty
            && self.size == self.committed_size
    }

    /// Bytes of chunk data this file has (for `st_blocks`).
    pub fn stored(&self) -> u64 {
        let mut n: u64 = self.extents.values().map(|e| u64::from(e.len)).sum();
        for (idx, d) in &self.dirty {
            if !self.extents.contains_key(idx) {
                n += d.len() as u64;
            }
        }
        n
    }

    /// Write-buffer bytes held (what the budget counts for this file).
    fn buffered(&self) -> u64 {
        self.dirty.len() as u64 * LEAF64 + self.patches.values().map(Patch::bytes).sum::<u64>()
    }

    fn has_data(&self, idx: u64) -> bool {
        self.extents.contains_key(&idx)
            || self.dirty.contains_key(&idx)
            || self.patches.contains_key(&idx)
            || self.sealing.contains_key(&idx)
    }
}

impl Inode {
    /// Loads the committed state of `ino`.
    pub fn load(cat: &Catalog, slot: u32, ino: i64) -> Result<Arc<Inode>> {
        let conn = cat.conn();
        let row = meta::get(&conn, slot, ino)?;
        let extents = meta::extents(&conn, ino)?;
        Ok(Arc::new(Inode {
            ino,
            st: Mutex::new(State {
                size: row.size,
                committed_size: row.size,
                extents,
                dirty: BTreeMap::new(),
                gaps: BTreeMap::new(),
                patches: BTreeMap::new(),
                sealing: BTreeMap::new(),
                changed: BTreeSet::new(),
                pins: Vec::new(),
                mtime: row.mtime,
                ctime: row.ctime,
                times_dirty: false,
                error: None,
            }),
            cv: Condvar::new(),
            users: AtomicU32::new(0),
            unlinked: AtomicBool::new(false),
        }))
    }
}

fn now() -> i64 {
    Timespec::now().as_nanos()
}

/// Adds `[a, b)` to the sorted, disjoint `ranges` (merging neighbours);
/// true when they then cover the whole chunk.
fn cover(ranges: &mut Vec<(usize, usize)>, a: usize, b: usize) -> bool {
    if a < b {
        ranges.push((a, b));
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
    }
    ranges.as_slice() == [(0, LEAF)]
}

/// The expected length of chunk `idx` of a file of `size` bytes.
fn chunk_len(size: u64, idx: u64) -> usize {
    size.saturating_sub(idx * LEAF64).min(LEAF64) as usize
}

fn all_zero(data: &[u8]) -> bool {
    let (pre, mid, post) = unsafe { data.align_to::<u128>() };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// Hashes and stores a chunk; `None` for all-zero data (a hole).
fn seal_data(store: &Arc<ChunkStore>, data: &[u8]) -> Result<Option<(Pin, u32)>> {
    if data.is_empty() || all_zero(data) {
        return Ok(None);
    }
    let pin = store.put(data)?;
    Ok(Some((pin, data.len() as u32)))
}

/// Patched chunks of one file merged ahead of the sealer (see
/// [`Files::seal_all`]): enough to keep the sealer threads busy.
const SEAL_QUEUE: usize = 8;

/// Chunks up to this size are sealed inline by [`Files::submit`].
const INLINE_SEAL: usize = 64 * 1024;

/// Records the outcome of sealing chunk `idx` in the file's state.
fn sealed(
    env: &Env,
    volume: &str,
    ino: i64,
    st: &mut State,
    idx: u64,
    data: ChunkBuf,
    result: Result<Option<(Pin, u32)>>,
) {
    match result {
        Ok(chunk) => {
            if let Some(old) = st.install(idx, chunk) {
                release_superseded(env, old);
            }
            env.budget.sub(LEAF64);
        }
        Err(e) => {
            tracing::warn!(volume = %volume, ino, chunk = idx, "sealing failed: {e}");
            // Keep the data so nothing is silently lost; the error is
            // reported to the writer and the commit rolls back.
            st.dirty.entry(idx).or_insert(data);
            if st.error.is_none() {
                st.error = Some(e);
            }
        }
    }
}

/// Where the bytes of one chunk piece of a read come from.
enum Source {
    Zero,
    Bytes(Vec<u8>),
    Chunk(Pin, usize, usize),
}

/// File data operations of one native volume.
pub struct Files {
    pub env: Arc<Env>,
    pub slot: u32,
    /// Names the volume in log lines.
    pub volume: String,
    /// The volume's byte quota (inactive unless a non-root user made it).
    pub quota: Quota,
}

impl Files {
    fn store(&self) -> &Arc<ChunkStore> {
        &self.env.store
    }

    /// Reads chunk `idx` as committed or sealed (empty if a hole), for a
    /// read-modify-write.
    fn load_chunk(&self, st: &State, idx: u64) -> Result<ChunkBuf> {
        let mut buf = ChunkBuf::new();
        if let Some(e) = st.extents.get(&idx) {
            buf.resize(e.len as usize);
            self.env
                .chunks
                .read(&e.hash, 0, &mut buf)
                .map_err(|err| self.data_error(err, idx * LEAF64))?;
        }
        Ok(buf)
    }

    fn data_error(&self, e: Error, offset: u64) -> Error {
        tracing::error!(volume = %self.volume, offset, "data error: {e}");
        if e.kind() == ErrorKind::Integrity {
            Error::new(
                ErrorKind::Integrity,
                format!("volume {}: offset {offset}: {e}", self.volume),
            )
        } else {
            e
        }
    }

    /// Reads up to `size` bytes at `off` into `out` (replacing its content).
    pub fn read(&self, node: &Inode, off: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        let mut sources = Vec::new();
        let (start, end) = {
            let st = node.st.lock();
            if off >= st.size {
                out.clear();
                return Ok(());
            }
            let end = (off + u64::from(size)).min(st.size);
            let mut pos = off;
            while pos < end {
                let idx = pos / LEAF64;
                let a = (pos - idx * LEAF64) as usize;
                let b = ((end - idx * LEAF64).min(LEAF64)) as usize;
                let from_buf = |buf: &[u8]| {
                    let mut v = vec![0u8; b - a];
                    if a < buf.len() {
                        let n = (b.min(buf.len())) - a;
                        v[..n].copy_from_slice(&buf[a..a + n]);
                    }
                    Source::Bytes(v)
                };
                let src = if let Some(d) = st.dirty.get(&idx) {
                    from_buf(d)
                } else if let Some(d) = st.sealing.get(&idx) {
                    from_buf(d)
                } else if let Some(p) = st.patches.get(&idx) {
                    Source::Bytes(self.patched(&st, idx, p, a, b)?)
                } else if let Some(e) = st.extents.get(&idx) {
                    // Pin so a concurrent commit cannot collect the chunk
                    // between here and the read below.
                    Source::Chunk(self.store().pin(e.hash), a, b.min(e.len as usize).max(a))
                } else {
                    Source::Zero
                };
                sources.push((pos, b - a, src));
                pos = idx * LEAF64 + b as u64;
            }
            (off, end)
        };
        crate::fs::ops::len_for_overwrite(out, (end - start) as usize);
        for (pos, len, src) in sources {
            let dst = &mut out[(pos - start) as usize..(pos - start) as usize + len];
            match src {
                Source::Zero => dst.fill(0),
                Source::Bytes(v) => dst.copy_from_slice(&v),
                Source::Chunk(pin, a, b) => {
                    // A chunk shorter than the range (a file grown past a
                    // short last chunk) reads as zeros after its end.
                    dst[b - a..].fill(0);
                    if b > a {
                        self.env
                            .chunks
                            .read(pin.hash(), a, &mut dst[..b - a])
                            .map_err(|e| {
                                tracing::error!(
                                    volume = %self.volume,
                                    ino = node.ino,
                                    offset = pos,
                                    chunk = %hex(pin.hash()),
                                    "read failed: {e}"
                                );
                                self.data_error(e, pos)
                            })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes `[a, b)` of chunk `idx` as sealed with patch `p` laid over.
    fn patched(&self, st: &State, idx: u64, p: &Patch, a: usize, b: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; b - a];
        if let Some(e) = st.extents.get(&idx) {
            let to = b.min(e.len as usize);
            if a < to {
                self.env
                    .chunks
                    .read(&e.hash, a, &mut v[..to - a])
                    .map_err(|err| self.data_error(err, idx * LEAF64 + a as u64))?;
            }
        }
        p.overlay(a, &mut v);
        Ok(v)
    }

    /// Writes `piece` at offset `a` of chunk `idx` as a patch over its
    /// sealed data; a patch grown dense becomes a full buffer.
    fn write_patch(&self, st: &mut State, idx: u64, a: usize, piece: &[u8]) -> Result<()> {
        let base = st.extents.get(&idx).copied();
        let mut p = st
            .patches
            .remove(&idx)
            .unwrap_or_else(|| Patch::new(base.map_or(0, |e| e.len as usize)));
        let added = p.write(a, piece, |pg, page| {
            let ps = pg as usize * patch::PAGE;
            match base {
                Some(e) if ps < e.len as usize => {
                    let m = (e.len as usize - ps).min(patch::PAGE);
                    self.env
                        .chunks
                        .read(&e.hash, ps, &mut page[..m])
                        .map_err(|err| self.data_error(err, idx * LEAF64 + ps as u64))
                }
                _ => Ok(()),
            }
        });
        let added = match added {
            Ok(n) => n,
            Err(e) => {
                if p.pages() > 0 {
                    st.patches.insert(idx, p);
                }
                return Err(e);
            }
        };
        self.env.budget.add(added);
        // Dense enough for a full buffer. If the sealed chunk cannot be
        // read now, the patch stays and sealing reports the error.
        if p.pages() > patch::MAX_PAGES
            && let Ok(buf) = self.materialize(st, idx, &p)
        {
            st.gaps.remove(&idx);
            st.dirty.insert(idx, buf);
            return Ok(());
        }
        st.patches.insert(idx, p);
        Ok(())
    }

    /// Merges a patch with its sealed chunk into a full buffer, moving its
    /// budget from pages to one chunk. On error nothing changes: the caller
    /// keeps the patch, so its writes are rolled back with the rest of the
    /// file's uncommitted state, never dropped on their own.
    fn materialize(&self, st: &State, idx: u64, p: &Patch) -> Result<ChunkBuf> {
        let mut buf = self.load_chunk(st, idx)?;
        if buf.len() < p.chunk_len() {
            buf.resize(p.chunk_len());
        }
        p.apply(&mut buf);
        self.env.budget.sub(p.bytes());
        self.env.budget.add(LEAF64);
        Ok(buf)
    }

    /// Hands every buffered chunk of the file to the sealer (without
    /// waiting for it). Patches are merged one at a time, with at most
    /// `SEAL_QUEUE` of the file's chunks waiting for the sealer, so sealing
    /// a file with thousands of patched chunks holds a few buffers (reused
    /// from the pool), not one per chunk.
    fn seal_all(&self, node: &Arc<Inode>, st: &mut MutexGuard<'_, State>) {
        let patches = std::mem::take(&mut st.patches);
        for (idx, p) in patches {
            while st.sealing.len() >= SEAL_QUEUE {
                node.cv.wait(st);
            }
            match self.materialize(st, idx, &p) {
                Ok(buf) => self.submit(node, st, idx, buf),
                Err(e) => {
                    // Kept, like a chunk whose sealing failed: the error
                    // goes to the writer and the commit rolls back.
                    st.patches.insert(idx, p);
                    if st.error.is_none() {
                        st.error = Some(e);
                    }
                }
            }
        }
        let dirty = std::mem::take(&mut st.dirty);
        st.gaps.clear();
        for (idx, data) in dirty {
            self.submit(node, st, idx, data);
        }
    }

    /// Hands a chunk to the sealer. Small chunks (the tail of a file, a
    /// small file) are sealed on the calling thread: the hand-off to a
    /// sealer thread and back costs more than hashing a few KiB.
    fn submit(&self, node: &Arc<Inode>, st: &mut State, idx: u64, data: ChunkBuf) {
        if data.len() <= INLINE_SEAL {
            let result = seal_data(&self.env.store, &data);
            sealed(&self.env, &self.volume, node.ino, st, idx, data, result);
            return;
        }
        let data = Arc::new(data);
        st.sealing.insert(idx, data.clone());
        let node = node.clone();
        let env = self.env.clone();
        let volume = self.volume.clone();
        self.env.sealer.submit(move || {
            let result = seal_data(&env.store, &data);
            let mut st = node.st.lock();
            st.sealing.remove(&idx);
            let data = Arc::try_unwrap(data).unwrap_or_else(|a| (*a).clone());
            sealed(&env, &volume, node.ino, &mut st, idx, data, result);
            node.cv.notify_all();
        });
    }

    /// Seals every dirty chunk and waits until the sealer is done.
    fn drain(&self, node: &Arc<Inode>, st: &mut MutexGuard<'_, State>) {
        self.seal_all(node, st);
        while !st.sealing.is_empty() {
            node.cv.wait(st);
        }
    }

    /// Writes `data` at `off`.
    pub fn write(&self, node: &Arc<Inode>, off: u64, data: &[u8]) -> Result<u32> {
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE)
            .ok_or_else(|| Error::kind_only(ErrorKind::TooBig))?;
        {
            let mut st = node.st.lock();
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            self.reserve(node, &st, end)?;
            let mut pos = off;
            while pos < end {
                let idx = pos / LEAF64;
                let a = (pos - idx * LEAF64) as usize;
                let n = ((end - pos).min(LEAF64 - a as u64)) as usize;
                let piece = &data[(pos - off) as usize..(pos - off) as usize + n];
                if !st.dirty.contains_key(&idx) {
                    while st.sealing.contains_key(&idx) {
                        node.cv.wait(&mut st);
                    }
                    // A write into sealed data that does not replace all of
                    // it keeps only the pages written (no 1 MiB read now).
                    let partial = st
                        .extents
                        .get(&idx)
                        .is_some_and(|e| a > 0 || a + n < e.len as usize);
                    if partial || st.patches.contains_key(&idx) {
                        self.write_patch(&mut st, idx, a, piece)?;
                        pos += n as u64;
                        continue;
                    }
                    // New data, or all of the sealed data replaced: nothing
                    // to read.
                    self.env.budget.add(LEAF64);
                    st.gaps.remove(&idx);
                    st.dirty.insert(idx, ChunkBuf::new());
                }
                let st = &mut *st;
                let buf = st
                    .dirty
                    .get_mut(&idx)
                    .ok_or_else(|| Error::kind_only(ErrorKind::Io))?;
                let before = buf.len();
                if before == a {
                    // Appending (the sequential case): no zero fill first.
                    buf.extend_from_slice(piece);
                } else {
                    if before < a + n {
                        buf.resize(a + n);
                    }
                    buf[a..a + n].copy_from_slice(piece);
                }
                // A write that completes the chunk is how a sequential
                // writer leaves it: seal it now, once. Without a gap that is
                // the write ending at its last byte; a random write into a
                // chunk loaded for read-modify-write also makes it full
                // length, but more writes to it are likely, so it waits for
                // close, fsync or buffer pressure.
                let seal = match st.gaps.get_mut(&idx) {
                    Some(ranges) => cover(ranges, a, a + n),
                    None if a > before => {
                        let mut ranges = vec![(a, a + n)];
                        cover(&mut ranges, 0, before);
                        st.gaps.insert(idx, ranges);
                        false
                    }
                    None => a + n == LEAF && buf.len() == LEAF,
                };
                if seal && let Some(full) = st.dirty.remove(&idx) {
                    st.gaps.remove(&idx);
                    self.submit(node, st, idx, full);
                }
                pos += n as u64;
            }
            self.grown(&mut st, end);
        }
        self.env.watch.changed(node.ino, off, data.len() as u64);
        self.relieve(node);
        Ok(data.len() as u32)
    }

    /// Writes a whole chunk at a chunk boundary by taking `data` as the
    /// chunk's buffer: no copy, and it goes to the sealer at once. Anything
    /// else (a short or unaligned buffer) is an ordinary write.
    pub fn write_chunk(&self, node: &Arc<Inode>, off: u64, data: ChunkBuf) -> Result<()> {
        if !off.is_multiple_of(LEAF64) || data.len() != LEAF {
            self.write(node, off, &data)?;
            return Ok(());
        }
        let end = off
            .checked_add(LEAF64)
            .filter(|&e| e <= MAX_FILE)
            .ok_or_else(|| Error::kind_only(ErrorKind::TooBig))?;
        let idx = off / LEAF64;
        {
            let mut st = Self::lock_settled(node, idx)?;
            self.reserve(node, &st, end)?;
            // Whatever was pending for this chunk is replaced whole.
            if st.dirty.remove(&idx).is_some() {
                self.env.budget.sub(LEAF64);
            }
            if let Some(p) = st.patches.remove(&idx) {
                self.env.budget.sub(p.bytes());
            }
            self.env.budget.add(LEAF64);
            self.submit(node, &mut st, idx, data);
            self.grown(&mut st, end);
        }
        self.env.watch.changed(node.ino, off, LEAF64);
        self.relieve(node);
        Ok(())
    }

    /// Locks the file's state once chunk `idx` is not being sealed; first
    /// reports (and clears) an error an earlier sealing left.
    fn lock_settled(node: &Inode, idx: u64) -> Result<MutexGuard<'_, State>> {
        let mut st = node.st.lock();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        while st.sealing.contains_key(&idx) {
            node.cv.wait(&mut st);
        }
        Ok(st)
    }

    /// Checks that growing the file to `end` bytes stays within the
    /// volume's quota, and counts the growth (see [`super::quota`]). Called
    /// before anything of the write is buffered, so a refused write leaves
    /// the file as it was.
    fn reserve(&self, node: &Inode, st: &State, end: u64) -> Result<()> {
        if !self.quota.active() || end <= st.size {
            return Ok(());
        }
        self.quota.grow(
            || self.env.catalog.conn(),
            self.slot,
            end - st.size,
            || format!("volume {}: inode {}", self.volume, node.ino),
        )
    }

    /// Sets the live (uncommitted) size, keeping the quota's count; growth
    /// must have been reserved.
    fn set_size(&self, st: &mut State, size: u64) {
        if self.quota.active() {
            self.quota.pending(size as i64 - st.size as i64);
            self.quota.shrink(st.size.saturating_sub(size));
        }
        st.size = size;
    }

    /// Records a write that ended at `end`: size and times.
    fn grown(&self, st: &mut State, end: u64) {
        let size = st.size.max(end);
        self.set_size(st, size);
        let t = now();
        st.mtime = t;
        st.ctime = t;
        st.times_dirty = true;
    }

    /// If write buffers across the daemon exceed the budget, seals this
    /// file's partial chunks and waits for the sealer to catch up.
    fn relieve(&self, node: &Arc<Inode>) {
        if !self.env.budget.over() {
            return;
        }
        self.seal_all(node, &mut node.st.lock());
        for _ in 0..100 {
            if !self.env.budget.over() {
                break;
            }
            self.env.budget.wait_below(Duration::from_millis(50));
        }
    }

    /// Makes everything written so far part of the committed file.
    pub fn flush(&self, node: &Arc<Inode>) -> Result<()> {
        let mut st = node.st.lock();
        self.drain(node, &mut st);
        if let Some(e) = st.error.take() {
            self.rollback(node, &mut st)?;
            return Err(e);
        }
        if st.is_clean() {
            return Ok(());
        }
        self.commit(node, &mut st)
    }

    /// Restores the last committed state and removes chunks written for the
    /// abandoned changes.
    fn rollback(&self, node: &Inode, st: &mut State) -> Result<()> {
        self.env.budget.sub(st.buffered());
        st.dirty.clear();
        st.patches.clear();
        st.changed.clear();
        let committed = st.committed_size;
        self.set_size(st, committed);
        st.times_dirty = false;
        let pins = std::mem::take(&mut st.pins);
        self.discard(pins);
        st.extents = meta::extents(&self.env.catalog.conn(), node.ino)?;
        tracing::warn!(volume = %self.volume, ino = node.ino, "uncommitted writes rolled back");
        Ok(())
    }

    /// Drops pins of chunks that were written but never committed, removing
    /// the files no committed row references.
    fn discard(&self, pins: Vec<Pin>) {
        for pin in pins {
            let h = *pin.hash();
            drop(pin);
            discard_one(&self.env, h);
        }
    }

    /// Re-seals chunk `idx` after `f` changes its bytes (synchronously).
    fn reseal(&self, st: &mut State, idx: u64, f: impl FnOnce(&mut ChunkBuf)) -> Result<()> {
        let mut data = self.load_chunk(st, idx)?;
        f(&mut data);
        if let Some(old) = st.install(idx, seal_data(self.store(), &data)?) {
            release_superseded(&self.env, old);
        }
        Ok(())
    }

    /// Restores the chunk-length invariant after the size changed.
    fn normalize(&self, st: &mut State) -> Result<()> {
        let size = st.size;
        let first_beyond = size.div_ceil(LEAF64);
        let beyond: Vec<u64> = st.extents.range(first_beyond..).map(|(k, _)| *k).collect();
        for idx in beyond {
            st.extents.remove(&idx);
            st.changed.insert(idx);
        }
        let mut check: BTreeSet<u64> = st.changed.iter().copied().collect();
        if size > 0 {
            check.insert((size - 1) / LEAF64);
        }
        if st.committed_size > 0 {
            check.insert((st.committed_size - 1) / LEAF64);
        }
        for idx in check {
            let Some(e) = st.extents.get(&idx).copied() else {
                continue;
            };
            let want = chunk_len(size, idx);
            if e.len as usize != want {
                self.reseal(st, idx, |d| d.resize(want))?;
            }
        }
        Ok(())
    }

    /// Writes the changed extents, size and times in one transaction.
    fn commit(&self, node: &Inode, st: &mut State) -> Result<()> {
        if let Err(e) = self.normalize(st) {
            self.rollback(node, st)?;
            return Err(e);
        }
        let result = (|| -> Result<()> {
            let mut conn = self.env.catalog.conn();
            let tx = conn.transaction()?;
            for idx in &st.changed {
                meta::set_extent(&tx, node.ino, *idx, st.extents.get(idx).copied())?;
            }
            tx.prepare_cached(
                "UPDATE inodes SET size = ?2, mtime_ns = ?3, ctime_ns = ?4 WHERE ino = ?1",
            )?
            .execute(rusqlite::params![
                node.ino,
                st.size as i64,
                st.mtime,
                st.ctime
            ])?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            self.rollback(node, st)?;
            return Err(e);
        }
        // Chunks sealed more than once before this commit (a short chunk
        // padded after the file grew, a partial chunk sealed early and then
        // written again) were superseded: their files are referenced by
        // nothing and go now.
        let committed: std::collections::HashSet<Hash> = st
            .changed
            .iter()
            .filter_map(|i| st.extents.get(i).map(|e| e.hash))
            .collect();
        let (keep, stale): (Vec<Pin>, Vec<Pin>) = std::mem::take(&mut st.pins)
            .into_iter()
            .partition(|p| committed.contains(p.hash()));
        st.changed.clear();
        self.quota
            .pending(st.committed_size as i64 - st.size as i64);
        st.committed_size = st.size;
        st.times_dirty = false;
        drop(keep);
        self.discard(stale);
        collect_soon(&self.env);
        Ok(())
    }

    /// fsync: commit, then make the chunk store and catalog durable.
    pub fn fsync(&self, node: &Arc<Inode>) -> Result<()> {
        self.flush(node)?;
        self.store().sync()
    }

    /// Sets the size (truncate), committing at once.
    pub fn truncate(&self, node: &Arc<Inode>, size: u64) -> Result<()> {
        if size > MAX_FILE {
            return err(ErrorKind::TooBig);
        }
        let mut st = node.st.lock();
        self.drain(node, &mut st);
        if let Some(e) = st.error.take() {
            self.rollback(node, &mut st)?;
            return Err(e);
        }
        self.reserve(node, &st, size)?;
        let (lo, hi) = (st.size.min(size), st.size.max(size));
        if size < st.size {
            // Shrinking changes the bytes past the new end.
            self.env.watch.changed(node.ino, lo, hi - lo);
        }
        self.set_size(&mut st, size);
        let t = now();
        st.mtime = t;
        st.ctime = t;
        st.times_dirty = true;
        self.commit(node, &mut st)
    }

    /// fallocate: modes 0 and KEEP_SIZE (no space is reserved; the size may
    /// grow), PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (with or without
    /// KEEP_SIZE). Whole chunks in a punched range become holes.
    pub fn fallocate(&self, node: &Arc<Inode>, off: u64, len: u64, mode: i32) -> Result<()> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE)
            .ok_or_else(|| Error::kind_only(ErrorKind::TooBig))?;
        if len == 0 {
            return err(ErrorKind::Invalid);
        }
        let zeroing = match mode {
            0 | KEEP => false,
            m if m == PUNCH | KEEP => true,
            m if m == ZERO || m == ZERO | KEEP => true,
            _ => return err(ErrorKind::Unsupported),
        };
        let mut st = node.st.lock();
        self.drain(node, &mut st);
        if let Some(e) = st.error.take() {
            self.rollback(node, &mut st)?;
            return Err(e);
        }
        if mode & KEEP == 0 {
            self.reserve(node, &st, end)?;
        }
        if zeroing {
            self.env.watch.changed(node.ino, off, len);
            let zend = end.min(st.size);
            let mut pos = off;
            while pos < zend {
                let idx = pos / LEAF64;
                let a = (pos - idx * LEAF64) as usize;
                let b = ((zend - idx * LEAF64).min(LEAF64)) as usize;
                if st.extents.contains_key(&idx) {
                    if a == 0 && b >= chunk_len(st.size, idx) {
                        st.extents.remove(&idx);
                        st.changed.insert(idx);
                    } else {
                        self.reseal(&mut st, idx, |d| {
                            let to = b.min(d.len());
                            if a < to {
                                d[a..to].fill(0);
                            }
                        })?;
                    }
                }
                pos = idx * LEAF64 + b as u64;
            }
        }
        if mode & KEEP == 0 && end > st.size {
            self.set_size(&mut st, end);
        }
        let t = now();
        // Linux filesystems stamp both times on every successful fallocate.
        st.mtime = t;
        st.ctime = t;
        st.times_dirty = true;
        self.commit(node, &mut st)
    }

    /// SEEK_DATA / SEEK_HOLE at chunk granularity.
    pub fn seek(&self, node: &Inode, off: u64, whence: i32) -> Result<u64> {
        let st = node.st.lock();
        if off >= st.size {
            return err(ErrorKind::NoSuchOffset);
        }
        let last = (st.size - 1) / LEAF64;
        let first = off / LEAF64;
        match whence {
            libc::SEEK_DATA => (first..=last)
                .find(|&i| st.has_data(i))
                .map(|i| (i * LEAF64).max(off))
                .ok_or_else(|| Error::kind_only(ErrorKind::NoSuchOffset)),
            libc::SEEK_HOLE => Ok((first..=last)
                .find(|&i| !st.has_data(i))
                .map(|i| (i * LEAF64).max(off))
                .unwrap_or(st.size)
                .min(st.size)),
            _ => err(ErrorKind::Invalid),
        }
    }

    /// The Glacier tree hash, from chunk names (commits pending writes first).
    pub fn tree_hash(&self, node: &Arc<Inode>) -> Result<Hash> {
        self.flush(node)?;
        let st = node.st.lock();
        let n = st.size.div_ceil(LEAF64);
        let leaves: Vec<Hash> = (0..n)
            .map(|i| match st.extents.get(&i) {
                Some(e) => e.hash,
                None => treehash::zero_leaf(chunk_len(st.size, i)),
            })
            .collect();
        if leaves.is_empty() {
            return Ok(treehash::sha256(b""));
        }
        Ok(treehash::root(&leaves))
    }

    /// The committed chunk at chunk-aligned `off`, pinned, after committing
    /// pending writes. `None` past the end or off a chunk boundary.
    pub fn extent_at(&self, node: &Arc<Inode>, off: u64) -> Result<Option<Shared>> {
        if !off.is_multiple_of(LEAF64) {
            return Ok(None);
        }
        self.flush(node)?;
        let st = node.st.lock();
        if off >= st.size {
            return Ok(None);
        }
        let idx = off / LEAF64;
        let len = chunk_len(st.size, idx) as u32;
        // Pinned under the state lock: no commit can drop the reference
        // between here and the destination's commit.
        Ok(Some(match st.extents.get(&idx) {
            Some(e) => Shared {
                hash: Some(e.hash),
                len: e.len,
                pin: Some(self.store().pin(e.hash)),
            },
            None => Shared {
                hash: None,
                len,
                pin: None,
            },
        }))
    }

    /// Makes chunk `off / 1 MiB` refer to `ext` (no data is copied). The
    /// chunk is replaced whole, so a chunk shorter than 1 MiB may only be
    /// shared as the file's last. Committed by the next flush.
    pub fn share(&self, node: &Arc<Inode>, off: u64, ext: Shared) -> Result<()> {
        let len = u64::from(ext.len);
        if !off.is_multiple_of(LEAF64) || len == 0 || len > LEAF64 {
            return Err(Error::new(
                ErrorKind::Invalid,
                "shared chunks must be chunk-aligned",
            ));
        }
        let idx = off / LEAF64;
        let mut st = Self::lock_settled(node, idx)?;
        if len < LEAF64 && st.size > off + len {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a short chunk can only be shared at the end of the file",
            ));
        }
        self.reserve(node, &st, off + len)?;
        if st.dirty.remove(&idx).is_some() {
            self.env.budget.sub(LEAF64);
        }
        if let Some(p) = st.patches.remove(&idx) {
            self.env.budget.sub(p.bytes());
        }
        if ext.hash.as_ref() != st.extents.get(&idx).map(|e| &e.hash)
            && let Some(old) = st.supersede(idx)
        {
            release_superseded(&self.env, old);
        }
        match ext.hash {
            Some(hash) => {
                st.extents.insert(idx, Ext { hash, len: ext.len });
                if let Some(pin) = ext.pin {
                    st.pins.push(pin);
                } else {
                    st.pins.push(self.store().pin(hash));
                }
            }
            None => {
                st.extents.remove(&idx);
            }
        }
        st.changed.insert(idx);
        let size = st.size.max(off + len);
        self.set_size(&mut st, size);
        let t = now();
        st.mtime = t;
        st.ctime = t;
        st.times_dirty = true;
        drop(st);
        self.env.watch.changed(node.ino, off, len);
        Ok(())
    }

    /// Forgets buffered data of an inode that is going away (last user
    /// gone after an unlink), returning the budget.
    pub fn discard_inode(&self, node: &Arc<Inode>) {
        let mut st = node.st.lock();
        while !st.sealing.is_empty() {
            node.cv.wait(&mut st);
        }
        self.env.budget.sub(st.buffered());
        st.dirty.clear();
        st.patches.clear();
        // The inode and its size leave the volume with this.
        self.quota
            .pending(st.committed_size as i64 - st.size as i64);
        self.quota.shrink(st.size);
        let pins = std::mem::take(&mut st.pins);
        drop(st);
        self.discard(pins);
    }
}

/// Removes an uncommitted chunk's file unless the catalog references it;
/// if someone holds a pin on it right now, remembers it for later.
pub(super) fn discard_one(env: &Env, h: Hash) {
    reaper::discard_one(&env.store, &env.stale, h, || {
        meta::chunk_known(&env.catalog.conn(), &h)
    });
}

/// Lets go of a sealed, never committed chunk that a newer seal of the same
/// chunk index replaced (see [`State::supersede`]). Its removal is left to
/// the reaper thread, which is woken at once: the sealer and the writer
/// holding the file's state lock do not wait for the catalog query and the
/// unlink, and a chunk some reader still pins is retried later.
fn release_superseded(env: &Env, pin: Pin) {
    let h = *pin.hash();
    drop(pin);
    env.stale.lock().insert(h);
    collect_soon(env);
}

/// Removes chunks that nothing references any more, and retries stale
/// uncommitted ones. Synchronous: management operations (destroy, start-up,
/// fsck, status, token expiry) call it to settle the store; the file paths
/// (unlink, rename over a file, commit) call [`collect_soon`] instead.
pub fn collect(env: &Env) {
    reaper::collect(env);
}

/// [`collect`] for a caller that holds `env.reaper.collecting` (fsck, so
/// that no collection is half done while it lists the store).
pub fn collect_locked(env: &Env) {
    let stale: Vec<Hash> = env.stale.lock().drain().collect();
    for h in stale {
        discard_one(env, h);
    }
    let free = match meta::free_chunks(&env.catalog.conn()) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("listing unreferenced chunks: {e}");
            return;
        }
    };
    reaper::remove_free(&env.store, &free, |hs| {
        meta::drop_chunks_if_free(&mut env.catalog.conn(), hs)
    });
}

/// Asks the reaper thread (see [`crate::store::reaper`]) to collect
/// unreferenced chunks soon.
pub fn collect_soon(env: &Env) {
    env.reaper.wake();
}

/// The native volumes' catalog is what references chunks.
impl reaper::Collect for Env {
    fn reaper(&self) -> &Arc<Reaper> {
        &self.reaper
    }

    fn collect_locked(&self) {
        collect_locked(self);
    }
}

/// Starts the reaper thread (see [`reaper::start`]).
pub fn start_reaper(env: &Arc<Env>) -> Result<()> {
    reaper::start(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_merges_ranges_until_the_chunk_is_whole() {
        let mut r = Vec::new();
        assert!(!cover(&mut r, LEAF - 10, LEAF));
        assert!(!cover(&mut r, 0, 10));
        assert!(!cover(&mut r, 5, 5), "an empty range changes nothing");
        assert_eq!(r, vec![(0, 10), (LEAF - 10, LEAF)]);
        assert!(!cover(&mut r, 10, LEAF - 11), "one byte still missing");
        assert!(cover(&mut r, LEAF - 12, LEAF - 9), "overlaps merge");
        assert_eq!(r, vec![(0, LEAF)]);
    }

    #[test]
    fn chunk_lengths() {
        assert_eq!(chunk_len(0, 0), 0);
        assert_eq!(chunk_len(10, 0), 10);
        assert_eq!(chunk_len(LEAF64 + 5, 0), LEAF);
        assert_eq!(chunk_len(LEAF64 + 5, 1), 5);
        assert_eq!(chunk_len(LEAF64 + 5, 2), 0);
        assert!(all_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!all_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!all_zero(&v));
    }
}
