//! A volume made of volumes: child [`VolumeFs`]es mounted at subdirectories
//! of its root, as ratarmount's `SubvolumesMountSource` does. This is how a
//! drive will show its partitions (`p1/`, `p2/`), and later nested
//! archives. The root may also show the entries of a base volume; a child's
//! name hides a base entry of the same name, as a mount hides what is under
//! its mountpoint.
//!
//! Local inodes: bits 32..40 say which part an inode belongs to (0: the base
//! and the root, i + 1: child i), the low 32 bits are the part's own inode.
//! The core's 40-bit local space thus holds 255 children of up to 2^32
//! inodes each; a part inode that does not fit is an I/O error, never a
//! collision. Everything else is delegated to the part, so a read-only child
//! answers writes with EROFS, and operations between two parts (rename,
//! link) are EXDEV, as between filesystems.

use std::sync::Arc;

use super::namespace::Stamp;
use super::ops::{DirEntry, OpenFile, Shared, VOLUME_ROOT, VolumeFs};
use super::types::{Attr, Ctx, OpenFlags, OpenOpts, SetAttr, StatFs};
use crate::error::{Error, ErrorKind, Result, err};
use crate::store::buf::ChunkBuf;

const PART_SHIFT: u32 = 32;
const INNER_MASK: u64 = (1 << PART_SHIFT) - 1;

/// Children one composite holds (the part numbers 1..=255 of 8 bits).
pub const MAX_CHILDREN: usize = 255;

/// Longest child name, as NAME_MAX.
const NAME_MAX: usize = 255;

struct Child {
    name: Vec<u8>,
    fs: Arc<dyn VolumeFs>,
}

/// Child volumes at subdirectories of one root.
pub struct Composite {
    base: Option<Arc<dyn VolumeFs>>,
    children: Vec<Child>,
    /// Owner and times of the root when there is no base.
    stamp: Stamp,
}

/// Where a local inode belongs.
enum At<'a> {
    /// The root of a composite without a base.
    BareRoot,
    /// Part `0` (the base) or `i + 1` (child i), and the part's own inode.
    Part(u32, &'a dyn VolumeFs, u64),
}

fn split(ino: u64) -> (u32, u64) {
    ((ino >> PART_SHIFT) as u32, ino & INNER_MASK)
}

fn join(part: u32, inner: u64) -> Result<u64> {
    if inner > INNER_MASK {
        return Err(Error::new(
            ErrorKind::Io,
            format!("inode {inner} of part {part} does not fit a composite volume's 32-bit inodes"),
        ));
    }
    Ok((u64::from(part) << PART_SHIFT) | inner)
}

fn map(part: u32, mut a: Attr) -> Result<Attr> {
    a.ino = join(part, a.ino)?;
    Ok(a)
}

impl Composite {
    /// An empty composite whose root, until a base is given, belongs to
    /// `stamp`'s owner and is read-only.
    pub fn new(stamp: Stamp) -> Self {
        Composite {
            base: None,
            children: Vec::new(),
            stamp,
        }
    }

    /// Shows `base`'s root entries beside the children.
    pub fn with_base(mut self, base: Arc<dyn VolumeFs>) -> Self {
        self.base = Some(base);
        self
    }

