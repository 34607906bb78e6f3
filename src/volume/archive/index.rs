//! The in-memory (and persisted) index of an archive volume, and the builder
//! that the format parsers (tar, zip) feed.
//!
//! The parsers only decode their format; every rule about names lives here, in
//! one place, so tar and zip behave alike:
//!
//! * **Sanitising.** A name is cut at its first NUL byte, split on `/`, and
//!   empty, `.` and `..` components are dropped, so a leading `/` and every
//!   `..` disappear and no member can name a path outside the volume
//!   (`../../etc/passwd` becomes `etc/passwd`, as `unzip` does). A member whose
//!   name sanitises to nothing is applied to the root if it is a directory and
//!   skipped otherwise. A component longer than 255 bytes cannot exist on
//!   Linux; the member is skipped with a warning.
//! * **Duplicates.** A later member replaces an earlier one with the same
//!   sanitised path, as `tar -x` does. Two directories merge, the later one's
//!   metadata winning. The one exception: a directory that already has
//!   children is never replaced by a non-directory; the later member is skipped
//!   with a warning, so no subtree is hidden. A non-directory in the middle of
//!   a later member's path is replaced by a directory.
//! * **Hard links** share the node of their target, which must be an earlier
//!   member; a link to a missing target or to a directory is skipped.
//! * **Implicit directories** (parents that have no member of their own) get
//!   mode 0755 and the owner and mtime of the medium.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The longest name component Linux accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// The node number of the volume's root directory inside [`ArchiveIndex::nodes`].
pub const ROOT: u32 = 0;

/// The most entries one archive volume may have. The index lives in memory
/// (about 200 bytes an entry), so a hostile archive of nothing but headers
/// must not be able to exhaust it; real archives stay far below this.
pub const MAX_NODES: usize = 20_000_000;

thread_local! {
    /// The member limit of the index being built on this thread (see
    /// [`with_member_limit`]), and whether it was passed.
    static MEMBER_LIMIT: std::cell::Cell<(u64, bool)> = const { std::cell::Cell::new((u64::MAX, false)) };
}

/// Runs `f` (an index build on this thread) with at most `limit` members
/// allowed: a builder created inside stops taking members once the count
/// passes it, and the parsers stop reading, so refusing an archive that is
/// too large costs no more memory than the limit. Returns `f`'s result and
/// whether the limit was passed (the index is then incomplete and must
/// not be used). A thread-local rather than a parameter so the per-user
/// member limit (`limits.members_per_attach`) needs no change to every
/// parser's signature.
pub fn with_member_limit<T>(limit: u64, f: impl FnOnce() -> T) -> (T, bool) {
    let saved = MEMBER_LIMIT.replace((limit, false));
    let out = f();
    let (_, hit) = MEMBER_LIMIT.replace(saved);
    (out, hit)
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
}

/// One run of a sparse member's data: `len` bytes that appear at `logical`
/// in the member and are stored at `offset` in the medium.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub logical: u64,
    pub offset: u64,
    pub len: u64,
}

/// Where a node's bytes are in the medium.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// No data (directories, links, empty files).
    None,
    /// `size` bytes stored contiguously at `offset`.
    Stored { offset: u64 },
    /// Stored runs; everything between them reads as zeros. Segments are sorted
    /// by `logical`, do not overlap and end at or before the node's size.
    Sparse { segments: Vec<Segment> },
    /// A raw deflate stream of `csize` bytes at `offset` that inflates to the
    /// node's size and whose CRC-32 is `crc32`.
    Deflate { offset: u64, csize: u64, crc32: u32 },
}

/// Attributes a parser reads from one member.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    pub mtime_nsec: u32,
}

/// One inode of the volume.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub meta: Meta,
    pub size: u64,
    pub nlink: u32,
    /// Device number for character and block devices (`makedev` encoding).
    pub rdev: u64,
    pub data: Data,
    /// Symlink target bytes.
    pub target: Vec<u8>,
    /// Extended attributes from the archive (pax `SCHILY.xattr.*`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For directories: the first of this directory's entries in
    /// [`ArchiveIndex::dirents`] and how many there are.
    pub first_child: u32,
    pub nchildren: u32,
    /// The directory holding this node's first entry (the root is its own).
    pub parent: u32,
}

