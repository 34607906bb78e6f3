//! Native volumes: writable file trees whose metadata lives in the catalog
//! and whose data lives in the chunk store (see [`file`] for the data path).
//!
//! Each namespace operation (create, mkdir, unlink, rename, link …) checks
//! and changes the catalog inside one transaction while holding the catalog
//! connection, so it is atomic with respect to every other operation and
//! survives a daemon crash once it returns. Permission checks are the
//! kernel's (`default_permissions`); this module keeps POSIX's other rules:
//! the errors of rename and rmdir, link counts, setgid directories, times.
//!
//! Lock order, to stay free of deadlocks: the open-inode map, then an
//! inode's state, then the catalog connection.

pub mod file;
pub mod fsck;
pub mod kind;
pub mod meta;
pub mod patch;
pub mod quota;
pub mod sealer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use self::file::{Env, Files, Inode};
use self::meta::Row;
use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::ops::{DirEntry, OpenFile, Shared, VOLUME_ROOT, VolumeFs};
use crate::fs::perm;
use crate::fs::types::{
    Attr, Ctx, FileKind, OpenFlags, OpenOpts, SetAttr, StatFs, TimeSet, Timespec,
};
use crate::store::buf::ChunkBuf;
use crate::store::treehash::LEAF;

/// The virtual xattr with a regular file's Glacier tree hash.
pub const XATTR_TREEHASH: &[u8] = b"user.fsd.treehash";
/// Longest symlink target (PATH_MAX less the NUL).
const MAX_TARGET: usize = 4095;
/// Most hard links to one file, as ext4.
const MAX_LINKS: u32 = 65000;
/// Largest xattr value, as Linux (XATTR_SIZE_MAX).
const MAX_XATTR: usize = 65536;

fn now() -> i64 {
    Timespec::now().as_nanos()
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return err(ErrorKind::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return err(ErrorKind::Invalid);
    }
    Ok(())
}

struct Inner {
    files: Files,
    root: i64,
    open: Mutex<HashMap<i64, Arc<Inode>>>,
    /// Directories with open descriptors (row → count). A removed one keeps
    /// its row, with no links, until the last descriptor is closed.
    open_dirs: Mutex<HashMap<i64, u32>>,
    /// Bumped after every setattr that leaves a setuid or setgid bit, so an
    /// open file re-reads its mode before the next write that must drop
    /// them (see [`NativeFile::kill_privs`]) and otherwise skips the catalog.
    privs_gen: AtomicU64,
}

/// A native volume.
pub struct NativeVolume {
    inner: Arc<Inner>,
}

impl Inner {
    fn env(&self) -> &Arc<Env> {
        &self.files.env
    }

    fn slot(&self) -> u32 {
        self.files.slot
    }

    fn row_of(&self, local: u64) -> i64 {
        if local == VOLUME_ROOT {
            self.root
        } else {
            local as i64
        }
    }

    fn local_of(&self, row: i64) -> u64 {
        if row == self.root {
            VOLUME_ROOT
        } else {
            row as u64
        }
    }

    fn get(&self, c: &rusqlite::Connection, row: i64) -> Result<Row> {
        meta::get(c, self.slot(), row)
    }

    /// Attributes of a row, with the live size and times of an open file.
    fn attr(&self, row: &Row, stored: Option<u64>) -> Attr {
        let open = self.open.lock().get(&row.ino).cloned();
        match open {
            Some(node) => {
                let st = node.st.lock();
                let mut r = row.clone();
                r.size = st.size;
                r.mtime = st.mtime;
                r.ctime = st.ctime;
                r.attr(self.local_of(row.ino), st.stored())
            }
            None => {
                let stored = stored.unwrap_or_else(|| {
                    if row.kind() == FileKind::File {
                        meta::stored_bytes(&self.env().catalog.conn(), row.ino).unwrap_or(row.size)
                    } else {
                        0
                    }
                });
                row.attr(self.local_of(row.ino), stored)
            }
        }
    }

