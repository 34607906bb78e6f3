//! The thin fuser adapter: the only place that implements
//! `fuser::Filesystem`. Each method converts fuser's types, calls the core,
//! and converts the result or the error's errno back. No logic lives here,
//! beyond two guards: every handler runs under [`guarded`] (a panic answers
//! EIO), and unlink and rmdir may use the state filesystem's reserve
//! (`crate::daemon::reserve`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags as FuseOpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::daemon::reserve::Reserve;
use crate::error::Error;
use crate::fs::Core;
use crate::fs::types::{Attr, Ctx, FileKind, OpenFlags, OpenOpts, SetAttr, TimeSet, Timespec};

/// Largest read or write the kernel sends in one request (FUSE allows up to
/// 256 pages by default): 1 MiB, one chunk.
pub const MAX_IO: u32 = 1 << 20;

mod advice;
pub mod gate;

use advice::ListingAdvice;
use gate::{StartGate, Verdict};

/// Holds a request until start-up has ended (see [`gate`]). If start-up
/// failed, answers EIO, and a request of the daemon's own start-up ENOENT,
/// without reaching the core.
macro_rules! gated {
    ($self:ident, $req:ident, $reply:ident) => {
        match $self.gate.pass($req.pid()) {
            Verdict::Serve => {}
            Verdict::Failed => {
                $reply.error(Errno::EIO);
                return;
            }
            Verdict::OwnDuringStartUp => {
                $reply.error(Errno::ENOENT);
                return;
            }
        }
    };
}

/// Runs one request's handler. A panic in it must cost that request only:
/// the reply, moved into `f`, is dropped while unwinding, and fuser answers
/// a dropped reply with EIO; the panic hook has already logged the message
/// and backtrace (`crate::daemon::log`). Without this the panic would end
/// the worker thread, and the session's first worker is the main thread,
/// whose end unmounts. The daemon's shared state is behind parking_lot
/// locks, which a panic does not poison, and catalog transactions roll back
/// when dropped.
fn guarded(op: &str, pid: u32, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!("{op} from pid {pid} panicked; answered EIO and kept serving");
    }
}

/// The xattr name that makes GETXATTR panic when the daemon was started
/// with `FSD_TEST_PANIC=1`: the integration tests' only way to check that a
/// panic becomes EIO and the mount keeps serving. Without the variable the
/// name is an ordinary (absent) xattr.
const TEST_PANIC_XATTR: &[u8] = b"user.fsd.test-panic";

pub struct FuseFs {
    core: Arc<Core>,
    gate: Arc<StartGate>,
    advice: ListingAdvice,
    /// `FSD_TEST_PANIC=1` at start: see [`TEST_PANIC_XATTR`].
    test_panic: bool,
    /// Space that unlink and rmdir may use on a full state filesystem.
    reserve: Arc<Reserve>,
}

impl FuseFs {
    /// An adapter over `core` whose requests wait at `gate` until the
    /// daemon has finished starting.
    pub fn new(core: Arc<Core>, gate: Arc<StartGate>, reserve: Arc<Reserve>) -> Self {
        FuseFs {
            core,
            gate,
            advice: ListingAdvice::default(),
            test_panic: std::env::var_os("FSD_TEST_PANIC").is_some_and(|v| v == "1"),
            reserve,
        }
    }
}

fn errno(e: &Error) -> Errno {
    let n = e.errno();
    if n == libc::EIO {
        tracing::warn!("I/O error returned to a program: {e}");
    } else {
        tracing::debug!("returning errno {n}: {e}");
    }
    Errno::from_i32(n)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.mtime.to_system(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn fopen(o: OpenOpts) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(Timespec::from_system(s)),
    })
}

