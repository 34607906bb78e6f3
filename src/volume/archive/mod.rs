//! Archive volumes: tar and zip media attached by reference and read in place.
//!
//! The index (see [`index`]) is built once per medium and kept in the
//! catalog; reads go straight to the medium with `pread`, so a member of any
//! size costs no extraction and no copy on disk. Deflated zip members are the
//! exception: they are read through seek checkpoints ([`deflate_index`]) and
//! what is inflated is kept within one budget shared by all volumes
//! ([`cache`]).

pub mod cache;
pub mod deflate_index;
pub mod index;
pub mod kind;
pub mod tar;
pub mod zip;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use self::cache::VolumeCache;
use self::deflate_index::{DeflateIndex, Hold, Stream};
use self::index::{ArchiveIndex, Data, Meta, Node, NodeKind, ROOT};
use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::ops::{DirEntry, OpenFile, VOLUME_ROOT, VolumeFs};
use crate::fs::types::{Attr, Ctx, FileKind, OpenFlags, StatFs, Timespec};
use crate::medium::{ReadAt, SharedMedium};
use crate::store::catalog::Catalog;
use crate::store::treehash::TreeHasher;

/// The archive formats fsd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Tar,
    Zip,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Zip => "zip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tar" => Some(Format::Tar),
            "zip" => Some(Format::Zip),
            _ => None,
        }
    }
}

/// Builds the index of `medium` in `format`. A parser bug that panics on a
/// hostile archive becomes an error here instead of taking the daemon down.
pub fn build_index(
    medium: &dyn ReadAt,
    label: &str,
    format: Format,
    implicit: Meta,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveIndex> {
    let run = std::panic::AssertUnwindSafe(|| match format {
        Format::Tar => tar::index_tar(medium, label, implicit, progress),
        Format::Zip => zip::index_zip(medium, label, implicit, progress),
    });
    match std::panic::catch_unwind(run) {
        Ok(Ok(idx)) if !idx.stats.over_limit => {
            check_ratios(&idx, label, cache::max_ratio())?;
            Ok(idx)
        }
        Ok(Ok(idx)) if idx.stats.over_limit => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{label}: more than {} entries; such archives are not supported",
                index::MAX_NODES
            ),
        )),
        Ok(r) => r,
        Err(_) => Err(Error::corrupt(
            label,
            0,
            "the archive parser failed on this input (please report it with the archive)",
        )),
    }
}

/// No valid deflate stream inflates to more than 1032 times its size (a
/// 258-byte match in two bits); allow some slack for headers.
const DEFLATE_MAX_RATIO: u64 = 1032;
/// Members up to this size are never refused for their ratio: a MiB of
/// zeros legitimately compresses a thousandfold and costs nothing.
const RATIO_FLOOR: u64 = 1 << 20;

/// Refuses an archive with a compressed member whose declared size is
/// impossible for its compressed size, or whose ratio passes `max_ratio`
/// (0: no limit). The declared size is what the archive's directory says;
/// reads also stop with EIO if the data inflates past it.
pub fn check_ratios(idx: &ArchiveIndex, label: &str, max_ratio: u64) -> Result<()> {
    for (i, n) in idx.nodes.iter().enumerate() {
        let Data::Deflate { csize, .. } = n.data else {
            continue;
        };
        let ratio = n.size.checked_div(csize).unwrap_or(u64::MAX);
        let possible = csize
            .saturating_mul(DEFLATE_MAX_RATIO)
            .saturating_add(64 << 10);
        if n.size > possible {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{label}: member {}: declares {} bytes from {csize} compressed bytes, more than \
                     any deflate stream can hold; the archive is damaged or forged",
                    path_in(idx, i as u32),
                    n.size
                ),
            ));
        }
        if max_ratio > 0 && n.size > RATIO_FLOOR && n.size > csize.saturating_mul(max_ratio) {
            return Err(Error::new(
                ErrorKind::TooBig,
                format!(
                    "{label}: member {}: declares {} bytes from {csize} compressed bytes \
                     (ratio {ratio}:1, over the limit of {max_ratio}:1); refused as a likely \
                     decompression bomb (raise [archive] max_ratio to attach it)",
                    path_in(idx, i as u32),
                    n.size
                ),
            ));
        }
    }
    Ok(())
}