    /// Mounts `fs` at `name` in the root.
    pub fn mount(&mut self, name: &[u8], fs: Arc<dyn VolumeFs>) -> Result<()> {
        let shown = String::from_utf8_lossy(name);
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.len() > NAME_MAX
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{shown:?} cannot name a subvolume"),
            ));
        }
        if self.part_named(name).is_some() {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("a subvolume is already mounted at {shown:?}"),
            ));
        }
        if self.children.len() >= MAX_CHILDREN {
            return Err(Error::new(
                ErrorKind::Limit,
                format!("no room for subvolume {shown:?}: at most {MAX_CHILDREN}"),
            ));
        }
        self.children.push(Child {
            name: name.to_vec(),
            fs,
        });
        Ok(())
    }

    fn part_named(&self, name: &[u8]) -> Option<u32> {
        let i = self.children.iter().position(|c| c.name == name)?;
        Some(i as u32 + 1)
    }

    /// Whether `name` in directory `parent` is a child's mountpoint.
    fn is_mountpoint(&self, parent: u64, name: &[u8]) -> bool {
        parent == VOLUME_ROOT && self.part_named(name).is_some()
    }

    fn at(&self, ino: u64) -> Result<At<'_>> {
        let (part, inner) = split(ino);
        if part == 0 {
            return match &self.base {
                Some(b) => Ok(At::Part(0, b.as_ref(), inner)),
                None if inner == VOLUME_ROOT => Ok(At::BareRoot),
                None => err(ErrorKind::NotFound),
            };
        }
        let c = self
            .children
            .get(part as usize - 1)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        Ok(At::Part(part, c.fs.as_ref(), inner))
    }

    /// The part `ino` belongs to, for write-type calls: the bare root has
    /// nothing to write.
    fn writable(&self, ino: u64) -> Result<(u32, &dyn VolumeFs, u64)> {
        match self.at(ino)? {
            At::BareRoot => err(ErrorKind::ReadOnly),
            At::Part(p, fs, inner) => Ok((p, fs, inner)),
        }
    }

    /// Like [`Self::writable`] for two inodes, which must be in one part.
    fn same_part(&self, a: u64, b: u64) -> Result<(u32, &dyn VolumeFs, u64, u64)> {
        let (p, fs, ia) = self.writable(a)?;
        let (q, _, ib) = self.writable(b)?;
        if p != q {
            return err(ErrorKind::CrossDevice);
        }
        Ok((p, fs, ia, ib))
    }

    fn parts(&self) -> impl Iterator<Item = &dyn VolumeFs> {
        self.base
            .iter()
            .map(|b| b.as_ref())
            .chain(self.children.iter().map(|c| c.fs.as_ref()))
    }

    /// Lists the root: the children at offsets 1..=n, then the base's
    /// entries with their offsets moved up by n.
    fn readdir_root(&self, offset: u64, sink: &mut dyn FnMut(DirEntry<'_>) -> bool) -> Result<()> {
        let n = self.children.len() as u64;
        for (i, c) in self.children.iter().enumerate().skip(offset as usize) {
            let part = i as u32 + 1;
            let Ok(attr) = c.fs.getattr(VOLUME_ROOT).and_then(|a| map(part, a)) else {
                continue;
            };
            if !sink(DirEntry {
                name: &c.name,
                attr,
                next: part.into(),
            }) {
                return Ok(());
            }
        }
        let Some(base) = &self.base else {
            return Ok(());
        };
        let mut failed = None;
        base.readdir(VOLUME_ROOT, offset.saturating_sub(n), &mut |e| {
            if self.part_named(e.name).is_some() {
                return true;
            }
            match (map(0, e.attr), e.next.checked_add(n)) {
                (Ok(attr), Some(next)) => sink(DirEntry {
                    name: e.name,
                    attr,
                    next,
                }),
                (Err(x), _) => {
                    failed = Some(x);
                    false
                }
                (_, None) => {
                    failed = Some(Error::kind_only(ErrorKind::Io));
                    false
                }
            }
        })?;
        failed.map_or(Ok(()), Err)
    }
}

#[allow(unused_variables)]
impl VolumeFs for Composite {
    fn getattr(&self, ino: u64) -> Result<Attr> {
        let n = self.children.len() as u32;
        match self.at(ino)? {
            At::BareRoot => Ok(Attr {
                perm: 0o555,
                ..self.stamp.dir_attr(VOLUME_ROOT, 2 + n)
            }),
            At::Part(0, base, VOLUME_ROOT) => {
                let a = base.getattr(VOLUME_ROOT)?;
                Ok(Attr {
                    nlink: a.nlink.saturating_add(n),
                    ..a
                })
            }
            At::Part(p, fs, inner) => map(p, fs.getattr(inner)?),
        }
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if parent == VOLUME_ROOT
            && let Some(p) = self.part_named(name)
        {
            return self.getattr(join(p, VOLUME_ROOT)?);
        }
        match self.at(parent)? {
            At::BareRoot => err(ErrorKind::NotFound),
            At::Part(p, fs, inner) => map(p, fs.lookup(inner, name)?),
        }
    }

