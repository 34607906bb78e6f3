//! Shared harness for integration tests: starts a real `fsd mount` on a
//! temporary mountpoint and state directory, runs `tokenctl` against it, and
//! always unmounts, even when a test fails.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FSD: &str = env!("CARGO_BIN_EXE_fsd");
pub const TOKENCTL: &str = env!("CARGO_BIN_EXE_tokenctl");

/// A running daemon and its directories.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
}

pub fn is_mounted(p: &Path) -> bool {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // The filesystem type is "fuse" or "fuse.fsd" depending on how
            // the mount was made; the source is always "fsd".
            f.get(4).map(Path::new) == Some(canon.as_path()) && l.contains(" - fuse")
        })
}

impl Daemon {
    /// Starts a daemon with fresh directories.
    pub fn start() -> Daemon {
        Self::start_with_config(None)
    }

    /// Starts a daemon whose state directory is `state` (e.g. on a small
    /// filesystem).
    pub fn start_with_state(state: &Path) -> Daemon {
        let mut d = Self::prepare(None);
        d.state = state.to_path_buf();
        d.spawn();
        d
    }

    /// Starts a daemon whose config file holds `config` (TOML overlay).
    pub fn start_with_config(config: Option<&str>) -> Daemon {
        let mut d = Self::prepare(config);
        d.spawn();
        d
    }

    fn prepare(config: Option<&str>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("fsd-test-")
            .tempdir()
            .unwrap();
        let mnt = dir.path().join("mnt");
        let state = dir.path().join("state");
        std::fs::create_dir(&mnt).unwrap();
        let cfg = config.map(|c| {
            let p = dir.path().join("fsd.toml");
            std::fs::write(&p, c).unwrap();
            p
        });
        Daemon {
            log: dir.path().join("fsd.log"),
            dir,
            mnt,
            state,
            config: cfg,
            child: None,
        }
    }

