//! Issue 17 (loose ends): tokenctl as a well-behaved command-line tool. A
//! reader that goes away (`tokenctl status | head -1`) ends it quietly, like
//! coreutils, while a daemon that hangs up is still reported as an error.

mod common;

use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use common::*;

/// Runs tokenctl with `args` and a stdout pipe whose reader is already
/// closed, so its first write meets EPIPE (and SIGPIPE).
fn with_closed_stdout(d: &Daemon, args: &[&str]) -> Output {
    let (r, w) = std::io::pipe().expect("pipe");
    drop(r);
    Command::new(TOKENCTL)
        .arg("--state")
        .arg(&d.state)
        .args(args)
        .stdout(w)
        .output()
        .expect("running tokenctl")
}

#[test]
fn a_closed_stdout_ends_tokenctl_quietly() {
    let d = Daemon::start();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["volumes"],
        &["volumes", "--json"],
    ] {
        let o = with_closed_stdout(&d, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "tokenctl {args:?} panicked on a closed stdout: {err}"
        );
        // Killed by SIGPIPE like `cat`, never the panic exit code 101.
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGPIPE),
            "tokenctl {args:?} on a closed stdout: {} {err}",
            o.status
        );
    }
    // The daemon is unaffected.
    assert!(d.ok(&["status"]).contains("mountpoint:"));
}

#[test]
fn a_daemon_that_hangs_up_is_an_error_not_a_silent_death() {
    // A fake daemon that accepts and at once closes every connection: the
    // request write meets EPIPE (or the reply read meets EOF). Either way
    // tokenctl must say so and exit with a code, not die of SIGPIPE.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => return,
            }
        }
    });
    for _ in 0..3 {
        let o = Command::new(TOKENCTL)
            .arg("--socket")
            .arg(&sock)
            // A large request makes EPIPE on the write the likely outcome.
            .args(["status", &"x".repeat(120_000)])
            .output()
            .expect("running tokenctl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.signal(), None, "tokenctl died of a signal: {err}");
        assert!(
            !o.status.success() && o.status.code() != Some(101),
            "tokenctl against a hung-up daemon: {} {err}",
            o.status
        );
        assert!(err.contains("tokenctl: "), "no error message: {err}");
    }
    server.join().unwrap();
}

#[test]
fn status_shows_the_count_of_dropped_log_lines() {
    let d = Daemon::start();
    let st = d.json(&["status"]);
    assert_eq!(
        st["log_dropped"], 0,
        "a healthy daemon drops no log lines: {st}"
    );
    assert!(
        d.ok(&["status"]).contains("log dropped: 0 lines"),
        "the human status shows it too"
    );
}