    /// A child's root is in the composite's root.
    fn parent(&self, ino: u64) -> Result<u64> {
        match self.at(ino)? {
            At::BareRoot => Ok(VOLUME_ROOT),
            At::Part(p, _, VOLUME_ROOT) if p > 0 => Ok(VOLUME_ROOT),
            At::Part(p, fs, inner) => join(p, fs.parent(inner)?),
        }
    }

    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        if ino == VOLUME_ROOT {
            return self.readdir_root(offset, sink);
        }
        let At::Part(p, fs, inner) = self.at(ino)? else {
            return err(ErrorKind::NotFound);
        };
        let mut failed = None;
        fs.readdir(inner, offset, &mut |e| match map(p, e.attr) {
            Ok(attr) => sink(DirEntry { attr, ..e }),
            Err(x) => {
                failed = Some(x);
                false
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.at(ino)? {
            At::BareRoot => err(ErrorKind::Invalid),
            At::Part(_, fs, inner) => fs.readlink(inner),
        }
    }

    fn opendir(&self, ino: u64) -> Result<()> {
        match self.at(ino)? {
            At::BareRoot => Ok(()),
            At::Part(_, fs, inner) => fs.opendir(inner),
        }
    }

    fn releasedir(&self, ino: u64) {
        if let Ok(At::Part(_, fs, inner)) = self.at(ino) {
            fs.releasedir(inner);
        }
    }

    fn listings_fixed(&self) -> bool {
        self.parts().all(|p| p.listings_fixed())
    }

    /// The base's: the catalog rows of the children are not this volume's.
    fn busy_inodes(&self) -> Vec<i64> {
        self.base
            .as_ref()
            .map_or_else(Vec::new, |b| b.busy_inodes())
    }

    fn open(&self, ino: u64, flags: OpenFlags, ctx: &Ctx) -> Result<Arc<dyn OpenFile>> {
        match self.at(ino)? {
            At::BareRoot => err(ErrorKind::IsDir),
            At::Part(p, fs, inner) => Ok(PartFile::wrap(p, fs.open(inner, flags, ctx)?)),
        }
    }

    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.at(ino)? {
            At::BareRoot => err(ErrorKind::NoAttr),
            At::Part(_, fs, inner) => fs.getxattr(inner, name),
        }
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match self.at(ino)? {
            At::BareRoot => Ok(Vec::new()),
            At::Part(_, fs, inner) => fs.listxattr(inner),
        }
    }

    /// The sum of the parts, in 4 KiB blocks.
    fn statfs(&self) -> Result<StatFs> {
        let mut total = StatFs {
            bsize: 4096,
            frsize: 4096,
            namelen: NAME_MAX as u32,
            ..StatFs::default()
        };
        for part in self.parts() {
            let s = part.statfs()?;
            let scale = (u64::from(s.frsize.max(1)) / 4096).max(1);
            total.blocks += s.blocks * scale;
            total.bfree += s.bfree * scale;
            total.bavail += s.bavail * scale;
            total.files += s.files;
            total.ffree += s.ffree;
        }
        Ok(total)
    }

    // --- write side: delegated to the part, which may be read-only ---

    fn setattr(
        &self,
        ino: u64,
        set: &SetAttr,
        fh: Option<&dyn OpenFile>,
        ctx: &Ctx,
    ) -> Result<Attr> {
        let (p, fs, inner) = self.writable(ino)?;
        let fh = fh.map(|f| f.part().map_or(f, |(_, own)| own));
        map(p, fs.setattr(inner, set, fh, ctx)?)
    }

    fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: OpenFlags,
        ctx: &Ctx,
    ) -> Result<(Attr, Arc<dyn OpenFile>)> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::Exists);
        }
        let (p, fs, inner) = self.writable(parent)?;
        let (a, f) = fs.create(inner, name, mode, umask, flags, ctx)?;
        Ok((map(p, a)?, PartFile::wrap(p, f)))
    }

    fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        ctx: &Ctx,
    ) -> Result<Attr> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::Exists);
        }
        let (p, fs, inner) = self.writable(parent)?;
        map(p, fs.mknod(inner, name, mode, umask, rdev, ctx)?)
    }

    fn mkdir(&self, parent: u64, name: &[u8], mode: u32, umask: u32, ctx: &Ctx) -> Result<Attr> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::Exists);
        }
        let (p, fs, inner) = self.writable(parent)?;
        map(p, fs.mkdir(inner, name, mode, umask, ctx)?)
    }

    fn symlink(&self, parent: u64, name: &[u8], target: &[u8], ctx: &Ctx) -> Result<Attr> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::Exists);
        }
        let (p, fs, inner) = self.writable(parent)?;
        map(p, fs.symlink(inner, name, target, ctx)?)
    }

    fn link(&self, ino: u64, newparent: u64, newname: &[u8], ctx: &Ctx) -> Result<Attr> {
        if self.is_mountpoint(newparent, newname) {
            return err(ErrorKind::Exists);
        }
        let (p, fs, inner, np) = self.same_part(ino, newparent)?;
        map(p, fs.link(inner, np, newname, ctx)?)
    }

    fn unlink(&self, parent: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::IsDir);
        }
        let (_, fs, inner) = self.writable(parent)?;
        fs.unlink(inner, name, ctx)
    }

    fn rmdir(&self, parent: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        if self.is_mountpoint(parent, name) {
            return err(ErrorKind::Busy);
        }
        let (_, fs, inner) = self.writable(parent)?;
        fs.rmdir(inner, name, ctx)
    }

    fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        if self.is_mountpoint(parent, name) || self.is_mountpoint(newparent, newname) {
            return err(ErrorKind::Busy);
        }
        let (_, fs, p, np) = self.same_part(parent, newparent)?;
        fs.rename(p, name, np, newname, flags, ctx)
    }

    fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32, ctx: &Ctx) -> Result<()> {
        let (_, fs, inner) = self.writable(ino)?;
        fs.setxattr(inner, name, value, flags, ctx)
    }

    fn removexattr(&self, ino: u64, name: &[u8], ctx: &Ctx) -> Result<()> {
        let (_, fs, inner) = self.writable(ino)?;
        fs.removexattr(inner, name, ctx)
    }

    fn fallocate(&self, fh: &dyn OpenFile, offset: u64, len: u64, mode: i32) -> Result<()> {
        let (p, own) = fh
            .part()
            .ok_or_else(|| Error::new(ErrorKind::Invalid, "a file this volume did not open"))?;
        let (_, fs, _) = self.writable(join(p, VOLUME_ROOT)?)?;
        fs.fallocate(own, offset, len, mode)
    }

    fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        match self.at(ino)? {
            At::BareRoot => err(ErrorKind::NoSuchOffset),
            At::Part(_, fs, inner) => fs.lseek(inner, offset, whence),
        }
    }
}

