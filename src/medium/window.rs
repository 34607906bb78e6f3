//! The read-ahead window through which the archive parsers read a medium.
//!
//! Parsers read a header at a time: 512 bytes for tar, a few dozen for a
//! zip record, and the zip crate reads its central directory in pieces of
//! that size. Done with one `pread` each, an archive of many small members
//! costs one system call (or one chunk lookup, one device request) per
//! header. The window reads ahead instead and serves the next headers from
//! memory, so the cost is one read per window.
//!
//! One type serves both parsers, in two shapes:
//!
//! * **Adaptive** ([`Window::adaptive`], tar): the read size doubles while
//!   most of each window is used (many small members) and halves while most
//!   is skipped (large members whose data the walk steps over), between
//!   given bounds. A window is filled completely or not at all: a medium
//!   that ends before its size says fails the read that finds it.
//! * **Fixed** ([`Window::new`], zip): one read size; a request at least
//!   that large bypasses the window. It also is a `Read + Seek` stream for
//!   the zip crate, and a fill stops quietly where the medium ends.
//!
//! The window knows nothing of formats; errors are plain `io::Error`s and
//! the parser says in its own words which medium and offset failed.

use std::io::{self, Read, Seek, SeekFrom};

use super::ReadAt;

/// A read-ahead window over a medium (see the module documentation).
pub struct Window<'a> {
    medium: &'a dyn ReadAt,
    /// The medium's size, taken once: every bound is checked against it.
    size: u64,
    buf: Vec<u8>,
    /// Medium offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf` (which may be longer, to be reused).
    len: usize,
    /// The end of the furthest byte served from the current window.
    used_end: u64,
    /// The size of the next fill, and its bounds.
    want: usize,
    min: usize,
    max: usize,
    /// Whether a fill must get all the bytes the size promises (adaptive)
    /// or may stop early where the medium ends (fixed).
    exact: bool,
    /// Stream position for `Read` and `Seek`.
    pos: u64,
}

impl<'a> Window<'a> {
    /// A window that reads `capacity` bytes at a time, and reads requests at
    /// least that large straight from the medium.
    pub fn new(medium: &'a dyn ReadAt, capacity: usize) -> Self {
        Self::build(medium, capacity, capacity, capacity, false)
    }

    /// A window whose read size starts at `start` and adapts between `min`
    /// and `max` to how much of each window is used.
    pub fn adaptive(medium: &'a dyn ReadAt, min: usize, start: usize, max: usize) -> Self {
        Self::build(medium, min, start, max, true)
    }

    fn build(medium: &'a dyn ReadAt, min: usize, want: usize, max: usize, exact: bool) -> Self {
        Window {
            medium,
            size: medium.size(),
            buf: Vec::new(),
            start: 0,
            len: 0,
            used_end: 0,
            want,
            min,
            max,
            exact,
            pos: 0,
        }
    }

