//! Issue 17, items 3 and 7 (control socket): what a local user may attach
//! and revoke, what `media/<id>` shows, and that no user can exhaust or
//! wedge the control socket. Hostile callers run as `nobody` (and uid 1000)
//! through setpriv, with a Python helper speaking the socket protocol
//! directly where tokenctl would not misbehave.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const NOBODY: u32 = 65534;
/// The system Python (scripts/setup installs it): a per-user shim in
/// root's home would not run as another user.
const PYTHON: &str = "/usr/bin/python3";

/// The helper: `call SOCK JSON [OPEN_PATH MODE NFDS]` sends one request (with
/// NFDS copies of a descriptor of OPEN_PATH opened read-only or O_PATH) and
/// prints the final reply; `flood SOCK N` holds N idle connections;
/// `slow SOCK N` starts N requests that trickle in a byte a second and
/// counts the ones the daemon ends with an error. Both flood modes print
/// `ready` when set up, and end when a line arrives on stdin.
const HELPER: &str = r#"
import json, os, resource, socket, struct, sys, time

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b

def reply(s):
    while True:
        n = struct.unpack(">I", recv_exact(s, 4))[0]
        r = json.loads(recv_exact(s, n))
        if r["type"] != "progress":
            return r

def frame(req):
    body = json.dumps(req).encode()
    return struct.pack(">I", len(body)) + body

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
mode, sock = sys.argv[1], sys.argv[2]
# A request of 256 bytes, sent a byte at a time.
TRICKLE = struct.pack(">I", 256) + b"x" * 256

if mode == "call":
    req = json.loads(sys.argv[3])
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    if len(sys.argv) > 4:
        flags = os.O_PATH if sys.argv[5] == "opath" else os.O_RDONLY
        fd = os.open(sys.argv[4], flags)
        socket.send_fds(s, [frame(req)], [fd] * int(sys.argv[6]))
    else:
        s.sendall(frame(req))
    print(json.dumps(reply(s)))
elif mode == "fail":
    # N requests that fail, one after another on one connection.
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    codes = set()
    for i in range(int(sys.argv[3])):
        s.sendall(frame({"op": "detach", "volume": "no-such-volume"}))
        codes.add(reply(s)["code"])
    print(" ".join(sorted(codes)))
elif mode in ("flood", "slow"):
    n = int(sys.argv[3])
    conns = []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(sock)
        except OSError:
            s.close()
            continue
        if mode == "slow":
            s.send(TRICKLE[:1])
        conns.append(s)
    print("ready %d" % len(conns), flush=True)
    ended = 0
    if mode == "slow":
        # A byte a second, as long as the daemon keeps listening.
        live = list(conns)
        for i in range(1, 60):
            time.sleep(1)
            for s in list(live):
                try:
                    s.send(TRICKLE[i:i + 1])
                except OSError:
                    live.remove(s)
            if not live:
                break
        for s in conns:
            s.settimeout(5)
            try:
                data = s.recv(65536)
                if b"did not arrive within" in data:
                    ended += 1
            except OSError:
                pass
        print("ended %d" % ended, flush=True)
    sys.stdin.readline()
    for s in conns:
        s.close()
    print("closed", flush=True)
"#;

fn sock(d: &Daemon) -> String {
    d.state.join("fsd.sock").to_str().unwrap().to_string()
}

/// A daemon whose mount and socket other users can reach, and the helper.
fn open_daemon(config: Option<&str>) -> Option<(Daemon, PathBuf)> {
    if !have("setpriv") || !Path::new(PYTHON).exists() {
        eprintln!("setpriv or python3 missing; skipping");
        return None;
    }
    let d = Daemon::start_with_config(config);
    // The temp dir is private: let other users through to the socket.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let helper = d.dir.path().join("helper.py");
    std::fs::write(&helper, HELPER).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o644)).unwrap();
    Some((d, helper))
}

