//! A medium file: the bottom of most stacks, read with `pread`.

use std::io;

use super::ReadAt;

/// A medium file opened for `pread`, with its size fixed at open time.
#[derive(Debug)]
pub struct MediumFile {
    pub file: std::fs::File,
    pub size: u64,
}

impl ReadAt for MediumFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if offset >= self.size {
            return Ok(0);
        }
        let max = (self.size - offset).min(buf.len() as u64) as usize;
        self.file.read_at(&mut buf[..max], offset)
    }
    fn size(&self) -> u64 {
        self.size
    }
}
