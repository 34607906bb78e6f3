//! The byte sources under a volume: what a volume's bytes are read from,
//! before any format (tar, zip, a file system) is decoded from them.
//!
//! Everything here speaks [`ReadAt`], positional reads with a fixed size,
//! and a reader can sit on top of another, so a parser reads through
//! whichever stack it is given without knowing what is under it:
//!
//! * [`file`]: a medium file opened for `pread` (an attached archive, a
//!   shipped drive image);
//! * [`slice`]: a bounded range of another medium (a partition of a drive);
//! * [`chunked`]: a byte stream stored as content-addressed chunks and read
//!   through [`ChunkAccess`](crate::store::access::ChunkAccess) (an
//!   imported archive, a tape), so recall from a durable tier reaches it too;
//! * a decompressing reader (a `.tar.gz`) will stack here as well. The
//!   deflate checkpoint reader in `volume/archive/deflate_index.rs` already
//!   reads any [`ReadAt`] and is the piece it will be built from; it stays
//!   with the zip code until a compressed medium needs it here.
//!
//! Beside the sources: [`window`], the one read-ahead window through which
//! the tar and zip parsers read headers, and [`identity`], which decides
//! whether a stored index still describes a medium.
//!
//! A medium is shared by a volume, its open files and the `media/` tree as a
//! [`SharedMedium`].

pub mod chunked;
pub mod file;
pub mod identity;
pub mod slice;
pub mod window;

use std::io;
use std::sync::Arc;

pub use self::chunked::ChunkedMedium;
pub use self::file::MediumFile;
pub use self::slice::Slice;
pub use self::window::Window;

/// The owner, group and permission bits of a medium file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumOwner {
    pub uid: u32,
    pub gid: u32,
    pub perm: u16,
}

/// Random-access reads from a medium. A [`MediumFile`] gets it through
/// `pread`, a [`Slice`] and a [`ChunkedMedium`] from what is under them, byte
/// slices for unit tests and fuzzing.
pub trait ReadAt: Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The medium's length in bytes.
    fn size(&self) -> u64;
    /// The medium file's owner and mode, which `media/<id>` shows; `None`
    /// where there is no file (tests, fuzzing).
    fn owner(&self) -> Option<MediumOwner> {
        None
    }

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = self.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl ReadAt for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

/// A medium shared by the volume, its open files and deflate indexes.
pub type SharedMedium = Arc<dyn ReadAt + Send>;

#[cfg(test)]
mod tests;

/// A medium that counts its reads, for the tests that pin how many reads
/// a parse costs.
#[cfg(test)]
pub(crate) struct Counted {
    pub data: Vec<u8>,
    pub reads: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Counted {
    pub fn new(data: Vec<u8>) -> Self {
        Counted {
            data,
            reads: Default::default(),
        }
    }

    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
impl ReadAt for Counted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.data.read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
}
