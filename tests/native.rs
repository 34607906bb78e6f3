//! Native volumes against a real mount: POSIX semantics through Python's
//! `os` module and coreutils, tree hashes, copies with cp and rsync, ENOSPC,
//! corruption detection, destroy and permissions.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn create(d: &Daemon, name: &str) -> (String, PathBuf) {
    let id = d.ok(&["create", name]).trim().to_string();
    assert!(id.starts_with("vol-"), "{id}");
    let p = d.vol(&id);
    (id, p)
}

fn python(script: &str, args: &[&Path]) -> String {
    run(Command::new("python3").arg("-c").arg(script).args(args))
}

#[test]
fn create_list_and_layout() {
    let d = Daemon::start();
    let (id, v) = create(&d, "work");
    assert!(v.is_dir());
    assert_eq!(
        std::fs::read_link(d.mnt.join("volumes/work")).unwrap(),
        PathBuf::from(&id)
    );
    let vols = d.json(&["volumes"]);
    assert_eq!(vols[0]["kind"], "native");
    assert_eq!(vols[0]["name"], "work");
    assert_eq!(vols[0]["files"], 0);
    std::fs::write(v.join("f"), b"12345").unwrap();
    let vols = d.json(&["volumes"]);
    assert_eq!(vols[0]["files"], 1);
    assert_eq!(vols[0]["size"], 5);
    let o = d.tokenctl(&["create", "work"]);
    assert_eq!(o.status.code(), Some(5), "duplicate name: {o:?}");
    assert_eq!(
        run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.fsd.kind"])
            .arg(&v)),
        "native"
    );
}

