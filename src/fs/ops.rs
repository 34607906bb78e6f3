//! The interface every volume kind implements, in volume-local inode numbers.
//!
//! The core (`fs::Core`) maps global inode numbers to a volume and a local
//! inode, adds the synthetic tree (`/volumes`, `/media`), and calls these
//! methods. Write-type methods default to `EROFS`, so read-only kinds
//! (archives, drives) implement only the read side and still answer every
//! write with the right errno.

use std::sync::Arc;

use super::types::{Attr, Ctx, OpenFlags, OpenOpts, SetAttr, StatFs};
use crate::error::{ErrorKind, Result, err};
use crate::store::buf::ChunkBuf;

/// The local inode number of every volume's root directory.
pub const VOLUME_ROOT: u64 = 1;

/// One directory entry as `readdir` produces it.
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub attr: Attr,
    /// The offset to resume after this entry.
    pub next: u64,
}

/// Sets `buf`'s length to `n` for a read that will overwrite every byte.
/// Bytes the buffer already held are not zeroed first: the FUSE threads
/// reuse one buffer, so a stream of equal-sized reads zeroes nothing (the
/// memset was 4% of a hot sequential read).
pub fn len_for_overwrite(buf: &mut Vec<u8>, n: usize) {
    if buf.len() >= n {
        buf.truncate(n);
    } else {
        buf.resize(n, 0);
    }
}

/// An in-place read (`read_into`) done through a reader that fills a
/// `Vec`: reads up to `buf.len()` bytes with `read` into `scratch`, then
/// copies them into `buf`. Returns how many bytes `buf` received.
pub fn read_through(
    buf: &mut [u8],
    scratch: &mut Vec<u8>,
    read: impl FnOnce(u32, &mut Vec<u8>) -> Result<()>,
) -> Result<usize> {
    read(u32::try_from(buf.len()).unwrap_or(u32::MAX), scratch)?;
    let n = scratch.len().min(buf.len());
    buf[..n].copy_from_slice(&scratch[..n]);
    Ok(n)
}

