//! The medium stack under a real archive volume: a tar inside a partition
//! slice, and the same tar stored as chunks, indexed through the normal
//! entry points (`detect`, `build_index`) and read back through
//! `ArchiveVolume` as `VolumeFs`, without a mount.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::fs::ops::{VOLUME_ROOT, VolumeFs};
use crate::fs::types::{Ctx, OpenFlags};
use crate::store::access::HotChunks;
use crate::store::chunks::{ChunkStore, Pin};
use crate::store::treehash::{Hash, LEAF};
use crate::volume::archive::index::Meta;
use crate::volume::archive::{self, ArchiveVolume, Format};

/// Stores `data` as chunks the way a native file is stored (all-zero
/// chunks become holes); returns the extents and the pins that keep them.
pub(super) fn store_as_chunks(
    store: &Arc<ChunkStore>,
    data: &[u8],
) -> (Vec<(u64, Hash, u32)>, Vec<Pin>) {
    let mut extents = Vec::new();
    let mut pins = Vec::new();
    for (i, piece) in data.chunks(LEAF).enumerate() {
        if piece.iter().all(|&b| b == 0) {
            continue;
        }
        let pin = store.put(piece).unwrap();
        extents.push((i as u64, *pin.hash(), piece.len() as u32));
        pins.push(pin);
    }
    (extents, pins)
}

/// A medium that records the lowest and highest byte any read touched.
struct Watched {
    inner: SharedMedium,
    lowest: AtomicU64,
    end: AtomicU64,
}

impl ReadAt for Watched {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        if n > 0 {
            self.lowest.fetch_min(offset, Ordering::Relaxed);
            self.end.fetch_max(offset + n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

fn watched(inner: SharedMedium) -> Arc<Watched> {
    Arc::new(Watched {
        inner,
        lowest: AtomicU64::new(u64::MAX),
        end: AtomicU64::new(0),
    })
}

/// The big member: 2.5 MiB, so it spans chunk boundaries.
fn big() -> Vec<u8> {
    (0..5 * LEAF / 2).map(|i| (i * 13 % 251) as u8).collect()
}

/// A real tar made by the `tar` crate: a directory, a small file, a large
/// one and a symlink.
fn a_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "docs/", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(12);
    b.append_data(&mut h, "docs/readme.txt", &b"hello, tape\n"[..])
        .unwrap();
    let data = big();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "big.bin", data.as_slice()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "latest", "docs/readme.txt").unwrap();
    b.into_inner().unwrap()
}

fn implicit() -> Meta {
    Meta {
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: 1,
        mtime_nsec: 0,
    }
}

/// The archive format the table of kinds detects in `medium`.
fn detected(medium: &dyn ReadAt, label: &str) -> Format {
    Format::parse(crate::volume::kinds::detect(medium, label).unwrap().name).unwrap()
}

/// Indexes `medium` as the attach path does and returns the volume.
fn attach(medium: SharedMedium, label: &str) -> ArchiveVolume {
    let format = detected(&*medium, label);
    assert_eq!(format, Format::Tar);
    let idx = archive::build_index(&*medium, label, format, implicit(), &mut |_| {}).unwrap();
    assert_eq!(idx.stats.files, 2);
    // The cache directory is not written to (see `ArchiveVolume::new`).
    ArchiveVolume::new(label.into(), idx, medium, std::env::temp_dir())
}

/// Reads the file at `path` (components under the volume root) whole.
fn read_file(v: &dyn VolumeFs, path: &[&[u8]]) -> Vec<u8> {
    let mut ino = VOLUME_ROOT;
    let mut size = 0;
    for name in path {
        let a = v.lookup(ino, name).unwrap();
        ino = a.ino;
        size = a.size;
    }
    let f = v.open(ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT).unwrap();
    let mut out = vec![0u8; size as usize];
    let mut scratch = Vec::new();
    let mut at = 0;
    // Odd-sized pieces, so reads cross chunk boundaries at odd places.
    while at < out.len() {
        let end = (at + 300_001).min(out.len());
        let n = f
            .read_into(at as u64, &mut out[at..end], &mut scratch)
            .unwrap();
        assert!(n > 0);
        at += n;
    }
    out
}

fn check_volume(v: &ArchiveVolume) {
    assert_eq!(read_file(v, &[b"docs", b"readme.txt"]), b"hello, tape\n");
    assert!(read_file(v, &[b"big.bin"]) == big());
    let l = v.lookup(VOLUME_ROOT, b"latest").unwrap();
    assert_eq!(v.readlink(l.ino).unwrap(), b"docs/readme.txt");
}

/// Padding before the tar and junk after it, as on a partitioned drive.
const LEAD: usize = 3 * 512 + 1234;

fn disk(tar: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x5Au8; LEAD];
    bytes.extend_from_slice(tar);
    // Junk that would be a valid tar header if a reader ran on past the
    // slice: the reads below must never touch it.
    bytes.extend_from_slice(&a_tar()[..4096]);
    bytes.extend_from_slice(&[0xA5; 10_000]);
    bytes
}

