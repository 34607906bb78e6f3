//! The filesystem core: everything the mount does, without the mount.
//!
//! [`Core`] owns the global inode space, the synthetic tree and the open-file
//! table, and dispatches to the [`ops::VolumeFs`] of each volume. The FUSE
//! adapter (`crate::fuse`) only translates between fuser's types and these
//! calls, so every behaviour here is reachable from unit tests.
//!
//! Global inode numbers: the top 24 bits are the volume's catalog slot, the
//! low 40 bits its local inode (local 1 is the volume root). Slot 0 is the
//! synthetic tree, split between the providers of [`namespace`] (`/`,
//! `/volumes`, `/media`) at their reserved ranges:
//!
//! ```text
//! slot 0            /, /volumes/…, /media/…   namespace::Provider
//! slot<<40 | local  /volumes/<id>/…           the volume's VolumeFs
//! ```
//!
//! Slots are never reused (SQLite AUTOINCREMENT), so an inode number stays
//! tied to one volume across restarts.

pub mod composite;
pub mod copy;
mod handle;
pub mod namespace;
pub mod ops;
pub mod perm;
pub mod resolve;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use self::handle::MAX_WRITERS;
pub use self::handle::{Handle, Writers};
pub use self::namespace::{MEDIA_INO, ROOT_INO, SYNTHETIC_TTL, VOLUMES_INO};
use self::namespace::{Namespace, Provider, Stamp};
use self::ops::{DirEntry, VOLUME_ROOT, VolumeFs};
use self::types::{Attr, Ctx, FileKind, OpenFlags, OpenOpts, SetAttr, StatFs};
use crate::error::{Error, ErrorKind, Result, err};
use crate::lifecycle::{Attachment, Kind};
use crate::medium::SharedMedium;

const SLOT_SHIFT: u32 = 40;
const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;

/// The xattrs every volume root carries.
pub const XATTR_ID: &[u8] = b"user.fsd.id";
pub const XATTR_KIND: &[u8] = b"user.fsd.kind";
pub const XATTR_STATE: &[u8] = b"user.fsd.state";

/// What the control socket and `tokenctl volumes` show about a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub name: Option<String>,
    pub kind: Kind,
    /// The attachment state; residency is not shown until shelving exists.
    pub state: Attachment,
    /// Archive format (tar, zip) or empty.
    #[serde(default)]
    pub format: Option<String>,
    /// The medium path for attached media.
    #[serde(default)]
    pub medium: Option<String>,
    /// Bytes: the medium size for archives, the data size for native volumes.
    pub size: u64,
    pub files: u64,
    #[serde(skip)]
    pub slot: u32,
}

/// One file under `/media`: the whole medium (empty `suffix`, shown as
/// `media/<id>`) or a part of it such as a partition (`media/<id>-<suffix>`).
/// A kind says which it exposes; the namespace only lists them.
pub struct MediaEntry {
    pub suffix: String,
    pub medium: SharedMedium,
}

impl MediaEntry {
    /// The whole medium, at `media/<id>`.
    pub fn whole(medium: SharedMedium) -> Self {
        Self {
            suffix: String::new(),
            medium,
        }
    }
}

/// A volume that is visible in the mount.
pub struct Mounted {
    pub slot: u32,
    pub info: RwLock<VolumeInfo>,
    pub fs: Arc<dyn VolumeFs>,
    /// The files this volume shows under `/media`, whole medium first.
    pub media: Vec<MediaEntry>,
    /// Attribute/entry lifetime for this volume's inodes.
    pub ttl: Duration,
    /// Open file handles; detach refuses while non-zero.
    pub open_files: AtomicU64,
}

#[derive(Default)]
struct Registry {
    by_slot: HashMap<u32, Arc<Mounted>>,
    by_id: HashMap<String, u32>,
    by_name: HashMap<String, u32>,
}

/// The filesystem core.
pub struct Core {
    registry: RwLock<Registry>,
    handles: DashMap<u64, Arc<Handle>>,
    next_fh: AtomicU64,
    /// The synthetic tree's owner and timestamps.
    stamp: Stamp,
    /// The top-level trees.
    namespace: Namespace,
}

/// Where a global inode number belongs.
enum Target<'a> {
    /// Local inode of the volume in a slot.
    Vol(u32, u64),
    /// A synthetic inode and the tree that answers for it.
    Tree(&'a dyn Provider),
}

/// The global inode of `local` in volume `slot`.
pub fn global_ino(slot: u32, local: u64) -> u64 {
    (u64::from(slot) << SLOT_SHIFT) | (local & LOCAL_MASK)
}