    /// Checks that setting xattr `name` to `value` on `row` (replacing one
    /// of `old` bytes) keeps the inode within `limits.xattr_bytes_per_inode`
    /// (ENOSPC past it, as ext4 when the inode's xattr space is full) and
    /// the volume within its quota (EDQUOT), and counts the growth. Xattrs
    /// are stored in the catalog, so without this one file could hold any
    /// number of them outside every account.
    fn xattr_room(
        &self,
        c: &rusqlite::Connection,
        row: i64,
        old: u64,
        name: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let new = (name.len() + value.len()) as u64;
        let limit = self.env().limits.xattr_bytes_per_inode;
        let total = meta::xattr_bytes(c, row)?.saturating_sub(old) + new;
        if total > limit {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "volume {}: inode {row}: xattrs would take {total} bytes, more than \
                     limits.xattr_bytes_per_inode ({limit})",
                    self.files.volume
                ),
            ));
        }
        if new > old {
            self.files.quota.grow(
                || c,
                self.slot(),
                new - old,
                || format!("volume {}: inode {row}: xattr", self.files.volume),
            )?;
        } else {
            self.files.quota.shrink(old - new);
        }
        Ok(())
    }

    /// The open state of `row`, loading it if needed; counts one user.
    fn acquire(&self, row: i64) -> Result<Arc<Inode>> {
        let mut map = self.open.lock();
        if let Some(n) = map.get(&row) {
            n.users.fetch_add(1, Ordering::AcqRel);
            return Ok(n.clone());
        }
        let n = Inode::load(&self.env().catalog, self.slot(), row)?;
        n.users.store(1, Ordering::Release);
        map.insert(row, n.clone());
        Ok(n)
    }

    /// Gives up one user of `node`: commits its data, and when it was the
    /// last user drops the state (deleting the inode if it was unlinked).
    fn release(&self, node: &Arc<Inode>) -> Result<()> {
        let unlinked = node.unlinked.load(Ordering::Acquire);
        let flushed = if unlinked {
            Ok(())
        } else {
            self.files.flush(node)
        };
        let mut map = self.open.lock();
        if node.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return flushed;
        }
        map.remove(&node.ino);
        drop(map);
        if node.unlinked.load(Ordering::Acquire) {
            self.files.discard_inode(node);
            meta::delete(&self.env().catalog.conn(), node.ino)?;
            file::collect_soon(self.env());
        }
        flushed
    }

    /// Runs `f` with the open state of `row` held for its duration.
    fn with_inode<T>(&self, row: i64, f: impl FnOnce(&Arc<Inode>) -> Result<T>) -> Result<T> {
        let node = self.acquire(row)?;
        let r = f(&node);
        let rel = self.release(&node);
        let v = r?;
        rel?;
        Ok(v)
    }

    /// Owner and mode of a new inode in `parent` (setgid directories pass
    /// their group on, and their setgid bit to new directories).
    fn new_owner(&self, parent: &Row, mode: u32, ctx: &Ctx) -> (u32, u32, u32) {
        let mut mode = mode;
        let gid = if parent.mode & libc::S_ISGID != 0 {
            if mode & libc::S_IFMT == libc::S_IFDIR {
                mode |= libc::S_ISGID;
            }
            parent.gid
        } else {
            ctx.gid
        };
        (ctx.uid, gid, mode)
    }

    /// Creates an inode named `name` in `parent`.
    fn make(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        target: Option<&[u8]>,
        ctx: &Ctx,
    ) -> Result<Row> {
        check_name(name)?;
        let p = self.row_of(parent);
        let mut conn = self.env().catalog.conn();
        let tx = conn.transaction()?;
        let prow = self.get(&tx, p)?;
        if !prow.is_dir() {
            return err(ErrorKind::NotDir);
        }
        if meta::lookup(&tx, p, name)?.is_some() {
            return err(ErrorKind::Exists);
        }
        let (uid, gid, mode) = self.new_owner(&prow, mode, ctx);
        let t = now();
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let mut row = Row {
            ino: 0,
            mode,
            uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: target.map(|t| t.len() as u64).unwrap_or(0),
            rdev,
            atime: t,
            mtime: t,
            ctime: t,
            target: target.map(<[u8]>::to_vec),
        };
        row.ino = meta::insert(&tx, self.slot(), &row)?;
        meta::link(&tx, p, name, row.ino)?;
        meta::touch_dir(&tx, p, t, if is_dir { 1 } else { 0 })?;
        tx.commit()?;
        Ok(row)
    }

    /// Drops one link of `child` after its entry was removed in `tx`;
    /// deletes the inode when no names and no users are left.
    fn drop_link(
        &self,
        tx: &rusqlite::Connection,
        child: &mut Row,
        open: &HashMap<i64, Arc<Inode>>,
        open_dirs: &HashMap<i64, u32>,
    ) -> Result<()> {
        let t = now();
        child.nlink = if child.is_dir() {
            0
        } else {
            child.nlink.saturating_sub(1)
        };
        child.ctime = t;
        if child.nlink == 0 {
            if let Some(node) = open.get(&child.ino) {
                node.unlinked.store(true, Ordering::Release);
                meta::update(tx, child)?;
            } else if open_dirs.contains_key(&child.ino) {
                // Open directories stay usable (fstat, fchmod) until closed.
                meta::update(tx, child)?;
            } else {
                meta::delete(tx, child.ino)?;
            }
        } else {
            meta::update(tx, child)?;
        }
        Ok(())
    }

    /// Drops the setuid and setgid bits of `row` as a write or `O_TRUNC`
    /// open by `ctx` does on ext4 ([`perm::mode_without_privs`]); root
    /// (CAP_FSETID) keeps them.
    fn drop_privs(&self, row: i64, ctx: &Ctx) -> Result<()> {
        if ctx.uid == 0 {
            return Ok(());
        }
        let mut conn = self.env().catalog.conn();
        let tx = conn.transaction()?;
        let mut r = self.get(&tx, row)?;
        if r.is_dir() || r.mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(());
        }
        let mode = perm::mode_without_privs(r.mode, || {
            perm::caller_in_group(ctx.uid, ctx.gid, ctx.pid, r.gid)
        });
        if mode != r.mode {
            r.mode = mode;
            r.ctime = now();
            meta::update(&tx, &r)?;
            tx.commit()?;
            drop(conn);
            Inner::open_ctime(&self.open.lock(), row, r.ctime);
        }
        Ok(())
    }

    /// Passes the ctime a namespace or xattr call just committed on to the
    /// open state of `ino`, if it is open: stat shows an open file's times
    /// from there, and its next commit writes them. Called after the
    /// catalog connection is released (lock order).
    fn open_ctime(open: &HashMap<i64, Arc<Inode>>, ino: i64, t: i64) {
        if let Some(node) = open.get(&ino) {
            let mut st = node.st.lock();
            st.ctime = st.ctime.max(t);
        }
    }

    fn is_ancestor(&self, c: &rusqlite::Connection, anc: i64, mut dir: i64) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == anc {
                return Ok(true);
            }
            if dir == self.root {
                return Ok(false);
            }
            match meta::parent_of(c, dir)? {
                Some(p) => dir = p,
                None => return Ok(false),
            }
        }
        Ok(false)
    }
}

