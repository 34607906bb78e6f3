//! Holds FUSE requests until start-up has finished.
//!
//! `fsd mount` mounts as soon as the state directory is locked, and opens
//! the catalog, reloads volumes and attaches `--attach` archives while the
//! kernel mount, the FUSE handshake and the worker threads come up on the
//! other cores. A request that arrives in that window must not see a half
//! loaded tree (a volume that is missing only because it has not been
//! reloaded yet), so each one waits here until start-up ends: it is then
//! served against the complete tree, or, if start-up failed, answered with
//! EIO just before the mount is removed.
//!
//! A request made by the daemon itself while it starts is answered at once
//! with ENOENT: start-up waits for nothing but itself, so waiting would
//! hang it. That happens when a path start-up opens lies inside the mount
//! (a volume's medium that is a file of another volume, an `--attach` path
//! or a state directory under the mountpoint). Before the mount existed
//! such a path did not resolve either, so the outcome is the same: the
//! volume is reloaded as missing, or the attach fails.
//!
//! After start-up a pass costs one atomic load.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};

const STARTING: u8 = 0;
const OPEN: u8 = 1;
const FAILED: u8 = 2;

/// What a request does at the gate.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start-up is over: serve it.
    Serve,
    /// Start-up failed: answer EIO.
    Failed,
    /// Made by the daemon while it starts: answer ENOENT, do not wait.
    OwnDuringStartUp,
}

/// The start-up gate shared by the FUSE adapter and the daemon.
pub struct StartGate {
    state: AtomicU8,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Default for StartGate {
    fn default() -> Self {
        StartGate {
            state: AtomicU8::new(STARTING),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }
}

impl StartGate {
    /// Start-up finished: every waiting and later request is served.
    pub fn open(&self) {
        self.set(OPEN);
    }

    /// Start-up failed: every waiting and later request gets EIO.
    pub fn fail(&self) {
        self.set(FAILED);
    }

    fn set(&self, to: u8) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // The first outcome sticks: a failure after opening (a later
        // clean-up path) must not turn away requests of a running mount.
        let _ = self
            .state
            .compare_exchange(STARTING, to, Ordering::Release, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// True once start-up has ended, either way.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) != STARTING
    }

    /// Waits until start-up has ended, unless thread `tid` (the request's
    /// caller as FUSE reports it) is one of the daemon's own.
    pub fn pass(&self, tid: u32) -> Verdict {
        match self.state.load(Ordering::Acquire) {
            OPEN => Verdict::Serve,
            FAILED => Verdict::Failed,
            _ => self.wait(tid),
        }
    }

    #[cold]
    fn wait(&self, tid: u32) -> Verdict {
        if own_thread(tid) {
            tracing::warn!(
                "fsd itself asked the mount for a path while starting (a medium, --attach \
                 path or state directory inside the mountpoint?); answered ENOENT"
            );
            return Verdict::OwnDuringStartUp;
        }
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match self.state.load(Ordering::Acquire) {
                OPEN => return Verdict::Serve,
                FAILED => return Verdict::Failed,
                _ => g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// Whether `tid` is a thread of this process. FUSE reports the calling
/// thread's ID (in the daemon's PID namespace).
fn own_thread(tid: u32) -> bool {
    tid != 0 && std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A thread of another process, as FUSE would report it.
    fn stranger() -> u32 {
        // PID 1 is never this test process.
        1
    }

    fn waiter(g: &Arc<StartGate>) -> mpsc::Receiver<Verdict> {
        let (tx, rx) = mpsc::channel();
        let g = g.clone();
        std::thread::spawn(move || tx.send(g.pass(stranger())).unwrap());
        rx
    }

    #[test]
    fn requests_wait_until_start_up_ends() {
        let g = Arc::new(StartGate::default());
        let rx = waiter(&g);
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a request passed while starting"
        );
        g.open();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Verdict::Serve));
        assert_eq!(g.pass(stranger()), Verdict::Serve);
    }

    #[test]
    fn a_failed_start_turns_requests_away_and_stays_failed() {
        let g = Arc::new(StartGate::default());
        let rx = waiter(&g);
        g.fail();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(Verdict::Failed)
        );
        g.open();
        assert_eq!(g.pass(stranger()), Verdict::Failed);
    }

    #[test]
    fn ended_says_whether_start_up_is_over_either_way() {
        let g = StartGate::default();
        assert!(!g.ended());
        g.open();
        assert!(g.ended());
        let g = StartGate::default();
        g.fail();
        assert!(g.ended());
    }

    #[test]
    fn an_open_gate_stays_open() {
        let g = StartGate::default();
        g.open();
        g.fail();
        assert_eq!(g.pass(stranger()), Verdict::Serve);
    }

    #[test]
    fn the_daemons_own_requests_never_wait_while_starting() {
        let g = StartGate::default();
        let me = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(g.pass(me), Verdict::OwnDuringStartUp);
        g.open();
        assert_eq!(g.pass(me), Verdict::Serve);
    }
}
