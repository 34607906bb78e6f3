//! Archive volumes against a real mount: every fixture is built by GNU tar,
//! Info-ZIP zip or Python's zipfile, extracted by `tar -x` / `unzip` as the
//! reference, and compared file by file with what the mount shows.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Sets a path's atime and mtime without following symlinks.
fn set_mtime(p: &Path, secs: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let ts = [t, t];
    // SAFETY: valid C string and array of two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn write(p: &Path, data: &[u8], mode: u32, mtime: i64) {
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(p, mtime);
}

/// A tree with every kind of member the formats must carry.
struct TreeOpts {
    long_names: bool,
    non_utf8: bool,
    hardlinks: bool,
    sparse: bool,
}

fn make_tree(root: &Path, o: &TreeOpts) {
    let d = |p: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    d("a/b/c");
    d("empty");
    write(&root.join("zero"), b"", 0o644, 1_000_000_000);
    write(&root.join("one"), b"x", 0o600, 1_100_000_000);
    write(
        &root.join("a/exec.sh"),
        b"#!/bin/sh\necho hi\n",
        0o755,
        1_200_000_000,
    );
    write(
        &root.join("a/b/4k"),
        &pattern(1, 4096),
        0o640,
        1_300_000_000,
    );
    write(
        &root.join("a/b/4k+1"),
        &pattern(2, 4097),
        0o644,
        1_300_000_001,
    );
    write(
        &root.join("a/b/c/big"),
        &pattern(3, 3 * 1024 * 1024 + 17),
        0o644,
        1_400_000_000,
    );
    write(&root.join("a/setuid"), b"s", 0o4755, 1_400_000_001);
    write(
        &root.join("Ünïcødé ✓.txt"),
        "utf-8 name".as_bytes(),
        0o644,
        1_500_000_000,
    );
    write(&root.join("with space"), b"space", 0o644, 1_500_000_001);
    std::os::unix::fs::symlink("a/b/4k", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../exec.sh", root.join("a/b/up-link")).unwrap();
    if o.long_names {
        let long = "L".repeat(120);
        let deep = root.join(format!("{long}/{long}"));
        std::fs::create_dir_all(&deep).unwrap();
        write(
            &deep.join(format!("{long}.txt")),
            b"deep",
            0o644,
            1_600_000_000,
        );
        let target = format!("{long}/{long}/{long}.txt");
        std::os::unix::fs::symlink(&target, root.join("long-link")).unwrap();
        set_mtime(&deep, 1_600_000_100);
        set_mtime(&root.join(&long), 1_600_000_200);
    }
    if o.non_utf8 {
        let name = OsStr::from_bytes(b"caf\xe9-latin1");
        write(&root.join(name), b"latin-1 name", 0o644, 1_650_000_000);
    }
    if o.hardlinks {
        write(
            &root.join("a/hard1"),
            &pattern(4, 5000),
            0o644,
            1_700_000_000,
        );
        std::fs::hard_link(root.join("a/hard1"), root.join("hard2")).unwrap();
        std::fs::hard_link(root.join("a/hard1"), root.join("a/b/hard3")).unwrap();
    }
    if o.sparse {
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.set_len(5 * 1024 * 1024 + 123).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&pattern(5, 70_000), 2 * 1024 * 1024)
            .unwrap();
        f.write_all_at(b"end", 5 * 1024 * 1024 + 120).unwrap();
        drop(f);
        set_mtime(&root.join("sparse"), 1_750_000_000);
    }
    for (p, t) in [
        ("a/b/c", 1_800_000_000),
        ("a/b", 1_800_000_001),
        ("a", 1_800_000_002),
        ("empty", 1_800_000_003),
    ] {
        set_mtime(&root.join(p), t);
    }
}

impl TreeOpts {
    /// Files, directories and symlinks only.
    fn plain() -> Self {
        TreeOpts {
            long_names: false,
            non_utf8: false,
            hardlinks: false,
            sparse: false,
        }
    }
}

fn all_opts() -> TreeOpts {
    TreeOpts {
        long_names: true,
        non_utf8: true,
        hardlinks: true,
        sparse: true,
    }
}

/// Extracts with GNU tar as the reference (root keeps owners and modes).
fn tar_extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .args(["-xpf"])
        .arg(archive)
        .args(["--numeric-owner", "-C"])
        .arg(into));
}

fn unzip_extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("unzip")
        .arg("-qXK")
        .arg(archive)
        .arg("-d")
        .arg(into));
}