/// The path of node `node` inside the volume, for messages.
fn path_in(idx: &ArchiveIndex, node: u32) -> String {
    let mut parts = Vec::new();
    let mut cur = node;
    for _ in 0..4096 {
        if cur == ROOT {
            break;
        }
        let parent = idx.parent_of(cur);
        match idx.children(parent).iter().find(|e| e.node == cur) {
            Some(e) => parts.push(String::from_utf8_lossy(&e.name).into_owned()),
            None => break,
        }
        cur = parent;
    }
    parts.reverse();
    parts.join("/")
}

/// Converts an index node to the attributes `stat` shows.
fn node_attr(ino: u64, n: &Node) -> Attr {
    let mtime = Timespec::new(n.meta.mtime, n.meta.mtime_nsec);
    let kind = match n.kind {
        NodeKind::File => FileKind::File,
        NodeKind::Dir => FileKind::Dir,
        NodeKind::Symlink => FileKind::Symlink,
        NodeKind::Fifo => FileKind::Fifo,
        NodeKind::CharDev => FileKind::CharDev,
        NodeKind::BlockDev => FileKind::BlockDev,
    };
    let size = match n.kind {
        NodeKind::Symlink => n.target.len() as u64,
        _ => n.size,
    };
    let stored = match &n.data {
        Data::Sparse { segments } => segments.iter().map(|s| s.len).sum(),
        Data::Deflate { csize, .. } => *csize,
        _ => size,
    };
    Attr {
        ino,
        kind,
        size,
        blocks: stored.div_ceil(512),
        perm: n.meta.perm & 0o7777,
        nlink: n.nlink,
        uid: n.meta.uid,
        gid: n.meta.gid,
        rdev: n.rdev as u32,
        atime: mtime,
        mtime,
        ctime: mtime,
        blksize: Attr::blksize_for(kind),
    }
}

struct Inner {
    label: String,
    index: ArchiveIndex,
    medium: SharedMedium,
    /// Checkpoint indexes of the deflated members read so far. Declared
    /// before `cache` so their pinned memory is released first when the
    /// volume goes (fields drop in order) and the release log is exact.
    deflated: Mutex<HashMap<u32, Arc<DeflateIndex>>>,
    /// This volume's share of the decompressed-data cache; dropping it
    /// (detach, once the last open file is closed) frees its blocks.
    cache: VolumeCache,
    /// Where computed tree hashes are cached: the catalog and this volume's
    /// slot. None in unit tests.
    hashes: Option<(Arc<Catalog>, u32)>,
}

/// An attached tar or zip archive.
pub struct ArchiveVolume {
    inner: Arc<Inner>,
}

impl ArchiveVolume {
    /// Decompressed data goes to the shared cache ([`cache::global`]), in
    /// memory; `_cache_dir` (the state's cache directory) is no longer
    /// written to, so a hostile archive cannot fill the hot tier.
    pub fn new(
        label: String,
        index: ArchiveIndex,
        medium: SharedMedium,
        _cache_dir: PathBuf,
    ) -> Self {
        Self::with_cache(label, index, medium, &cache::global())
    }

    /// As [`Self::new`], with a given shared cache.
    pub fn with_cache(
        label: String,
        index: ArchiveIndex,
        medium: SharedMedium,
        shared: &Arc<cache::DecompCache>,
    ) -> Self {
        ArchiveVolume {
            inner: Arc::new(Inner {
                cache: shared.volume(&label),
                label,
                index,
                medium,
                deflated: Mutex::new(HashMap::new()),
                hashes: None,
            }),
        }
    }

