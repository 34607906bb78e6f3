//! Random access into a raw deflate stream through seek checkpoints.
//!
//! A deflate stream can only be decoded from its start, but the decoder can
//! be stopped between two deflate blocks and restarted there later from very
//! little: the compressed offset, the 0–7 bits of the last input byte that
//! belong to the next block, and the last 32 KiB of output (the window that
//! back-references may reach). `miniz_oxide`'s `block-boundary` feature gives
//! exactly that state, so a member is never inflated whole:
//!
//! * **Checkpoints.** While any read decodes a member, the first block
//!   boundary past every `interval` bytes of output (`[cache]
//!   checkpoint_mb`) is recorded, with its window deflated again to keep it
//!   small. A read at offset X resumes from the nearest checkpoint at or
//!   before X, so it decodes at most one interval plus what it asked for.
//!   Checkpoints are built lazily by whichever reads pass them and kept in
//!   memory, charged to the shared cache budget ([`super::cache`]). A block
//!   can be as long as the whole stream (zlib-rs at level 1 writes blocks of
//!   MiBs; a hostile encoder can write just one), so when half an interval
//!   passes without a boundary the whole decoder state (about 11 KiB) is
//!   saved instead: the interval bound holds for any stream.
//! * **The main cursor.** A sequential reader would otherwise restart from a
//!   checkpoint at every read, so the decoder of the last read is kept,
//!   suspended exactly where that read stopped, and the next read that starts
//!   there continues it. It lives only while some reader holds the member
//!   open ([`DeflateIndex::hold`]): when the last one goes away it is dropped,
//!   and nothing decodes in the background, ever. Work is done only inside a
//!   read, and only up to the end of the cache block that read needs.
//! * **Verification.** A cursor that started at byte 0 carries a CRC-32 of
//!   everything it produced; when it reaches the end the CRC and the length
//!   are checked before the last bytes are handed out. Output beyond the
//!   declared size, a stream that ends early and invalid deflate data are
//!   detected wherever they are decoded. Any of these marks the member failed
//!   for good: every later read of it is EIO, and the failure is logged once
//!   with the member's name.
//!
//! The module knows nothing about zip: a stream is a byte range of any
//! [`ReadAt`] source, so gzip members can reuse it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress_with_limit};
use parking_lot::Mutex;

use super::cache::{BLOCK, Charge, DecompCache, VolumeCache};
use crate::error::{Error, ErrorKind, Result};
use crate::medium::SharedMedium;

/// The deflate window: how far back a match may reach.
const WINDOW: usize = 32 << 10;
/// Compressed bytes read from the source at a time.
const INPUT: usize = 64 << 10;
/// What a kept cursor costs: its window, its decoder tables and slack.
const CURSOR_BYTES: u64 = (WINDOW + std::mem::size_of::<DecompressorOxide>() + 256) as u64;
/// `main_pos` when there is no main cursor.
const NO_CURSOR: u64 = u64::MAX;

/// Where a deflate stream is and what it must inflate to.
#[derive(Clone)]
pub struct Stream {
    pub source: SharedMedium,
    /// The stream's first byte in the source.
    pub offset: u64,
    /// Its compressed length.
    pub csize: u64,
    /// The length it must inflate to, exactly.
    pub size: u64,
    /// CRC-32 of the inflated data, checked when it is decoded from start
    /// to end in one run.
    pub crc32: Option<u32>,
    /// Names the stream in errors and logs ("medium.zip: dir/file").
    pub label: String,
}

/// A resumable point in the stream at a deflate block boundary.
struct Checkpoint {
    /// Output bytes before this point.
    out: u64,
    /// Compressed bytes consumed before this point.
    inp: u64,
    state: State,
    /// The 32 KiB of output before `out`, deflated.
    window: Vec<u8>,
    _charge: Charge,
}

