//! A composite of two archive volumes built from in-memory tars, driven
//! through the core as the mount would drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use super::*;
use crate::fs::types::FileKind;
use crate::fs::{Core, MediaEntry, Mounted, VolumeInfo, global_ino};
use crate::medium::SharedMedium;
use crate::volume::archive::index::Meta;
use crate::volume::archive::{ArchiveVolume, Format, build_index};

const SLOT: u32 = 9;

/// A tar of `(path, contents)` files and `(path, target)` symlinks.
fn tar(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn archive(bytes: Vec<u8>, cache: &tempfile::TempDir) -> Arc<dyn VolumeFs> {
    let implicit = Meta {
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        mtime_nsec: 0,
    };
    let idx = build_index(&bytes, "t.tar", Format::Tar, implicit, &mut |_| {}).unwrap();
    let medium: SharedMedium = Arc::new(bytes);
    Arc::new(ArchiveVolume::new(
        "t.tar".into(),
        idx,
        medium,
        cache.path().into(),
    ))
}

/// A core with the composite `fs` mounted in slot 9; returns its root.
fn mount(core: &Core, fs: Composite) -> u64 {
    core.register(Arc::new(Mounted {
        slot: SLOT,
        info: RwLock::new(VolumeInfo {
            id: "vol-9999999999999999".into(),
            name: Some("drive".into()),
            kind: crate::lifecycle::Kind::Archive,
            state: crate::lifecycle::Attachment::Attached,
            format: None,
            medium: None,
            size: 0,
            files: 0,
            slot: SLOT,
        }),
        fs: Arc::new(fs),
        media: Vec::<MediaEntry>::new(),
        ttl: Duration::from_secs(60),
        open_files: AtomicU64::new(0),
    }))
    .unwrap();
    global_ino(SLOT, VOLUME_ROOT)
}

fn two_partitions(cache: &tempfile::TempDir) -> Composite {
    let p1 = tar(&[("a.txt", b"first"), ("d/deep", b"deep one")], &[]);
    let p2 = tar(&[("a.txt", b"second!")], &[("ln", "a.txt")]);
    let mut c = Composite::new(crate::fs::namespace::Stamp::now());
    c.mount(b"p1", archive(p1, cache)).unwrap();
    c.mount(b"p2", archive(p2, cache)).unwrap();
    c
}

fn listing(core: &Core, ino: u64, offset: u64) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    core.readdir(ino, offset, &mut |e| {
        out.push((
            String::from_utf8_lossy(e.name).into_owned(),
            e.attr.ino,
            e.next,
        ));
        true
    })
    .unwrap();
    out
}

fn names(l: &[(String, u64, u64)]) -> Vec<&str> {
    l.iter().map(|e| e.0.as_str()).collect()
}

