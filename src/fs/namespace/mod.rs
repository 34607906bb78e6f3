//! The top-level trees of the mount, each a [`Provider`] at its own
//! reserved inodes.
//!
//! The core ([`super::Core`]) owns the global inode space: slot 0 is this
//! synthetic namespace, every other slot a volume (see `fs/mod.rs`). Within
//! slot 0, each provider owns its directory inode and one reserved range,
//! and answers lookup, readdir, getattr, open, readlink and rename for what
//! lies there. The core dispatches on the range alone, so a new top-level
//! tree (a tape `library/` whose rename means MOVE MEDIUM) is one new file
//! here and one row in [`Namespace::standard`]:
//!
//! ```text
//! 1                      /                 root.rs
//! 2                      /volumes          volumes.rs
//! 1<<32 | slot           /volumes/<name>   symlink to the ID directory
//! 3                      /media            media.rs
//! 2<<32 | i<<24 | slot   /media/<id>[-<suffix>]  medium entry i, read-only
//! ```
//!
//! A volume's own root (`/volumes/<id>`) is not a provider inode: it is
//! local inode 1 of the volume's slot and belongs to its `VolumeFs`.

mod media;
mod root;
mod volumes;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::ops::OpenFile;
use super::types::{Attr, Ctx, FileKind, OpenFlags, Timespec};
use super::{Core, Mounted};
use crate::error::{ErrorKind, Result, err};

pub use self::media::MAX_MEDIA_PER_VOLUME;

pub const ROOT_INO: u64 = 1;
pub const VOLUMES_INO: u64 = 2;
pub const MEDIA_INO: u64 = 3;

/// Attribute and entry lifetimes for the synthetic tree, which changes when
/// volumes come and go (the adapter also invalidates entries on detach).
pub const SYNTHETIC_TTL: Duration = Duration::from_secs(1);

/// Each provider's reserved range is one of these blocks of slot 0.
const BLOCK: u64 = 1 << 32;

/// The reserved range `[n << 32, (n + 1) << 32)`.
const fn block(n: u64) -> Range<u64> {
    n * BLOCK..(n + 1) * BLOCK
}

/// An open file of a tree, and the volume whose open count it holds up.
pub type Opened = (Arc<dyn OpenFile>, Option<Arc<Mounted>>);

/// One top-level tree. Every method gets the core, to read the registry of
/// mounted volumes and to give the attributes of inodes it names but does
/// not own (`/volumes/<id>` is a volume's root).
#[allow(unused_variables)]
pub trait Provider: Send + Sync {
    /// Its name in the root directory; empty for the root itself.
    fn name(&self) -> &'static [u8];

    /// The inode of its directory.
    fn dir(&self) -> u64;

    /// The inodes it reserves for what its directory holds.
    fn reserved(&self) -> Range<u64>;

    fn owns(&self, ino: u64) -> bool {
        ino == self.dir() || self.reserved().contains(&ino)
    }

    /// The attributes of `ino` and how long the kernel may keep them.
    fn getattr(&self, core: &Core, ino: u64) -> Result<(Attr, Duration)>;

    fn lookup(&self, core: &Core, parent: u64, name: &[u8]) -> Result<(Attr, Duration)>;

    /// The directory holding directory `ino`, for `..`; ENOTDIR for the
    /// files and links of the tree.
    fn parent(&self, ino: u64) -> Result<u64> {
        if ino == self.dir() {
            Ok(ROOT_INO)
        } else {
            err(ErrorKind::NotDir)
        }
    }

    /// The entries of directory `ino` (without `.` and `..`), in an order
    /// that stays the same between calls so that readdir offsets (the
    /// position plus 3) resume where they left off.
    fn entries(&self, core: &Core, dir: u64) -> Result<Vec<(Vec<u8>, u64)>>;

    fn readlink(&self, core: &Core, ino: u64) -> Result<Vec<u8>> {
        err(ErrorKind::Invalid)
    }

    /// Opens a file of the tree; returns it and the volume whose open count
    /// it holds up.
    fn open(&self, core: &Core, ino: u64, flags: OpenFlags) -> Result<Opened> {
        if ino == self.dir() {
            err(ErrorKind::IsDir)
        } else {
            err(ErrorKind::Invalid)
        }
    }

    /// SEEK_DATA / SEEK_HOLE on a file of the tree.
    fn lseek(&self, core: &Core, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        err(ErrorKind::Invalid)
    }

    /// Renames within this tree. Read-only today; a tape library will make
    /// it move a medium between slots.
    #[allow(clippy::too_many_arguments)]
    fn rename(
        &self,
        core: &Core,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        err(ErrorKind::ReadOnly)
    }

