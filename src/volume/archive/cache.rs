//! The one budget for decompressed archive data, shared by every volume.
//!
//! A compressed member cannot be read in place, so what is decompressed for
//! a read is kept here in fixed-size blocks, evicted least recently used
//! first, so that the next reader of the same range pays nothing. Everything
//! the decompression side keeps in memory counts against the same budget:
//! the blocks, and also the seek checkpoints and resumable cursors of
//! [`super::deflate_index`], which are "pinned" (not evicted, but refused
//! once they would take more than half of the budget). Nothing is written
//! to disk, so a hostile archive can never fill the hot tier; a reader whose
//! bytes do not fit still gets them, they are just not kept.
//!
//! The daemon sets the budget from `[cache]` once at start-up with
//! [`configure`]; volumes take the shared cache from [`global`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

/// Decompressed data is cached in blocks of this many bytes, aligned to
/// multiples of it in the member. Large enough that a 1 MiB FUSE read is a
/// handful of lookups, small enough that a random 4 KiB read of a cold
/// member decompresses little beyond what it asked for.
pub const BLOCK: u64 = 256 << 10;

/// What identifies a cached block: the volume's cache handle, the member
/// (node number) and the block number inside the member.
type Key = (u64, u32, u64);

struct Lru {
    map: LruCache<Key, Arc<[u8]>>,
    /// Bytes of the blocks in `map`.
    blocks: u64,
    /// Bytes pinned by checkpoints and cursors.
    pinned: u64,
}

/// The shared cache; see the module documentation.
pub struct DecompCache {
    limit: u64,
    /// Output bytes between two seek checkpoints of a compressed member.
    interval: u64,
    lru: Mutex<Lru>,
    next_volume: AtomicU64,
}

/// Memory pinned in the budget; released when dropped.
pub struct Charge {
    cache: Arc<DecompCache>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut l = self.cache.lru.lock();
        l.pinned = l.pinned.saturating_sub(self.bytes);
    }
}

/// How much of the budget is in use, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blocks: u64,
    pub pinned: u64,
    pub limit: u64,
}

impl DecompCache {
    /// A cache of at most `limit` bytes whose members get a seek checkpoint
    /// every `interval` bytes of output.
    pub fn new(limit: u64, interval: u64) -> Arc<Self> {
        Arc::new(DecompCache {
            limit,
            interval: interval.max(BLOCK),
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                blocks: 0,
                pinned: 0,
            }),
            next_volume: AtomicU64::new(1),
        })
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    pub fn usage(&self) -> Usage {
        let l = self.lru.lock();
        Usage {
            blocks: l.blocks,
            pinned: l.pinned,
            limit: self.limit,
        }
    }

    /// A new handle for one volume's blocks.
    pub fn volume(self: &Arc<Self>, label: &str) -> VolumeCache {
        VolumeCache {
            cache: self.clone(),
            id: self.next_volume.fetch_add(1, Ordering::Relaxed),
            label: label.to_string(),
        }
    }

    fn get(&self, key: Key) -> Option<Arc<[u8]>> {
        self.lru.lock().map.get(&key).cloned()
    }

    /// Keeps `data` under `key` if it fits, evicting the least recently used
    /// blocks to make room.
    fn put(&self, key: Key, data: Arc<[u8]>) {
        let len = data.len() as u64;
        let mut l = self.lru.lock();
        if l.pinned + len > self.limit {
            return;
        }
        if let Some(old) = l.map.put(key, data) {
            l.blocks -= old.len() as u64;
        }
        l.blocks += len;
        Self::evict(&mut l, self.limit);
    }

    fn evict(l: &mut Lru, limit: u64) {
        while l.blocks + l.pinned > limit {
            match l.map.pop_lru() {
                Some((_, v)) => l.blocks -= v.len() as u64,
                None => break,
            }
        }
    }

    /// Pins `bytes` of the budget for a checkpoint or cursor, evicting
    /// blocks to make room. Refused (None) when pinned memory would pass
    /// half of the budget: the caller then goes without, which costs time,
    /// never correctness.
    pub fn pin(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        let mut l = self.lru.lock();
        if l.pinned + bytes > self.limit / 2 {
            return None;
        }
        l.pinned += bytes;
        Self::evict(&mut l, self.limit);
        Some(Charge {
            cache: self.clone(),
            bytes,
        })
    }

    /// Drops every block of volume `id`; returns the bytes freed.
    fn purge(&self, id: u64, node: Option<u32>) -> u64 {
        let mut l = self.lru.lock();
        let keys: Vec<Key> = l
            .map
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.0 == id && node.is_none_or(|n| k.1 == n))
            .collect();
        let mut freed = 0;
        for k in keys {
            if let Some(v) = l.map.pop(&k) {
                freed += v.len() as u64;
            }
        }
        l.blocks -= freed;
        freed
    }
}

