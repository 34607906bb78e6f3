//! The filesystem core: everything the mount does, without the mount.
//!
//! [`Core`] owns the global inode space, the synthetic tree and the open-file
//! table, and dispatches to the [`ops::VolumeFs`] of each volume. The FUSE
//! adapter (`crate::fuse`) only translates between fuser's types and these
//! calls, so every behaviour here is reachable from unit tests.
//!
//! Global inode numbers: the top 24 bits are the volume's catalog slot, the
//! low 40 bits its local inode. Slot 0 is the synthetic tree:
//!
//! ```text
//! 1                 /                (FUSE_ROOT_ID)
//! 2                 /volumes
//! 3                 /media
//! 1<<32 | slot      /volumes/<name>  symlink to the ID directory
//! 2<<32 | slot      /media/<id>      the whole medium, read-only
//! slot<<40 | local  /volumes/<id>/…  (local 1 is the volume root)
//! ```
//!
//! Slots are never reused (SQLite AUTOINCREMENT), so an inode number stays
//! tied to one volume across restarts.

pub mod copy;
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

use self::ops::{DirEntry, OpenFile, VOLUME_ROOT, VolumeFs};
use self::types::{Attr, Ctx, FileKind, OpenFlags, OpenOpts, SetAttr, StatFs, Timespec};
use crate::error::{Error, ErrorKind, Result, err};
use crate::lifecycle::{Attachment, Kind};
use crate::medium::SharedMedium;

pub const ROOT_INO: u64 = 1;
pub const VOLUMES_INO: u64 = 2;
pub const MEDIA_INO: u64 = 3;
const SLOT_SHIFT: u32 = 40;
const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;
const LINK_BASE: u64 = 1 << 32;
const MEDIA_BASE: u64 = 2 << 32;

/// The xattrs every volume root carries.
pub const XATTR_ID: &[u8] = b"user.fsd.id";
pub const XATTR_KIND: &[u8] = b"user.fsd.kind";
pub const XATTR_STATE: &[u8] = b"user.fsd.state";

/// Attribute and entry lifetimes for the synthetic tree, which changes when
/// volumes come and go (the adapter also invalidates entries on detach).
pub const SYNTHETIC_TTL: Duration = Duration::from_secs(1);

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

/// An open file in the open-file table.
pub struct Handle {
    pub ino: u64,
    pub vol: Option<Arc<Mounted>>,
    pub file: Arc<dyn OpenFile>,
    /// Who wrote through this handle; decides which closes commit.
    pub writers: Writers,
}

/// The writers of one open file description, by the kernel's lock owner
/// (an id of the writing process's descriptor table, which its threads
/// share and a forked child does not).
///
/// FUSE sends FLUSH on every close(2) of a descriptor, including the
/// copies a fork hands to a child, which exec closes at once. A native
/// file commits on flush, so before, any program that forked while another
/// thread was writing a file (a build tool, a test runner, a shell) made
/// the file commit half-written chunks, which the later writes then
/// superseded: a chunk written twice and a catalog transaction per fork.
/// Now a close commits when its process wrote through the handle, or when
/// a writer is unknown (writes through the kernel's page cache and copies
/// carry no lock owner). Nothing is left uncommitted by skipping: the
/// handle's release, when its last descriptor closes, commits as before.
#[derive(Default)]
pub struct Writers(parking_lot::Mutex<WriterSet>);

#[derive(Default)]
struct WriterSet {
    owners: Vec<u64>,
    /// A write whose owner is not known, or more owners than are kept.
    unknown: bool,
}

/// Distinct owners kept per handle; more make every close commit.
const MAX_WRITERS: usize = 8;

impl Writers {
    /// Records a write by `owner` (None: not known).
    pub fn wrote(&self, owner: Option<u64>) {
        let mut w = self.0.lock();
        match owner {
            _ if w.unknown => {}
            None => w.unknown = true,
            Some(o) if w.owners.contains(&o) => {}
            Some(_) if w.owners.len() >= MAX_WRITERS => w.unknown = true,
            Some(o) => w.owners.push(o),
        }
    }

