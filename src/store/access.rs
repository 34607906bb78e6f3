//! The one path by which chunk data is read: native file reads, offload
//! token snapshot fills, fsck and copies all go through [`ChunkAccess`].
//!
//! Today the only implementation, [`HotChunks`], asks the hot
//! [`ChunkStore`] and nothing else. The point of the seam is what comes
//! next: once volumes can be shelved, a chunk may be absent from the hot
//! store and present in a [`DurableTier`](crate::tier::DurableTier). The
//! access layer that shelving adds will, on a miss, recall the chunk from
//! the tier, check its SHA-256 against its name, keep it hot and then read
//! it, in this one place (as mountpoint-s3's `DataCache` sits between its
//! prefetcher and the S3 client), so no reader has to know where a chunk
//! lives. The unit test below builds that layer over a
//! [`FailureTier`](crate::tier::FailureTier) to show the seam holds.
//!
//! Pins (which keep a chunk from being collected while it is read) stay on
//! [`ChunkStore`]: they are about the hot copy, whatever layer filled it.

use std::sync::Arc;

use super::chunks::ChunkStore;
use super::treehash::Hash;
use crate::error::Result;

/// Reads of chunk data. Implementations are shared by every thread of the
/// daemon; a call costs one dynamic dispatch on top of the store's read, and
/// reads into the caller's buffer (no allocation or copy of its own).
pub trait ChunkAccess: Send + Sync {
    /// Fills `buf` from byte `offset` of chunk `h`, verified (the hot store
    /// checks the CRC-32C of every 4 KiB block it touches). Reading past the
    /// chunk's end, a missing chunk or a failed check is an `Integrity`
    /// error naming the chunk.
    fn read(&self, h: &Hash, offset: usize, buf: &mut [u8]) -> Result<()>;

    /// Checks chunk `h` completely (footer, block CRCs, SHA-256 against its
    /// name) and returns its length; for fsck.
    fn verify(&self, h: &Hash) -> Result<u32>;

    /// Whether the chunk has a hot copy (fsck tells a missing chunk from a
    /// corrupt one by this).
    fn is_hot(&self, h: &Hash) -> bool;
}

/// [`ChunkAccess`] over the hot store alone: what every volume uses until
/// shelving exists.
pub struct HotChunks {
    store: Arc<ChunkStore>,
}

impl HotChunks {
    pub fn new(store: Arc<ChunkStore>) -> Arc<Self> {
        Arc::new(HotChunks { store })
    }
}

impl ChunkAccess for HotChunks {
    #[inline]
    fn read(&self, h: &Hash, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.store.read(h, offset, buf)
    }

    fn verify(&self, h: &Hash) -> Result<u32> {
        self.store.verify(h)
    }

    fn is_hot(&self, h: &Hash) -> bool {
        self.store.contains(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::store::chunks::hex;
    use crate::store::treehash::sha256;
    use crate::tier::failure::{Fault, Op};
    use crate::tier::{DurableTier, FailureTier, FileTier};

    /// What shelving's access layer will do, in miniature: on a miss, recall
    /// the chunk from the tier, verify its SHA-256, keep it hot, read it.
    struct Recalling<T> {
        hot: Arc<ChunkStore>,
        tier: T,
    }

    impl<T: DurableTier> Recalling<T> {
        fn recall(&self, h: &Hash) -> Result<()> {
            if self.hot.contains(h) {
                return Ok(());
            }
            let data = self.tier.get_chunk(h, None)?;
            if sha256(&data) != *h {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "chunk {} recalled from {} fails its SHA-256 check",
                        hex(h),
                        self.tier.describe()
                    ),
                ));
            }
            drop(self.hot.put_hashed(*h, &data)?);
            Ok(())
        }
    }

    impl<T: DurableTier> ChunkAccess for Recalling<T> {
        fn read(&self, h: &Hash, offset: usize, buf: &mut [u8]) -> Result<()> {
            self.recall(h)?;
            self.hot.read(h, offset, buf)
        }
        fn verify(&self, h: &Hash) -> Result<u32> {
            self.recall(h)?;
            self.hot.verify(h)
        }
        fn is_hot(&self, h: &Hash) -> bool {
            self.hot.contains(h)
        }
    }

    #[test]
    fn hot_chunks_read_what_the_store_holds() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let pin = store.put(b"hello, chunk").unwrap();
        let h = *pin.hash();
        let access: Arc<dyn ChunkAccess> = HotChunks::new(store.clone());
        let mut buf = [0u8; 5];
        access.read(&h, 7, &mut buf).unwrap();
        assert_eq!(&buf, b"chunk");
        assert_eq!(access.verify(&h).unwrap(), 12);
        assert!(access.is_hot(&h));
        let absent = sha256(b"absent");
        assert!(!access.is_hot(&absent));
        assert_eq!(
            access.read(&absent, 0, &mut buf).unwrap_err().kind(),
            ErrorKind::Integrity
        );
    }

    #[test]
    fn a_recalling_layer_fills_misses_from_the_tier_and_verifies_them() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&d.path().join("hot")).unwrap();
        let tier = FailureTier::new(FileTier::open(&d.path().join("tier")).unwrap());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let h = sha256(&data);
        tier.put_chunk(&h, &data).unwrap();
        let access = Recalling {
            hot: store.clone(),
            tier,
        };
        let mut buf = vec![0u8; 1000];

        // The tier hands back damaged bytes: the read fails, nothing is kept.
        access.tier.on_nth(Op::GetChunk, 1, Fault::Corrupt);
        let e = access.read(&h, 500, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("SHA-256"), "{e}");
        assert!(!access.is_hot(&h));
        // A short answer is caught the same way.
        access.tier.on_nth(Op::GetChunk, 2, Fault::Short);
        assert_eq!(
            access.read(&h, 500, &mut buf).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        // The tier is down: its error comes through.
        access
            .tier
            .on_nth(Op::GetChunk, 3, Fault::Fail(ErrorKind::Unavailable));
        assert_eq!(
            access.read(&h, 500, &mut buf).unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert!(!access.is_hot(&h));

        // A good recall: the data is right and now hot.
        access.read(&h, 500, &mut buf).unwrap();
        assert_eq!(buf, &data[500..1500]);
        assert!(access.is_hot(&h));
        assert_eq!(access.tier.calls(Op::GetChunk), 4);
        // Later reads and fsck are served hot, without asking the tier.
        let dyn_access: &dyn ChunkAccess = &access;
        dyn_access.read(&h, 0, &mut buf).unwrap();
        assert_eq!(buf, &data[..1000]);
        assert_eq!(dyn_access.verify(&h).unwrap(), 100_000);
        assert_eq!(access.tier.calls(Op::GetChunk), 4);
    }
}
