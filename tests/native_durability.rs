//! Durability of native volumes against a real mount: fio's own data
//! verification, SIGKILL of the daemon in the middle of writes, a clean
//! restart, a directory with 100,000 entries, and chunk-store hygiene
//! (`tokenctl fsck` of the whole store must stay clean).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// Creates a native volume and returns its directory in the mount.
fn create(d: &Daemon, name: &str) -> PathBuf {
    let id = d.ok(&["create", name]).trim().to_string();
    assert!(id.starts_with("vol-"), "bad id {id:?}");
    d.vol(&id)
}

/// Runs `tokenctl fsck ARGS` and fails with its report unless it is clean.
fn assert_fsck_clean(d: &Daemon, args: &[&str], when: &str) {
    let mut a = vec!["fsck"];
    a.extend_from_slice(args);
    let o = d.tokenctl(&a);
    assert!(
        o.status.success(),
        "{when}: tokenctl {a:?} found problems ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------
// fio

/// One fio run; returns its single job's JSON.
fn fio(dir: &Path, cwd: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let file = dir.join(format!("{name}.dat"));
    let out = Command::new("fio")
        .current_dir(cwd)
        .arg(format!("--name={name}"))
        .arg(format!("--filename={}", file.display()))
        .args([
            "--ioengine=psync",
            "--verify=crc32c",
            "--verify_fatal=1",
            // No state files in the working directory.
            "--verify_state_save=0",
            // Fresh random data in every buffer, so chunks differ and no
            // block can pass verification by being identical to another.
            "--refill_buffers",
            "--randseed=20251123",
            "--output-format=json",
        ])
        .args(args)
        .output()
        .expect("running fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // fio may print notes before the JSON document.
    let start = stdout.find('{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(&stdout[start..])
        .unwrap_or_else(|e| panic!("fio {name}: unparsable JSON ({e}):\n{stdout}"));
    v["jobs"][0].clone()
}

/// Bytes a process has written to storage (from /proc/PID/io), to show
/// the daemon's write amplification.
fn written_by(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn io_bytes(job: &serde_json::Value, dir: &str) -> u64 {
    job[dir]["io_bytes"].as_u64().unwrap_or(0)
}

/// fio writes with a CRC-32C header in every block and reads everything
/// back to check it: sequential 1 MiB writes, random 4 KiB and mixed-size
/// writes (read-modify-write of chunks), and writes with an fsync every 16.
/// After the daemon restarts, a verify-only pass checks every file again,
/// now from the chunk store rather than from write buffers.
#[test]
fn fio_verify() {
    if !have("fio") {
        eprintln!("SKIPPED fio_verify: fio is not installed (scripts/setup installs it)");
        return;
    }
    let mut d = Daemon::start();
    let vol = create(&d, "fio");
    let cwd = d.dir.path().to_path_buf();
    let jobs: &[(&str, u64, &[&str])] = &[
        ("seq-1m", 128, &["--rw=write", "--bs=1M"]),
        ("rand-4k", 64, &["--rw=randwrite", "--bs=4k"]),
        ("rand-mixed", 96, &["--rw=randwrite", "--bsrange=4k-256k"]),
        ("seq-fsync16", 64, &["--rw=write", "--bs=64k", "--fsync=16"]),
    ];
    for (name, mib, args) in jobs {
        let t = Instant::now();
        let w0 = written_by(d.pid());
        let size = format!("--size={mib}M");
        let mut a = args.to_vec();
        a.extend(["--do_verify=1", &size]);
        let job = fio(&vol, &cwd, name, &a);
        let stored = written_by(d.pid()) - w0;
        let bytes = mib * MIB as u64;
        assert_eq!(job["error"].as_i64(), Some(0), "{name}: job error: {job}");
        assert_eq!(io_bytes(&job, "write"), bytes, "{name}: bytes written");
        // The verify phase reads back everything that was written.
        assert_eq!(io_bytes(&job, "read"), bytes, "{name}: bytes verified");
        if args.contains(&"--fsync=16") {
            let syncs = job["sync"]["total_ios"].as_u64().unwrap_or(0);
            assert!(syncs > 0, "{name}: no fsync was issued: {}", job["sync"]);
        }
        eprintln!(
            "fio {name}: {mib} MiB written and verified in {:.1} s; fsd wrote {} MiB to its store",
            t.elapsed().as_secs_f64(),
            stored >> 20
        );
    }
    assert_fsck_clean(&d, &[], "after fio");
    d.restart();
    for (name, mib, args) in jobs {
        let size = format!("--size={mib}M");
        let mut a = args.to_vec();
        a.extend(["--verify_only", &size]);
        let job = fio(&vol, &cwd, name, &a);
        assert_eq!(
            job["error"].as_i64(),
            Some(0),
            "{name}: verify after restart: {job}"
        );
        assert_eq!(
            io_bytes(&job, "read"),
            mib * MIB as u64,
            "{name}: bytes verified after restart"
        );
    }
    assert_fsck_clean(&d, &[], "after restart");
}

// ---------------------------------------------------------------------------
// SIGKILL in the middle of writes

/// A file's expected content as pieces `pattern(seed, n)`, so the writers
/// never keep megabytes in memory. The pieces' lengths always add up to
/// `len` (a truncate cuts them; a prefix of `pattern(seed, n)` is
/// `pattern(seed, shorter)`).
#[derive(Clone, Debug)]
struct Content {
    parts: Vec<(u64, usize)>,
    len: usize,
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for &(seed, n) in &self.parts {
            v.extend_from_slice(&pattern(seed, n));
        }
        v.truncate(self.len);
        v
    }
}

/// One writer thread's state; it survives the rounds (each round's thread
/// takes it and gives it back).
struct Writer {
    id: usize,
    rng: Rng,
    /// Files whose content is known for sure (last journal record is a
    /// completion).
    files: BTreeMap<String, Content>,
    journal: File,
    next: u64,
    records: u64,
}

impl Writer {
    /// Appends a line to the journal and makes it durable before returning,
    /// so a record is never lost even if the machine went down.
    fn record(&mut self, line: &str) {
        self.journal.write_all(line.as_bytes()).unwrap();
        self.journal.write_all(b"\n").unwrap();
        self.journal.sync_data().unwrap();
        self.records += 1;
    }

    /// Writes `data` in pieces of random size, as applications do.
    fn write_pieces(&mut self, f: &File, mut off: u64, data: &[u8]) -> std::io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let max = if self.id == 1 { MIB } else { 3 * MIB };
            let n = (1 + self.rng.below(max as u64) as usize).min(rest.len());
            f.write_all_at(&rest[..n], off)?;
            off += n as u64;
            rest = &rest[n..];
            if self.id == 1 {
                // Linger mid-file (see `random_len`).
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        Ok(())
    }

    fn random_len(&mut self) -> usize {
        // Writer 1 writes only multi-chunk files, so when the daemon dies
        // it is usually mid-file, with sealed chunks not yet committed:
        // the recovery must remove those.
        if self.id == 1 {
            return MIB + self.rng.below(3 * MIB as u64) as usize;
        }
        match self.rng.below(10) {
            0..4 => 1 + self.rng.below(64 * 1024) as usize,
            4..8 => 1 + self.rng.below(MIB as u64) as usize,
            _ => 1 + self.rng.below(4 * MIB as u64) as usize,
        }
    }

    /// Makes a change durable by fsync, or committed by close, and says
    /// which in the journal.
    fn finish(&mut self, f: File, name: &str, c: Content) -> std::io::Result<()> {
        let how = if self.rng.below(2) == 0 {
            f.sync_all()?;
            drop(f);
            "fsynced"
        } else {
            // close(2) reports flush errors; File's Drop ignores them.
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            // SAFETY: we own fd and close it exactly once.
            if unsafe { libc::close(fd) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            "closed"
        };
        let sha = sha_hex(&c.bytes());
        self.record(&format!("{how} {name} {sha}"));
        self.files.insert(name.to_string(), c);
        Ok(())
    }

    /// One step: create, overwrite, append, truncate or remove a file.
    fn step(&mut self, dir: &Path) -> std::io::Result<()> {
        let known: Vec<String> = self.files.keys().cloned().collect();
        let pick = self.rng.below(10);
        if known.is_empty() || pick < 5 {
            self.next += 1;
            let name = format!("w{}-{}", self.id, self.next);
            let len = self.random_len();
            let c = Content {
                parts: vec![(self.rng.next(), len)],
                len,
            };
            let f = File::create_new(dir.join(&name))?;
            self.write_pieces(&f, 0, &c.bytes())?;
            return self.finish(f, &name, c);
        }
        let name = known[self.rng.below(known.len() as u64) as usize].clone();
        let old = self.files[&name].clone();
        // From here until the completion record the content is uncertain:
        // say so first, and forget the file if anything fails.
        self.record(&format!("begin {name}"));
        self.files.remove(&name);
        let p = dir.join(&name);
        match pick {
            5 | 6 => {
                let len = self.random_len();
                let c = Content {
                    parts: vec![(self.rng.next(), len)],
                    len,
                };
                let f = OpenOptions::new().write(true).truncate(true).open(&p)?;
                self.write_pieces(&f, 0, &c.bytes())?;
                self.finish(f, &name, c)
            }
            7 | 8 => {
                let extra = self.random_len().min(MIB);
                let seed = self.rng.next();
                let f = OpenOptions::new().append(true).open(&p)?;
                let mut w = &f;
                w.write_all(&pattern(seed, extra))?;
                let mut c = old;
                c.parts.push((seed, extra));
                c.len += extra;
                self.finish(f, &name, c)
            }
            _ if self.rng.below(3) == 0 => {
                std::fs::remove_file(&p)?;
                self.record(&format!("removed {name}"));
                Ok(())
            }
            _ => {
                let new_len = self.rng.below(old.len as u64 + 1) as usize;
                let f = OpenOptions::new().write(true).open(&p)?;
                f.set_len(new_len as u64)?;
                // Keep parts exact: drop what lies past the new end and cut
                // the last part.
                let mut parts = Vec::new();
                let mut at = 0;
                for (seed, n) in old.parts {
                    if at >= new_len {
                        break;
                    }
                    let take = n.min(new_len - at);
                    parts.push((seed, take));
                    at += take;
                }
                let c = Content {
                    parts,
                    len: new_len,
                };
                self.finish(f, &name, c)
            }
        }
    }
}

/// What the journals promise for one name: its last record wins.
#[derive(Debug)]
enum Promise {
    /// "fsynced NAME SHA" or "closed NAME SHA".
    Content {
        how: String,
        sha: String,
    },
    Removed,
    /// "begin NAME" without a completion: anything may be there.
    Uncertain,
}

fn read_journals(paths: &[PathBuf]) -> BTreeMap<String, Promise> {
    let mut out = BTreeMap::new();
    for p in paths {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let promise = match f.as_slice() {
                [how @ ("fsynced" | "closed"), _, sha] => Promise::Content {
                    how: how.to_string(),
                    sha: sha.to_string(),
                },
                ["removed", _] => Promise::Removed,
                ["begin", _] => Promise::Uncertain,
                _ => panic!("{}: bad journal line {line:?}", p.display()),
            };
            out.insert(f[1].to_string(), promise);
        }
    }
    out
}

/// Checks every promise against the volume; returns (checked, uncertain).
fn check_promises(vol: &Path, journals: &[PathBuf], when: &str) -> (usize, usize) {
    let mut bad = Vec::new();
    let (mut checked, mut uncertain) = (0, 0);
    for (name, promise) in read_journals(journals) {
        let p = vol.join(&name);
        match promise {
            Promise::Uncertain => uncertain += 1,
            Promise::Removed => {
                checked += 1;
                if std::fs::symlink_metadata(&p).is_ok() {
                    bad.push(format!("{name}: removed, but exists"));
                }
            }
            Promise::Content { how, sha } => {
                checked += 1;
                match std::fs::read(&p) {
                    Ok(data) if sha_hex(&data) == sha => {}
                    Ok(data) => bad.push(format!(
                        "{name} ({how}): {} bytes with sha256 {}, journal says {sha}",
                        data.len(),
                        sha_hex(&data)
                    )),
                    Err(e) => bad.push(format!("{name} ({how}): {e}")),
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{when}: {} of {checked} journaled files are wrong:\n{}",
        bad.len(),
        bad.join("\n")
    );
    (checked, uncertain)
}

/// Two writers create, overwrite, append to, truncate and remove files and
/// journal (outside the mount, fsynced) every change only after its fsync or
/// close returned. The daemon is SIGKILLed at three different moments; after
/// each restart every journaled file must have exactly the journaled
/// content, and fsck of the whole store must find nothing: no chunk
/// referenced but missing, no chunk file left over from uncommitted writes.
#[test]
fn crash_keeps_fsynced_and_closed_files() {
    let mut d = Daemon::start();
    let vol = create(&d, "crash");
    let journals: Vec<PathBuf> = (0..2)
        .map(|i| d.dir.path().join(format!("journal-{i}")))
        .collect();
    let mut writers: Vec<Writer> = journals
        .iter()
        .enumerate()
        .map(|(i, p)| Writer {
            id: i,
            rng: Rng(0xC0FFEE + i as u64),
            files: BTreeMap::new(),
            journal: OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
            next: 0,
            records: 0,
        })
        .collect();
    for (round, run_ms) in [(1, 3000), (2, 1300), (3, 2200)] {
        let before: u64 = writers.iter().map(|w| w.records).sum();
        // An unlinked file held open across the kill: the restart must
        // delete its inode and chunks.
        let held_path = vol.join(format!("held-{round}"));
        let held = File::create_new(&held_path).unwrap();
        held.write_all_at(&pattern(round, 2 * MIB + 3), 0).unwrap();
        held.sync_all().unwrap();
        std::fs::remove_file(&held_path).unwrap();
        let (tx, rx) = mpsc::channel();
        for mut w in writers.drain(..) {
            let tx = tx.clone();
            let vol = vol.clone();
            std::thread::spawn(move || {
                // Write until the mount goes away under us.
                let e = loop {
                    if let Err(e) = w.step(&vol) {
                        break e;
                    }
                };
                let _ = tx.send((w, e));
            });
        }
        std::thread::sleep(Duration::from_millis(run_ms));
        d.kill9();
        drop(held);
        let mut errors = Vec::new();
        for _ in 0..2 {
            let (w, e) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a writer did not notice that the daemon died");
            errors.push(format!("writer {}: {e}", w.id));
            writers.push(w);
        }
        writers.sort_by_key(|w| w.id);
        let records: u64 = writers.iter().map(|w| w.records).sum::<u64>() - before;
        d.spawn();
        let (checked, uncertain) = check_promises(&vol, &journals, &format!("round {round}"));
        // What the restart had to clean up (logged by fsd's recovery).
        let log = d.log_text();
        let recovery = log
            .lines()
            .rfind(|l| l.contains("recovery:"))
            .map(|l| l[l.find("recovery:").unwrap_or(0)..].to_string())
            .unwrap_or_else(|| "nothing to recover".into());
        eprintln!(
            "round {round}: killed after {run_ms} ms; {records} journal records this round; \
             {checked} promises hold, {uncertain} files were mid-change; writers stopped with: {}; \
             {recovery}",
            errors.join("; ")
        );
        assert!(
            records > 4,
            "round {round}: the writers got almost nothing done"
        );
        assert_fsck_clean(&d, &[], &format!("after the restart of round {round}"));
    }
}

// ---------------------------------------------------------------------------
// A clean restart

/// Everything `stat`, `readlink`, `getxattr` and a read can see of a tree,
/// one line per entry, including inode numbers and all three timestamps.
fn full_snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut line = format!(
            "ino {} mode {:o} uid {} gid {} nlink {} size {} blocks {} \
             atime {}.{:09} mtime {}.{:09} ctime {}.{:09}",
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.nlink(),
            if ft.is_dir() { 0 } else { m.size() },
            m.blocks(),
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            line += &format!(" -> {}", t.display());
        } else {
            for (name, value) in all_xattrs(&p) {
                line += &format!(" xattr {name}={}", sha_hex(&value));
            }
        }
        if ft.is_file() {
            line += &format!(" sha256 {}", sha_hex(&std::fs::read(&p).unwrap()));
            // The virtual tree-hash xattr is computed from the chunk map.
            if let Some(h) = xattr(&p, "user.fsd.treehash") {
                line += &format!(" treehash {}", String::from_utf8_lossy(&h));
            }
        }
        if ft.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| rel.join(e.unwrap().file_name()))
                .collect();
            names.sort();
            stack.extend(names);
        }
        out.insert(rel.display().to_string(), line);
    }
    out
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

fn all_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    buf.truncate(n as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = xattr(p, &n).unwrap_or_else(|| panic!("getxattr {n} of {}", p.display()));
            (n, v)
        })
        .collect()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = |(s, n): (i64, i64)| libc::timespec {
        tv_sec: s,
        tv_nsec: n,
    };
    // SAFETY: valid C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts(atime), ts(mtime)].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

/// Writes a tree with every kind of entry and attribute, stops the daemon
/// with SIGTERM, starts it again and compares everything, down to inode
/// numbers, nanosecond timestamps, st_blocks and tree hashes.
#[test]
fn restart_keeps_everything() {
    let mut d = Daemon::start();
    let v = create(&d, "restart");
    for dir in ["d1/d2/d3", "empty", "sticky", "sgid"] {
        std::fs::create_dir_all(v.join(dir)).unwrap();
    }
    let files: &[(&str, usize, u32)] = &[
        ("zero", 0, 0o644),
        ("one", 1, 0o600),
        ("page-1", 4095, 0o640),
        ("chunk", MIB, 0o644),
        ("chunk+1", MIB + 1, 0o755),
        ("d1/big", 3 * MIB + MIB / 2, 0o4755),
        ("d1/d2/d3/deep", 12345, 0o000),
        ("sgid/inherits", 10, 0o2755),
    ];
    for (i, (name, len, mode)) in files.iter().enumerate() {
        let p = v.join(name);
        std::fs::write(&p, pattern(i as u64 + 1, *len)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    // A sparse file: data, a hole of whole chunks, a zero chunk written
    // explicitly (stored as a hole), data again, and a tail.
    let sparse = File::create(v.join("sparse")).unwrap();
    sparse.set_len(9 * MIB as u64 + 7).unwrap();
    sparse.write_all_at(b"head", 0).unwrap();
    sparse
        .write_all_at(&vec![0u8; MIB], 3 * MIB as u64)
        .unwrap();
    sparse
        .write_all_at(&pattern(99, 70_000), 5 * MIB as u64 - 100)
        .unwrap();
    sparse.write_all_at(b"tail", 9 * MIB as u64 + 3).unwrap();
    drop(sparse);
    // Names: long, non-ASCII, with spaces.
    let long = "L".repeat(255);
    std::fs::write(v.join(&long), b"long name").unwrap();
    std::fs::write(v.join("Ünïcødé ✓"), b"utf-8").unwrap();
    std::fs::write(v.join("with space"), b"space").unwrap();
    // Hard links across directories.
    std::fs::write(v.join("d1/linked"), pattern(7, 200_000)).unwrap();
    std::fs::hard_link(v.join("d1/linked"), v.join("linked-2")).unwrap();
    std::fs::hard_link(v.join("d1/linked"), v.join("d1/d2/linked-3")).unwrap();
    // Symlinks: relative, dangling, absolute, long.
    std::os::unix::fs::symlink("d1/d2/d3/deep", v.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", v.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../linked-2", v.join("d1/up-link")).unwrap();
    std::os::unix::fs::symlink("x/".repeat(1500), v.join("long-link")).unwrap();
    // xattrs on files and directories, empty and maximal values.
    set_xattr(&v.join("one"), "user.a", b"1");
    set_xattr(&v.join("one"), "user.empty", b"");
    set_xattr(&v.join("chunk"), "user.max", &pattern(5, 65536));
    set_xattr(&v.join("d1"), "user.dir", b"on a directory");
    set_xattr(
        &v.join("d1/linked"),
        "user.shared",
        b"seen through every link",
    );
    // Owners and special modes.
    std::os::unix::fs::lchown(v.join("d1/big"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(v.join("dangling"), Some(65534), Some(100)).unwrap();
    std::fs::set_permissions(v.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(v.join("d1/d2"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Explicit times last (creating entries changes directory mtimes).
    set_times(
        &v.join("one"),
        (1_000_000_001, 5),
        (1_100_000_000, 999_999_999),
    );
    set_times(&v.join("d1"), (1_200_000_000, 1), (1_300_000_000, 2));
    set_times(&v.join("rel-link"), (1_400_000_000, 3), (1_500_000_000, 4));
    let before = full_snapshot(&v);
    assert_eq!(
        before,
        full_snapshot(&v),
        "the tree changes by being looked at"
    );
    // The virtual tree-hash xattr must be part of what is compared.
    let hashed = before.values().filter(|l| l.contains(" treehash ")).count();
    assert_eq!(hashed, 15, "regular files with a tree hash: {before:#?}");
    d.restart();
    let after = full_snapshot(&v);
    let mut diffs = Vec::new();
    for (p, b) in &before {
        match after.get(p) {
            Some(a) if a == b => {}
            Some(a) => diffs.push(format!("{p}:\n  before {b}\n  after  {a}")),
            None => diffs.push(format!("{p}: gone after the restart")),
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("{p}: new after the restart"));
    }
    assert!(
        diffs.is_empty(),
        "the restart changed the tree:\n{}",
        diffs.join("\n")
    );
    assert_fsck_clean(&d, &[], "after the restart");
}

// ---------------------------------------------------------------------------
// A big directory

fn create_empty(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string; the descriptor is closed at once.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(
        fd >= 0,
        "create {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor we own.
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

/// Lists a directory and fails on duplicate names.
fn list_names(dir: &Path) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut dups = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if !names.insert(n.clone()) {
            dups.push(n);
        }
    }
    assert!(
        dups.is_empty(),
        "readdir returned duplicates: {:?}",
        &dups[..dups.len().min(20)]
    );
    names
}

fn assert_same_names(got: &HashSet<String>, want: &HashSet<String>, when: &str) {
    let mut missing: Vec<_> = want.difference(got).collect();
    let mut extra: Vec<_> = got.difference(want).collect();
    missing.sort();
    extra.sort();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{when}: readdir has {} names, want {}; {} missing (first {:?}), {} unexpected (first {:?})",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
}

/// 100,000 empty files in one directory: readdir returns each exactly once,
/// lookups work, and after unlinking half of them readdir returns exactly
/// the other half. Times are reported, not asserted.
#[test]
fn many_entries_directory() {
    const N: usize = 100_000;
    let d = Daemon::start();
    let v = create(&d, "many");
    let dir = v.join("big");
    std::fs::create_dir(&dir).unwrap();
    let name = |i: usize| format!("entry-{i:06}");
    let t = Instant::now();
    for i in 0..N {
        create_empty(&dir.join(name(i)));
    }
    let create_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut want: HashSet<String> = (0..N).map(name).collect();
    assert_same_names(&list_names(&dir), &want, "after creating");
    let list_s = t.elapsed().as_secs_f64();
    let mut rng = Rng(42);
    let t = Instant::now();
    for _ in 0..1000 {
        let p = dir.join(name(rng.below(N as u64) as usize));
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(m.is_file() && m.len() == 0, "{}: {m:?}", p.display());
    }
    let lookup_s = t.elapsed().as_secs_f64();
    // Unlink a random half (a seeded shuffle).
    let mut order: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let t = Instant::now();
    for &i in &order[..N / 2] {
        std::fs::remove_file(dir.join(name(i))).unwrap();
        want.remove(&name(i));
    }
    let unlink_s = t.elapsed().as_secs_f64();
    assert_same_names(&list_names(&dir), &want, "after unlinking half");
    assert_eq!(std::fs::metadata(&dir).unwrap().nlink(), 2);
    assert_fsck_clean(&d, &[], "after the big directory");
    eprintln!(
        "many_entries_directory: {N} creates in {create_s:.1} s ({:.0}/s), readdir {list_s:.2} s, \
         1000 lookups {lookup_s:.2} s, {} unlinks in {unlink_s:.1} s",
        N as f64 / create_s,
        N / 2
    );
}

// ---------------------------------------------------------------------------
// Chunk-store hygiene

/// Counts the orphan chunk files a whole-store fsck reports (0 if clean).
fn orphan_files(d: &Daemon) -> (usize, String) {
    let o = d.tokenctl(&["fsck"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let n = text.lines().filter(|l| l.contains("orphan_file")).count();
    (if o.status.success() { 0 } else { n.max(1) }, text)
}

/// A full 1 MiB chunk is sealed into the store as soon as it is written,
/// before the file is committed. If the same chunk is then rewritten,
/// zeroed, punched out or truncated away before the commit (close, fsync),
/// the sealed chunk file is referenced by nothing. fsd left it in the store
/// until the next daemon start (`tokenctl fsck`: orphan_file), so the space
/// was lost meanwhile (found by the model test at f18587c; fixed in
/// 816b50f).
#[test]
fn superseded_chunks_are_collected() {
    let mut d = Daemon::start();
    let v = create(&d, "superseded");
    type Step = fn(&File);
    let cases: [(&str, Step); 5] = [
        ("rewritten with other data", |f| {
            f.write_all_at(&pattern(2, MIB), 0).unwrap()
        }),
        ("rewritten with zeros", |f| {
            f.write_all_at(&vec![0u8; MIB], 0).unwrap()
        }),
        ("truncated away", |f| f.set_len(10).unwrap()),
        ("punched out", |f| {
            use std::os::fd::AsRawFd;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: a valid descriptor.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, MIB as i64) };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        }),
        ("unlinked while open (the one case that is handled)", |_| {}),
    ];
    let mut failures = Vec::new();
    for (i, (what, step)) in cases.iter().enumerate() {
        let p = v.join(format!("f{i}"));
        let f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        // A full chunk: sealed into the store at once, not yet committed.
        f.write_all_at(&pattern(100 + i as u64, MIB), 0).unwrap();
        if i == 4 {
            std::fs::remove_file(&p).unwrap();
        }
        step(&f);
        drop(f);
        let (n, report) = orphan_files(&d);
        if n > 0 {
            failures.push(format!(
                "chunk {what} before the close: {n} orphan chunk files\n{report}"
            ));
            // Start the next case from a clean store.
            d.ok(&["fsck", "--repair"]);
        }
    }
    // A restart collects them, so this is a leak while the daemon runs.
    d.restart();
    assert_fsck_clean(&d, &[], "after a restart");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Reads chunk 0 of `p` with O_DIRECT (so every read reaches fsd, which pins
/// the chunk it reads) until `stop` is set.
fn hammer_reads(p: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    // O_DIRECT wants an aligned buffer.
    let mut raw = vec![0u8; MIB + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + MIB];
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = f.read_at(buf, 0);
        n += 1;
    }
    n
}

/// The same supersession as above, while other descriptors read the chunk.
/// A read pins the chunk it reads; when the commit discards the superseded
/// chunk at that moment, `remove_unpinned` skips it and nothing tries again,
/// so the file stays in the store, referenced by nothing, until the daemon
/// restarts. (Found by the model test as an occasional orphan chunk.)
#[test]
fn superseded_chunks_read_concurrently_are_collected() {
    let d = Daemon::start();
    let v = create(&d, "superseded-read");
    let p = v.join("f");
    let f = File::create_new(&p).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || hammer_reads(p, stop))
        })
        .collect();
    const ROUNDS: u64 = 200;
    for i in 0..ROUNDS {
        // A full chunk is sealed at once, not yet committed; give the
        // sealer a moment so the readers read (and pin) that chunk.
        f.write_all_at(&pattern(1000 + i, MIB), 0).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // Supersede it: the truncate's commit discards it.
        f.set_len(10).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    drop(f);
    let (n, report) = orphan_files(&d);
    eprintln!("{ROUNDS} superseded chunks, {reads} concurrent reads: {n} orphan chunk files");
    assert_eq!(
        n, 0,
        "{n} of {ROUNDS} superseded chunks were left in the store:\n{report}"
    );
}

/// An unlinked file that is still open is a legal state (its data must stay
/// readable), and so, after `rmdir`, is an open directory. fsck reports
/// both as `orphan_inode`, and `fsck --repair` deletes them and their chunks
/// under the open descriptor: reads then fail with ENOENT.
#[test]
fn fsck_leaves_open_unlinked_inodes_alone() {
    let d = Daemon::start();
    let v = create(&d, "fsck-open");
    let data = pattern(77, 3 * MIB + 5);
    let p = v.join("f");
    let f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(v.join("dir")).unwrap();
    let dir = File::open(v.join("dir")).unwrap();
    std::fs::remove_dir(v.join("dir")).unwrap();
    let mut failures = Vec::new();
    let o = d.tokenctl(&["fsck"]);
    if !o.status.success() {
        failures.push(format!(
            "fsck with an unlinked open file and a removed open directory ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    let o = d.tokenctl(&["fsck", "--repair"]);
    let repaired = String::from_utf8_lossy(&o.stdout).into_owned();
    // Past the page cache, so the bytes come from fsd.
    // SAFETY: a valid descriptor.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    let mut back = vec![0u8; data.len()];
    match f.read_exact_at(&mut back, 0) {
        Ok(()) if back == data => {}
        Ok(()) => failures.push(format!(
            "after fsck --repair the open file reads different data:\n{repaired}"
        )),
        Err(e) => failures.push(format!(
            "after fsck --repair the open file cannot be read: {e}\n{repaired}"
        )),
    }
    if let Err(e) = dir.metadata() {
        failures.push(format!(
            "after fsck --repair the open directory cannot be fstat'ed: {e}"
        ));
    }
    drop(f);
    drop(dir);
    // close(2) returns before the daemon has the RELEASE (FUSE sends it in
    // the background), so the last close of an unlinked inode reaches fsd a
    // moment later: fsck may still see it until then, never after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.tokenctl(&["fsck"]).status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_fsck_clean(&d, &[], "after closing both");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
