//! The chunk reaper: the background collector that removes chunks nothing
//! references any more.
//!
//! An unlink costs one catalog transaction on the caller's path; the chunk
//! rows and files go in batches here, in the background (as ext4 and XFS
//! free the blocks of unlinked inodes lazily). Nothing is lost if the daemon
//! dies first: start-up collects every unreferenced chunk.
//!
//! What "referenced" means belongs to the owner of the references (the
//! native volumes' catalog), which implements [`Collect`]; this module holds
//! the wake-up, the one-collection-at-a-time lock, the thread, and the
//! batched removal from the [`ChunkStore`].

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::chunks::{ChunkStore, hex};
use super::treehash::Hash;
use crate::error::{Error, Result};

/// Chunks removed per catalog transaction by [`remove_free`].
const COLLECT_BATCH: usize = 256;

/// The wake-up of the background collector (see [`Reaper::wake`]).
#[derive(Default)]
pub struct Reaper {
    pending: Mutex<bool>,
    cv: Condvar,
    /// Held for a whole collection: the reaper thread and the management
    /// operations that collect take turns, and fsck never sees a chunk
    /// whose row is gone but whose file is not yet.
    pub collecting: Mutex<()>,
}

impl Reaper {
    /// Asks the reaper thread to collect soon; returns at once.
    pub fn wake(&self) {
        let mut p = self.pending.lock();
        *p = true;
        self.cv.notify_one();
    }
}

/// The owner of chunk references, as the reaper sees it.
pub trait Collect: Send + Sync + 'static {
    fn reaper(&self) -> &Arc<Reaper>;

    /// One collection. The caller holds `reaper().collecting`.
    fn collect_locked(&self);
}

/// Runs one collection, taking turns with the reaper thread.
pub fn collect<C: Collect + ?Sized>(c: &C) {
    let _one_at_a_time = c.reaper().collecting.lock();
    c.collect_locked();
}

/// Removes the chunk files of `free` (chunks the catalog lists as
/// unreferenced) in batches of [`COLLECT_BATCH`]; `drop_rows`, run per batch
/// under the store's pin lock, drops the catalog rows of those still free
/// and returns them. Failures are logged; the next collection retries.
pub fn remove_free(
    store: &ChunkStore,
    free: &[Hash],
    drop_rows: impl Fn(&[Hash]) -> Result<Vec<Hash>>,
) {
    for batch in free.chunks(COLLECT_BATCH) {
        if let Err(e) = store.remove_unpinned_batch(batch, &drop_rows) {
            tracing::warn!("collecting unreferenced chunks: {e}");
        }
    }
}

/// Removes an uncommitted chunk's file unless `referenced` says the catalog
/// knows it; if someone holds a pin on it right now, adds it to `stale` for
/// a later collection to retry.
pub fn discard_one(
    store: &ChunkStore,
    stale: &Mutex<std::collections::HashSet<Hash>>,
    h: Hash,
    referenced: impl FnOnce() -> Result<bool>,
) {
    match store.remove_unless_pinned(&h, || Ok(!referenced()?)) {
        Ok(Some(_)) => {}
        Ok(None) => {
            stale.lock().insert(h);
        }
        // Start-up's orphan check removes a file left here.
        Err(e) => tracing::warn!("discarding chunk {}: {e}", hex(&h)),
    }
}

/// Starts the reaper thread. It collects when woken and at least once a
/// second, which also retries chunks whose removal a reader's pin delayed
/// (one indexed query when there is nothing to do), and returns chunk
/// buffers that sat idle in the pool to the kernel. It holds the owner
/// weakly and ends once the daemon drops it.
pub fn start<C: Collect>(owner: &Arc<C>) -> Result<()> {
    let weak = Arc::downgrade(owner);
    let r = owner.reaper().clone();
    std::thread::Builder::new()
        .name("fsd-reaper".into())
        .spawn(move || {
            loop {
                {
                    let mut p = r.pending.lock();
                    if !*p {
                        r.cv.wait_for(&mut p, Duration::from_secs(1));
                    }
                    *p = false;
                }
                let Some(owner) = weak.upgrade() else { return };
                collect(&*owner);
                super::buf::trim();
            }
        })
        .map_err(|e| Error::io("starting the chunk reaper thread", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn discard_keeps_referenced_and_remembers_pinned_chunks() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let stale = Mutex::new(HashSet::new());
        let free = *store.put(b"free").unwrap().hash();
        let kept = *store.put(b"kept").unwrap().hash();
        let pinned = store.put(b"pinned").unwrap();
        discard_one(&store, &stale, free, || Ok(false));
        discard_one(&store, &stale, kept, || Ok(true));
        discard_one(&store, &stale, *pinned.hash(), || Ok(false));
        assert!(!store.contains(&free));
        assert!(store.contains(&kept));
        assert!(store.contains(pinned.hash()));
        assert_eq!(*stale.lock(), HashSet::from([*pinned.hash()]));
    }

    #[test]
    fn remove_free_removes_only_what_the_catalog_releases() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let hs: Vec<Hash> = (0..300u32)
            .map(|i| *store.put(&i.to_le_bytes()).unwrap().hash())
            .collect();
        let batches = std::sync::atomic::AtomicUsize::new(0);
        // The catalog releases all but the first chunk.
        remove_free(&store, &hs, |b| {
            batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(b.iter().filter(|h| **h != hs[0]).copied().collect())
        });
        assert_eq!(batches.into_inner(), 2, "300 chunks in batches of 256");
        assert!(store.contains(&hs[0]));
        assert!(hs[1..].iter().all(|h| !store.contains(h)));
    }
}
