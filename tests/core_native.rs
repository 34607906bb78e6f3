//! The filesystem core with a native volume, driven through `Core`'s
//! methods (the calls the FUSE adapter makes) without a mount: create,
//! write and read back, rename, unlink of an open file, hard links, the
//! errors each refusal gives, a permission check for a non-root caller,
//! and data that survives a restart on the same state directory.
//!
//! The mounted tests (`native.rs`, `posix_native.rs`) check the same
//! semantics through the kernel; these pin the core itself, so a change
//! of the layers beneath the adapter shows here first, with the failing
//! call named.

#[path = "common/core.rs"]
mod harness;

use fsd::ErrorKind;
use fsd::fs::VOLUMES_INO;
use fsd::fs::perm;
use fsd::fs::types::{Ctx, FileKind, OpenFlags, SetAttr};
use harness::*;

const ROOT: Ctx = Ctx::ROOT;

/// 2.5 MiB: three chunks, the last one partial.
const BIG: usize = (5 << 20) / 2;

/// Chunks a file of `len` bytes takes (1 MiB each, the last partial).
fn chunks(len: usize) -> usize {
    len.div_ceil(1 << 20)
}

#[test]
fn create_write_and_read_back() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    assert_eq!(t.names(root).unwrap(), Vec::<String>::new());

    let big = pattern(1, BIG);
    let a = t.write_new(root, "big", &big, &ROOT).unwrap();
    assert_eq!(a.kind, FileKind::File);
    assert_eq!(a.perm, 0o644, "mode 0644 under umask 022");
    let small = b"hello, core".to_vec();
    t.write_new(root, "small", &small, &ROOT).unwrap();

    let got = t.lookup(root, b"big").unwrap();
    assert_eq!(got.ino, a.ino);
    assert_eq!(got.size, BIG as u64);
    assert_eq!(t.getattr(a.ino).unwrap().size, BIG as u64);
    assert_eq!(t.read_all(a.ino, &ROOT).unwrap(), big);
    let s = t.lookup(root, b"small").unwrap();
    assert_eq!(t.read_all(s.ino, &ROOT).unwrap(), small);
    let mut names = t.names(root).unwrap();
    names.sort();
    assert_eq!(names, ["big", "small"]);
    assert_eq!(t.chunk_files(), chunks(BIG) + 1);

    // An overwrite in the middle through a read-write handle, seen by a
    // reader that opens afterwards.
    let (fh, _) = t
        .core()
        .open(a.ino, OpenFlags(libc::O_RDWR), &ROOT)
        .unwrap();
    t.write_all(fh, 1 << 20, b"MIDDLE").unwrap();
    t.core().flush(fh, OWNER).unwrap();
    t.core().release(fh).unwrap();
    let mut want = big.clone();
    want[1 << 20..(1 << 20) + 6].copy_from_slice(b"MIDDLE");
    assert_eq!(t.read_all(a.ino, &ROOT).unwrap(), want);

    // A file made by another user is theirs.
    let d = t.mkdir(root, "shared", 0o1777, &ROOT).unwrap();
    let f = t.write_new(d.ino, "mine", b"x", &ctx(1000, 100)).unwrap();
    assert_eq!((f.uid, f.gid), (1000, 100));
    assert_eq!(d.perm, 0o1755, "mkdir applies the umask the kernel passed");
}

#[test]
fn rename_within_and_across_directories() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let d1 = t.mkdir(root, "d1", 0o755, &ROOT).unwrap();
    let d2 = t.mkdir(root, "d2", 0o755, &ROOT).unwrap();
    let data = pattern(2, 3000);
    let f = t.write_new(root, "f", &data, &ROOT).unwrap();

    // Within one directory: the same inode under the new name.
    t.rename(root, "f", root, "g", &ROOT).unwrap();
    assert_fails(t.lookup(root, b"f"), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.lookup(root, b"g").unwrap().ino, f.ino);

    // Across directories.
    t.rename(root, "g", d1.ino, "h", &ROOT).unwrap();
    assert_fails(t.lookup(root, b"g"), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.lookup(d1.ino, b"h").unwrap().ino, f.ino);
    assert_eq!(t.names(d1.ino).unwrap(), ["h"]);

    // A directory moves with its contents, and the link counts follow
    // (a subdirectory's `..` counts in its parent).
    assert_eq!(t.getattr(root).unwrap().nlink, 4);
    t.rename(root, "d1", d2.ino, "d1", &ROOT).unwrap();
    assert_eq!(t.getattr(root).unwrap().nlink, 3);
    assert_eq!(t.getattr(d2.ino).unwrap().nlink, 3);
    let moved = t.lookup(d2.ino, b"d1").unwrap();
    assert_eq!(moved.ino, d1.ino);
    let h = t.lookup(moved.ino, b"h").unwrap();
    assert_eq!(t.read_all(h.ino, &ROOT).unwrap(), data);
    assert_eq!(t.names(root).unwrap(), ["d2"]);
}