fn reply_entry(reply: ReplyEntry, r: crate::Result<(Attr, Duration)>) {
    match r {
        Ok((a, ttl)) => reply.entry(&ttl, &fattr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: crate::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: crate::Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for each capability on its own: an old kernel that lacks one
        // should not cost us the others.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_EXPORT_SUPPORT,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_MAX_PAGES,
            // Shared mappings of files opened with direct I/O (native files).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    /// No new FUSE worker while requests wait for start-up: see
    /// [`gate`]. The pool grows again once they are served.
    fn may_add_worker(&self) -> bool {
        self.gate.ended()
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        gated!(self, req, reply);
        guarded("lookup", req.pid(), move || {
            let r = self.core.lookup(parent.0, name.as_bytes());
            if matches!(&r, Ok((a, _)) if !matches!(a.kind, FileKind::Dir | FileKind::Symlink)) {
                self.advice.looked_up_file(req.pid());
            }
            reply_entry(reply, r);
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        gated!(self, req, reply);
        guarded("getattr", req.pid(), move || {
            match self.core.getattr(ino.0) {
                Ok((a, ttl)) => reply.attr(&ttl, &fattr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        gated!(self, req, reply);
        guarded("setattr", req.pid(), move || {
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: time_set(atime),
                mtime: time_set(mtime),
                ctime: ctime.map(Timespec::from_system),
            };
            match self.core.setattr(ino.0, &set, fh.map(|f| f.0), &ctx(req)) {
                Ok((a, ttl)) => reply.attr(&ttl, &fattr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        gated!(self, req, reply);
        guarded("readlink", req.pid(), move || {
            match self.core.readlink(ino.0) {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        gated!(self, req, reply);
        guarded("mknod", req.pid(), move || {
            let c = ctx(req);
            reply_entry(
                reply,
                self.core.dir_op(parent.0, |v, p| {
                    v.mknod(p, name.as_bytes(), mode, umask, rdev, &c)
                }),
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        gated!(self, req, reply);
        guarded("mkdir", req.pid(), move || {
            let c = ctx(req);
            reply_entry(
                reply,
                self.core.dir_op(parent.0, |v, p| {
                    v.mkdir(p, name.as_bytes(), mode, umask, &c)
                }),
            );
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        gated!(self, req, reply);
        guarded("unlink", req.pid(), move || {
            let c = ctx(req);
            reply_empty(
                reply,
                self.reserve.for_delete(|| {
                    self.core
                        .dir_op_unit(parent.0, |v, p| v.unlink(p, name.as_bytes(), &c))
                }),
            );
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        gated!(self, req, reply);
        guarded("rmdir", req.pid(), move || {
            let c = ctx(req);
            reply_empty(
                reply,
                self.reserve.for_delete(|| {
                    self.core
                        .dir_op_unit(parent.0, |v, p| v.rmdir(p, name.as_bytes(), &c))
                }),
            );
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        gated!(self, req, reply);
        guarded("symlink", req.pid(), move || {
            let c = ctx(req);
            reply_entry(
                reply,
                self.core.dir_op(parent.0, |v, p| {
                    v.symlink(p, link_name.as_bytes(), target.as_os_str().as_bytes(), &c)
                }),
            );
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("rename", req.pid(), move || {
            reply_empty(
                reply,
                self.core.rename(
                    parent.0,
                    name.as_bytes(),
                    newparent.0,
                    newname.as_bytes(),
                    flags.bits(),
                    &ctx(req),
                ),
            );
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        gated!(self, req, reply);
        guarded("link", req.pid(), move || {
            reply_entry(
                reply,
                self.core
                    .link(ino.0, newparent.0, newname.as_bytes(), &ctx(req)),
            );
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        gated!(self, req, reply);
        guarded("open", req.pid(), move || {
            match self.core.open(ino.0, OpenFlags(flags.0), &ctx(req)) {
                Ok((fh, opts)) => reply.opened(FileHandle(fh), fopen(opts)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        gated!(self, req, reply);
        guarded("read", req.pid(), move || {
            // One buffer per FUSE thread, reused: fresh memory for every read
            // would be allocated, faulted in and zeroed each time.
            thread_local! {
                static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            BUF.with(|b| {
                let mut buf = b.borrow_mut();
                match self.core.read(fh.0, offset, size, &mut buf) {
                    Ok(()) => reply.data(&buf),
                    Err(e) => reply.error(errno(&e)),
                }
            });
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        gated!(self, req, reply);
        guarded("write", req.pid(), move || {
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
                && let Err(e) = self.core.kill_privs(fh.0, &ctx(req))
            {
                return reply.error(errno(&e));
            }
            match self.core.write(fh.0, offset, data, lock_owner.map(|o| o.0)) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("flush", req.pid(), move || {
            reply_empty(reply, self.core.flush(fh.0, lock_owner.0));
        });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("release", req.pid(), move || {
            reply_empty(reply, self.core.release(fh.0));
        });
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("fsync", req.pid(), move || {
            reply_empty(reply, self.core.fsync(fh.0, datasync));
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        gated!(self, req, reply);
        guarded("opendir", req.pid(), move || {
            match self.core.opendir(ino.0) {
                // A fixed listing is cached by the kernel only when it carries
                // attributes: a names-only listing in the cache would cost a
                // later `ls -l` a LOOKUP per entry. KEEP_CACHE leaves a cached
                // listing in place for the next reader either way.
                Ok(true) if self.advice.wants_file_attrs(req.pid()) => reply.opened(
                    FileHandle(0),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Ok(true) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Ok(false) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        gated!(self, req, reply);
        guarded("readdir", req.pid(), move || {
            let r = self.core.readdir(ino.0, offset, &mut |e| {
                !reply.add(
                    INodeNo(e.attr.ino),
                    e.next,
                    kind(e.attr.kind),
                    OsStr::from_bytes(e.name),
                )
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        gated!(self, req, reply);
        guarded("readdirplus", req.pid(), move || {
            let file_attrs = self.advice.wants_file_attrs(req.pid());
            let r = self.core.readdir(ino.0, offset, &mut |e| {
                let ttl = self.core.ttl_of(e.attr.ino);
                // Node ID 0: the entry's name and type only (see advice.rs).
                let node = if file_attrs || e.attr.kind == FileKind::Dir {
                    e.attr.ino
                } else {
                    0
                };
                !reply.add(
                    INodeNo(node),
                    e.next,
                    OsStr::from_bytes(e.name),
                    &ttl,
                    &fattr(&e.attr),
                    Generation(0),
                )
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("releasedir", req.pid(), move || {
            self.core.releasedir(ino.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("fsyncdir", req.pid(), move || {
            reply.ok();
        });
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        gated!(self, req, reply);
        guarded("statfs", req.pid(), move || match self.core.statfs(ino.0) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("setxattr", req.pid(), move || {
            reply_empty(
                reply,
                self.core
                    .setxattr(ino.0, name.as_bytes(), value, flags, &ctx(req)),
            );
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        gated!(self, req, reply);
        guarded("getxattr", req.pid(), move || {
            // `ls -l` asks every file for its SELinux label and ACL. fsd stores
            // neither namespace, so answer without touching the core: this is
            // most of the cost of `ls -lR`.
            let n = name.as_bytes();
            if n.starts_with(b"security.") || n.starts_with(b"system.") {
                return reply.error(Errno::ENODATA);
            }
            if self.test_panic && n == TEST_PANIC_XATTR {
                panic!("test panic: getxattr user.fsd.test-panic with FSD_TEST_PANIC=1");
            }
            reply_xattr(reply, size, self.core.getxattr(ino.0, name.as_bytes()));
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        gated!(self, req, reply);
        guarded("listxattr", req.pid(), move || {
            let r = self.core.listxattr(ino.0).map(|names| {
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                out
            });
            reply_xattr(reply, size, r);
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        gated!(self, req, reply);
        guarded("removexattr", req.pid(), move || {
            reply_empty(
                reply,
                self.core.removexattr(ino.0, name.as_bytes(), &ctx(req)),
            );
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        gated!(self, req, reply);
        guarded("create", req.pid(), move || {
            match self.core.create(
                parent.0,
                name.as_bytes(),
                mode,
                umask,
                OpenFlags(flags),
                &ctx(req),
            ) {
                Ok((a, ttl, fh, opts)) => {
                    reply.created(&ttl, &fattr(&a), Generation(0), FileHandle(fh), fopen(opts))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        gated!(self, req, reply);
        guarded("fallocate", req.pid(), move || {
            reply_empty(reply, self.core.fallocate(fh.0, offset, length, mode));
        });
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        gated!(self, req, reply);
        guarded("lseek", req.pid(), move || {
            if offset < 0 {
                return reply.error(Errno::ENXIO);
            }
            match self.core.lseek(ino.0, offset as u64, whence) {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        gated!(self, req, reply);
        guarded("copy_file_range", req.pid(), move || {
            match self
                .core
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
            {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}
