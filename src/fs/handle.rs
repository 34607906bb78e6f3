//! The entries of the core's open-file table.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Mounted;
use super::ops::OpenFile;

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
pub(super) const MAX_WRITERS: usize = 8;

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