/// Compares the volume with the reference in every way the issue lists.
fn check_volume(d: &Daemon, id: &str, reference: &Path, check_owner: bool, cmp: Cmp) {
    let vol = d.vol(id);
    let got = listing(&vol);
    let want = listing(reference);
    assert_same_tree(&got, &want, id, cmp);
    if check_owner {
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.uid, g.gid),
                (w.uid, w.gid),
                "{}: owner",
                String::from_utf8_lossy(&g.path)
            );
        }
    }
    // rsync -a from the mount into a fresh directory is identical to the
    // reference, as diff -r sees it.
    let copy = d.dir.path().join(format!("rsync-{id}"));
    run(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", vol.display()))
        .arg(&copy));
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(reference)
        .arg(&copy));
    let no_links = Cmp {
        nlink: false,
        ..cmp
    };
    assert_same_tree(&listing(&copy), &want, "rsync copy", no_links);
    // find sees the same number of entries.
    let count = |p: &Path| sh(p, "find . | wc -l").trim().to_string();
    assert_eq!(count(&vol), count(reference));
    // sha256sum over the mount agrees with sha256sum over the reference.
    let sums = |p: &Path| {
        sh(
            p,
            "find . -type f -print0 | sort -z | xargs -0 -r sha256sum",
        )
    };
    assert_eq!(sums(&vol), sums(reference));
}

/// 16 threads reading random ranges of every regular file.
fn concurrent_reads(vol: &Path, reference: &Path) {
    let files: Vec<(PathBuf, Vec<u8>)> = listing(reference)
        .into_iter()
        .filter(|e| e.kind == 'f' && e.size > 0)
        .map(|e| {
            let rel = PathBuf::from(OsStr::from_bytes(&e.path));
            (rel.clone(), std::fs::read(reference.join(&rel)).unwrap())
        })
        .collect();
    let files = std::sync::Arc::new(files);
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let files = files.clone();
            let vol = vol.to_path_buf();
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9E37_79B9) | 1;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..300 {
                    let (rel, data) = &files[(next() % files.len() as u64) as usize];
                    let f = std::fs::File::open(vol.join(rel)).unwrap();
                    let off = next() % data.len() as u64;
                    let len = (next() % 300_000) as usize + 1;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let end = (off as usize + len).min(data.len());
                    assert_eq!(
                        n,
                        end - off as usize,
                        "{}: short read at {off}",
                        rel.display()
                    );
                    assert_eq!(
                        &buf[..n],
                        &data[off as usize..end],
                        "{}: bytes at {off}",
                        rel.display()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread failed");
    }
}

fn tar_fixture(d: &Daemon, format: &str, extra: &[&str], o: &TreeOpts) -> (PathBuf, PathBuf) {
    let src = d.dir.path().join(format!("src-{format}"));
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, o);
    let archive = d.dir.path().join(format!("{format}.tar"));
    run(Command::new("tar")
        .arg(format!("--format={format}"))
        .args(extra)
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let reference = d.dir.path().join(format!("ref-{format}"));
    tar_extract(&archive, &reference);
    (archive, reference)
}

#[test]
fn gnu_tar_matches_tar_x() {
    let d = Daemon::start();
    let (archive, reference) = tar_fixture(&d, "gnu", &["--sparse"], &all_opts());
    let id = d.attach(&archive);
    check_volume(&d, &id, &reference, true, TAR_CMP);
    concurrent_reads(&d.vol(&id), &reference);
    // The whole medium is exposed read-only.
    run(Command::new("cmp")
        .arg(d.mnt.join("media").join(&id))
        .arg(&archive));
}

/// fsd and tokenctl are linked statically (.cargo/config.toml): neither
/// has an ELF interpreter (PT_INTERP), so no dynamic loader runs before
/// `main` (0.5 ms of every start when it did).
#[test]
fn binaries_are_static() {
    for bin in [FSD, TOKENCTL] {
        let elf = std::fs::read(bin).unwrap();
        assert_eq!(&elf[..5], b"\x7fELF\x02", "{bin}: not a 64-bit ELF file");
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        let types: Vec<u32> = (0..phnum)
            .map(|i| {
                let o = phoff + i * phentsize;
                u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
            })
            .collect();
        const PT_LOAD: u32 = 1;
        const PT_INTERP: u32 = 3;
        assert!(types.contains(&PT_LOAD), "{bin}: no program headers read");
        assert!(
            !types.contains(&PT_INTERP),
            "{bin} is dynamically linked (it names an ELF interpreter)"
        );
    }
}