#[test]
fn a_tar_inside_a_partition_slice_reads_through_the_medium_stack() {
    let tar = a_tar();
    let base = watched(Arc::new(disk(&tar)));
    let part = Slice::new(base.clone(), LEAD as u64, tar.len() as u64, "disk.img p1").unwrap();
    let v = attach(Arc::new(part), "disk.img p1");
    check_volume(&v);
    assert_eq!(
        v.statfs().unwrap().blocks,
        (tar.len() as u64).div_ceil(4096),
        "the volume sees the slice, not the disk"
    );
    let (lo, hi) = (
        base.lowest.load(Ordering::Relaxed),
        base.end.load(Ordering::Relaxed),
    );
    assert!(
        lo >= LEAD as u64 && hi <= (LEAD + tar.len()) as u64,
        "read [{lo}, {hi}) of the disk, outside the partition"
    );
}

#[test]
fn a_tar_stored_as_chunks_reads_through_the_chunked_medium() {
    let d = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(d.path()).unwrap();
    let tar = a_tar();
    let (extents, _pins) = store_as_chunks(&store, &tar);
    let chunks = HotChunks::new(store.clone());
    let m = ChunkedMedium::new(chunks.clone(), tar.len() as u64, extents, "import").unwrap();
    check_volume(&attach(Arc::new(m), "import"));

    // A partition of a disk image that is itself stored as chunks: a slice
    // over a chunked medium.
    let image = disk(&tar);
    let (extents, _pins) = store_as_chunks(&store, &image);
    let m = ChunkedMedium::new(chunks, image.len() as u64, extents, "tape").unwrap();
    let base = watched(Arc::new(m));
    let part = Slice::new(base.clone(), LEAD as u64, tar.len() as u64, "tape p1").unwrap();
    check_volume(&attach(Arc::new(part), "tape p1"));
    assert!(base.end.load(Ordering::Relaxed) <= (LEAD + tar.len()) as u64);
}

/// The read-ahead window keeps an archive of many small members at a few
/// reads per MiB, through a slice as directly: 2000 members (2 MiB of
/// headers and data) cost one read to detect the format and one per window
/// (64, 128, then 256 KiB), not one per header.
#[test]
fn many_small_members_cost_one_read_per_window() {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..2000 {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(100);
        b.append_data(&mut h, format!("d/f{i}"), &[b'x'; 100][..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let whole = Arc::new(super::Counted::new(disk(&tar)));
    let part: SharedMedium =
        Arc::new(Slice::new(whole.clone(), LEAD as u64, tar.len() as u64, "p").unwrap());
    let format = detected(&*part, "p");
    let idx = archive::build_index(&*part, "p", format, implicit(), &mut |_| {}).unwrap();
    assert_eq!(idx.stats.files, 2000);
    let windows = 2 + (tar.len() as u64 - (192 << 10)).div_ceil(256 << 10);
    assert_eq!(whole.reads() as u64, 1 + windows);
}

/// The zip parser reads through the same stack: a zip made by python's
/// zipfile (one stored and one deflated member) inside a partition slice.
#[test]
fn a_zip_inside_a_partition_slice_reads_through_the_medium_stack() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("t.zip");
    let script = "import sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
        \x20   z.writestr('a/stored.txt', 'stored bytes\\n', zipfile.ZIP_STORED)\n\
        \x20   z.writestr('deflated.txt', 'ab' * 50000, zipfile.ZIP_DEFLATED)\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zip = std::fs::read(&path).unwrap();
    let base = watched(Arc::new(disk(&zip)));
    let part: SharedMedium =
        Arc::new(Slice::new(base.clone(), LEAD as u64, zip.len() as u64, "p2").unwrap());
    assert_eq!(detected(&*part, "p2"), Format::Zip);
    let idx = archive::build_index(&*part, "p2", Format::Zip, implicit(), &mut |_| {}).unwrap();
    let v = ArchiveVolume::new("p2".into(), idx, part, std::env::temp_dir());
    assert_eq!(read_file(&v, &[b"a", b"stored.txt"]), b"stored bytes\n");
    assert!(read_file(&v, &[b"deflated.txt"]) == b"ab".repeat(50_000));
    let (lo, hi) = (
        base.lowest.load(Ordering::Relaxed),
        base.end.load(Ordering::Relaxed),
    );
    assert!(
        lo >= LEAD as u64 && hi <= (LEAD + zip.len()) as u64,
        "read [{lo}, {hi}) of the disk, outside the partition"
    );
}
