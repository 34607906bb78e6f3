//! Which callers want attributes with their directory listings.
//!
//! A READDIRPLUS reply may carry, for each entry, its attributes and a
//! node ID, and the kernel then makes an inode and a dentry for it. That
//! saves a LOOKUP per entry for `ls -l`, `rsync`, `du` and `cp -r`, which
//! stat what they list, but a walker that only needs names and types
//! (`find`, `os.walk`, `fts` without stat) pays the kernel about 4 µs per
//! entry for inodes nobody asks for: a cold `find` of 20,000 archive
//! members took 2.5× as long with attributes as without.
//!
//! The kernel lets a daemon leave the attributes out of any entry (node ID
//! 0: the name and type still reach the program). fsd decides per calling
//! thread, the way the Linux NFS client adapts READDIRPLUS to what follows
//! it: a thread gets attributes for regular files only after it has looked
//! up a non-directory by name, which is what a stat of a listed name costs
//! when the listing carried no attributes. Directories always carry them
//! (walkers descend into them, so the inode is needed anyway). A stat-heavy
//! tool thus pays LOOKUPs for one directory's files before its listings
//! carry attributes; a pure walker never instantiates a file.
//!
//! The record is a small direct-mapped table of thread IDs, written and
//! read with relaxed atomics: a collision or a recycled ID only costs a
//! misprediction (extra LOOKUPs or unused inodes), never a wrong answer.

use std::sync::atomic::{AtomicU32, Ordering};

/// Slots in the table; a power of two. Each concurrently active statting
/// thread needs one.
const SLOTS: usize = 1024;

/// Threads that have shown they stat the names they list.
pub struct ListingAdvice {
    statters: Box<[AtomicU32]>,
}

impl Default for ListingAdvice {
    fn default() -> Self {
        ListingAdvice {
            statters: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl ListingAdvice {
    fn slot(&self, pid: u32) -> &AtomicU32 {
        // Fibonacci hashing spreads sequential thread IDs over the table.
        let h = pid.wrapping_mul(0x9E37_79B9) as usize;
        &self.statters[h % SLOTS]
    }

    /// `pid` looked up a name that is not a directory: it stats (or opens)
    /// what it lists, so its listings should carry attributes.
    pub fn looked_up_file(&self, pid: u32) {
        if pid == 0 {
            return; // kernel-internal requests carry no caller
        }
        let s = self.slot(pid);
        if s.load(Ordering::Relaxed) != pid {
            s.store(pid, Ordering::Relaxed);
        }
    }

    /// Whether a listing for `pid` should carry attributes of regular
    /// files (directories always carry them).
    pub fn wants_file_attrs(&self, pid: u32) -> bool {
        pid != 0 && self.slot(pid).load(Ordering::Relaxed) == pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_attributes_once_it_looks_up_a_file() {
        let a = ListingAdvice::default();
        assert!(!a.wants_file_attrs(4242));
        a.looked_up_file(4242);
        assert!(a.wants_file_attrs(4242));
        assert!(!a.wants_file_attrs(4243), "another thread is not affected");
    }

    #[test]
    fn kernel_requests_never_count() {
        let a = ListingAdvice::default();
        a.looked_up_file(0);
        assert!(!a.wants_file_attrs(0));
    }

    #[test]
    fn a_colliding_thread_takes_the_slot_over() {
        let a = ListingAdvice::default();
        // Find two IDs that share a slot.
        let first = 1000u32;
        let other = (1001..u32::MAX)
            .find(|&p| std::ptr::eq(a.slot(p), a.slot(first)))
            .unwrap();
        a.looked_up_file(first);
        a.looked_up_file(other);
        assert!(a.wants_file_attrs(other));
        assert!(!a.wants_file_attrs(first), "evicted, only a misprediction");
    }
}
