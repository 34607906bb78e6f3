//! The hot tier's chunk store: chunks of up to 1 MiB, each in its own file
//! named by the SHA-256 of its data (`chunks/ab/abcdef…`).
//!
//! **File format.** `data | padding | crc32c of each 4 KiB block (LE u32) |
//! footer`, where the 16-byte footer is `"FSDCHNK1" | data length (LE u32) |
//! block count (LE u32)` and the padding (zeros, less than 4 KiB) makes a
//! full chunk's file a whole number of 4 KiB blocks. The chunk's name is the
//! SHA-256 of `data` alone, so the durable tier and the tree hash see plain
//! data.
//!
//! **Why the padding.** A full chunk goes to disk as one O_DIRECT `pwritev`
//! of its buffer and one 4 KiB page holding padding, CRCs and footer. Without
//! the padding the tail is not block-sized, so it was written through the
//! page cache: two `fcntl`s, a buffered write, a page to allocate and a
//! second, 4 KiB I/O to start per chunk. Small chunks are written buffered
//! and have no padding.
//!
//! **Why block CRCs.** A read must detect a chunk whose content no longer
//! matches what was written. Re-hashing a whole 1 MiB chunk with SHA-256 on
//! every read would cap reads near the speed of SHA-256 (about 1.7 GB/s per
//! core here) and make a 4 KiB random read cost a 1 MiB read. Instead the
//! CRC-32C of each 4 KiB block, computed from the same bytes the name was
//! computed from, is checked on every read: any change to the data after it
//! was named is caught at a cost of a few percent. `fsck` checks the full
//! SHA-256 against the name.
//!
//! **Crash safety.** A chunk is written straight to its final name (one
//! `open(O_CREAT|O_EXCL)`, no temporary file and rename: on ext4 a rename
//! out of a shared directory serialises writers and costs a third of the
//! write path). The catalog references a chunk only after its file is
//! complete, so a file cut short by a crash is never referenced, and
//! [`ChunkStore::collect_orphans`] removes it at startup before any writer
//! runs.
//!
//! **Concurrency.** A writer pins a hash before checking whether its file
//! exists and keeps the pin until the catalog references it; collection
//! never removes a pinned chunk, so a chunk being reused by deduplication
//! cannot vanish between the check and the commit. While one writer writes a
//! chunk, the pin says so, and a second writer of the same data waits for
//! it instead of trusting a file that is still growing.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use super::spares::{self, Spares};
use super::treehash::{Hash, LEAF, sha256};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::util::StatFs;

/// The unit of the per-block checksums.
pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"FSDCHNK1";
const FOOTER: usize = 16;
/// Open chunk files kept for reuse, at most: 4 GiB of 1 MiB chunks, so a
/// re-read of a file that large opens nothing. Fewer when the descriptor
/// limit is low (see `open_files`).
const OPEN_FILES: usize = 4096;

/// How many chunk files to keep open: `OPEN_FILES`, or a quarter of the
/// process's descriptor limit if that is smaller, leaving the rest for FUSE,
/// the catalog, the control socket and the archive media.
fn open_files() -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    OPEN_FILES.min((limit / 4) as usize).max(16)
}
/// Chunks at least this large start their writeback as soon as written.
const EARLY_WRITEBACK: usize = 256 * 1024;

/// An open, validated chunk file.
pub struct ChunkFile {
    file: File,
    len: u32,
    crcs: Vec<u32>,
}

impl ChunkFile {
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The length of a chunk file's tail (CRC table and footer).
fn tail_len(crcs: &[u32]) -> usize {
    crcs.len() * 4 + FOOTER
}

/// Writes a chunk file's tail (the CRC table and the footer for `len`
/// bytes of data) into `out`, which is `tail_len(crcs)` bytes long.
fn put_tail(out: &mut [u8], len: usize, crcs: &[u32]) {
    let (table, footer) = out.split_at_mut(crcs.len() * 4);
    for (slot, c) in table.chunks_exact_mut(4).zip(crcs) {
        slot.copy_from_slice(&c.to_le_bytes());
    }
    footer[..8].copy_from_slice(MAGIC);
    footer[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    footer[12..16].copy_from_slice(&(crcs.len() as u32).to_le_bytes());
}

/// One page-aligned 4 KiB block, for the tail of an O_DIRECT chunk write.
#[repr(C, align(4096))]
struct TailPage([u8; BLOCK]);

impl TailPage {
    fn new() -> Box<Self> {
        Box::new(TailPage([0; BLOCK]))
    }
}

/// Opens a chunk file for its one write: a new file, or (`reused`) an
/// empty spare just renamed to the chunk's name.
fn open_chunk_file(path: &Path, reused: bool, flags: i32) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).custom_flags(flags);
    if !reused {
        o.create_new(true).mode(0o600);
    }
    o.open(path)
}

fn crcs_of(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK).map(super::crc::crc32c).collect()
}

/// The quarantine directory inside the store (see
/// [`ChunkStore::collect_orphans`]).
pub const QUARANTINE: &str = ".quarantine";