/// Runs the helper's `call` as `uid` and returns the reply.
fn call_as(
    d: &Daemon,
    helper: &Path,
    uid: u32,
    req: serde_json::Value,
    fd: Option<(&Path, &str, usize)>,
) -> serde_json::Value {
    let mut c = as_user(uid, PYTHON);
    c.arg(helper).arg("call").arg(sock(d)).arg(req.to_string());
    if let Some((p, mode, n)) = fd {
        c.arg(p).arg(mode).arg(n.to_string());
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "helper failed: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A one-member tar at `dir/name` (mode `mode`), member `hello` of `data`.
fn archive(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), data).unwrap();
    let p = dir.join(name);
    tar_of(&p, &src, "hello");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The lowest descriptor number `pid` has free. RLIMIT_NOFILE bounds
/// descriptor *numbers*, not how many are open: with a hole below the
/// limit a process can still open one, even when its count is at the limit.
fn lowest_free_fd(pid: u32) -> usize {
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

#[test]
fn attach_takes_the_callers_own_open() {
    let Some((d, helper)) = open_daemon(None) else {
        return;
    };
    let rootdir = d.dir.path().join("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hidden = archive(&rootdir, "pub.tar", b"root's data\n", 0o644);
    let pubdir = d.dir.path().join("pub");
    std::fs::create_dir(&pubdir).unwrap();
    std::fs::set_permissions(&pubdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mine = archive(&pubdir, "mine.tar", b"anyone's data\n", 0o644);
    let other = archive(&pubdir, "other.tar", b"other data\n", 0o644);
    let secret = archive(&pubdir, "secret.tar", b"secret\n", 0o600);

    // The file is 0644, but nobody cannot search the directory: refused,
    // exactly as `cat` would be, and nothing is attached.
    let o = tokenctl_as(
        &d,
        NOBODY,
        &["attach", hidden.to_str().unwrap(), "--name", "stolen"],
    );
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{o:?}"
    );
    assert_eq!(d.json(&["volumes"]), serde_json::json!([]));
    assert!(!d.mnt.join("volumes/stolen").exists());

    // Without a descriptor the daemon does not open the path for nobody.
    let attach = |p: &Path| serde_json::json!({"op": "attach", "path": p.to_str().unwrap()});
    let r = call_as(&d, &helper, NOBODY, attach(&mine), None);
    assert_eq!(r["code"], "permission_denied", "{r}");
    // An O_PATH descriptor needs no read permission: it does not count.
    let r = call_as(
        &d,
        &helper,
        NOBODY,
        attach(&secret),
        Some((&secret, "opath", 1)),
    );
    assert_eq!(r["code"], "permission_denied", "{r}");
    // A descriptor of one file claiming to be another is refused.
    let r = call_as(
        &d,
        &helper,
        NOBODY,
        attach(&other),
        Some((&mine, "read", 1)),
    );
    assert_eq!(r["code"], "invalid", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("not this file"),
        "{r}"
    );
    let r = call_as(
        &d,
        &helper,
        NOBODY,
        attach(&hidden),
        Some((&mine, "read", 1)),
    );
    assert_eq!(r["code"], "invalid", "{r}");
    assert_eq!(d.json(&["volumes"]), serde_json::json!([]));

    // What nobody can read, nobody can attach.
    let out = tokenctl_as(&d, NOBODY, &["attach", mine.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        std::fs::read(d.vol(&id).join("hello")).unwrap(),
        b"anyone's data\n"
    );
    let vols = d.json(&["volumes"]);
    assert_eq!(vols[0]["medium"], mine.to_str().unwrap());

    // Extra descriptors are closed, not kept: twenty requests carrying four
    // each leave the daemon's descriptor count where it was.
    let before = open_fds(d.pid());
    for _ in 0..20 {
        let r = call_as(&d, &helper, NOBODY, attach(&mine), Some((&mine, "read", 4)));
        assert_eq!(r["type"], "ok", "{r}");
        assert_eq!(r["result"]["already_attached"], true, "{r}");
    }
    let after = open_fds(d.pid());
    assert!(after <= before + 2, "fds {before} -> {after}");

    // Root still attaches anything, by tokenctl or by path alone.
    let id = d.attach(&hidden);
    assert_eq!(
        std::fs::read(d.vol(&id).join("hello")).unwrap(),
        b"root's data\n"
    );
    let r = call_as(&d, &helper, 0, attach(&secret), None);
    assert_eq!(r["type"], "ok", "{r}");
}

/// A medium on another FUSE filesystem (whose server a user may run) is for
/// root only; one stored in this fsd's own volumes is fine.
#[test]
fn media_on_foreign_fuse_mounts_are_for_root_only() {
    let Some((d, _)) = open_daemon(None) else {
        return;
    };
    let other = Daemon::start();
    std::fs::set_permissions(other.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let src = d.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let tar = archive(&src, "a.tar", b"stored in a volume\n", 0o644);
    let put = |dd: &Daemon| {
        let vol = dd.vol(dd.ok(&["create", "v"]).trim());
        let p = vol.join("a.tar");
        std::fs::copy(&tar, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let (own, foreign) = (put(&d), put(&other));
    let o = tokenctl_as(&d, NOBODY, &["attach", foreign.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another FUSE filesystem"),
        "{o:?}"
    );
    let o = tokenctl_as(
        &d,
        NOBODY,
        &["attach", own.to_str().unwrap(), "--name", "own"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(d.mnt.join("volumes/own/hello")).unwrap(),
        b"stored in a volume\n"
    );
    // Root may.
    d.ok(&["attach", foreign.to_str().unwrap(), "--name", "foreign"]);
    assert_eq!(
        std::fs::read(d.mnt.join("volumes/foreign/hello")).unwrap(),
        b"stored in a volume\n"
    );
    d.ok(&["detach", "foreign"]);
    // Closes the medium held open in fsd's own mount while fsd still serves
    // it: a daemon that exits holding one waits forever on its own flush.
    d.ok(&["detach", "own"]);
}

/// A volume is reattached at start-up by its remembered path, opened with
/// the daemon's rights; a symlink swapped in by the user who attached it
/// must not make it mount a file that user cannot read.
#[test]
fn reattach_does_not_follow_a_symlink_swapped_in() {
    let Some((mut d, _)) = open_daemon(None) else {
        return;
    };
    let rootdir = d.dir.path().join("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = archive(&rootdir, "secret.tar", b"root's secret\n", 0o644);
    let home = d.dir.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let mine = archive(&home, "x.tar", b"nobody's own\n", 0o644);
    let o = tokenctl_as(&d, NOBODY, &["attach", mine.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    d.stop();
    let o = as_user(NOBODY, "ln")
        .arg("-sf")
        .arg(&secret)
        .arg(&mine)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    d.spawn();
    let vols = d.json(&["volumes"]);
    assert_eq!(vols[0]["id"], id.as_str());
    assert_eq!(vols[0]["state"], "missing", "{vols}");
    assert!(std::fs::read(d.vol(&id).join("hello")).is_err());
    assert!(d.log_text().contains("not to itself"));
}

#[test]
fn media_files_carry_the_mediums_owner_and_mode() {
    let Some((d, _)) = open_daemon(None) else {
        return;
    };
    let dir = d.dir.path().join("media");
    std::fs::create_dir(&dir).unwrap();
    let private = archive(&dir, "private.tar", b"private\n", 0o600);
    let group = archive(&dir, "group.tar", b"group\n", 0o640);
    std::os::unix::fs::chown(&group, Some(0), Some(NOBODY)).unwrap();
    let (pid, gid) = (d.attach(&private), d.attach(&group));
    let pm = std::fs::metadata(d.mnt.join("media").join(&pid)).unwrap();
    assert_eq!(pm.mode(), libc::S_IFREG | 0o400, "{:o}", pm.mode());
    assert_eq!((pm.uid(), pm.gid()), (0, 0));
    let gm = std::fs::metadata(d.mnt.join("media").join(&gid)).unwrap();
    assert_eq!(gm.mode(), libc::S_IFREG | 0o440, "{:o}", gm.mode());
    assert_eq!((gm.uid(), gm.gid()), (0, NOBODY));
    // The kernel enforces them: nobody (in group 65534) reads the 0640
    // medium through the mount, not the 0600 one.
    let cat = |id: &str| {
        as_user(NOBODY, "cat")
            .arg(d.mnt.join("media").join(id))
            .output()
            .unwrap()
    };
    let o = cat(&pid);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    let o = cat(&gid);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, std::fs::read(&group).unwrap());
    // Root reads both.
    assert_eq!(
        std::fs::read(d.mnt.join("media").join(&pid)).unwrap(),
        std::fs::read(&private).unwrap()
    );
}

#[test]
fn only_the_populating_user_or_root_revokes_a_token() {
    let Some((d, _)) = open_daemon(None) else {
        return;
    };
    let vol = d.vol(d.ok(&["create", "a"]).trim());
    std::fs::write(vol.join("public"), pattern(3, 8192)).unwrap();
    std::fs::set_permissions(vol.join("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let tmp = d.dir.path().join("tokens");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    let populate = |name: &str| {
        let tf = tmp.join(name);
        let o = tokenctl_as(
            &d,
            1000,
            &[
                "offload-read",
                vol.join("public").to_str().unwrap(),
                "-o",
                tf.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{o:?}");
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();
        tf
    };
    let t1 = populate("t1");
    // Another user holding the token may redeem it but not revoke it.
    let o = tokenctl_as(&d, NOBODY, &["token", "revoke", t1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only that user or root"),
        "{o:?}"
    );
    // The owner may (and so it was still alive).
    let o = tokenctl_as(&d, 1000, &["token", "revoke", t1.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let o = tokenctl_as(&d, 1000, &["token", "revoke", t1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(14), "revoked already: {o:?}");
    // Root may revoke anyone's.
    let t2 = populate("t2");
    d.ok(&["token", "revoke", t2.to_str().unwrap()]);
    let o = tokenctl_as(&d, 1000, &["token", "revoke", t2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(14), "{o:?}");
}

/// A helper run in the background as `uid`, waiting for its `ready` line.
struct Flood {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Flood {
    fn start(d: &Daemon, helper: &Path, uid: u32, mode: &str, n: usize) -> (Flood, usize) {
        let mut child = as_user(uid, PYTHON)
            .arg(helper)
            .arg(mode)
            .arg(sock(d))
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let got = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("helper said {line:?}"))
            .trim()
            .parse()
            .unwrap();
        (Flood { child, out }, got)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn close(mut self) {
        self.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        assert_eq!(self.line(), "closed");
        self.child.wait().unwrap();
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn thousands_of_idle_and_slow_connections_do_not_lock_anyone_out() {
    let Some((d, helper)) = open_daemon(Some("[control]\nrequest_secs = 2\n")) else {
        return;
    };
    let dir = d.dir.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    let data = pattern(7, 1 << 20);
    let id = d.attach(&archive(&dir, "a.tar", &data, 0o644));
    let log_before = std::fs::metadata(&d.log).unwrap().len();
    let fds_before = open_fds(d.pid());

    // 3,000 idle connections from nobody, and slowloris requests from uid
    // 1000 trickling in a byte a second.
    let (idle, connected) = Flood::start(&d, &helper, NOBODY, "flood", 3000);
    assert_eq!(connected, 3000, "every connect went through the queue");
    let (mut slow, slow_n) = Flood::start(&d, &helper, 1000, "slow", 8);
    assert_eq!(slow_n, 8);

    // Root and the mount are unaffected.
    for _ in 0..5 {
        let v = d.json(&["volumes"]);
        assert_eq!(v[0]["id"], id.as_str());
        assert_eq!(std::fs::read(d.vol(&id).join("hello")).unwrap(), data);
    }
    // nobody holds its share of connections; the rest were refused, and
    // nobody's next connection is told why.
    let o = tokenctl_as(&d, NOBODY, &["volumes"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("too many control connections from uid 65534"),
        "{o:?}"
    );
    // The daemon holds a bounded number of descriptors for all of it.
    let fds = open_fds(d.pid());
    assert!(fds < fds_before + 64, "fds {fds_before} -> {fds}");

    // The slow requests were ended by the daemon (request_secs = 2), not
    // served a byte a second for as long as the client liked.
    assert_eq!(slow.line(), "ended 8");
    slow.close();
    idle.close();

    // Once the hostile connections are gone, nobody gets in again.
    let mut ok = false;
    for _ in 0..100 {
        if tokenctl_as(&d, NOBODY, &["volumes"]).status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "nobody's tokenctl works after the flood");
    // A few rate-limited lines, not one per refused connection.
    let grown = std::fs::metadata(&d.log).unwrap().len() - log_before;
    assert!(grown < 16 << 10, "log grew by {grown} bytes");
    let log = d.log_text();
    let refusals = log.matches("control connection refused").count();
    assert!((1..=10).contains(&refusals), "{refusals} refusal lines");
}

/// When the daemon has no descriptor left (its limit lowered under it with
/// prlimit while nobody holds connections), accept backs off, every waiting
/// client gets an answer instead of hanging, the log stays small, and the
/// mount keeps serving.
#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_answers() {
    if !have("prlimit") {
        eprintln!("prlimit missing; skipping");
        return;
    }
    let Some((d, helper)) = open_daemon(None) else {
        return;
    };
    let dir = d.dir.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    let data = pattern(8, 300_000);
    let id = d.attach(&archive(&dir, "a.tar", &data, 0o644));
    assert_eq!(std::fs::read(d.vol(&id).join("hello")).unwrap(), data);
    let pid = d.pid().to_string();
    let limit = |n: usize| {
        run(Command::new("prlimit")
            .arg("--pid")
            .arg(&pid)
            .arg(format!("--nofile={n}:")));
    };
    // Only the soft limit changes, so it can be raised back without
    // CAP_SYS_RESOURCE; fsd started with it at the hard limit.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let log_before = std::fs::metadata(&d.log).unwrap().len();
    // nobody holds its 8 connections; then the daemon has not one
    // descriptor to spare beyond the one it keeps for this.
    let (flood, n) = Flood::start(&d, &helper, NOBODY, "flood", 20);
    assert_eq!(n, 20);
    let mut fds = open_fds(d.pid());
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = open_fds(d.pid());
        if now == fds {
            break;
        }
        fds = now;
    }
    // The limit goes to the lowest free descriptor number, so every number
    // under it is taken. A descriptor the daemon opens between the reading
    // and the limit fills that hole: read again until the two agree.
    for _ in 0..20 {
        let free = lowest_free_fd(d.pid());
        limit(free);
        std::thread::sleep(Duration::from_millis(100));
        fds = open_fds(d.pid());
        if lowest_free_fd(d.pid()) >= free {
            break;
        }
    }
    // More connections wait in the queue meanwhile.
    let (flood2, _) = Flood::start(&d, &helper, 1000, "flood", 20);
    std::thread::sleep(Duration::from_secs(2));

    // Root's tokenctl is answered (not left hanging) and told why.
    let mut child = Command::new(TOKENCTL)
        .arg("--state")
        .arg(&d.state)
        .arg("volumes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        v.sort();
        format!("{fds} counted, now {}: {v:?}", v.len())
    };
    let mut waited = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(
            waited < 300,
            "tokenctl hangs while fsd is out of descriptors; {}",
            listing()
        );
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}; {}", listing());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("out of file descriptors"),
        "{o:?}"
    );
    // The mount still serves what it has open.
    assert_eq!(std::fs::read(d.vol(&id).join("hello")).unwrap(), data);
    // A few lines, not a hot loop.
    let grown = std::fs::metadata(&d.log).unwrap().len() - log_before;
    assert!(grown < 16 << 10, "log grew by {grown} bytes");
    let lines = d.log_text().matches("out of file descriptors").count();
    assert!((1..=3).contains(&lines), "{lines} lines");

    flood.close();
    flood2.close();
    limit(hard as usize);
    let mut ok = false;
    for _ in 0..100 {
        if tokenctl_as(&d, NOBODY, &["volumes"]).status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "nobody's tokenctl works once descriptors are free");
}

/// Any user can make requests fail as fast as the daemon answers; the log
/// lines about them are rate-limited.
#[test]
fn a_stream_of_failing_requests_keeps_the_log_small() {
    let Some((d, helper)) = open_daemon(None) else {
        return;
    };
    let before = std::fs::metadata(&d.log).unwrap().len();
    let o = as_user(NOBODY, PYTHON)
        .arg(&helper)
        .arg("fail")
        .arg(sock(&d))
        .arg("5000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "not_found");
    let lines = d.log_count_settled("control request detach failed", 1);
    let grown = std::fs::metadata(&d.log).unwrap().len() - before;
    assert!(lines >= 1, "failures are still logged");
    assert!(
        grown < 64 << 10,
        "log grew by {grown} bytes ({lines} lines)"
    );
    // Root's failures are all logged.
    for _ in 0..3 {
        assert_eq!(
            d.tokenctl(&["detach", "no-such-volume"]).status.code(),
            Some(4)
        );
    }
    let after = d.log_count_settled("control request detach failed", lines + 3);
    assert_eq!(after, lines + 3);
}

/// One raw request frame to the daemon as root; returns the reply.
fn raw(stream: &mut UnixStream, bytes: &[u8]) -> serde_json::Value {
    // The daemon may answer before it has read everything.
    let _ = stream.write_all(bytes);
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn oversized_and_malformed_requests_are_refused_clearly() {
    let d = Daemon::start();
    let path = d.state.join("fsd.sock");
    // A declared 100 MiB is refused from the header alone.
    let mut s = UnixStream::connect(&path).unwrap();
    let mut big = (100u32 << 20).to_be_bytes().to_vec();
    big.extend_from_slice(&[b'x'; 4096]);
    let r = raw(&mut s, &big);
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "protocol");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("104857600 bytes exceeds the limit"), "{msg}");
    // And the connection is closed after it.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    // Malformed JSON is an error for that request only.
    let mut s = UnixStream::connect(&path).unwrap();
    let r = raw(&mut s, &frame(b"{\"op\": "));
    assert_eq!(r["code"], "protocol", "{r}");
    assert!(r["message"].as_str().unwrap().contains("malformed request"));
    let r = raw(&mut s, &frame(br#"{"op":"ping"}"#));
    assert_eq!(r["type"], "ok", "{r}");

    // The largest real request, an offload write of a token of 1024
    // subtokens (1 MiB of hex), is within the limit: it reaches the token
    // code, which rejects this made-up token.
    let token = "00".repeat(1024 * 512);
    let req = serde_json::json!({
        "op": "offload-write",
        "token": token,
        "path": d.mnt.join("x").to_str().unwrap(),
    });
    let r = raw(&mut s, &frame(req.to_string().as_bytes()));
    assert_eq!(r["type"], "error", "{r}");
    assert_ne!(r["code"], "protocol", "{r}");

    // The daemon is fine.
    d.ok(&["volumes"]);
}
