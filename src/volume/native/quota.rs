//! The byte quota of a native volume (`limits.native_volume_mb`).
//!
//! What counts: the size of every regular file (its apparent size, as
//! `ls -l` shows it, so a sparse file counts whole) plus the names and
//! values of every xattr in the volume. Apparent size rather than stored
//! chunks because it is known at the moment of every write without
//! hashing or deduplicating anything, it never changes behind the
//! writer's back (a copy that shares chunks, a shelve), and it is the
//! bound an operator can reason about: a volume never holds more than the
//! quota of data, whatever dedup does.
//!
//! A write that would pass the quota fails with EDQUOT before any byte of
//! it is buffered, so the file keeps its earlier data (as ext4 with
//! project quotas).
//!
//! Keeping the count cheap: [`Quota`] holds an upper bound of the usage.
//! Growth is added to it before it happens (and refused if it would pass
//! the limit); shrinking by truncate is subtracted. Deletions are not
//! tracked on their paths (unlink, rename over a file, the last close of
//! an unlinked file), so the bound only drifts upwards; whenever it says a
//! write would pass the limit, it is recomputed exactly (one query over the
//! volume's inodes, plus the size changes of open files that are not
//! committed yet) before the write is refused.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

use rusqlite::Connection;

use crate::error::{Error, ErrorKind, Result};

/// The quota state of one native volume.
#[derive(Default)]
pub struct Quota {
    /// Bytes allowed; 0 means no quota (root's volumes, or a limit of 0).
    limit: AtomicU64,
    /// An upper bound of the usage, `None` until first needed.
    used: Mutex<Option<u64>>,
    /// The sum over open files of their size less their committed size:
    /// what the catalog does not know yet.
    pending: AtomicI64,
}

impl Quota {
    /// Sets the limit in bytes (0: none).
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// True when this volume has a quota; every other call is a no-op
    /// without one.
    pub fn active(&self) -> bool {
        self.limit() != 0
    }

    /// The exact usage: what the catalog has committed plus what open
    /// files have not committed yet.
    fn exact(&self, c: &Connection, slot: u32) -> Result<u64> {
        let (_, committed) = super::meta::usage(c, slot)?;
        let pending = self.pending.load(Ordering::Acquire);
        Ok(committed.saturating_add_signed(pending))
    }

    /// Reserves `bytes` of growth, or fails with [`ErrorKind::Quota`].
    /// `conn` gives the catalog connection if the usage must be counted
    /// (the caller may already hold it); `what` names the volume and file
    /// for the message.
    pub fn grow<C: std::ops::Deref<Target = Connection>>(
        &self,
        conn: impl FnOnce() -> C,
        slot: u32,
        bytes: u64,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        let limit = self.limit();
        if limit == 0 || bytes == 0 {
            return Ok(());
        }
        {
            let mut used = self.used.lock();
            if let Some(u) = *used
                && u.saturating_add(bytes) <= limit
            {
                *used = Some(u + bytes);
                return Ok(());
            }
        }
        // Unknown, or apparently over: count exactly (deletions since the
        // last count may have freed enough). Not under `used`: the caller
        // of setxattr holds the catalog connection and then takes `used`,
        // so taking the connection under `used` could deadlock. A growth
        // reserved by another writer meanwhile is in `pending` once its
        // write lands, so the next exact count sees it.
        let now = self.exact(&conn(), slot)?;
        let mut used = self.used.lock();
        if now.saturating_add(bytes) > limit {
            *used = Some(now);
            return Err(Error::new(
                ErrorKind::Quota,
                format!(
                    "{}: disk quota exceeded: the volume uses {now} of its {limit} bytes \
                     (limits.native_volume_mb) and this needs {bytes} more",
                    what()
                ),
            ));
        }
        *used = Some(now + bytes);
        Ok(())
    }

    /// Records that the usage fell by `bytes` (a truncate, a rollback, an
    /// xattr removed).
    pub fn shrink(&self, bytes: u64) {
        if !self.active() || bytes == 0 {
            return;
        }
        if let Some(u) = self.used.lock().as_mut() {
            *u = u.saturating_sub(bytes);
        }
    }

    /// Records a change of an open file's size that the catalog does not
    /// have yet (positive), or a commit that gave it to the catalog
    /// (negative).
    pub fn pending(&self, delta: i64) {
        if self.active() && delta != 0 {
            self.pending.fetch_add(delta, Ordering::AcqRel);
        }
    }
}