/// An open native file.
pub struct NativeFile {
    vol: Arc<Inner>,
    node: Arc<Inode>,
    local: u64,
    writable: bool,
    /// The volume's `privs_gen` when this descriptor last made sure the
    /// file has no setuid/setgid bit a write must drop; `u64::MAX` before.
    privs_seen: AtomicU64,
}

impl OpenFile for NativeFile {
    /// Direct I/O by default (see `native.direct_io`): the chunk files are
    /// in the hot tier's page cache already. Pages a shared mapping cached
    /// are dropped at open, as the kernel does for any file opened without
    /// `keep_cache`.
    fn open_opts(&self) -> OpenOpts {
        let direct_io = self.vol.env().direct_io;
        OpenOpts {
            keep_cache: !direct_io,
            direct_io,
        }
    }

    fn read(&self, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        self.vol.files.read(&self.node, offset, size, out)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<u32> {
        if !self.writable {
            return err(ErrorKind::Invalid);
        }
        self.vol.files.write(&self.node, offset, data)
    }

    fn write_chunk(&self, offset: u64, data: ChunkBuf) -> Result<()> {
        if !self.writable {
            return err(ErrorKind::Invalid);
        }
        self.vol.files.write_chunk(&self.node, offset, data)
    }

    fn flush(&self) -> Result<()> {
        self.vol.files.flush(&self.node)
    }

    fn fsync(&self, _datasync: bool) -> Result<()> {
        self.vol.files.fsync(&self.node)
    }

    fn release(&self) -> Result<()> {
        self.vol.release(&self.node)
    }

    fn ino(&self) -> u64 {
        self.local
    }

    fn size(&self) -> Result<u64> {
        Ok(self.node.st.lock().size)
    }

    fn extent_at(&self, offset: u64) -> Result<Option<Shared>> {
        self.vol.files.extent_at(&self.node, offset)
    }

    fn share(&self, offset: u64, ext: Shared) -> Result<bool> {
        if !self.writable {
            return err(ErrorKind::Invalid);
        }
        self.vol.files.share(&self.node, offset, ext)?;
        Ok(true)
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return err(ErrorKind::Invalid);
        }
        if len == 0 {
            return Ok(());
        }
        self.vol
            .files
            .fallocate(&self.node, offset, len, libc::FALLOC_FL_ZERO_RANGE)
    }