/// A directory entry. Entries are sorted by `(parent, name)` so each
/// directory's entries are one contiguous, binary-searchable run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub parent: u32,
    pub name: Vec<u8>,
    pub node: u32,
}

/// Counts and warnings from indexing, shown by `tokenctl status`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Members read from the archive, including ones later replaced or skipped.
    pub members: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Extra names of files (a file with three names counts two).
    pub hardlinks: u64,
    /// Members whose name had to be changed to stay inside the volume.
    pub sanitized: u64,
    /// Members replaced by a later member with the same path.
    pub replaced: u64,
    /// Members dropped (see the warnings for why).
    pub skipped: u64,
    /// The sum of the sizes of reachable files.
    pub bytes: u64,
    /// The first warnings, for the operator.
    pub warnings: Vec<String>,
    /// True if the archive has more than [`MAX_NODES`] entries; such an
    /// index is incomplete and is never used.
    #[serde(default)]
    pub over_limit: bool,
}

/// The complete index of an archive volume.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArchiveIndex {
    pub format: String,
    pub nodes: Vec<Node>,
    pub dirents: Vec<Dirent>,
    pub stats: IndexStats,
}

impl ArchiveIndex {
    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let d = self.nodes.get(dir as usize)?;
        if d.kind != NodeKind::Dir {
            return None;
        }
        let run = self.children(dir);
        run.binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| run[i].node)
    }

    /// The entries of directory `dir`, sorted by name (empty for non-directories).
    pub fn children(&self, dir: u32) -> &[Dirent] {
        match self.nodes.get(dir as usize) {
            Some(d) if d.kind == NodeKind::Dir => {
                let start = d.first_child as usize;
                let end = start + d.nchildren as usize;
                self.dirents.get(start..end).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// The parent directory of directory `dir` (the root is its own parent).
    pub fn parent_of(&self, dir: u32) -> u32 {
        self.nodes
            .get(dir as usize)
            .map(|n| n.parent)
            .unwrap_or(ROOT)
    }

    /// Serialises the index for the catalog.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads an index written by [`Self::to_bytes`], checking that every
    /// reference stays in bounds so that a damaged catalog cannot make a
    /// lookup panic.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let idx: ArchiveIndex = postcard::from_bytes(bytes).ok()?;
        let n = idx.nodes.len() as u64;
        if n == 0 || idx.nodes[0].kind != NodeKind::Dir {
            return None;
        }
        for node in &idx.nodes {
            if node.kind == NodeKind::Dir
                && u64::from(node.first_child) + u64::from(node.nchildren)
                    > idx.dirents.len() as u64
            {
                return None;
            }
        }
        if idx
            .dirents
            .iter()
            .any(|e| u64::from(e.node) >= n || u64::from(e.parent) >= n)
            || idx.nodes.iter().any(|x| u64::from(x.parent) >= n)
        {
            return None;
        }
        Some(idx)
    }
}

/// What a parser hands to the builder for one member.
#[derive(Debug, Clone)]
pub struct Member {
    pub kind: NodeKind,
    pub meta: Meta,
    pub size: u64,
    pub rdev: u64,
    pub data: Data,
    pub target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    /// A member of `kind` with no data, size 0 and the given metadata.
    pub fn new(kind: NodeKind, meta: Meta) -> Self {
        Member {
            kind,
            meta,
            size: 0,
            rdev: 0,
            data: Data::None,
            target: Vec::new(),
            xattrs: Vec::new(),
        }
    }
}

/// The result of sanitising a member name.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanPath {
    pub components: Vec<Vec<u8>>,
    /// True if the name had to change (leading `/`, `..`, `.`, NUL, `//`).
    pub changed: bool,
}