fn enoent<T>() -> Result<T> {
    err(ErrorKind::NotFound)
}

impl Core {
    pub fn new() -> Self {
        Core {
            registry: RwLock::new(Registry::default()),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            stamp: Stamp::now(),
            namespace: Namespace::standard(),
        }
    }

    fn target(&self, ino: u64) -> Option<Target<'_>> {
        let slot = (ino >> SLOT_SHIFT) as u32;
        let local = ino & LOCAL_MASK;
        if slot > 0 {
            return (local > 0).then_some(Target::Vol(slot, local));
        }
        self.namespace.provider_of(ino).map(Target::Tree)
    }

    /// The top-level trees.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The synthetic tree's owner and timestamps.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    // ----- registry -----

    /// Makes a volume visible. Its ID and name must be unused.
    pub fn register(&self, m: Arc<Mounted>) -> Result<()> {
        let mut r = self.registry.write();
        let info = m.info.read().clone();
        if r.by_id.contains_key(&info.id) || r.by_slot.contains_key(&m.slot) {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("volume {} is already mounted", info.id),
            ));
        }
        if let Some(n) = &info.name
            && r.by_name.contains_key(n)
        {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("volume name {n:?} is already in use"),
            ));
        }
        r.by_id.insert(info.id.clone(), m.slot);
        if let Some(n) = info.name {
            r.by_name.insert(n, m.slot);
        }
        r.by_slot.insert(m.slot, m);
        Ok(())
    }

    /// Removes a volume from the namespace. Open handles keep working until
    /// they are closed (like a lazy unmount).
    pub fn unregister(&self, slot: u32) -> Option<Arc<Mounted>> {
        let mut r = self.registry.write();
        let m = r.by_slot.remove(&slot)?;
        let info = m.info.read();
        r.by_id.remove(&info.id);
        if let Some(n) = &info.name {
            r.by_name.remove(n);
        }
        drop(info);
        Some(m)
    }

    /// Finds a mounted volume by ID or name.
    pub fn find(&self, id_or_name: &str) -> Option<Arc<Mounted>> {
        let r = self.registry.read();
        let slot = r
            .by_id
            .get(id_or_name)
            .or_else(|| r.by_name.get(id_or_name))?;
        r.by_slot.get(slot).cloned()
    }

    /// The volume an inode belongs to: a volume's own inodes and the
    /// `/media` files that show its media.
    pub fn volume_of(&self, ino: u64) -> Option<Arc<Mounted>> {
        self.by_slot(self.slot_of(ino)?)
    }

    fn slot_of(&self, ino: u64) -> Option<u32> {
        match self.target(ino)? {
            Target::Vol(slot, _) => Some(slot),
            Target::Tree(p) => p.volume_of(ino),
        }
    }

    /// Every (directory, name) of the synthetic tree that shows volume
    /// `m`: what the kernel must forget when it is detached or renamed.
    pub fn dentries_of(&self, m: &Mounted) -> Vec<(u64, Vec<u8>)> {
        self.namespace
            .top()
            .flat_map(|p| p.names_of(m).into_iter().map(move |n| (p.dir(), n)))
            .collect()
    }

    pub fn by_slot(&self, slot: u32) -> Option<Arc<Mounted>> {
        self.registry.read().by_slot.get(&slot).cloned()
    }

    /// The slot of the volume with this ID.
    pub fn slot_by_id(&self, id: &str) -> Option<u32> {
        self.registry.read().by_id.get(id).copied()
    }

    /// The slot of the volume with this name.
    pub fn slot_by_name(&self, name: &str) -> Option<u32> {
        self.registry.read().by_name.get(name).copied()
    }

    pub fn mounted(&self) -> Vec<Arc<Mounted>> {
        let mut v: Vec<_> = self.registry.read().by_slot.values().cloned().collect();
        v.sort_by_key(|m| m.slot);
        v
    }

    pub fn volume_count(&self) -> usize {
        self.registry.read().by_slot.len()
    }

    /// The volume in `slot`, or ENOENT.
    pub fn volume(&self, slot: u32) -> Result<Arc<Mounted>> {
        self.by_slot(slot)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))
    }

    // ----- lookups -----

    fn globalize(slot: u32, mut a: Attr) -> Attr {
        a.ino = global_ino(slot, a.ino);
        a
    }

    /// `getattr`: the attributes and how long the kernel may cache them.
    pub fn getattr(&self, ino: u64) -> Result<(Attr, Duration)> {
        match self.target(ino) {
            Some(Target::Tree(p)) => p.getattr(self, ino),
            Some(Target::Vol(slot, local)) => {
                let m = self.volume(slot)?;
                let a = m.fs.getattr(local)?;
                Ok((Self::globalize(slot, a), m.ttl))
            }
            None => enoent(),
        }
    }

    /// `lookup` of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(Attr, Duration)> {
        match self.target(parent) {
            Some(Target::Tree(p)) => p.lookup(self, parent, name),
            Some(Target::Vol(slot, local)) => {
                let m = self.volume(slot)?;
                let a = m.fs.lookup(local, name)?;
                Ok((Self::globalize(slot, a), m.ttl))
            }
            None => enoent(),
        }
    }

    /// Lists a directory from `offset`. Offsets 1 and 2 are `.` and `..`;
    /// the rest are the volume's own offsets shifted by 2 (for the
    /// synthetic tree, the entry's position plus 3).
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let target = self
            .target(ino)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        let dotdot = match target {
            Target::Tree(p) => p.parent(ino)?,
            Target::Vol(slot, local) => {
                let m = self.volume(slot)?;
                let p = m.fs.parent(local)?;
                if local == VOLUME_ROOT {
                    VOLUMES_INO
                } else {
                    global_ino(slot, p)
                }
            }
        };
        let mut off = offset;
        for (name, target, next) in [(&b"."[..], ino, 1u64), (&b".."[..], dotdot, 2)] {
            if off < next {
                let (attr, _) = self.getattr(target)?;
                if !sink(DirEntry { name, attr, next }) {
                    return Ok(());
                }
                off = next;
            }
        }
        let rel = off - 2;
        match target {
            Target::Tree(p) => {
                let entries = p.entries(self, ino)?;
                for (i, (name, child)) in entries.iter().enumerate().skip(rel as usize) {
                    let Ok((attr, _)) = self.getattr(*child) else {
                        continue;
                    };
                    if !sink(DirEntry {
                        name,
                        attr,
                        next: i as u64 + 3,
                    }) {
                        break;
                    }
                }
                Ok(())
            }
            Target::Vol(slot, local) => {
                let m = self.volume(slot)?;
                m.fs.readdir(local, rel, &mut |e| {
                    sink(DirEntry {
                        name: e.name,
                        attr: Self::globalize(slot, e.attr),
                        next: e.next + 2,
                    })
                })
            }
        }
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.target(ino) {
            Some(Target::Tree(p)) => p.readlink(self, ino),
            Some(Target::Vol(slot, local)) => self.volume(slot)?.fs.readlink(local),
            None => enoent(),
        }
    }

    // ----- open files -----

    fn insert_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = &h.vol {
            v.open_files.fetch_add(1, Ordering::AcqRel);
        }
        self.handles.insert(fh, Arc::new(h));
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::new(ErrorKind::Invalid, format!("unknown file handle {fh}")))
    }

    /// Opens a regular file; returns the handle number and cache options.
    pub fn open(&self, ino: u64, flags: OpenFlags, ctx: &Ctx) -> Result<(u64, OpenOpts)> {
        let (file, vol) = match self.target(ino) {
            Some(Target::Tree(p)) => p.open(self, ino, flags)?,
            Some(Target::Vol(slot, local)) => {
                let m = self.volume(slot)?;
                (m.fs.open(local, flags, ctx)?, Some(m))
            }
            None => return enoent(),
        };
        let opts = file.open_opts();
        let fh = self.insert_handle(Handle {
            ino,
            vol,
            file,
            writers: Writers::default(),
        });
        Ok((fh, opts))
    }

    /// `opendir`: checks it is a directory and lets the volume count it;
    /// true if the kernel may cache its listing (see
    /// [`VolumeFs::listings_fixed`]). The synthetic tree changes with every
    /// attach and detach, so it is never cached.
    pub fn opendir(&self, ino: u64) -> Result<bool> {
        let (a, _) = self.getattr(ino)?;
        if a.kind != FileKind::Dir {
            return err(ErrorKind::NotDir);
        }
        if let Some(Target::Vol(slot, local)) = self.target(ino) {
            let m = self.volume(slot)?;
            m.fs.opendir(local)?;
            return Ok(m.fs.listings_fixed());
        }
        Ok(false)
    }

    pub fn releasedir(&self, ino: u64) {
        if let Some(Target::Vol(slot, local)) = self.target(ino)
            && let Ok(m) = self.volume(slot)
        {
            m.fs.releasedir(local);
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        self.handle(fh)?.file.read(offset, size, out)
    }

    /// Writes through handle `fh` on behalf of `owner`, the kernel's lock
    /// owner of the writing process (None if the kernel did not say).
    /// Drops setuid/setgid before a write by `ctx` that the kernel
    /// flagged FUSE_WRITE_KILL_SUIDGID (see [`OpenFile::kill_privs`]).
    pub fn kill_privs(&self, fh: u64, ctx: &Ctx) -> Result<()> {
        self.handle(fh)?.file.kill_privs(ctx)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8], owner: Option<u64>) -> Result<u32> {
        let h = self.handle(fh)?;
        h.writers.wrote(owner);
        h.file.write(offset, data)
    }

    /// A close(2) by `owner` of a descriptor of handle `fh` (FUSE flush):
    /// commits unless `owner` never wrote through it (see [`Writers`]).
    pub fn flush(&self, fh: u64, owner: u64) -> Result<()> {
        let h = self.handle(fh)?;
        if !h.writers.commits_on_close_by(owner) {
            return Ok(());
        }
        h.file.flush()
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        self.handle(fh)?.file.fsync(datasync)
    }

    /// Drops a handle; the volume's open count goes down when the last
    /// reference (an in-flight read may hold one) is gone.
    pub fn release(&self, fh: u64) -> Result<()> {
        match self.handles.remove(&fh) {
            Some((_, h)) => h.file.release(),
            None => Ok(()),
        }
    }

    // ----- xattrs -----

    fn volume_xattr(&self, m: &Mounted, name: &[u8]) -> Option<Vec<u8>> {
        let info = m.info.read();
        match name {
            XATTR_ID => Some(info.id.clone().into_bytes()),
            XATTR_KIND => Some(info.kind.as_str().as_bytes().to_vec()),
            XATTR_STATE => Some(info.state.as_str().as_bytes().to_vec()),
            _ => None,
        }
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.target(ino) {
            Some(Target::Vol(slot, local)) => {
                let m = self.volume(slot)?;
                if local == VOLUME_ROOT
                    && let Some(v) = self.volume_xattr(&m, name)
                {
                    return Ok(v);
                }
                m.fs.getxattr(local, name)
            }
            Some(Target::Tree(_)) => err(ErrorKind::NoAttr),
            None => enoent(),
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match self.target(ino) {
            Some(Target::Vol(slot, local)) => {
                let m = self.volume(slot)?;
                let mut names = Vec::new();
                if local == VOLUME_ROOT {
                    names.extend([XATTR_ID.to_vec(), XATTR_KIND.to_vec(), XATTR_STATE.to_vec()]);
                }
                names.extend(m.fs.listxattr(local)?);
                Ok(names)
            }
            Some(Target::Tree(_)) => Ok(Vec::new()),
            None => enoent(),
        }
    }

    /// `statfs` of the volume holding `ino`, or totals for the synthetic tree.
    pub fn statfs(&self, ino: u64) -> Result<StatFs> {
        match self.target(ino) {
            Some(Target::Vol(slot, _)) => self.volume(slot)?.fs.statfs(),
            _ => {
                let mut total = StatFs {
                    bsize: 4096,
                    frsize: 4096,
                    namelen: 255,
                    ..StatFs::default()
                };
                for m in self.mounted() {
                    if let Ok(s) = m.fs.statfs() {
                        let scale = u64::from(s.frsize.max(1)) / 4096;
                        total.blocks += s.blocks * scale.max(1);
                        total.bfree += s.bfree * scale.max(1);
                        total.bavail += s.bavail * scale.max(1);
                        total.files += s.files;
                        total.ffree += s.ffree;
                    }
                }
                Ok(total)
            }
        }
    }

    /// The volume and local inode for a write-type call; the synthetic tree
    /// is read-only.
    pub fn writable_target(&self, ino: u64) -> Result<(Arc<Mounted>, u64)> {
        match self.target(ino) {
            Some(Target::Vol(slot, local)) => Ok((self.volume(slot)?, local)),
            Some(Target::Tree(_)) => err(ErrorKind::ReadOnly),
            None => enoent(),
        }
    }

    pub fn setattr(
        &self,
        ino: u64,
        set: &SetAttr,
        fh: Option<u64>,
        ctx: &Ctx,
    ) -> Result<(Attr, Duration)> {
        let (m, local) = self.writable_target(ino)?;
        let h = fh.and_then(|f| self.handle(f).ok());
        let a =
            m.fs.setattr(local, set, h.as_ref().map(|h| h.file.as_ref()), ctx)?;
        Ok((Self::globalize(m.slot, a), m.ttl))
    }

    /// Runs a write-type directory operation on the volume holding `parent`
    /// and globalises the resulting attributes.
    pub fn dir_op(
        &self,
        parent: u64,
        f: impl FnOnce(&dyn VolumeFs, u64) -> Result<Attr>,
    ) -> Result<(Attr, Duration)> {
        let (m, local) = self.writable_target(parent)?;
        let a = f(m.fs.as_ref(), local)?;
        Ok((Self::globalize(m.slot, a), m.ttl))
    }

    /// Like [`Self::dir_op`] for operations that return nothing.
    pub fn dir_op_unit(
        &self,
        parent: u64,
        f: impl FnOnce(&dyn VolumeFs, u64) -> Result<()>,
    ) -> Result<()> {
        let (m, local) = self.writable_target(parent)?;
        f(m.fs.as_ref(), local)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: OpenFlags,
        ctx: &Ctx,
    ) -> Result<(Attr, Duration, u64, OpenOpts)> {
        let (m, local) = self.writable_target(parent)?;
        let (a, file) = m.fs.create(local, name, mode, umask, flags, ctx)?;
        let opts = file.open_opts();
        let ino = global_ino(m.slot, a.ino);
        let ttl = m.ttl;
        let slot = m.slot;
        let fh = self.insert_handle(Handle {
            ino,
            vol: Some(m),
            file,
            writers: Writers::default(),
        });
        Ok((Self::globalize(slot, a), ttl, fh, opts))
    }

    /// Renames within one volume; across volumes is EXDEV, as between
    /// filesystems. Within one top-level tree, the tree decides; between
    /// a tree and anything else, EROFS.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        if let Some(Target::Tree(p)) = self.target(parent)
            && p.owns(newparent)
        {
            return p.rename(self, parent, name, newparent, newname, flags, ctx);
        }
        let (m, p) = self.writable_target(parent)?;
        let (m2, np) = self.writable_target(newparent)?;
        if m.slot != m2.slot {
            return err(ErrorKind::CrossDevice);
        }
        m.fs.rename(p, name, np, newname, flags, ctx)
    }

    pub fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &[u8],
        ctx: &Ctx,
    ) -> Result<(Attr, Duration)> {
        let (m, local) = self.writable_target(ino)?;
        let (m2, np) = self.writable_target(newparent)?;
        if m.slot != m2.slot {
            return err(ErrorKind::CrossDevice);
        }
        let a = m.fs.link(local, np, newname, ctx)?;
        Ok((Self::globalize(m.slot, a), m.ttl))
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        ctx: &Ctx,
    ) -> Result<()> {
        if let Some(Target::Vol(_, VOLUME_ROOT)) = self.target(ino)
            && [XATTR_ID, XATTR_KIND, XATTR_STATE].contains(&name)
        {
            return err(ErrorKind::NotPermitted);
        }
        let (m, local) = self.writable_target(ino)?;
        m.fs.setxattr(local, name, value, flags, ctx)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        let (m, local) = self.writable_target(ino)?;
        m.fs.removexattr(local, name, ctx)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        let m = h
            .vol
            .clone()
            .ok_or_else(|| Error::kind_only(ErrorKind::ReadOnly))?;
        if !matches!(self.target(h.ino), Some(Target::Vol(..))) {
            return err(ErrorKind::ReadOnly);
        }
        m.fs.fallocate(h.file.as_ref(), offset, len, mode)
    }

    pub fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        match self.target(ino) {
            Some(Target::Vol(slot, local)) => self.volume(slot)?.fs.lseek(local, offset, whence),
            Some(Target::Tree(p)) => p.lseek(self, ino, offset, whence),
            None => err(ErrorKind::Invalid),
        }
    }

    /// `copy_file_range(2)`: moves `len` bytes between two open files of
    /// the mount with the offload engine (chunks are shared where both sides
    /// are 1 MiB-aligned). Returns the bytes copied; short at the source's
    /// end. The destination commits on close, like any write.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let src = self.handle(fh_in)?;
        let dst = self.handle(fh_out)?;
        if !matches!(self.target(dst.ino), Some(Target::Vol(..))) {
            return err(ErrorKind::ReadOnly);
        }
        // copy_file_range carries no lock owner.
        dst.writers.wrote(None);
        // The reply carries a 32-bit count; the kernel asks for at most
        // 2 GiB at a time anyway.
        let len = len.min(1 << 31);
        let moved = copy::transfer(
            &copy::Live(src.file.as_ref()),
            off_in,
            dst.file.as_ref(),
            off_out,
            len,
        )?;
        Ok(moved.bytes)
    }

    /// How long the kernel may cache the attributes of `ino`.
    pub fn ttl_of(&self, ino: u64) -> Duration {
        self.slot_of(ino)
            .and_then(|slot| self.by_slot(slot))
            .map_or(SYNTHETIC_TTL, |m| m.ttl)
    }

    /// Number of open handles in the whole mount.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }
}

impl Default for Core {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
