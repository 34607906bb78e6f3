//! POSIX behaviour of native volumes, class by class, against ext4: each
//! test runs one class of `tests/posix_probe.py` on an ext4 loop mount and on
//! a native volume and wants the same lines from both. The expected results
//! are whatever ext4 does on this kernel, never written down here. The
//! probe acts as root, as `nobody` (with and without a supplementary group)
//! and with only the fsuid/fsgid changed, through fork and setres[ug]id.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// An ext4 filesystem in a 256 MiB image, loop-mounted until dropped.
struct Ext4 {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Ext4 {
    fn mount() -> Ext4 {
        let dir = tempfile::Builder::new()
            .prefix("fsd-ext4-")
            .tempdir()
            .unwrap();
        // The probe's unprivileged users must reach the mount.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let img = dir.path().join("ext4.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Ext4 { _dir: dir, mnt }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// Root is needed for loop mounts, mknod and switching users.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() || !have("mkfs.ext4") {
        eprintln!("needs root and mkfs.ext4 (scripts/setup); skipping");
        return false;
    }
    true
}

/// A daemon with one native volume that other users can reach.
fn native() -> (Daemon, PathBuf) {
    let d = Daemon::start();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let id = d.ok(&["create", "posix"]).trim().to_string();
    let v = d.vol(&id);
    (d, v)
}

fn probe(dir: &Path, class: &str) -> Vec<String> {
    std::fs::create_dir(dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/posix_probe.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(class)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "probe {class} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs `class` on ext4 and on fsd and wants the same lines; returns fsd's.
fn same_as_ext4(class: &str) -> Vec<String> {
    let ext4 = Ext4::mount();
    let (mut d, v) = native();
    let want = probe(&ext4.mnt.join("p"), class);
    let got = probe(&v.join("p"), class);
    assert!(!want.is_empty(), "the {class} probe printed nothing");
    for l in want.iter().chain(&got) {
        assert!(!l.contains("exception"), "probe {class} broke: {l}");
    }
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("  ext4: {w}\n  fsd:  {g}"))
        .collect();
    assert!(
        diffs.is_empty() && want.len() == got.len(),
        "{class}: fsd differs from ext4 in {} of {} probes:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
    d.stop();
    got
}

fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no probe {name}"))
}

/// New files, directories, FIFOs, sockets and symlinks take the caller's
/// fsuid and fsgid; in a setgid directory they take its group and new
/// directories its setgid bit; a non-member's setgid on a new file is
/// dropped.
#[test]
fn ownership_of_new_inodes() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("own");
    // What ext4 does, spelled out once so a reader sees the class.
    assert!(line(&got, "own.fsuid").contains("dfs=65534:2 40755"));
    assert!(line(&got, "sgid.nonmember").contains("dn=65534:1 42755"));
    assert!(line(&got, "sgid.nonmember").contains("fn=65534:1 100755"));
}

/// chmod by the owner keeps setgid only for a member of the file's group.
#[test]
fn chmod_setgid_by_non_member() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("chmod");
    assert!(line(&got, "chmod.nonmember").contains("f=ok,65534:1 100755"));
}

/// Failed rename, unlink, rmdir and link change no ctime or mtime, for
/// every kind of file and every error.
#[test]
fn failed_namespace_calls_change_no_times() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("fail");
    assert!(got.iter().all(|l| l.ends_with("changed=none")), "{got:#?}");
}

/// A directory moved to a new parent needs write permission on itself.
#[test]
fn moving_a_directory_needs_write_on_it() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("move");
    assert_eq!(line(&got, "move.dir_new_parent_no_write"), "EACCES");
}

/// rename, link and unlink of FIFOs, sockets and device nodes: onto every
/// kind, EISDIR/ENOTDIR/ENOTEMPTY, and which times change.
#[test]
fn fifos_sockets_and_devices_rename_and_unlink_like_files() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("kinds");
    assert_eq!(got.len(), 5 * (7 + 4));
}

/// Directory link counts after mkdir, rmdir and a move.
#[test]
fn directory_link_counts() {
    if !can_run() {
        return;
    }
    same_as_ext4("nlink");
}

