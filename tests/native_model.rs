//! Model-based test of native volumes: one seeded random sequence of file
//! operations runs against a native volume and against a directory on the
//! local disk (the model), and after every operation the two must agree on
//! success or errno and on the data returned. Every 100 operations and at
//! the end the whole trees are compared: names, types, sizes, modes, owners,
//! link counts and hard-link structure, symlink targets, contents and user
//! xattrs. Afterwards `tokenctl fsck` must find the catalog and the chunk
//! store consistent.
//!
//! Timestamps are not compared in general (the two sides run the same
//! operation microseconds apart), with one exception: `utimensat` sets
//! mtimes in an otherwise impossible range (2001-2004), and wherever either
//! side shows an mtime in that range both must show exactly the same one.
//! So an explicit utimens must survive everything that should not touch the
//! mtime, and everything that should touch it must do so on both sides.
//!
//! Replay: a failure prints the seed and operation index and writes the
//! whole operation log to `target/tmp/`; `FSD_MODEL_SEEDS=<seed>
//! FSD_MODEL_OPS=<index+1>` reruns exactly that sequence (the sequence
//! depends on the seed and on the model's state only, never on fsd).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Few names in few levels, so operations collide and error paths are
/// taken often.
const NAMES: &[&str] = &["a", "b", "c", "d"];
/// Descriptors kept open across operations.
const SLOTS: usize = 4;
const XATTRS: &[&str] = &["user.one", "user.two", "user.three"];
/// mtimes set by Utimens lie in [SPECIAL_LO, SPECIAL_HI): no other operation
/// can produce them, so wherever one is seen both sides must agree exactly.
const SPECIAL_LO: i64 = 1_000_000_000;
const SPECIAL_HI: i64 = 1_100_000_000;
const DEFAULT_SEEDS: &[u64] = &[1, 2, 3, 4, 5];
const DEFAULT_OPS: usize = 2000;
const CHECK_EVERY: usize = 100;

// ---------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone, Copy)]
enum Fill {
    Pattern(u64),
    Zero,
}

impl Fill {
    fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Fill::Pattern(s) => pattern(s, len),
            Fill::Zero => vec![0; len],
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        slot: usize,
        path: String,
        flags: Flags,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    Pwrite {
        slot: usize,
        off: u64,
        len: usize,
        fill: Fill,
    },
    Write {
        slot: usize,
        len: usize,
        fill: Fill,
    },
    Pread {
        slot: usize,
        off: u64,
        len: usize,
    },
    Read {
        slot: usize,
        len: usize,
    },
    Lseek {
        slot: usize,
        off: i64,
        whence: i32,
    },
    /// SEEK_DATA / SEEK_HOLE: granularity differs (1 MiB on fsd, 4 KiB on
    /// ext4), so fsd's answer is checked for soundness against the model's
    /// bytes rather than compared.
    SeekHole {
        slot: usize,
        off: u64,
        data: bool,
    },
    Ftruncate {
        slot: usize,
        len: u64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Fsync {
        slot: usize,
    },
    /// copy_file_range(2) between two open descriptors (perhaps the same
    /// file): the offload engine's path, whole chunks taken over as
    /// buffers or shared, the rest copied.
    CopyRange {
        from: usize,
        to: usize,
        off_in: u64,
        off_out: u64,
        len: usize,
    },
    Fstat {
        slot: usize,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    Utimens {
        path: String,
        atime: Option<(i64, i64)>,
        mtime: (i64, i64),
        nofollow: bool,
    },
    Stat {
        path: String,
        nofollow: bool,
    },
    Readdir {
        path: String,
    },
    Setxattr {
        path: String,
        name: &'static str,
        len: usize,
        seed: u64,
        flags: i32,
        nofollow: bool,
    },
    Getxattr {
        path: String,
        name: &'static str,
        nofollow: bool,
    },
    Removexattr {
        path: String,
        name: &'static str,
        nofollow: bool,
    },
    Listxattr {
        path: String,
        nofollow: bool,
    },
}

/// Open flags, printed symbolically in the op log.
#[derive(Clone, Copy)]
struct Flags(i32);

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let acc = match self.0 & libc::O_ACCMODE {
            libc::O_RDONLY => "O_RDONLY",
            libc::O_WRONLY => "O_WRONLY",
            _ => "O_RDWR",
        };
        write!(f, "{acc}")?;
        for (bit, name) in [
            (libc::O_CREAT, "O_CREAT"),
            (libc::O_EXCL, "O_EXCL"),
            (libc::O_TRUNC, "O_TRUNC"),
            (libc::O_APPEND, "O_APPEND"),
        ] {
            if self.0 & bit != 0 {
                write!(f, "|{name}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Results.

type Res<T> = Result<T, i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(r: libc::c_int) -> Res<i32> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn check_size(r: isize) -> Res<usize> {
    if r < 0 { Err(errno()) } else { Ok(r as usize) }
}

fn errname(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EBADF => "EBADF",
        libc::ENODATA => "ENODATA",
        libc::ENXIO => "ENXIO",
        libc::ELOOP => "ELOOP",
        libc::EIO => "EIO",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EFBIG => "EFBIG",
        libc::ERANGE => "ERANGE",
        libc::EBUSY => "EBUSY",
        libc::EXDEV => "EXDEV",
        libc::ENOTCONN => "ENOTCONN",
        _ => "",
    };
    format!("{name}({e})")
}

/// Bytes that print as length and hash, not as a wall of numbers.
#[derive(PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes sha256 {}",
            self.0.len(),
            &hex::encode(Sha256::digest(&self.0))[..16]
        )
    }
}

/// The parts of a `stat` both sides must agree on.
#[derive(Debug, Clone)]
struct St {
    kind: char,
    perm: u32,
    /// 0 for directories (ext4 reports blocks, fsd 0).
    size: u64,
    nlink: u64,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

fn special(t: (i64, i64)) -> bool {
    (SPECIAL_LO..SPECIAL_HI).contains(&t.0)
}

impl PartialEq for St {
    fn eq(&self, o: &St) -> bool {
        // mtimes only where an explicit utimens set them (see the module
        // comment).
        let mtime_ok = if special(self.mtime) || special(o.mtime) {
            self.mtime == o.mtime
        } else {
            true
        };
        self.kind == o.kind
            && self.perm == o.perm
            && self.size == o.size
            && self.nlink == o.nlink
            && self.uid == o.uid
            && self.gid == o.gid
            && mtime_ok
    }
}

fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        _ => 'o',
    }
}

