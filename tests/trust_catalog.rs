//! Issue 17, item 4: a lost or damaged catalog never costs a chunk.
//!
//! Real mounts, real programs: the catalog is zeroed or has a page
//! damaged beside a full chunk store, start-up refuses and deletes nothing,
//! and `fsd restore-catalog` brings the files back from a backup; an
//! unclean restart removes only the chunks the last run wrote and never
//! committed, and quarantines older unreferenced ones; backups are made on
//! an interval and at clean shutdown.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes `files` (relative path, content) into `dir` and returns their
/// SHA-256 by path.
fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, data) in files {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        out.insert(name.to_string(), sha_hex(data));
    }
    out
}

/// Reads the files back through the mount with `cat` and compares hashes.
fn assert_files(dir: &Path, want: &BTreeMap<String, String>) {
    for (name, sha) in want {
        let o = Command::new("cat").arg(dir.join(name)).output().unwrap();
        assert!(
            o.status.success(),
            "cat {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(&sha_hex(&o.stdout), sha, "{name}: content differs");
    }
}

/// The chunk files in the store (not the quarantine), by name.
fn chunk_names(state: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for fan in std::fs::read_dir(state.join("chunks")).unwrap().flatten() {
        let n = fan.file_name().to_string_lossy().into_owned();
        if n.len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
            let f = f.file_name().to_string_lossy().into_owned();
            if f.len() == 64 {
                out.insert(f);
            }
        }
    }
    out
}

