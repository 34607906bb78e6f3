//! Durable tiers: where chunks go when they leave the hot [`ChunkStore`]
//! (shelving), and where small named objects (manifests, later leases) live
//! beside them.
//!
//! A tier is content-addressed for chunks: a chunk's name is the SHA-256 of
//! its bytes, the upload carries that name and the backend checks it, so a
//! chunk that made it into a tier is the chunk that was meant. Named objects
//! are not content-addressed; they are written whole, either create-only (as
//! S3's `If-None-Match: *`) or as a compare-and-swap against the version the
//! writer last saw (as S3's `If-Match`), so two daemons or two threads that
//! race on a manifest cannot both win.
//!
//! The trait is synchronous on purpose: the daemon is threaded, and a network
//! backend (S3) will block on a private runtime rather than make every caller
//! async. Errors are the one [`crate::error::Error`] type; a failed
//! precondition (object exists, version moved) is [`ErrorKind::Exists`] /
//! [`ErrorKind::Busy`], a missing chunk or object is [`ErrorKind::NotFound`],
//! a hash mismatch is [`ErrorKind::Integrity`].
//!
//! Nothing in the daemon uses a tier yet; the seam through which chunk reads
//! will recall from one is [`crate::store::access`].
//!
//! [`ChunkStore`]: crate::store::chunks::ChunkStore
//! [`ErrorKind::Exists`]: crate::error::ErrorKind::Exists
//! [`ErrorKind::Busy`]: crate::error::ErrorKind::Busy
//! [`ErrorKind::NotFound`]: crate::error::ErrorKind::NotFound
//! [`ErrorKind::Integrity`]: crate::error::ErrorKind::Integrity

pub mod failure;
pub mod file;

use std::ops::Range;

use crate::error::Result;
use crate::store::treehash::Hash;

pub use failure::FailureTier;
pub use file::FileTier;

/// The version of a named object as the backend reports it: opaque to the
/// caller (an S3 ETag, a generation counter), only compared for equality
/// and handed back in [`PutMode::IfMatch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion(pub String);

/// The precondition of a named-object write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Write whatever is there (last writer wins).
    Overwrite,
    /// Write only if no object of that name exists (`If-None-Match: *`);
    /// otherwise fail with `Exists`.
    CreateOnly,
    /// Write only if the object is still at this version (`If-Match`);
    /// otherwise fail with `Busy` (or `NotFound` if it is gone).
    IfMatch(ObjectVersion),
}

/// A content-addressed durable store of chunks plus small named objects.
///
/// Implementations must be safe to call from many threads at once. Every
/// write is durable when it returns (the `file://` tier fsyncs data and
/// directory; an object store acknowledges only stored data).
pub trait DurableTier: Send + Sync {
    /// A short description for log lines and errors (`file:///srv/tier`).
    fn describe(&self) -> String;

    /// Stores `data` as chunk `hash`. The backend checks that `hash` is the
    /// SHA-256 of `data` and fails with `Integrity` if not. Putting a chunk
    /// that is already there succeeds (content addressing makes it the same).
    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<()>;

    /// Reads chunk `hash`, whole (`None`) or the byte range given (clamped
    /// to the chunk's end). `NotFound` if the tier does not hold it.
    fn get_chunk(&self, hash: &Hash, range: Option<Range<u64>>) -> Result<Vec<u8>>;

    /// The size of chunk `hash`, or `None` if the tier does not hold it.
    fn head_chunk(&self, hash: &Hash) -> Result<Option<u64>>;

    /// Removes chunk `hash`; removing an absent chunk succeeds.
    fn delete_chunk(&self, hash: &Hash) -> Result<()>;

    /// The chunks whose lower-case hex name starts with `prefix`, sorted.
    fn list_chunks(&self, prefix: &str) -> Result<Vec<Hash>>;

    /// Writes named object `key` under the precondition `mode`, returning
    /// its new version.
    fn put_object(&self, key: &str, data: &[u8], mode: PutMode) -> Result<ObjectVersion>;

    /// Reads named object `key` and its version. `NotFound` if absent.
    fn get_object(&self, key: &str) -> Result<(Vec<u8>, ObjectVersion)>;

    /// Removes named object `key`; removing an absent object succeeds.
    fn delete_object(&self, key: &str) -> Result<()>;

    /// The named objects whose key starts with `prefix`, sorted.
    fn list_objects(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Checks an object key: `/`-separated components of `[A-Za-z0-9._-]`, none
/// empty, `.` or `..`, at most 512 bytes. Keys come from the daemon, not from
/// users, but a tier must never be talked into writing outside its root.
pub fn check_key(key: &str) -> Result<()> {
    use crate::error::{Error, ErrorKind};
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("object key {key:?}: {why}"),
        ))
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1 to 512 bytes");
    }
    for c in key.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.starts_with(".tmp") {
            return bad("empty, `.`, `..` or reserved component");
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("only letters, digits, `.`, `_` and `-` are allowed");
        }
    }
    Ok(())
}

/// Parses a chunk name (64 lower- or upper-case hex digits).
pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}
