//! Emptied chunk files kept for reuse instead of being unlinked.
//!
//! **Why.** Copying into a native volume creates a chunk file per MiB, and
//! deleting a file unlinks one per MiB. On ext4 without a journal (what this
//! project's CI and benchmark disks use) every inode allocation skips,
//! one by one, the inodes of its group freed in the last few seconds (up to
//! five minutes while their inode-table blocks are dirty: `recently_deleted`
//! in the kernel's allocator). A copy made right after deleting the
//! previous one spent a fifth of the daemon's time there. On any filesystem,
//! reusing an inode also spares the allocation and the final inode release.
//! PostgreSQL recycles its WAL segment files for the same reason.
//!
//! **How.** Collection renames a chunk file to `.spare-<id>` in its own
//! fan-out directory (a rename inside one directory: no cross-directory
//! rename lock), truncates it to zero bytes (its blocks are freed as an
//! unlink would) and records it here. A writer of a new chunk in the same
//! fan-out directory renames a spare to the chunk's name (`RENAME_NOREPLACE`)
//! and writes it as if it had just created it. At most [`MAX`] spares are
//! kept; beyond that files are unlinked as before.
//!
//! **Crash safety.** A spare is never referenced by the catalog. A crash
//! between the rename to the chunk's name and the end of the write leaves
//! an unreferenced chunk file, which start-up removes like any orphan; a
//! crash between the rename to `.spare-<id>` and the truncation leaves a
//! spare with data, which start-up truncates before adopting it.

use std::path::Path;

/// Spare files kept at most (empty files: an inode each, no blocks).
pub const MAX: usize = 4096;
const PREFIX: &str = ".spare-";

/// The spare files of each of the 256 fan-out directories.
pub struct Spares {
    dirs: Vec<Vec<u64>>,
    total: usize,
    next: u64,
}

impl Default for Spares {
    fn default() -> Self {
        Spares {
            dirs: vec![Vec::new(); 256],
            total: 0,
            next: 0,
        }
    }
}

/// The file name of spare `id`.
pub fn name(id: u64) -> String {
    format!("{PREFIX}{id}")
}

/// The id of a spare's file name, if it is one.
pub fn parse(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

impl Spares {
    /// A fresh id for a file about to become a spare in any directory.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Notes an id already in use on disk, so fresh ids never collide
    /// with it.
    pub fn put_seen(&mut self, id: u64) {
        self.next = self.next.max(id + 1);
    }

    /// Whether another spare may be kept.
    pub fn has_room(&self) -> bool {
        self.total < MAX
    }

    /// Records an empty spare file; false (and nothing recorded) if the
    /// store keeps enough spares already.
    pub fn put(&mut self, fan: u8, id: u64) -> bool {
        if !self.has_room() {
            return false;
        }
        self.dirs[fan as usize].push(id);
        self.total += 1;
        self.next = self.next.max(id + 1);
        true
    }

    /// Takes a spare of fan-out directory `fan`, if there is one.
    pub fn take(&mut self, fan: u8) -> Option<u64> {
        let id = self.dirs[fan as usize].pop()?;
        self.total -= 1;
        Some(id)
    }

    /// Spares kept now.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// `rename(from, to)` that fails with EEXIST instead of replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
        .map_err(std::io::Error::from)
}

/// Empties a file by path (its blocks are freed; the inode stays).
pub fn truncate(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_chunk_names() {
        assert_eq!(parse(&name(42)), Some(42));
        assert_eq!(parse("ab12"), None);
        assert_eq!(parse(".spare-x"), None);
        assert_eq!(parse(".spare-"), None);
    }

    #[test]
    fn spares_are_per_directory_and_capped() {
        let mut s = Spares::default();
        let a = s.next_id();
        let b = s.next_id();
        assert_ne!(a, b);
        assert!(s.put(3, a));
        assert!(s.put(3, b));
        assert_eq!(s.take(4), None, "only directory 3 has spares");
        assert_eq!(s.take(3), Some(b));
        assert_eq!(s.len(), 1);
        // Adopted ids move the counter past them.
        assert!(s.put(9, 1000));
        assert_eq!(s.next_id(), 1001);
        while s.has_room() {
            let id = s.next_id();
            assert!(s.put(0, id));
        }
        assert_eq!(s.len(), MAX);
        assert!(!s.put(1, 5000), "full");
        assert_eq!(s.len(), MAX);
    }

    #[test]
    fn rename_noreplace_keeps_an_existing_target() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
        truncate(&b).unwrap();
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 0);
    }
}