#[test]
fn rename_over_a_file_drops_the_replaced_data() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let old = t.write_new(root, "old", &pattern(3, BIG), &ROOT).unwrap();
    let new_data = pattern(4, BIG);
    let new = t.write_new(root, "new", &new_data, &ROOT).unwrap();
    assert_eq!(t.chunk_files(), 2 * chunks(BIG));

    t.rename(root, "new", root, "old", &ROOT).unwrap();
    assert_eq!(t.names(root).unwrap(), ["old"]);
    let now = t.lookup(root, b"old").unwrap();
    assert_eq!(now.ino, new.ino);
    assert_eq!(t.read_all(now.ino, &ROOT).unwrap(), new_data);
    // The replaced inode is gone, and so are its chunks.
    assert_fails(t.getattr(old.ino), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.chunk_files(), chunks(BIG));
}

#[test]
fn unlinked_open_file_stays_readable_until_release() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let data = pattern(5, BIG);
    let f = t.write_new(root, "f", &data, &ROOT).unwrap();
    let fh = t.open_read(f.ino, &ROOT).unwrap();

    t.unlink(root, "f", &ROOT).unwrap();
    assert_fails(t.lookup(root, b"f"), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.names(root).unwrap(), Vec::<String>::new());
    // The handle still reads every byte, and the chunks stay.
    assert_eq!(t.read_fh(fh).unwrap(), data);
    assert_eq!(t.getattr(f.ino).unwrap().nlink, 0);
    assert_eq!(t.chunk_files(), chunks(BIG));

    t.core().release(fh).unwrap();
    assert_fails(t.getattr(f.ino), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.chunk_files(), 0);
}

#[test]
fn hard_links_share_the_inode() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let sub = t.mkdir(root, "sub", 0o755, &ROOT).unwrap();
    let data = pattern(6, 5000);
    let a = t.write_new(root, "a", &data, &ROOT).unwrap();

    let b = t.link(a.ino, sub.ino, "b", &ROOT).unwrap();
    assert_eq!(b.ino, a.ino);
    assert_eq!(b.nlink, 2);
    let seen = t.lookup(sub.ino, b"b").unwrap();
    assert_eq!((seen.ino, seen.nlink), (a.ino, 2));
    assert_eq!(t.getattr(a.ino).unwrap().nlink, 2);

    // Refusals: an existing name, a directory.
    assert_fails(
        t.link(a.ino, root, "a", &ROOT),
        ErrorKind::Exists,
        libc::EEXIST,
    );
    assert_fails(
        t.link(sub.ino, root, "sub2", &ROOT),
        ErrorKind::NotPermitted,
        libc::EPERM,
    );

    // One name gone, the other still reads the data.
    t.unlink(root, "a", &ROOT).unwrap();
    let left = t.lookup(sub.ino, b"b").unwrap();
    assert_eq!((left.ino, left.nlink), (a.ino, 1));
    assert_eq!(t.read_all(left.ino, &ROOT).unwrap(), data);
    assert_eq!(t.chunk_files(), 1);
    t.unlink(sub.ino, "b", &ROOT).unwrap();
    assert_eq!(t.chunk_files(), 0);
}

