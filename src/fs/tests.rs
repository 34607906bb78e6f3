//! Unit tests of the core against an in-memory archive volume.

use super::*;
use crate::volume::archive::ArchiveVolume;
use crate::volume::archive::index::{Data, IndexBuilder, Member, Meta, NodeKind};

fn meta() -> Meta {
    Meta {
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
        mtime_nsec: 5,
    }
}

fn mount_one(core: &Core, slot: u32, id: &str, name: Option<&str>) -> tempfile::TempDir {
    mount_with_parts(core, slot, id, name, Vec::new())
}

/// Like `mount_one`, with `parts` under `/media` after the whole medium.
fn mount_with_parts(
    core: &Core,
    slot: u32,
    id: &str,
    name: Option<&str>,
    parts: Vec<MediaEntry>,
) -> tempfile::TempDir {
    let medium: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut b = IndexBuilder::new("tar", meta());
    let mut f = Member::new(NodeKind::File, meta());
    f.size = 100;
    f.data = Data::Stored { offset: 512 };
    b.add(b"dir/file", f);
    let mut l = Member::new(NodeKind::Symlink, meta());
    l.target = b"dir/file".to_vec();
    b.add(b"link", l);
    let dir = tempfile::tempdir().unwrap();
    let medium: SharedMedium = Arc::new(medium);
    let fs = ArchiveVolume::new(
        "m.tar".into(),
        b.finish(),
        medium.clone(),
        dir.path().into(),
    );
    core.register(Arc::new(Mounted {
        slot,
        info: RwLock::new(VolumeInfo {
            id: id.into(),
            name: name.map(str::to_owned),
            kind: crate::lifecycle::Kind::Archive,
            state: crate::lifecycle::Attachment::Attached,
            format: Some("tar".into()),
            medium: None,
            size: 4096,
            files: 1,
            slot,
        }),
        fs: Arc::new(fs),
        media: std::iter::once(MediaEntry::whole(medium))
            .chain(parts)
            .collect(),
        ttl: Duration::from_secs(60),
        open_files: AtomicU64::new(0),
    }))
    .unwrap();
    dir
}

fn names(core: &Core, ino: u64, offset: u64) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    core.readdir(ino, offset, &mut |e| {
        out.push((String::from_utf8_lossy(e.name).into_owned(), e.next));
        true
    })
    .unwrap();
    out
}

const ID: &str = "vol-0123456789abcdef";

#[test]
fn synthetic_tree_and_volume_paths() {
    let core = Core::new();
    let _d = mount_one(&core, 7, ID, Some("photos"));
    let root = names(&core, ROOT_INO, 0);
    assert_eq!(
        root.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [".", "..", "volumes", "media"]
    );
    let vols = names(&core, VOLUMES_INO, 0);
    assert_eq!(
        vols.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [".", "..", "photos", ID]
    );
    // Resuming from an offset continues after that entry.
    let rest = names(&core, VOLUMES_INO, vols[2].1);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, ID);

    let (link, _) = core.lookup(VOLUMES_INO, b"photos").unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(core.readlink(link.ino).unwrap(), ID.as_bytes());

    let (vroot, ttl) = core.lookup(VOLUMES_INO, ID.as_bytes()).unwrap();
    assert_eq!(vroot.ino, global_ino(7, VOLUME_ROOT));
    assert_eq!(ttl, Duration::from_secs(60));
    let (dir, _) = core.lookup(vroot.ino, b"dir").unwrap();
    let (file, _) = core.lookup(dir.ino, b"file").unwrap();
    assert_eq!(file.size, 100);
    assert_eq!(file.ino >> 40, 7);
    let inside = names(&core, dir.ino, 0);
    assert_eq!(inside[1], ("..".to_string(), 2));
    assert_eq!(inside[2].0, "file");

    let (medium, _) = core.lookup(MEDIA_INO, ID.as_bytes()).unwrap();
    assert_eq!(medium.size, 4096);
    assert_eq!(medium.perm, 0o444);
    assert!(core.lookup(VOLUMES_INO, b"nope").is_err());
}

