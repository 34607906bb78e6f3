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
}