/// A walk that never stats (find, os.walk) gets names without attributes
/// (src/fuse/advice.rs). Its listings must still carry the real inode
/// numbers and types, and whatever stats those names next, in another
/// process or after the walk, must see the true attributes.
#[test]
fn name_only_walks_keep_inode_numbers_and_types() {
    let d = Daemon::start();
    let (archive, reference) = tar_fixture(&d, "posix", &[], &TreeOpts::plain());
    let id = d.attach(&archive);
    let vol = d.vol(&id);
    // A fresh process walks with scandir only: name, d_type, d_ino.
    let walk = r#"
import os, sys
root = sys.argv[1]
def walk(d):
    for e in os.scandir(d):
        kind = "d" if e.is_dir(follow_symlinks=False) else "l" if e.is_symlink() else "f"
        print(e.inode(), kind, os.path.relpath(e.path, root))
        if kind == "d":
            walk(e.path)
walk(root)
"#;
    let listed = run(Command::new("python3").args(["-c", walk]).arg(&vol));
    let mut n = 0;
    // Another fresh process stats every name the walk saw.
    let stat = r#"
import os, stat, sys
root = sys.argv[1]
for line in sys.stdin:
    ino, kind, rel = line.rstrip("\n").split(" ", 2)
    st = os.lstat(os.path.join(root, rel))
    k = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
    print(ino, kind, st.st_ino, k, st.st_size, rel)
"#;
    let mut child = Command::new("python3")
        .args(["-c", stat])
        .arg(&vol)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(listed.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.splitn(6, ' ').collect();
        let (d_ino, d_kind, st_ino, st_kind, size, rel) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        assert_ne!(d_ino, "0", "{rel}: listed with inode number 0");
        assert_eq!(d_ino, st_ino, "{rel}: listed and stat inode numbers differ");
        assert_eq!(d_kind, st_kind, "{rel}: listed type differs from stat");
        let want = std::fs::symlink_metadata(reference.join(rel)).unwrap();
        if st_kind == "f" {
            assert_eq!(size, want.len().to_string(), "{rel}: size after a walk");
        }
        n += 1;
    }
    assert_eq!(n, listing(&reference).len(), "the walk saw every entry");
    // find first (names only), then everything that stats, reads and copies.
    assert_eq!(
        sh(&vol, "find . | wc -l").trim(),
        sh(&reference, "find . | wc -l").trim()
    );
    check_volume(&d, &id, &reference, true, TAR_CMP);
}

/// Also the one fixture served without polling between requests
/// (`mount.poll_us = 0`): every other test runs with the default, so both
/// ways of waiting for the next request are walked, stat'ed and read.
#[test]
fn pax_tar_matches_tar_x() {
    let d = Daemon::start_with_config(Some("[mount]\npoll_us = 0\n"));
    let (archive, reference) = tar_fixture(&d, "pax", &["--sparse"], &all_opts());
    let id = d.attach(&archive);
    check_volume(&d, &id, &reference, true, TAR_CMP);
    concurrent_reads(&d.vol(&id), &reference);
}

#[test]
fn ustar_and_v7_match_tar_x() {
    let d = Daemon::start();
    let small = TreeOpts {
        long_names: false,
        non_utf8: true,
        hardlinks: true,
        sparse: false,
    };
    for format in ["ustar", "v7"] {
        let (archive, reference) = tar_fixture(&d, format, &[], &small);
        let id = d.attach(&archive);
        check_volume(&d, &id, &reference, format == "ustar", TAR_CMP);
    }
}