#[test]
fn refusals_give_their_error_kind_and_errno() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let other = t.create_volume("other", &caller(0, 0));
    let dir = t.mkdir(root, "dir", 0o755, &ROOT).unwrap();
    let file = t.write_new(root, "file", b"data", &ROOT).unwrap();
    t.write_new(dir.ino, "inner", b"x", &ROOT).unwrap();
    t.mkdir(root, "empty", 0o755, &ROOT).unwrap();

    // ENOENT
    assert_fails(t.lookup(root, b"nope"), ErrorKind::NotFound, libc::ENOENT);
    assert_fails(
        t.unlink(root, "nope", &ROOT),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    assert_fails(
        t.rename(root, "nope", root, "x", &ROOT),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    assert_fails(
        t.lookup(VOLUMES_INO, b"nope"),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    // EEXIST
    assert_fails(
        t.mkdir(root, "dir", 0o755, &ROOT),
        ErrorKind::Exists,
        libc::EEXIST,
    );
    assert_fails(
        t.write_new(root, "file", b"again", &ROOT),
        ErrorKind::Exists,
        libc::EEXIST,
    );
    // ENOTEMPTY: rmdir, and a rename over a non-empty directory.
    assert_fails(
        t.rmdir(root, "dir", &ROOT),
        ErrorKind::NotEmpty,
        libc::ENOTEMPTY,
    );
    assert_fails(
        t.rename(root, "empty", root, "dir", &ROOT),
        ErrorKind::NotEmpty,
        libc::ENOTEMPTY,
    );
    // EISDIR: open, unlink and a file renamed over a directory.
    assert_fails(t.open_read(dir.ino, &ROOT), ErrorKind::IsDir, libc::EISDIR);
    assert_fails(t.unlink(root, "dir", &ROOT), ErrorKind::IsDir, libc::EISDIR);
    assert_fails(
        t.rename(root, "file", root, "empty", &ROOT),
        ErrorKind::IsDir,
        libc::EISDIR,
    );
    // ENOTDIR: rmdir of a file, lookup in a file, a directory renamed over
    // a file.
    assert_fails(
        t.rmdir(root, "file", &ROOT),
        ErrorKind::NotDir,
        libc::ENOTDIR,
    );
    assert_fails(t.lookup(file.ino, b"x"), ErrorKind::NotDir, libc::ENOTDIR);
    assert_fails(
        t.rename(root, "empty", root, "file", &ROOT),
        ErrorKind::NotDir,
        libc::ENOTDIR,
    );
    // EXDEV: between volumes, as between filesystems.
    assert_fails(
        t.rename(root, "file", other, "file", &ROOT),
        ErrorKind::CrossDevice,
        libc::EXDEV,
    );
    assert_fails(
        t.link(file.ino, other, "file", &ROOT),
        ErrorKind::CrossDevice,
        libc::EXDEV,
    );
    // EROFS: the synthetic tree takes no new entries.
    assert_fails(
        t.mkdir(VOLUMES_INO, "new", 0o755, &ROOT),
        ErrorKind::ReadOnly,
        libc::EROFS,
    );

    // Nothing a refusal touched changed.
    let mut names = t.names(root).unwrap();
    names.sort();
    assert_eq!(names, ["dir", "empty", "file"]);
    assert_eq!(t.read_all(file.ino, &ROOT).unwrap(), b"data");
    assert_eq!(t.names(dir.ino).unwrap(), ["inner"]);
    assert_eq!(t.names(other).unwrap(), Vec::<String>::new());
}

/// The core leaves permission checks on FUSE requests to the kernel
/// (`default_permissions`); requests that do not come through the kernel
/// (the control socket's paths) are checked by `fs::resolve` against the
/// attributes the core reports. A 0700 directory of one user is closed to
/// another until its owner opens it with a chmod (a `setattr`).
#[test]
fn private_directory_of_another_user_is_eacces() {
    let t = TestCore::new();
    let owner = caller(1000, 1000);
    let root = t.create_volume("home", &owner);
    assert_eq!(t.getattr(root).unwrap().uid, 1000);
    let as_owner = ctx(1000, 1000);
    let private = t.mkdir(root, "private", 0o700, &as_owner).unwrap();
    assert_eq!((private.uid, private.perm), (1000, 0o700));
    let secret = t
        .write_new(private.ino, "secret", b"for 1000 only", &as_owner)
        .unwrap();

    let mnt = std::path::Path::new("/mnt/fsd");
    let path = "/mnt/fsd/volumes/home/private/secret";
    let resolve =
        |c: &fsd::fs::perm::Caller| fsd::fs::resolve::resolve(t.core(), mnt, path, c, perm::R);
    assert_eq!(resolve(&owner).unwrap(), secret.ino);
    assert_eq!(resolve(&caller(0, 0)).unwrap(), secret.ino);
    assert_fails(
        resolve(&caller(1001, 1001)),
        ErrorKind::PermissionDenied,
        libc::EACCES,
    );

    let set = SetAttr {
        mode: Some(0o755),
        ..SetAttr::default()
    };
    let (a, _) = t
        .core()
        .setattr(private.ino, &set, None, &as_owner)
        .unwrap();
    assert_eq!(a.perm, 0o755);
    assert_eq!(resolve(&caller(1001, 1001)).unwrap(), secret.ino);
}

#[test]
fn data_survives_a_restart() {
    let mut t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));
    let big = pattern(7, BIG);
    let d = t.mkdir(root, "d", 0o750, &ROOT).unwrap();
    let f = t.write_new(d.ino, "big", &big, &ROOT).unwrap();
    t.link(f.ino, root, "big-link", &ROOT).unwrap();
    t.write_new(root, "small", b"small", &ROOT).unwrap();
    // Unlinked while open when the daemon stops: recovery at the next start
    // deletes it and frees its chunks.
    let gone = t.write_new(root, "gone", &pattern(8, BIG), &ROOT).unwrap();
    let fh = t.open_read(gone.ino, &ROOT).unwrap();
    t.unlink(root, "gone", &ROOT).unwrap();
    let _ = fh;
    assert_eq!(t.chunk_files(), 2 * chunks(BIG) + 1);

    t.restart();

    let root = t.volume_root("work").unwrap();
    let mut names = t.names(root).unwrap();
    names.sort();
    assert_eq!(names, ["big-link", "d", "small"]);
    let d2 = t.lookup(root, b"d").unwrap();
    assert_eq!((d2.ino, d2.kind, d2.perm), (d.ino, FileKind::Dir, 0o750));
    let f2 = t.lookup(d2.ino, b"big").unwrap();
    assert_eq!((f2.ino, f2.nlink, f2.size), (f.ino, 2, BIG as u64));
    assert_eq!(t.read_all(f2.ino, &ROOT).unwrap(), big);
    let s = t.lookup(root, b"small").unwrap();
    assert_eq!(t.read_all(s.ino, &ROOT).unwrap(), b"small");
    assert_fails(t.getattr(gone.ino), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(t.chunk_files(), chunks(BIG) + 1);

    // Writable as before.
    t.write_new(root, "after", b"after restart", &ROOT).unwrap();
    let a = t.lookup(root, b"after").unwrap();
    assert_eq!(t.read_all(a.ino, &ROOT).unwrap(), b"after restart");
}

/// The other calls that make entries or change a file without a handle:
/// mknod (a regular file made without an open), symlink and readlink,
/// truncate through setattr, and a listing resumed from an offset.
#[test]
fn mknod_symlink_truncate_and_listing_offsets() {
    let t = TestCore::new();
    let root = t.create_volume("work", &caller(0, 0));

    let n = t
        .core()
        .dir_op(root, |v, p| {
            v.mknod(p, b"node", libc::S_IFREG | 0o640, 0o022, 0, &ROOT)
        })
        .unwrap()
        .0;
    assert_eq!((n.kind, n.size, n.perm), (FileKind::File, 0, 0o640));
    let (fh, _) = t
        .core()
        .open(n.ino, OpenFlags(libc::O_WRONLY), &ROOT)
        .unwrap();
    let data = pattern(9, BIG);
    t.write_all(fh, 0, &data).unwrap();
    t.core().flush(fh, OWNER).unwrap();
    t.core().release(fh).unwrap();
    assert_eq!(t.read_all(n.ino, &ROOT).unwrap(), data);

    // Truncate without a handle: shorter, then longer (zeros).
    let cut = SetAttr {
        size: Some(1000),
        ..SetAttr::default()
    };
    let (a, _) = t.core().setattr(n.ino, &cut, None, &ROOT).unwrap();
    assert_eq!(a.size, 1000);
    assert_eq!(t.read_all(n.ino, &ROOT).unwrap(), &data[..1000]);
    assert_eq!(t.chunk_files(), 1, "the chunks past the new end are freed");
    let grow = SetAttr {
        size: Some(5000),
        ..SetAttr::default()
    };
    t.core().setattr(n.ino, &grow, None, &ROOT).unwrap();
    let mut want = data[..1000].to_vec();
    want.resize(5000, 0);
    assert_eq!(t.read_all(n.ino, &ROOT).unwrap(), want);

    let l = t
        .core()
        .dir_op(root, |v, p| v.symlink(p, b"link", b"node", &ROOT))
        .unwrap()
        .0;
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(t.core().readlink(l.ino).unwrap(), b"node");
    assert_eq!(t.lookup(root, b"link").unwrap().ino, l.ino);

    // A listing resumed from the offset of an entry goes on after it.
    for i in 0..5 {
        t.write_new(root, &format!("f{i}"), b"", &ROOT).unwrap();
    }
    let mut all = Vec::new();
    t.core()
        .readdir(root, 0, &mut |e| {
            all.push((String::from_utf8_lossy(e.name).into_owned(), e.next));
            true
        })
        .unwrap();
    assert_eq!(all.len(), 2 + 7, "., .., node, link, f0..f4: {all:?}");
    let (_, resume) = all[4].clone();
    let mut rest = Vec::new();
    t.core()
        .readdir(root, resume, &mut |e| {
            rest.push(String::from_utf8_lossy(e.name).into_owned());
            true
        })
        .unwrap();
    let want: Vec<String> = all[5..].iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(rest, want);
}