/// How a checkpoint restarts the decoder.
enum State {
    /// At a block boundary: a few bytes.
    Boundary(BlockBoundaryState),
    /// Inside a block longer than the interval (a hostile or unusual encoder
    /// can make one block of the whole stream): the whole decoder, about
    /// 11 KiB with its Huffman tables.
    Full(Box<DecompressorOxide>),
}

/// A suspended decoder.
struct Cursor {
    dec: Box<DecompressorOxide>,
    /// The wrapping output buffer; the bytes before `ring_pos` (modulo its
    /// size) are the most recent output, which back-references read.
    ring: Box<[u8]>,
    ring_pos: usize,
    out: u64,
    inp: u64,
    /// CRC of all output so far; only a cursor that started at byte 0 has it.
    crc: Option<crc32fast::Hasher>,
    done: bool,
    charge: Option<Charge>,
}

/// One deflate stream with its checkpoints; see the module documentation.
pub struct DeflateIndex {
    src: Stream,
    cache: Arc<DecompCache>,
    checkpoints: Mutex<BTreeMap<u64, Arc<Checkpoint>>>,
    main: Mutex<Option<Box<Cursor>>>,
    /// The main cursor's output position, readable without its lock.
    main_pos: AtomicU64,
    failed: Mutex<Option<String>>,
    holders: AtomicUsize,
}

/// Keeps a stream's main cursor alive while a reader has it open.
pub struct Hold(Arc<DeflateIndex>);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.holders.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(mut g) = self.0.main.try_lock()
        {
            *g = None;
            self.0.main_pos.store(NO_CURSOR, Ordering::Release);
        }
    }
}

impl DeflateIndex {
    pub fn new(src: Stream, cache: Arc<DecompCache>) -> Arc<Self> {
        Arc::new(DeflateIndex {
            src,
            cache,
            checkpoints: Mutex::new(BTreeMap::new()),
            main: Mutex::new(None),
            main_pos: AtomicU64::new(NO_CURSOR),
            failed: Mutex::new(None),
            holders: AtomicUsize::new(0),
        })
    }

    pub fn size(&self) -> u64 {
        self.src.size
    }