    fn chunk_row(&self) -> Option<i64> {
        Some(self.node.ino)
    }

    /// A write by a caller without CAP_FSETID (FUSE_WRITE_KILL_SUIDGID):
    /// drops setuid/setgid as ext4 does. After one check the catalog is
    /// read again only once a setattr may have set a bit anew.
    fn kill_privs(&self, ctx: &Ctx) -> Result<()> {
        let g = self.vol.privs_gen.load(Ordering::Acquire);
        if self.privs_seen.load(Ordering::Acquire) == g {
            return Ok(());
        }
        self.vol.drop_privs(self.node.ino, ctx)?;
        self.privs_seen.store(g, Ordering::Release);
        Ok(())
    }
}

impl NativeFile {
    /// The volume's slot.
    pub fn slot(&self) -> u32 {
        self.vol.files.slot
    }
}

impl NativeVolume {
    pub fn new(env: Arc<Env>, slot: u32, root: i64, id: String) -> Self {
        NativeVolume {
            inner: Arc::new(Inner {
                files: Files {
                    env,
                    slot,
                    volume: id,
                    quota: Default::default(),
                },
                root,
                open: Mutex::new(HashMap::new()),
                open_dirs: Mutex::new(HashMap::new()),
                privs_gen: AtomicU64::new(0),
            }),
        }
    }

    /// Creates the root directory row of a new volume inside `tx`.
    pub fn create_root(tx: &rusqlite::Connection, slot: u32, uid: u32, gid: u32) -> Result<i64> {
        let t = now();
        meta::insert(
            tx,
            slot,
            &Row {
                ino: 0,
                mode: libc::S_IFDIR | 0o755,
                uid,
                gid,
                nlink: 2,
                size: 0,
                rdev: 0,
                atime: t,
                mtime: t,
                ctime: t,
                target: None,
            },
        )
    }

    /// Number of inodes with open state (descriptors or dirty data).
    pub fn open_inodes(&self) -> usize {
        self.inner.open.lock().len()
    }

    /// The file-data layer (tests and the offload engine).
    pub fn files(&self) -> &Files {
        &self.inner.files
    }

    fn open_file(&self, row: i64, flags: OpenFlags, ctx: &Ctx) -> Result<Arc<dyn OpenFile>> {
        // An O_TRUNC open drops setuid/setgid as a truncate does; FUSE's
        // atomic O_TRUNC leaves that to the filesystem.
        if flags.truncate() {
            self.inner.drop_privs(row, ctx)?;
        }
        let node = self.inner.acquire(row)?;
        // O_TRUNC truncates even with O_RDONLY, as on Linux's own
        // filesystems (the kernel has checked write permission).
        if flags.truncate()
            && let Err(e) = self.inner.files.truncate(&node, 0)
        {
            let _ = self.inner.release(&node);
            return Err(e);
        }
        Ok(Arc::new(NativeFile {
            vol: self.inner.clone(),
            local: self.inner.local_of(row),
            node,
            writable: flags.writable(),
            privs_seen: AtomicU64::new(u64::MAX),
        }))
    }
}

impl VolumeFs for NativeVolume {
    fn getattr(&self, ino: u64) -> Result<Attr> {
        let row = self
            .inner
            .get(&self.inner.env().catalog.conn(), self.inner.row_of(ino))?;
        Ok(self.inner.attr(&row, None))
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > 255 {
            return err(ErrorKind::NameTooLong);
        }
        let row = {
            let conn = self.inner.env().catalog.conn();
            let p = self.inner.row_of(parent);
            let prow = self.inner.get(&conn, p)?;
            if !prow.is_dir() {
                return err(ErrorKind::NotDir);
            }
            let child = meta::lookup(&conn, p, name)?
                .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
            self.inner.get(&conn, child)?
        };
        Ok(self.inner.attr(&row, None))
    }

