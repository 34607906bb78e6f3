//! A medium file: the bottom of most stacks, read with `pread`.

use std::io;

use std::sync::Arc;

use super::{MediumOwner, ReadAt, SharedMedium};

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

/// A medium with the owner and mode its file had when it was opened, which
/// `media/<id>` shows (read-only: write bits cleared). The kernel checks
/// them (default_permissions), so the whole medium is readable through the
/// mount by exactly those who could read the file itself.
pub struct Owned {
    file: MediumFile,
    owner: MediumOwner,
}

impl Owned {
    pub fn shared(file: MediumFile, meta: &std::fs::Metadata) -> SharedMedium {
        use std::os::unix::fs::MetadataExt;
        Arc::new(Owned {
            file,
            owner: MediumOwner {
                uid: meta.uid(),
                gid: meta.gid(),
                perm: (meta.mode() & 0o444) as u16,
            },
        })
    }
}

impl ReadAt for Owned {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn owner(&self) -> Option<MediumOwner> {
        Some(self.owner)
    }
}