    /// Starts the daemon process and waits until the mount answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(FSD);
        cmd.arg("mount")
            .arg(&self.mnt)
            .arg("--state")
            .arg(&self.state)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        // Keep the child in self at once, so Drop cleans up even if the
        // wait below fails.
        self.child = Some(cmd.spawn().expect("spawning fsd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("fsd exited early with {status}; log:\n{}", self.log_text());
            }
            if is_mounted(&self.mnt) && self.tokenctl(&["status"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fsd did not come up within 20 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle` (or after 10 s): the daemon writes
    /// its log from a queue, a moment after the request that logged.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times `needle` is in the log, once it is there at least
    /// `at_least` times and the count has stopped changing for 300 ms (or
    /// after 10 s): the daemon writes its log from a queue, so lines of
    /// requests that have already been answered may still be on their way.
    pub fn log_count_settled(&self, needle: &str, at_least: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (usize::MAX, Instant::now());
        loop {
            let n = self.log_text().matches(needle).count();
            if n != last.0 {
                last = (n, Instant::now());
            }
            let stable = last.1.elapsed() >= Duration::from_millis(300);
            if (n >= at_least && stable) || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs tokenctl against this daemon.
    pub fn tokenctl(&self, args: &[&str]) -> Output {
        Command::new(TOKENCTL)
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("running tokenctl")
    }

    /// Runs tokenctl and returns stdout, failing the test on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tokenctl(args);
        assert!(
            o.status.success(),
            "tokenctl {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs tokenctl with --json and parses the result.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Attaches `path` and returns the volume ID.
    pub fn attach(&self, path: &Path) -> String {
        let id = self
            .ok(&["attach", path.to_str().unwrap()])
            .trim()
            .to_string();
        assert!(id.starts_with("vol-") && id.len() == 20, "bad id {id:?}");
        id
    }

    /// The directory of a volume in the mount.
    pub fn vol(&self, id: &str) -> PathBuf {
        self.mnt.join("volumes").join(id)
    }

    /// Sends `sig` to the daemon, leaving it in place to be waited for.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
        }
    }

    /// The daemon's exit status if it has exited (it is then forgotten),
    /// or None while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Sends SIGTERM and waits for a clean exit and unmount.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = wait_timeout(&mut c, Duration::from_secs(40));
            assert!(
                status.map(|s| s.success()).unwrap_or(false),
                "fsd did not exit cleanly ({status:?}); log:\n{}",
                self.log_text()
            );
            assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
        }
    }

    /// Kills the daemon with SIGKILL and clears the dead mount.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

fn wait_timeout(c: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn force_unmount(p: &Path) {
    if is_mounted(p) || std::fs::metadata(p).is_err() {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(p)
            .output();
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_timeout(&mut c, Duration::from_secs(20)).is_none() {
                let _ = c.kill();
            }
        }
        force_unmount(&self.mnt);
        if std::thread::panicking() {
            eprintln!("---- fsd log ----\n{}", self.log_text());
        }
    }
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `sh -c script` in `dir`.
pub fn sh(dir: &Path, script: &str) -> String {
    run(Command::new("sh").arg("-c").arg(script).current_dir(dir))
}

/// True if `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `tar -cf ARCHIVE -C DIR MEMBER` with GNU tar: an archive of one member
/// (or of `.`, the whole directory).
pub fn tar_of(archive: &Path, dir: &Path, member: &str) {
    run(Command::new("tar")
        .arg("-cf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .arg(member));
}

/// Deterministic pseudo-random bytes (xorshift), for file contents.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One entry of a tree listing, for comparing a mount with a reference.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: char,
    pub perm: u32,
    pub size: u64,
    pub mtime: i64,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub target: Option<Vec<u8>>,
    pub sha: Option<String>,
}

/// Lists `root` recursively (not following symlinks), sorted by path.
pub fn listing(root: &Path) -> Vec<Entry> {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                'f'
            } else {
                'o'
            };
            let sha = (kind == 'f').then(|| {
                hex::encode(sha2::Sha256::digest(
                    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
                ))
            });
            let target = (kind == 'l').then(|| {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            out.push(Entry {
                path: rel,
                kind,
                perm: m.mode() & 0o7777,
                size: if kind == 'd' { 0 } else { m.len() },
                mtime: m.mtime(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: if kind == 'd' { 0 } else { m.nlink() },
                target,
                sha,
            });
            if kind == 'd' {
                stack.push(p);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What to compare besides content, type, mode, size and links.
#[derive(Clone, Copy)]
pub struct Cmp {
    /// Directory mtimes (unzip stamps implicit directories with "now").
    pub dir_mtime: bool,
    /// Symlink mtimes (unzip does not restore them; tar -x does).
    pub link_mtime: bool,
    /// Hard link counts (`rsync -a` without -H does not keep them).
    pub nlink: bool,
}

/// What `tar -x` reproduces exactly.
pub const TAR_CMP: Cmp = Cmp {
    dir_mtime: true,
    link_mtime: true,
    nlink: true,
};
/// What `unzip` reproduces exactly.
pub const UNZIP_CMP: Cmp = Cmp {
    dir_mtime: true,
    link_mtime: false,
    nlink: true,
};

/// Asserts two listings agree, field by field, with a readable diff.
pub fn assert_same_tree(got: &[Entry], want: &[Entry], what: &str, cmp: Cmp) {
    let gp: Vec<_> = got
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    let wp: Vec<_> = want
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(gp, wp, "{what}: the set of paths differs");
    for (g, w) in got.iter().zip(want) {
        let p = String::from_utf8_lossy(&g.path);
        assert_eq!(g.kind, w.kind, "{what}: {p}: type");
        if g.kind != 'l' {
            assert_eq!(
                g.perm, w.perm,
                "{what}: {p}: mode {:o} vs {:o}",
                g.perm, w.perm
            );
        }
        assert_eq!(g.size, w.size, "{what}: {p}: size");
        assert_eq!(g.target, w.target, "{what}: {p}: link target");
        assert_eq!(g.sha, w.sha, "{what}: {p}: content");
        if cmp.nlink {
            assert_eq!(g.nlink, w.nlink, "{what}: {p}: link count");
        }
        let skip = (g.kind == 'd' && !cmp.dir_mtime) || (g.kind == 'l' && !cmp.link_mtime);
        if !skip {
            assert_eq!(g.mtime, w.mtime, "{what}: {p}: mtime");
        }
    }
}

/// Number of chunk files in a state directory's chunk store (fan-out
/// directories are made on first use, so a missing one holds none).
#[allow(dead_code)]
pub fn chunk_files(state: &Path) -> usize {
    fanout_entries(state)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// The sizes of the spare files (emptied chunk files kept for reuse) in
/// the chunk store of `state`.
#[allow(dead_code)]
pub fn spare_sizes(state: &Path) -> Vec<u64> {
    fanout_entries(state)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".spare-"))
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

/// Every entry of the chunk store's fan-out directories.
fn fanout_entries(state: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(state.join("chunks"))
        .unwrap()
        .flatten()
        // Not tmp, nor the store's own files (.store-id, .run) and the
        // quarantine (.quarantine).
        .filter(|e| e.file_name() != "tmp" && !e.file_name().to_string_lossy().starts_with('.'))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
}

/// A deterministic generator (splitmix64) for the randomized real-mount
/// tests, so a failing seed replays exactly. Kept here rather than taken
/// from a crate so a seed's sequence never changes with an upgrade.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    /// A generator whose stream is well mixed even for small seeds.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    #[allow(clippy::should_implement_trait)] // an infinite stream, not an Iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// `prog` run as `uid` (and the same gid) with no supplementary groups,
/// through setpriv: how the tests play an unprivileged local user.
pub fn as_user(uid: u32, prog: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(prog);
    c
}

/// The uid of `nobody`.
pub const NOBODY_UID: u32 = 65534;

/// `prog` run as nobody.
pub fn nobody(prog: &str) -> Command {
    as_user(NOBODY_UID, prog)
}

/// tokenctl run as `uid` against `d`.
pub fn tokenctl_as(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    as_user(uid, TOKENCTL)
        .arg("--state")
        .arg(&d.state)
        .args(args)
        .output()
        .unwrap()
}

/// tokenctl run as nobody against `d`.
pub fn tokenctl_nobody(d: &Daemon, args: &[&str]) -> Output {
    tokenctl_as(d, NOBODY_UID, args)
}