#[test]
fn pax_sparse_versions_match_tar_x() {
    let d = Daemon::start();
    let o = TreeOpts {
        long_names: false,
        non_utf8: false,
        hardlinks: false,
        sparse: true,
    };
    for v in ["0.0", "0.1", "1.0"] {
        let src = d.dir.path().join(format!("src-{v}"));
        std::fs::create_dir(&src).unwrap();
        make_tree(&src, &o);
        let archive = d.dir.path().join(format!("sparse-{v}.tar"));
        run(Command::new("tar")
            .args(["--format=pax", "--sparse"])
            .arg(format!("--sparse-version={v}"))
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let reference = d.dir.path().join(format!("ref-{v}"));
        tar_extract(&archive, &reference);
        let id = d.attach(&archive);
        check_volume(&d, &id, &reference, true, TAR_CMP);
    }
}

#[test]
fn info_zip_matches_unzip() {
    let d = Daemon::start();
    let src = d.dir.path().join("src-zip");
    std::fs::create_dir(&src).unwrap();
    make_tree(
        &src,
        &TreeOpts {
            long_names: true,
            non_utf8: false,
            hardlinks: false,
            sparse: false,
        },
    );
    let archive = d.dir.path().join("info.zip");
    sh(&src, &format!("zip -qry {} .", archive.display()));
    let reference = d.dir.path().join("ref-zip");
    unzip_extract(&archive, &reference);
    let id = d.attach(&archive);
    check_volume(&d, &id, &reference, false, UNZIP_CMP);
    concurrent_reads(&d.vol(&id), &reference);
    // Stored (zip -0) and forced zip64 (zip -fz) variants.
    for (name, flags) in [("stored.zip", "-0"), ("zip64.zip", "-fz")] {
        let a = d.dir.path().join(name);
        sh(&src, &format!("zip -qry {flags} {} .", a.display()));
        let r = d.dir.path().join(format!("ref-{name}"));
        unzip_extract(&a, &r);
        let id = d.attach(&a);
        check_volume(&d, &id, &r, false, UNZIP_CMP);
    }
}

#[test]
fn python_zipfile_matches_unzip() {
    let d = Daemon::start();
    let archive = d.dir.path().join("py.zip");
    let script = r##"
import sys, zipfile, time
big = bytes((i * 7 + 3) % 251 for i in range(3 * 1024 * 1024 + 5))
with zipfile.ZipFile(sys.argv[1], "w") as z:
    def add(name, data, mode, method=zipfile.ZIP_DEFLATED, date=(2020, 5, 17, 10, 30, 20), force64=False):
        zi = zipfile.ZipInfo(name, date_time=date)
        zi.external_attr = mode << 16
        zi.create_system = 3
        zi.compress_type = method
        if force64:
            with z.open(zi, "w", force_zip64=True) as f:
                f.write(data)
        else:
            z.writestr(zi, data)
    add("dir/", b"", 0o40755)
    add("dir/deflated.txt", b"hello deflate\n" * 1000, 0o100644)
    add("dir/stored.bin", bytes(range(256)) * 40, 0o100600, zipfile.ZIP_STORED)
    add("dir/big.bin", big, 0o100644)
    add("dir/big-stored.bin", big, 0o100640, zipfile.ZIP_STORED)
    add("exec", b"#!/bin/sh\n", 0o100755)
    add("empty", b"", 0o100644)
    add("link", b"dir/deflated.txt", 0o120777, zipfile.ZIP_STORED)
    add("implicit/child.txt", b"parent dir has no entry", 0o100644)
    add("z64.bin", b"forced zip64" * 100, 0o100644, force64=True)
"##;
    run(Command::new("python3").arg("-c").arg(script).arg(&archive));
    let reference = d.dir.path().join("ref");
    unzip_extract(&archive, &reference);
    let id = d.attach(&archive);
    // unzip gives implicit directories the current time; skip dir mtimes.
    let got = listing(&d.vol(&id));
    let want = listing(&reference);
    assert_same_tree(
        &got,
        &want,
        "python zip",
        Cmp {
            dir_mtime: false,
            link_mtime: false,
            nlink: true,
        },
    );
    concurrent_reads(&d.vol(&id), &reference);
}

#[test]
fn real_world_crate_and_wheel() {
    let d = Daemon::start();
    // A .crate from cargo's cache (written by crates.io, not by us),
    // decompressed to a plain tar.
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let crate_file = sh(
        &home,
        "find registry/cache -name 'fuser-*.crate' -o -name 'tar-*.crate' | sort | head -n 1",
    );
    let crate_file = home.join(crate_file.trim());
    assert!(crate_file.is_file(), "no .crate in {}", home.display());
    let tar = d.dir.path().join("real.tar");
    sh(
        d.dir.path(),
        &format!("gzip -dc {} > {}", crate_file.display(), tar.display()),
    );
    let reference = d.dir.path().join("ref-crate");
    tar_extract(&tar, &reference);
    let id = d.attach(&tar);
    // `cargo package` writes no directory entries either, so tar -x stamps
    // the crate's directories with the time of extraction and fsd with the
    // time of attach: they differ whenever a second boundary falls between.
    check_volume(
        &d,
        &id,
        &reference,
        true,
        Cmp {
            dir_mtime: false,
            ..TAR_CMP
        },
    );

    // A wheel bundled with CPython's ensurepip, as a zip.
    let wheel = run(Command::new("python3").arg("-c").arg(
        "import ensurepip, glob, os; \
         print(sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled', '*.whl')))[0])",
    ));
    let wheel = PathBuf::from(wheel.trim());
    let reference = d.dir.path().join("ref-wheel");
    unzip_extract(&wheel, &reference);
    let id = d.attach(&wheel);
    let got = listing(&d.vol(&id));
    let want = listing(&reference);
    // Wheels carry no directory entries, so unzip stamps directories with
    // the current time; compare files fully and directories by presence.
    assert_same_tree(
        &got,
        &want,
        "wheel",
        Cmp {
            dir_mtime: false,
            link_mtime: false,
            nlink: true,
        },
    );
}

#[test]
fn member_over_8_gib() {
    let d = Daemon::start();
    let archive = d.dir.path().join("huge.tar");
    // GNU tar stores a 9 GiB size in base-256. The archive file is sparse on
    // disk, so it costs little space; the data is zeros except a marker.
    let script = r##"
import sys, tarfile
size = 9 * 1024**3 + 5
ti = tarfile.TarInfo("huge.bin"); ti.size = size; ti.mode = 0o644; ti.mtime = 1700000000
hdr = ti.tobuf(format=tarfile.GNU_FORMAT)
with open(sys.argv[1], "wb") as f:
    f.write(hdr)
    f.seek(len(hdr) + size - 5); f.write(b"MARK!")
    pad = (512 - size % 512) % 512
    f.write(b"\0" * pad + b"\0" * 1024)
"##;
    run(Command::new("python3").arg("-c").arg(script).arg(&archive));
    let listed = run(Command::new("tar").arg("-tvf").arg(&archive));
    assert!(listed.contains("9663676421"), "tar -tv: {listed}");
    let id = d.attach(&archive);
    let f = d.vol(&id).join("huge.bin");
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!(m.len(), 9 * 1024u64.pow(3) + 5);
    let file = std::fs::File::open(&f).unwrap();
    let mut buf = [0u8; 10];
    file.read_exact_at(&mut buf, m.len() - 10).unwrap();
    assert_eq!(&buf, b"\0\0\0\0\0MARK!");
    file.read_exact_at(&mut buf, 8 * 1024u64.pow(3) + 1)
        .unwrap();
    assert_eq!(buf, [0u8; 10]);
}

#[test]
fn hostile_names_stay_inside_the_volume() {
    let d = Daemon::start();
    let archive = d.dir.path().join("evil.tar");
    let script = r##"
import sys, tarfile, io
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    def add(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1600000000
        t.addfile(ti, io.BytesIO(data))
    add("../../escape", b"dotdot")
    add("/abs/path", b"absolute")
    add("a/../../b", b"middle")
    add("dup", b"first")
    add("./dup", b"second")
"##;
    run(Command::new("python3").arg("-c").arg(script).arg(&archive));
    let id = d.attach(&archive);
    let v = d.vol(&id);
    assert_eq!(std::fs::read(v.join("escape")).unwrap(), b"dotdot");
    assert_eq!(std::fs::read(v.join("abs/path")).unwrap(), b"absolute");
    assert_eq!(std::fs::read(v.join("a/b")).unwrap(), b"middle");
    assert_eq!(
        std::fs::read(v.join("dup")).unwrap(),
        b"second",
        "the later member wins"
    );
    assert!(!d.dir.path().join("escape").exists());
    let st = d.json(&["status", &id]);
    assert_eq!(st["index"]["sanitized"], 3, "{st}");
    assert_eq!(st["index"]["replaced"], 1, "{st}");
}

#[test]
fn everything_is_read_only() {
    let d = Daemon::start();
    let (archive, _) = tar_fixture(&d, "gnu", &[], &TreeOpts::plain());
    let id = d.attach(&archive);
    let v = d.vol(&id);
    let script = r##"
import os, sys, errno
v = sys.argv[1]
def erofs(f, *a):
    try:
        f(*a)
    except OSError as e:
        assert e.errno == errno.EROFS, (f.__name__, a, e)
        return
    raise AssertionError(f"{f.__name__}{a} succeeded")
erofs(os.open, v + "/one", os.O_WRONLY)
erofs(os.open, v + "/one", os.O_RDONLY | os.O_TRUNC)
erofs(os.open, v + "/new", os.O_CREAT | os.O_WRONLY, 0o644)
erofs(os.mkdir, v + "/newdir")
erofs(os.rmdir, v + "/empty")
erofs(os.unlink, v + "/one")
erofs(os.rename, v + "/one", v + "/two")
erofs(os.chmod, v + "/one", 0o600)
erofs(os.chown, v + "/one", 1, 1)
erofs(os.utime, v + "/one", (1, 1))
erofs(os.symlink, "x", v + "/sym")
erofs(os.link, v + "/one", v + "/hl")
erofs(os.truncate, v + "/one", 0)
erofs(os.setxattr, v + "/one", "user.x", b"1")
erofs(os.mknod, v + "/fifo", 0o600 | 0o010000)
print("ok")
"##;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(&v));
    assert_eq!(out.trim(), "ok");
}

#[test]
fn layout_names_xattrs_and_statfs() {
    let d = Daemon::start();
    let (archive, _) = tar_fixture(&d, "gnu", &[], &TreeOpts::plain());
    let id = d
        .ok(&["attach", archive.to_str().unwrap(), "--name", "photos"])
        .trim()
        .to_string();
    let link = d.mnt.join("volumes/photos");
    assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from(&id));
    assert_eq!(std::fs::read(link.join("one")).unwrap(), b"x");
    let xattr = |name: &str| {
        let v = d.vol(&id);
        run(Command::new("getfattr")
            .args(["--only-values", "-n", name])
            .arg(&v))
    };
    assert_eq!(xattr("user.fsd.id"), id);
    assert_eq!(xattr("user.fsd.kind"), "archive");
    assert_eq!(xattr("user.fsd.state"), "attached");
    let listed = run(Command::new("getfattr").arg("-d").arg(d.vol(&id)));
    assert!(listed.contains("user.fsd.id="), "{listed}");
    // statfs of the volume describes the medium.
    let st = nix::sys::statvfs::statvfs(&d.vol(&id)).unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    assert_eq!(st.blocks() * st.fragment_size(), size.div_ceil(4096) * 4096);
    assert!(st.files() > 5);
    assert_eq!(st.name_max(), 255);
    // volumes lists it with kind, state, size and files.
    let vols = d.json(&["volumes"]);
    let v = &vols[0];
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["name"], "photos");
    assert_eq!(v["kind"], "archive");
    assert_eq!(v["state"], "attached");
    assert_eq!(v["size"], size);
    assert!(v["files"].as_u64().unwrap() >= 8, "{v}");
    // Human output has the same columns.
    let table = d.ok(&["volumes"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id) && table.contains("photos") && table.contains("archive"));
    // A name or ID works wherever a VOLUME is expected.
    assert_eq!(d.json(&["status", "photos"])["id"], id.as_str());
    assert_eq!(d.json(&["status", &id])["name"], "photos");
}

