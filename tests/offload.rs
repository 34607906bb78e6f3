//! Offload tokens against a real mount: tokenctl offload-read / offload-write
//! / copy / token, every rejection case, point-in-time semantics, lifetimes,
//! permissions, the zero token, and copy_file_range through cp and Python.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use sha2::Digest;

const SUB: usize = 512;

fn sha(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

struct Vols {
    d: Daemon,
    a: PathBuf,
    b: PathBuf,
}

fn setup_with(config: Option<&str>) -> Vols {
    let d = Daemon::start_with_config(config);
    let a = d.vol(d.ok(&["create", "a"]).trim());
    let b = d.vol(d.ok(&["create", "b"]).trim());
    Vols { d, a, b }
}

fn setup() -> Vols {
    setup_with(None)
}

fn read_token(v: &Vols, src: &Path, extra: &[&str]) -> (PathBuf, u64) {
    let tf = v.d.dir.path().join(format!("tok-{}", rand_suffix()));
    let mut args = vec![
        "offload-read",
        src.to_str().unwrap(),
        "-o",
        tf.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = v.d.ok(&args);
    (tf, out.trim().parse().unwrap())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn write_token(v: &Vols, tf: &Path, dst: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["offload-write", tf.to_str().unwrap(), dst.to_str().unwrap()];
    args.extend_from_slice(extra);
    v.d.tokenctl(&args)
}

/// Subtoken surgery for the rejection tests: edit a field and fix the CRC,
/// so only the intended defect remains.
fn fix_crc(s: &mut [u8]) {
    s[36..40].fill(0);
    let c = crc32c::crc32c(s);
    s[36..40].copy_from_slice(&c.to_be_bytes());
}

fn subtokens(tf: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(tf).unwrap();
    assert_eq!(b.len() % SUB, 0);
    b.chunks(SUB).map(<[u8]>::to_vec).collect()
}

fn save(v: &Vols, subs: &[Vec<u8>]) -> PathBuf {
    let p = v.d.dir.path().join(format!("bad-{}", rand_suffix()));
    std::fs::write(&p, subs.concat()).unwrap();
    p
}

#[test]
fn offload_read_write_roundtrip_and_sharing() {
    let v = setup();
    let data = pattern(1, 5 * 1024 * 1024 + 1000);
    std::fs::write(v.a.join("src"), &data).unwrap();
    let (tf, len) = read_token(&v, &v.a.join("src"), &[]);
    assert_eq!(len, data.len() as u64);
    assert_eq!(std::fs::metadata(&tf).unwrap().len() as usize % SUB, 0);
    assert_eq!(
        std::fs::metadata(&tf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = v.d.json(&["status"])["hot_bytes"].as_u64().unwrap();
    let o = write_token(&v, &tf, &v.b.join("dst"), &["--json"]);
    assert!(o.status.success(), "{o:?}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["written"], data.len());
    assert_eq!(
        r["shared"],
        data.len(),
        "aligned native-to-native shares every chunk"
    );
    assert_eq!(std::fs::read(v.b.join("dst")).unwrap(), data);
    assert_eq!(
        v.d.json(&["status"])["hot_bytes"],
        before,
        "no new hot-tier data"
    );
    // A token can be written many times, to many files, at offsets.
    let o = write_token(
        &v,
        &tf,
        &v.b.join("dst2"),
        &[
            "--offset",
            "1M",
            "--token-offset",
            "512",
            "--length",
            "4096",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let d2 = std::fs::read(v.b.join("dst2")).unwrap();
    assert_eq!(d2.len(), (1 << 20) + 4096);
    assert_eq!(&d2[1 << 20..], &data[512..512 + 4096]);
    assert!(d2[..1 << 20].iter().all(|&b| b == 0));
    // A token offset at or past the represented length is an error.
    let o = write_token(
        &v,
        &tf,
        &v.b.join("dst3"),
        &["--token-offset", &len.to_string()],
    );
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    // Offsets must be multiples of 512.
    let o = write_token(&v, &tf, &v.b.join("dst3"), &["--offset", "100"]);
    assert_eq!(o.status.code(), Some(6));
    let o = v.d.tokenctl(&[
        "offload-read",
        v.a.join("src").to_str().unwrap(),
        "--offset",
        "100",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(6));
    // A length that ends at EOF need not be a multiple of 512.
    let (_, l) = read_token(&v, &v.a.join("src"), &["--offset", "5M"]);
    assert_eq!(l, 1000);
    // Several ranges, in order.
    let (tf, l) = read_token(
        &v,
        &v.a.join("src"),
        &["--range", "1M:512", "--range", "0:1024"],
    );
    assert_eq!(l, 1536);
    assert!(
        write_token(&v, &tf, &v.b.join("ranges"), &[])
            .status
            .success()
    );
    let got = std::fs::read(v.b.join("ranges")).unwrap();
    assert_eq!(&got[..512], &data[1 << 20..(1 << 20) + 512]);
    assert_eq!(&got[512..], &data[..1024]);
    let fsck = v.d.tokenctl(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

#[test]
fn tokens_of_many_sizes_roundtrip_shuffled() {
    let v = setup();
    let data = pattern(2, 4 * 1024 * 1024);
    std::fs::write(v.a.join("src"), &data).unwrap();
    // More ranges make longer tokens: 2, 3, 5 and 9 subtokens.
    for (ranges, want_subs) in [(1usize, 2usize), (26, 3), (90, 5), (220, 9)] {
        let mut args: Vec<String> = Vec::new();
        for i in 0..ranges {
            args.push("--range".into());
            args.push(format!("{}:512", (i * 4096) % (4 << 20)));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (tf, len) = read_token(&v, &v.a.join("src"), &a);
        assert_eq!(len, 512 * ranges as u64);
        let mut subs = subtokens(&tf);
        assert_eq!(subs.len(), want_subs, "{ranges} ranges");
        subs.reverse();
        subs.rotate_left(1);
        let shuffled = save(&v, &subs);
        let dst = v.b.join(format!("d{ranges}"));
        let o = write_token(&v, &shuffled, &dst, &[]);
        assert!(o.status.success(), "{ranges}: {o:?}");
        let got = std::fs::read(&dst).unwrap();
        for i in 0..ranges {
            let at = (i * 4096) % (4 << 20);
            assert_eq!(&got[i * 512..(i + 1) * 512], &data[at..at + 512]);
        }
        // Inspect decodes it without showing the key.
        let info = v.d.json(&["token", "inspect", tf.to_str().unwrap()]);
        assert_eq!(info["subtokens"], want_subs);
        assert_eq!(info["state"], "valid");
        assert_eq!(info["ranges"].as_array().unwrap().len(), ranges);
        assert!(!info.to_string().contains("key\":\""), "{info}");
    }
}

#[test]
fn every_rejection_leaves_the_destination_unchanged() {
    let v = setup();
    std::fs::write(v.a.join("src"), pattern(3, 3 << 20)).unwrap();
    std::fs::write(v.a.join("other"), pattern(4, 1 << 20)).unwrap();
    let dst = v.b.join("dst");
    std::fs::write(&dst, pattern(5, 2 << 20)).unwrap();
    let before = sha(&dst);
    // Enough ranges for 3 subtokens.
    let mut args: Vec<String> = Vec::new();
    for i in 0..30 {
        args.push("--range".into());
        args.push(format!("{}:512", i * 8192));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (tf, _) = read_token(&v, &v.a.join("src"), &a);
    let (other, _) = read_token(&v, &v.a.join("other"), &[]);
    let subs = subtokens(&tf);
    assert_eq!(subs.len(), 3);
    let check = |file: &Path, code: i32, what: &str| {
        let o = write_token(&v, file, &dst, &[]);
        assert_eq!(o.status.code(), Some(code), "{what}: {o:?}");
        assert_eq!(sha(&dst), before, "{what}: destination changed");
    };
    // Missing subtoken.
    check(&save(&v, &subs[..2]), 17, "missing");
    // A subtoken of another token (foreign group).
    let mut f = subs.clone();
    f.push(subtokens(&other)[0].clone());
    check(&save(&v, &f), 18, "foreign");
    // Inconsistent N.
    let mut f = subs.clone();
    f[1][32..34].copy_from_slice(&4u16.to_be_bytes());
    fix_crc(&mut f[1]);
    check(&save(&v, &f), 19, "inconsistent count");
    // S = 0 and S > N.
    for s in [0u16, 7] {
        let mut f = subs.clone();
        f[2][30..32].copy_from_slice(&s.to_be_bytes());
        fix_crc(&mut f[2]);
        check(&save(&v, &f), 20, "sequence");
    }
    // Two different subtokens with the same S.
    let mut f = subs.clone();
    let mut dup = f[0].clone();
    dup[30..32].copy_from_slice(&2u16.to_be_bytes());
    fix_crc(&mut dup);
    f.push(dup);
    check(&save(&v, &f), 21, "conflicting duplicate");
    // A byte-identical duplicate is accepted (documented).
    let mut f = subs.clone();
    f.push(subs[1].clone());
    let o = write_token(&v, &save(&v, &f), &v.b.join("dup-ok"), &[]);
    assert!(o.status.success(), "identical duplicate: {o:?}");
    // Bad CRC, bad header, bad length.
    let mut f = subs.clone();
    f[0][100] ^= 1;
    check(&save(&v, &f), 13, "crc");
    let mut f = subs.clone();
    f[0][7] = 0xF9;
    fix_crc(&mut f[0]);
    check(&save(&v, &f), 13, "header length field");
    let mut raw = subs.concat();
    raw.pop();
    let p = v.d.dir.path().join("short");
    std::fs::write(&p, raw).unwrap();
    check(&p, 16, "length");
    // Unknown provider P.
    let mut f = subs.clone();
    for s in f.iter_mut() {
        s[14] ^= 0xFF;
        fix_crc(s);
    }
    check(&save(&v, &f), 22, "unknown provider");
    // Unknown R: change the key inside the logical token (fragment bytes
    // 64..96 of subtoken 1).
    let mut f = subs.clone();
    f[0][48 + 70] ^= 0x55;
    fix_crc(&mut f[0]);
    check(&save(&v, &f), 12, "unknown key");
    // Revoked.
    let (rv, _) = read_token(&v, &v.a.join("src"), &[]);
    v.d.ok(&["token", "revoke", rv.to_str().unwrap()]);
    check(&rv, 14, "revoked");
    // Expired.
    let (ex, _) = read_token(&v, &v.a.join("src"), &["--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    check(&ex, 15, "expired");
    // The original token still works.
    let o = write_token(&v, &tf, &v.b.join("fine"), &[]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn any_flipped_bit_fails() {
    let v = setup();
    std::fs::write(v.a.join("src"), pattern(6, 1 << 20)).unwrap();
    let (tf, _) = read_token(&v, &v.a.join("src"), &[]);
    let good = std::fs::read(&tf).unwrap();
    let dst = v.b.join("dst");
    std::fs::write(&dst, b"keep").unwrap();
    // Every header byte of every subtoken, and a sample of the rest.
    let positions: Vec<usize> = (0..good.len())
        .filter(|i| i % SUB < 48 || i % 37 == 0)
        .collect();
    let bad = v.d.dir.path().join("flipped");
    for (n, &i) in positions.iter().enumerate() {
        let mut f = good.clone();
        f[i] ^= 1 << (n % 8);
        std::fs::write(&bad, &f).unwrap();
        let o = write_token(&v, &bad, &dst, &[]);
        assert!(
            !o.status.success(),
            "flipping a bit of byte {i} was accepted"
        );
    }
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
}

#[test]
fn persistent_tokens_keep_a_snapshot_under_concurrent_writes() {
    let v = setup();
    let src = v.a.join("src");
    let original = pattern(7, 3 << 20);
    std::fs::write(&src, &original).unwrap();
    let (tf, _) = read_token(&v, &src, &[]);
    // A writer keeps rewriting the source while the token is written out.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let src = src.clone();
        std::thread::spawn(move || {
            let mut i = 100;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&src, pattern(i, 3 << 20)).unwrap();
                i += 1;
            }
        })
    };
    for n in 0..5 {
        let dst = v.b.join(format!("copy{n}"));
        let o = write_token(&v, &tf, &dst, &[]);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            original,
            "copy {n} is the point-in-time image"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    // Deleting the source does not affect the token either.
    std::fs::remove_file(&src).unwrap();
    let o = write_token(&v, &tf, &v.b.join("after-delete"), &[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(v.b.join("after-delete")).unwrap(), original);
    // Revoking releases the snapshot's chunks.
    let before = v.d.json(&["status"])["hot_chunks"].as_u64().unwrap();
    v.d.ok(&["token", "revoke", tf.to_str().unwrap()]);
    for f in ["copy0", "copy1", "copy2", "copy3", "copy4", "after-delete"] {
        std::fs::remove_file(v.b.join(f)).unwrap();
    }
    let after = v.d.json(&["status"])["hot_chunks"].as_u64().unwrap();
    assert!(
        after + 3 <= before,
        "the snapshot's 3 chunks were released: {before} -> {after}"
    );
    let fsck = v.d.tokenctl(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
}

#[test]
fn change_vulnerable_tokens_are_revoked_by_overlapping_changes() {
    let v = setup();
    let src = v.a.join("src");
    std::fs::write(&src, pattern(8, 4 << 20)).unwrap();
    let (tf, _) = read_token(
        &v,
        &src,
        &["--type", "change-vulnerable", "--range", "1M:1M"],
    );
    // A concurrent writer outside the token's range leaves it valid.
    let writer = {
        let src = src.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            for i in 0..200u64 {
                f.write_all_at(&pattern(i, 4096), 3 << 20).unwrap();
            }
        })
    };
    for n in 0..3 {
        let o = write_token(&v, &tf, &v.b.join(format!("ok{n}")), &[]);
        assert!(o.status.success(), "{o:?}");
    }
    writer.join().unwrap();
    assert_eq!(
        std::fs::read(v.b.join("ok0")).unwrap(),
        &pattern(8, 4 << 20)[1 << 20..2 << 20]
    );
    // An overlapping write revokes it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"x", (1 << 20) + 100).unwrap();
    }
    let o = write_token(&v, &tf, &v.b.join("no"), &[]);
    assert_eq!(o.status.code(), Some(14), "{o:?}");
    let info = v.d.json(&["token", "inspect", tf.to_str().unwrap()]);
    assert_eq!(info["state"], "revoked");
    // A truncate into the range revokes, as does a punched hole.
    let (t2, _) = read_token(
        &v,
        &src,
        &["--type", "change-vulnerable", "--range", "2M:1M"],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(2 << 20 | 4096)
        .unwrap();
    assert_eq!(
        write_token(&v, &t2, &v.b.join("no2"), &[]).status.code(),
        Some(14)
    );
    let (t3, _) = read_token(
        &v,
        &src,
        &["--type", "change-vulnerable", "--range", "0:4096"],
    );
    run(Command::new("fallocate")
        .args(["--punch-hole", "--offset", "0", "--length", "4096"])
        .arg(&src));
    assert_eq!(
        write_token(&v, &t3, &v.b.join("no3"), &[]).status.code(),
        Some(14)
    );
}

#[test]
fn lifetimes_inactivity_restart_and_delete_token() {
    let mut v = setup_with(Some("[tokens]\ninactivity_secs = 2\n"));
    std::fs::write(v.a.join("src"), pattern(9, 100_000)).unwrap();
    let (tf, _) = read_token(&v, &v.a.join("src"), &["--ttl", "60"]);
    // Use keeps it alive past the inactivity timeout.
    for n in 0..4 {
        std::thread::sleep(Duration::from_millis(1000));
        let o = write_token(&v, &tf, &v.b.join(format!("d{n}")), &[]);
        assert!(o.status.success(), "use {n}: {o:?}");
    }
    // Tokens survive a restart.
    v.d.restart();
    v.a = v.d.mnt.join("volumes/a");
    v.b = v.d.mnt.join("volumes/b");
    let o = write_token(&v, &tf, &v.b.join("after-restart"), &[]);
    assert!(o.status.success(), "{o:?}");
    // Idle for longer than the timeout: expired.
    std::thread::sleep(Duration::from_millis(3000));
    let o = write_token(&v, &tf, &v.b.join("late"), &[]);
    assert_eq!(o.status.code(), Some(15), "{o:?}");
    // --delete-token revokes after one use.
    let (t2, _) = read_token(&v, &v.a.join("src"), &[]);
    assert!(
        write_token(&v, &t2, &v.b.join("once"), &["--delete-token"])
            .status
            .success()
    );
    assert_eq!(
        write_token(&v, &t2, &v.b.join("twice"), &[]).status.code(),
        Some(14)
    );
    // The list shows them, never a key; ttl limits are enforced.
    let list = v.d.json(&["token", "list"]);
    assert!(list.as_array().unwrap().len() >= 2);
    let o = v.d.tokenctl(&[
        "offload-read",
        v.a.join("src").to_str().unwrap(),
        "--ttl",
        "999999",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(6));
    let limits = v.d.json(&["token", "limits"]);
    assert_eq!(limits["maximum_token_lifetime_secs"], 86400);
    assert_eq!(limits["default_inactivity_timeout_secs"], 2);
}

#[test]
fn max_subtokens_negotiation() {
    let v = setup();
    std::fs::write(v.a.join("src"), pattern(10, 1 << 20)).unwrap();
    let src = v.a.join("src");
    let mut args = vec!["offload-read", src.to_str().unwrap(), "-o", "/dev/null"];
    let ranges: Vec<String> = (0..60).map(|i| format!("{}:512", i * 1024)).collect();
    for r in &ranges {
        args.push("--range");
        args.push(r);
    }
    let mut tight = args.clone();
    tight.extend_from_slice(&["--max-subtokens", "2"]);
    let o = v.d.tokenctl(&tight);
    assert_eq!(o.status.code(), Some(23), "{o:?}");
    let msg = String::from_utf8_lossy(&o.stderr);
    let need: usize = msg
        .split("needs ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {msg}"));
    assert!(need > 2, "{msg}");
    let mut enough = args.clone();
    let n = need.to_string();
    enough.extend_from_slice(&["--max-subtokens", &n]);
    assert!(v.d.tokenctl(&enough).status.success());
}

#[test]
fn zero_token() {
    let v = setup();
    let dst = v.b.join("dst");
    std::fs::write(&dst, vec![0xAB; 3 << 20]).unwrap();
    let mut z = vec![0u8; SUB];
    z[0..4].copy_from_slice(&0xFFFF_0001u32.to_be_bytes());
    z[6..8].copy_from_slice(&0x01F8u16.to_be_bytes());
    let zp = v.d.dir.path().join("zero");
    std::fs::write(&zp, &z).unwrap();
    let o = write_token(&v, &zp, &dst, &["--offset", "512K", "--length", "2M"]);
    assert!(o.status.success(), "{o:?}");
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len(), 3 << 20);
    assert!(got[..512 << 10].iter().all(|&b| b == 0xAB));
    assert!(
        got[512 << 10..(512 << 10) + (2 << 20)]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(got[(512 << 10) + (2 << 20)..].iter().all(|&b| b == 0xAB));
    // Any other non-zero byte makes it invalid.
    for i in [4usize, 8, 100, 511] {
        let mut bad = z.clone();
        bad[i] = 1;
        std::fs::write(&zp, &bad).unwrap();
        let o = write_token(&v, &zp, &dst, &["--length", "512"]);
        assert_eq!(o.status.code(), Some(11), "byte {i}: {o:?}");
    }
    let info = v.d.tokenctl(&["token", "inspect", zp.to_str().unwrap()]);
    assert!(!info.status.success());
}

#[test]
fn permissions_are_checked_for_the_caller() {
    if !have("setpriv") {
        eprintln!("setpriv missing; skipping");
        return;
    }
    let v = setup();
    std::fs::set_permissions(v.d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::write(v.a.join("secret"), pattern(11, 4096)).unwrap();
    std::fs::set_permissions(v.a.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(v.a.join("public"), pattern(12, 4096)).unwrap();
    std::fs::set_permissions(v.a.join("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(v.b.join("roots"), b"root's").unwrap();
    let tmp = v.d.dir.path().join("nobody");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                TOKENCTL,
                "--state",
            ])
            .arg(&v.d.state)
            .args(args)
            .output()
            .unwrap()
    };
    let tf = tmp.join("t");
    let o = as_nobody(&[
        "offload-read",
        v.a.join("secret").to_str().unwrap(),
        "-o",
        tf.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(7), "read of a 0600 file: {o:?}");
    let o = as_nobody(&[
        "offload-read",
        v.a.join("public").to_str().unwrap(),
        "-o",
        tf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let o = as_nobody(&[
        "offload-write",
        tf.to_str().unwrap(),
        v.b.join("roots").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(7), "write into root's file: {o:?}");
    assert_eq!(std::fs::read(v.b.join("roots")).unwrap(), b"root's");
    // The token is a bearer capability: root may redeem nobody's token.
    let o = write_token(&v, &tf, &v.b.join("mine"), &[]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn sources_and_destinations_of_every_kind() {
    let v = setup();
    // An archive member and a whole medium as sources.
    let src = v.d.dir.path().join("t");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("member"), pattern(13, 2_000_000)).unwrap();
    let tar = v.d.dir.path().join("t.tar");
    tar_of(&tar, &src, "member");
    let id = v.d.attach(&tar);
    let (tf, _) = read_token(&v, &v.d.vol(&id).join("member"), &[]);
    assert!(
        write_token(&v, &tf, &v.b.join("from-tar"), &[])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read(v.b.join("from-tar")).unwrap(),
        pattern(13, 2_000_000)
    );
    let (tm, _) = read_token(&v, &v.d.mnt.join("media").join(&id), &[]);
    assert!(
        write_token(&v, &tm, &v.b.join("medium"), &[])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read(v.b.join("medium")).unwrap(),
        std::fs::read(&tar).unwrap()
    );
    // An archive destination is read-only.
    let o = write_token(&v, &tf, &v.d.vol(&id).join("member"), &[]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    // Outside the mount: refused, unless tokenctl copy --fallback.
    let o =
        v.d.tokenctl(&["offload-read", tar.to_str().unwrap(), "-o", "/dev/null"]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let out = v.d.dir.path().join("fallback-copy");
    let o =
        v.d.tokenctl(&["copy", tar.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6));
    v.d.ok(&[
        "copy",
        "--fallback",
        tar.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(sha(&out), sha(&tar));
}

#[test]
fn copy_loops_and_shares_a_gib_without_new_data() {
    let v = setup();
    let src = v.a.join("big");
    // 1 GiB of distinct data, written once.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..1024u64 {
            let mut c = pattern(i + 1000, 1 << 20);
            c[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&c).unwrap();
        }
    }
    let before = v.d.json(&["status"]);
    let out = v.d.json(&[
        "copy",
        src.to_str().unwrap(),
        v.b.join("big").to_str().unwrap(),
    ]);
    assert_eq!(out["bytes"], 1u64 << 30);
    assert_eq!(out["shared"], 1u64 << 30);
    let after = v.d.json(&["status"]);
    assert_eq!(
        after["hot_bytes"], before["hot_bytes"],
        "no hot-tier data added"
    );
    assert_eq!(sha(&src), sha(&v.b.join("big")));
    // cp (copy_file_range) shares too.
    run(Command::new("cp").arg(&src).arg(v.b.join("big-cp")));
    assert_eq!(v.d.json(&["status"])["hot_bytes"], before["hot_bytes"]);
    assert_eq!(sha(&src), sha(&v.b.join("big-cp")));
    let th = |p: &Path| {
        run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.fsd.treehash"])
            .arg(p))
    };
    assert_eq!(th(&src), th(&v.b.join("big")));
}

#[test]
fn copy_file_range_in_the_mount() {
    let v = setup();
    let data = pattern(14, 3 * 1024 * 1024 + 777);
    std::fs::write(v.a.join("src"), &data).unwrap();
    // cp (coreutils 9 uses copy_file_range).
    run(Command::new("cp").arg(v.a.join("src")).arg(v.b.join("cp")));
    assert_eq!(std::fs::read(v.b.join("cp")).unwrap(), data);
    // Python: short copies, copies at offsets, unaligned, and from an
    // archive member.
    let script = r##"
import os, sys
a, b = sys.argv[1], sys.argv[2]
src = open(a + "/src", "rb").read()
fi = os.open(a + "/src", os.O_RDONLY)
fo = os.open(b + "/py", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
n = os.copy_file_range(fi, fo, 1000, 5, 7)
assert n == 1000, n
n = os.copy_file_range(fi, fo, 2 * 1048576, 1048576, 1048576)
assert n == 2 * 1048576, n
got = os.pread(fo, 4 * 1048576, 0)
want = bytearray(3 * 1048576)
want[7:1007] = src[5:1005]
want[1048576:3 * 1048576] = src[1048576:3 * 1048576]
assert got == bytes(want), "content"
# short at the end of the source
n = os.copy_file_range(fi, fo, 10 * 1048576, 3 * 1048576, 0)
assert n == 777, n
os.close(fi); os.close(fo)
print("ok")
"##;
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&v.a)
        .arg(&v.b));
    assert_eq!(out.trim(), "ok");
    let fsck = v.d.tokenctl(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
}