#[test]
fn open_read_release_tracks_handles() {
    let core = Core::new();
    let _d = mount_one(&core, 1, ID, None);
    let (vroot, _) = core.lookup(VOLUMES_INO, ID.as_bytes()).unwrap();
    let (dir, _) = core.lookup(vroot.ino, b"dir").unwrap();
    let (file, _) = core.lookup(dir.ino, b"file").unwrap();
    let (fh, opts) = core
        .open(file.ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
        .unwrap();
    assert!(opts.keep_cache);
    let mut data = Vec::new();
    core.read(fh, 10, 5, &mut data).unwrap();
    assert_eq!(data, [10, 11, 12, 13, 14]);
    let m = core.find(ID).unwrap();
    assert_eq!(m.open_files.load(Ordering::Acquire), 1);
    core.release(fh).unwrap();
    assert_eq!(m.open_files.load(Ordering::Acquire), 0);
    assert_eq!(
        core.open(file.ino, OpenFlags(libc::O_RDWR), &Ctx::ROOT)
            .err()
            .unwrap()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        core.dir_op(dir.ino, |v, p| v.mkdir(p, b"x", 0o755, 0, &Ctx::ROOT))
            .err()
            .unwrap()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        core.dir_op(VOLUMES_INO, |v, p| v.mkdir(p, b"x", 0o755, 0, &Ctx::ROOT))
            .err()
            .unwrap()
            .errno(),
        libc::EROFS
    );
}

#[test]
fn volume_root_xattrs() {
    let core = Core::new();
    let _d = mount_one(&core, 3, ID, Some("n"));
    let root = global_ino(3, VOLUME_ROOT);
    assert_eq!(core.getxattr(root, XATTR_ID).unwrap(), ID.as_bytes());
    assert_eq!(core.getxattr(root, XATTR_KIND).unwrap(), b"archive");
    assert_eq!(core.getxattr(root, XATTR_STATE).unwrap(), b"attached");
    assert_eq!(core.listxattr(root).unwrap().len(), 3);
    assert_eq!(
        core.getxattr(root, b"user.other").err().unwrap().errno(),
        libc::ENODATA
    );
    assert_eq!(
        core.setxattr(root, XATTR_ID, b"x", 0, &Ctx::ROOT)
            .err()
            .unwrap()
            .errno(),
        libc::EPERM
    );
}

#[test]
fn unregister_hides_but_open_handles_survive() {
    let core = Core::new();
    let _d = mount_one(&core, 4, ID, Some("gone"));
    let (vroot, _) = core.lookup(VOLUMES_INO, ID.as_bytes()).unwrap();
    let (dir, _) = core.lookup(vroot.ino, b"dir").unwrap();
    let (file, _) = core.lookup(dir.ino, b"file").unwrap();
    let (fh, _) = core
        .open(file.ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
        .unwrap();
    let m = core.unregister(4).unwrap();
    assert!(core.lookup(VOLUMES_INO, ID.as_bytes()).is_err());
    assert!(core.lookup(VOLUMES_INO, b"gone").is_err());
    assert!(core.getattr(file.ino).is_err());
    let mut data = Vec::new();
    core.read(fh, 0, 2, &mut data).unwrap();
    assert_eq!(data, [0, 1]);
    core.release(fh).unwrap();
    assert_eq!(m.open_files.load(Ordering::Acquire), 0);
}

#[test]
fn duplicate_registration_is_refused() {
    let core = Core::new();
    let _d = mount_one(&core, 5, ID, Some("a"));
    let medium: SharedMedium = Arc::new(Vec::new());
    let fs = ArchiveVolume::new(
        "x".into(),
        IndexBuilder::new("tar", meta()).finish(),
        medium,
        std::env::temp_dir(),
    );
    let e = core
        .register(Arc::new(Mounted {
            slot: 6,
            info: RwLock::new(VolumeInfo {
                id: "vol-1111111111111111".into(),
                name: Some("a".into()),
                kind: crate::lifecycle::Kind::Archive,
                state: crate::lifecycle::Attachment::Attached,
                format: None,
                medium: None,
                size: 0,
                files: 0,
                slot: 6,
            }),
            fs: Arc::new(fs),
            media: Vec::new(),
            ttl: Duration::from_secs(1),
            open_files: AtomicU64::new(0),
        }))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Exists);
}

/// Only archive directories may have their listings cached by the kernel:
/// the synthetic tree changes on attach and detach.
#[test]
fn only_fixed_listings_are_cacheable() {
    let core = Core::new();
    let _d = mount_one(&core, 7, ID, Some("photos"));
    assert!(!core.opendir(ROOT_INO).unwrap());
    assert!(!core.opendir(VOLUMES_INO).unwrap());
    assert!(!core.opendir(MEDIA_INO).unwrap());
    let (vroot, _) = core.lookup(VOLUMES_INO, ID.as_bytes()).unwrap();
    assert!(core.opendir(vroot.ino).unwrap());
    let (dir, _) = core.lookup(vroot.ino, b"dir").unwrap();
    assert!(core.opendir(dir.ino).unwrap());
    let (file, _) = core.lookup(dir.ino, b"file").unwrap();
    assert!(core.opendir(file.ino).is_err());
}

#[test]
fn only_writers_closes_commit() {
    let w = Writers::default();
    assert!(!w.commits_on_close_by(7), "nobody wrote: no close commits");
    w.wrote(Some(7));
    w.wrote(Some(7));
    assert!(w.commits_on_close_by(7));
    assert!(
        !w.commits_on_close_by(8),
        "a process that only inherited it"
    );
    for o in 100..100 + MAX_WRITERS as u64 {
        w.wrote(Some(o));
    }
    assert!(w.commits_on_close_by(8), "too many writers to tell apart");
    let w = Writers::default();
    w.wrote(Some(7));
    w.wrote(None);
    assert!(w.commits_on_close_by(8), "a write without an owner");
}

#[test]
fn resolve_checks_search_and_follows_inner_links() {
    use super::perm::{self, Caller};
    use super::resolve::resolve;
    let core = Core::new();
    let _d = mount_one(&core, 7, ID, Some("photos"));
    let mnt = std::path::Path::new("/mnt/fsd");
    let root = Caller::root();
    let file = resolve(
        &core,
        mnt,
        "/mnt/fsd/volumes/photos/dir/file",
        &root,
        perm::R,
    )
    .unwrap();
    assert_eq!(file >> 40, 7);
    assert_eq!(core.getattr(file).unwrap().0.size, 100);
    // `volumes/photos` and the volume's own `link` are both relative links.
    let via = resolve(&core, mnt, "/mnt/fsd/volumes/photos/link", &root, perm::R).unwrap();
    assert_eq!(via, file);
    let e = resolve(&core, mnt, "/mnt/fsd/volumes/photos/dir", &root, perm::R).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    let e = resolve(&core, mnt, "/mnt/fsd/volumes/photos/nope", &root, perm::R).unwrap_err();
    assert!(
        e.to_string().contains("/mnt/fsd/volumes/photos/nope"),
        "{e}"
    );
    // The archive's directories carry mode 0644: no search for a non-root
    // owner, even though the file itself would be readable.
    let owner = Caller {
        uid: 1000,
        gid: 1000,
        groups: Vec::new(),
        pid: 1,
    };
    let e = resolve(
        &core,
        mnt,
        "/mnt/fsd/volumes/photos/dir/file",
        &owner,
        perm::R,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}

/// Every entry of `Mounted.media` is a file of its own under `/media`.
#[test]
fn media_shows_every_entry_of_a_volume() {
    let core = Core::new();
    let part: SharedMedium = Arc::new(vec![7u8; 1000]);
    let _d = mount_with_parts(
        &core,
        7,
        ID,
        Some("disk"),
        vec![MediaEntry {
            suffix: "p1".into(),
            medium: part,
        }],
    );
    let _e = mount_one(&core, 8, "vol-1111111111111111", None);
    let listed: Vec<String> = names(&core, MEDIA_INO, 0)
        .into_iter()
        .map(|e| e.0)
        .collect();
    let p1 = format!("{ID}-p1");
    assert_eq!(listed, [".", "..", ID, p1.as_str(), "vol-1111111111111111"]);
    let (whole, ttl) = core.lookup(MEDIA_INO, ID.as_bytes()).unwrap();
    assert_eq!(whole.ino, (2 << 32) | 7, "the whole medium keeps its inode");
    assert_eq!((whole.size, ttl), (4096, Duration::from_secs(60)));
    let (a, _) = core.lookup(MEDIA_INO, p1.as_bytes()).unwrap();
    assert_ne!(a.ino, whole.ino);
    assert_eq!((a.size, a.perm, a.kind), (1000, 0o444, FileKind::File));
    assert_eq!(core.getattr(a.ino).unwrap().0, a);
    assert_eq!(core.volume_of(a.ino).unwrap().slot, 7);
    assert_eq!(core.ttl_of(a.ino), Duration::from_secs(60));
    for missing in [
        format!("{ID}-p2"),
        format!("{ID}-"),
        "vol-1111111111111111-p1".into(),
    ] {
        let e = core.lookup(MEDIA_INO, missing.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{missing}");
    }
    assert_eq!(
        core.lookup(a.ino, b"x").unwrap_err().kind(),
        ErrorKind::NotDir
    );

    let (fh, _) = core
        .open(a.ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
        .unwrap();
    let mut data = Vec::new();
    core.read(fh, 995, 100, &mut data).unwrap();
    assert_eq!(data, [7; 5]);
    assert_eq!(core.find(ID).unwrap().open_files.load(Ordering::Acquire), 1);
    assert_eq!(
        core.fallocate(fh, 0, 1, 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    core.release(fh).unwrap();
    assert_eq!(
        core.open(a.ino, OpenFlags(libc::O_RDWR), &Ctx::ROOT)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(core.lseek(a.ino, 10, libc::SEEK_HOLE).unwrap(), 1000);
    assert_eq!(
        core.lseek(a.ino, 1000, libc::SEEK_DATA).unwrap_err().kind(),
        ErrorKind::NoSuchOffset
    );
    assert_eq!(
        core.rename(MEDIA_INO, p1.as_bytes(), MEDIA_INO, b"x", 0, &Ctx::ROOT)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );

    // What detaching it must make the kernel forget.
    let m = core.find(ID).unwrap();
    let forget: Vec<(u64, String)> = core
        .dentries_of(&m)
        .into_iter()
        .map(|(d, n)| (d, String::from_utf8(n).unwrap()))
        .collect();
    assert_eq!(
        forget,
        [
            (VOLUMES_INO, ID.to_string()),
            (VOLUMES_INO, "disk".to_string()),
            (MEDIA_INO, ID.to_string()),
            (MEDIA_INO, p1.clone()),
        ]
    );

    // Gone with its volume, like the whole medium.
    core.unregister(7).unwrap();
    assert!(core.getattr(a.ino).is_err());
    assert!(core.lookup(MEDIA_INO, p1.as_bytes()).is_err());
}