#[test]
fn same_medium_same_id_and_index_survives_restart() {
    let mut d = Daemon::start();
    let (archive, reference) = tar_fixture(&d, "gnu", &[], &all_opts());
    let first = d.json(&["attach", archive.to_str().unwrap()]);
    assert_eq!(first["indexed"], true);
    let id = first["volume"]["id"].as_str().unwrap().to_string();
    let again = d.json(&["attach", archive.to_str().unwrap()]);
    assert_eq!(again["volume"]["id"], id.as_str());
    assert_eq!(again["already_attached"], true);
    d.restart();
    // After a restart the volume is back, and attaching it again finds the
    // stored index valid: nothing is indexed a second time.
    check_volume(&d, &id, &reference, true, TAR_CMP);
    let after = d.json(&["attach", archive.to_str().unwrap()]);
    assert_eq!(after["volume"]["id"], id.as_str());
    assert_eq!(after["indexed"], false, "{after}");
    let log = d.log_text();
    assert_eq!(log.matches("indexed Tar archive").count(), 1, "{log}");
    // Detach, then attach again: same ID, index reused.
    d.ok(&["detach", &id]);
    assert!(!d.vol(&id).exists());
    assert_eq!(d.json(&["volumes"])[0]["state"], "detached");
    let back = d.json(&["attach", archive.to_str().unwrap()]);
    assert_eq!(back["volume"]["id"], id.as_str());
    assert_eq!(back["indexed"], false);
    // A changed medium is indexed again under the same ID.
    run(Command::new("tar")
        .arg("-rf")
        .arg(&archive)
        .arg("-C")
        .arg(d.dir.path())
        .arg("fsd.log"));
    let changed = d.json(&["attach", archive.to_str().unwrap()]);
    assert_eq!(changed["volume"]["id"], id.as_str());
    assert_eq!(changed["indexed"], true);
    assert!(d.vol(&id).join("fsd.log").exists());
}