/// An open regular file. Reads and writes go through it so that per-open
/// state (write buffers, decompression cursors) lives with the handle.
pub trait OpenFile: Send + Sync {
    /// Reads up to `size` bytes at `offset` into `out`, replacing what it
    /// held; short only at end of file. The caller reuses `out` across
    /// reads, so a read allocates nothing.
    fn read(&self, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()>;

    /// Reads up to `buf.len()` bytes at `offset` straight into `buf`;
    /// returns how many (short only at end of file). For copies inside the
    /// daemon, which fill a chunk buffer in place; kinds that cannot read
    /// in place go through `scratch` and one copy.
    fn read_into(&self, offset: u64, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<usize> {
        read_through(buf, scratch, |n, v| self.read(offset, n, v))
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> Result<u32> {
        err(ErrorKind::ReadOnly)
    }

    /// Writes all of `data` at `offset`, however many calls to `write`
    /// that takes.
    fn write_all(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < data.len() {
            match self.write(offset + done as u64, &data[done..])? {
                0 => return err(ErrorKind::Io),
                n => done += n as usize,
            }
        }
        Ok(())
    }

    /// Writes all of a buffer the caller gives up, so a kind that keeps
    /// chunk buffers (native files) can take it whole instead of copying it.
    fn write_chunk(&self, offset: u64, data: ChunkBuf) -> Result<()> {
        self.write_all(offset, &data)
    }

    /// Called before a write the kernel flagged FUSE_WRITE_KILL_SUIDGID (a
    /// writer without CAP_FSETID, through direct I/O): drop the file's
    /// setuid/setgid bits as a write on ext4 does. Read-only volumes have
    /// none to drop.
    fn kill_privs(&self, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }

    /// Called on every close(2) of a descriptor (FUSE flush).
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn fsync(&self, _datasync: bool) -> Result<()> {
        Ok(())
    }

    /// Called once, when the last descriptor is gone.
    fn release(&self) -> Result<()> {
        Ok(())
    }

    /// How the kernel should cache this file's pages. By default it keeps
    /// pages cached by an earlier open: archives and media never change, and
    /// every change to a native file goes through the kernel (writes,
    /// truncates) or is announced to it (offload writes invalidate).
    fn open_opts(&self) -> OpenOpts {
        OpenOpts {
            keep_cache: true,
            direct_io: false,
        }
    }

    /// The local inode this handle refers to.
    fn ino(&self) -> u64;

    /// The file's current size.
    fn size(&self) -> Result<u64>;

    /// For the offload engine: the chunk stored at chunk-aligned `offset`,
    /// if this file keeps its data in shareable chunks (`None` otherwise or
    /// when `offset` is not chunk-aligned). Pending writes are committed
    /// first, so the answer describes every write made before the call.
    fn extent_at(&self, _offset: u64) -> Result<Option<Shared>> {
        Ok(None)
    }

    /// For the offload engine: makes the chunk at chunk-aligned `offset`
    /// refer to `ext` without copying data. `Ok(false)` if this file cannot
    /// share chunks; the caller then copies the bytes.
    fn share(&self, _offset: u64, _ext: Shared) -> Result<bool> {
        Ok(false)
    }

    /// Zeroes `[offset, offset + len)`, extending the file if needed.
    fn zero_range(&self, _offset: u64, _len: u64) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    /// For the offload engine: the catalog row that keys this file's chunk
    /// references, if its data lives in the chunk store (native files). A
    /// persistent token snapshots the references under this row, and a
    /// change-vulnerable token watches it for writes. `None` for kinds whose
    /// bytes are not counted chunks (archives, media): their tokens rely on
    /// the medium's identity instead.
    fn chunk_row(&self) -> Option<i64> {
        None
    }

    /// For a composite volume (`fs::composite`), which wraps the files its
    /// parts open: the part's number and the part's own file, which that
    /// part's `setattr` and `fallocate` expect. `None` for every other file.
    fn part(&self) -> Option<(u32, &dyn OpenFile)> {
        None
    }
}

/// A chunk as the offload engine moves it between files: its hash (`None`
/// for a hole of zeros), its length, and a pin that keeps it from being
/// collected until the destination has committed its reference.
#[derive(Debug)]
pub struct Shared {
    pub hash: Option<crate::store::treehash::Hash>,
    pub len: u32,
    pub pin: Option<crate::store::chunks::Pin>,
}

/// The operations of one volume.
#[allow(unused_variables)]
pub trait VolumeFs: Send + Sync {
    fn getattr(&self, ino: u64) -> Result<Attr>;

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr>;

    /// The directory that contains directory `ino` (the root returns itself;
    /// the core then answers with `/volumes`).
    fn parent(&self, ino: u64) -> Result<u64>;

    /// Lists directory `ino` from `offset` (0 = start; otherwise a `next`
    /// value returned earlier), calling `sink` until it returns `false`.
    /// `.` and `..` are added by the core.
    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()>;

    fn readlink(&self, ino: u64) -> Result<Vec<u8>>;

    /// A directory was opened; volumes that can remove directories keep an
    /// open one usable after it is removed, as POSIX requires.
    fn opendir(&self, ino: u64) -> Result<()> {
        self.getattr(ino).map(|_| ())
    }

    fn releasedir(&self, _ino: u64) {}

    /// Whether this volume's directory listings never change while it is
    /// attached, so the kernel may keep them (FOPEN_CACHE_DIR): a second
    /// `find` or `ls` then costs no request, and the first saves the
    /// request that only finds the end of each directory.
    fn listings_fixed(&self) -> bool {
        false
    }

    /// Catalog rows of inodes in use right now (open files, open
    /// directories), which fsck must not take for orphans.
    fn busy_inodes(&self) -> Vec<i64> {
        Vec::new()
    }

    fn open(&self, ino: u64, flags: OpenFlags, ctx: &Ctx) -> Result<Arc<dyn OpenFile>>;

    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        err(ErrorKind::NoAttr)
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    fn statfs(&self) -> Result<StatFs>;

    // --- write side: read-only kinds keep these defaults ---

    fn setattr(
        &self,
        ino: u64,
        set: &SetAttr,
        fh: Option<&dyn OpenFile>,
        ctx: &Ctx,
    ) -> Result<Attr> {
        err(ErrorKind::ReadOnly)
    }

    fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: OpenFlags,
        ctx: &Ctx,
    ) -> Result<(Attr, Arc<dyn OpenFile>)> {
        err(ErrorKind::ReadOnly)
    }

    fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        ctx: &Ctx,
    ) -> Result<Attr> {
        err(ErrorKind::ReadOnly)
    }

    fn mkdir(&self, parent: u64, name: &[u8], mode: u32, umask: u32, ctx: &Ctx) -> Result<Attr> {
        err(ErrorKind::ReadOnly)
    }

    fn symlink(&self, parent: u64, name: &[u8], target: &[u8], ctx: &Ctx) -> Result<Attr> {
        err(ErrorKind::ReadOnly)
    }

    fn link(&self, ino: u64, newparent: u64, newname: &[u8], ctx: &Ctx) -> Result<Attr> {
        err(ErrorKind::ReadOnly)
    }

    fn unlink(&self, parent: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    fn rmdir(&self, parent: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    /// `flags` are RENAME_NOREPLACE / RENAME_EXCHANGE.
    fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32, ctx: &Ctx) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    fn removexattr(&self, ino: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    fn fallocate(&self, fh: &dyn OpenFile, offset: u64, len: u64, mode: i32) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    /// SEEK_DATA / SEEK_HOLE. The default treats the whole file as data.
    fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        let size = self.getattr(ino)?.size;
        if offset >= size {
            return err(ErrorKind::NoSuchOffset);
        }
        match whence {
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            _ => err(ErrorKind::Invalid),
        }
    }
}