/// Applies the sanitising rule of this module to a raw member name.
pub fn sanitize(raw: &[u8]) -> Result<CleanPath, String> {
    let cut = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut changed = cut != raw.len();
    let raw = &raw[..cut];
    let mut components = Vec::new();
    let mut parts = raw.split(|&b| b == b'/').peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        match part {
            b"" => {
                // A trailing slash marks a directory and is not a change.
                if !last || first {
                    changed = true;
                }
            }
            // "./" prefixes are how tar writes `tar -C dir .`; dropping them
            // changes nothing worth reporting.
            b"." => {}
            b".." => changed = true,
            p => {
                if p.len() > NAME_MAX {
                    return Err(format!(
                        "name component of {} bytes is longer than {NAME_MAX}",
                        p.len()
                    ));
                }
                components.push(p.to_vec());
            }
        }
        first = false;
    }
    Ok(CleanPath {
        components,
        changed,
    })
}

/// Builds an [`ArchiveIndex`] from members in archive order.
pub struct IndexBuilder {
    format: String,
    nodes: Vec<Node>,
    /// (parent, name) → node, for the entries that exist now.
    entries: HashMap<(u32, Vec<u8>), u32>,
    /// Number of children per directory node, to know if one may be replaced.
    child_count: Vec<u32>,
    implicit: Meta,
    stats: IndexStats,
    /// How many warnings to keep for `tokenctl status`.
    max_warnings: usize,
    /// Members allowed (see [`with_member_limit`]).
    member_limit: u64,
    /// Set once `member_limit` is passed; no member is added after that.
    limited: bool,
}

impl IndexBuilder {
    /// `implicit` is the metadata of the root and of implicit directories:
    /// mode 0755 and the medium's owner and mtime.
    pub fn new(format: &str, implicit: Meta) -> Self {
        let root = Node {
            kind: NodeKind::Dir,
            meta: implicit.clone(),
            size: 0,
            nlink: 2,
            rdev: 0,
            data: Data::None,
            target: Vec::new(),
            xattrs: Vec::new(),
            first_child: 0,
            nchildren: 0,
            parent: ROOT,
        };
        IndexBuilder {
            format: format.to_string(),
            nodes: vec![root],
            entries: HashMap::new(),
            child_count: vec![0],
            implicit,
            stats: IndexStats::default(),
            max_warnings: 100,
            member_limit: MEMBER_LIMIT.get().0,
            limited: false,
        }
    }

    /// Records a warning shown by `tokenctl status` (the first hundred).
    pub fn warn(&mut self, msg: String) {
        if self.stats.warnings.len() < self.max_warnings {
            self.stats.warnings.push(msg);
        }
    }

    /// Counts a member that the parser decided to skip (and warns why).
    pub fn skip(&mut self, name: &[u8], why: &str) {
        self.stats.members += 1;
        self.stats.skipped += 1;
        self.full();
        self.warn(format!("{}: skipped: {why}", String::from_utf8_lossy(name)));
    }

    /// Sets the format string once the parser knows it (e.g. "tar (pax)").
    pub fn set_format(&mut self, format: &str) {
        self.format = format.to_string();
    }

    /// True once the entry limit or the member limit is reached; later
    /// members are dropped.
    fn full(&mut self) -> bool {
        if self.nodes.len() >= MAX_NODES {
            self.stats.over_limit = true;
        }
        if !self.limited && self.stats.members > self.member_limit {
            self.limited = true;
            MEMBER_LIMIT.set((self.member_limit, true));
        }
        self.stats.over_limit || self.limited
    }

    /// True once the member limit (see [`with_member_limit`]) is passed:
    /// the parser may stop, the index will not be used.
    pub fn stopped(&self) -> bool {
        self.limited
    }