    /// Registers a reader; the main cursor is kept until the last one drops
    /// its [`Hold`].
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.holders.fetch_add(1, Ordering::AcqRel);
        Hold(self.clone())
    }

    /// How many checkpoints the stream has (for tests and logs).
    pub fn checkpoints(&self) -> usize {
        self.checkpoints.lock().len()
    }

    fn check_failed(&self) -> Result<()> {
        match &*self.failed.lock() {
            Some(msg) => Err(Error::new(ErrorKind::Corrupt, msg.clone())),
            None => Ok(()),
        }
    }

    /// Marks the stream failed for good and logs why, once.
    fn fail(&self, msg: String) -> Error {
        let mut f = self.failed.lock();
        if f.is_none() {
            tracing::error!(member = %self.src.label, "{msg}");
            *f = Some(msg.clone());
        }
        Error::new(ErrorKind::Corrupt, msg)
    }

    /// Reads up to `len` bytes at `off`, through `cached` (a volume's cache
    /// and the stream's key in it) when given. The bytes are returned
    /// whether or not they fit in the cache.
    pub fn read(
        &self,
        cached: Option<(&VolumeCache, u32)>,
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let size = self.src.size;
        if off >= size || len == 0 {
            return Ok(Vec::new());
        }
        self.check_failed()?;
        let end = off.saturating_add(len as u64).min(size);
        let mut out = Vec::with_capacity((end - off) as usize);
        let mut pos = off;
        let mut waited = false;
        while pos < end {
            let b = pos / BLOCK;
            let start = b * BLOCK;
            if let Some((vc, key)) = cached
                && let Some(d) = vc.get(key, b)
                && ((pos - start) as usize) < d.len()
            {
                let s = (pos - start) as usize;
                let e = ((end - start) as usize).min(d.len());
                out.extend_from_slice(&d[s..e]);
                pos = start + e as u64;
                continue;
            }
            // Decode from the block's start to the end of the last block the
            // read needs: the only read-ahead is that rounding.
            let to = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
            let Some(got) = self.inflate(start, to, !waited)? else {
                // The main cursor passed this range while we waited for it:
                // the blocks are probably cached now.
                waited = true;
                continue;
            };
            if let Some((vc, key)) = cached {
                for (k, piece) in got.chunks(BLOCK as usize).enumerate() {
                    vc.put(key, b + k as u64, Arc::from(piece));
                }
            }
            out.extend_from_slice(&got[(pos - start) as usize..(end - start) as usize]);
            pos = end;
        }
        Ok(out)
    }

    /// The latest checkpoint at or before output offset `at`.
    fn checkpoint_before(&self, at: u64) -> Option<Arc<Checkpoint>> {
        self.checkpoints
            .lock()
            .range(..=at)
            .next_back()
            .map(|(_, c)| c.clone())
    }

    /// Inflates output bytes `[from, to)`. With `wait`, may wait for the main
    /// cursor and return None when it moved past `from` meanwhile.
    fn inflate(&self, from: u64, to: u64, wait: bool) -> Result<Option<Vec<u8>>> {
        let to = to.min(self.src.size);
        let cp = self.checkpoint_before(from);
        let cp_out = cp.as_ref().map_or(0, |c| c.out);
        let seen = self.main_pos.load(Ordering::Acquire);
        let near = seen != NO_CURSOR && seen >= cp_out && seen <= from;
        if wait && (near || seen == NO_CURSOR) {
            let mut g = self.main.lock();
            self.check_failed()?;
            let now = g.as_ref().map_or(NO_CURSOR, |c| c.out);
            let usable = g
                .as_ref()
                .is_some_and(|c| !c.done && c.out <= from && c.out >= cp_out);
            if !usable && now != seen {
                return Ok(None);
            }
            if usable || g.as_ref().is_none_or(|c| c.done) {
                let mut cur = match g.take() {
                    Some(c) if usable => c,
                    _ => self.cursor_at(cp.as_deref(), true)?,
                };
                let r = self.run(&mut cur, from, to);
                let keep = r.is_ok() && self.holders.load(Ordering::Acquire) > 0;
                if keep && cur.charge.is_some() {
                    self.main_pos.store(cur.out, Ordering::Release);
                    *g = Some(cur);
                } else {
                    self.main_pos.store(NO_CURSOR, Ordering::Release);
                }
                return r.map(Some);
            }
        }
        // Another reader owns the main cursor somewhere else: decode on a
        // private cursor from the checkpoint, and hand it over as the main
        // cursor if there is none by then.
        let mut cur = self.cursor_at(cp.as_deref(), false)?;
        let got = self.run(&mut cur, from, to)?;
        if self.holders.load(Ordering::Acquire) > 0
            && let Some(mut g) = self.main.try_lock()
            && g.is_none()
            && !cur.done
            && let Some(charge) = self.cache.pin(CURSOR_BYTES)
        {
            cur.charge = Some(charge);
            self.main_pos.store(cur.out, Ordering::Release);
            *g = Some(cur);
        }
        Ok(Some(got))
    }

    /// A cursor at `cp`, or at the start of the stream. `charge` asks for
    /// its memory to be pinned in the budget so it can be kept.
    fn cursor_at(&self, cp: Option<&Checkpoint>, charge: bool) -> Result<Box<Cursor>> {
        let charge = if charge {
            self.cache.pin(CURSOR_BYTES)
        } else {
            None
        };
        Ok(Box::new(match cp {
            None => Cursor {
                dec: Box::default(),
                ring: vec![0u8; WINDOW].into_boxed_slice(),
                ring_pos: 0,
                out: 0,
                inp: 0,
                crc: self.src.crc32.map(|_| crc32fast::Hasher::new()),
                done: false,
                charge,
            },
            Some(cp) => {
                let ring = miniz_oxide::inflate::decompress_to_vec_with_limit(&cp.window, WINDOW)
                    .ok()
                    .filter(|w| w.len() == WINDOW)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Io,
                            format!(
                                "{}: the saved window of the checkpoint at byte {} does not unpack",
                                self.src.label, cp.out
                            ),
                        )
                    })?;
                Cursor {
                    dec: match &cp.state {
                        State::Boundary(b) => {
                            Box::new(DecompressorOxide::from_block_boundary_state(b))
                        }
                        State::Full(d) => d.clone(),
                    },
                    ring: ring.into_boxed_slice(),
                    ring_pos: 0,
                    out: cp.out,
                    inp: cp.inp,
                    crc: None,
                    done: false,
                    charge,
                }
            }
        }))
    }

    /// Records a checkpoint where `cur` stands if its interval has none yet
    /// and the budget allows: at a block boundary (`boundary`), or, when the
    /// interval's first half passed without one, anywhere, with the whole
    /// decoder state.
    fn checkpoint(&self, cur: &Cursor, boundary: bool) {
        let iv = self.cache.interval();
        let slot = cur.out / iv;
        if slot == 0 || cur.out >= self.src.size || (!boundary && cur.out % iv < iv / 2) {
            return;
        }
        if self
            .checkpoints
            .lock()
            .range(slot * iv..(slot + 1) * iv)
            .next()
            .is_some()
        {
            return;
        }
        let (state, extra) = if boundary {
            match cur.dec.block_boundary_state() {
                Some(b) => (State::Boundary(b), 0),
                None => return,
            }
        } else {
            (
                State::Full(cur.dec.clone()),
                std::mem::size_of::<DecompressorOxide>() as u64,
            )
        };
        let mut w = Vec::with_capacity(WINDOW);
        w.extend_from_slice(&cur.ring[cur.ring_pos..]);
        w.extend_from_slice(&cur.ring[..cur.ring_pos]);
        let window = miniz_oxide::deflate::compress_to_vec(&w, 1);
        let Some(charge) = self.cache.pin(window.len() as u64 + extra + 128) else {
            return;
        };
        self.checkpoints.lock().entry(cur.out).or_insert_with(|| {
            Arc::new(Checkpoint {
                out: cur.out,
                inp: cur.inp,
                state,
                window,
                _charge: charge,
            })
        });
    }

    /// Decodes with `cur` (at or before `from`) until it stands at `to`,
    /// returning the bytes `[from, to)`. At the end of the stream it also
    /// checks the length and CRC before returning anything.
    fn run(&self, cur: &mut Cursor, from: u64, to: u64) -> Result<Vec<u8>> {
        let r = self.run_inner(cur, from, to);
        if r.is_err() {
            cur.done = true;
        }
        r
    }

    fn run_inner(&self, cur: &mut Cursor, from: u64, to: u64) -> Result<Vec<u8>> {
        let s = &self.src;
        let mut out = Vec::with_capacity((to - from.max(cur.out)) as usize);
        let mut input = vec![0u8; INPUT.min(s.csize as usize).max(1)];
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut stalls = 0;
        loop {
            if cur.out >= to && to < s.size {
                return Ok(out);
            }
            if lo == hi && cur.inp < s.csize {
                let n = (s.csize - cur.inp).min(input.len() as u64) as usize;
                s.source
                    .read_exact_at(&mut input[..n], s.offset + cur.inp)
                    .map_err(|e| {
                        Error::io(
                            format!(
                                "{}: reading {n} compressed bytes at offset {}",
                                s.label,
                                s.offset + cur.inp
                            ),
                            e,
                        )
                    })?;
                lo = 0;
                hi = n;
            }
            let more = cur.inp + ((hi - lo) as u64) < s.csize;
            let mut flags = TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
            if more {
                flags |= TINFL_FLAG_HAS_MORE_INPUT;
            }
            // Stop exactly at `to`; at the declared end, allow one byte more
            // so an overlong stream shows itself.
            let limit = if cur.out < s.size {
                (to.max(cur.out + 1).min(s.size) - cur.out).min(usize::MAX as u64) as usize
            } else {
                1
            };
            let (status, nin, nout) = decompress_with_limit(
                &mut cur.dec,
                &input[lo..hi],
                &mut cur.ring,
                cur.ring_pos,
                limit,
                flags,
            );
            lo += nin;
            cur.inp += nin as u64;
            if nout > 0 {
                let start = cur.out;
                if start + nout as u64 > s.size {
                    return Err(self.fail(format!(
                        "{}: inflates to more than the {} bytes the archive declares",
                        s.label, s.size
                    )));
                }
                let chunk = &cur.ring[cur.ring_pos..cur.ring_pos + nout];
                if let Some(h) = &mut cur.crc {
                    h.update(chunk);
                }
                let end = start + nout as u64;
                if end > from && start < to {
                    let a = (from.max(start) - start) as usize;
                    let b = (to.min(end) - start) as usize;
                    out.extend_from_slice(&chunk[a..b]);
                }
                cur.out = end;
                cur.ring_pos = (cur.ring_pos + nout) & (WINDOW - 1);
            }
            stalls = if nin == 0 && nout == 0 { stalls + 1 } else { 0 };
            match status {
                TINFLStatus::Done => {
                    cur.done = true;
                    if cur.out != s.size {
                        return Err(self.fail(format!(
                            "{}: inflates to {} bytes, the archive declares {}",
                            s.label, cur.out, s.size
                        )));
                    }
                    if let (Some(h), Some(want)) = (cur.crc.take(), s.crc32) {
                        let got = h.finalize();
                        if got != want {
                            return Err(self.fail(format!(
                                "{}: CRC-32 mismatch (archive {want:08x}, data {got:08x})",
                                s.label
                            )));
                        }
                    }
                    return Ok(out);
                }
                TINFLStatus::BlockBoundary => self.checkpoint(cur, true),
                TINFLStatus::HasMoreOutput if nout > 0 => self.checkpoint(cur, false),
                TINFLStatus::HasMoreOutput => {}
                TINFLStatus::NeedsMoreInput if more || lo < hi => {}
                TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                    return Err(self.fail(format!(
                        "{}: the compressed data ends after {} bytes, at inflated byte {} of {}",
                        s.label, cur.inp, cur.out, s.size
                    )));
                }
                _ => {
                    return Err(self.fail(format!(
                        "{}: invalid deflate data at compressed byte {} (inflated byte {})",
                        s.label, cur.inp, cur.out
                    )));
                }
            }
            if stalls > 4 {
                return Err(self.fail(format!(
                    "{}: the deflate decoder stopped making progress at compressed byte {}",
                    s.label, cur.inp
                )));
            }
        }
    }
}

