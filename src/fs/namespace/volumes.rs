//! `/volumes`: a directory per mounted volume, named by its ID (the
//! volume's own root), and a relative symlink to it for each name.

use std::ops::Range;
use std::time::Duration;

use super::{Provider, SYNTHETIC_TTL, VOLUMES_INO, block, utf8};
use crate::error::{ErrorKind, Result, err};
use crate::fs::ops::VOLUME_ROOT;
use crate::fs::types::{Attr, FileKind};
use crate::fs::{Core, Mounted, global_ino};

/// `/volumes/<name>` of the volume in slot `s` is inode `LINK_BASE | s`.
const LINK_BASE: u64 = 1 << 32;

pub struct Volumes;

impl Volumes {
    fn link_attr(core: &Core, slot: u32, target_len: usize) -> Attr {
        Attr {
            kind: FileKind::Symlink,
            size: target_len as u64,
            perm: 0o777,
            nlink: 1,
            ..core.stamp().dir_attr(LINK_BASE | u64::from(slot), 1)
        }
    }
}

impl Provider for Volumes {
    fn name(&self) -> &'static [u8] {
        b"volumes"
    }

    fn dir(&self) -> u64 {
        VOLUMES_INO
    }

    fn reserved(&self) -> Range<u64> {
        block(1)
    }

    fn getattr(&self, core: &Core, ino: u64) -> Result<(Attr, Duration)> {
        if ino == VOLUMES_INO {
            let n = core.volume_count() as u32;
            return Ok((core.stamp().dir_attr(VOLUMES_INO, 2 + n), SYNTHETIC_TTL));
        }
        let slot = ino as u32;
        let m = core.volume(slot)?;
        let info = m.info.read();
        if info.name.is_none() {
            return err(ErrorKind::NotFound);
        }
        Ok((Self::link_attr(core, slot, info.id.len()), SYNTHETIC_TTL))
    }

    fn lookup(&self, core: &Core, parent: u64, name: &[u8]) -> Result<(Attr, Duration)> {
        if parent != VOLUMES_INO {
            return err(ErrorKind::NotDir);
        }
        let name = utf8(name)?;
        if let Some(slot) = core.slot_by_id(name) {
            return core.getattr(global_ino(slot, VOLUME_ROOT));
        }
        if let Some(slot) = core.slot_by_name(name) {
            return core.getattr(LINK_BASE | u64::from(slot));
        }
        err(ErrorKind::NotFound)
    }

    /// IDs and names, sorted.
    fn entries(&self, core: &Core, _dir: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        for m in core.mounted() {
            let info = m.info.read();
            out.push((
                info.id.clone().into_bytes(),
                global_ino(m.slot, VOLUME_ROOT),
            ));
            if let Some(n) = &info.name {
                out.push((n.clone().into_bytes(), LINK_BASE | u64::from(m.slot)));
            }
        }
        out.sort();
        Ok(out)
    }

    fn names_of(&self, m: &Mounted) -> Vec<Vec<u8>> {
        let info = m.info.read();
        std::iter::once(&info.id)
            .chain(&info.name)
            .map(|n| n.clone().into_bytes())
            .collect()
    }

    fn readlink(&self, core: &Core, ino: u64) -> Result<Vec<u8>> {
        if ino == VOLUMES_INO {
            return err(ErrorKind::Invalid);
        }
        Ok(core.volume(ino as u32)?.info.read().id.clone().into_bytes())
    }
}