#[test]
fn detach_refuses_with_open_files_unless_forced() {
    let d = Daemon::start();
    let (archive, _) = tar_fixture(&d, "gnu", &[], &TreeOpts::plain());
    let id = d.attach(&archive);
    let f = std::fs::File::open(d.vol(&id).join("a/b/4k")).unwrap();
    let o = d.tokenctl(&["detach", &id]);
    assert_eq!(o.status.code(), Some(5), "busy exit code");
    assert!(String::from_utf8_lossy(&o.stderr).contains("open"), "{o:?}");
    assert!(d.vol(&id).exists());
    d.ok(&["detach", &id, "--force"]);
    assert!(!d.vol(&id).exists());
    // The file opened before the forced detach still reads.
    let mut buf = [0u8; 16];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..], &pattern(1, 16)[..]);
}

#[test]
fn bad_input_fails_cleanly() {
    let d = Daemon::start();
    let (archive, _) = tar_fixture(&d, "gnu", &[], &all_opts());
    let data = std::fs::read(&archive).unwrap();
    // Truncated in the middle of a member's data.
    let cut = d.dir.path().join("truncated.tar");
    std::fs::write(&cut, &data[..data.len() / 2 + 700]).unwrap();
    let o = d.tokenctl(&["attach", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(8), "corrupt exit code: {o:?}");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("offset"), "error names an offset: {msg}");
    assert!(msg.contains("truncated.tar"), "error names the file: {msg}");
    // A corrupt header checksum.
    let mut bad = data.clone();
    bad[148] ^= 0x11;
    let badp = d.dir.path().join("badsum.tar");
    std::fs::write(&badp, &bad).unwrap();
    let o = d.tokenctl(&["attach", badp.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    // A zip cut short.
    let src = d.dir.path().join("src-gnu");
    let zip = d.dir.path().join("z.zip");
    sh(&src, &format!("zip -qry {} .", zip.display()));
    let z = std::fs::read(&zip).unwrap();
    let zcut = d.dir.path().join("cut.zip");
    std::fs::write(&zcut, &z[..z.len() - 30]).unwrap();
    let o = d.tokenctl(&["attach", zcut.to_str().unwrap(), "--format", "zip"]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    // Garbage.
    let junk = d.dir.path().join("junk.bin");
    std::fs::write(&junk, pattern(9, 100_000)).unwrap();
    let o = d.tokenctl(&["attach", junk.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(8));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["error"]["code"], "corrupt");
    // Missing path, a directory.
    let o = d.tokenctl(&["attach", "/nonexistent/x.tar"]);
    assert_eq!(o.status.code(), Some(4));
    let o = d.tokenctl(&["attach", d.dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory"));
    // None of it left a volume behind.
    assert_eq!(d.json(&["volumes"]), serde_json::json!([]));
    assert_eq!(std::fs::read_dir(d.mnt.join("volumes")).unwrap().count(), 0);
    // The daemon is still healthy.
    let id = d.attach(&archive);
    assert!(d.vol(&id).join("a").is_dir());
}

#[test]
fn unreadable_medium_is_refused_for_other_users() {
    if !have("setpriv") {
        eprintln!("setpriv missing; skipping");
        return;
    }
    let d = Daemon::start();
    // Let another user reach the socket (the temp dir is private).
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (archive, _) = tar_fixture(&d, "gnu", &[], &TreeOpts::plain());
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            TOKENCTL,
            "--state",
        ])
        .arg(&d.state)
        .arg("attach")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{o:?}"
    );
    assert_eq!(d.json(&["volumes"]), serde_json::json!([]));
}

/// The mount's read-ahead is raised to `mount.read_ahead_kb` (1024 KiB by
/// default, the kernel's is 128), found through mountinfo.
#[test]
fn read_ahead_is_raised_on_the_mount() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let dev = std::fs::metadata(&d.mnt).unwrap().dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    // Set just after the mount appears: wait for it briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let kb = std::fs::read_to_string(&path).unwrap();
        if kb.trim() == "1024" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: {kb}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn daemon_refusals() {
    let d = Daemon::start();
    // A second daemon on the same state directory.
    let other = d.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&other)
        .arg("--state")
        .arg(&d.state)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{o:?}"
    );
    // A busy mountpoint.
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&d.mnt)
        .arg("--state")
        .arg(d.dir.path().join("s2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    // A missing mountpoint.
    let o = Command::new(FSD)
        .args(["mount", "/nonexistent/mnt", "--state"])
        .arg(d.dir.path().join("s3"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such directory"));
    // An unusable state directory (a file).
    let f = d.dir.path().join("state-file");
    std::fs::write(&f, b"").unwrap();
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&other)
        .arg("--state")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // A state directory on a read-only filesystem.
    let ro = d.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let sh = |cmd: &str| {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!("mount -t tmpfs fsd-ro {}", ro.display()));
    std::fs::create_dir(ro.join("state")).unwrap();
    sh(&format!("mount -o remount,ro {}", ro.display()));
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&other)
        .arg("--state")
        .arg(ro.join("state"))
        .output()
        .unwrap();
    sh(&format!("umount {}", ro.display()));
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not writable") && err.contains("Read-only"),
        "{err}"
    );
    // A catalog's write-ahead log without the catalog: refused, kept.
    let orphan = d.dir.path().join("s5");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("catalog.db-wal"), vec![1u8; 4128]).unwrap();
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&other)
        .arg("--state")
        .arg(&orphan)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("catalog.db-wal holds 4128 bytes"), "{err}");
    assert_eq!(
        std::fs::metadata(orphan.join("catalog.db-wal"))
            .unwrap()
            .len(),
        4128
    );
    assert!(!orphan.join("catalog.db").exists());
    // A config file with a typo.
    let cfg = d.dir.path().join("bad.toml");
    std::fs::write(&cfg, "[mount]\nthreadz = 2\n").unwrap();
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&other)
        .arg("--config")
        .arg(&cfg)
        .arg("--state")
        .arg(d.dir.path().join("s4"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    // tokenctl without a daemon.
    let o = Command::new(TOKENCTL)
        .arg("--state")
        .arg(d.dir.path().join("nobody-here"))
        .arg("volumes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

/// SIGTERM while a program holds a file open: the mount is detached at
/// once (new paths no longer reach it), the open file is still served until
/// it is closed, and then the daemon exits cleanly. The FUSE session runs on
/// the daemon's main thread and the signal is handled on another, so this
/// walks the hand-over between them.
#[test]
fn sigterm_with_a_file_open_serves_it_until_closed_then_exits() {
    let mut d = Daemon::start();
    let src = d.dir.path().join("held");
    std::fs::create_dir(&src).unwrap();
    // 8 MiB of non-repeating bytes: the read after the signal lies beyond
    // the kernel's read-ahead of the first, so the daemon must serve it.
    let data = pattern(8, 8 << 20);
    std::fs::write(src.join("f.bin"), &data).unwrap();
    let archive = d.dir.path().join("held.tar");
    tar_of(&archive, &src, "f.bin");
    let id = d.attach(&archive);
    let file = std::fs::File::open(d.vol(&id).join("f.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data[..4096]);

    d.signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while is_mounted(&d.mnt) {
        assert!(
            std::time::Instant::now() < deadline,
            "still mounted 20 s after SIGTERM; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !d.mnt.join("volumes").exists(),
        "new paths still reach the mount"
    );
    let at = 6 << 20;
    file.read_exact_at(&mut buf, at as u64).unwrap();
    assert_eq!(
        buf,
        data[at..at + 4096],
        "the held file, read after SIGTERM"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(d.exited(), None, "fsd exited with a file still open");

    drop(file);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.exited() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fsd still running 20 s after the last file closed; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}; log:\n{}", d.log_text());
    assert!(
        d.log_text().contains("detaching it lazily"),
        "{}",
        d.log_text()
    );
}

#[test]
fn sigint_unmounts_and_daemon_mode_detaches() {
    let mut d = Daemon::start();
    d.stop();
    // --daemon returns once mounted, and SIGTERM to the daemon unmounts.
    let o = Command::new(FSD)
        .arg("mount")
        .arg(&d.mnt)
        .arg("--state")
        .arg(&d.state)
        .arg("--daemon")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(d.mnt.join("volumes").is_dir());
    let pid: i32 = std::fs::read_to_string(d.state.join("fsd.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.mnt.join("volumes").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "still mounted after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn mount_attach_has_volumes_in_place_and_refuses_bad_media() {
    let mut d = Daemon::start();
    let (tar, reference) = tar_fixture(&d, "gnu", &[], &TreeOpts::plain());
    d.stop();
    let lock_pid = |d: &Daemon| -> i32 {
        std::fs::read_to_string(d.state.join("fsd.lock"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mount = |d: &Daemon, extra: &[&std::path::Path]| {
        let mut c = Command::new(FSD);
        c.arg("mount")
            .arg(&d.mnt)
            .arg("--state")
            .arg(&d.state)
            .arg("--daemon");
        for p in extra {
            c.arg("--attach").arg(p);
        }
        c.output().unwrap()
    };
    let stop = |d: &Daemon, pid: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "fsd did not stop");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!d.mnt.join("volumes").exists());
    };

    // The volume is there the moment `fsd mount --daemon` returns: no
    // polling, no tokenctl. The parent names it on stderr.
    let o = mount(&d, &[&tar]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let name = tar.file_name().unwrap().to_str().unwrap();
    let link = d.mnt.join("volumes").join(name);
    let id = std::fs::read_link(&link)
        .unwrap_or_else(|e| panic!("{}: {e}; stderr: {err}", link.display()))
        .to_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("vol-"), "{id}");
    assert!(
        err.contains("indexed and attached") && err.contains(&id),
        "{err}"
    );
    check_volume(&d, &id, &reference, true, TAR_CMP);
    stop(&d, lock_pid(&d));

    // Again on the same state: the same volume, not indexed again.
    let o = mount(&d, &[&tar]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("already attached") && err.contains(&id),
        "{err}"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap().to_str(),
        Some(id.as_str())
    );
    stop(&d, lock_pid(&d));

    // A corrupt or missing archive stops fsd and removes its mount, with exit
    // code 7 and the medium named.
    let bad = d.dir.path().join("bad.tar");
    let mut bytes = std::fs::read(&tar).unwrap();
    bytes.truncate(700);
    std::fs::write(&bad, &bytes).unwrap();
    let o = mount(&d, &[&bad]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("--attach") && err.contains("bad.tar"), "{err}");
    assert!(!d.mnt.join("volumes").exists(), "nothing is mounted");
    let missing = d.dir.path().join("missing.tar");
    let o = mount(&d, &[&missing]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.tar"));
    assert!(!d.mnt.join("volumes").exists());

    // The state is intact: a plain restart still serves the first volume.
    d.spawn();
    check_volume(&d, &id, &reference, true, TAR_CMP);
    let vols = d.json(&["volumes"]);
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
}

/// fsd mounts while its catalog and `--attach` archives are still loading
/// (the two run side by side). A lookup that arrives in that window waits
/// for start-up to end and finds the volume: it never sees a tree without
/// it. The archive has 40,000 members, so indexing it outlasts the mount.
#[test]
fn lookups_during_start_up_wait_for_the_attach_archives() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let tar_path = dir.path().join("many.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    for i in 0..40_000 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, format!("d{}/f{i}", i % 50), std::io::empty())
            .unwrap();
    }
    b.into_inner().unwrap();
    let mut early = 0;
    for attempt in 0..5 {
        // A new state directory each time: the archive is indexed again.
        let state = dir.path().join(format!("state{attempt}"));
        let log = dir.path().join(format!("fsd{attempt}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(FSD)
            .arg("mount")
            .arg(&mnt)
            .arg("--state")
            .arg(&state)
            .arg("--attach")
            .arg(&tar_path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !is_mounted(&mnt) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "fsd exited with {st}: {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            assert!(std::time::Instant::now() < deadline, "no mount");
        }
        // Logged once start-up has ended; not there yet means the lookups
        // below were made inside the window.
        if !std::fs::read_to_string(&log)
            .unwrap()
            .contains("fsd is serving")
        {
            early += 1;
        }
        let link = mnt.join("volumes/many.tar");
        let m = std::fs::symlink_metadata(&link);
        assert!(
            m.as_ref().is_ok_and(|m| m.file_type().is_symlink()),
            "attempt {attempt}: {m:?}"
        );
        assert_eq!(std::fs::read_dir(link.join("d7")).unwrap().count(), 800);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        assert!(!is_mounted(&mnt));
    }
    assert!(
        early > 0,
        "no lookup was made between the mount and the end of start-up"
    );
}

/// A path that start-up reads through the mount itself, here an
/// `--attach` archive inside the mountpoint, cannot hang start-up (its
/// requests would wait for start-up to end): the daemon's own requests are
/// answered at once, and the archive is reported missing, exit code 7, as
/// before the mount existed.
#[test]
fn an_attach_path_inside_the_mountpoint_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(FSD)
        .arg("mount")
        .arg(&mnt)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--attach")
        .arg(mnt.join("volumes/x.tar"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            force_unmount(&mnt);
            panic!("fsd hung starting with an --attach path inside its mountpoint");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(7), "{err}");
    assert!(err.contains("x.tar"), "{err}");
    assert!(!is_mounted(&mnt));
}