/// The property the fuzz target (`fuzz/fuzz_targets/deflate_index.rs`) and
/// the mutation unit test check, in one place: over any deflate stream
/// `body` said to inflate to `size` bytes, reads give bytes or an error and
/// never panic; and when one sequential pass decodes the stream, six reads
/// at offsets drawn from `seed` (resumed from checkpoints, and decoded from
/// the start on a fresh index) agree with that pass. Returns whether the
/// stream decoded. Panics when the property fails.
#[doc(hidden)]
pub fn check_reads_agree(body: Vec<u8>, size: u64, seed: u64) -> bool {
    let stream = Stream {
        csize: body.len() as u64,
        source: Arc::new(body),
        offset: 0,
        size,
        crc32: None,
        label: "check".into(),
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
    let mut x = seed | 1;
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
    valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Compressible but not trivial: words from a small vocabulary.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"alpha ", b"beta ", b"gamma\n", b"delta ", b"eps ", b"zeta ", b"eta ", b"theta ",
        ];
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(5) {
                v.extend_from_slice(&x.to_le_bytes()[..3]);
            } else {
                v.extend_from_slice(words[(x % 8) as usize]);
            }
        }
        v.truncate(n);
        v
    }

    fn stream(data: &[u8], prefix: usize, level: u32) -> Stream {
        let mut medium = vec![7u8; prefix];
        let c = deflate(data, level);
        medium.extend_from_slice(&c);
        medium.extend_from_slice(b"trailing bytes that are not part of the stream");
        Stream {
            source: Arc::new(medium),
            offset: prefix as u64,
            csize: c.len() as u64,
            size: data.len() as u64,
            crc32: Some(crc32fast::hash(data)),
            label: "t.zip: m".into(),
        }
    }

    #[test]
    fn random_reads_resume_from_checkpoints() {
        let data = text(9 << 20, 42);
        let cache = DecompCache::new(64 << 20, 1 << 20);
        let idx = DeflateIndex::new(stream(&data, 33, 6), cache.clone());
        let vc = cache.volume("t");
        let _h = idx.hold();
        // One pass builds the checkpoints.
        let mut off = 0u64;
        while off < data.len() as u64 {
            let got = idx.read(None, off, 100_000).unwrap();
            assert_eq!(got, &data[off as usize..off as usize + got.len()]);
            off += got.len() as u64;
        }
        assert!(idx.checkpoints() >= 7, "{} checkpoints", idx.checkpoints());
        let mut x = 12345u64;
        for _ in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (x >> 11) % data.len() as u64;
            let len = ((x >> 3) % 300_000) as usize + 1;
            let got = idx.read(Some((&vc, 1)), at, len).unwrap();
            let end = (at as usize + len).min(data.len());
            assert_eq!(got, &data[at as usize..end], "at {at} len {len}");
        }
        assert!(idx.read(None, data.len() as u64, 10).unwrap().is_empty());
    }

    #[test]
    fn cold_far_read_and_fresh_index_agree() {
        // Without a pass first: a far read decodes from the start and leaves
        // checkpoints behind; a read before it then uses them.
        let data = text(5 << 20, 7);
        let cache = DecompCache::new(8 << 20, 1 << 20);
        let idx = DeflateIndex::new(stream(&data, 0, 6), cache.clone());
        let tail = idx.read(None, (5 << 20) - 10, 100).unwrap();
        assert_eq!(tail, &data[(5 << 20) - 10..]);
        assert!(idx.checkpoints() >= 3);
        let mid = idx.read(None, 3 << 20, 4096).unwrap();
        assert_eq!(mid, &data[3 << 20..(3 << 20) + 4096]);
    }

    #[test]
    fn long_blocks_get_checkpoints_inside_them() {
        // zlib-rs at level 1 writes blocks of several MiB; a hostile encoder
        // can write one block for the whole stream.
        let data = text(6 << 20, 11);
        let cache = DecompCache::new(64 << 20, 1 << 20);
        let idx = DeflateIndex::new(stream(&data, 0, 1), cache);
        let tail = idx.read(None, (6 << 20) - 100, 100).unwrap();
        assert_eq!(tail, &data[(6 << 20) - 100..]);
        assert!(idx.checkpoints() >= 5, "{} checkpoints", idx.checkpoints());
        assert!(
            idx.checkpoints
                .lock()
                .values()
                .any(|c| matches!(c.state, State::Full(_)))
        );
        for at in [(1 << 20) + 5, 3 << 20, (5 << 20) + 77_777, 17] {
            let got = idx.read(None, at, 200_000).unwrap();
            assert_eq!(got, &data[at as usize..at as usize + 200_000], "at {at}");
        }
    }

    /// The fuzz target's property (fuzz/fuzz_targets/deflate_index.rs) over
    /// a few hundred mutations of valid streams: no panic, and when a stream
    /// decodes, random reads from checkpoints and from the start agree with
    /// one sequential pass.
    #[test]
    fn mutated_streams_never_panic_and_reads_agree() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let bases = [
            deflate(&text(700_000, 1), 6),
            deflate(&text(700_000, 2), 1),
            deflate(&[0u8; 600_000], 9),
            deflate(&text(300_000, 3), 0),
        ];
        let mut valid_rounds = 0;
        for round in 0..240 {
            let mut body = bases[round % bases.len()].clone();
            let size = match next() % 4 {
                0 => next() % (1 << 20),
                _ => [700_000u64, 700_000, 600_000, 300_000][round % bases.len()],
            };
            for _ in 0..next() % 4 {
                let i = (next() % body.len() as u64) as usize;
                body[i] ^= 1 << (next() % 8);
            }
            if next() % 5 == 0 {
                body.truncate((next() % body.len() as u64) as usize);
            }
            if check_reads_agree(body, size, next()) {
                valid_rounds += 1;
            }
        }
        assert!(valid_rounds >= 10, "only {valid_rounds} rounds decoded");
    }

    #[test]
    fn crc_mismatch_fails_the_stream_before_its_end_is_served() {
        let data = text(3 << 20, 9);
        let mut s = stream(&data, 0, 6);
        s.crc32 = s.crc32.map(|c| c ^ 1);
        let cache = DecompCache::new(64 << 20, 1 << 20);
        let idx = DeflateIndex::new(s, cache);
        let _h = idx.hold();
        let mut off = 0u64;
        let err = loop {
            match idx.read(None, off, 1 << 20) {
                Ok(v) => off += v.len() as u64,
                Err(e) => break e,
            }
        };
        assert!(off < data.len() as u64, "the last block is never served");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("CRC-32"), "{err}");
        // Sticky: even the first bytes are refused now.
        assert!(idx.read(None, 0, 10).is_err());
    }

    #[test]
    fn overlong_short_and_truncated_streams_fail() {
        let data = text(600_000, 3);
        let cache = DecompCache::new(64 << 20, 1 << 20);
        let mut s = stream(&data, 0, 6);
        s.size -= 1;
        s.crc32 = None;
        let e = DeflateIndex::new(s, cache.clone())
            .read(None, 500_000, 200_000)
            .unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let mut s = stream(&data, 0, 6);
        s.size += 1;
        let e = DeflateIndex::new(s, cache.clone())
            .read(None, 0, 1 << 20)
            .unwrap_err();
        assert!(e.to_string().contains("inflates to 600000"), "{e}");
        let mut s = stream(&data, 0, 6);
        s.csize /= 2;
        let e = DeflateIndex::new(s, cache.clone())
            .read(None, 0, 1 << 20)
            .unwrap_err();
        assert!(e.to_string().contains("ends after"), "{e}");
        let mut s = stream(&data, 0, 6);
        s.source = Arc::new(vec![0xffu8; 1000]);
        s.csize = 1000;
        let e = DeflateIndex::new(s, cache).read(None, 0, 10).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn tiny_budget_still_serves_and_cursor_goes_with_the_last_reader() {
        let data = text(2 << 20, 5);
        let cache = DecompCache::new(1, 1 << 20);
        let idx = DeflateIndex::new(stream(&data, 0, 6), cache.clone());
        let vc = cache.volume("t");
        let h = idx.hold();
        let got = idx.read(Some((&vc, 1)), 1000, 300_000).unwrap();
        assert_eq!(got, &data[1000..301_000]);
        assert_eq!(cache.usage().blocks, 0);
        drop(h);
        let big = DecompCache::new(64 << 20, 1 << 20);
        let idx = DeflateIndex::new(stream(&data, 0, 6), big.clone());
        let h = idx.hold();
        idx.read(None, 0, 10).unwrap();
        assert!(
            big.usage().pinned >= CURSOR_BYTES,
            "the main cursor is kept"
        );
        drop(h);
        assert_eq!(big.usage().pinned, 0, "and dropped with the last reader");
    }
}
