//! `/media`: the byte sources under each volume, read-only. Entry `i` of a
//! volume's [`MediaEntry`] list is `media/<id>` (the whole medium, empty
//! suffix) or `media/<id>-<suffix>` (a part, such as a partition), with
//! the medium file's owner and read bits.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::{MEDIA_INO, Opened, Provider, block, utf8};
use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::ops::{self, OpenFile};
use crate::fs::types::{Attr, FileKind, OpenFlags};
use crate::fs::{Core, MediaEntry, Mounted, SharedMedium};

/// `media` entry `i` of the volume in slot `s` is `MEDIA_BASE | i << 24 | s`;
/// entry 0 keeps the inode the whole medium always had.
const MEDIA_BASE: u64 = 2 << 32;
const INDEX_SHIFT: u32 = 24;
const SLOT_MASK: u64 = (1 << INDEX_SHIFT) - 1;

/// Entries shown per volume (a GPT holds at most 128 partitions); further
/// ones are not listed.
pub const MAX_MEDIA_PER_VOLUME: usize = 1 << (32 - INDEX_SHIFT);

fn ino_of(slot: u32, index: usize) -> u64 {
    MEDIA_BASE | ((index as u64) << INDEX_SHIFT) | (u64::from(slot) & SLOT_MASK)
}

fn split(ino: u64) -> (u32, usize) {
    (
        (ino & SLOT_MASK) as u32,
        ((ino >> INDEX_SHIFT) & 0xFF) as usize,
    )
}

/// The entry's name under `/media`, or None if its suffix cannot be one.
fn entry_name(id: &str, e: &MediaEntry) -> Option<String> {
    if e.suffix.is_empty() {
        return Some(id.to_owned());
    }
    let ok = !e.suffix.contains(['/', '\0']) && id.len() + 1 + e.suffix.len() <= 255;
    ok.then(|| format!("{id}-{}", e.suffix))
}

pub struct Media;

impl Media {
    /// The volume and medium behind a media inode.
    fn entry(core: &Core, ino: u64) -> Result<(Arc<Mounted>, usize)> {
        let (slot, i) = split(ino);
        let m = core.volume(slot)?;
        if i >= m.media.len().min(MAX_MEDIA_PER_VOLUME) {
            return err(ErrorKind::NotFound);
        }
        Ok((m, i))
    }

    fn attr(core: &Core, ino: u64, medium: &SharedMedium) -> Attr {
        // The medium file's owner and read bits: the kernel then lets read it
        // through the mount exactly the users who may read the file itself.
        let base = core.stamp().dir_attr(ino, 1);
        let (uid, gid, perm) = medium.owner().map_or((base.uid, base.gid, 0o444), |o| {
            (o.uid, o.gid, o.perm & 0o444)
        });
        Attr {
            kind: FileKind::File,
            size: medium.size(),
            blocks: medium.size().div_ceil(512),
            perm,
            nlink: 1,
            uid,
            gid,
            blksize: Attr::BLKSIZE,
            ..base
        }
    }
}