/// What start-up does with a chunk file the catalog does not reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphans {
    /// The catalog is the one the last run committed to: a file written
    /// at or after this time (ns since the epoch, the last run's start) is
    /// a write that run never committed, and is removed. Older ones are
    /// quarantined.
    RemoveNewerThan(i64),
    /// Nothing is provable (a restored or migrated catalog): every
    /// unreferenced file is quarantined.
    QuarantineAll,
}

/// What [`ChunkStore::collect_orphans`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub removed: usize,
    pub quarantined: usize,
}

/// The store.
pub struct ChunkStore {
    dir: PathBuf,
    tmp: PathBuf,
    open: Mutex<LruCache<Hash, Arc<ChunkFile>>>,
    pins: Mutex<HashMap<Hash, PinState>>,
    written: Condvar,
    /// Cleared once the filesystem refuses O_DIRECT (tmpfs does).
    direct: std::sync::atomic::AtomicBool,
    /// Fan-out directories known to exist. They are made on first use, not
    /// at start-up: 256 mkdirs are half of a cold daemon start.
    made: [std::sync::atomic::AtomicBool; 256],
    /// Emptied chunk files kept for reuse (see `spares`).
    spares: Mutex<Spares>,
    /// Days a quarantined chunk is kept, for `tokenctl status`.
    quarantine_days: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct PinState {
    count: u32,
    /// A writer is creating this chunk's file right now.
    writing: bool,
}

/// Keeps a hash safe from collection while it lives.
pub struct Pin {
    store: Arc<ChunkStore>,
    hash: Hash,
}

impl Pin {
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", &hex(&self.hash)[..16])
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock();
        if let Some(p) = pins.get_mut(&self.hash) {
            p.count -= 1;
            if p.count == 0 {
                pins.remove(&self.hash);
            }
        }
    }
}

pub fn hex(h: &Hash) -> String {
    hex::encode(h)
}

fn parse_hex(name: &str) -> Option<Hash> {
    let v = hex::decode(name).ok()?;
    v.try_into().ok()
}