    /// Whether a close by `owner` should commit.
    pub fn commits_on_close_by(&self, owner: u64) -> bool {
        let w = self.0.lock();
        w.unknown || w.owners.contains(&owner)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(v) = &self.vol {
            v.open_files.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The filesystem core.
pub struct Core {
    registry: RwLock<Registry>,
    handles: DashMap<u64, Arc<Handle>>,
    next_fh: AtomicU64,
    /// When the mount started; the synthetic tree's timestamps.
    started: Timespec,
    uid: u32,
    gid: u32,
}

/// Splits a global inode number.
enum Ino {
    Root,
    Volumes,
    Media,
    NameLink(u32),
    MediaFile(u32),
    Vol(u32, u64),
}

fn decode(ino: u64) -> Option<Ino> {
    let slot = (ino >> SLOT_SHIFT) as u32;
    let local = ino & LOCAL_MASK;
    if slot > 0 {
        return (local > 0).then_some(Ino::Vol(slot, local));
    }
    match ino {
        ROOT_INO => Some(Ino::Root),
        VOLUMES_INO => Some(Ino::Volumes),
        MEDIA_INO => Some(Ino::Media),
        i if i & !0xFFFF_FFFF == LINK_BASE => Some(Ino::NameLink(i as u32)),
        i if i & !0xFFFF_FFFF == MEDIA_BASE => Some(Ino::MediaFile(i as u32)),
        _ => None,
    }
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
            started: Timespec::now(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
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

    /// The volume an inode belongs to: a volume's own inodes and its
    /// `/media/<id>` file.
    pub fn volume_of(&self, ino: u64) -> Option<Arc<Mounted>> {
        match decode(ino)? {
            Ino::Vol(slot, _) | Ino::MediaFile(slot) => self.by_slot(slot),
            _ => None,
        }
    }

    pub fn by_slot(&self, slot: u32) -> Option<Arc<Mounted>> {
        self.registry.read().by_slot.get(&slot).cloned()
    }

    pub fn mounted(&self) -> Vec<Arc<Mounted>> {
        let mut v: Vec<_> = self.registry.read().by_slot.values().cloned().collect();
        v.sort_by_key(|m| m.slot);
        v
    }

    fn vol(&self, slot: u32) -> Result<Arc<Mounted>> {
        self.by_slot(slot)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))
    }

    // ----- attributes of the synthetic tree -----

    fn dir_attr(&self, ino: u64, nlink: u32) -> Attr {
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

    fn link_attr(&self, slot: u32, target_len: usize) -> Attr {
        Attr {
            kind: FileKind::Symlink,
            size: target_len as u64,
            perm: 0o777,
            nlink: 1,
            ..self.dir_attr(LINK_BASE | u64::from(slot), 1)
        }
    }

    fn media_attr(&self, m: &Mounted) -> Option<Attr> {
        let medium = &m.media.first()?.medium;
        // The medium file's owner and read bits: the kernel then lets read it
        // through the mount exactly the users who may read the file itself.
        let base = self.dir_attr(MEDIA_BASE | u64::from(m.slot), 1);
        let (uid, gid, perm) = medium.owner().map_or((base.uid, base.gid, 0o444), |o| {
            (o.uid, o.gid, o.perm & 0o444)
        });
        Some(Attr {
            kind: FileKind::File,
            size: medium.size(),
            blocks: medium.size().div_ceil(512),
            perm,
            nlink: 1,
            uid,
            gid,
            blksize: Attr::BLKSIZE,
            ..base
        })
    }

    fn globalize(slot: u32, mut a: Attr) -> Attr {
        a.ino = global_ino(slot, a.ino);
        a
    }

    /// `getattr`: the attributes and how long the kernel may cache them.
    pub fn getattr(&self, ino: u64) -> Result<(Attr, Duration)> {
        match decode(ino) {
            Some(Ino::Root) => Ok((self.dir_attr(ROOT_INO, 4), SYNTHETIC_TTL)),
            Some(Ino::Volumes) => {
                let n = self.registry.read().by_slot.len() as u32;
                Ok((self.dir_attr(VOLUMES_INO, 2 + n), SYNTHETIC_TTL))
            }
            Some(Ino::Media) => Ok((self.dir_attr(MEDIA_INO, 2), SYNTHETIC_TTL)),
            Some(Ino::NameLink(slot)) => {
                let m = self.vol(slot)?;
                let info = m.info.read();
                if info.name.is_none() {
                    return enoent();
                }
                Ok((self.link_attr(slot, info.id.len()), SYNTHETIC_TTL))
            }
            Some(Ino::MediaFile(slot)) => {
                let m = self.vol(slot)?;
                let a = self
                    .media_attr(&m)
                    .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
                Ok((a, m.ttl))
            }
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                let a = m.fs.getattr(local)?;
                Ok((Self::globalize(slot, a), m.ttl))
            }
            None => enoent(),
        }
    }

    /// `lookup` of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(Attr, Duration)> {
        match decode(parent) {
            Some(Ino::Root) => match name {
                b"volumes" => self.getattr(VOLUMES_INO),
                b"media" => self.getattr(MEDIA_INO),
                _ => enoent(),
            },
            Some(Ino::Volumes) => {
                let name =
                    std::str::from_utf8(name).map_err(|_| Error::kind_only(ErrorKind::NotFound))?;
                let r = self.registry.read();
                if let Some(&slot) = r.by_id.get(name) {
                    drop(r);
                    return self.getattr(global_ino(slot, VOLUME_ROOT));
                }
                if let Some(&slot) = r.by_name.get(name) {
                    drop(r);
                    return self.getattr(LINK_BASE | u64::from(slot));
                }
                enoent()
            }
            Some(Ino::Media) => {
                let name =
                    std::str::from_utf8(name).map_err(|_| Error::kind_only(ErrorKind::NotFound))?;
                let slot = *self
                    .registry
                    .read()
                    .by_id
                    .get(name)
                    .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
                self.getattr(MEDIA_BASE | u64::from(slot))
            }
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                let a = m.fs.lookup(local, name)?;
                Ok((Self::globalize(slot, a), m.ttl))
            }
            Some(Ino::NameLink(_)) | Some(Ino::MediaFile(_)) => err(ErrorKind::NotDir),
            None => enoent(),
        }
    }

