//! Issue 17, item 2: a small zip whose deflated member inflates to GiBs must
//! not fill the hot tier, keep working after its reader is gone, or pass the
//! cache budget; an absurd ratio is refused at attach. Everything hostile
//! runs as `nobody` through setpriv, on a real mount.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A daemon whose directory `nobody` can pass through (the archives live
/// there too).
fn daemon(config: &str) -> Option<Daemon> {
    if !have("setpriv") || !have("python3") {
        eprintln!("setpriv or python3 missing; skipping");
        return None;
    }
    let d = Daemon::start_with_config(Some(config));
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    Some(d)
}

/// A zip with one deflated member `bomb.bin` of `mib` MiB of zeros, made
/// as a bomb maker would: one deflated MiB of zeros, byte-aligned and
/// independent of what precedes it (a full flush), repeated, which is what
/// zlib itself would produce, without spending minutes compressing zeros.
fn make_bomb(path: &Path, mib: u64) {
    let script = r#"
import sys, zipfile, zlib
path, n = sys.argv[1], int(sys.argv[2])
c = zlib.compressobj(6, zlib.DEFLATED, -15)
one = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
class Repeat:
    def compress(self, data):
        assert len(data) == 1 << 20
        return one
    def flush(self):
        return b"\x03\x00"  # a final, empty fixed-Huffman block
zipfile._get_compressor = lambda *a, **k: Repeat()
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    zi = zipfile.ZipInfo("bomb.bin")
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.external_attr = 0o644 << 16
    with z.open(zi, "w", force_zip64=True) as f:
        buf = bytes(1 << 20)
        for _ in range(n):
            f.write(buf)
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(mib.to_string()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Attaches `zip` as nobody and returns the volume ID.
fn attach_nobody(d: &Daemon, zip: &Path) -> String {
    let id = ok(
        tokenctl_nobody(d, &["attach", zip.to_str().unwrap()]),
        "attach as nobody",
    );
    id.trim().to_string()
}

/// Bytes under STATE/cache (0 if it does not exist).
fn cache_dir_bytes(state: &Path) -> u64 {
    tree_bytes(&state.join("cache"))
}

/// Blocks the files under `dir` occupy, in bytes.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            }
            Err(_) => 0,
        })
        .sum()
}

/// Used blocks of the filesystem holding `p`, in bytes.
fn fs_used(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

/// The daemon's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb << 10
}

/// The daemon's CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Python run as nobody: preads `file` at each offset and prints, for each,
/// the count of non-zero bytes among the `len` read and the length read.
const PREADS: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
n = int(sys.argv[2])
for off in sys.argv[3:]:
    b = os.pread(fd, n, int(off))
    print(len(b), len(b) - b.count(0))
os.close(fd)
"#;