#[test]
fn posix_file_semantics() {
    let d = Daemon::start();
    let (_, v) = create(&d, "posix");
    let script = r##"
import os, sys, errno, stat, ctypes
v = sys.argv[1]
def p(*a): return os.path.join(v, *a)
def fails(e, f, *a, **k):
    try:
        f(*a, **k)
    except OSError as x:
        assert x.errno == e, (f.__name__, a, errno.errorcode.get(x.errno), errno.errorcode[e])
        return
    raise AssertionError(f"{f.__name__}{a} should fail with {errno.errorcode[e]}")

# create, O_EXCL, O_TRUNC, O_APPEND, writes at offsets
fd = os.open(p("a"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
assert os.write(fd, b"hello world") == 11
os.pwrite(fd, b"HELLO", 0)
os.pwrite(fd, b"!", 20)
assert os.pread(fd, 100, 0) == b"HELLO world" + b"\0" * 9 + b"!"
os.close(fd)
fails(errno.EEXIST, os.open, p("a"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
assert stat.S_IMODE(os.stat(p("a")).st_mode) == 0o640
fd = os.open(p("a"), os.O_WRONLY | os.O_APPEND)
os.write(fd, b"tail")
os.close(fd)
assert open(p("a"), "rb").read().endswith(b"!tail")
fd = os.open(p("a"), os.O_WRONLY | os.O_TRUNC)
os.close(fd)
assert os.stat(p("a")).st_size == 0

# truncate grow and shrink, across chunk boundaries
data = os.urandom(3 * 1024 * 1024 + 100)
with open(p("big"), "wb") as f:
    f.write(data)
os.truncate(p("big"), 1024 * 1024 + 7)
assert open(p("big"), "rb").read() == data[:1024 * 1024 + 7]
os.truncate(p("big"), 5 * 1024 * 1024)
got = open(p("big"), "rb").read()
assert got == data[:1024 * 1024 + 7] + b"\0" * (5 * 1024 * 1024 - 1024 * 1024 - 7)

# two descriptors see each other's writes before close
f1 = os.open(p("shared"), os.O_CREAT | os.O_RDWR, 0o600)
f2 = os.open(p("shared"), os.O_RDWR)
os.pwrite(f1, b"abc", 2 * 1024 * 1024)
assert os.pread(f2, 3, 2 * 1024 * 1024) == b"abc"
assert os.fstat(f2).st_size == 2 * 1024 * 1024 + 3
os.close(f1); os.close(f2)

# directories
os.mkdir(p("d"), 0o750)
os.mkdir(p("d", "e"))
assert os.stat(p("d")).st_nlink == 3
fails(errno.ENOTEMPTY, os.rmdir, p("d"))
fails(errno.ENOTDIR, os.rmdir, p("a"))
fails(errno.EISDIR, os.unlink, p("d"))
fails(errno.EEXIST, os.mkdir, p("d"))
fails(errno.ENOENT, os.unlink, p("nope"))
fails(errno.ENAMETOOLONG, os.open, p("x" * 256), os.O_CREAT | os.O_WRONLY)
open(p("x" * 255), "w").close()
os.rmdir(p("d", "e"))
assert os.stat(p("d")).st_nlink == 2

# rename: over a file, across dirs, dir over empty dir, errors
open(p("r1"), "w").write("one")
open(p("r2"), "w").write("two")
os.rename(p("r1"), p("r2"))
assert open(p("r2")).read() == "one" and not os.path.exists(p("r1"))
os.rename(p("r2"), p("d", "moved"))
assert open(p("d", "moved")).read() == "one"
os.mkdir(p("src")); os.mkdir(p("dst")); open(p("src", "in"), "w").close()
os.rename(p("src"), p("dst"))
assert os.path.exists(p("dst", "in"))
os.mkdir(p("full")); open(p("full", "x"), "w").close()
fails(errno.ENOTEMPTY, os.rename, p("dst"), p("full"))
fails(errno.EISDIR, os.rename, p("a"), p("full"))
fails(errno.ENOTDIR, os.rename, p("full"), p("a"))
fails(errno.EINVAL, os.rename, p("full"), p("full", "sub"))

# renameat2: NOREPLACE and EXCHANGE
libc = ctypes.CDLL(None, use_errno=True)
AT = -100
def renameat2(a, b, flags):
    r = libc.syscall(316, AT, a.encode(), AT, b.encode(), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
open(p("x1"), "w").write("x1")
open(p("x2"), "w").write("x2")
fails(errno.EEXIST, renameat2, p("x1"), p("x2"), 1)
renameat2(p("x1"), p("x2"), 2)
assert open(p("x1")).read() == "x2" and open(p("x2")).read() == "x1"
renameat2(p("x1"), p("fresh"), 1)
assert open(p("fresh")).read() == "x2"
renameat2(p("fresh"), p("full"), 2)
assert os.path.isdir(p("fresh")) and open(p("full")).read() == "x2"

# symlink, hard link
os.symlink("d/moved", p("sym"))
assert os.readlink(p("sym")) == "d/moved" and open(p("sym")).read() == "one"
os.link(p("d", "moved"), p("hard"))
assert os.stat(p("hard")).st_nlink == 2
fails(errno.EPERM, os.link, p("d"), p("dlink"))
fails(errno.EEXIST, os.link, p("hard"), p("sym"))
os.unlink(p("d", "moved"))
assert os.stat(p("hard")).st_nlink == 1 and open(p("hard")).read() == "one"

# chmod, chown, utimens (nanoseconds kept)
os.chmod(p("hard"), 0o4711)
assert stat.S_IMODE(os.stat(p("hard")).st_mode) == 0o4711
os.chown(p("hard"), 1234, 5678)
st = os.stat(p("hard"))
assert (st.st_uid, st.st_gid) == (1234, 5678)
os.utime(p("hard"), ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
st = os.stat(p("hard"))
assert st.st_mtime_ns == 1_600_000_000_987_654_321, st.st_mtime_ns
assert st.st_atime_ns == 1_500_000_000_123_456_789

# xattrs
os.setxattr(p("hard"), "user.color", b"blue")
assert os.getxattr(p("hard"), "user.color") == b"blue"
fails(errno.EEXIST, os.setxattr, p("hard"), "user.color", b"red", os.XATTR_CREATE)
fails(errno.ENODATA, os.setxattr, p("hard"), "user.size", b"1", os.XATTR_REPLACE)
os.setxattr(p("hard"), "user.color", b"red", os.XATTR_REPLACE)
assert "user.color" in os.listxattr(p("hard"))
os.removexattr(p("hard"), "user.color")
fails(errno.ENODATA, os.getxattr, p("hard"), "user.color")
fails(errno.EPERM, os.setxattr, p("hard"), "user.fsd.treehash", b"x")

# fallocate and holes: data at 0 and 3 MiB, a punched hole in between
M = 1024 * 1024
fd = os.open(p("holes"), os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(fd, os.urandom(4 * M), 0)
os.fsync(fd)
os.posix_fallocate(fd, 0, 6 * M)
assert os.fstat(fd).st_size == 6 * M
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
r = libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(M), ctypes.c_long(2 * M))
assert r == 0, ctypes.get_errno()
assert os.fstat(fd).st_size == 6 * M
assert os.pread(fd, 2 * M, M) == b"\0" * (2 * M)
assert os.lseek(fd, 0, os.SEEK_HOLE) == M
assert os.lseek(fd, M, os.SEEK_DATA) == 3 * M
assert os.lseek(fd, 3 * M, os.SEEK_HOLE) == 4 * M
fails(errno.ENXIO, os.lseek, fd, 4 * M, os.SEEK_DATA)
fails(errno.ENXIO, os.lseek, fd, 7 * M, os.SEEK_HOLE)
# a partial punch zeroes bytes inside a chunk
r = libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(3 * M + 10), ctypes.c_long(20))
assert r == 0
assert os.pread(fd, 20, 3 * M + 10) == b"\0" * 20
os.close(fd)

# unlink while open: the data stays readable through the descriptor
fd = os.open(p("ghost"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(fd, b"still here")
os.unlink(p("ghost"))
assert os.pread(fd, 10, 0) == b"still here"
os.write(fd, b"!")
os.close(fd)
assert not os.path.exists(p("ghost"))

# statfs reflects the hot tier
sv = os.statvfs(v)
assert sv.f_blocks > 0 and sv.f_bavail > 0
print("ok")
"##;
    let out = python(script, &[&v]);
    assert_eq!(out.trim(), "ok");
    // statfs equals the state directory's filesystem.
    let mine = nix::sys::statvfs::statvfs(&v).unwrap();
    let host = nix::sys::statvfs::statvfs(&d.state).unwrap();
    assert_eq!(
        mine.blocks() * mine.fragment_size(),
        host.blocks() * host.fragment_size()
    );
    let fsck = d.tokenctl(&["fsck", "posix"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

#[test]
fn tree_hash_vectors_and_archive_members() {
    let d = Daemon::start();
    let (_, v) = create(&d, "th");
    let mib = 1024 * 1024;
    for (name, len) in [("z1", mib), ("z3", 3 * mib), ("z7", 7 * mib)] {
        std::fs::write(v.join(name), vec![0u8; len]).unwrap();
    }
    std::fs::write(v.join("abc"), b"abc").unwrap();
    let th = |p: &Path| {
        run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.fsd.treehash"])
            .arg(p))
    };
    assert_eq!(
        th(&v.join("z1")),
        "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"
    );
    assert_eq!(
        th(&v.join("z3")),
        "ca6cc129a4514ec765de86a4e7a49adf44842c9cac213c383ebe4071271bdf21"
    );
    assert_eq!(
        th(&v.join("z7")),
        "091961d52b7a7681230b75c5652a1750690133b6762b02f012513265e80dde30"
    );
    let abc = run(Command::new("sh")
        .arg("-c")
        .arg(format!("sha256sum < {}", v.join("abc").display())));
    assert_eq!(th(&v.join("abc")), abc.split_whitespace().next().unwrap());
    // Random data, checked against an independent Python implementation.
    let data = pattern(42, 5 * mib + 12345);
    std::fs::write(v.join("rand"), &data).unwrap();
    let reference = d.dir.path().join("rand");
    std::fs::write(&reference, &data).unwrap();
    let py = r##"
import hashlib, sys
d = open(sys.argv[1], "rb").read()
level = [hashlib.sha256(d[i:i + 1048576]).digest() for i in range(0, len(d), 1048576)] or [hashlib.sha256(b"").digest()]
while len(level) > 1:
    level = [hashlib.sha256(level[i] + level[i + 1]).digest() if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
print(level[0].hex())
"##;
    let want = python(py, &[&reference]);
    assert_eq!(th(&v.join("rand")), want.trim());
    // An archive member: computed on first request, then cached.
    let tar = d.dir.path().join("t.tar");
    tar_of(&tar, d.dir.path(), "rand");
    let id = d.attach(&tar);
    assert_eq!(th(&d.vol(&id).join("rand")), want.trim());
    assert_eq!(th(&d.vol(&id).join("rand")), want.trim());
    // No tree hash for directories.
    let o = Command::new("getfattr")
        .args(["-n", "user.fsd.treehash"])
        .arg(&v)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn copies_with_cp_and_rsync() {
    let d = Daemon::start();
    let (_, v) = create(&d, "copies");
    // cp from an archive volume into the native volume is byte-identical.
    let src = d.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for (i, name) in ["a", "sub/b", "sub/deeper/c", "sub/empty"]
        .iter()
        .enumerate()
    {
        std::fs::write(
            src.join(name),
            pattern(i as u64, [1000, 3 << 20, 70_000, 0][i]),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o751)).unwrap();
    let tar = d.dir.path().join("src.tar");
    tar_of(&tar, &src, ".");
    let id = d.attach(&tar);
    run(Command::new("cp")
        .arg("-a")
        .arg(d.vol(&id))
        .arg(v.join("fromtar")));
    assert_same_tree(
        &listing(&v.join("fromtar")),
        &listing(&d.vol(&id)),
        "cp -a",
        TAR_CMP,
    );
    // rsync -a into the volume and back out; second runs copy nothing.
    let rs = |from: &Path, to: &Path| {
        run(Command::new("rsync")
            .args(["-a", "--stats"])
            .arg(format!("{}/", from.display()))
            .arg(to))
    };
    let first = rs(&src, &v.join("rsynced"));
    assert!(
        first.contains("Number of regular files transferred: 4"),
        "{first}"
    );
    let again = rs(&src, &v.join("rsynced"));
    assert!(
        again.contains("Number of regular files transferred: 0"),
        "{again}"
    );
    let out = d.dir.path().join("out");
    rs(&v.join("rsynced"), &out);
    let back = rs(&v.join("rsynced"), &out);
    assert!(
        back.contains("Number of regular files transferred: 0"),
        "{back}"
    );
    assert_same_tree(&listing(&out), &listing(&src), "rsync round trip", TAR_CMP);
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(&out));
    let fsck = d.tokenctl(&["fsck", "copies"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

#[test]
fn data_survives_restart_and_destroy_releases_chunks() {
    let mut d = Daemon::start();
    let (id, v) = create(&d, "keep");
    let data = pattern(7, 2_500_000);
    std::fs::write(v.join("f"), &data).unwrap();
    std::fs::create_dir(v.join("dir")).unwrap();
    std::os::unix::fs::symlink("../f", v.join("dir/l")).unwrap();
    d.restart();
    let v = d.vol(&id);
    assert_eq!(std::fs::read(v.join("f")).unwrap(), data);
    assert_eq!(std::fs::read(v.join("dir/l")).unwrap(), data);
    let before = d.json(&["status"]);
    assert!(before["hot_chunks"].as_u64().unwrap() >= 3, "{before}");
    // destroy refuses while a file is open.
    let f = std::fs::File::open(v.join("f")).unwrap();
    let o = d.tokenctl(&["destroy", "keep"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    drop(f);
    d.ok(&["destroy", "keep"]);
    assert!(!v.exists());
    let after = d.json(&["status"]);
    assert_eq!(after["hot_chunks"], 0, "{after}");
    assert_eq!(after["hot_bytes"], 0, "{after}");
    assert_eq!(chunk_files(&d.state), 0);
    assert_eq!(d.json(&["volumes"]), serde_json::json!([]));
}

#[test]
fn identical_data_is_stored_once() {
    let d = Daemon::start();
    let (_, v) = create(&d, "dedup");
    let data = pattern(3, 4 << 20);
    std::fs::write(v.join("one"), &data).unwrap();
    std::fs::write(v.join("two"), &data).unwrap();
    let st = d.json(&["status"]);
    assert_eq!(
        st["hot_chunks"], 4,
        "four distinct chunks for two identical files: {st}"
    );
    assert_eq!(st["hot_bytes"], 4 << 20);
    std::fs::remove_file(v.join("one")).unwrap();
    assert_eq!(d.json(&["status"])["hot_chunks"], 4, "still used by two");
    std::fs::remove_file(v.join("two")).unwrap();
    assert_eq!(d.json(&["status"])["hot_chunks"], 0, "collected");
}

#[test]
fn corrupt_chunk_is_detected_on_read() {
    let mut d = Daemon::start();
    let (id, v) = create(&d, "rot");
    let data = pattern(11, 3 << 20);
    std::fs::write(v.join("f"), &data).unwrap();
    // Damage the second chunk behind fsd's back.
    let h = run(Command::new("sh").arg("-c").arg(format!(
        "dd if={} bs=1M skip=1 count=1 status=none | sha256sum",
        v.join("f").display()
    )));
    let h = h.split_whitespace().next().unwrap().to_string();
    let chunk = d.state.join("chunks").join(&h[..2]).join(&h);
    assert!(chunk.exists(), "{}", chunk.display());
    d.stop();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[data[(1 << 20) + 5000] ^ 1], 5000).unwrap();
    drop(f);
    d.spawn();
    let v = d.vol(&id);
    let script = r##"
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
assert len(os.pread(fd, 4096, 0)) == 4096
try:
    os.pread(fd, 4096, 1048576 + 4096)
except OSError as e:
    assert e.errno == errno.EIO, e
    print("eio")
"##;
    assert_eq!(python(script, &[&v.join("f")]).trim(), "eio");
    let log = d.log_with("read failed");
    let line = log
        .lines()
        .find(|l| l.contains("read failed"))
        .unwrap_or_else(|| panic!("no log line: {log}"));
    assert!(
        line.contains(&id) && line.contains(&h) && line.contains("offset"),
        "{line}"
    );
    // fsck names the chunk and the file; the problem is not repairable.
    let o = d.tokenctl(&["fsck", "rot", "--repair"]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("corrupt_chunk") && out.contains(&h[..16]),
        "{out}"
    );
}

#[test]
fn enospc_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&small)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?); skipping");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _u = Unmount(small.clone());
    let mut d = Daemon::start_with_state(&small.join("state"));
    let (_, v) = create(&d, "tiny");
    std::fs::write(v.join("keep"), pattern(1, 3 << 20)).unwrap();
    // 60 MiB into a 40 MiB hot tier: the writer gets ENOSPC.
    let o = Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", v.join("huge").display()))
        .args(["bs=1M", "count=60", "conv=fsync", "status=none"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "dd should fail: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left"), "{err}");
    // Nothing half-written was committed, nothing leaked, and the earlier
    // file is intact.
    assert_eq!(std::fs::read(v.join("keep")).unwrap(), pattern(1, 3 << 20));
    let size = std::fs::metadata(v.join("huge"))
        .map(|m| m.len())
        .unwrap_or(0);
    let fsck = d.tokenctl(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
    let st = d.json(&["status"]);
    assert_eq!(
        st["hot_bytes"].as_u64().unwrap(),
        (3 << 20) + size,
        "only committed data stays: {st}"
    );
    // After removing the failed file the space is back and writes work.
    let _ = std::fs::remove_file(v.join("huge"));
    std::fs::write(v.join("after"), pattern(2, 8 << 20)).unwrap();
    assert_eq!(std::fs::read(v.join("after")).unwrap(), pattern(2, 8 << 20));
    d.stop();
}

#[test]
fn permissions_for_other_users() {
    if !have("setpriv") {
        eprintln!("setpriv missing; skipping");
        return;
    }
    let d = Daemon::start();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (_, v) = create(&d, "perm");
    std::fs::write(v.join("private"), b"secret").unwrap();
    std::fs::set_permissions(v.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(v.join("open")).unwrap();
    std::fs::set_permissions(v.join("open"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(v.join("open/roots"), b"r").unwrap();
    let as_nobody = |script: &str| {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                script,
            ])
            .arg(&v)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let out = as_nobody(
        r##"
import os, sys, errno
v = sys.argv[1]
def code(f, *a):
    try:
        f(*a); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(code(open, v + "/private"),
      code(os.open, v + "/newfile", os.O_CREAT | os.O_WRONLY, 0o644),
      code(os.open, v + "/open/mine", os.O_CREAT | os.O_WRONLY, 0o644),
      code(os.unlink, v + "/open/roots"),
      code(os.chmod, v + "/private", 0o777))
"##,
    );
    assert_eq!(out, "EACCES EACCES ok EPERM EPERM");
    let m = std::fs::metadata(v.join("open/mine")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (65534, 65534),
        "new files belong to their creator"
    );
}

/// Small writes into a file whose chunks are already sealed are kept as
/// patches of 4 KiB pages until the chunk is sealed again. Reads before and
/// after the commit, a restart and the write budget must all agree with a
/// plain model of the bytes, for writes that straddle pages and chunks,
/// grow a short last chunk and fill a patch past its page limit.
#[test]
fn small_writes_into_sealed_chunks() {
    let mut d = Daemon::start();
    let (id, v) = create(&d, "patch");
    let base = pattern(11, 3 * 1024 * 1024 + 5000);
    std::fs::write(v.join("f"), &base).unwrap();
    let script = r##"
import os, sys, random, json
path, model_path = sys.argv[1], sys.argv[2]
model = bytearray(open(model_path, 'rb').read())
rng = random.Random(5)
fd = os.open(path, os.O_RDWR)
def w(off, data):
    global model
    assert os.pwrite(fd, data, off) == len(data)
    if len(model) < off + len(data):
        model += bytes(off + len(data) - len(model))
    model[off:off + len(data)] = data
# Straddling a page boundary, a chunk boundary, inside the short last
# chunk, past the end (growing it), and one byte.
w(4090, b'A' * 20)
w((1 << 20) - 7, b'B' * 14)
w(3 * (1 << 20) + 4000, b'C' * 3000)
w(len(model) + 100, b'D' * 50)
w(2 * (1 << 20) + 12345, b'E')
# Many random small writes, then a dense patch (more than 64 pages).
for _ in range(300):
    off = rng.randrange(0, len(model))
    w(off, rng.randbytes(rng.randrange(1, 9000)))
for i in range(100):
    w((1 << 20) + i * 4096, rng.randbytes(4096))
# Reads before any commit see the writes.
for _ in range(200):
    off = rng.randrange(0, len(model))
    n = rng.randrange(1, 300000)
    got = os.pread(fd, n, off)
    assert got == bytes(model[off:off + n]), ('read before close', off, n)
assert os.fstat(fd).st_size == len(model)
os.close(fd)
open(model_path, 'wb').write(model)
"##;
    let model = d.state.parent().unwrap().join("patch-model");
    std::fs::write(&model, &base).unwrap();
    python(script, &[&v.join("f"), &model]);
    let want = std::fs::read(&model).unwrap();
    assert_eq!(std::fs::read(v.join("f")).unwrap(), want, "after close");
    let st = d.json(&["status"]);
    assert_eq!(st["buffered"], 0, "budget returned after the commit: {st}");
    d.restart();
    let v = d.vol(&id);
    assert_eq!(std::fs::read(v.join("f")).unwrap(), want, "after restart");
    let fsck = d.tokenctl(&["fsck", "patch"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

/// Chunk files of deleted files are removed by the background collector,
/// without anything (status, fsck, destroy) asking for it.
#[test]
fn deleted_files_chunks_are_reaped_in_the_background() {
    let mut d = Daemon::start();
    let (id, v) = create(&d, "reap");
    let state = d.state.clone();
    let chunk_files = || chunk_files(&state);
    std::fs::write(v.join("a"), pattern(21, 3 << 20)).unwrap();
    std::fs::write(v.join("b"), pattern(22, 100)).unwrap();
    assert_eq!(chunk_files(), 4);
    std::fs::remove_file(v.join("a")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The files leave their chunk names and are kept, emptied, as spares.
    let spares = || spare_sizes(&state);
    while chunk_files() != 1 || spares() != [0, 0, 0] {
        assert!(
            std::time::Instant::now() < deadline,
            "{} chunk files and spares of {:?} bytes 10 s after the unlink, want 1 and 3 empty",
            chunk_files(),
            spares()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(v.join("b")).unwrap(), pattern(22, 100));
    let st = d.json(&["status"]);
    assert_eq!(st["hot_chunks"], 1, "{st}");
    // New chunks take the spares over where their directories match; the
    // data is exactly what was written, and fsck agrees.
    let want: Vec<Vec<u8>> = (0..4).map(|i| pattern(30 + i, 1 << 20)).collect();
    for (i, w) in want.iter().enumerate() {
        std::fs::write(v.join(format!("n{i}")), w).unwrap();
    }
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&std::fs::read(v.join(format!("n{i}"))).unwrap(), w);
    }
    assert_eq!(chunk_files(), 5);
    let fsck = d.tokenctl(&["fsck", "reap"]);
    assert!(fsck.status.success(), "{fsck:?}");
    d.restart();
    let v = d.vol(&id);
    for (i, w) in want.iter().enumerate() {
        assert_eq!(
            &std::fs::read(v.join(format!("n{i}"))).unwrap(),
            w,
            "after restart"
        );
    }
    assert!(
        spares().iter().all(|&n| n == 0),
        "spares stay empty: {:?}",
        spares()
    );
}

/// Native files are opened with direct I/O (`native.direct_io`): reads and
/// writes bypass the FUSE page cache, yet shared and private mappings work
/// and see the same bytes as read(2) and write(2), in both directions, and
/// the kernel's page cache holds none of a file read through the mount.
#[test]
fn direct_io_reads_and_shared_mappings() {
    let d = Daemon::start();
    let (_, v) = create(&d, "mapped");
    let script = r##"
import mmap, os, sys, ctypes
v = sys.argv[1]
p = os.path.join(v, 'm')
data = bytes((i * 7 + i // 4096) & 0xff for i in range(3 * (1 << 20) + 123))
with open(p, 'wb') as f:
    f.write(data)
# A shared writable mapping: stores reach read(2) after msync.
fd = os.open(p, os.O_RDWR)
m = mmap.mmap(fd, len(data))
assert m[:4096] == data[:4096]
assert m[(1 << 20) - 5:(1 << 20) + 5] == data[(1 << 20) - 5:(1 << 20) + 5]
m[5000:5003] = b'xyz'
m[(2 << 20) + 1:(2 << 20) + 4] = b'XYZ'
m.flush()
m.close()
os.close(fd)
want = bytearray(data)
want[5000:5003] = b'xyz'
want[(2 << 20) + 1:(2 << 20) + 4] = b'XYZ'
got = open(p, 'rb').read()
assert got == bytes(want), 'mapped stores visible to read(2)'
# A write(2) after a mapping was made is visible to a new read-only mapping.
with open(p, 'r+b') as f:
    f.seek(100)
    f.write(b'QQ')
want[100:102] = b'QQ'
fd = os.open(p, os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
assert m[:] == bytes(want), 'read-only shared mapping after write(2)'
m.close()
# A private mapping (as the loader maps programs) reads the same bytes.
m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
assert m[96:106] == bytes(want[96:106])
m.close()
# Direct I/O: reading the whole file through a descriptor leaves no page of
# it in the kernel's cache (mincore over a fresh mapping counts them).
assert os.read(fd, len(want) + 10) == bytes(want)
os.close(fd)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(p, os.O_RDONLY)
n = len(want)
addr = libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
pages = (n + 4095) // 4096
vec = (ctypes.c_ubyte * pages)()
assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(n), vec) == 0, ctypes.get_errno()
resident = sum(b & 1 for b in vec)
libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(n))
os.close(fd)
print(resident, pages)
"##;
    let out = python(script, &[&v]);
    let mut it = out.split_whitespace().map(|s| s.parse::<usize>().unwrap());
    let (resident, pages) = (it.next().unwrap(), it.next().unwrap());
    assert!(pages > 700, "{out}");
    assert_eq!(
        resident, 0,
        "pages of a direct-I/O file left in the page cache: {out}"
    );
}

/// A large write reaches the daemon as several requests, which worker
/// threads may handle out of order. A chunk whose last bytes arrive first
/// must not be sealed then, with a hole of zeros, and sealed again when the
/// rest arrives: each chunk of a sequential write is written once. The
/// pieces here come from one thread in reverse order, so the order is
/// certain.
/// A close by a process that never wrote through the file (here the
/// children of fork+exec, whose exec closes the descriptor they inherited)
/// commits nothing: before, each one sealed the half-written chunk, which
/// the rest of the write then superseded.
#[test]
fn a_forked_childs_close_does_not_commit_partial_chunks() {
    use std::os::unix::fs::FileExt;
    let mut d = Daemon::start();
    let (_, v) = create(&d, "fork");
    let want = pattern(78, 2 << 20);
    let f = std::fs::File::create_new(v.join("f")).unwrap();
    f.write_all_at(&want[..512 << 10], 0).unwrap();
    for _ in 0..3 {
        let st = Command::new("true").status().unwrap();
        assert!(st.success());
    }
    f.write_all_at(&want[512 << 10..], 512 << 10).unwrap();
    drop(f);
    assert_eq!(std::fs::read(v.join("f")).unwrap(), want);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(chunk_files(&d.state), 2);
    assert!(
        spare_sizes(&d.state).is_empty(),
        "a superseded chunk was collected: {:?}",
        spare_sizes(&d.state)
    );
    // The writer's own close committed: the file survives a restart.
    d.restart();
    assert_eq!(std::fs::read(d.vol("fork").join("f")).unwrap(), want);
}

#[test]
fn reordered_pieces_seal_each_chunk_once() {
    use std::os::unix::fs::FileExt;
    let d = Daemon::start();
    let (_, v) = create(&d, "reorder");
    let want = pattern(77, 2 << 20);
    let piece = 128 << 10;
    let f = std::fs::File::create_new(v.join("f")).unwrap();
    // Chunk 0 back to front, then chunk 1 with its middle piece last.
    for off in (0..(1 << 20)).step_by(piece).rev() {
        f.write_all_at(&want[off..off + piece], off as u64).unwrap();
    }
    let order: Vec<usize> = (0..8).filter(|&i| i != 3).chain([3]).collect();
    for i in order {
        let off = (1 << 20) + i * piece;
        f.write_all_at(&want[off..off + piece], off as u64).unwrap();
    }
    drop(f);
    assert_eq!(std::fs::read(v.join("f")).unwrap(), want);
    // Two chunk files and nothing superseded (a superseded chunk would be
    // a third file, or a spare once collected).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        chunk_files(&d.state),
        2,
        "spares: {:?}",
        spare_sizes(&d.state)
    );
    assert!(
        spare_sizes(&d.state).is_empty(),
        "{:?}",
        spare_sizes(&d.state)
    );
}