fn st_of(s: &libc::stat) -> St {
    let kind = kind_of(s.st_mode);
    St {
        kind,
        perm: s.st_mode & 0o7777,
        size: if kind == 'd' { 0 } else { s.st_size as u64 },
        nlink: s.st_nlink,
        uid: s.st_uid,
        gid: s.st_gid,
        mtime: (s.st_mtime, s.st_mtime_nsec),
    }
}

#[derive(Debug, PartialEq)]
enum Out {
    Unit,
    Num(i64),
    Data(Bytes),
    Names(Vec<String>),
    Stat(St),
}

// ---------------------------------------------------------------------------
// One side: a root directory and the open descriptors.

struct Side {
    root: PathBuf,
    fds: Vec<Option<OwnedFd>>,
}

fn zero_stat() -> libc::stat {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

impl Side {
    fn new(root: PathBuf) -> Self {
        Side {
            root,
            fds: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn c(&self, rel: &str) -> CString {
        CString::new(self.root.join(rel).as_os_str().as_bytes()).unwrap()
    }

    fn fd(&self, slot: usize) -> Res<i32> {
        self.fds[slot]
            .as_ref()
            .map(|f| f.as_raw_fd())
            .ok_or(libc::EBADF)
    }

    fn fstat(&self, slot: usize) -> Res<libc::stat> {
        let fd = self.fd(slot)?;
        let mut s = zero_stat();
        // SAFETY: valid descriptor and out pointer.
        check(unsafe { libc::fstat(fd, &mut s) })?;
        Ok(s)
    }

    fn stat(&self, rel: &str, nofollow: bool) -> Res<libc::stat> {
        let c = self.c(rel);
        let mut s = zero_stat();
        let flags = if nofollow {
            libc::AT_SYMLINK_NOFOLLOW
        } else {
            0
        };
        // SAFETY: valid C string and out pointer.
        check(unsafe { libc::fstatat(libc::AT_FDCWD, c.as_ptr(), &mut s, flags) })?;
        Ok(s)
    }

    fn close_all(&mut self) {
        for f in &mut self.fds {
            *f = None;
        }
    }

    /// Runs one operation. SeekHole is handled by the driver.
    fn apply(&mut self, op: &Op) -> Res<Out> {
        // SAFETY (whole match): every call gets valid C strings, descriptors
        // this side owns, and buffers of the length passed.
        unsafe {
            match op {
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode,
                } => {
                    self.fds[*slot] = None;
                    let c = self.c(path);
                    let fd = check(libc::open(c.as_ptr(), flags.0 | libc::O_CLOEXEC, *mode))?;
                    self.fds[*slot] = Some(OwnedFd::from_raw_fd(fd));
                    Ok(Out::Unit)
                }
                Op::Close { slot } => {
                    let f = self.fds[*slot].take().ok_or(libc::EBADF)?;
                    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                    check(libc::close(fd))?;
                    Ok(Out::Unit)
                }
                Op::Pwrite {
                    slot,
                    off,
                    len,
                    fill,
                } => {
                    let buf = fill.bytes(*len);
                    let n = check_size(libc::pwrite(
                        self.fd(*slot)?,
                        buf.as_ptr().cast(),
                        buf.len(),
                        *off as i64,
                    ))?;
                    Ok(Out::Num(n as i64))
                }
                Op::CopyRange {
                    from,
                    to,
                    off_in,
                    off_out,
                    len,
                } => {
                    let (mut i, mut o) = (*off_in as i64, *off_out as i64);
                    let n = check_size(libc::copy_file_range(
                        self.fd(*from)?,
                        &mut i,
                        self.fd(*to)?,
                        &mut o,
                        *len,
                        0,
                    ))?;
                    Ok(Out::Num(n as i64))
                }
                Op::Write { slot, len, fill } => {
                    let buf = fill.bytes(*len);
                    let n =
                        check_size(libc::write(self.fd(*slot)?, buf.as_ptr().cast(), buf.len()))?;
                    Ok(Out::Num(n as i64))
                }
                Op::Pread { slot, off, len } => {
                    let fd = self.fd(*slot)?;
                    let mut buf = vec![0u8; *len];
                    let n = check_size(libc::pread(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        *off as i64,
                    ))?;
                    buf.truncate(n);
                    Ok(Out::Data(Bytes(buf)))
                }
                Op::Read { slot, len } => {
                    let fd = self.fd(*slot)?;
                    let mut buf = vec![0u8; *len];
                    let n = check_size(libc::read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
                    buf.truncate(n);
                    Ok(Out::Data(Bytes(buf)))
                }
                Op::Lseek { slot, off, whence } => {
                    let r = libc::lseek(self.fd(*slot)?, *off, *whence);
                    if r < 0 { Err(errno()) } else { Ok(Out::Num(r)) }
                }
                Op::SeekHole { .. } => unreachable!("the driver handles SeekHole"),
                Op::Ftruncate { slot, len } => {
                    check(libc::ftruncate(self.fd(*slot)?, *len as i64))?;
                    Ok(Out::Unit)
                }
                Op::Truncate { path, len } => {
                    let c = self.c(path);
                    check(libc::truncate(c.as_ptr(), *len as i64))?;
                    Ok(Out::Unit)
                }
                Op::Fsync { slot } => {
                    check(libc::fsync(self.fd(*slot)?))?;
                    Ok(Out::Unit)
                }
                Op::Fstat { slot } => Ok(Out::Stat(st_of(&self.fstat(*slot)?))),
                Op::Fallocate {
                    slot,
                    mode,
                    off,
                    len,
                } => {
                    check(libc::fallocate(
                        self.fd(*slot)?,
                        *mode,
                        *off as i64,
                        *len as i64,
                    ))?;
                    Ok(Out::Unit)
                }
                Op::Mkdir { path, mode } => {
                    let c = self.c(path);
                    check(libc::mkdir(c.as_ptr(), *mode))?;
                    Ok(Out::Unit)
                }
                Op::Rmdir { path } => {
                    let c = self.c(path);
                    check(libc::rmdir(c.as_ptr()))?;
                    Ok(Out::Unit)
                }
                Op::Unlink { path } => {
                    let c = self.c(path);
                    check(libc::unlink(c.as_ptr()))?;
                    Ok(Out::Unit)
                }
                Op::Rename { from, to, flags } => {
                    let (a, b) = (self.c(from), self.c(to));
                    let r = libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        *flags,
                    );
                    check(r as i32)?;
                    Ok(Out::Unit)
                }
                Op::Link { from, to } => {
                    let (a, b) = (self.c(from), self.c(to));
                    check(libc::link(a.as_ptr(), b.as_ptr()))?;
                    Ok(Out::Unit)
                }
                Op::Symlink { target, path } => {
                    let t = CString::new(target.as_bytes()).unwrap();
                    let c = self.c(path);
                    check(libc::symlink(t.as_ptr(), c.as_ptr()))?;
                    Ok(Out::Unit)
                }
                Op::Readlink { path } => {
                    let c = self.c(path);
                    let mut buf = vec![0u8; 4096];
                    let n = check_size(libc::readlink(
                        c.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ))?;
                    buf.truncate(n);
                    Ok(Out::Data(Bytes(buf)))
                }
                Op::Chmod { path, mode } => {
                    let c = self.c(path);
                    check(libc::chmod(c.as_ptr(), *mode))?;
                    Ok(Out::Unit)
                }
                Op::Chown {
                    path,
                    uid,
                    gid,
                    nofollow,
                } => {
                    let c = self.c(path);
                    if *nofollow {
                        check(libc::lchown(c.as_ptr(), *uid, *gid))?;
                    } else {
                        check(libc::chown(c.as_ptr(), *uid, *gid))?;
                    }
                    Ok(Out::Unit)
                }
                Op::Utimens {
                    path,
                    atime,
                    mtime,
                    nofollow,
                } => {
                    let c = self.c(path);
                    let ts = |t: Option<(i64, i64)>| match t {
                        Some((s, n)) => libc::timespec {
                            tv_sec: s,
                            tv_nsec: n,
                        },
                        None => libc::timespec {
                            tv_sec: 0,
                            tv_nsec: libc::UTIME_OMIT,
                        },
                    };
                    let times = [ts(*atime), ts(Some(*mtime))];
                    let flags = if *nofollow {
                        libc::AT_SYMLINK_NOFOLLOW
                    } else {
                        0
                    };
                    check(libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        flags,
                    ))?;
                    // The mtime just set must read back identically.
                    Ok(Out::Stat(st_of(&self.stat(path, *nofollow)?)))
                }
                Op::Stat { path, nofollow } => Ok(Out::Stat(st_of(&self.stat(path, *nofollow)?))),
                Op::Readdir { path } => {
                    let rd = std::fs::read_dir(self.root.join(path))
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    let mut names = Vec::new();
                    for e in rd {
                        let e = e.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                    names.sort();
                    Ok(Out::Names(names))
                }
                Op::Setxattr {
                    path,
                    name,
                    len,
                    seed,
                    flags,
                    nofollow,
                } => {
                    let c = self.c(path);
                    let n = CString::new(*name).unwrap();
                    let v = pattern(*seed, *len);
                    let f = if *nofollow {
                        libc::lsetxattr
                    } else {
                        libc::setxattr
                    };
                    check(f(
                        c.as_ptr(),
                        n.as_ptr(),
                        v.as_ptr().cast(),
                        v.len(),
                        *flags,
                    ))?;
                    Ok(Out::Unit)
                }
                Op::Getxattr {
                    path,
                    name,
                    nofollow,
                } => {
                    let c = self.c(path);
                    let n = CString::new(*name).unwrap();
                    let mut buf = vec![0u8; 65536];
                    let f = if *nofollow {
                        libc::lgetxattr
                    } else {
                        libc::getxattr
                    };
                    let r = check_size(f(
                        c.as_ptr(),
                        n.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ))?;
                    buf.truncate(r);
                    Ok(Out::Data(Bytes(buf)))
                }
                Op::Removexattr {
                    path,
                    name,
                    nofollow,
                } => {
                    let c = self.c(path);
                    let n = CString::new(*name).unwrap();
                    let f = if *nofollow {
                        libc::lremovexattr
                    } else {
                        libc::removexattr
                    };
                    check(f(c.as_ptr(), n.as_ptr()))?;
                    Ok(Out::Unit)
                }
                Op::Listxattr { path, nofollow } => {
                    let c = self.c(path);
                    let mut buf = vec![0u8; 65536];
                    let f = if *nofollow {
                        libc::llistxattr
                    } else {
                        libc::listxattr
                    };
                    let r = check_size(f(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()))?;
                    buf.truncate(r);
                    Ok(Out::Names(user_xattrs(&buf)))
                }
            }
        }
    }
}

/// The user xattr names of a listxattr buffer, sorted; fsd's read-only
/// volume-root attributes are not part of the model.
fn user_xattrs(buf: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user.") && !n.starts_with(b"user.fsd."))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Whole-tree snapshots.

#[derive(Debug, PartialEq)]
struct Node {
    st: St,
    target: Option<Vec<u8>>,
    sha: Option<String>,
    xattrs: BTreeMap<String, Bytes>,
    /// The first path (in sorted order) with the same inode: the hard-link
    /// structure, independent of inode numbers.
    first_link: String,
}

fn xattrs_of(p: &Path) -> BTreeMap<String, Bytes> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    buf.truncate(n as usize);
    for name in user_xattrs(&buf) {
        let cn = CString::new(name.as_str()).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(r.max(0) as usize);
        out.insert(name, Bytes(v));
    }
    out
}

/// The tree below `root` (and the root itself as ""), not following links.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut raw: Vec<(String, std::fs::Metadata)> = Vec::new();
    raw.push((String::new(), std::fs::symlink_metadata(root).unwrap()));
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(root.join(&dir)).unwrap() {
            let e = e.unwrap();
            let rel = if dir.is_empty() {
                e.file_name().to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", e.file_name().to_string_lossy())
            };
            let m = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            if m.is_dir() {
                stack.push(rel.clone());
            }
            raw.push((rel, m));
        }
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first: HashMap<u64, String> = HashMap::new();
    let mut out = BTreeMap::new();
    for (rel, m) in raw {
        let p = root.join(&rel);
        let kind = kind_of(m.mode());
        let first_link = first.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
        out.insert(
            rel,
            Node {
                st: St {
                    kind,
                    perm: m.mode() & 0o7777,
                    size: if kind == 'd' { 0 } else { m.size() },
                    nlink: m.nlink(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                },
                target: (kind == 'l').then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                sha: (kind == 'f').then(|| {
                    hex::encode(Sha256::digest(
                        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
                    ))
                }),
                xattrs: if kind == 'l' {
                    BTreeMap::new()
                } else {
                    xattrs_of(&p)
                },
                first_link,
            },
        );
    }
    out
}

/// Describes how two snapshots differ, or None.
fn diff_trees(model: &BTreeMap<String, Node>, fsd: &BTreeMap<String, Node>) -> Option<String> {
    let mut msgs = Vec::new();
    for (p, m) in model {
        match fsd.get(p) {
            None => msgs.push(format!("/{p}: missing on fsd (model: {m:?})")),
            Some(f) if f != m => msgs.push(format!("/{p}:\n  model {m:?}\n  fsd   {f:?}")),
            Some(_) => {}
        }
    }
    for (p, f) in fsd {
        if !model.contains_key(p) {
            msgs.push(format!("/{p}: only on fsd ({f:?})"));
        }
    }
    (!msgs.is_empty()).then(|| msgs.join("\n"))
}

/// Every path in the model and its regular files, for generating
/// operations that mostly hit existing entries.
fn existing(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let rel = if dir.is_empty() {
                e.file_name().to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", e.file_name().to_string_lossy())
            };
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(rel.clone()),
                Ok(t) if t.is_file() => files.push(rel.clone()),
                _ => {}
            }
            out.push(rel);
        }
    }
    out.sort();
    files.sort();
    (out, files)
}