    /// The names in this tree's directory that show volume `m`, which the
    /// kernel must forget when it is detached or renamed.
    fn names_of(&self, m: &Mounted) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// The slot of the volume whose data `ino` shows (a medium file), which
    /// then gives its attribute lifetime and counts its open handles.
    fn volume_of(&self, ino: u64) -> Option<u32> {
        None
    }
}

/// The providers of one mount: the root first, then the top-level trees in
/// the order the root lists them.
pub struct Namespace {
    providers: Vec<Box<dyn Provider>>,
}

impl Namespace {
    /// `/`, `/volumes` and `/media`.
    pub fn standard() -> Self {
        Self::new(vec![
            Box::new(root::Root),
            Box::new(volumes::Volumes),
            Box::new(media::Media),
        ])
    }

    /// Panics if two providers claim the same inodes: a programming error
    /// caught by the unit tests, never by input.
    fn new(providers: Vec<Box<dyn Provider>>) -> Self {
        for (i, a) in providers.iter().enumerate() {
            for b in &providers[i + 1..] {
                let (ra, rb) = (a.reserved(), b.reserved());
                assert!(
                    !b.owns(a.dir())
                        && !a.owns(b.dir())
                        && (ra.is_empty()
                            || rb.is_empty()
                            || ra.end <= rb.start
                            || rb.end <= ra.start),
                    "namespace providers {:?} and {:?} overlap",
                    String::from_utf8_lossy(a.name()),
                    String::from_utf8_lossy(b.name())
                );
            }
        }
        Namespace { providers }
    }

    /// The provider owning synthetic inode `ino`.
    pub fn provider_of(&self, ino: u64) -> Option<&dyn Provider> {
        self.providers
            .iter()
            .find(|p| p.owns(ino))
            .map(|p| p.as_ref())
    }

    /// The trees under the root, in listing order.
    pub fn top(&self) -> impl Iterator<Item = &dyn Provider> {
        self.providers
            .iter()
            .filter(|p| p.dir() != ROOT_INO)
            .map(|p| p.as_ref())
    }
}

/// Who owns the synthetic tree and since when: the daemon's user, from the
/// mount's start.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub uid: u32,
    pub gid: u32,
    pub started: Timespec,
}

impl Stamp {
    pub fn now() -> Self {
        Stamp {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            started: Timespec::now(),
        }
    }

    pub fn dir_attr(&self, ino: u64, nlink: u32) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            size: 0,
            blocks: 0,
            perm: 0o755,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            blksize: 4096,
        }
    }
}

/// A directory entry's name as the registry keys it: not UTF-8 is not there.
fn utf8(name: &[u8]) -> Result<&str> {
    std::str::from_utf8(name).map_err(|_| crate::error::Error::kind_only(ErrorKind::NotFound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_ranges_are_disjoint_and_keep_todays_inodes() {
        let ns = Namespace::standard();
        let names: Vec<_> = ns.top().map(|p| p.name()).collect();
        assert_eq!(names, [&b"volumes"[..], b"media"]);
        assert_eq!(ns.provider_of(ROOT_INO).unwrap().name(), b"");
        assert_eq!(ns.provider_of(VOLUMES_INO).unwrap().name(), b"volumes");
        assert_eq!(ns.provider_of(MEDIA_INO).unwrap().name(), b"media");
        assert_eq!(ns.provider_of((1 << 32) | 7).unwrap().name(), b"volumes");
        assert_eq!(ns.provider_of((2 << 32) | 7).unwrap().name(), b"media");
        assert!(ns.provider_of(4).is_none());
        assert!(ns.provider_of(3 << 32).is_none());
    }

    struct Clash;
    impl Provider for Clash {
        fn name(&self) -> &'static [u8] {
            b"clash"
        }
        fn dir(&self) -> u64 {
            9
        }
        fn reserved(&self) -> Range<u64> {
            block(2)
        }
        fn getattr(&self, _: &Core, _: u64) -> Result<(Attr, Duration)> {
            err(ErrorKind::NotFound)
        }
        fn lookup(&self, _: &Core, _: u64, _: &[u8]) -> Result<(Attr, Duration)> {
            err(ErrorKind::NotFound)
        }
        fn entries(&self, _: &Core, _: u64) -> Result<Vec<(Vec<u8>, u64)>> {
            Ok(Vec::new())
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_providers_are_refused() {
        Namespace::new(vec![Box::new(media::Media), Box::new(Clash)]);
    }
}