fn read(core: &Core, ino: u64) -> Vec<u8> {
    let (fh, _) = core
        .open(ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
        .unwrap();
    let mut out = Vec::new();
    core.read(fh, 0, 4096, &mut out).unwrap();
    core.release(fh).unwrap();
    out
}

#[test]
fn children_are_subdirectories_with_their_own_inodes() {
    let cache = tempfile::tempdir().unwrap();
    let core = Core::new();
    let root = mount(&core, two_partitions(&cache));

    let (a, _) = core.getattr(root).unwrap();
    assert_eq!((a.kind, a.perm, a.nlink), (FileKind::Dir, 0o555, 4));
    let top = listing(&core, root, 0);
    assert_eq!(names(&top), [".", "..", "p1", "p2"]);
    assert_eq!(listing(&core, root, top[2].2)[0].0, "p2", "resumes");
    assert!(core.opendir(root).unwrap(), "archives never change");

    let (p1, _) = core.lookup(root, b"p1").unwrap();
    let (p2, _) = core.lookup(root, b"p2").unwrap();
    assert_eq!((p1.ino, p2.ino), (top[2].1, top[3].1));
    assert_eq!(p1.kind, FileKind::Dir);
    assert_eq!(p1.ino >> 40, u64::from(SLOT));
    let in_p1 = listing(&core, p1.ino, 0);
    assert_eq!(names(&in_p1), [".", "..", "a.txt", "d"]);
    assert_eq!(in_p1[0].1, p1.ino);
    assert_eq!(
        in_p1[1].1, root,
        "`..` of a child's root is the composite's root"
    );

    let (f1, _) = core.lookup(p1.ino, b"a.txt").unwrap();
    let (f2, _) = core.lookup(p2.ino, b"a.txt").unwrap();
    assert_ne!(f1.ino, f2.ino, "no collision between the children");
    assert_eq!(f1.ino, in_p1[2].1);
    assert_eq!(core.getattr(f2.ino).unwrap().0, f2);
    assert_eq!(read(&core, f1.ino), b"first");
    assert_eq!(read(&core, f2.ino), b"second!");
    let (d, _) = core.lookup(p1.ino, b"d").unwrap();
    let (deep, _) = core.lookup(d.ino, b"deep").unwrap();
    assert_eq!(read(&core, deep.ino), b"deep one");
    assert_eq!(listing(&core, d.ino, 0)[1].1, p1.ino);
    let (ln, _) = core.lookup(p2.ino, b"ln").unwrap();
    assert_eq!(core.readlink(ln.ino).unwrap(), b"a.txt");
    assert_eq!(core.listxattr(f1.ino).unwrap().len(), 0);
    assert_eq!(
        core.getxattr(f1.ino, b"user.x").unwrap_err().errno(),
        libc::ENODATA
    );
    assert_eq!(core.lseek(f2.ino, 2, libc::SEEK_HOLE).unwrap(), 7);
    assert_eq!(
        core.lookup(root, b"p3").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        core.lookup(f1.ino, b"x").unwrap_err().kind(),
        ErrorKind::NotDir
    );
    let m = core.find("drive").unwrap();
    assert_eq!(m.open_files.load(Ordering::Acquire), 0);
}

#[test]
fn writes_to_read_only_children_are_erofs() {
    let cache = tempfile::tempdir().unwrap();
    let core = Core::new();
    let root = mount(&core, two_partitions(&cache));
    let (p1, _) = core.lookup(root, b"p1").unwrap();
    let (p2, _) = core.lookup(root, b"p2").unwrap();
    let (f1, _) = core.lookup(p1.ino, b"a.txt").unwrap();
    let errno = |r: Result<()>| r.unwrap_err().errno();
    let mkdir = |parent, name: &'static [u8]| {
        core.dir_op(parent, |v, p| v.mkdir(p, name, 0o755, 0, &Ctx::ROOT))
            .map(|_| ())
    };
    assert_eq!(errno(mkdir(p1.ino, b"x")), libc::EROFS);
    assert_eq!(errno(mkdir(root, b"x")), libc::EROFS, "no base to write");
    assert_eq!(errno(mkdir(root, b"p1")), libc::EEXIST);
    assert_eq!(
        core.open(f1.ino, OpenFlags(libc::O_RDWR), &Ctx::ROOT)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        core.create(
            p2.ino,
            b"new",
            0o644,
            0,
            OpenFlags(libc::O_WRONLY),
            &Ctx::ROOT
        )
        .unwrap_err()
        .errno(),
        libc::EROFS
    );
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(
        core.setattr(f1.ino, &set, None, &Ctx::ROOT)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        errno(core.rename(p1.ino, b"a.txt", p2.ino, b"b", 0, &Ctx::ROOT)),
        libc::EXDEV
    );
    assert_eq!(
        errno(core.rename(p1.ino, b"a.txt", p1.ino, b"b", 0, &Ctx::ROOT)),
        libc::EROFS
    );
    assert_eq!(
        errno(core.rename(root, b"p1", root, b"p9", 0, &Ctx::ROOT)),
        libc::EBUSY
    );
    assert_eq!(
        errno(core.dir_op_unit(root, |v, p| v.rmdir(p, b"p2", &Ctx::ROOT))),
        libc::EBUSY
    );
    assert_eq!(
        errno(core.dir_op_unit(p1.ino, |v, p| v.unlink(p, b"a.txt", &Ctx::ROOT))),
        libc::EROFS
    );
    assert_eq!(
        errno(core.setxattr(f1.ino, b"user.x", b"1", 0, &Ctx::ROOT)),
        libc::EROFS
    );
    let (fh, _) = core
        .open(f1.ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
        .unwrap();
    assert_eq!(errno(core.fallocate(fh, 0, 10, 0)), libc::EROFS);
    core.release(fh).unwrap();
    // Nothing changed.
    assert_eq!(read(&core, f1.ino), b"first");
}

#[test]
fn a_base_fills_the_root_and_children_hide_its_names() {
    let cache = tempfile::tempdir().unwrap();
    let base = tar(&[("readme", b"drive"), ("p1", b"hidden"), ("z", b"z")], &[]);
    let mut c = two_partitions(&cache).with_base(archive(base, &cache));
    assert_eq!(
        c.mount(b"p1", archive(tar(&[], &[]), &cache))
            .unwrap_err()
            .kind(),
        ErrorKind::Exists
    );
    for bad in [&b""[..], b".", b"..", b"a/b"] {
        let e = c.mount(bad, archive(tar(&[], &[]), &cache)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
    }
    let core = Core::new();
    let root = mount(&core, c);
    let top = listing(&core, root, 0);
    assert_eq!(names(&top), [".", "..", "p1", "p2", "readme", "z"]);
    // Resuming inside the base's entries, and at the seam between the two.
    assert_eq!(names(&listing(&core, root, top[4].2)), ["z"]);
    assert_eq!(names(&listing(&core, root, top[3].2)), ["readme", "z"]);
    let (readme, _) = core.lookup(root, b"readme").unwrap();
    assert_eq!(readme.ino, top[4].1);
    assert_eq!(read(&core, readme.ino), b"drive");
    let (p1, _) = core.lookup(root, b"p1").unwrap();
    assert_eq!(p1.kind, FileKind::Dir, "the child, not the base's file");
    let (a, _) = core.getattr(root).unwrap();
    assert_eq!(a.perm, 0o755, "the base's root");
    assert_eq!(a.nlink, 2 + 2);
}

#[test]
fn inode_encoding_keeps_parts_apart() {
    assert_eq!(join(0, VOLUME_ROOT).unwrap(), VOLUME_ROOT);
    assert_eq!(split(join(3, 77).unwrap()), (3, 77));
    assert!(
        join(255, INNER_MASK).unwrap() < 1 << 40,
        "fits the core's local inodes"
    );
    assert_eq!(join(1, 1 << 32).unwrap_err().kind(), ErrorKind::Io);
}