    /// The medium's size when the window was made.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The largest read size of this window.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The medium under the window, for reads too large to go through it.
    pub fn medium(&self) -> &'a dyn ReadAt {
        self.medium
    }

    /// Up to `len` bytes at `off`, served from the window, which is refilled
    /// at `off` (with at least `len` bytes) unless it holds them all. Fewer
    /// than `len` bytes come back only where the medium ends.
    pub fn get(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let end = off.saturating_add(len as u64);
        if off < self.start || end > self.start + self.len as u64 {
            self.fill(off, len)?;
        }
        self.used_end = self.used_end.max(end);
        let at = (off - self.start) as usize;
        Ok(&self.buf[at.min(self.len)..(at.saturating_add(len)).min(self.len)])
    }

    /// Reads up to `out.len()` bytes at `offset`; 0 only at the end. Served
    /// from the window while it holds `offset` (possibly fewer bytes than
    /// asked, up to the window's end); otherwise a request of at least
    /// [`Self::max`] bytes is read straight from the medium and a smaller
    /// one refills the window.
    pub fn read_at(&mut self, out: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.holds(offset) {
            if out.len() >= self.max {
                return self.medium.read_at(out, offset);
            }
            self.fill(offset, out.len())?;
        }
        // `holds` (checked or just made true by `fill`) bounds the index.
        let Some(skip) = offset
            .checked_sub(self.start)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s < self.len)
        else {
            return Ok(0);
        };
        let n = out.len().min(self.len - skip);
        out[..n].copy_from_slice(&self.buf[skip..skip + n]);
        self.used_end = self.used_end.max(offset + n as u64);
        Ok(n)
    }

    /// Fills `out` from `offset`, or fails with `UnexpectedEof`.
    pub fn read_exact_at(&mut self, mut out: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !out.is_empty() {
            match self.read_at(out, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    out = &mut out[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn holds(&self, offset: u64) -> bool {
        offset >= self.start && offset - self.start < self.len as u64
    }

    /// Loads the window with the bytes from `off` on: the current read size
    /// (adapted first) or `min_len` if larger, fewer at the medium's end.
    fn fill(&mut self, off: u64, min_len: usize) -> io::Result<()> {
        if self.len > 0 {
            let used = self.used_end.saturating_sub(self.start);
            self.want = if used.saturating_mul(2) < self.len as u64 {
                (self.want / 2).max(self.min)
            } else {
                (self.want * 2).min(self.max)
            };
        }
        let avail = self.size.saturating_sub(off);
        let n = (self.want.max(min_len) as u64).min(avail) as usize;
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        // Invalidate first so a stale window is never served after an error.
        self.start = off;
        self.used_end = off;
        self.len = 0;
        let mut got = 0;
        while got < n {
            match self.medium.read_at(&mut self.buf[got..n], off + got as u64) {
                Ok(0) if self.exact => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = got;
        Ok(())
    }
}

impl Read for Window<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(out, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.medium.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        self.pos = pos;
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medium::Counted;

    fn counted(len: usize) -> Counted {
        Counted::new((0..len).map(|i| (i * 7 % 251) as u8).collect())
    }

    #[test]
    fn headers_in_one_window_cost_one_read() {
        let m = counted(1 << 20);
        let mut w = Window::adaptive(&m, 8 << 10, 64 << 10, 256 << 10);
        for i in 0..128u64 {
            let b = w.get(i * 512, 512).unwrap();
            assert_eq!(b, &m.data[(i * 512) as usize..(i * 512 + 512) as usize]);
        }
        assert_eq!(m.reads(), 1);
        // The next window is larger: all of the first was used.
        w.get(64 << 10, 512).unwrap();
        assert_eq!(w.len, 128 << 10);
    }

    #[test]
    fn skipping_shrinks_the_window_and_the_end_is_short() {
        let m = counted(4 << 20);
        let mut w = Window::adaptive(&m, 8 << 10, 64 << 10, 256 << 10);
        for i in 0..4u64 {
            w.get(i << 20, 512).unwrap();
        }
        assert_eq!(
            w.len,
            8 << 10,
            "mostly skipped windows halve to the minimum"
        );
        let size = m.data.len() as u64;
        assert_eq!(w.get(size - 100, 512).unwrap().len(), 100);
        assert!(w.get(size, 512).unwrap().is_empty());
    }

    #[test]
    fn an_adaptive_window_fails_on_a_medium_shorter_than_it_says() {
        struct Short(Vec<u8>);
        impl ReadAt for Short {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                self.0.read_at(buf, offset)
            }
            fn size(&self) -> u64 {
                self.0.len() as u64 + 1000
            }
        }
        let m = Short(vec![1; 4096]);
        let e = Window::adaptive(&m, 512, 8192, 8192)
            .get(0, 512)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A fixed window stops where the data stops.
        let mut w = Window::new(&m, 8192);
        let mut all = Vec::new();
        w.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 4096);
    }

    #[test]
    fn a_fixed_window_reads_large_requests_directly() {
        let m = counted(100_000);
        let mut w = Window::new(&m, 4096);
        let mut small = [0u8; 100];
        w.read_exact_at(&mut small, 10).unwrap();
        w.read_exact_at(&mut small, 3000).unwrap();
        assert_eq!(m.reads(), 1);
        let mut big = vec![0u8; 4096];
        w.read_exact_at(&mut big, 50_000).unwrap();
        assert_eq!(big, m.data[50_000..54_096]);
        assert_eq!(m.reads(), 2);
        assert_eq!(w.start, 10, "the window still holds the first bytes");
    }
}