/// ftruncate on descriptors opened with only creation flags (O_CREAT,
/// O_EXCL, O_TRUNC, read-only or not), for modes that forbid writing.
#[test]
fn ftruncate_after_open_with_creation_flags() {
    if !can_run() {
        return;
    }
    same_as_ext4("ftruncate");
}

/// Writes, truncates, O_TRUNC opens and chowns by a caller without
/// CAP_FSETID drop setuid and setgid; root's keep them.
#[test]
fn writes_and_truncates_drop_setuid_and_setgid() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("kill");
    assert_eq!(line(&got, "kill.suid_other_write"), "ok 0:0 100777");
    assert_eq!(line(&got, "kill.sgid_noexec_truncate"), "ok 0:0 100666");
}

/// link, rename, unlink of another name, RENAME_EXCHANGE and xattr calls on
/// a file that is open with uncommitted writes show their ctime at once, and
/// the commit at close keeps it.
#[test]
fn calls_on_open_files_show_their_ctime() {
    if !can_run() {
        return;
    }
    let got = same_as_ext4("open");
    assert!(
        got.iter()
            .all(|l| l.contains("ctime=changed after_close=kept")),
        "{got:#?}"
    );
}

/// The most links one file can have is 65000, as on ext4: the next link(2)
/// gives EMLINK and leaves nothing behind, and one unlink makes room again.
#[test]
fn link_count_maximum_gives_emlink() {
    if !can_run() {
        return;
    }
    let script = r#"
import os, sys, errno
d = sys.argv[1]
os.mkdir(d)
f = os.path.join(d, "f")
open(f, "w").close()
n = 1
while True:
    try:
        os.link(f, os.path.join(d, "l%d" % n))
        n += 1
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
after = os.lstat(f).st_nlink
exists = os.path.lexists(os.path.join(d, "l%d" % n))
os.unlink(os.path.join(d, "l1"))
again = "ok"
try:
    os.link(f, os.path.join(d, "again"))
except OSError as e:
    again = errno.errorcode[e.errno]
print(n, err, after, exists, again, os.lstat(f).st_nlink)
"#;
    let ext4 = Ext4::mount();
    let (mut d, v) = native();
    let py = |dir: PathBuf| {
        run(Command::new("python3").arg("-c").arg(script).arg(dir))
            .trim()
            .to_string()
    };
    let want = py(ext4.mnt.join("links"));
    let got = py(v.join("links"));
    assert_eq!(got, want, "fsd against ext4");
    assert_eq!(got, "65000 EMLINK 65000 False ok 65000");
    d.stop();
}

/// An offload write (`tokenctl offload-write`) by anyone but root drops
/// setuid and setgid as write(2) does; root's keeps them. (fsd only: ext4
/// has no offload.)
#[test]
fn offload_writes_drop_setuid_and_setgid_like_write() {
    if !can_run() || !have("setpriv") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (mut d, v) = native();
    let tmp = d.dir.path().join("tokens");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(v.join("src"), pattern(5, 8192)).unwrap();
    for f in ["by-nobody", "by-root"] {
        let p = v.join(f);
        std::fs::write(&p, b"old").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6755)).unwrap();
    }
    let tokenctl = |nobody: bool, args: &[&Path]| {
        let mut c = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", TOKENCTL]);
            c
        } else {
            Command::new(TOKENCTL)
        };
        let o = c.arg("--state").arg(&d.state).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    };
    let t = tmp.join("t");
    tokenctl(
        true,
        &[
            Path::new("offload-read"),
            &v.join("src"),
            Path::new("-o"),
            &t,
        ],
    );
    tokenctl(
        true,
        &[Path::new("offload-write"), &t, &v.join("by-nobody")],
    );
    tokenctl(false, &[Path::new("offload-write"), &t, &v.join("by-root")]);
    let mode = |f: &str| std::fs::metadata(v.join(f)).unwrap().mode() & 0o7777;
    assert_eq!(
        std::fs::read(v.join("by-nobody")).unwrap(),
        pattern(5, 8192)
    );
    assert_eq!(mode("by-nobody"), 0o755);
    assert_eq!(mode("by-root"), 0o6755);
    d.stop();
}
