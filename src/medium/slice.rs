//! A slice of a medium: a range of bytes of another medium, read as a
//! medium of its own. A partition of a drive is one; so is an archive
//! embedded at a known offset of a larger file.
//!
//! The range is checked against the medium once, when the slice is made, and
//! every read is clipped to it, so whatever a parser above asks for, nothing
//! outside the range is ever read: a hostile partition table cannot point a
//! reader at a neighbour's data.

use std::io;

use super::{MediumOwner, ReadAt, SharedMedium};
use crate::error::{Error, Result};

/// `len` bytes of `medium` from `offset` on.
pub struct Slice {
    medium: SharedMedium,
    offset: u64,
    len: u64,
}

impl Slice {
    /// The slice `[offset, offset + len)` of `medium`; fails, naming `label`
    /// and the range, unless the range lies inside the medium.
    pub fn new(medium: SharedMedium, offset: u64, len: u64, label: &str) -> Result<Self> {
        let size = medium.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::corrupt(
                label,
                offset,
                format!("a slice of {len} bytes runs past the end of the medium ({size} bytes)"),
            ));
        }
        Ok(Slice {
            medium,
            offset,
            len,
        })
    }

    /// Where the slice starts in the medium under it.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl ReadAt for Slice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        // offset < len and offset + len fits (checked in `new`).
        let n = (self.len - offset).min(buf.len() as u64) as usize;
        self.medium.read_at(&mut buf[..n], self.offset + offset)
    }

    fn size(&self) -> u64 {
        self.len
    }

    /// A partition is shown with the owner and mode of the medium it is on.
    fn owner(&self) -> Option<MediumOwner> {
        self.medium.owner()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::ErrorKind;

    fn medium() -> SharedMedium {
        Arc::new((0..=255u8).cycle().take(1000).collect::<Vec<u8>>())
    }

    #[test]
    fn reads_stay_inside_the_slice() {
        let s = Slice::new(medium(), 100, 50, "m").unwrap();
        assert_eq!(s.size(), 50);
        assert_eq!(s.offset(), 100);
        let mut buf = [0u8; 80];
        // A read asking past the end gets only the slice's bytes.
        assert_eq!(s.read_at(&mut buf, 0).unwrap(), 50);
        assert_eq!(
            &buf[..50],
            &(100..150).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(s.read_at(&mut buf, 40).unwrap(), 10);
        assert_eq!(buf[0], 140);
        // At and after the end: nothing, even though the medium goes on.
        assert_eq!(s.read_at(&mut buf, 50).unwrap(), 0);
        assert_eq!(s.read_at(&mut buf, 51).unwrap(), 0);
        assert_eq!(s.read_at(&mut buf, u64::MAX).unwrap(), 0);
        assert_eq!(s.read_at(&mut [], 10).unwrap(), 0);
        let mut five = [0u8; 5];
        s.read_exact_at(&mut five, 45).unwrap();
        assert_eq!(five, [145, 146, 147, 148, 149]);
        assert_eq!(
            s.read_exact_at(&mut five, 46).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn empty_slices_and_slices_of_slices() {
        for at in [0, 500, 1000] {
            let s = Slice::new(medium(), at, 0, "m").unwrap();
            assert_eq!(s.size(), 0);
            assert_eq!(s.read_at(&mut [0u8; 10], 0).unwrap(), 0);
        }
        let outer: SharedMedium = Arc::new(Slice::new(medium(), 200, 600, "m").unwrap());
        let inner = Slice::new(outer, 100, 10, "m").unwrap();
        let mut buf = [0u8; 20];
        assert_eq!(inner.read_at(&mut buf, 0).unwrap(), 10);
        assert_eq!(buf[0], (300 % 256) as u8);
    }

    #[test]
    fn ranges_outside_the_medium_are_refused_without_panicking() {
        for (offset, len) in [
            (1000, 1),
            (1001, 0),
            (0, 1001),
            (999, 2),
            (u64::MAX, 1),
            (1, u64::MAX),
            (u64::MAX, u64::MAX),
        ] {
            let e = Slice::new(medium(), offset, len, "disk.img").err().unwrap();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            let msg = e.to_string();
            assert!(
                msg.contains("disk.img") && msg.contains("past the end of the medium (1000 bytes)"),
                "{msg}"
            );
        }
    }
}
