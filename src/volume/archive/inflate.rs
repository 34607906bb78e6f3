//! Random access to deflated zip members.
//!
//! A deflate stream can only be decoded from its start, so a member is
//! inflated once and the result kept: small members in memory, large ones in
//! an unlinked temporary file under the state directory's cache, filled by a
//! background thread while readers wait only for the bytes they need. A
//! sequential reader therefore streams at inflate speed from the first byte,
//! and random readers pay the inflate cost once. The CRC-32 from the archive
//! is checked at the end; a mismatch turns every later read into EIO, and the
//! failure is logged with the member and medium.

use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use super::index::ReadAt;
use crate::error::{Error, ErrorKind, IoContext, Result};

/// Members up to this size are inflated in memory, synchronously.
const IN_MEMORY_MAX: u64 = 4 << 20;
/// How many inflated members to keep (bounds memory to 64 × 4 MiB).
const CACHE_ENTRIES: usize = 64;

/// Where a member's compressed bytes are.
#[derive(Debug, Clone)]
pub struct Source {
    pub medium: Arc<dyn ReadAt + Send>,
    pub offset: u64,
    pub csize: u64,
    pub size: u64,
    pub crc32: u32,
    /// Names the member in errors: "medium.zip: dir/file".
    pub label: String,
}

impl std::fmt::Debug for dyn ReadAt + Send {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "medium({} bytes)", self.size())
    }
}

/// Reads the compressed bytes of a member as a stream.
struct MediumReader<'a> {
    src: &'a Source,
    pos: u64,
}

impl Read for MediumReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.src.csize - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(left.min(1 << 20) as usize);
        let got = self
            .src
            .medium
            .read_at(&mut buf[..n], self.src.offset + self.pos)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

enum Store {
    Memory(Vec<u8>),
    File(File),
}

struct Progress {
    produced: u64,
    error: Option<String>,
}

/// One inflated member.
pub struct Inflated {
    size: u64,
    store: Store,
    progress: Mutex<Progress>,
    cond: Condvar,
}

impl Inflated {
    /// Reads `len` bytes at `offset`, waiting for a background inflate to
    /// produce them.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = (offset + u64::from(len)).min(self.size);
        {
            let mut p = self.progress.lock();
            loop {
                if let Some(e) = &p.error {
                    return Err(Error::new(ErrorKind::Corrupt, e.clone()));
                }
                if p.produced >= end {
                    break;
                }
                self.cond.wait(&mut p);
            }
        }
        let n = (end - offset) as usize;
        match &self.store {
            Store::Memory(v) => Ok(v[offset as usize..end as usize].to_vec()),
            Store::File(f) => {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, offset)
                    .ctx(|| "reading inflate cache".to_string())?;
                Ok(buf)
            }
        }
    }
}

/// Inflates a whole member into memory and checks its CRC.
fn inflate_to_memory(src: &Source) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(src.size as usize);
    let mut dec = flate2::read::DeflateDecoder::new(MediumReader { src, pos: 0 });
    // Read one byte more than declared so an overlong stream is caught.
    (&mut dec)
        .take(src.size + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("{}: inflate: {e}", src.label)))?;
    check(src, out.len() as u64, crc32fast::hash(&out))?;
    Ok(out)
}

fn check(src: &Source, got: u64, crc: u32) -> Result<()> {
    if got != src.size {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: inflates to {got} bytes, the archive says {}",
                src.label, src.size
            ),
        ));
    }
    if crc != src.crc32 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: CRC-32 mismatch (archive {:08x}, data {crc:08x})",
                src.label, src.crc32
            ),
        ));
    }
    Ok(())
}

/// Creates an anonymous file in `dir` that disappears when closed.
fn anonymous_file(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(_) => {
            // Filesystems without O_TMPFILE: create, then unlink at once.
            let p = dir.join(format!(
                "inflate-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .ctx(|| format!("creating {}", p.display()))?;
            let _ = std::fs::remove_file(&p);
            Ok(f)
        }
    }
}

/// Background inflate of a large member into `out`.
fn inflate_to_file(src: Source, out: Arc<Inflated>) {
    let Store::File(file) = &out.store else {
        return;
    };
    let mut dec = flate2::read::DeflateDecoder::new(MediumReader { src: &src, pos: 0 });
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let fail = |msg: String| {
        tracing::error!(member = %src.label, "inflate failed: {msg}");
        out.progress.lock().error = Some(msg);
        out.cond.notify_all();
    };
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("{}: inflate at byte {done}: {e}", src.label)),
        };
        if done + n as u64 > src.size {
            return fail(format!(
                "{}: inflates to more than the {} bytes the archive says",
                src.label, src.size
            ));
        }
        hasher.update(&buf[..n]);
        if let Err(e) = file.write_all_at(&buf[..n], done) {
            return fail(format!("{}: writing inflate cache: {e}", src.label));
        }
        done += n as u64;
        // The last bytes are published only after the CRC check below, so a
        // reader can never see the end of a member that fails verification.
        if done < src.size {
            out.progress.lock().produced = done;
            out.cond.notify_all();
        }
    }
    if let Err(e) = check(&src, done, hasher.finalize()) {
        return fail(e.to_string());
    }
    out.progress.lock().produced = done;
    out.cond.notify_all();
}