impl Provider for Media {
    fn name(&self) -> &'static [u8] {
        b"media"
    }

    fn dir(&self) -> u64 {
        MEDIA_INO
    }

    fn reserved(&self) -> Range<u64> {
        block(2)
    }

    fn getattr(&self, core: &Core, ino: u64) -> Result<(Attr, Duration)> {
        if ino == MEDIA_INO {
            return Ok((core.stamp().dir_attr(MEDIA_INO, 2), super::SYNTHETIC_TTL));
        }
        let (m, i) = Self::entry(core, ino)?;
        Ok((Self::attr(core, ino, &m.media[i].medium), m.ttl))
    }

    /// `<id>` is the entry with no suffix; `<id>-<suffix>` is found by
    /// trying each `-` as the end of the ID (IDs contain dashes too).
    fn lookup(&self, core: &Core, parent: u64, name: &[u8]) -> Result<(Attr, Duration)> {
        if parent != MEDIA_INO {
            return err(ErrorKind::NotDir);
        }
        let name = utf8(name)?;
        let found = std::iter::once((name, ""))
            .chain(
                name.match_indices('-')
                    .map(|(k, _)| (&name[..k], &name[k + 1..]))
                    .filter(|(_, suffix)| !suffix.is_empty()),
            )
            .find_map(|(id, suffix)| {
                let m = core.volume(core.slot_by_id(id)?).ok()?;
                let i = m
                    .media
                    .iter()
                    .take(MAX_MEDIA_PER_VOLUME)
                    .position(|e| e.suffix == suffix && entry_name(id, e).is_some())?;
                Some(ino_of(m.slot, i))
            });
        match found {
            Some(ino) => self.getattr(core, ino),
            None => err(ErrorKind::NotFound),
        }
    }

    /// Every entry of every volume, sorted by name.
    fn entries(&self, core: &Core, _dir: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        for m in core.mounted() {
            let id = m.info.read().id.clone();
            for (i, e) in m.media.iter().take(MAX_MEDIA_PER_VOLUME).enumerate() {
                if let Some(n) = entry_name(&id, e) {
                    out.push((n.into_bytes(), ino_of(m.slot, i)));
                }
            }
        }
        out.sort();
        // Two entries of one volume with the same suffix: the first wins,
        // as in lookup.
        out.dedup_by(|b, a| a.0 == b.0);
        Ok(out)
    }

    fn open(&self, core: &Core, ino: u64, flags: OpenFlags) -> Result<Opened> {
        if ino == MEDIA_INO {
            return err(ErrorKind::IsDir);
        }
        if flags.writable() || flags.truncate() {
            return err(ErrorKind::ReadOnly);
        }
        let (m, i) = Self::entry(core, ino)?;
        let medium = m.media[i].medium.clone();
        Ok((Arc::new(MediumOpen { medium, ino }), Some(m)))
    }

    fn lseek(&self, core: &Core, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        if ino == MEDIA_INO {
            return err(ErrorKind::Invalid);
        }
        let (a, _) = self.getattr(core, ino)?;
        if offset >= a.size {
            return err(ErrorKind::NoSuchOffset);
        }
        Ok(if whence == libc::SEEK_HOLE {
            a.size
        } else {
            offset
        })
    }

    fn names_of(&self, m: &Mounted) -> Vec<Vec<u8>> {
        let id = m.info.read().id.clone();
        m.media
            .iter()
            .take(MAX_MEDIA_PER_VOLUME)
            .filter_map(|e| entry_name(&id, e))
            .map(String::into_bytes)
            .collect()
    }

    fn volume_of(&self, ino: u64) -> Option<u32> {
        (ino != MEDIA_INO).then(|| split(ino).0)
    }
}

/// An open `/media/…` file.
struct MediumOpen {
    medium: SharedMedium,
    ino: u64,
}

impl OpenFile for MediumOpen {
    fn read(&self, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        let total = self.medium.size();
        if offset >= total {
            out.clear();
            return Ok(());
        }
        let n = u64::from(size).min(total - offset) as usize;
        ops::len_for_overwrite(out, n);
        self.medium
            .read_exact_at(out, offset)
            .map_err(|e| Error::io(format!("reading medium at offset {offset}"), e))
    }

    fn ino(&self) -> u64 {
        self.ino
    }

    fn size(&self) -> Result<u64> {
        Ok(self.medium.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_zero_keeps_the_old_inode() {
        assert_eq!(ino_of(7, 0), (2 << 32) | 7);
        assert_eq!(split(ino_of(7, 0)), (7, 0));
        assert_eq!(split(ino_of(0xFF_FFFF, 255)), (0xFF_FFFF, 255));
        assert!(ino_of(0xFF_FFFF, 255) < 3 << 32);
    }
}