    /// Caches computed tree hashes in `catalog` under `slot`.
    pub fn with_hash_cache(self, catalog: Arc<Catalog>, slot: u32) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => ArchiveVolume {
                inner: Arc::new(Inner {
                    hashes: Some((catalog, slot)),
                    ..inner
                }),
            },
            Err(inner) => ArchiveVolume { inner },
        }
    }

    /// The Glacier tree hash of a member, computed on first request by
    /// reading it, then cached in the catalog.
    fn tree_hash(&self, ino: u64, node: u32) -> Result<Vec<u8>> {
        if let Some((cat, slot)) = &self.inner.hashes
            && let Some(h) = cat.treehash(*slot, ino)?
        {
            return Ok(h.into_bytes());
        }
        let size = self.inner.index.nodes[node as usize].size;
        // Keeps the member's cursor for the pass, so it reads sequentially.
        let _hold = self.inner.deflate(node).map(|d| d.hold());
        let mut hasher = TreeHasher::new();
        let mut off = 0u64;
        let mut piece = Vec::new();
        while off < size {
            self.inner.read(node, off, 1 << 20, &mut piece)?;
            if piece.is_empty() {
                break;
            }
            hasher.update(&piece);
            off += piece.len() as u64;
        }
        let hex = hex::encode(hasher.finish());
        if let Some((cat, slot)) = &self.inner.hashes {
            cat.set_treehash(*slot, ino, &hex)?;
        }
        Ok(hex.into_bytes())
    }

    pub fn index(&self) -> &ArchiveIndex {
        &self.inner.index
    }

    /// Maps a local inode number to a node number.
    fn node(&self, ino: u64) -> Result<(u32, &Node)> {
        let i = ino
            .checked_sub(VOLUME_ROOT)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        let n = self
            .inner
            .index
            .nodes
            .get(i as usize)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        Ok((i, n))
    }
}

fn ino_of(node: u32) -> u64 {
    u64::from(node) + VOLUME_ROOT
}

impl Inner {
    /// Reads `size` bytes at `off` of node `i` into `buf`.
    fn read(&self, i: u32, off: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        let n = &self.index.nodes[i as usize];
        if off >= n.size {
            buf.clear();
            return Ok(());
        }
        let len = (u64::from(size)).min(n.size - off) as usize;
        match &n.data {
            Data::None => {
                buf.clear();
                buf.resize(len, 0);
                Ok(())
            }
            Data::Stored { offset } => {
                crate::fs::ops::len_for_overwrite(buf, len);
                self.read_medium(buf, offset + off, i)
            }
            Data::Sparse { segments } => {
                buf.clear();
                buf.resize(len, 0);
                let end = off + len as u64;
                // First segment that ends after `off`.
                let first = segments.partition_point(|s| s.logical + s.len <= off);
                for s in &segments[first..] {
                    if s.logical >= end {
                        break;
                    }
                    let from = s.logical.max(off);
                    let to = (s.logical + s.len).min(end);
                    let dst = &mut buf[(from - off) as usize..(to - off) as usize];
                    self.read_medium(dst, s.offset + (from - s.logical), i)?;
                }
                Ok(())
            }
            Data::Deflate { .. } => {
                let Some(d) = self.deflate(i) else {
                    return err(ErrorKind::Io);
                };
                *buf = d
                    .read(Some((&self.cache, i)), off, len)
                    .map_err(|e| match e.kind() {
                        ErrorKind::Corrupt => {
                            self.cache.purge_node(i);
                            Error::new(ErrorKind::Integrity, e.to_string())
                        }
                        _ => e,
                    })?;
                Ok(())
            }
        }
    }

    /// The checkpoint index of deflated member `i` (None for other nodes).
    fn deflate(&self, i: u32) -> Option<Arc<DeflateIndex>> {
        let n = &self.index.nodes[i as usize];
        let Data::Deflate {
            offset,
            csize,
            crc32,
        } = n.data
        else {
            return None;
        };
        let mut map = self.deflated.lock();
        Some(
            map.entry(i)
                .or_insert_with(|| {
                    DeflateIndex::new(
                        Stream {
                            source: self.medium.clone(),
                            offset,
                            csize,
                            size: n.size,
                            crc32: Some(crc32),
                            label: format!("{}: {}", self.label, self.path_of(i)),
                        },
                        self.cache.shared().clone(),
                    )
                })
                .clone(),
        )
    }

    fn read_medium(&self, buf: &mut [u8], at: u64, node: u32) -> Result<()> {
        self.medium.read_exact_at(buf, at).map_err(|e| {
            let e = Error::io(
                format!(
                    "{}: reading {} bytes at offset {at} for {}",
                    self.label,
                    buf.len(),
                    self.path_of(node)
                ),
                e,
            );
            tracing::error!("{e}");
            e
        })
    }

    /// The path of a node inside the volume, for messages.
    fn path_of(&self, node: u32) -> String {
        path_in(&self.index, node)
    }
}

