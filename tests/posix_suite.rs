//! The POSIX conformance suite pjdfstest (the Rust rewrite, from crates.io)
//! on an ext4 loop mount and on a native volume, through
//! `scripts/posix-suite`: every test case that passes on ext4 must pass on
//! fsd. The whole suite runs (about 400 cases, some seconds per filesystem
//! once installed; the first run builds the suite into `.tools/`).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn pjdfstest_passes_on_fsd_wherever_it_passes_on_ext4() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("pjdfstest needs root (loop mounts, mknod, user switching); skipping");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/posix-suite");
    let o = Command::new(script)
        .env("FSD", FSD)
        .env("TOKENCTL", TOKENCTL)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "posix-suite failed ({}):\n{out}\n{err}",
        o.status
    );
    // Not vacuous: the suite ran, and most of it passed on both.
    let passing = out
        .lines()
        .find_map(|l| l.strip_prefix("posix-suite: of "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no summary:\n{out}\n{err}"));
    assert!(passing > 300, "only {passing} cases pass on ext4:\n{out}");
    assert!(out.contains(", 0 do not"), "{out}");
}