/// A file a part opened, tagged with the part so that later calls naming
/// the handle (`setattr`, `fallocate`) reach that part with its own file.
struct PartFile {
    part: u32,
    inner: Arc<dyn OpenFile>,
}

impl PartFile {
    fn wrap(part: u32, inner: Arc<dyn OpenFile>) -> Arc<dyn OpenFile> {
        Arc::new(PartFile { part, inner })
    }
}

impl OpenFile for PartFile {
    fn read(&self, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        self.inner.read(offset, size, out)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<usize> {
        self.inner.read_into(offset, buf, scratch)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<u32> {
        self.inner.write(offset, data)
    }

    fn write_all(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write_all(offset, data)
    }

    fn write_chunk(&self, offset: u64, data: ChunkBuf) -> Result<()> {
        self.inner.write_chunk(offset, data)
    }

    fn kill_privs(&self, ctx: &Ctx) -> Result<()> {
        self.inner.kill_privs(ctx)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn fsync(&self, datasync: bool) -> Result<()> {
        self.inner.fsync(datasync)
    }

    fn release(&self) -> Result<()> {
        self.inner.release()
    }

    fn open_opts(&self) -> OpenOpts {
        self.inner.open_opts()
    }

    fn ino(&self) -> u64 {
        (u64::from(self.part) << PART_SHIFT) | (self.inner.ino() & INNER_MASK)
    }

    fn size(&self) -> Result<u64> {
        self.inner.size()
    }

    fn extent_at(&self, offset: u64) -> Result<Option<Shared>> {
        self.inner.extent_at(offset)
    }

    fn share(&self, offset: u64, ext: Shared) -> Result<bool> {
        self.inner.share(offset, ext)
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.zero_range(offset, len)
    }

    fn chunk_row(&self) -> Option<i64> {
        self.inner.chunk_row()
    }

    fn part(&self) -> Option<(u32, &dyn OpenFile)> {
        Some((self.part, self.inner.as_ref()))
    }
}

#[cfg(test)]
mod tests;