/// An open archive member.
struct ArchiveFile {
    inner: Arc<Inner>,
    node: u32,
    /// For a deflated member: keeps its sequential cursor while open.
    _hold: Option<Hold>,
}

impl OpenFile for ArchiveFile {
    fn read(&self, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        self.inner.read(self.node, offset, size, out)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8], scratch: &mut Vec<u8>) -> Result<usize> {
        let n = &self.inner.index.nodes[self.node as usize];
        match &n.data {
            // A stored member is a plain range of the medium: read it in
            // place. Other layouts go through `read`.
            Data::Stored { offset: at } => {
                let len = (n.size.saturating_sub(offset)).min(buf.len() as u64) as usize;
                if len > 0 {
                    self.inner
                        .read_medium(&mut buf[..len], at + offset, self.node)?;
                }
                Ok(len)
            }
            _ => crate::fs::ops::read_through(buf, scratch, |want, v| {
                self.inner.read(self.node, offset, want, v)
            }),
        }
    }

    fn ino(&self) -> u64 {
        ino_of(self.node)
    }

    fn size(&self) -> Result<u64> {
        Ok(self.inner.index.nodes[self.node as usize].size)
    }
}

impl VolumeFs for ArchiveVolume {
    /// An archive's index is fixed once attached.
    fn listings_fixed(&self) -> bool {
        true
    }

