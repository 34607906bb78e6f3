//! Plain data types of the filesystem core, independent of fuser so that the
//! core can be unit-tested without a mount.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the epoch; seconds may be negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn new(sec: i64, nsec: u32) -> Self {
        Timespec {
            sec,
            nsec: nsec.min(999_999_999),
        }
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec::new(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timespec::new(-(d.as_secs() as i64), 0)
                } else {
                    Timespec::new(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.sec >= 0 {
            UNIX_EPOCH + Duration::new(self.sec as u64, self.nsec)
        } else {
            UNIX_EPOCH - Duration::new(self.sec.unsigned_abs(), 0) + Duration::new(0, self.nsec)
        }
    }

    /// Nanoseconds since the epoch, saturating; used as a compact catalog key.
    pub fn as_nanos(self) -> i64 {
        self.sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.nsec))
    }

    pub fn from_nanos(n: i64) -> Self {
        Timespec::new(
            n.div_euclid(1_000_000_000),
            n.rem_euclid(1_000_000_000) as u32,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// The attributes of one inode, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    /// 512-byte blocks allocated (what `du` shows).
    pub blocks: u64,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub blksize: u32,
}

impl Attr {
    /// The preferred I/O size reported in `st_blksize` of regular files:
    /// one chunk, so that `cp` and `cat` issue 1 MiB reads and writes.
    pub const BLKSIZE: u32 = 1 << 20;

    /// `st_blksize` for an inode of `kind`. Only regular files get the
    /// chunk-sized hint: glibc sizes `opendir`'s buffer from a directory's
    /// `st_blksize` (up to 1 MiB), and the kernel then allocates and maps
    /// that much for every READDIR, which made a cold `find` of 20,000
    /// archive members spend more time allocating pages than listing.
    pub fn blksize_for(kind: FileKind) -> u32 {
        match kind {
            FileKind::File => Self::BLKSIZE,
            _ => 4096,
        }
    }
}

/// Who is asking: the caller's credentials as the kernel passed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// Capacity figures for `statfs`; defined in `util` because the chunk
/// store reports its tier's capacity with them too, and `store` must not
/// import from `fs`.
pub use crate::util::StatFs;

/// What `setattr` changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// Flags of `open(2)` that the core cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags(pub i32);

impl OpenFlags {
    pub fn writable(self) -> bool {
        let acc = self.0 & libc::O_ACCMODE;
        acc == libc::O_WRONLY || acc == libc::O_RDWR
    }
    pub fn readable(self) -> bool {
        let acc = self.0 & libc::O_ACCMODE;
        acc == libc::O_RDONLY || acc == libc::O_RDWR
    }
    pub fn truncate(self) -> bool {
        self.0 & libc::O_TRUNC != 0
    }
    pub fn append(self) -> bool {
        self.0 & libc::O_APPEND != 0
    }
    pub fn excl(self) -> bool {
        self.0 & libc::O_EXCL != 0
    }
}

/// How the kernel should treat an open file's page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOpts {
    /// Keep pages cached from earlier opens (the data has not changed).
    pub keep_cache: bool,
    /// Bypass the page cache.
    pub direct_io: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `store` stamps its rows with `util::now_ns`, the core with
    /// `Timespec`: both must read the same clock the same way.
    #[test]
    fn util_now_ns_is_timespec_now() {
        let before = Timespec::now().as_nanos();
        let n = crate::util::now_ns();
        let after = Timespec::now().as_nanos();
        assert!(before <= n && n <= after, "{before} {n} {after}");
    }

    #[test]
    fn timespec_roundtrips_negative_and_nanos() {
        for (s, n) in [
            (0, 0),
            (1, 5),
            (-1, 0),
            (-2, 999_999_999),
            (1_700_000_000, 123),
        ] {
            let t = Timespec::new(s, n);
            assert_eq!(Timespec::from_system(t.to_system()), t);
            assert_eq!(Timespec::from_nanos(t.as_nanos()), t);
        }
    }

    #[test]
    fn open_flags() {
        assert!(OpenFlags(libc::O_RDWR | libc::O_TRUNC).writable());
        assert!(OpenFlags(libc::O_RDWR).readable());
        assert!(!OpenFlags(libc::O_RDONLY).writable());
        assert!(OpenFlags(libc::O_WRONLY | libc::O_APPEND).append());
    }
}