/// The per-volume cache of inflated members.
pub struct InflateCache {
    dir: PathBuf,
    lru: Mutex<LruCache<u32, Arc<Inflated>>>,
}

impl InflateCache {
    pub fn new(dir: PathBuf) -> Self {
        InflateCache {
            dir,
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Returns the inflated member `node`, inflating it on first use.
    pub fn get(&self, node: u32, src: impl FnOnce() -> Source) -> Result<Arc<Inflated>> {
        if let Some(hit) = self.lru.lock().get(&node) {
            return Ok(hit.clone());
        }
        let src = src();
        let inflated = if src.size <= IN_MEMORY_MAX {
            let data = inflate_to_memory(&src).inspect_err(|e| {
                tracing::error!(member = %src.label, "inflate failed: {e}");
            })?;
            Arc::new(Inflated {
                size: src.size,
                store: Store::Memory(data),
                progress: Mutex::new(Progress {
                    produced: src.size,
                    error: None,
                }),
                cond: Condvar::new(),
            })
        } else {
            let file = anonymous_file(&self.dir)?;
            let inflated = Arc::new(Inflated {
                size: src.size,
                store: Store::File(file),
                progress: Mutex::new(Progress {
                    produced: 0,
                    error: None,
                }),
                cond: Condvar::new(),
            });
            let worker = inflated.clone();
            std::thread::Builder::new()
                .name("fsd-inflate".into())
                .spawn(move || inflate_to_file(src, worker))
                .ctx(|| "starting inflate thread".to_string())?;
            inflated
        };
        let mut lru = self.lru.lock();
        // Another reader may have raced us; keep the first so both share it.
        if let Some(hit) = lru.get(&node) {
            return Ok(hit.clone());
        }
        lru.put(node, inflated.clone());
        Ok(inflated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn source(data: &[u8], prefix: usize) -> Source {
        let mut medium = vec![7u8; prefix];
        let c = deflate(data);
        medium.extend_from_slice(&c);
        Source {
            medium: Arc::new(medium),
            offset: prefix as u64,
            csize: c.len() as u64,
            size: data.len() as u64,
            crc32: crc32fast::hash(data),
            label: "t.zip: m".into(),
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn small_member_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = InflateCache::new(dir.path().into());
        let data = pattern(100_000);
        let inf = cache.get(1, || source(&data, 33)).unwrap();
        assert_eq!(inf.read(0, 10).unwrap(), &data[..10]);
        assert_eq!(inf.read(99_990, 100).unwrap(), &data[99_990..]);
        assert!(inf.read(100_000, 1).unwrap().is_empty());
    }

    #[test]
    fn large_member_streams_through_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = InflateCache::new(dir.path().into());
        let data = pattern(9 << 20);
        let inf = cache.get(2, || source(&data, 5)).unwrap();
        let mut off = 0u64;
        while off < data.len() as u64 {
            let got = inf.read(off, 1 << 20).unwrap();
            assert_eq!(got, &data[off as usize..off as usize + got.len()]);
            off += got.len() as u64;
        }
        assert_eq!(
            inf.read(7 << 20, 4096).unwrap(),
            &data[7 << 20..(7 << 20) + 4096]
        );
    }

    #[test]
    fn crc_mismatch_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = InflateCache::new(dir.path().into());
        let data = pattern(1000);
        let mut s = source(&data, 0);
        s.crc32 ^= 1;
        let e = cache.get(3, || s.clone()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("CRC-32"), "{e}");
        let big = pattern(5 << 20);
        let mut s = source(&big, 0);
        s.crc32 ^= 1;
        let inf = cache.get(4, || s).unwrap();
        let e = inf.read(5 << 20, 1).err();
        assert!(e.is_none(), "reading past the end is empty, not an error");
        let e = inf.read((5 << 20) - 1, 1).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn truncated_stream_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = InflateCache::new(dir.path().into());
        let data = pattern(50_000);
        let mut s = source(&data, 0);
        s.csize /= 2;
        assert_eq!(cache.get(5, || s).err().unwrap().kind(), ErrorKind::Corrupt);
    }
}