fn quarantine_names(state: &Path) -> BTreeSet<String> {
    std::fs::read_dir(state.join("chunks/.quarantine"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn backups(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("backup"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("catalog-") && n.ends_with(".db")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `fsd mount` that is expected to refuse: its exit code and stderr.
fn start_refused(d: &Daemon) -> (i32, String) {
    let mut c = Command::new(FSD)
        .arg("mount")
        .arg(&d.mnt)
        .arg("--state")
        .arg(&d.state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            force_unmount(&d.mnt);
            panic!("fsd mount did not refuse to start: it is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!is_mounted(&d.mnt), "a refused start left a mount behind");
    (status.code().unwrap_or(-1), err)
}

fn restore_catalog(state: &Path) -> String {
    let o = Command::new(FSD)
        .args(["restore-catalog", "--state"])
        .arg(state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "restore-catalog failed: {err}");
    err
}

/// A Python snippet against an SQLite file (the test's own view of it).
fn sqlite(db: &Path, script: &str) -> String {
    run(Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n{script}"
        ))
        .arg(db))
}

fn some_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big", pattern(1, 3 << 20)),
        ("small", pattern(2, 200_000)),
        ("dir/mid", pattern(3, 1_500_000)),
        ("dir/tiny", b"tiny\n".to_vec()),
    ]
}

/// The case: catalog.db emptied to 0 bytes, no WAL, a full store.
/// Start-up refuses (exit 4, saying how to recover) and deletes nothing,
/// again on a second try; the documented restore brings every file back.
#[test]
fn zeroed_catalog_refuses_start_and_restore_brings_files_back() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let want = write_files(&d.vol("v"), &some_files());
    d.stop();
    assert!(!backups(&d.state).is_empty(), "no backup at clean shutdown");
    let chunks = chunk_names(&d.state);
    assert!(chunks.len() >= 6, "only {} chunk files", chunks.len());

    let cat = d.state.join("catalog.db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cat)
        .unwrap()
        .set_len(0)
        .unwrap();
    let _ = std::fs::remove_file(d.state.join("catalog.db-wal"));
    for attempt in 0..2 {
        let (code, err) = start_refused(&d);
        assert_eq!(code, 4, "attempt {attempt}: exit code; stderr: {err}");
        assert!(
            err.contains("missing or empty")
                && err.contains("fsd restore-catalog --state")
                && err.contains("chunk files"),
            "attempt {attempt}: {err}"
        );
        assert_eq!(chunk_names(&d.state), chunks, "a chunk file was deleted");
        assert_eq!(
            std::fs::metadata(&cat).unwrap().len(),
            0,
            "catalog replaced"
        );
    }

    let said = restore_catalog(&d.state);
    assert!(said.contains("quarantine"), "{said}");
    d.spawn();
    assert_files(&d.vol("v"), &want);
    assert_eq!(chunk_names(&d.state), chunks);
    let s = d.json(&["status"]);
    assert_eq!(s["quarantined_chunks"], 0, "{s}");
}

/// A catalog with 64 bytes flipped inside a leaf page of a table with many
/// rows, beside a full store: the full check exits 8 with the recovery
/// steps (offline and through the daemon), a start after an unclean
/// shutdown is refused, nothing is deleted, and the restore works.
#[test]
fn corrupted_catalog_is_reported_and_restored() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let mut files = some_files();
    let names: Vec<String> = (0..1500).map(|i| format!("many/file-{i:05}")).collect();
    for (i, n) in names.iter().enumerate() {
        files.push((n.as_str(), format!("{i}\n").into_bytes()));
    }
    let want = write_files(&d.vol("v"), &files);
    d.stop();
    let chunks = chunk_names(&d.state);
    let cat = d.state.join("catalog.db");

    // A leaf page in the middle of the dentries table, from SQLite's own
    // page map; 64 bytes from its header on are flipped.
    let page: u64 = sqlite(
        &cat,
        "rows = c.execute(\"SELECT pageno FROM dbstat WHERE name = 'dentries' AND pagetype = 'leaf' ORDER BY pageno\").fetchall()\nprint(rows[len(rows) // 2][0])",
    )
    .trim()
    .parse()
    .unwrap();
    assert!(page > 1);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cat)
        .unwrap();
    let off = (page - 1) * 4096;
    let mut buf = [0u8; 64];
    f.read_exact_at(&mut buf, off).unwrap();
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.write_all_at(&buf, off).unwrap();
    drop(f);

    // Offline: no daemon runs.
    let o = d.tokenctl(&["fsck", "--catalog"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(8), "{out}{err}");
    assert!(out.contains("PROBLEM: catalog"), "{out}");
    assert!(err.contains("fsd restore-catalog --state"), "{err}");

    // The last run ended cleanly, so start-up does not check the pages:
    // the daemon serves, a listing of the damaged directory fails with a
    // clear error in the log, and the full check through it exits 8.
    d.spawn();
    let ls = Command::new("ls")
        .arg(d.vol("v").join("many"))
        .output()
        .unwrap();
    assert!(
        !ls.status.success(),
        "listing a damaged directory succeeded"
    );
    assert!(
        d.log_text().contains("the catalog is damaged"),
        "{}",
        d.log_text()
    );
    let o = d.tokenctl(&["fsck", "--catalog"]);
    assert_eq!(
        o.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // After an unclean shutdown the bounded check refuses the start.
    d.kill9();
    let (code, err) = start_refused(&d);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("the catalog is damaged") && err.contains("fsd restore-catalog"),
        "{err}"
    );
    assert_eq!(chunk_names(&d.state), chunks, "a chunk file was deleted");
    assert!(quarantine_names(&d.state).is_empty());

    let said = restore_catalog(&d.state);
    assert!(said.contains("kept as"), "{said}");
    d.spawn();
    assert_files(&d.vol("v"), &want);
    let o = d.tokenctl(&["fsck", "--catalog"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(chunk_names(&d.state), chunks);
}

/// kill -9 with a file's chunks written but not committed, and an older
/// chunk file no row references: the restart removes the uncommitted ones
/// (written since the last start, provably never committed) and moves the
/// older one to the quarantine, which `tokenctl status` counts.
#[test]
fn unclean_restart_removes_new_uncommitted_chunks_and_quarantines_old_ones() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let want = write_files(&d.vol("v"), &[("kept", pattern(7, 2 << 20))]);

    // An unreferenced chunk file from long before this run.
    let old = sha_hex(b"an old chunk nobody references");
    let old_path = d.state.join("chunks").join(&old[..2]).join(&old);
    std::fs::create_dir_all(old_path.parent().unwrap()).unwrap();
    std::fs::write(&old_path, pattern(8, 10_000)).unwrap();
    run(Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&old_path));

    let before = chunk_names(&d.state);
    // Full chunks are sealed into the store while the file stays open;
    // nothing commits them before close or fsync.
    let open = std::fs::File::create(d.vol("v").join("pending")).unwrap();
    open.write_all_at(&pattern(9, 8 << 20), 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let uncommitted = loop {
        let new: BTreeSet<String> = chunk_names(&d.state).difference(&before).cloned().collect();
        if new.len() >= 4 {
            break new;
        }
        assert!(Instant::now() < deadline, "chunks were not sealed");
        std::thread::sleep(Duration::from_millis(50));
    };
    d.kill9();
    drop(open);

    d.spawn();
    let now = chunk_names(&d.state);
    let q = quarantine_names(&d.state);
    for h in &uncommitted {
        assert!(
            !now.contains(h) && !q.contains(h),
            "uncommitted chunk {h} kept"
        );
    }
    assert!(!old_path.exists(), "the old chunk is still in the store");
    assert_eq!(q, BTreeSet::from([old.clone()]), "quarantine");
    assert!(
        d.log_text().contains("uncommitted chunk files"),
        "{}",
        d.log_text()
    );
    let s = d.json(&["status"]);
    assert_eq!(s["quarantined_chunks"], 1, "{s}");
    assert_eq!(s["quarantined_bytes"], 10_000, "{s}");
    assert!(d.ok(&["status"]).contains("quarantine:  1 chunk files"));
    assert_files(&d.vol("v"), &want);
}

/// `fsck --repair` moves a chunk file no catalog row knows (`orphan_file`)
/// into the quarantine instead of deleting it: against a wrong or restored
/// catalog it is data. `tokenctl status` counts it, a restart keeps it, and
/// the files in use are untouched.
#[test]
fn fsck_repair_quarantines_orphan_chunk_files() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let want = write_files(&d.vol("v"), &[("kept", pattern(11, 3 << 20))]);
    let before = chunk_names(&d.state);

    let orphan = sha_hex(b"a chunk file no catalog row knows");
    let path = d.state.join("chunks").join(&orphan[..2]).join(&orphan);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let data = pattern(12, 10_000);
    std::fs::write(&path, &data).unwrap();

    let o = d.tokenctl(&["fsck"]);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(8), "fsck finds the orphan: {report}");
    assert!(report.contains("PROBLEM: orphan_file"), "{report}");
    assert!(path.exists(), "plain fsck changes nothing");

    let repaired = d.ok(&["fsck", "--repair"]);
    assert!(
        repaired.contains("repaired: orphan_file") && repaired.contains(".quarantine"),
        "{repaired}"
    );
    assert!(!path.exists(), "the orphan left the store");
    assert_eq!(quarantine_names(&d.state), BTreeSet::from([orphan.clone()]));
    let q = d.state.join("chunks/.quarantine").join(&orphan);
    assert_eq!(std::fs::read(&q).unwrap(), data, "kept whole, not deleted");
    assert_eq!(chunk_names(&d.state), before, "chunks in use untouched");
    let s = d.json(&["status"]);
    assert_eq!(s["quarantined_chunks"], 1, "{s}");
    assert_eq!(s["quarantined_bytes"], 10_000, "{s}");
    d.ok(&["fsck"]);

    // Still there after a restart (deleted only after quarantine_days).
    d.restart();
    assert_eq!(std::fs::read(&q).unwrap(), data);
    assert_eq!(d.json(&["status"])["quarantined_chunks"], 1);
    assert_files(&d.vol("v"), &want);
}

/// With `backup_interval_secs = 1` backups appear while the daemon runs,
/// each a sound copy marked as a backup, at most `backup_keep` are kept,
/// and a clean shutdown adds one holding the last change.
#[test]
fn backups_on_an_interval_and_at_shutdown() {
    let mut d = Daemon::start_with_config(Some(
        "[catalog]\nbackup_interval_secs = 1\nbackup_keep = 3\n",
    ));
    d.ok(&["create", "v"]);
    std::fs::write(d.vol("v").join("first"), b"1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    while seen.len() < 5 {
        seen.extend(backups(&d.state));
        assert!(
            Instant::now() < deadline,
            "only {} backups; log:\n{}",
            seen.len(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kept = backups(&d.state);
    assert!(kept.len() <= 3, "{} backups kept", kept.len());
    let id = std::fs::read_to_string(d.state.join("chunks/.store-id")).unwrap();
    for b in &kept {
        let got = sqlite(
            b,
            "print(c.execute('PRAGMA integrity_check').fetchone()[0])\nprint(dict(c.execute('SELECT key, value FROM settings').fetchall()))",
        );
        assert!(got.starts_with("ok\n"), "{}: {got}", b.display());
        assert!(got.contains(id.trim()), "{}: {got}", b.display());
        assert!(got.contains("'store_run': 'backup'"), "{got}");
    }
    let newest = kept.last().unwrap().clone();
    // No restore under a running daemon.
    let o = Command::new(FSD)
        .args(["restore-catalog", "--state"])
        .arg(&d.state)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    std::fs::write(d.vol("v").join("last"), b"2").unwrap();
    d.stop();
    let after = backups(&d.state);
    let last = after.last().unwrap();
    assert!(*last > newest, "no backup at shutdown");
    assert!(d.log_text().contains("catalog backed up (shutdown)"));
    let n = sqlite(
        last,
        "print(c.execute('SELECT count(*) FROM dentries WHERE name = ?', (b'last',)).fetchone()[0])",
    );
    assert_eq!(n.trim(), "1", "the shutdown backup lacks the last file");
}

/// A state directory from before store identities (no ID anywhere) is
/// given one without refusing; a chunk store of another identity is
/// refused.
#[test]
fn identity_is_migrated_and_a_foreign_store_is_refused() {
    let mut d = Daemon::start();
    d.ok(&["create", "v"]);
    let want = write_files(&d.vol("v"), &some_files());
    d.stop();
    let cat = d.state.join("catalog.db");
    sqlite(
        &cat,
        "c.execute(\"DELETE FROM settings WHERE key LIKE 'store_%'\")\nc.commit()",
    );
    std::fs::remove_file(d.state.join("chunks/.store-id")).unwrap();
    std::fs::remove_file(d.state.join("chunks/.run")).unwrap();
    let chunks = chunk_names(&d.state);

    d.spawn();
    assert_files(&d.vol("v"), &want);
    let id = std::fs::read_to_string(d.state.join("chunks/.store-id")).unwrap();
    assert_eq!(id.trim().len(), 32);
    d.stop();
    assert_eq!(chunk_names(&d.state), chunks);
    let in_cat = sqlite(
        &cat,
        "print(c.execute(\"SELECT value FROM settings WHERE key = 'store_id'\").fetchone()[0])",
    );
    assert_eq!(in_cat.trim(), id.trim());

    std::fs::write(
        d.state.join("chunks/.store-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let (code, err) = start_refused(&d);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("is store 0123456789abcdef0123456789abcdef"),
        "{err}"
    );
    assert_eq!(chunk_names(&d.state), chunks);
    // Nor does a backup of this catalog fit that store.
    let before = std::fs::read(&cat).unwrap();
    let o = Command::new(FSD)
        .args(["restore-catalog", "--state"])
        .arg(&d.state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("not restored") && err.contains("store"),
        "{err}"
    );
    assert_eq!(std::fs::read(&cat).unwrap(), before, "catalog changed");
}