impl ChunkStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        // Only ever cleaned: earlier versions wrote chunks there first.
        let tmp = dir.join("tmp");
        Ok(Arc::new(ChunkStore {
            dir: dir.to_path_buf(),
            tmp,
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(open_files()).unwrap_or(NonZeroUsize::MIN),
            )),
            pins: Mutex::new(HashMap::new()),
            written: Condvar::new(),
            direct: std::sync::atomic::AtomicBool::new(true),
            made: std::array::from_fn(|_| std::sync::atomic::AtomicBool::new(false)),
            spares: Mutex::new(Spares::default()),
            quarantine_days: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, h: &Hash) -> PathBuf {
        let name = hex(h);
        self.dir.join(&name[..2]).join(name)
    }

    /// Pins `hash` against collection (see the module comment).
    pub fn pin(self: &Arc<Self>, hash: Hash) -> Pin {
        self.pins.lock().entry(hash).or_default().count += 1;
        Pin {
            store: self.clone(),
            hash,
        }
    }

    /// True while some writer holds a pin on `h`.
    pub fn is_pinned(&self, h: &Hash) -> bool {
        self.pins.lock().contains_key(h)
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.path(h).exists()
    }

    /// Stores `data` (at most 1 MiB) and returns its pinned hash. Writes the
    /// file only if no chunk with that hash exists yet (deduplication).
    pub fn put(self: &Arc<Self>, data: &[u8]) -> Result<Pin> {
        let hash = sha256(data);
        let pin = self.pin(hash);
        self.write_if_missing(&hash, data)?;
        Ok(pin)
    }

    /// Like [`Self::put`] for data whose hash the caller has computed.
    pub fn put_hashed(self: &Arc<Self>, hash: Hash, data: &[u8]) -> Result<Pin> {
        let pin = self.pin(hash);
        self.write_if_missing(&hash, data)?;
        Ok(pin)
    }

    /// Writes the chunk file unless it exists. The caller holds a pin.
    fn write_if_missing(&self, hash: &Hash, data: &[u8]) -> Result<()> {
        if data.len() > LEAF {
            return Err(Error::new(ErrorKind::Invalid, "chunk larger than 1 MiB"));
        }
        let path = self.path(hash);
        {
            let mut pins = self.pins.lock();
            loop {
                let writing = pins.get(hash).is_some_and(|p| p.writing);
                if !writing {
                    break;
                }
                self.written.wait(&mut pins);
            }
            if path.exists() {
                return Ok(());
            }
            pins.entry(*hash).or_default().writing = true;
        }
        let result = self.make_fanout(hash).and_then(|()| {
            let reused = self.take_spare(hash, &path);
            self.write_file(&path, data, reused)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        {
            let mut pins = self.pins.lock();
            if let Some(p) = pins.get_mut(hash) {
                p.writing = false;
            }
            self.written.notify_all();
        }
        result.map_err(|e| Error::io(format!("writing chunk {}", hex(hash)), e))
    }

    /// The path of spare `id` in fan-out directory `fan`.
    fn spare_path(&self, fan: u8, id: u64) -> PathBuf {
        self.dir.join(format!("{fan:02x}")).join(spares::name(id))
    }

    /// Renames a spare of `hash`'s fan-out directory to `path` (the
    /// caller is the only writer of `hash`). False if there is none or the
    /// rename fails (the spare is then dropped).
    fn take_spare(&self, hash: &Hash, path: &Path) -> bool {
        let Some(id) = self.spares.lock().take(hash[0]) else {
            return false;
        };
        let from = self.spare_path(hash[0], id);
        match spares::rename_noreplace(&from, path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("reusing {}: {e}", from.display());
                let _ = std::fs::remove_file(&from);
                false
            }
        }
    }

    /// Keeps an emptied chunk file for reuse, or unlinks it when enough
    /// are kept or it cannot be emptied.
    fn retire(&self, fan: u8, id: u64) {
        let p = self.spare_path(fan, id);
        if self.spares.lock().has_room()
            && spares::truncate(&p).is_ok()
            && self.spares.lock().put(fan, id)
        {
            return;
        }
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!("removing {}: {e}", p.display());
        }
    }

    /// Spare files kept for reuse now.
    pub fn spare_count(&self) -> usize {
        self.spares.lock().len()
    }

    /// Makes the fan-out directory of `hash` unless it is known to exist.
    fn make_fanout(&self, hash: &Hash) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let flag = &self.made[hash[0] as usize];
        if flag.load(Ordering::Relaxed) {
            return Ok(());
        }
        match std::fs::create_dir(self.dir.join(format!("{:02x}", hash[0]))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        flag.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a chunk file: whole, page-aligned chunks with O_DIRECT (see
    /// `write_direct`), the rest buffered and without padding.
    fn write_file(&self, path: &Path, data: &[u8], reused: bool) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let crcs = crcs_of(data);
        let mut reused = reused;
        let aligned =
            data.len() == LEAF && (data.as_ptr() as usize).is_multiple_of(super::buf::ALIGN);
        if aligned && self.direct.load(Ordering::Relaxed) {
            match self.write_direct(path, data, &crcs, reused) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The filesystem refuses O_DIRECT (tmpfs): from now on
                    // every chunk is written buffered.
                    self.direct.store(false, Ordering::Relaxed);
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    reused = false;
                }
                Err(e) => return Err(e),
            }
        }
        let mut f = open_chunk_file(path, reused, 0)?;
        f.write_all(data)?;
        let mut tail = vec![0u8; tail_len(&crcs)];
        put_tail(&mut tail, data.len(), &crcs);
        f.write_all(&tail)?;
        // Start writeback of a large chunk now, so an fsync later finds the
        // data on its way to disk instead of starting from zero. A small
        // chunk is left to the flusher: starting I/O for a few KiB costs a
        // block allocation and a request per file, which dominates creating
        // many small files, and an fsync's syncfs writes it anyway.
        if data.len() >= EARLY_WRITEBACK {
            // SAFETY: a valid descriptor and a plain range request.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    /// Writes a full, page-aligned chunk and its padded tail page in one
    /// O_DIRECT `pwritev`: no copy into the page cache (on a VM, fresh
    /// page-cache pages are as costly as the SHA-256) and the data is on
    /// its way to disk before any fsync asks for it.
    fn write_direct(
        &self,
        path: &Path,
        data: &[u8],
        crcs: &[u32],
        reused: bool,
    ) -> std::io::Result<()> {
        let file = open_chunk_file(path, reused, libc::O_DIRECT)?;
        let tail = tail_len(crcs);
        let pad = tail.next_multiple_of(BLOCK) - tail;
        let mut page = TailPage::new();
        put_tail(&mut page.0[pad..pad + tail], data.len(), crcs);
        let page = &page.0[..pad + tail];
        let iov = [std::io::IoSlice::new(data), std::io::IoSlice::new(page)];
        let n = loop {
            match nix::sys::uio::pwritev(&file, &iov, 0) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == data.len() + page.len() {
            return Ok(());
        }
        // A short direct write (rare: the disk filled up midway) is
        // finished, or fails with the real error, through plain writes.
        {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            let fl = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL)?);
            fcntl(&file, FcntlArg::F_SETFL(fl - OFlag::O_DIRECT))?;
        }
        if n < data.len() {
            file.write_all_at(&data[n..], n as u64)?;
        }
        let done = n.max(data.len());
        file.write_all_at(&page[done - data.len()..], done as u64)
    }

    /// Opens a chunk (through the cache) and checks its footer.
    pub fn open_chunk(&self, h: &Hash) -> Result<Arc<ChunkFile>> {
        if let Some(f) = self.open.lock().get(h) {
            return Ok(f.clone());
        }
        let path = self.path(h);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(ErrorKind::Integrity, format!("chunk {} is missing", hex(h)))
            } else {
                Error::io(format!("opening chunk {}", hex(h)), e)
            }
        })?;
        let size = file
            .metadata()
            .ctx(|| format!("stat of chunk {}", hex(h)))?
            .len() as usize;
        let bad =
            |why: String| Error::new(ErrorKind::Integrity, format!("chunk {}: {why}", hex(h)));
        if size < FOOTER {
            return Err(bad(format!("file of {size} bytes is too short")));
        }
        let max_tail = (LEAF / BLOCK) * 4 + FOOTER;
        let tail_len = size.min(max_tail);
        let mut tail = vec![0u8; tail_len];
        file.read_exact_at(&mut tail, (size - tail_len) as u64)
            .ctx(|| format!("reading chunk {} footer", hex(h)))?;
        let footer = &tail[tail_len - FOOTER..];
        if &footer[..8] != MAGIC {
            return Err(bad("bad footer magic".into()));
        }
        let len = u32::from_le_bytes([footer[8], footer[9], footer[10], footer[11]]);
        let nblocks = u32::from_le_bytes([footer[12], footer[13], footer[14], footer[15]]) as usize;
        let unpadded = len as usize + nblocks * 4 + FOOTER;
        if len as usize > LEAF
            || nblocks != (len as usize).div_ceil(BLOCK)
            || size < unpadded
            || size - unpadded >= BLOCK
        {
            return Err(bad(format!(
                "footer says {len} bytes in {nblocks} blocks, file has {size}"
            )));
        }
        let table = &tail[tail_len - FOOTER - nblocks * 4..tail_len - FOOTER];
        let crcs = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let cf = Arc::new(ChunkFile { file, len, crcs });
        self.open.lock().put(*h, cf.clone());
        Ok(cf)
    }

    /// Reads `buf.len()` bytes at `offset` of chunk `h`, verifying the CRC of
    /// every 4 KiB block it touches. A mismatch is an Integrity error.
    pub fn read(&self, h: &Hash, offset: usize, buf: &mut [u8]) -> Result<()> {
        let cf = self.open_chunk(h)?;
        let len = cf.len as usize;
        let end = offset + buf.len();
        if end > len {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "chunk {}: read of {}..{end} beyond its {len} bytes",
                    hex(h),
                    offset
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let a_start = first * BLOCK;
        let a_end = ((last + 1) * BLOCK).min(len);
        let aligned = a_start == offset && a_end == end;
        if aligned {
            self.read_verified(h, &cf, first, buf)
        } else {
            let mut bounce = vec![0u8; a_end - a_start];
            self.read_verified(h, &cf, first, &mut bounce)?;
            buf.copy_from_slice(&bounce[offset - a_start..end - a_start]);
            Ok(())
        }
    }

    /// Reads the block-aligned `region` starting at block `first` and checks
    /// each block's CRC.
    fn read_verified(
        &self,
        h: &Hash,
        cf: &ChunkFile,
        first: usize,
        region: &mut [u8],
    ) -> Result<()> {
        let start = first * BLOCK;
        cf.file
            .read_exact_at(region, start as u64)
            .ctx(|| format!("reading chunk {} at {start}", hex(h)))?;
        for (i, block) in region.chunks(BLOCK).enumerate() {
            let b = first + i;
            if cf.crcs.get(b) != Some(&super::crc::crc32c(block)) {
                self.open.lock().pop(h);
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "chunk {}: block {b} (bytes {}..{}) fails its CRC-32C check",
                        hex(h),
                        b * BLOCK,
                        b * BLOCK + block.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads a whole chunk.
    pub fn read_all(&self, h: &Hash) -> Result<Vec<u8>> {
        let cf = self.open_chunk(h)?;
        let mut buf = vec![0u8; cf.len as usize];
        self.read(h, 0, &mut buf)?;
        Ok(buf)
    }

    /// Checks a chunk completely: footer, block CRCs and SHA-256 of the data
    /// against the name.
    pub fn verify(&self, h: &Hash) -> Result<u32> {
        self.open.lock().pop(h);
        let data = self.read_all(h)?;
        if sha256(&data) != *h {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("chunk {}: its SHA-256 does not match its name", hex(h)),
            ));
        }
        Ok(data.len() as u32)
    }

    /// Removes the chunk files of `hashes` that are not pinned and that
    /// `also` (given those, run under the pin lock, typically one catalog
    /// transaction dropping their rows) returns. Under the pin lock each
    /// file is only renamed to a spare name in its own directory, which is
    /// cheap; emptying (or unlinking) it, which frees blocks and may discard
    /// them, happens after the lock is released, so readers and writers that
    /// pin chunks do not wait for it. A crash in between leaves a spare with
    /// data, which start-up empties. Returns how many `also` released (a
    /// file already missing counts as removed).
    pub fn remove_unpinned_batch(
        &self,
        hashes: &[Hash],
        also: impl FnOnce(&[Hash]) -> Result<Vec<Hash>>,
    ) -> Result<usize> {
        let mut retired = Vec::new();
        let released;
        {
            let pins = self.pins.lock();
            let free: Vec<Hash> = hashes
                .iter()
                .filter(|h| !pins.contains_key(*h))
                .copied()
                .collect();
            if free.is_empty() {
                return Ok(0);
            }
            let gone = also(&free)?;
            released = gone.len();
            let mut open = self.open.lock();
            for h in &gone {
                open.pop(h);
            }
            drop(open);
            for h in &gone {
                let id = self.spares.lock().next_id();
                match std::fs::rename(self.path(h), self.spare_path(h[0], id)) {
                    Ok(()) => retired.push((h[0], id)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(format!("removing chunk {}", hex(h)), e));
                    }
                }
            }
        }
        for (fan, id) in retired {
            self.retire(fan, id);
        }
        Ok(released)
    }

    /// Removes a chunk file unless it is pinned. Returns whether it was
    /// removed. The caller has already dropped the catalog row, or is
    /// cleaning up files no row references.
    /// `also` runs under the pin lock, so no writer can pin the hash
    /// between the catalog deciding the chunk is free and the removal.
    pub fn remove_unpinned(&self, h: &Hash, also: impl FnOnce() -> Result<bool>) -> Result<bool> {
        Ok(self.remove_unless_pinned(h, also)? == Some(true))
    }

    /// [`remove_unpinned`](Self::remove_unpinned) that also says why a chunk
    /// stayed: `None` if it was pinned, decided under the pin lock. Asking
    /// [`is_pinned`](Self::is_pinned) afterwards races the pin's release:
    /// a reader that lets go in between leaves a chunk that is neither
    /// removed nor remembered for a retry.
    pub fn remove_unless_pinned(
        &self,
        h: &Hash,
        also: impl FnOnce() -> Result<bool>,
    ) -> Result<Option<bool>> {
        let mut asked = false;
        let n = self.remove_unpinned_batch(std::slice::from_ref(h), |_| {
            asked = true;
            Ok(if also()? { vec![*h] } else { Vec::new() })
        })?;
        // `also` runs only for the hashes not pinned.
        Ok(asked.then_some(n == 1))
    }

    /// Every chunk file in the store.
    pub fn list(&self) -> Result<Vec<Hash>> {
        self.scan(|_, _| {})
    }

    /// Lists the chunk files, and hands every spare file found to `spare`.
    fn scan(&self, mut spare: impl FnMut(u8, u64)) -> Result<Vec<Hash>> {
        use std::sync::atomic::Ordering;
        // One listing of the store finds the fan-out directories that
        // exist (few, in a new store), instead of 256 failed opens.
        let top = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        let mut fans: Vec<u8> = top
            .flatten()
            .filter_map(|e| {
                let n = e.file_name();
                let n = n.to_str()?;
                (n.len() == 2).then(|| u8::from_str_radix(n, 16).ok())?
            })
            .collect();
        fans.sort_unstable();
        let mut out = Vec::new();
        for i in fans {
            self.made[i as usize].store(true, Ordering::Relaxed);
            let d = self.dir.join(format!("{i:02x}"));
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", d.display()), e)),
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(h) = parse_hex(name) {
                    out.push(h);
                } else if let Some(id) = spares::parse(name) {
                    spare(i, id);
                }
            }
        }
        Ok(out)
    }

    /// Removes leftovers of interrupted writes. Call only when no write is
    /// in progress (at startup).
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Settles chunk files for which `referenced` is false and that are not
    /// pinned, as `policy` says: removed when provably left over from the
    /// last run, moved to the quarantine otherwise. Also adopts the spare
    /// files left by an earlier run (emptying them: a crash may have come
    /// before that). Call at startup, before writes begin.
    pub fn collect_orphans(
        &self,
        referenced: impl Fn(&Hash) -> bool,
        policy: Orphans,
    ) -> Result<Collected> {
        use std::os::unix::fs::MetadataExt;
        let mut found = Vec::new();
        let chunks = self.scan(|fan, id| found.push((fan, id)))?;
        {
            let mut sp = self.spares.lock();
            for &(_, id) in &found {
                sp.put_seen(id);
            }
        }
        for (fan, id) in found {
            self.retire(fan, id);
        }
        let mut out = Collected::default();
        for h in chunks {
            if referenced(&h) || self.is_pinned(&h) {
                continue;
            }
            let newer = match (policy, std::fs::metadata(self.path(&h))) {
                (Orphans::RemoveNewerThan(t), Ok(m)) => {
                    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128 >= t as i128
                }
                _ => false,
            };
            if newer {
                if self.remove_unpinned(&h, || Ok(true))? {
                    out.removed += 1;
                }
            } else if self.quarantine(&h)? {
                out.quarantined += 1;
            }
        }
        Ok(out)
    }

    /// The quarantine: chunk files that start-up found unreferenced but
    /// could not prove to be leftovers, kept for a grace period.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE)
    }

    /// Moves chunk `h` into the quarantine, stamping its mtime with the
    /// time it went there (the grace period counts from it). False if it
    /// is gone.
    fn quarantine(&self, h: &Hash) -> Result<bool> {
        let q = self.quarantine_dir();
        match std::fs::create_dir(&q) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", q.display()), e)),
        }
        let to = q.join(hex(h));
        match std::fs::rename(self.path(h), &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::io(
                    format!("moving chunk {} to {}", hex(h), q.display()),
                    e,
                ));
            }
        }
        self.open.lock().pop(h);
        if let Ok(f) = File::options().write(true).open(&to) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(true)
    }

    /// [`quarantine`](Self::quarantine) unless `h` is pinned (being
    /// written or read), decided under the pin lock like
    /// [`remove_unpinned`](Self::remove_unpinned). `fsck --repair` uses it
    /// for chunk files no catalog row knows: against a wrong or restored
    /// catalog they are data, so they are kept for the grace period rather
    /// than deleted. False if pinned or gone.
    pub fn quarantine_unpinned(&self, h: &Hash) -> Result<bool> {
        let pins = self.pins.lock();
        if pins.contains_key(h) {
            return Ok(false);
        }
        self.quarantine(h)
    }

    /// The chunks in the quarantine: hash, file size and when each went
    /// there.
    pub fn quarantined(&self) -> Vec<(Hash, u64, std::time::SystemTime)> {
        let Ok(rd) = std::fs::read_dir(self.quarantine_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let h = parse_hex(e.file_name().to_str()?)?;
                let m = e.metadata().ok()?;
                Some((h, m.len(), m.modified().ok()?))
            })
            .collect()
    }

    /// Days a quarantined chunk is kept (set by the daemon from its
    /// configuration; shown by `tokenctl status`).
    pub fn quarantine_days(&self) -> u64 {
        self.quarantine_days
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_quarantine_days(&self, days: u64) {
        self.quarantine_days
            .store(days, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves back into the store every quarantined chunk that `referenced`
    /// says the catalog uses (a restored catalog that is older than the
    /// quarantine). Returns how many came back.
    pub fn release_quarantined(&self, referenced: impl Fn(&Hash) -> bool) -> Result<usize> {
        let mut n = 0;
        for (h, _, _) in self.quarantined() {
            if !referenced(&h) {
                continue;
            }
            let from = self.quarantine_dir().join(hex(&h));
            let to = self.path(&h);
            self.make_fanout(&h)
                .and_then(|()| spares::rename_noreplace(&from, &to))
                .or_else(|e| {
                    // The store has the chunk again (written anew): the
                    // quarantined copy is redundant.
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        std::fs::remove_file(&from)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| Error::io(format!("restoring {} from the quarantine", hex(&h)), e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes quarantined chunks that have been there longer than
    /// `grace`; returns how many.
    pub fn purge_quarantine(&self, grace: std::time::Duration) -> usize {
        let now = std::time::SystemTime::now();
        let mut n = 0;
        for (h, _, at) in self.quarantined() {
            if now.duration_since(at).is_ok_and(|age| age >= grace)
                && std::fs::remove_file(self.quarantine_dir().join(hex(&h))).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Makes everything written to the store's filesystem durable: one
    /// `syncfs` instead of an fsync per chunk file and per directory.
    pub fn sync(&self) -> Result<()> {
        let d = File::open(&self.dir).ctx(|| format!("opening {}", self.dir.display()))?;
        // SAFETY: syncfs takes a valid open descriptor and nothing else.
        let r = unsafe { libc::syncfs(d.as_raw_fd()) };
        if r != 0 {
            return Err(Error::io(
                "syncfs of the hot tier",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Capacity of the hot tier's filesystem.
    pub fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| Error::io("statfs of the hot tier", std::io::Error::from(e)))?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: 255,
            frsize: s.fragment_size() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn put_read_dedup_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let a = data(LEAF, 1);
        let pin = s.put(&a).unwrap();
        let h = *pin.hash();
        assert_eq!(h, sha256(&a));
        assert!(s.contains(&h));
        let mtime = std::fs::metadata(s.path(&h)).unwrap().modified().unwrap();
        s.put(&a).unwrap();
        assert_eq!(
            std::fs::metadata(s.path(&h)).unwrap().modified().unwrap(),
            mtime,
            "not rewritten"
        );
        let mut buf = vec![0u8; 10_000];
        s.read(&h, 5_000, &mut buf).unwrap();
        assert_eq!(buf, &a[5_000..15_000]);
        let mut buf = vec![0u8; 8192];
        s.read(&h, 8192, &mut buf).unwrap();
        assert_eq!(buf, &a[8192..16384]);
        assert_eq!(s.read_all(&h).unwrap(), a);
        assert_eq!(s.verify(&h).unwrap(), LEAF as u32);
        assert!(s.read(&h, LEAF - 1, &mut [0u8; 2]).is_err());
        let short = data(5000, 9);
        let p2 = s.put(&short).unwrap();
        assert_eq!(s.read_all(p2.hash()).unwrap(), short);
        let mut list = s.list().unwrap();
        list.sort();
        let mut want = vec![h, *p2.hash()];
        want.sort();
        assert_eq!(list, want);
    }

    #[test]
    fn batch_removal_spares_pinned_and_kept_chunks() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let hs: Vec<Hash> = (0..4u8)
            .map(|i| *s.put(&data(5000, i)).unwrap().hash())
            .collect();
        let pinned = s.pin(hs[0]);
        let mut offered = Vec::new();
        // The catalog keeps hs[1] (say, referenced again meanwhile).
        let n = s
            .remove_unpinned_batch(&hs, |free| {
                offered = free.to_vec();
                Ok(free.iter().filter(|h| **h != hs[1]).copied().collect())
            })
            .unwrap();
        assert_eq!(offered, hs[1..].to_vec(), "pinned chunk not offered");
        assert_eq!(n, 2);
        assert!(s.contains(&hs[0]) && s.contains(&hs[1]));
        assert!(!s.contains(&hs[2]) && !s.contains(&hs[3]));
        assert_eq!(
            std::fs::read_dir(&s.tmp).map_or(0, |d| d.count()),
            0,
            "no trash left"
        );
        // A failing catalog step removes nothing.
        drop(pinned);
        let r = s.remove_unpinned_batch(&hs[..1], |_| Err(Error::kind_only(ErrorKind::Io)));
        assert!(r.is_err());
        assert!(s.contains(&hs[0]));
    }

    #[test]
    fn full_chunks_are_padded_to_whole_blocks_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let a = data(LEAF, 4);
        let buf = crate::store::buf::ChunkBuf::from_slice(&a);
        let h = *s.put(&buf).unwrap().hash();
        let path = s.path(&h);
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        if s.direct.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(size, LEAF + BLOCK, "one direct write of data and tail page");
        } else {
            assert_eq!(size, LEAF + (LEAF / BLOCK) * 4 + FOOTER);
        }
        assert_eq!(s.read_all(&h).unwrap(), a);
        assert_eq!(s.verify(&h).unwrap(), LEAF as u32);
        // A whole block of padding or more is not a chunk file.
        let raw = std::fs::read(&path).unwrap();
        let tail = (LEAF / BLOCK) * 4 + FOOTER;
        let mut bad = raw[..raw.len() - tail].to_vec();
        bad.extend_from_slice(&[0u8; BLOCK]);
        bad.extend_from_slice(&raw[raw.len() - tail..]);
        std::fs::write(&path, &bad).unwrap();
        s.open.lock().clear();
        let e = s.read(&h, 0, &mut [0u8; 16]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("footer says"), "{e}");
    }

    /// Data of `len` bytes whose hash falls in fan-out directory `fan`
    /// (`seed` picks among many).
    fn data_in(fan: u8, len: usize, seed: u8) -> Vec<u8> {
        (0u32..)
            .map(|i| {
                let mut d = data(len, seed);
                d[..4].copy_from_slice(&i.to_le_bytes());
                d
            })
            .find(|d| sha256(d)[0] == fan)
            .unwrap()
    }

    #[test]
    fn removed_chunk_files_are_emptied_and_reused() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let a = crate::store::buf::ChunkBuf::from_slice(&data_in(0x5a, LEAF, 1));
        let ha = *s.put(&a).unwrap().hash();
        let ino = std::fs::metadata(s.path(&ha)).unwrap().ino();
        assert!(s.remove_unpinned(&ha, || Ok(true)).unwrap());
        assert!(!s.contains(&ha));
        assert_eq!(s.spare_count(), 1);
        let spare = d.path().join("5a").join(spares::name(0));
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 0, "emptied");
        assert!(s.list().unwrap().is_empty(), "a spare is not a chunk");
        // A chunk of another directory cannot use it.
        let other = data_in(0x11, 3000, 3);
        s.put(&other).unwrap();
        assert_eq!(s.spare_count(), 1);
        // One of the same directory takes it over, whole or small.
        let b = crate::store::buf::ChunkBuf::from_slice(&data_in(0x5a, LEAF, 2));
        let hb = *s.put(&b).unwrap().hash();
        assert_ne!(ha, hb);
        assert_eq!(s.spare_count(), 0);
        assert!(!spare.exists());
        assert_eq!(
            std::fs::metadata(s.path(&hb)).unwrap().ino(),
            ino,
            "same inode"
        );
        assert_eq!(s.read_all(&hb).unwrap(), &b[..]);
        assert_eq!(s.verify(&hb).unwrap(), LEAF as u32);
        assert!(s.remove_unpinned(&hb, || Ok(true)).unwrap());
        let small = data_in(0x5a, 5000, 3);
        let hs = *s.put(&small).unwrap().hash();
        assert_eq!(std::fs::metadata(s.path(&hs)).unwrap().ino(), ino);
        assert_eq!(s.read_all(&hs).unwrap(), small);
        assert_eq!(s.verify(&hs).unwrap(), 5000);
    }

    #[test]
    fn startup_adopts_and_empties_spares_left_by_a_crash() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = ChunkStore::open(d.path()).unwrap();
            let h = *s.put(&data_in(0x22, 9000, 3)).unwrap().hash();
            // As if the daemon died between the rename and the truncation.
            std::fs::rename(s.path(&h), d.path().join("22").join(spares::name(41))).unwrap();
        }
        let s = ChunkStore::open(d.path()).unwrap();
        assert_eq!(
            s.collect_orphans(|_| true, Orphans::QuarantineAll).unwrap(),
            Collected::default()
        );
        assert_eq!(s.spare_count(), 1);
        let spare = d.path().join("22").join(spares::name(41));
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 0);
        // Fresh spare ids do not collide with the adopted one.
        let h = *s.put(&data_in(0x22, 100, 3)).unwrap().hash();
        assert!(!spare.exists(), "reused");
        assert!(s.remove_unpinned(&h, || Ok(true)).unwrap());
        assert!(d.path().join("22").join(spares::name(42)).exists());
    }

    /// Unprovable orphans go to the quarantine, come back when referenced
    /// again, and are deleted after the grace period; provable ones (newer
    /// than the last run's start) are removed.
    #[test]
    fn quarantine_keeps_unprovable_orphans() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let a = *s.put(&data(3000, 1)).unwrap().hash();
        let b = *s.put(&data(3000, 2)).unwrap().hash();
        let far_future = i64::MAX;
        let c = s
            .collect_orphans(|h| *h == a, Orphans::RemoveNewerThan(far_future))
            .unwrap();
        assert_eq!((c.removed, c.quarantined), (0, 1), "b is older: kept");
        assert!(!s.contains(&b) && s.contains(&a));
        let q = s.quarantined();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].0, q[0].1), (b, 3000 + 4 + FOOTER as u64));
        assert!(s.list().unwrap() == vec![a], "the quarantine is not listed");
        assert_eq!(s.release_quarantined(|h| *h == b).unwrap(), 1);
        assert_eq!(s.read_all(&b).unwrap(), data(3000, 2));
        let c = s
            .collect_orphans(|h| *h == a, Orphans::QuarantineAll)
            .unwrap();
        assert_eq!(c.quarantined, 1);
        assert_eq!(s.purge_quarantine(std::time::Duration::from_secs(3600)), 0);
        assert_eq!(s.purge_quarantine(std::time::Duration::ZERO), 1);
        assert!(s.quarantined().is_empty());
        let c = s
            .collect_orphans(|_| false, Orphans::RemoveNewerThan(0))
            .unwrap();
        assert_eq!((c.removed, c.quarantined), (1, 0));
    }

    #[test]
    fn corruption_is_detected_on_read_and_by_verify() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let a = data(100_000, 3);
        let h = *s.put(&a).unwrap().hash();
        // Flip one byte in block 5 behind the store's back.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.path(&h))
            .unwrap();
        f.write_all_at(&[a[5 * BLOCK + 7] ^ 0x40], (5 * BLOCK + 7) as u64)
            .unwrap();
        s.open.lock().clear();
        let mut buf = vec![0u8; 100];
        s.read(&h, 0, &mut buf).unwrap();
        let e = s.read(&h, 5 * BLOCK, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("block 5"), "{e}");
        assert!(s.verify(&h).is_err());
        // A truncated file fails at open.
        f.set_len(50).unwrap();
        s.open.lock().clear();
        assert_eq!(
            s.read(&h, 0, &mut buf).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        // A missing file is an integrity error too.
        std::fs::remove_file(s.path(&h)).unwrap();
        s.open.lock().clear();
        assert!(
            s.read(&h, 0, &mut buf)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn pins_protect_from_collection() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        let pin = s.put(&data(10, 1)).unwrap();
        let h = *pin.hash();
        assert!(!s.remove_unpinned(&h, || Ok(true)).unwrap());
        assert_eq!(s.remove_unless_pinned(&h, || Ok(true)).unwrap(), None);
        assert!(s.contains(&h));
        drop(pin);
        assert_eq!(
            s.remove_unless_pinned(&h, || Ok(false)).unwrap(),
            Some(false),
            "unpinned, kept because the catalog uses it"
        );
        assert!(
            !s.remove_unpinned(&h, || Ok(false)).unwrap(),
            "catalog still uses it"
        );
        assert!(s.remove_unpinned(&h, || Ok(true)).unwrap());
        assert!(!s.contains(&h));
        std::fs::create_dir(d.path().join("tmp")).unwrap();
        std::fs::write(d.path().join("tmp/leftover"), b"x").unwrap();
        assert_eq!(s.clean_tmp().unwrap(), 1);
        let keep = *s.put(&data(10, 2)).unwrap().hash();
        let drop_me = *s.put(&data(10, 3)).unwrap().hash();
        let c = s
            .collect_orphans(|h| *h == keep, Orphans::RemoveNewerThan(0))
            .unwrap();
        assert_eq!((c.removed, c.quarantined), (1, 0));
        assert!(s.contains(&keep) && !s.contains(&drop_me));
        s.sync().unwrap();
        assert!(s.statfs().unwrap().blocks > 0);
    }
}