    fn new_node(&mut self, m: Member) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind: m.kind,
            meta: m.meta,
            size: m.size,
            nlink: if m.kind == NodeKind::Dir { 2 } else { 1 },
            rdev: m.rdev,
            data: m.data,
            target: m.target,
            xattrs: m.xattrs,
            first_child: 0,
            nchildren: 0,
            parent: ROOT,
        });
        self.child_count.push(0);
        id
    }

    fn unlink(&mut self, parent: u32, name: &[u8]) {
        if let Some(old) = self.entries.remove(&(parent, name.to_vec())) {
            let n = &mut self.nodes[old as usize];
            n.nlink = n.nlink.saturating_sub(1);
            self.child_count[parent as usize] -= 1;
        }
    }

    fn link(&mut self, parent: u32, name: Vec<u8>, node: u32) {
        self.entries.insert((parent, name), node);
        self.child_count[parent as usize] += 1;
    }

    /// Walks (creating implicit directories as needed) to the directory that
    /// holds the last component, replacing non-directories on the way.
    fn parent_dir(&mut self, comps: &[Vec<u8>]) -> u32 {
        let mut dir = ROOT;
        for c in comps {
            let key = (dir, c.clone());
            match self.entries.get(&key).copied() {
                Some(n) if self.nodes[n as usize].kind == NodeKind::Dir => dir = n,
                existing => {
                    if existing.is_some() {
                        self.stats.replaced += 1;
                        self.unlink(dir, c);
                    }
                    let node = self.new_node(Member::new(NodeKind::Dir, self.implicit.clone()));
                    self.link(dir, c.clone(), node);
                    dir = node;
                }
            }
        }
        dir
    }

    fn clean(&mut self, raw: &[u8]) -> Option<CleanPath> {
        match sanitize(raw) {
            Ok(p) => {
                if p.changed {
                    self.stats.sanitized += 1;
                }
                Some(p)
            }
            Err(why) => {
                self.stats.skipped += 1;
                self.warn(format!("{}: skipped: {why}", String::from_utf8_lossy(raw)));
                None
            }
        }
    }

    /// Adds one member under its raw (unsanitised) name.
    pub fn add(&mut self, raw_name: &[u8], m: Member) {
        self.stats.members += 1;
        if self.full() {
            return;
        }
        let Some(path) = self.clean(raw_name) else {
            return;
        };
        let Some((last, dirs)) = path.components.split_last() else {
            if m.kind == NodeKind::Dir {
                self.nodes[ROOT as usize].meta = m.meta;
                self.nodes[ROOT as usize].xattrs = m.xattrs;
            } else {
                self.stats.skipped += 1;
                self.warn(format!(
                    "{}: skipped: the name is empty once sanitised",
                    String::from_utf8_lossy(raw_name)
                ));
            }
            return;
        };
        let parent = self.parent_dir(dirs);
        let key = (parent, last.clone());
        if let Some(old) = self.entries.get(&key).copied() {
            let old_is_dir = self.nodes[old as usize].kind == NodeKind::Dir;
            if old_is_dir && m.kind == NodeKind::Dir {
                // Merge: the directory keeps its children, takes the new metadata.
                let n = &mut self.nodes[old as usize];
                n.meta = m.meta;
                n.xattrs = m.xattrs;
                return;
            }
            if old_is_dir && self.child_count[old as usize] > 0 {
                self.stats.skipped += 1;
                self.warn(format!(
                    "{}: skipped: would replace a directory that has entries",
                    String::from_utf8_lossy(raw_name)
                ));
                return;
            }
            self.stats.replaced += 1;
            self.unlink(parent, last);
        }
        let node = self.new_node(m);
        self.link(parent, last.clone(), node);
    }

    /// Adds a hard link named `raw_name` to the member named `raw_target`.
    pub fn add_hardlink(&mut self, raw_name: &[u8], raw_target: &[u8]) {
        if self.full() {
            self.stats.members += 1;
            return;
        }
        let target = match sanitize(raw_target) {
            Ok(p) => p,
            Err(_) => {
                self.skip(raw_name, "hard link target name is invalid");
                return;
            }
        };
        let mut node = Some(ROOT);
        for c in &target.components {
            node = node.and_then(|d| self.entries.get(&(d, c.clone())).copied());
        }
        let node = match node {
            Some(n) if !target.components.is_empty() => n,
            _ => {
                self.skip(
                    raw_name,
                    &format!(
                        "hard link to {}, which is not an earlier member",
                        String::from_utf8_lossy(raw_target)
                    ),
                );
                return;
            }
        };
        if self.nodes[node as usize].kind == NodeKind::Dir {
            self.skip(raw_name, "hard link to a directory");
            return;
        }
        self.stats.members += 1;
        let Some(path) = self.clean(raw_name) else {
            return;
        };
        let Some((last, dirs)) = path.components.split_last() else {
            self.stats.skipped += 1;
            return;
        };
        let parent = self.parent_dir(dirs);
        if let Some(old) = self.entries.get(&(parent, last.clone())).copied() {
            if old == node {
                return;
            }
            if self.nodes[old as usize].kind == NodeKind::Dir && self.child_count[old as usize] > 0
            {
                self.stats.skipped += 1;
                self.warn(format!(
                    "{}: skipped: would replace a directory that has entries",
                    String::from_utf8_lossy(raw_name)
                ));
                return;
            }
            self.stats.replaced += 1;
            self.unlink(parent, last);
        }
        self.nodes[node as usize].nlink += 1;
        self.link(parent, last.clone(), node);
    }

    /// Drops unreachable nodes, numbers the rest densely (root stays 0), sorts
    /// the entries and computes counts and link counts.
    pub fn finish(self) -> ArchiveIndex {
        let IndexBuilder {
            format,
            nodes,
            entries,
            mut stats,
            ..
        } = self;
        // Reachable nodes: walk from the root through live entries.
        let mut by_parent: HashMap<u32, Vec<(Vec<u8>, u32)>> = HashMap::new();
        for ((parent, name), node) in entries {
            by_parent.entry(parent).or_default().push((name, node));
        }
        let mut remap: Vec<u32> = vec![u32::MAX; nodes.len()];
        let mut order: Vec<u32> = vec![ROOT];
        remap[ROOT as usize] = 0;
        let mut dirents: Vec<Dirent> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let old = order[i];
            i += 1;
            let Some(mut kids) = by_parent.remove(&old) else {
                continue;
            };
            kids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (name, child) in kids {
                if remap[child as usize] == u32::MAX {
                    remap[child as usize] = order.len() as u32;
                    order.push(child);
                }
                dirents.push(Dirent {
                    parent: remap[old as usize],
                    name,
                    node: remap[child as usize],
                });
            }
        }
        let mut new_nodes: Vec<Node> = Vec::with_capacity(order.len());
        let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        for &old in &order {
            if let Some(n) = nodes[old as usize].take() {
                new_nodes.push(n);
            }
        }
        // Entries were appended in BFS order of parents, which is also the
        // order of the new parent numbers, so they are already sorted by
        // (parent, name); compute each directory's run.
        for n in new_nodes.iter_mut() {
            n.first_child = 0;
            n.nchildren = 0;
            n.parent = u32::MAX;
            if n.kind == NodeKind::Dir {
                n.nlink = 2;
            }
        }
        new_nodes[ROOT as usize].parent = ROOT;
        for e in &dirents {
            let n = &mut new_nodes[e.node as usize];
            if n.parent == u32::MAX {
                n.parent = e.parent;
            }
        }
        let mut start = 0usize;
        while start < dirents.len() {
            let p = dirents[start].parent;
            let mut end = start;
            while end < dirents.len() && dirents[end].parent == p {
                end += 1;
            }
            let d = &mut new_nodes[p as usize];
            d.first_child = start as u32;
            d.nchildren = (end - start) as u32;
            start = end;
        }
        // Link counts: 2 + subdirectories for directories; the number of
        // entries for everything else.
        let mut links = vec![0u32; new_nodes.len()];
        for e in &dirents {
            links[e.node as usize] += 1;
        }
        for e in &dirents {
            if new_nodes[e.node as usize].kind == NodeKind::Dir {
                new_nodes[e.parent as usize].nlink += 1;
            }
        }
        stats.files = 0;
        stats.dirs = 0;
        stats.symlinks = 0;
        stats.hardlinks = 0;
        stats.bytes = 0;
        for (i, n) in new_nodes.iter_mut().enumerate() {
            match n.kind {
                NodeKind::Dir => stats.dirs += 1,
                NodeKind::Symlink => stats.symlinks += 1,
                _ => {
                    n.nlink = links[i].max(1);
                    stats.hardlinks += u64::from(n.nlink - 1);
                    if n.kind == NodeKind::File {
                        stats.files += 1;
                        stats.bytes += n.size;
                    }
                }
            }
            if n.kind == NodeKind::Symlink {
                n.nlink = links[i].max(1);
            }
        }
        ArchiveIndex {
            format,
            nodes: new_nodes,
            dirents,
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_limit_stops_the_builder_and_is_reported() {
        let meta = Meta {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
        };
        let build = |n: usize| {
            let mut b = IndexBuilder::new("tar", meta.clone());
            for i in 0..n {
                if b.stopped() {
                    break;
                }
                b.add(
                    format!("f{i}").as_bytes(),
                    Member::new(NodeKind::File, meta.clone()),
                );
            }
            b.finish()
        };
        let (ix, hit) = with_member_limit(10, || build(10));
        assert!(!hit, "exactly the limit is allowed");
        assert_eq!(ix.stats.files, 10);
        let (ix, hit) = with_member_limit(10, || build(1000));
        assert!(hit);
        assert_eq!(ix.stats.members, 11, "stopped at the first member past it");
        // The limit is gone afterwards.
        let (ix, hit) = with_member_limit(u64::MAX, || build(100));
        assert!(!hit);
        assert_eq!(ix.stats.files, 100);
    }

    fn meta(perm: u16) -> Meta {
        Meta {
            perm,
            uid: 1,
            gid: 2,
            mtime: 1_600_000_000,
            mtime_nsec: 0,
        }
    }

    fn file(size: u64, off: u64) -> Member {
        let mut m = Member::new(NodeKind::File, meta(0o644));
        m.size = size;
        m.data = Data::Stored { offset: off };
        m
    }

    fn resolve(idx: &ArchiveIndex, path: &str) -> Option<u32> {
        let mut n = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            n = idx.lookup(n, c.as_bytes())?;
        }
        Some(n)
    }

    #[test]
    fn sanitize_rules() {
        let c = |s: &[u8]| sanitize(s).unwrap();
        assert_eq!(c(b"a/b").components, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(!c(b"a/b").changed);
        assert!(
            !c(b"a/b/").changed,
            "a trailing slash is a directory marker"
        );
        assert!(c(b"/etc/passwd").changed);
        assert_eq!(c(b"/etc/passwd").components.len(), 2);
        assert_eq!(
            c(b"../../x").components,
            vec![b"x".to_vec()],
            "dot-dot components are dropped"
        );
        assert_eq!(c(b"a/../b").components, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(c(b"a\0/../../etc").components, vec![b"a".to_vec()]);
        assert!(c(b"a\0b").changed);
        assert!(!c(b"./a").changed, "./ prefixes are not worth reporting");
        assert_eq!(c(b"./a").components, vec![b"a".to_vec()]);
        assert!(c(b"..").components.is_empty());
        assert!(sanitize(&[b'x'; 256]).is_err());
        assert!(sanitize(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn implicit_dirs_and_lookup() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"a/b/c.txt", file(3, 512));
        b.add(b"a/d.txt", file(5, 1024));
        let idx = b.finish();
        let c = resolve(&idx, "a/b/c.txt").unwrap();
        assert_eq!(idx.nodes[c as usize].size, 3);
        let a = resolve(&idx, "a").unwrap();
        assert_eq!(idx.nodes[a as usize].kind, NodeKind::Dir);
        assert_eq!(idx.nodes[a as usize].nlink, 3, "a has one subdirectory");
        assert_eq!(idx.children(a).len(), 2);
        assert_eq!(idx.children(a)[0].name, b"b");
        assert_eq!(idx.parent_of(a), ROOT);
        assert_eq!(idx.stats.files, 2);
        assert_eq!(idx.stats.dirs, 3);
        assert_eq!(idx.stats.bytes, 8);
    }

    #[test]
    fn later_member_wins() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"x", file(1, 512));
        b.add(b"./x", file(2, 1024));
        let idx = b.finish();
        assert_eq!(idx.nodes[resolve(&idx, "x").unwrap() as usize].size, 2);
        assert_eq!(idx.stats.replaced, 1);
        assert_eq!(idx.nodes.len(), 2, "the replaced node is dropped");
    }

    #[test]
    fn nonempty_dir_is_not_replaced_by_file() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"d/f", file(1, 512));
        b.add(b"d", file(2, 1024));
        let idx = b.finish();
        assert!(resolve(&idx, "d/f").is_some());
        assert_eq!(idx.stats.skipped, 1);
        assert_eq!(idx.stats.warnings.len(), 1);
    }

    #[test]
    fn file_in_path_is_replaced_by_dir() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"d", file(2, 1024));
        b.add(b"d/f", file(1, 512));
        let idx = b.finish();
        assert!(resolve(&idx, "d/f").is_some());
        assert_eq!(idx.stats.replaced, 1);
    }

    #[test]
    fn dirs_merge_and_take_later_meta() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"d/", Member::new(NodeKind::Dir, meta(0o700)));
        b.add(b"d/f", file(1, 512));
        b.add(b"d/", Member::new(NodeKind::Dir, meta(0o750)));
        let idx = b.finish();
        let d = resolve(&idx, "d").unwrap();
        assert_eq!(idx.nodes[d as usize].meta.perm, 0o750);
        assert!(resolve(&idx, "d/f").is_some());
    }

    #[test]
    fn hardlinks_share_node_and_count() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"a", file(4, 512));
        b.add_hardlink(b"b", b"a");
        b.add_hardlink(b"sub/c", b"./a");
        b.add_hardlink(b"bad", b"missing");
        let idx = b.finish();
        let a = resolve(&idx, "a").unwrap();
        assert_eq!(resolve(&idx, "b"), Some(a));
        assert_eq!(resolve(&idx, "sub/c"), Some(a));
        assert_eq!(idx.nodes[a as usize].nlink, 3);
        assert_eq!(idx.stats.hardlinks, 2);
        assert!(resolve(&idx, "bad").is_none());
        assert_eq!(idx.stats.skipped, 1);
    }

    #[test]
    fn replacing_a_hardlinked_name_fixes_nlink() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"a", file(4, 512));
        b.add_hardlink(b"b", b"a");
        b.add(b"b", file(9, 2048));
        let idx = b.finish();
        let a = resolve(&idx, "a").unwrap();
        assert_eq!(idx.nodes[a as usize].nlink, 1);
        assert_eq!(idx.nodes[resolve(&idx, "b").unwrap() as usize].size, 9);
    }

    #[test]
    fn root_dir_member_sets_root_meta() {
        let mut b = IndexBuilder::new("tar", meta(0o755));
        b.add(b"./", Member::new(NodeKind::Dir, meta(0o711)));
        b.add(b"/", file(1, 0));
        let idx = b.finish();
        assert_eq!(idx.nodes[0].meta.perm, 0o711);
        assert_eq!(idx.stats.skipped, 1);
    }

    #[test]
    fn roundtrip_and_reject_damaged_bytes() {
        let mut b = IndexBuilder::new("zip", meta(0o755));
        for i in 0..100 {
            b.add(format!("d{}/f{i}", i % 7).as_bytes(), file(i, i * 512));
        }
        let idx = b.finish();
        let bytes = idx.to_bytes();
        assert_eq!(ArchiveIndex::from_bytes(&bytes).unwrap(), idx);
        assert!(ArchiveIndex::from_bytes(&bytes[..bytes.len() / 2]).is_none());
        assert!(ArchiveIndex::from_bytes(b"").is_none());
    }
}