/// Detaches as nobody, retrying while the kernel still has the reader's
/// file open (its release arrives shortly after close).
fn detach_nobody(d: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = tokenctl_nobody(d, &["detach", id]);
        if o.status.success() {
            return;
        }
        assert_eq!(o.status.code(), Some(5), "detach: {o:?}");
        assert!(Instant::now() < deadline, "detach stayed busy: {o:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the log line of the volume's cache release and returns the
/// bytes it freed and what the cache held after.
fn cache_release(d: &Daemon) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = d.log_text();
        if let Some(l) = log
            .lines()
            .rev()
            .find(|l| l.contains("volume released: freed"))
        {
            let num = |after: &str| -> u64 {
                let i = l.find(after).unwrap() + after.len();
                l[i..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            return (num("volume released: freed "), num("cache now "));
        }
        assert!(
            Instant::now() < deadline,
            "no cache release logged after detach; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bomb of the issue: 4 GiB of zeros in a 4 MB zip, attached and read
/// by nobody with a ratio limit that lets it in. `head -c 1` and far reads
/// return zeros, the hot tier and STATE/cache do not grow, memory stays
/// within the budget, nothing runs once the reader is gone, and detach frees
/// the cache.
#[test]
fn four_gib_bomb_read_by_nobody_stays_within_the_budget() {
    let Some(d) = daemon("[cache]\nbudget_mb = 32\n[archive]\nmax_ratio = 2000\n") else {
        return;
    };
    let zip = d.dir.path().join("bomb.zip");
    make_bomb(&zip, 4096);
    let zsize = std::fs::metadata(&zip).unwrap().len();
    assert!(zsize < 5 << 20, "the bomb is small: {zsize} bytes");
    let id = attach_nobody(&d, &zip);
    let member = d.vol(&id).join("bomb.bin");
    assert_eq!(std::fs::metadata(&member).unwrap().len(), 4 << 30);
    let pid = d.pid();
    let (used0, state0) = (fs_used(&d.state), tree_bytes(&d.state));
    let rss0 = rss(pid);

    let head = nobody("head")
        .arg("-c")
        .arg("1")
        .arg(&member)
        .output()
        .unwrap();
    assert_eq!(ok(head, "head -c 1").as_bytes(), b"\0");

    // Far reads, in an order that jumps back and forth; the last byte too.
    let size: u64 = 4 << 30;
    let mut rng = Rng::new(17);
    let mut offs: Vec<String> = (0..24)
        .map(|_| (rng.below(size - 4096) & !4095).to_string())
        .collect();
    offs.push((size - 4096).to_string());
    offs.push((size - 1).to_string());
    let out = ok(
        nobody("/usr/bin/python3")
            .arg("-c")
            .arg(PREADS)
            .arg(&member)
            .arg("4096")
            .args(&offs)
            .output()
            .unwrap(),
        "preads as nobody",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), offs.len(), "{out}");
    for (l, off) in lines.iter().zip(&offs) {
        let want_len = (size - off.parse::<u64>().unwrap()).min(4096);
        assert_eq!(*l, format!("{want_len} 0"), "pread at {off}");
    }

    // Nothing decompressed went to disk, and memory stayed near the budget
    // (32 MiB, plus slack for buffers the allocator keeps).
    assert_eq!(
        cache_dir_bytes(&d.state),
        0,
        "STATE/cache holds inflated data"
    );
    // What fsd wrote is under STATE; the tests running beside this one
    // write to the same filesystem, so its growth is only checked against
    // the inflated size (a file deleted while open would show only there).
    let grown = tree_bytes(&d.state).saturating_sub(state0);
    assert!(grown < 64 << 20, "STATE grew by {grown} bytes");
    let fs_grown = fs_used(&d.state).saturating_sub(used0);
    assert!(
        fs_grown < 1 << 30,
        "the state filesystem grew by {fs_grown} bytes"
    );
    let rss1 = rss(pid);
    assert!(
        rss1 < rss0 + (32 << 20) + (96 << 20),
        "daemon RSS grew from {rss0} to {rss1} bytes with a 32 MiB budget"
    );

    // The reader is gone: the daemon does no more work for it.
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let t1 = cpu_ticks(pid);
    assert!(
        t1 - t0 < 30,
        "the daemon used {} ticks of CPU after the reader closed",
        t1 - t0
    );
    assert_eq!(cache_dir_bytes(&d.state), 0);

    detach_nobody(&d, &id);
    let (freed, left) = cache_release(&d);
    assert!(freed > 0, "detach freed nothing");
    assert_eq!(left, 0, "the cache still holds {left} bytes after detach");
}

/// With the default limit (1000:1) the bomb is refused at attach, naming
/// the member, with the exit code of an argument error.
#[test]
fn absurd_ratio_is_refused_at_attach() {
    let Some(d) = daemon("") else {
        return;
    };
    let zip = d.dir.path().join("bomb.zip");
    make_bomb(&zip, 256);
    let o = tokenctl_nobody(&d, &["attach", zip.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bomb.bin") && err.contains("max_ratio") && err.contains("1000:1"),
        "{err}"
    );
    let vols = d.json(&["volumes"]);
    assert_eq!(vols.as_array().map(|v| v.len()), Some(0), "{vols}");
}

/// A 96 MiB deflated member of text whose every line is unique, read at
/// random offsets and lengths as nobody through a cache far smaller than
/// the member, matches `unzip -p` byte for byte; so does a sequential copy
/// (which also checks the CRC).
#[test]
fn random_reads_of_a_large_member_match_unzip() {
    if !have("unzip") || !have("zip") {
        eprintln!("zip or unzip missing; skipping");
        return;
    }
    let Some(d) = daemon("[cache]\nbudget_mb = 8\ncheckpoint_mb = 2\n") else {
        return;
    };
    let src = d.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let script = r#"
import sys
words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta"]
x = 88172645463325252
out = []
total = 0
target = 96 << 20
while total < target:
    x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
    line = b"%012d " % total + b" ".join(words[(x >> s) & 7] for s in range(0, 30, 3)) + b"\n"
    out.append(line)
    total += len(line)
open(sys.argv[1], "wb").write(b"".join(out)[:target])
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(src.join("big.txt")));
    let zip = d.dir.path().join("big.zip");
    sh(&src, &format!("zip -q -6 {} big.txt", zip.display()));
    std::fs::set_permissions(&zip, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reference = d.dir.path().join("ref.txt");
    sh(
        d.dir.path(),
        &format!(
            "unzip -p {} big.txt > {}",
            zip.display(),
            reference.display()
        ),
    );
    let want = std::fs::read(&reference).unwrap();
    assert_eq!(want.len(), 96 << 20);

    let id = attach_nobody(&d, &zip);
    let member = d.vol(&id).join("big.txt");
    // Random reads, written out by nobody's python as offset:hex-digest
    // pairs would hide the bytes; compare the bytes themselves instead.
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = open(sys.argv[2], "wb")
args = sys.argv[3:]
for i in range(0, len(args), 2):
    b = os.pread(fd, int(args[i + 1]), int(args[i]))
    out.write(b"%d\n" % len(b))
    out.write(b)
"#;
    let mut rng = Rng::new(99);
    let mut args = Vec::new();
    let mut reqs = Vec::new();
    for i in 0..150 {
        let off = if i % 10 == 9 {
            want.len() as u64 - rng.below(5000)
        } else {
            rng.below(want.len() as u64)
        };
        let len = 1 + rng.below(if i % 3 == 0 { 1 << 20 } else { 9000 });
        args.push(off.to_string());
        args.push(len.to_string());
        reqs.push((off as usize, len as usize));
    }
    let got_path = d.dir.path().join("got.bin");
    std::fs::write(&got_path, b"").unwrap();
    std::fs::set_permissions(&got_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    ok(
        nobody("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(&member)
            .arg(&got_path)
            .args(&args)
            .output()
            .unwrap(),
        "random preads as nobody",
    );
    let got = std::fs::read(&got_path).unwrap();
    let mut p = 0usize;
    for (off, len) in reqs {
        let nl = p + got[p..].iter().position(|&b| b == b'\n').unwrap();
        let n: usize = std::str::from_utf8(&got[p..nl]).unwrap().parse().unwrap();
        let end = (off + len).min(want.len());
        assert_eq!(n, end - off, "length read at {off}");
        assert!(
            got[nl + 1..nl + 1 + n] == want[off..end],
            "bytes at {off}..{end} differ from unzip -p"
        );
        p = nl + 1 + n;
    }
    assert_eq!(p, got.len());

    // A sequential copy as nobody matches too (the CRC is checked at its end).
    let copy = d.dir.path().join("copy.txt");
    std::fs::write(&copy, b"").unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    ok(
        nobody("cp").arg(&member).arg(&copy).output().unwrap(),
        "cp as nobody",
    );
    assert!(
        std::fs::read(&copy).unwrap() == want,
        "cp differs from unzip -p"
    );
    assert!(!d.log_text().contains("CRC-32 mismatch"));
    assert_eq!(cache_dir_bytes(&d.state), 0);

    detach_nobody(&d, &id);
    let (freed, left) = cache_release(&d);
    assert!(freed > 0 && left == 0, "freed {freed}, left {left}");
}

/// A member whose data does not match its CRC-32 reads as EIO at the end,
/// with a log line naming the member, and never serves its last bytes.
#[test]
fn crc_mismatch_is_eio_naming_the_member() {
    let Some(d) = daemon("") else {
        return;
    };
    let zip = d.dir.path().join("bad.zip");
    let script = r#"
import sys, zipfile, struct
path = sys.argv[1]
data = bytes((i * 7 + i // 1000) % 251 for i in range(3 << 20))
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    zi = zipfile.ZipInfo("dir/bad.bin")
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.external_attr = 0o644 << 16
    z.writestr(zi, data)
b = bytearray(open(path, "rb").read())
# Flip the CRC-32 in the central directory entry (offset 16 of it).
cd = b.rfind(b"PK\x01\x02")
b[cd + 16] ^= 0xFF
lh = b.find(b"PK\x03\x04")
b[lh + 14] ^= 0xFF
open(path, "wb").write(bytes(b))
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(&zip));
    std::fs::set_permissions(&zip, std::fs::Permissions::from_mode(0o644)).unwrap();
    let id = attach_nobody(&d, &zip);
    let member = d.vol(&id).join("dir/bad.bin");
    let o = nobody("cat").arg(&member).output().unwrap();
    assert!(!o.status.success(), "cat of a corrupt member succeeded");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Input/output error"),
        "{o:?}"
    );
    assert!(
        o.stdout.len() < 3 << 20,
        "the end of a corrupt member was served"
    );
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("CRC-32 mismatch") && l.contains("dir/bad.bin")),
        "{log}"
    );
}