// ---------------------------------------------------------------------------
// Generation.

struct Gen {
    rng: Rng,
}

impl Gen {
    fn name(&mut self) -> &'static str {
        NAMES[self.rng.below(NAMES.len() as u64) as usize]
    }

    fn fresh_path(&mut self) -> String {
        let depth = match self.rng.below(100) {
            0..50 => 1,
            50..85 => 2,
            _ => 3,
        };
        (0..depth)
            .map(|_| self.name())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn path(&mut self, have: &[String]) -> String {
        if !have.is_empty() && self.rng.chance(60) {
            let p = self.rng.pick(have).clone();
            if self.rng.chance(15) {
                return format!("{p}/{}", self.name());
            }
            return p;
        }
        self.fresh_path()
    }

    fn off(&mut self, size: u64) -> u64 {
        let r = &mut self.rng;
        match r.below(7) {
            0 => r.below(8192),
            1 => (r.below(4) * MIB + r.below(8192)).saturating_sub(4096),
            2 => r.below(4 * MIB),
            3 => size + r.below(2 * MIB),
            4 => size.saturating_sub(r.below(8192)),
            5 => r.below(4) * MIB,
            _ => r.below(65536),
        }
    }

    fn len(&mut self) -> usize {
        let r = &mut self.rng;
        (match r.below(8) {
            0 => r.below(16),
            1 | 2 => r.below(8192),
            3 => r.below(256 * 1024),
            4 => MIB,
            5 => r.below(3 * MIB + 1),
            6 => 4096,
            _ => MIB + r.below(8192),
        }) as usize
    }

    fn fill(&mut self) -> Fill {
        if self.rng.chance(15) {
            Fill::Zero
        } else {
            Fill::Pattern(self.rng.next())
        }
    }

    fn mode(&mut self) -> u32 {
        *self.rng.pick(&[
            0o644, 0o600, 0o755, 0o700, 0o000, 0o640, 0o777, 0o4755, 0o2755, 0o2775, 0o1777,
        ])
    }

    fn slot(&mut self) -> usize {
        self.rng.below(SLOTS as u64) as usize
    }

    fn xname(&mut self) -> &'static str {
        XATTRS[self.rng.below(XATTRS.len() as u64) as usize]
    }

    /// One operation. `open` lists the slots with a descriptor, `files` the
    /// model's regular files, `size_of` the size of a slot's file: they
    /// steer most operations to things that exist, so not every call fails.
    fn op(
        &mut self,
        have: &[String],
        files: &[String],
        open: &[usize],
        size_of: &dyn Fn(usize) -> u64,
    ) -> Op {
        let w = self.rng.below(1000);
        let slot = if !open.is_empty() && self.rng.chance(85) {
            *self.rng.pick(open)
        } else {
            self.slot()
        };
        let size = size_of(slot);
        match w {
            0..120 => {
                let acc = *self.rng.pick(&[
                    libc::O_RDONLY,
                    libc::O_WRONLY,
                    libc::O_RDWR,
                    libc::O_RDWR,
                    libc::O_RDWR,
                ]);
                let mut flags = acc;
                if self.rng.chance(50) {
                    flags |= libc::O_CREAT;
                }
                if self.rng.chance(15) {
                    flags |= libc::O_EXCL;
                }
                if self.rng.chance(15) {
                    flags |= libc::O_TRUNC;
                }
                if self.rng.chance(20) {
                    flags |= libc::O_APPEND;
                }
                let path = if !files.is_empty() && self.rng.chance(50) {
                    self.rng.pick(files).clone()
                } else {
                    self.path(have)
                };
                Op::Open {
                    slot,
                    path,
                    flags: Flags(flags),
                    mode: self.mode(),
                }
            }
            120..170 => Op::Close { slot },
            170..300 => Op::Pwrite {
                slot,
                off: self.off(size),
                len: self.len(),
                fill: self.fill(),
            },
            300..350 => Op::Write {
                slot,
                len: self.len(),
                fill: self.fill(),
            },
            350..380 => Op::CopyRange {
                from: if !open.is_empty() && self.rng.chance(85) {
                    *self.rng.pick(open)
                } else {
                    self.slot()
                },
                to: slot,
                off_in: self.off(size),
                off_out: self.off(size),
                len: self.len(),
            },
            380..430 => Op::Pread {
                slot,
                off: self.off(size),
                len: self.len(),
            },
            430..460 => Op::Read {
                slot,
                len: self.len(),
            },
            460..480 => Op::Lseek {
                slot,
                off: self.off(size) as i64 - if self.rng.chance(50) { size as i64 } else { 0 },
                whence: *self
                    .rng
                    .pick(&[libc::SEEK_SET, libc::SEEK_CUR, libc::SEEK_END]),
            },
            480..500 => Op::SeekHole {
                slot,
                off: self.off(size),
                data: self.rng.chance(50),
            },
            500..530 => Op::Ftruncate {
                slot,
                len: self.off(size),
            },
            530..545 => Op::Truncate {
                path: self.path(have),
                len: self.off(0),
            },
            545..565 => Op::Fsync { slot },
            565..585 => Op::Fstat { slot },
            585..615 => Op::Fallocate {
                slot,
                mode: *self.rng.pick(&[
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                ]),
                off: self.off(size),
                len: if self.rng.chance(3) {
                    0
                } else {
                    self.len() as u64 + 1
                },
            },
            615..665 => Op::Mkdir {
                path: self.path(have),
                mode: self.mode() & 0o3777,
            },
            665..690 => Op::Rmdir {
                path: self.path(have),
            },
            690..720 => Op::Unlink {
                path: self.path(have),
            },
            720..790 => {
                let from = self.path(have);
                let to = if self.rng.chance(12) {
                    format!("{from}/{}", self.name())
                } else {
                    self.path(have)
                };
                let flags = match self.rng.below(100) {
                    0..65 => 0,
                    65..80 => libc::RENAME_NOREPLACE,
                    _ => libc::RENAME_EXCHANGE,
                };
                Op::Rename { from, to, flags }
            }
            790..815 => Op::Link {
                from: self.path(have),
                to: self.path(have),
            },
            815..835 => {
                // Targets stay inside the tree (relative, no escaping
                // `..`), or point at an absolute path whose parent does not
                // exist, so nothing can ever be created through them outside
                // the two roots.
                let target = if self.rng.chance(70) {
                    self.fresh_path()
                } else {
                    self.rng
                        .pick(&["missing", "/nonexistent-fsd-model-dir/x", "a/../b"])
                        .to_string()
                };
                Op::Symlink {
                    target,
                    path: self.path(have),
                }
            }
            835..845 => Op::Readlink {
                path: self.path(have),
            },
            845..865 => Op::Chmod {
                path: self.path(have),
                mode: self.mode(),
            },
            865..875 => Op::Chown {
                path: self.path(have),
                uid: *self.rng.pick(&[0, 1000, 65534]),
                gid: *self.rng.pick(&[0, 100, 1000]),
                nofollow: self.rng.chance(30),
            },
            875..900 => Op::Utimens {
                path: self.path(have),
                atime: self.rng.chance(70).then(|| {
                    (
                        SPECIAL_LO + self.rng.below(50_000_000) as i64,
                        self.rng.below(1_000_000_000) as i64,
                    )
                }),
                mtime: (
                    SPECIAL_LO + self.rng.below(90_000_000) as i64,
                    self.rng.below(1_000_000_000) as i64,
                ),
                nofollow: self.rng.chance(20),
            },
            900..925 => Op::Stat {
                path: self.path(have),
                nofollow: self.rng.chance(50),
            },
            925..935 => Op::Readdir {
                path: if self.rng.chance(20) {
                    String::new()
                } else {
                    self.path(have)
                },
            },
            935..965 => Op::Setxattr {
                path: self.path(have),
                name: self.xname(),
                len: self.rng.below(300) as usize,
                seed: self.rng.next(),
                flags: *self
                    .rng
                    .pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
                nofollow: self.rng.chance(15),
            },
            965..980 => Op::Getxattr {
                path: self.path(have),
                name: self.xname(),
                nofollow: self.rng.chance(15),
            },
            980..990 => Op::Removexattr {
                path: self.path(have),
                name: self.xname(),
                nofollow: self.rng.chance(15),
            },
            _ => Op::Listxattr {
                path: self.path(have),
                nofollow: self.rng.chance(15),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// The driver.

fn show(r: &Res<Out>) -> String {
    match r {
        Ok(o) => format!("{o:?}"),
        Err(e) => errname(*e),
    }
}

/// Checks fsd's SEEK_DATA/SEEK_HOLE answer against the model's bytes: a hole
/// fsd reports must read as zeros in the model, and data it skips over must
/// be zeros too. Returns a complaint, or None.
fn check_seek(model: &Side, fsd: &Side, slot: usize, off: u64, data: bool) -> Option<String> {
    let ms = model.fstat(slot).ok()?;
    let ffd = fsd.fd(slot).ok()?;
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: a descriptor fsd's side owns.
    let r = unsafe { libc::lseek(ffd, off as i64, whence) };
    let got: Res<u64> = if r < 0 { Err(errno()) } else { Ok(r as u64) };
    let size = ms.st_size as u64;
    let fsize = fsd.fstat(slot).map(|s| s.st_size as u64);
    if fsize != Ok(size) {
        return Some(format!("sizes differ: model {size}, fsd {fsize:?}"));
    }
    let mfd = model.fd(slot).ok()?;
    // Through /proc so a write-only (or unlinked) descriptor can be read.
    let bytes = std::fs::read(format!("/proc/self/fd/{mfd}")).unwrap_or_default();
    let zeros = |a: u64, b: u64| {
        let end = (b.min(size) as usize).min(bytes.len());
        bytes[(a as usize).min(end)..end].iter().all(|&x| x == 0)
    };
    let bad = |why: &str| Some(format!("{why}: fsd said {got:?} for size {size}"));
    if off >= size {
        return if got == Err(libc::ENXIO) {
            None
        } else {
            bad("offset at or past EOF must be ENXIO")
        };
    }
    // Keep both descriptors at the same position.
    if let Ok(p) = got {
        // SAFETY: the model's descriptor.
        unsafe { libc::lseek(mfd, p as i64, libc::SEEK_SET) };
    }
    match (data, got) {
        (true, Err(libc::ENXIO)) if zeros(off, size) => None,
        (true, Err(_)) => bad("SEEK_DATA failed where the model has data"),
        (true, Ok(d)) if d < off || d >= size => bad("SEEK_DATA out of range"),
        (true, Ok(d)) if d != off && d % MIB != 0 => bad("SEEK_DATA not chunk-aligned"),
        (true, Ok(d)) if !zeros(off, d) => bad("SEEK_DATA skipped over data"),
        (false, Err(_)) => bad("SEEK_HOLE failed below EOF"),
        (false, Ok(h)) if h < off || h > size => bad("SEEK_HOLE out of range"),
        (false, Ok(h)) if h != off && h != size && h % MIB != 0 => {
            bad("SEEK_HOLE not chunk-aligned")
        }
        (false, Ok(h)) if h < size && !zeros(h, (h / MIB + 1) * MIB) => {
            bad("SEEK_HOLE reported a hole where the model has data")
        }
        _ => None,
    }
}

fn slot_kind(side: &Side, slot: usize) -> Option<char> {
    side.fstat(slot).ok().map(|s| kind_of(s.st_mode))
}

/// Runs one seed; returns a failure report, or None.
fn run_seed(d: &Daemon, seed: u64, ops: usize) -> Option<String> {
    let id = d
        .ok(&["create", &format!("model-{seed}")])
        .trim()
        .to_string();
    let vol = d.vol(&id);
    let local = tempfile::Builder::new()
        .prefix("model-")
        .tempdir_in(d.dir.path())
        .unwrap();
    // The volume root is 0755, owned by the creator; make the model's the
    // same so the root compares equal.
    std::fs::set_permissions(
        local.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut model = Side::new(local.path().to_path_buf());
    let mut fsd = Side::new(vol.clone());
    let mut g = Gen {
        rng: Rng::new(seed),
    };
    let mut log: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut failure = None;
    let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for i in 0..ops {
        let (have, files) = existing(local.path());
        let open: Vec<usize> = (0..SLOTS).filter(|&s| model.fds[s].is_some()).collect();
        let size_of = |slot: usize| model.fstat(slot).map(|s| s.st_size as u64).unwrap_or(0);
        let op = g.op(&have, &files, &open, &size_of);
        log.push(format!("{i}: {op:?}"));
        let name: String = format!("{op:?}")
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        let problem = match &op {
            Op::SeekHole { slot, off, data } => {
                if slot_kind(&model, *slot) == Some('f') {
                    check_seek(&model, &fsd, *slot, *off, *data)
                } else {
                    None
                }
            }
            // Directory offsets are each filesystem's own business (ext4
            // hashes names; SEEK_END is EINVAL there), so seeking is only
            // compared on regular files.
            Op::Lseek { slot, .. } if slot_kind(&model, *slot) == Some('d') => None,
            _ => {
                let m = model.apply(&op);
                let skip = matches!(op, Op::Fallocate { .. }) && m == Err(libc::EOPNOTSUPP);
                if skip {
                    // The model's filesystem cannot do it; nothing to compare.
                    None
                } else {
                    let f = fsd.apply(&op);
                    let c = counts.entry(name).or_default();
                    if m.is_ok() {
                        c.0 += 1;
                    } else {
                        c.1 += 1;
                    }
                    log.last_mut()
                        .unwrap()
                        .push_str(&format!(" => {}", show(&m)));
                    (m != f).then(|| format!("model: {}\nfsd:   {}", show(&m), show(&f)))
                }
            }
        };
        let problem = problem.or_else(|| {
            if (i + 1) % CHECK_EVERY == 0 || i + 1 == ops {
                diff_trees(&snapshot(local.path()), &snapshot(&vol))
                    .map(|d| format!("trees differ after the op:\n{d}"))
            } else {
                None
            }
        });
        if let Some(p) = problem {
            failure = Some(report(seed, i, &format!("{op:?}"), &p, &log));
            break;
        }
    }
    // Closing every descriptor lets fsd delete unlinked-open inodes; the
    // trees must still agree, and the catalog and store must be consistent.
    model.close_all();
    fsd.close_all();
    if failure.is_none()
        && let Some(d) = diff_trees(&snapshot(local.path()), &snapshot(&vol))
    {
        failure = Some(report(seed, ops, "closing every descriptor", &d, &log));
    }
    let o = d.tokenctl(&["fsck", &id]);
    if !o.status.success() {
        let msg = format!(
            "seed {seed}: tokenctl fsck {id} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        failure = Some(match failure {
            Some(f) => format!("{f}\n{msg}"),
            None => msg,
        });
    }
    eprintln!(
        "seed {seed}: {} ops in {:.1} s; ok/err per op: {counts:?}",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    failure
}

fn report(seed: u64, i: usize, what: &str, problem: &str, log: &[String]) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("native_model-seed{seed}.log"));
    let _ = std::fs::write(&file, log.join("\n") + "\n");
    let tail = log[log.len().saturating_sub(40)..].join("\n");
    format!(
        "seed {seed}, op {i}: {what}\n{problem}\n\
         replay: FSD_MODEL_SEEDS={seed} FSD_MODEL_OPS={} cargo test --release --test native_model\n\
         full op log: {}\nlast ops:\n{tail}",
        i + 1,
        file.display()
    )
}

fn env_list(name: &str) -> Option<Vec<u64>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
}

#[test]
fn native_volume_matches_local_fs() {
    let seeds = env_list("FSD_MODEL_SEEDS").unwrap_or_else(|| DEFAULT_SEEDS.to_vec());
    let ops = env_list("FSD_MODEL_OPS")
        .and_then(|v| v.first().copied())
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_OPS);
    let d = Daemon::start();
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Some(f) = run_seed(&d, seed, ops) {
            eprintln!("---- FAILURE ----\n{f}");
            failures.push(f);
        }
    }
    // The whole store: no chunk referenced but missing, no orphan files.
    let o = d.tokenctl(&["fsck"]);
    if !o.status.success() {
        failures.push(format!(
            "tokenctl fsck (whole store) failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds found discrepancies:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// Focused tests for the discrepancies the model found. Each runs the same
// steps on the local disk (the oracle, asserted first so the test documents
// what Linux does) and on a native volume.

/// A daemon with one native volume, and a model directory beside it.
fn volume_and_model(name: &str) -> (Daemon, PathBuf, PathBuf) {
    let d = Daemon::start();
    let id = d.ok(&["create", name]).trim().to_string();
    let vol = d.vol(&id);
    let local = d.dir.path().join("model");
    std::fs::create_dir(&local).unwrap();
    (d, vol, local)
}

fn open_raw(p: &Path, flags: i32) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string; the descriptor is owned at once.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    assert!(
        fd >= 0,
        "open {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn fstat_raw(fd: &OwnedFd) -> Res<libc::stat> {
    let mut s = zero_stat();
    // SAFETY: valid descriptor and out pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
}

/// Sets a path's mtime (and atime) to 2001-09-09.
fn set_old_mtime(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: SPECIAL_LO,
        tv_nsec: 0,
    };
    // SAFETY: valid C string and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

/// `open(O_RDONLY | O_TRUNC)` truncates on Linux's local filesystems (the
/// kernel checks write permission and truncates). fsd ignored O_TRUNC when
/// the open was read-only (found by the model test; fixed in 7ba425e).
#[test]
fn rdonly_trunc_truncates() {
    let (_d, vol, local) = volume_and_model("rdonly-trunc");
    for (what, root) in [("local disk", &local), ("fsd", &vol)] {
        let p = root.join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let fd = open_raw(&p, libc::O_RDONLY | libc::O_TRUNC);
        let during = fstat_raw(&fd).unwrap().st_size;
        drop(fd);
        let after = std::fs::read(&p).unwrap();
        assert_eq!(
            (during, after.len()),
            (0, 0),
            "{what}: open(O_RDONLY|O_TRUNC) of an 11-byte file: size {during} while open, \
             {} bytes after close ({:?})",
            after.len(),
            String::from_utf8_lossy(&after)
        );
    }
}

/// A write stamps the mtime; a chmod/chown/utimens(atime only) before the
/// descriptor is closed must not undo that. fsd's setattr copied the
/// catalog's (last committed) mtime into the open file's state, so the
/// pending write's mtime was lost and the file kept its old mtime, and
/// `make` and `rsync` missed the change (found by the model test; fixed in
/// 7ba425e).
#[test]
fn setattr_keeps_mtime_of_pending_writes() {
    let (_d, vol, local) = volume_and_model("setattr-mtime");
    let mut failures = Vec::new();
    type Step = fn(&Path, &OwnedFd);
    let steps: [(&str, Step); 4] = [
        ("fchmod", |_, fd| {
            // SAFETY: a valid descriptor.
            assert_eq!(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) }, 0);
        }),
        ("chmod of a second hard link", |root, _| {
            std::fs::set_permissions(
                root.join("f-link"),
                std::os::unix::fs::PermissionsExt::from_mode(0o640),
            )
            .unwrap();
        }),
        ("fchown", |_, fd| {
            // SAFETY: a valid descriptor.
            assert_eq!(unsafe { libc::fchown(fd.as_raw_fd(), 1000, 1000) }, 0);
        }),
        ("futimens of the atime only", |_, fd| {
            let times = [
                libc::timespec {
                    tv_sec: SPECIAL_LO,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
            ];
            // SAFETY: a valid descriptor and two timespecs.
            assert_eq!(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }, 0);
        }),
    ];
    for (name, step) in steps {
        for (what, root) in [("local disk", &local), ("fsd", &vol)] {
            let p = root.join("f");
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(root.join("f-link"));
            std::fs::write(&p, b"0123456789").unwrap();
            std::fs::hard_link(&p, root.join("f-link")).unwrap();
            set_old_mtime(&p);
            let fd = open_raw(&p, libc::O_WRONLY);
            // SAFETY: valid descriptor and buffer.
            let n = unsafe { libc::pwrite(fd.as_raw_fd(), b"new".as_ptr().cast(), 3, 0) };
            assert_eq!(n, 3);
            step(root, &fd);
            drop(fd);
            let m = std::fs::metadata(&p).unwrap().mtime();
            if m <= SPECIAL_HI {
                assert_eq!(what, "fsd", "the oracle itself disagrees");
                failures.push(format!(
                    "write, then {name}, then close: the mtime is still {m} (2001), \
                     the write's mtime was lost"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "fsd:\n{}", failures.join("\n"));
}

/// Linux filesystems (ext4, xfs, tmpfs) stamp the mtime on every successful
/// fallocate. fsd did so only for PUNCH_HOLE and ZERO_RANGE, so a file
/// extended by fallocate(mode 0) kept its old mtime (found by the model
/// test; fixed in 7ba425e).
#[test]
fn fallocate_updates_mtime() {
    let (_d, vol, local) = volume_and_model("fallocate-mtime");
    let mut failures = Vec::new();
    for (mode, name) in [
        (0, "mode 0 (extends the file)"),
        (libc::FALLOC_FL_KEEP_SIZE, "KEEP_SIZE"),
    ] {
        for (what, root) in [("local disk", &local), ("fsd", &vol)] {
            let p = root.join("f");
            std::fs::write(&p, b"0123456789").unwrap();
            set_old_mtime(&p);
            let fd = open_raw(&p, libc::O_RDWR);
            // SAFETY: a valid descriptor.
            let r = unsafe { libc::fallocate(fd.as_raw_fd(), mode, 0, 3 * MIB as i64) };
            assert_eq!(
                r,
                0,
                "{what}: fallocate: {}",
                std::io::Error::last_os_error()
            );
            drop(fd);
            let m = std::fs::metadata(&p).unwrap().mtime();
            if m <= SPECIAL_HI {
                assert_eq!(what, "fsd", "the oracle itself disagrees");
                failures.push(format!("fallocate {name}: the mtime is still {m} (2001)"));
            }
        }
    }
    assert!(failures.is_empty(), "fsd:\n{}", failures.join("\n"));
}

/// An open directory stays usable after its name is gone, as on every
/// Linux filesystem: fstat shows nlink 0 and fchmod works. fsd deleted the
/// directory's row at rmdir (or when renamed over) although a descriptor
/// still referred to it, so both failed with ENOENT (found by the model
/// test; fixed in 7ba425e).
#[test]
fn removed_directory_stays_usable_through_open_fd() {
    let (_d, vol, local) = volume_and_model("removed-dir");
    let mut failures = Vec::new();
    for how in ["rmdir", "rename over it"] {
        for (what, root) in [("local disk", &local), ("fsd", &vol)] {
            let a = root.join("a");
            std::fs::create_dir(&a).unwrap();
            let fd = open_raw(&a, libc::O_RDONLY | libc::O_DIRECTORY);
            if how == "rmdir" {
                std::fs::remove_dir(&a).unwrap();
            } else {
                std::fs::create_dir(root.join("b")).unwrap();
                std::fs::rename(root.join("b"), &a).unwrap();
                std::fs::remove_dir(&a).unwrap();
            }
            let st = fstat_raw(&fd)
                .map(|s| (kind_of(s.st_mode), s.st_nlink))
                .map_err(errname);
            // SAFETY: a valid descriptor.
            let ch = check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) }).map_err(errname);
            for (call, got) in [
                ("fstat", st.clone().map(|_| ())),
                ("fchmod", ch.map(|_| ())),
            ] {
                if let Err(e) = got {
                    assert_eq!(what, "fsd", "the oracle itself disagrees");
                    failures.push(format!("{call} of an open directory after {how}: {e}"));
                }
            }
            if let Ok(s) = st {
                assert_eq!(s, ('d', 0), "{what}: fstat after {how}");
            }
        }
    }
    assert!(failures.is_empty(), "fsd:\n{}", failures.join("\n"));
}
