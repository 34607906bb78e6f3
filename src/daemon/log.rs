//! The daemon's log sink and panic hook.
//!
//! **Why.** The log used to be a `std::sync::Mutex<File>` written by
//! whichever thread logged. On a full state filesystem a write failed, the
//! subscriber reported that on stderr (also the full log file), that failed
//! too and the thread panicked holding the mutex; every later log call then
//! panicked on the poisoned lock, the signal thread included, so the mount
//! died and SIGTERM was ignored. A slow or stopped log target (a terminal
//! held with ^S, a hung disk) likewise stalled every FUSE request that
//! logged.
//!
//! **How.** A logging thread formats its line into a buffer of its own and
//! hands it to a bounded queue with `try_send`: it never waits and never
//! takes a lock that can poison. One writer thread (`fsd-log`) drains the
//! queue into the target. A line that does not fit in the queue, or whose
//! write fails (ENOSPC, EIO), is dropped and counted; the first line written
//! after drops is followed by a warning that says how many were lost and
//! why. The log file is created mode 0600 (an existing one is set to 0600)
//! and rotated at `[log] max_size_mb`: `fsd.log` becomes `fsd.log.1`, which
//! becomes `fsd.log.2`, up to `[log] keep` old files.
//!
//! A panic's message and backtrace go the same way (see
//! [`install_panic_hook`]); if the queue cannot take them they are written
//! straight to stderr, ignoring any error.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines queued for the writer at most; a burst beyond it is dropped, not
/// waited for.
const QUEUE: usize = 8192;
/// Bytes queued at most: lines that name long paths must not make the
/// queue's memory grow with what callers choose to name.
const QUEUE_BYTES: usize = 4 << 20;

/// Name of the writer thread (the panic hook must not wait for itself).
const THREAD: &str = "fsd-log";

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(SyncSender<()>),
}

static TX: OnceLock<SyncSender<Msg>> = OnceLock::new();
/// Lines lost so far: queue full or write failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bytes in the queue now (see [`QUEUE_BYTES`]).
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Where the log goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Standard error (`fsd mount` in the foreground).
    Stderr,
    /// A file with a size cap (`fsd mount --daemon`: `STATE/fsd.log`).
    File {
        path: PathBuf,
        /// Rotate when the file would grow past this many bytes.
        max_bytes: u64,
        /// Old files kept (`fsd.log.1` … `fsd.log.<keep>`); 0 keeps none.
        keep: u32,
        /// Point stdout and stderr at the current file, so output the
        /// daemon does not log itself (a library's message) lands there too.
        redirect_stdio: bool,
    },
}

/// Lines dropped since start (queue full or a failed write).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts the writer thread, installs the tracing subscriber at `level`
/// (`RUST_LOG` wins) and the panic hook. Call once, before other threads
/// exist: the writer blocks the shutdown signals, which a dedicated thread
/// of the daemon waits for.
pub fn init(level: &str, target: Target) {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let ansi =
        matches!(target, Target::Stderr) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut out = Output::new(target);
    out.open();
    if TX.set(tx).is_ok() {
        spawn_writer(out, rx);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(Sink)
        .try_init();
    install_panic_hook();
}

/// Runs the writer with SIGTERM, SIGINT and SIGHUP blocked: the daemon
/// waits for them on one thread, and a thread that does not block them
/// could take one with its default action (exit without unmounting).
fn spawn_writer(mut out: Output, rx: Receiver<Msg>) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigs), Some(&mut old)).is_ok();
    let spawned = std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || {
            let mut reported = 0;
            for msg in rx {
                match msg {
                    Msg::Line(l) => {
                        QUEUED.fetch_sub(l.len(), Ordering::AcqRel);
                        if out.write(&l) {
                            reported = out.report_drops(reported);
                        } else {
                            DROPPED.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Msg::Flush(done) => {
                        let _ = done.try_send(());
                    }
                }
            }
        });
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    if spawned.is_err() {
        // No writer: every line is counted as dropped, the panic hook
        // falls back to stderr.
        let _ = std::io::stderr().write_all(b"fsd: cannot start the log thread; logging is off\n");
    }
}