/// One volume's view of the shared cache. Dropping it (the volume is
/// detached and its last open file closed) frees its blocks at once.
pub struct VolumeCache {
    cache: Arc<DecompCache>,
    id: u64,
    label: String,
}

impl VolumeCache {
    pub fn shared(&self) -> &Arc<DecompCache> {
        &self.cache
    }

    /// Block `block` of member `node`, if cached.
    pub fn get(&self, node: u32, block: u64) -> Option<Arc<[u8]>> {
        self.cache.get((self.id, node, block))
    }

    pub fn put(&self, node: u32, block: u64, data: Arc<[u8]>) {
        self.cache.put((self.id, node, block), data)
    }

    /// Forgets every block of `node` (its data turned out to be corrupt).
    pub fn purge_node(&self, node: u32) {
        self.cache.purge(self.id, Some(node));
    }
}

impl Drop for VolumeCache {
    fn drop(&mut self) {
        let freed = self.cache.purge(self.id, None);
        let u = self.cache.usage();
        tracing::info!(
            medium = %self.label,
            freed,
            cache_bytes = u.blocks + u.pinned,
            "volume released: freed {freed} bytes of decompressed data, cache now {} bytes",
            u.blocks + u.pinned
        );
    }
}

/// The default budget when the daemon has not called [`configure`] (unit
/// tests, tools).
const DEFAULT_LIMIT: u64 = 256 << 20;
const DEFAULT_INTERVAL: u64 = 4 << 20;
/// The default `[archive] max_ratio`.
pub const DEFAULT_MAX_RATIO: u64 = 1000;

static GLOBAL: RwLock<Option<Arc<DecompCache>>> = RwLock::new(None);
static MAX_RATIO: OnceLock<AtomicU64> = OnceLock::new();

/// Sets the shared budget (bytes), the checkpoint interval (bytes) and the
/// largest accepted compression ratio (0: no limit). Volumes attached from
/// then on use the new cache.
pub fn configure(limit: u64, interval: u64, max_ratio: u64) {
    *GLOBAL.write() = Some(DecompCache::new(limit, interval));
    max_ratio_cell().store(max_ratio, Ordering::Relaxed);
}

fn max_ratio_cell() -> &'static AtomicU64 {
    MAX_RATIO.get_or_init(|| AtomicU64::new(DEFAULT_MAX_RATIO))
}

/// The largest compression ratio a member may declare (0: no limit).
pub fn max_ratio() -> u64 {
    max_ratio_cell().load(Ordering::Relaxed)
}

/// The shared cache.
pub fn global() -> Arc<DecompCache> {
    if let Some(c) = &*GLOBAL.read() {
        return c.clone();
    }
    GLOBAL
        .write()
        .get_or_insert_with(|| DecompCache::new(DEFAULT_LIMIT, DEFAULT_INTERVAL))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_holds_and_pins_evict_blocks() {
        let c = DecompCache::new(10 * 100, 1);
        let v = c.volume("t");
        for b in 0..20 {
            v.put(1, b, vec![0u8; 100].into());
        }
        assert_eq!(c.usage().blocks, 1000);
        assert!(v.get(1, 0).is_none() && v.get(1, 19).is_some());
        let p = c.pin(300).unwrap();
        assert_eq!(c.usage().blocks, 700);
        assert!(c.pin(300).is_none(), "pins stay within half the budget");
        drop(p);
        assert_eq!(c.usage().pinned, 0);
        let w = c.volume("u");
        w.put(1, 0, vec![1u8; 100].into());
        drop(v);
        assert_eq!(c.usage().blocks, 100);
        assert_eq!(&*w.get(1, 0).unwrap(), &[1u8; 100][..]);
    }
}
