//! Volume lifecycle through `Manager`, without a mount: attach, detach and
//! attach again of an archive (across a restart too), a medium that goes
//! missing and comes back, destroy of a native volume and of an archive
//! volume, and the transitions the one table in `src/lifecycle.rs`
//! refuses, with the errors they give today. The table itself has unit
//! tests there; these check that `Manager` goes through it.

#[path = "common/core.rs"]
mod harness;

use std::path::{Path, PathBuf};

use fsd::ErrorKind;
use fsd::fs::VOLUMES_INO;
use fsd::fs::types::Ctx;
use fsd::lifecycle::{Attachment, Kind};
use fsd::volume::manager::{Attached, FormatChoice};
use harness::*;

const ROOT: Ctx = Ctx::ROOT;

/// `dir/a.txt` and `b.bin` in a tar built with the `tar` crate.
fn make_tar(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let a = b"member a\n".to_vec();
    let b = pattern(11, 70_000);
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in [("dir/a.txt", &a), ("b.bin", &b)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        builder.append_data(&mut h, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap().sync_all().unwrap();
    (a, b)
}

fn attach(t: &TestCore, path: &Path, name: Option<&str>) -> fsd::Result<Attached> {
    t.manager().attach(
        path,
        None,
        name,
        FormatChoice::Auto,
        &caller(0, 0),
        &mut |_, _| {},
    )
}

/// The live state `tokenctl volumes` would show for `id`.
fn state_of(t: &TestCore, id: &str) -> Attachment {
    t.manager()
        .volumes()
        .unwrap()
        .into_iter()
        .find(|v| v.id == id)
        .map(|v| v.state)
        .expect("the volume is listed")
}

/// Reads `volumes/<name>/<path>` through the core.
fn read_member(t: &TestCore, name: &str, path: &[&str]) -> fsd::Result<Vec<u8>> {
    let mut ino = t.volume_root(name)?;
    for p in path {
        ino = t.lookup(ino, p.as_bytes())?.ino;
    }
    t.read_all(ino, &ROOT)
}

fn archive_in(t: &TestCore) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let path = t.dir.path().join("photos.tar");
    let (a, b) = make_tar(&path);
    (path, a, b)
}

#[test]
fn archive_attach_detach_attach() {
    let mut t = TestCore::new();
    let (path, a, b) = archive_in(&t);

    let first = attach(&t, &path, Some("photos")).unwrap();
    assert!(first.indexed && !first.already_attached, "{first:?}");
    let v = &first.volume;
    assert_eq!((v.kind, v.state), (Kind::Archive, Attachment::Attached));
    assert_eq!(v.format.as_deref(), Some("tar"));
    let id = v.id.clone();
    assert_eq!(read_member(&t, "photos", &["dir", "a.txt"]).unwrap(), a);
    assert_eq!(read_member(&t, "photos", &["b.bin"]).unwrap(), b);

    // Attaching it again changes nothing.
    let again = attach(&t, &path, None).unwrap();
    assert!(again.already_attached && !again.indexed, "{again:?}");
    assert_eq!(again.volume.id, id);

    // Detach: out of the mount, kept in the catalog as detached.
    let d = t.manager().detach("photos", false, &caller(0, 0)).unwrap();
    assert_eq!(
        (d.id.as_str(), d.state),
        (id.as_str(), Attachment::Detached)
    );
    assert_fails(
        t.lookup(VOLUMES_INO, b"photos"),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    assert_fails(
        t.lookup(VOLUMES_INO, id.as_bytes()),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    assert_eq!(state_of(&t, &id), Attachment::Detached);

    // Refused: detach of a detached volume, today's `invalid` error.
    let e = t
        .manager()
        .detach(&id, false, &caller(0, 0))
        .expect_err("a detached volume cannot be detached");
    assert_eq!((e.kind(), e.errno()), (ErrorKind::Invalid, libc::EINVAL));
    assert!(
        e.to_string().contains("not attached (state detached)"),
        "{e}"
    );

    // A restart keeps it detached.
    t.restart();
    assert_eq!(state_of(&t, &id), Attachment::Detached);
    assert!(t.core().find(&id).is_none());

    // Attach again: the same volume, its stored index reused.
    let back = attach(&t, &path, None).unwrap();
    assert!(!back.indexed && !back.already_attached, "{back:?}");
    assert_eq!(back.volume.id, id);
    assert_eq!(back.volume.name.as_deref(), Some("photos"));
    assert_eq!(back.volume.state, Attachment::Attached);
    assert_eq!(read_member(&t, "photos", &["dir", "a.txt"]).unwrap(), a);
    assert_eq!(state_of(&t, &id), Attachment::Attached);
}

#[test]
fn detach_is_refused_while_a_file_is_open() {
    let t = TestCore::new();
    let (path, a, _) = archive_in(&t);
    let id = attach(&t, &path, Some("photos")).unwrap().volume.id;
    let root = t.volume_root("photos").unwrap();
    let dir = t.lookup(root, b"dir").unwrap();
    let f = t.lookup(dir.ino, b"a.txt").unwrap();
    let fh = t.open_read(f.ino, &ROOT).unwrap();

    assert_fails(
        t.manager().detach(&id, false, &caller(0, 0)),
        ErrorKind::Busy,
        libc::EBUSY,
    );
    assert_eq!(state_of(&t, &id), Attachment::Attached);
    // Forced, the open handle still reads; the volume leaves the mount.
    t.manager().detach(&id, true, &caller(0, 0)).unwrap();
    assert_eq!(t.read_fh(fh).unwrap(), a);
    t.core().release(fh).unwrap();
    assert_eq!(state_of(&t, &id), Attachment::Detached);
}

#[test]
fn missing_medium_comes_back() {
    let mut t = TestCore::new();
    let (path, a, _) = archive_in(&t);
    let id = attach(&t, &path, Some("photos")).unwrap().volume.id;

    // The medium is gone at start-up: recorded attached, shown missing.
    let away = t.dir.path().join("away.tar");
    std::fs::rename(&path, &away).unwrap();
    t.restart();
    assert_eq!(state_of(&t, &id), Attachment::Missing);
    assert_fails(
        t.lookup(VOLUMES_INO, b"photos"),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    // A missing volume is not in the mount: nothing to detach.
    let e = t.manager().detach(&id, false, &caller(0, 0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains("not attached"), "{e}");

    // Back in place, attach takes it from missing to attached.
    std::fs::rename(&away, &path).unwrap();
    let back = attach(&t, &path, None).unwrap();
    assert_eq!(back.volume.id, id);
    assert!(!back.already_attached, "{back:?}");
    assert_eq!(state_of(&t, &id), Attachment::Attached);
    assert_eq!(read_member(&t, "photos", &["dir", "a.txt"]).unwrap(), a);
}

#[test]
fn destroy_native_volume() {
    let mut t = TestCore::new();
    let root = t.create_volume("scratch", &caller(0, 0));
    let data = pattern(12, 3 << 20);
    let f = t.write_new(root, "f", &data, &ROOT).unwrap();
    let id = t.manager().record("scratch").unwrap().id;
    assert_eq!(t.chunk_files(), 3);

    // Refused while a file of it is open.
    let fh = t.open_read(f.ino, &ROOT).unwrap();
    assert_fails(
        t.manager().destroy("scratch", &caller(0, 0)),
        ErrorKind::Busy,
        libc::EBUSY,
    );
    assert_eq!(t.read_all(f.ino, &ROOT).unwrap(), data);
    t.core().release(fh).unwrap();

    // Only root or the owner may destroy it.
    assert_fails(
        t.manager().destroy("scratch", &caller(1000, 1000)),
        ErrorKind::NotPermitted,
        libc::EPERM,
    );

    let gone = t.manager().destroy("scratch", &caller(0, 0)).unwrap();
    assert_eq!(
        (gone.id.as_str(), gone.state),
        (id.as_str(), Attachment::Destroyed)
    );
    assert_fails(
        t.lookup(VOLUMES_INO, b"scratch"),
        ErrorKind::NotFound,
        libc::ENOENT,
    );
    assert_fails(t.getattr(root), ErrorKind::NotFound, libc::ENOENT);
    assert_fails(t.manager().record(&id), ErrorKind::NotFound, libc::ENOENT);
    assert!(t.manager().volumes().unwrap().is_empty());
    assert_eq!(t.chunk_files(), 0, "its chunks are released");
    // Destroyed is final: there is nothing left to destroy.
    assert_fails(
        t.manager().destroy(&id, &caller(0, 0)),
        ErrorKind::NotFound,
        libc::ENOENT,
    );

    // Still gone after a restart, and its name is free again.
    t.restart();
    assert!(t.manager().volumes().unwrap().is_empty());
    let root = t.create_volume("scratch", &caller(0, 0));
    assert_ne!(t.manager().record("scratch").unwrap().id, id);
    assert_eq!(t.names(root).unwrap(), Vec::<String>::new());
}

#[test]
fn destroy_attached_archive_keeps_the_medium() {
    let t = TestCore::new();
    let (path, _, _) = archive_in(&t);
    let before = std::fs::read(&path).unwrap();
    let id = attach(&t, &path, Some("photos")).unwrap().volume.id;

    // Attached to destroyed is allowed; the archive file is not touched.
    let gone = t.manager().destroy("photos", &caller(0, 0)).unwrap();
    assert_eq!(gone.state, Attachment::Destroyed);
    assert!(t.core().find(&id).is_none());
    assert_fails(t.manager().record(&id), ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // Attached again, it is a new volume, indexed afresh.
    let again = attach(&t, &path, Some("photos")).unwrap();
    assert!(again.indexed, "{again:?}");
    assert_ne!(again.volume.id, id);
}
