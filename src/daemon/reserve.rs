//! Space held back on the state filesystem so that deleting can free space
//! even when the filesystem is full.
//!
//! **Why.** Every change, a delete included, is a catalog transaction, and
//! a commit appends pages to the catalog's WAL. When the state filesystem
//! is full that append fails (SQLITE_FULL), so `rm` and `tokenctl destroy`
//! got ENOSPC: the only ways to get space back needed space. Chunk files
//! are freed only after the delete commits.
//!
//! **How.** `STATE/reserve` is a preallocated file of [`Reserve::size`]
//! bytes (8 MiB, at most 1/16 of the filesystem). When a delete (unlink,
//! rmdir, destroy, detach) fails with ENOSPC, the file is cut to zero bytes,
//! which frees its blocks, and the delete is tried once more: the commit and
//! the chunk collector's commit that follows fit in the released space, and
//! the collector then frees the deleted data. Before a later delete, the
//! reserve is allocated again once twice its size is free, so taking it back
//! never leaves the filesystem full again. Requests that need space get
//! ENOSPC as before; this only decides who gets the last few MiB.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::Result;

/// The reserve's size on a filesystem of ordinary size.
const SIZE: u64 = 8 << 20;

pub struct Reserve {
    path: PathBuf,
    size: u64,
    held: AtomicBool,
    /// Serialises release and re-allocation (never held across a request).
    file: Mutex<Option<File>>,
}

impl Reserve {
    /// The reserve of the state directory `dir`, not yet allocated: see
    /// [`Reserve::restore`].
    pub fn new(dir: &Path) -> Reserve {
        let path = dir.join("reserve");
        let total = nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let size = if total == 0 {
            SIZE
        } else {
            SIZE.min(total / 16)
        };
        Reserve {
            path,
            size,
            held: AtomicBool::new(false),
            file: Mutex::new(None),
        }
    }

    /// Bytes held back.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the reserve is allocated now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Frees the reserve's blocks; false if it was not held.
    fn release(&self) -> bool {
        let mut f = self.file.lock();
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        let done = match f.as_ref() {
            Some(file) => file.set_len(0).is_ok(),
            None => false,
        };
        if !done {
            let _ = std::fs::remove_file(&self.path);
            *f = None;
        }
        tracing::warn!(
            "the state filesystem is full: released the {} MiB reserve ({}) so a delete can \
             commit; it is taken back once space has been freed",
            self.size >> 20,
            self.path.display()
        );
        true
    }

    /// Allocates the reserve (an existing full-size file is adopted as it
    /// is) if it is not held and at least twice its size is free. Best
    /// effort: on a full disk it is allocated later, before a delete once
    /// space has been freed.
    pub fn restore(&self) {
        if self.held() {
            return;
        }
        let mut f = self.file.lock();
        if self.held() {
            return;
        }
        let file = match f.take() {
            Some(file) => file,
            None => match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(file) => file,
                Err(e) => {
                    tracing::debug!("{}: {e}", self.path.display());
                    return;
                }
            },
        };
        let have = file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        if have < self.size {
            let free = nix::sys::statvfs::statvfs(&self.path)
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap_or(0);
            if free < 2 * (self.size - have) {
                *f = Some(file);
                return;
            }
            // SAFETY: plain syscall on a descriptor we own.
            let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, self.size as libc::off_t) };
            if r != 0 {
                // Whatever was allocated before the failure goes back.
                let _ = file.set_len(0);
                *f = Some(file);
                return;
            }
        }
        *f = Some(file);
        self.held.store(true, Ordering::Release);
    }

    /// Runs the delete `op`; if it fails with ENOSPC and the reserve was
    /// held, releases the reserve and runs `op` once more. `op` must leave
    /// nothing changed when it fails (a rolled-back transaction does).
    pub fn for_delete<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        self.restore();
        match op() {
            Err(e) if e.errno() == libc::ENOSPC && self.release() => op(),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};

    #[test]
    fn retries_a_delete_once_after_releasing() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path());
        r.restore();
        assert!(r.held(), "room enough in a temporary directory");
        assert!(dir.path().join("reserve").metadata().unwrap().blocks() * 512 >= r.size());
        let mut tries = 0;
        let out = r.for_delete(|| {
            tries += 1;
            if tries == 1 {
                Err(Error::new(ErrorKind::NoSpace, "full"))
            } else {
                Ok(tries)
            }
        });
        assert_eq!(out.unwrap(), 2);
        // Taken back before the next delete; a failure that is not ENOSPC
        // is not retried.
        let mut tries = 0;
        let out: Result<()> = r.for_delete(|| {
            tries += 1;
            Err(Error::kind_only(ErrorKind::NotFound))
        });
        assert!(out.is_err());
        assert_eq!(tries, 1);
        assert!(r.held());
    }
}