/// Queues one formatted line; false (and counted) if it was dropped.
fn submit(line: Vec<u8>) -> bool {
    let len = line.len();
    let sent = QUEUED.fetch_add(len, Ordering::AcqRel) + len <= QUEUE_BYTES
        && TX
            .get()
            .is_some_and(|tx| tx.try_send(Msg::Line(line)).is_ok());
    if !sent {
        QUEUED.fetch_sub(len, Ordering::AcqRel);
    }
    if !sent {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    sent
}

/// Waits up to `timeout` for the lines queued so far to be written: at
/// exit, so the last lines ("fsd stopped") are not lost with the process.
pub fn flush(timeout: Duration) {
    let Some(tx) = TX.get() else { return };
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    if tx.send_timeout_compat(Msg::Flush(done_tx), timeout) {
        let _ = done_rx.recv_timeout(timeout);
    }
}

/// `SyncSender::send` with a deadline (std has none): retries `try_send`
/// while the queue is full.
trait SendTimeout {
    fn send_timeout_compat(&self, m: Msg, timeout: Duration) -> bool;
}

impl SendTimeout for SyncSender<Msg> {
    fn send_timeout_compat(&self, mut m: Msg, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.try_send(m) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    m = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

/// The tracing writer: each event is formatted into a [`LineBuf`], which
/// queues it when dropped. Writing to it never fails.
struct Sink;

struct LineBuf(Vec<u8>);

impl Write for LineBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            submit(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineBuf;
    fn make_writer(&'a self) -> LineBuf {
        LineBuf(Vec::with_capacity(256))
    }
}

/// The writer thread's side: the current target and its size.
struct Output {
    target: Target,
    file: Option<File>,
    size: u64,
    /// Why the last line was lost, for the drop report.
    last_error: Option<String>,
    /// A failed write left part of a line: the next one starts on a new
    /// line.
    torn: bool,
}

impl Output {
    fn new(target: Target) -> Self {
        Output {
            target,
            file: None,
            size: 0,
            last_error: None,
            torn: false,
        }
    }

    /// Opens (creating it 0600) the log file; for stderr, nothing.
    fn open(&mut self) {
        let Target::File {
            path,
            redirect_stdio,
            ..
        } = &self.target
        else {
            return;
        };
        match open_private(path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                if *redirect_stdio {
                    let _ = nix::unistd::dup2_stdout(&f);
                    let _ = nix::unistd::dup2_stderr(&f);
                }
                self.file = Some(f);
            }
            Err(e) => self.last_error = Some(format!("opening {}: {e}", path.display())),
        }
    }

    /// `fsd.log.<keep-1>` → `fsd.log.<keep>` … `fsd.log` → `fsd.log.1`, then
    /// a fresh `fsd.log`. Renames need no free space, so this works on a
    /// full filesystem too (and frees the oldest file's blocks).
    fn rotate(&mut self) {
        let Target::File { path, keep, .. } = &self.target else {
            return;
        };
        self.file = None;
        let numbered = |i: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if *keep == 0 {
            let _ = std::fs::remove_file(path);
        } else {
            for i in (1..*keep).rev() {
                let _ = std::fs::rename(numbered(i), numbered(i + 1));
            }
            let _ = std::fs::rename(path, numbered(1));
        }
        self.open();
    }

    /// Writes one line; false if it was lost.
    fn write(&mut self, line: &[u8]) -> bool {
        let r = match &self.target {
            Target::Stderr => std::io::stderr().lock().write_all(line),
            Target::File { max_bytes, .. } => {
                let max = *max_bytes;
                if self.file.is_none() {
                    self.open();
                }
                if self.file.is_some() && self.size > 0 && self.size + line.len() as u64 > max {
                    self.rotate();
                }
                match &mut self.file {
                    Some(f) => {
                        let r = if self.torn {
                            f.write_all(b"\n").and_then(|()| f.write_all(line))
                        } else {
                            f.write_all(line)
                        };
                        // The file's own size: a partial write grew it too,
                        // and so does what reaches it through stderr.
                        let size = f.metadata().map(|m| m.len()).unwrap_or(self.size);
                        match &r {
                            Ok(()) => self.torn = false,
                            Err(_) => self.torn |= size > self.size,
                        }
                        self.size = size;
                        r
                    }
                    None => return false,
                }
            }
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                self.last_error = Some(e.to_string());
                false
            }
        }
    }

    /// After a line was written: if lines were lost since the last report,
    /// writes how many and why. Returns the count now reported.
    fn report_drops(&mut self, reported: u64) -> u64 {
        let now = DROPPED.load(Ordering::Relaxed);
        if now == reported {
            return reported;
        }
        let why = self
            .last_error
            .take()
            .map(|e| format!("last write failed: {e}"))
            .unwrap_or_else(|| "the log queue was full".into());
        let line = format!(
            "{}  WARN {} log line{} dropped since start ({}); fsd kept serving\n",
            crate::util::fmt_utc(crate::fs::types::Timespec::now().as_nanos()),
            now,
            if now == 1 { " was" } else { "s were" },
            why
        );
        if self.write(line.as_bytes()) {
            now
        } else {
            reported
        }
    }
}

/// Opens `path` for appending, creating it 0600, and makes an existing
/// file 0600 too: the log names files and users, and the README promises
/// that the state directory is private.
fn open_private(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o7777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Replaces the default panic hook (which writes to stderr and, through
/// `eprintln!`-like code, could itself fail on a full disk) with one that
/// sends the message, the thread and a backtrace to the log, or to stderr
/// if the log cannot take it, ignoring errors. Request handlers catch the
/// unwind and answer EIO (see `crate::fuse` and the control service).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_string();
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string payload)".into()
        };
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "an unknown location".into());
        let bt = std::backtrace::Backtrace::force_capture();
        let text = format!(
            "{} ERROR panic in thread '{name}' at {at}: {msg}\nbacktrace:\n{bt}\n",
            crate::util::fmt_utc(crate::fs::types::Timespec::now().as_nanos()),
        );
        if name == THREAD || !submit(text.clone().into_bytes()) {
            let _ = std::io::stderr().write_all(text.as_bytes());
        } else {
            // The panic may end the process (a thread nothing catches):
            // give the writer a moment to put it on disk.
            flush(Duration::from_secs(1));
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_cap_and_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fsd.log");
        std::fs::write(&path, b"old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut out = Output::new(Target::File {
            path: path.clone(),
            max_bytes: 100,
            keep: 2,
            redirect_stdio: false,
        });
        out.open();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an existing log is made private");
        let line = [b'x'; 39];
        for _ in 0..20 {
            assert!(out.write(&line));
        }
        for p in ["fsd.log", "fsd.log.1", "fsd.log.2"] {
            let len = std::fs::metadata(dir.path().join(p)).unwrap().len();
            assert!(len <= 100 && len > 0, "{p}: {len} bytes");
        }
        assert!(!dir.path().join("fsd.log.3").exists(), "keep = 2");
    }
}
