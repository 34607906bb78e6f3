//! Permission checks for requests that do not come through the kernel (the
//! control socket), done exactly as the kernel does them for open(2) with
//! `default_permissions`: owner bits for the owner, group bits for a member of
//! the file's group, other bits for everyone else; root may read and write
//! anything and execute anything with at least one execute bit.

use std::os::unix::fs::MetadataExt;

/// The credentials of a caller on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub pid: u32,
}

impl Caller {
    pub fn root() -> Self {
        Caller {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            pid: 0,
        }
    }

    /// The credentials of process `pid` with uid and gid from SO_PEERCRED,
    /// plus its supplementary groups from /proc (empty if it is gone).
    pub fn from_peer(pid: u32, uid: u32, gid: u32) -> Self {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
            .unwrap_or_default();
        Caller {
            uid,
            gid,
            groups,
            pid,
        }
    }

    /// The credentials of this process (for `fsd mount --attach`, which
    /// opens media with the rights of whoever started the daemon).
    pub fn current() -> Self {
        let groups = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups,
            pid: std::process::id(),
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

/// May `c` access a file with `mode`, `uid` and `gid` for `want` (R|W|X)?
pub fn may_access(c: &Caller, mode: u32, uid: u32, gid: u32, want: u32) -> bool {
    if c.uid == 0 {
        // Root needs an execute bit somewhere to execute; else anything goes.
        return want & X == 0 || mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
    }
    let bits = if c.uid == uid {
        (mode >> 6) & 7
    } else if c.in_group(gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// [`may_access`] on a file's metadata.
pub fn may_access_meta(c: &Caller, m: &std::fs::Metadata, want: u32) -> bool {
    may_access(c, m.mode(), m.uid(), m.gid(), want)
}

/// The mode a regular file keeps after a write, truncate or chown by a
/// caller without CAP_FSETID (any uid but 0), as the kernel's
/// `file_remove_privs` and `setattr_should_drop_sgid` leave it on ext4:
/// setuid always goes; setgid goes when group execute is set, or when the
/// caller is not in the file's group (`in_group` is asked only then, since
/// it may read /proc). FUSE leaves the second case, and the whole of writes
/// through direct I/O and `O_TRUNC` opens, to the filesystem.
pub fn mode_without_privs(mode: u32, in_group: impl FnOnce() -> bool) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if m & libc::S_ISGID != 0 && (m & libc::S_IXGRP != 0 || !in_group()) {
        m &= !libc::S_ISGID;
    }
    m
}

/// Is the caller (fsgid `gid`, process `pid`) in group `file_gid`? The
/// supplementary groups come from /proc, as FUSE sends only the fsgid.
pub fn caller_in_group(uid: u32, gid: u32, pid: u32, file_gid: u32) -> bool {
    gid == file_gid || Caller::from_peer(pid, uid, gid).in_group(file_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 1,
        }
    }

    #[test]
    fn owner_group_other_like_the_kernel() {
        let m = libc::S_IFREG | 0o640;
        assert!(may_access(&user(5, 9, &[]), m, 5, 7, R | W));
        assert!(may_access(&user(6, 7, &[]), m, 5, 7, R));
        assert!(!may_access(&user(6, 7, &[]), m, 5, 7, W));
        assert!(
            may_access(&user(6, 1, &[7]), m, 5, 7, R),
            "supplementary group"
        );
        assert!(!may_access(&user(6, 1, &[]), m, 5, 7, R));
        // Owner bits apply to the owner even if group bits would allow more.
        assert!(!may_access(
            &user(5, 7, &[]),
            libc::S_IFREG | 0o070,
            5,
            7,
            R
        ));
    }

    #[test]
    fn root_reads_all_but_executes_only_with_a_bit() {
        assert!(may_access(&Caller::root(), libc::S_IFREG, 5, 5, R | W));
        assert!(!may_access(&Caller::root(), libc::S_IFREG | 0o600, 5, 5, X));
        assert!(may_access(&Caller::root(), libc::S_IFREG | 0o700, 5, 5, X));
    }

    #[test]
    fn privs_dropped_as_the_kernel_drops_them() {
        let reg = libc::S_IFREG;
        // setuid always goes; setgid with group execute always goes.
        assert_eq!(mode_without_privs(reg | 0o6755, || true), reg | 0o755);
        // setgid without group execute stays for a member only.
        assert_eq!(mode_without_privs(reg | 0o2644, || true), reg | 0o2644);
        assert_eq!(mode_without_privs(reg | 0o2644, || false), reg | 0o644);
        // Nothing to drop: group membership is not even asked.
        assert_eq!(
            mode_without_privs(reg | 0o755, || panic!("asked")),
            reg | 0o755
        );
    }
}