    fn getattr(&self, ino: u64) -> Result<Attr> {
        let (_, n) = self.node(ino)?;
        Ok(node_attr(ino, n))
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let (p, n) = self.node(parent)?;
        if n.kind != NodeKind::Dir {
            return err(ErrorKind::NotDir);
        }
        let child = self
            .inner
            .index
            .lookup(p, name)
            .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))?;
        let ino = ino_of(child);
        Ok(node_attr(ino, &self.inner.index.nodes[child as usize]))
    }

    fn parent(&self, ino: u64) -> Result<u64> {
        let (i, _) = self.node(ino)?;
        Ok(ino_of(self.inner.index.parent_of(i)))
    }

    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let (i, n) = self.node(ino)?;
        if n.kind != NodeKind::Dir {
            return err(ErrorKind::NotDir);
        }
        let kids = self.inner.index.children(i);
        for (pos, e) in kids.iter().enumerate().skip(offset as usize) {
            let cino = ino_of(e.node);
            let attr = node_attr(cino, &self.inner.index.nodes[e.node as usize]);
            if !sink(DirEntry {
                name: &e.name,
                attr,
                next: pos as u64 + 1,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let (_, n) = self.node(ino)?;
        if n.kind != NodeKind::Symlink {
            return err(ErrorKind::Invalid);
        }
        Ok(n.target.clone())
    }

    fn open(&self, ino: u64, flags: OpenFlags, _ctx: &Ctx) -> Result<Arc<dyn OpenFile>> {
        let (i, n) = self.node(ino)?;
        if flags.writable() || flags.truncate() {
            return err(ErrorKind::ReadOnly);
        }
        if n.kind == NodeKind::Dir {
            return err(ErrorKind::IsDir);
        }
        Ok(Arc::new(ArchiveFile {
            inner: self.inner.clone(),
            node: i,
            _hold: self.inner.deflate(i).map(|d| d.hold()),
        }))
    }

    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let (i, n) = self.node(ino)?;
        if name == crate::volume::native::XATTR_TREEHASH {
            if n.kind != NodeKind::File {
                return err(ErrorKind::NoAttr);
            }
            return self.tree_hash(ino, i);
        }
        n.xattrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::kind_only(ErrorKind::NoAttr))
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let (_, n) = self.node(ino)?;
        Ok(n.xattrs.iter().map(|(k, _)| k.clone()).collect())
    }

    fn statfs(&self) -> Result<StatFs> {
        let s = &self.inner.index.stats;
        let nodes = self.inner.index.nodes.len() as u64;
        Ok(StatFs {
            blocks: self.inner.medium.size().div_ceil(4096),
            bfree: 0,
            bavail: 0,
            files: nodes.max(s.files),
            ffree: 0,
            bsize: 4096,
            namelen: index::NAME_MAX as u32,
            frsize: 4096,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::index::{IndexBuilder, Member, Segment};
    use super::*;

    fn meta() -> Meta {
        Meta {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
        }
    }

    fn volume(
        medium: Vec<u8>,
        build: impl FnOnce(&mut IndexBuilder),
    ) -> (ArchiveVolume, tempfile::TempDir) {
        let mut b = IndexBuilder::new("test", meta());
        build(&mut b);
        let dir = tempfile::tempdir().unwrap();
        let v = ArchiveVolume::new("t".into(), b.finish(), Arc::new(medium), dir.path().into());
        (v, dir)
    }

    fn read_all(v: &ArchiveVolume, path: &[u8]) -> Vec<u8> {
        let a = v.lookup(VOLUME_ROOT, path).unwrap();
        let f = v
            .open(a.ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
            .unwrap();
        let mut out = Vec::new();
        let mut chunk = Vec::new();
        loop {
            f.read(out.len() as u64, 7, &mut chunk).unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out.len() as u64, a.size);
        out
    }

    #[test]
    fn stored_and_sparse_reads() {
        let medium: Vec<u8> = (0..200u8).collect();
        let (v, _d) = volume(medium, |b| {
            let mut m = Member::new(NodeKind::File, meta());
            m.size = 10;
            m.data = Data::Stored { offset: 100 };
            b.add(b"s", m);
            let mut m = Member::new(NodeKind::File, meta());
            m.size = 30;
            m.data = Data::Sparse {
                segments: vec![
                    Segment {
                        logical: 5,
                        offset: 10,
                        len: 3,
                    },
                    Segment {
                        logical: 20,
                        offset: 50,
                        len: 4,
                    },
                ],
            };
            b.add(b"sp", m);
        });
        assert_eq!(read_all(&v, b"s"), (100..110u8).collect::<Vec<_>>());
        let sp = read_all(&v, b"sp");
        let mut want = vec![0u8; 30];
        want[5..8].copy_from_slice(&[10, 11, 12]);
        want[20..24].copy_from_slice(&[50, 51, 52, 53]);
        assert_eq!(sp, want);
        let a = v.lookup(VOLUME_ROOT, b"sp").unwrap();
        assert_eq!(a.blocks, 1, "only stored bytes count as allocated");
    }

    #[test]
    fn writes_are_erofs_and_lookups_fail_cleanly() {
        let (v, _d) = volume(vec![0; 10], |b| {
            b.add(b"d/", Member::new(NodeKind::Dir, meta()));
        });
        let d = v.lookup(VOLUME_ROOT, b"d").unwrap();
        assert_eq!(
            v.open(d.ino, OpenFlags(libc::O_WRONLY), &Ctx::ROOT)
                .err()
                .unwrap()
                .kind(),
            ErrorKind::ReadOnly
        );
        assert_eq!(
            v.mkdir(d.ino, b"x", 0o755, 0, &Ctx::ROOT)
                .err()
                .unwrap()
                .errno(),
            libc::EROFS
        );
        assert_eq!(
            v.lookup(d.ino, b"nope").err().unwrap().errno(),
            libc::ENOENT
        );
        assert_eq!(v.getattr(999).err().unwrap().errno(), libc::ENOENT);
        assert_eq!(v.getattr(0).err().unwrap().errno(), libc::ENOENT);
        assert_eq!(v.parent(d.ino).unwrap(), VOLUME_ROOT);
    }

    #[test]
    fn ratio_limits_name_the_member() {
        let deflated = |size: u64, csize: u64| {
            let mut m = Member::new(NodeKind::File, meta());
            m.size = size;
            m.data = Data::Deflate {
                offset: 0,
                csize,
                crc32: 0,
            };
            m
        };
        let (v, _d) = volume(vec![0; 10], |b| {
            b.add(b"small", deflated(1 << 20, 1024));
            b.add(b"d/bomb", deflated(4 << 20, 4096));
        });
        let e = check_ratios(v.index(), "t.zip", 1000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooBig);
        let msg = e.to_string();
        assert!(
            msg.contains("member d/bomb") && msg.contains("1024:1"),
            "{msg}"
        );
        check_ratios(v.index(), "t.zip", 2000).unwrap();
        check_ratios(v.index(), "t.zip", 0).unwrap();
        let (v, _d) = volume(vec![0; 10], |b| {
            b.add(b"forged", deflated(1 << 30, 1000));
        });
        let e = check_ratios(v.index(), "t.zip", 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("member forged"), "{e}");
    }
}