    fn parent(&self, ino: u64) -> Result<u64> {
        let row = self.inner.row_of(ino);
        if row == self.inner.root {
            return Ok(VOLUME_ROOT);
        }
        let p = meta::parent_of(&self.inner.env().catalog.conn(), row)?.unwrap_or(self.inner.root);
        Ok(self.inner.local_of(p))
    }

    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let dir = self.inner.row_of(ino);
        let mut after = offset as i64;
        loop {
            let page = {
                let conn = self.inner.env().catalog.conn();
                let d = self.inner.get(&conn, dir)?;
                if !d.is_dir() {
                    return err(ErrorKind::NotDir);
                }
                meta::list(&conn, dir, after, 256)?
            };
            if page.is_empty() {
                return Ok(());
            }
            for (id, name, row) in &page {
                let stored = if row.kind() == FileKind::File {
                    Some(row.size)
                } else {
                    Some(0)
                };
                let attr = self.inner.attr(row, stored);
                if !sink(DirEntry {
                    name,
                    attr,
                    next: *id as u64,
                }) {
                    return Ok(());
                }
                after = *id;
            }
        }
    }

    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let row = self
            .inner
            .get(&self.inner.env().catalog.conn(), self.inner.row_of(ino))?;
        row.target
            .ok_or_else(|| Error::kind_only(ErrorKind::Invalid))
    }

    fn busy_inodes(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.inner.open.lock().keys().copied().collect();
        v.extend(self.inner.open_dirs.lock().keys().copied());
        v
    }

    fn opendir(&self, ino: u64) -> Result<()> {
        let r = self.inner.row_of(ino);
        // Catalog first, released before the map (lock order: open maps,
        // then the catalog).
        let row = self.inner.get(&self.inner.env().catalog.conn(), r)?;
        if !row.is_dir() {
            return err(ErrorKind::NotDir);
        }
        *self.inner.open_dirs.lock().entry(r).or_default() += 1;
        Ok(())
    }

    fn releasedir(&self, ino: u64) {
        let r = self.inner.row_of(ino);
        {
            let mut dirs = self.inner.open_dirs.lock();
            match dirs.get_mut(&r) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                Some(_) => {
                    dirs.remove(&r);
                }
                None => return,
            }
        }
        // The last descriptor of a removed directory: now it can go.
        let conn = self.inner.env().catalog.conn();
        if let Ok(row) = self.inner.get(&conn, r)
            && row.nlink == 0
        {
            let _ = meta::delete(&conn, r);
        }
    }

    fn open(&self, ino: u64, flags: OpenFlags, ctx: &Ctx) -> Result<Arc<dyn OpenFile>> {
        let r = self.inner.row_of(ino);
        let row = self.inner.get(&self.inner.env().catalog.conn(), r)?;
        match row.kind() {
            FileKind::Dir => return err(ErrorKind::IsDir),
            FileKind::File => {}
            _ => return err(ErrorKind::Unsupported),
        }
        self.open_file(r, flags, ctx)
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
        let mode = libc::S_IFREG | (mode & 0o7777 & !umask);
        let row = self.inner.make(parent, name, mode, 0, None, ctx)?;
        let f = self.open_file(row.ino, flags, ctx)?;
        Ok((self.inner.attr(&row, Some(0)), f))
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
        let kind = mode & libc::S_IFMT;
        let kind = if kind == 0 { libc::S_IFREG } else { kind };
        if ![
            libc::S_IFREG,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ]
        .contains(&kind)
        {
            return err(ErrorKind::Invalid);
        }
        let row = self.inner.make(
            parent,
            name,
            kind | (mode & 0o7777 & !umask),
            u64::from(rdev),
            None,
            ctx,
        )?;
        Ok(self.inner.attr(&row, Some(0)))
    }

    fn mkdir(&self, parent: u64, name: &[u8], mode: u32, umask: u32, ctx: &Ctx) -> Result<Attr> {
        let row = self.inner.make(
            parent,
            name,
            libc::S_IFDIR | (mode & 0o7777 & !umask),
            0,
            None,
            ctx,
        )?;
        Ok(self.inner.attr(&row, Some(0)))
    }

    fn symlink(&self, parent: u64, name: &[u8], target: &[u8], ctx: &Ctx) -> Result<Attr> {
        if target.len() > MAX_TARGET {
            return err(ErrorKind::NameTooLong);
        }
        if target.is_empty() {
            return err(ErrorKind::NotFound);
        }
        let row = self
            .inner
            .make(parent, name, libc::S_IFLNK | 0o777, 0, Some(target), ctx)?;
        Ok(self.inner.attr(&row, Some(0)))
    }

    fn link(&self, ino: u64, newparent: u64, newname: &[u8], _ctx: &Ctx) -> Result<Attr> {
        check_name(newname)?;
        let src = self.inner.row_of(ino);
        let np = self.inner.row_of(newparent);
        let row = {
            let mut conn = self.inner.env().catalog.conn();
            let tx = conn.transaction()?;
            let mut row = self.inner.get(&tx, src)?;
            if row.is_dir() {
                return err(ErrorKind::NotPermitted);
            }
            if row.nlink == 0 {
                return err(ErrorKind::NotFound);
            }
            if row.nlink >= MAX_LINKS {
                return err(ErrorKind::TooManyLinks);
            }
            if !self.inner.get(&tx, np)?.is_dir() {
                return err(ErrorKind::NotDir);
            }
            meta::link(&tx, np, newname, src)?;
            let t = now();
            row.nlink += 1;
            row.ctime = t;
            meta::update(&tx, &row)?;
            meta::touch_dir(&tx, np, t, 0)?;
            tx.commit()?;
            row
        };
        Inner::open_ctime(&self.inner.open.lock(), src, row.ctime);
        Ok(self.inner.attr(&row, None))
    }

    fn unlink(&self, parent: u64, name: &[u8], _ctx: &Ctx) -> Result<()> {
        let p = self.inner.row_of(parent);
        let open = self.inner.open.lock();
        let dirs = self.inner.open_dirs.lock();
        let changed = {
            let mut conn = self.inner.env().catalog.conn();
            let tx = conn.transaction()?;
            let child =
                meta::lookup(&tx, p, name)?.ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
            let mut row = self.inner.get(&tx, child)?;
            if row.is_dir() {
                return err(ErrorKind::IsDir);
            }
            meta::unlink(&tx, p, name)?;
            self.inner.drop_link(&tx, &mut row, &open, &dirs)?;
            meta::touch_dir(&tx, p, now(), 0)?;
            tx.commit()?;
            (row.ino, row.ctime)
        };
        Inner::open_ctime(&open, changed.0, changed.1);
        drop(dirs);
        drop(open);
        file::collect_soon(self.inner.env());
        Ok(())
    }

    fn rmdir(&self, parent: u64, name: &[u8], _ctx: &Ctx) -> Result<()> {
        let p = self.inner.row_of(parent);
        let dirs = self.inner.open_dirs.lock();
        let mut conn = self.inner.env().catalog.conn();
        let tx = conn.transaction()?;
        let child =
            meta::lookup(&tx, p, name)?.ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        let row = self.inner.get(&tx, child)?;
        if !row.is_dir() {
            return err(ErrorKind::NotDir);
        }
        if meta::has_children(&tx, child)? {
            return err(ErrorKind::NotEmpty);
        }
        meta::unlink(&tx, p, name)?;
        let mut row = row;
        self.inner
            .drop_link(&tx, &mut row, &HashMap::new(), &dirs)?;
        meta::touch_dir(&tx, p, now(), -1)?;
        tx.commit()?;
        Ok(())
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
        check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let known = libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 || (exchange && (noreplace || whiteout)) {
            return err(ErrorKind::Invalid);
        }
        let (p, np) = (self.inner.row_of(parent), self.inner.row_of(newparent));
        let open = self.inner.open.lock();
        let dirs = self.inner.open_dirs.lock();
        // Inodes whose ctime the rename set: (row, ctime).
        let touched = {
            let mut conn = self.inner.env().catalog.conn();
            let tx = conn.transaction()?;
            let src =
                meta::lookup(&tx, p, name)?.ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
            let mut srow = self.inner.get(&tx, src)?;
            if !self.inner.get(&tx, np)?.is_dir() {
                return err(ErrorKind::NotDir);
            }
            let dst = meta::lookup(&tx, np, newname)?;
            let t = now();
            // A directory cannot move below itself.
            if srow.is_dir() && p != np && self.inner.is_ancestor(&tx, src, np)? {
                return err(ErrorKind::Invalid);
            }
            if exchange {
                let dst = dst.ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
                let mut drow = self.inner.get(&tx, dst)?;
                if drow.is_dir() && p != np && self.inner.is_ancestor(&tx, dst, p)? {
                    return err(ErrorKind::Invalid);
                }
                meta::relink(&tx, p, name, dst)?;
                meta::relink(&tx, np, newname, src)?;
                if p != np && srow.is_dir() != drow.is_dir() {
                    let d = if srow.is_dir() { 1 } else { -1 };
                    meta::touch_dir(&tx, np, t, d)?;
                    meta::touch_dir(&tx, p, t, -d)?;
                } else {
                    meta::touch_dir(&tx, np, t, 0)?;
                    meta::touch_dir(&tx, p, t, 0)?;
                }
                srow.ctime = t;
                drow.ctime = t;
                meta::update(&tx, &srow)?;
                meta::update(&tx, &drow)?;
                tx.commit()?;
                drop(conn);
                Inner::open_ctime(&open, src, t);
                Inner::open_ctime(&open, dst, t);
                return Ok(());
            }
            let mut touched = vec![(src, t)];
            if let Some(dst) = dst {
                if noreplace {
                    return err(ErrorKind::Exists);
                }
                if dst == src {
                    // Two names of one file: POSIX says do nothing.
                    return Ok(());
                }
                let mut drow = self.inner.get(&tx, dst)?;
                match (srow.is_dir(), drow.is_dir()) {
                    (true, false) => return err(ErrorKind::NotDir),
                    (false, true) => return err(ErrorKind::IsDir),
                    (true, true) if meta::has_children(&tx, dst)? => {
                        return err(ErrorKind::NotEmpty);
                    }
                    _ => {}
                }
                meta::unlink(&tx, np, newname)?;
                if drow.is_dir() {
                    meta::touch_dir(&tx, np, t, -1)?;
                }
                self.inner.drop_link(&tx, &mut drow, &open, &dirs)?;
                touched.push((drow.ino, drow.ctime));
            }
            meta::unlink(&tx, p, name)?;
            meta::link(&tx, np, newname, src)?;
            if whiteout {
                // RENAME_WHITEOUT (overlayfs; the kernel checked CAP_MKNOD):
                // a 0:0 character device takes the old name, owned as a
                // new inode of the caller's, as ext4 makes it.
                let prow = self.inner.get(&tx, p)?;
                let (uid, gid, mode) = self.inner.new_owner(&prow, libc::S_IFCHR, ctx);
                let wo = Row {
                    ino: 0,
                    mode,
                    uid,
                    gid,
                    nlink: 1,
                    size: 0,
                    rdev: 0,
                    atime: t,
                    mtime: t,
                    ctime: t,
                    target: None,
                };
                let ino = meta::insert(&tx, self.inner.slot(), &wo)?;
                meta::link(&tx, p, name, ino)?;
            }
            let d = if srow.is_dir() && p != np { 1 } else { 0 };
            meta::touch_dir(&tx, p, t, -d)?;
            meta::touch_dir(&tx, np, t, d)?;
            srow.ctime = t;
            meta::update(&tx, &srow)?;
            tx.commit()?;
            touched
        };
        for (ino, t) in touched {
            Inner::open_ctime(&open, ino, t);
        }
        drop(dirs);
        drop(open);
        file::collect_soon(self.inner.env());
        Ok(())
    }

    fn setattr(
        &self,
        ino: u64,
        set: &SetAttr,
        _fh: Option<&dyn OpenFile>,
        ctx: &Ctx,
    ) -> Result<Attr> {
        let r = self.inner.row_of(ino);
        if let Some(size) = set.size {
            let kind = self.inner.get(&self.inner.env().catalog.conn(), r)?.kind();
            match kind {
                FileKind::Dir => return err(ErrorKind::IsDir),
                FileKind::File => {}
                _ => return err(ErrorKind::Invalid),
            }
            self.inner
                .with_inode(r, |n| self.inner.files.truncate(n, size))?;
        }
        let t = now();
        let resolve = |ts: TimeSet| match ts {
            TimeSet::Now => t,
            TimeSet::At(x) => x.as_nanos(),
        };
        let row = {
            let mut conn = self.inner.env().catalog.conn();
            let tx = conn.transaction()?;
            let mut row = self.inner.get(&tx, r)?;
            if let Some(m) = set.mode {
                row.mode = (row.mode & libc::S_IFMT) | (m & 0o7777);
            }
            // A truncate or chown by a caller without CAP_FSETID drops
            // setuid/setgid. The kernel sends the new mode itself except
            // for setgid without group execute held by a non-member of the
            // file's group (its old group, for chown).
            if ctx.uid != 0
                && !row.is_dir()
                && (set.size.is_some() || set.uid.is_some() || set.gid.is_some())
                && row.mode & (libc::S_ISUID | libc::S_ISGID) != 0
            {
                let old_gid = row.gid;
                row.mode = perm::mode_without_privs(row.mode, || {
                    perm::caller_in_group(ctx.uid, ctx.gid, ctx.pid, old_gid)
                });
            }
            if let Some(u) = set.uid {
                row.uid = u;
            }
            if let Some(g) = set.gid {
                row.gid = g;
            }
            if let Some(a) = set.atime {
                row.atime = resolve(a);
            }
            if let Some(m) = set.mtime {
                row.mtime = resolve(m);
            }
            row.ctime = set.ctime.map(|c| c.as_nanos()).unwrap_or(t);
            if set.size.is_some() {
                // The truncate committed size and times; keep them.
                let cur = self.inner.get(&tx, r)?;
                row.size = cur.size;
                if set.mtime.is_none() {
                    row.mtime = cur.mtime;
                }
            }
            meta::update(&tx, &row)?;
            tx.commit()?;
            row
        };
        if row.mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            self.inner.privs_gen.fetch_add(1, Ordering::AcqRel);
        }
        // An open file commits its own times at the next flush. Pass on
        // what this call set; an mtime it did not set stays the pending
        // write's, which is newer than the catalog's.
        if let Some(node) = self.inner.open.lock().get(&r).cloned() {
            let mut st = node.st.lock();
            if set.mtime.is_some() {
                st.mtime = row.mtime;
            }
            st.ctime = row.ctime;
        }
        Ok(self.inner.attr(&row, None))
    }

    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let r = self.inner.row_of(ino);
        if name == XATTR_TREEHASH {
            let kind = self.inner.get(&self.inner.env().catalog.conn(), r)?.kind();
            if kind != FileKind::File {
                return err(ErrorKind::NoAttr);
            }
            let h = self
                .inner
                .with_inode(r, |n| self.inner.files.tree_hash(n))?;
            return Ok(hex::encode(h).into_bytes());
        }
        let conn = self.inner.env().catalog.conn();
        self.inner.get(&conn, r)?;
        meta::xattr(&conn, r, name)?.ok_or_else(|| Error::kind_only(ErrorKind::NoAttr))
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let conn = self.inner.env().catalog.conn();
        let r = self.inner.row_of(ino);
        self.inner.get(&conn, r)?;
        meta::xattr_names(&conn, r)
    }

    fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32, _ctx: &Ctx) -> Result<()> {
        if name.starts_with(b"user.fsd.") {
            return err(ErrorKind::NotPermitted);
        }
        // ACLs (system.*) are not enforced and labels (security.*) not
        // kept; refusing them is honest, and lets the adapter answer
        // `ls -l`'s queries for them without a lookup.
        if name.starts_with(b"system.") || name.starts_with(b"security.") {
            return err(ErrorKind::Unsupported);
        }
        if name.is_empty() || name.len() > 255 {
            return err(ErrorKind::Range);
        }
        if value.len() > MAX_XATTR {
            return Err(Error::new(
                ErrorKind::TooBig,
                "xattr value larger than 64 KiB",
            ));
        }
        let r = self.inner.row_of(ino);
        let mut conn = self.inner.env().catalog.conn();
        let tx = conn.transaction()?;
        let mut row = self.inner.get(&tx, r)?;
        let old = meta::xattr(&tx, r, name)?.map(|v| (name.len() + v.len()) as u64);
        let exists = old.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return err(ErrorKind::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return err(ErrorKind::NoAttr);
        }
        self.inner
            .xattr_room(&tx, r, old.unwrap_or(0), name, value)?;
        meta::set_xattr(&tx, r, name, value)?;
        row.ctime = now();
        meta::update(&tx, &row)?;
        tx.commit()?;
        drop(conn);
        Inner::open_ctime(&self.inner.open.lock(), r, row.ctime);
        Ok(())
    }

    fn removexattr(&self, ino: u64, name: &[u8], _ctx: &Ctx) -> Result<()> {
        if name.starts_with(b"user.fsd.") {
            return err(ErrorKind::NotPermitted);
        }
        let r = self.inner.row_of(ino);
        let mut conn = self.inner.env().catalog.conn();
        let tx = conn.transaction()?;
        let mut row = self.inner.get(&tx, r)?;
        let old = meta::xattr(&tx, r, name)?.map_or(0, |v| (name.len() + v.len()) as u64);
        if !meta::remove_xattr(&tx, r, name)? {
            return err(ErrorKind::NoAttr);
        }
        self.inner.files.quota.shrink(old);
        row.ctime = now();
        meta::update(&tx, &row)?;
        tx.commit()?;
        drop(conn);
        Inner::open_ctime(&self.inner.open.lock(), r, row.ctime);
        Ok(())
    }

    fn statfs(&self) -> Result<StatFs> {
        self.inner.env().store.statfs()
    }

    fn fallocate(&self, fh: &dyn OpenFile, offset: u64, len: u64, mode: i32) -> Result<()> {
        let r = self.inner.row_of(fh.ino());
        self.inner
            .with_inode(r, |n| self.inner.files.fallocate(n, offset, len, mode))
    }

    fn lseek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        let r = self.inner.row_of(ino);
        self.inner
            .with_inode(r, |n| self.inner.files.seek(n, offset, whence))
    }
}

/// Chunk size, re-exported for tests and the offload engine.
pub const CHUNK: usize = LEAF;
