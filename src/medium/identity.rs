//! A medium's identity (size, mtime and a hash of both ends), which decides
//! whether a stored archive index still describes it, and the identities
//! computed ahead during start-up.
//!
//! Hashing the two 64 KiB ends costs 0.1-0.2 ms of SHA-256. At start-up an
//! `--attach` archive that was attached before is hashed twice, once when
//! its volume is reloaded from the catalog and once when the attach finds
//! it attached, and both on the thread that also opens the catalog, which
//! is what a mount waits for. [`Primed`] lets a helper thread hash the
//! `--attach` archives ahead, while the catalog opens, and lets both uses
//! share the result.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::ReadAt;
use crate::error::{Error, Result};

/// Bytes hashed at each end of a medium for the identity check.
const SAMPLE: u64 = 64 * 1024;

/// The identity of a medium at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediumId {
    pub size: u64,
    pub mtime_ns: i64,
    pub sample: String,
}

/// Computes the identity of medium `m`, whose metadata is `meta`; `label`
/// names it in errors.
pub fn medium_id(m: &dyn ReadAt, meta: &std::fs::Metadata, label: &str) -> Result<MediumId> {
    let size = m.size();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE.min(size) as usize];
    m.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("{label}: reading at offset 0"), e))?;
    h.update(&buf);
    if size > SAMPLE {
        let at = size - SAMPLE.min(size);
        m.read_exact_at(&mut buf, at)
            .map_err(|e| Error::io(format!("{label}: reading at offset {at}"), e))?;
        h.update(&buf);
    }
    Ok(MediumId {
        size,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        sample: hex::encode(&h.finalize()[..16]),
    })
}

/// What a file's identity is cached under: any write or metadata change
/// moves its ctime, which nobody can set back.
type Key = (u64, u64, u64, i64, i64);

fn key(meta: &std::fs::Metadata) -> Key {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    )
}

/// Identities of regular files computed once during start-up and shared by
/// every use until [`Primed::close`]. Closed, it computes every identity
/// afresh: later attaches must see changes that leave the key alone
/// (a write through a shared mapping updates the times late).
#[derive(Default)]
pub struct Primed {
    ids: Mutex<HashMap<Key, Arc<OnceLock<Option<MediumId>>>>>,
    closed: AtomicBool,
}

impl Primed {
    /// A cache that is closed from the start: every identity is computed.
    pub fn closed() -> Self {
        let p = Primed::default();
        p.close();
        p
    }

    /// Computes, ahead of its use, the identity of the regular file at
    /// `path`. Best effort: a path that cannot be read is left for the use
    /// to report. Anything but a regular file is left alone before it is
    /// opened (opening a FIFO would block), and the open does not block
    /// either, should the path change in between.
    pub fn prime(&self, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            return;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        if meta.is_file() {
            let m = super::MediumFile {
                size: meta.len(),
                file,
            };
            let _ = self.id(&m, &meta, &path.display().to_string());
        }
    }

    /// The identity of `m` (metadata `meta`), computed or, while open, taken
    /// from the cache; a computation under way on another thread is waited
    /// for, not repeated.
    pub fn id(&self, m: &dyn ReadAt, meta: &std::fs::Metadata, label: &str) -> Result<MediumId> {
        if self.closed.load(Ordering::Acquire) || !meta.is_file() {
            return medium_id(m, meta, label);
        }
        let cell = self.ids.lock().entry(key(meta)).or_default().clone();
        match cell.get_or_init(|| medium_id(m, meta, label).ok()) {
            Some(id) => Ok(id.clone()),
            // Failed once: compute again for the error to report.
            None => medium_id(m, meta, label),
        }
    }

    /// Ends start-up: forgets every identity and computes them from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ids.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;

    /// A medium that counts its reads.
    struct Counting<'a>(&'a [u8], &'a AtomicUsize);

    impl ReadAt for Counting<'_> {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let off = off as usize;
            let n = buf.len().min(self.0.len().saturating_sub(off));
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        (dir, p)
    }

    #[test]
    fn a_primed_identity_is_reused_until_closed() {
        let data = vec![7u8; 200 * 1024];
        let (_d, p) = file_with(&data);
        let meta = std::fs::metadata(&p).unwrap();
        let reads = AtomicUsize::new(0);
        let ids = Primed::default();
        ids.prime(&p);
        let id = ids.id(&Counting(&data, &reads), &meta, "m").unwrap();
        assert_eq!(
            reads.load(Ordering::Relaxed),
            0,
            "the primed identity was not reused"
        );
        assert_eq!(id, medium_id(&Counting(&data, &reads), &meta, "m").unwrap());
        ids.close();
        reads.store(0, Ordering::Relaxed);
        ids.id(&Counting(&data, &reads), &meta, "m").unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0, "a closed cache answered");
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let (_d, p) = file_with(&vec![1u8; 100 * 1024]);
        let ids = Primed::default();
        ids.prime(&p);
        // Same size, new content: the write moves the ctime (and mtime).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let data = vec![2u8; 100 * 1024];
        std::fs::write(&p, &data).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let reads = AtomicUsize::new(0);
        let id = ids.id(&Counting(&data, &reads), &meta, "m").unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);
        assert_eq!(id, medium_id(&Counting(&data, &reads), &meta, "m").unwrap());
    }

    #[test]
    fn priming_a_fifo_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            Primed::default().prime(&fifo);
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "prime blocked on a FIFO"
        );
    }

    #[test]
    fn a_closed_cache_never_keeps_anything() {
        let data = vec![3u8; 1000];
        let (_d, p) = file_with(&data);
        let meta = std::fs::metadata(&p).unwrap();
        let ids = Primed::closed();
        ids.prime(&p);
        let reads = AtomicUsize::new(0);
        ids.id(&Counting(&data, &reads), &meta, "m").unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);
    }
}