    /// Lists a directory from `offset`. Offsets 1 and 2 are `.` and `..`;
    /// the rest are the volume's own offsets shifted by 2.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let (dot, dotdot) = match decode(ino) {
            Some(Ino::Root) => (ROOT_INO, ROOT_INO),
            Some(Ino::Volumes) | Some(Ino::Media) => (ino, ROOT_INO),
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                let p = m.fs.parent(local)?;
                let parent = if local == VOLUME_ROOT {
                    VOLUMES_INO
                } else {
                    global_ino(slot, p)
                };
                (ino, parent)
            }
            Some(_) => return err(ErrorKind::NotDir),
            None => return enoent(),
        };
        let mut off = offset;
        for (name, target, next) in [(&b"."[..], dot, 1u64), (&b".."[..], dotdot, 2)] {
            if off < next {
                let (attr, _) = self.getattr(target)?;
                if !sink(DirEntry { name, attr, next }) {
                    return Ok(());
                }
                off = next;
            }
        }
        let rel = off - 2;
        match decode(ino) {
            Some(Ino::Root) => {
                let kids = [(&b"volumes"[..], VOLUMES_INO), (&b"media"[..], MEDIA_INO)];
                for (i, (name, child)) in kids.iter().enumerate().skip(rel as usize) {
                    let (attr, _) = self.getattr(*child)?;
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
            Some(Ino::Volumes) | Some(Ino::Media) => {
                let media = matches!(decode(ino), Some(Ino::Media));
                let entries = self.synthetic_entries(media);
                for (i, (name, child)) in entries.iter().enumerate().skip(rel as usize) {
                    let Ok((attr, _)) = self.getattr(*child) else {
                        continue;
                    };
                    if !sink(DirEntry {
                        name: name.as_bytes(),
                        attr,
                        next: i as u64 + 3,
                    }) {
                        break;
                    }
                }
                Ok(())
            }
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                m.fs.readdir(local, rel, &mut |e| {
                    sink(DirEntry {
                        name: e.name,
                        attr: Self::globalize(slot, e.attr),
                        next: e.next + 2,
                    })
                })
            }
            _ => Ok(()),
        }
    }

    /// The entries of `/volumes` (IDs, then names) or `/media` (IDs of
    /// volumes with a medium), sorted so offsets are stable between calls.
    fn synthetic_entries(&self, media: bool) -> Vec<(String, u64)> {
        let r = self.registry.read();
        let mut out: Vec<(String, u64)> = Vec::new();
        for (slot, m) in &r.by_slot {
            let info = m.info.read();
            if media {
                if !m.media.is_empty() {
                    out.push((info.id.clone(), MEDIA_BASE | u64::from(*slot)));
                }
            } else {
                out.push((info.id.clone(), global_ino(*slot, VOLUME_ROOT)));
                if let Some(n) = &info.name {
                    out.push((n.clone(), LINK_BASE | u64::from(*slot)));
                }
            }
        }
        out.sort();
        out
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match decode(ino) {
            Some(Ino::NameLink(slot)) => Ok(self.vol(slot)?.info.read().id.clone().into_bytes()),
            Some(Ino::Vol(slot, local)) => self.vol(slot)?.fs.readlink(local),
            Some(_) => err(ErrorKind::Invalid),
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
        match decode(ino) {
            Some(Ino::MediaFile(slot)) => {
                if flags.writable() || flags.truncate() {
                    return err(ErrorKind::ReadOnly);
                }
                let m = self.vol(slot)?;
                let medium = m
                    .media
                    .first()
                    .map(|e| e.medium.clone())
                    .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
                let file = Arc::new(MediumOpen { medium, ino });
                let opts = file.open_opts();
                let fh = self.insert_handle(Handle {
                    ino,
                    vol: Some(m),
                    file,
                    writers: Writers::default(),
                });
                Ok((fh, opts))
            }
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                let file = m.fs.open(local, flags, ctx)?;
                let opts = file.open_opts();
                let fh = self.insert_handle(Handle {
                    ino,
                    vol: Some(m),
                    file,
                    writers: Writers::default(),
                });
                Ok((fh, opts))
            }
            Some(Ino::Root) | Some(Ino::Volumes) | Some(Ino::Media) => err(ErrorKind::IsDir),
            Some(Ino::NameLink(_)) => err(ErrorKind::Invalid),
            None => enoent(),
        }
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
        if let Some(Ino::Vol(slot, local)) = decode(ino) {
            let m = self.vol(slot)?;
            m.fs.opendir(local)?;
            return Ok(m.fs.listings_fixed());
        }
        Ok(false)
    }

    pub fn releasedir(&self, ino: u64) {
        if let Some(Ino::Vol(slot, local)) = decode(ino)
            && let Ok(m) = self.vol(slot)
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
        match decode(ino) {
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                if local == VOLUME_ROOT
                    && let Some(v) = self.volume_xattr(&m, name)
                {
                    return Ok(v);
                }
                m.fs.getxattr(local, name)
            }
            Some(_) => err(ErrorKind::NoAttr),
            None => enoent(),
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match decode(ino) {
            Some(Ino::Vol(slot, local)) => {
                let m = self.vol(slot)?;
                let mut names = Vec::new();
                if local == VOLUME_ROOT {
                    names.extend([XATTR_ID.to_vec(), XATTR_KIND.to_vec(), XATTR_STATE.to_vec()]);
                }
                names.extend(m.fs.listxattr(local)?);
                Ok(names)
            }
            Some(_) => Ok(Vec::new()),
            None => enoent(),
        }
    }

    /// `statfs` of the volume holding `ino`, or totals for the synthetic tree.
    pub fn statfs(&self, ino: u64) -> Result<StatFs> {
        match decode(ino) {
            Some(Ino::Vol(slot, _)) => self.vol(slot)?.fs.statfs(),
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
        match decode(ino) {
            Some(Ino::Vol(slot, local)) => Ok((self.vol(slot)?, local)),
            Some(_) => err(ErrorKind::ReadOnly),
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
    /// filesystems.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        ctx: &Ctx,
    ) -> Result<()> {
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
        if let Some(Ino::Vol(_, VOLUME_ROOT)) = decode(ino)
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
        if matches!(decode(h.ino), Some(Ino::MediaFile(_))) {
            return err(ErrorKind::ReadOnly);
        }
        m.fs.fallocate(h.file.as_ref(), offset, len, mode)
    }

    pub fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        match decode(ino) {
            Some(Ino::Vol(slot, local)) => self.vol(slot)?.fs.lseek(local, offset, whence),
            Some(Ino::MediaFile(_)) => {
                let (a, _) = self.getattr(ino)?;
                if offset >= a.size {
                    return err(ErrorKind::NoSuchOffset);
                }
                Ok(if whence == libc::SEEK_HOLE {
                    a.size
                } else {
                    offset
                })
            }
            _ => err(ErrorKind::Invalid),
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
        if matches!(decode(dst.ino), Some(Ino::MediaFile(_))) {
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
        match decode(ino) {
            Some(Ino::Vol(slot, _)) | Some(Ino::MediaFile(slot)) => {
                self.by_slot(slot).map(|m| m.ttl).unwrap_or(SYNTHETIC_TTL)
            }
            _ => SYNTHETIC_TTL,
        }
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

/// An open `/media/<id>` file.
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
mod tests;
