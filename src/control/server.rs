//! The daemon side of the control socket.
//!
//! The socket is open to every local user, so everything a connection can
//! make the daemon spend is bounded (issue 17, item 7):
//!
//! - **Connections.** Each accepted connection takes a slot before its thread
//!   starts: at most `control.max_connections` for all non-root users
//!   together and `control.max_per_uid` for any one of them. Root has its own
//!   `control.root_connections` slots, so an operator can always get in while
//!   other users hold every other slot. A connection over a limit gets one
//!   `busy` error frame, written without blocking, and is closed at once; the
//!   accept thread never waits on a client.
//! - **Time.** A connection that sends nothing for `control.idle_secs` is
//!   closed; once the first byte of a request has arrived, the whole request
//!   must arrive within `control.request_secs`, however it trickles in. The
//!   handler's own work (indexing a huge archive, fsck, an offload copy) is
//!   not timed: only reading requests is.
//! - **Memory.** A request's declared length is checked against
//!   `control.max_request_kb` before any of its body is read, and the body is
//!   then read in pieces as it arrives, never allocated up front.
//! - **Descriptors.** A connection holds one descriptor (plus at most one
//!   passed medium while its request runs). At most one passed descriptor is
//!   kept per request; any other is closed as soon as it is received. When
//!   accept fails for lack of descriptors (EMFILE/ENFILE) the loop backs off
//!   exponentially, logs once per interval, and uses a spare descriptor it
//!   keeps for that purpose to answer and close the waiting connections, so
//!   the listen queue cannot spin the loop and no client hangs in it. The
//!   connection limits are shrunk at start, if need be, so that the control
//!   socket can hold at most a quarter of the open-file limit.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use parking_lot::Mutex;

use super::calls::Response;
use super::{Reply, Request, frame_bytes};
use crate::config::ControlConfig;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fs::perm::Caller;

/// What serves requests; implemented by the daemon's service.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request. `passed` is the descriptor the client sent with
    /// the request over SCM_RIGHTS, if any (`tokenctl attach` sends the
    /// medium it opened with the caller's own rights). The answer is typed:
    /// [`Response`] has one variant per call, holding that call's reply
    /// type (see [`super::calls`]).
    fn handle(
        &self,
        req: Request,
        caller: &Caller,
        passed: Option<OwnedFd>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response>;
}

/// The bounds of the control socket, from the `[control]` section.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_uid: usize,
    pub root_connections: usize,
    pub idle: Duration,
    pub request: Duration,
    pub max_request: usize,
}

impl Limits {
    pub fn from_config(c: &ControlConfig) -> Self {
        Limits {
            max_connections: c.max_connections,
            max_per_uid: c.max_per_uid,
            root_connections: c.root_connections,
            idle: Duration::from_secs(c.idle_secs),
            request: Duration::from_secs(c.request_secs),
            max_request: (c.max_request_kb as usize) << 10,
        }
    }
}

/// Descriptors one connection can hold at once: its socket, the descriptor
/// passed with its request, and the ones a single `recvmsg` may bring in
/// before the extras are closed.
const FDS_PER_CONNECTION: usize = 2 + FDS_PER_RECV;

impl Limits {
    /// Shrinks the connection limits, if need be, so that control
    /// connections can hold at most a quarter of the open-file limit
    /// (`soft`): the rest stays for the mount, the chunk store and the
    /// catalog whatever local users do with the socket.
    pub fn fit_descriptors(mut self, soft: u64) -> Self {
        let budget = (soft / 4) as usize / FDS_PER_CONNECTION;
        if self.max_connections + self.root_connections > budget {
            let root = self.root_connections.min(budget / 4).max(1);
            let others = budget.saturating_sub(root).max(1);
            tracing::warn!(
                "control socket: the open-file limit ({soft}) allows {others} connections \
                 from users and {root} from root, not the {} and {} configured",
                self.max_connections,
                self.root_connections
            );
            self.root_connections = root;
            self.max_connections = others;
            self.max_per_uid = self.max_per_uid.min(others);
        }
        self
    }
}

/// A bound control socket; the file is removed when this is dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path`, replacing a stale socket file. The caller must hold the
    /// state directory lock, so no live daemon can own the old file.
    pub fn bind(path: &Path) -> Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("{}: removing stale socket", path.display()),
                    e,
                ));
            }
        }
        let listener = UnixListener::bind(path)
            .ctx(|| format!("{}: cannot bind the control socket", path.display()))?;
        // Every user may connect; each request is authorised separately.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .ctx(|| format!("{}: chmod", path.display()))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts connections until the process ends, each served by its own
    /// thread while it holds one of the bounded slots.
    pub fn serve(self, handler: Arc<dyn Handler>, limits: Limits) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("fsd-control".into())
            .spawn(move || {
                let soft =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                        .map_or(1024, |(soft, _)| soft);
                let limits = limits.fit_descriptors(soft);
                accept_loop(&self.listener, handler, Arc::new(limits));
                drop(self);
            })
            .unwrap_or_else(|e| panic!("cannot start the control thread: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Lets a message through once per interval and counts the ones held back,
/// so a flood of identical failures costs a log line per interval, not one
/// per failure.
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held
    /// back since the last one; `None` to stay quiet.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// How long between two log lines about the same kind of refusal.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The longest pause after accept fails for lack of descriptors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connection counts, by uid; see the module comment.
#[derive(Default)]
struct Counts {
    non_root: usize,
    root: usize,
    by_uid: HashMap<u32, usize>,
}

/// A connection's slot, given back when the connection ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        if self.uid == 0 {
            c.root -= 1;
        } else {
            c.non_root -= 1;
            if let Some(n) = c.by_uid.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    c.by_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Takes a slot for a connection of `uid`, or says which limit is reached.
fn take_slot(counts: &Arc<Mutex<Counts>>, limits: &Limits, uid: u32) -> Result<Slot> {
    let mut c = counts.lock();
    if uid == 0 {
        if c.root >= limits.root_connections {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "fsd has too many control connections from root (limit {}, \
                     control.root_connections); try again shortly",
                    limits.root_connections
                ),
            ));
        }
        c.root += 1;
    } else {
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= limits.max_per_uid {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "fsd has too many control connections from uid {uid} (limit {}, \
                     control.max_per_uid); close some or try again shortly",
                    limits.max_per_uid
                ),
            ));
        }
        if c.non_root >= limits.max_connections {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "fsd has too many control connections (limit {}, control.max_connections); \
                     try again shortly",
                    limits.max_connections
                ),
            ));
        }
        c.non_root += 1;
        *c.by_uid.entry(uid).or_insert(0) += 1;
    }
    Ok(Slot {
        counts: counts.clone(),
        uid,
    })
}

/// A descriptor kept open so that, when the process runs out, one can be
/// freed to accept and close a waiting connection (as nginx and libuv do).
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn accept_loop(listener: &UnixListener, handler: Arc<dyn Handler>, limits: Arc<Limits>) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut spare = spare_fd();
    let mut backoff = Duration::ZERO;
    let mut no_fds = Throttle::new(LOG_INTERVAL);
    let mut other = Throttle::new(LOG_INTERVAL);
    let mut refused = Throttle::new(LOG_INTERVAL);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        if let Some(n) = no_fds.hit(Instant::now()) {
                            tracing::warn!(
                                "control socket: out of file descriptors ({e}); shedding \
                                 connections and backing off ({n} more since the last report)"
                            );
                        }
                        // With the spare descriptor freed, answer and close
                        // every waiting connection (as libuv does), so each
                        // client learns why at once instead of hanging in
                        // the queue, and the queue cannot wake this loop
                        // again at once.
                        if spare.take().is_some() {
                            shed(listener);
                        }
                        // Taken back at once, or on a later round if another
                        // thread took the descriptor first.
                        spare = spare_fd();
                    }
                    _ => {
                        if let Some(n) = other.hit(Instant::now()) {
                            tracing::warn!(
                                "control socket accept: {e} ({n} more since the last report)"
                            );
                        }
                    }
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_BACKOFF);
                std::thread::sleep(backoff);
                continue;
            }
        };
        if spare.is_none() {
            spare = spare_fd();
        }
        let uid = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("control connection refused: SO_PEERCRED: {e}");
                continue;
            }
        };
        let slot = match take_slot(&counts, &limits, uid.uid()) {
            Ok(s) => s,
            Err(e) => {
                if let Some(n) = refused.hit(Instant::now()) {
                    tracing::warn!(
                        uid = uid.uid(),
                        "control connection refused: {e} ({n} more refusals since the last report)"
                    );
                }
                refuse(stream, &e);
                continue;
            }
        };
        let (pid, gid) = (uid.pid() as u32, uid.gid());
        let uid = uid.uid();
        let h = handler.clone();
        let l = limits.clone();
        let spawned = std::thread::Builder::new()
            .name("fsd-conn".into())
            .spawn(move || {
                let _slot = slot;
                let caller = Caller::from_peer(pid, uid, gid);
                serve_conn(stream, &caller, h.as_ref(), &l);
            });
        if let Err(e) = spawned {
            // The closure (with the stream and the slot) was dropped: the
            // client sees the connection close.
            if let Some(n) = other.hit(Instant::now()) {
                tracing::warn!("control socket: cannot start a connection thread: {e} ({n} more)");
            }
        }
    }
}

/// Most connections answered and closed in one go while out of descriptors.
const SHED_MAX: usize = 4096;

/// Accepts, answers with an error and closes the connections waiting in
/// the listen queue, without blocking. Needs one free descriptor.
fn shed(listener: &UnixListener) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let e = Error::new(
        ErrorKind::Unavailable,
        "fsd is out of file descriptors; try again shortly",
    );
    for _ in 0..SHED_MAX {
        match listener.accept() {
            Ok((s, _)) => refuse(s, &e),
            Err(_) => break,
        }
    }
    let _ = listener.set_nonblocking(false);
}

/// Sends `e` as the only frame of a connection that will not be served,
/// without ever blocking, and closes it.
fn refuse(stream: UnixStream, e: &Error) {
    if stream.set_nonblocking(true).is_ok()
        && let Ok(bytes) = frame_bytes(&error_reply(e))
    {
        let _ = (&stream).write(&bytes);
    }
}

/// Serves one connection until the client closes it, goes idle, breaks the
/// protocol or stops reading replies.
fn serve_conn(stream: UnixStream, caller: &Caller, handler: &dyn Handler, limits: &Limits) {
    // A client that stops reading must not hold this thread in a write
    // forever: a reply write that cannot finish within this long ends the
    // connection (the work it reports on is done either way).
    let _ = stream.set_write_timeout(Some(limits.idle.max(Duration::from_secs(1))));
    let mut reader = FrameReader::new(stream.as_raw_fd(), limits);
    let dead = std::cell::Cell::new(false);
    let send = |reply: &Reply<Response>| {
        if dead.get() {
            return;
        }
        let ok = frame_bytes(reply)
            .and_then(|b| (&stream).write_all(&b).map_err(|e| Error::io("writing", e)))
            .is_ok();
        if !ok {
            dead.set(true);
        }
    };
    loop {
        let (body, passed) = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(uid = caller.uid, "control connection dropped: {e}");
                send(&error_reply(&e));
                return;
            }
        };
        let reply = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => {
                drop(body);
                let op = req.name();
                tracing::debug!(uid = caller.uid, pid = caller.pid, "control request {op}");
                // Progress is best effort: a client that stopped listening
                // does not stop the work.
                let mut progress = |done: u64, total: u64| send(&Reply::Progress { done, total });
                match handler.handle(req, caller, passed, &mut progress) {
                    Ok(result) => Reply::Ok { result },
                    Err(e) => {
                        log_failure(caller, op, &e);
                        error_reply(&e)
                    }
                }
            }
            Err(e) => Reply::Error {
                code: ErrorKind::Protocol,
                message: format!("malformed request: {e}"),
            },
        };
        send(&reply);
        if dead.get() {
            return;
        }
    }
}

/// Failed requests of non-root users, logged at most ten a second in all:
/// any user can make requests fail as fast as the daemon answers them.
static FAILURES: Mutex<Throttle> = Mutex::new(Throttle::new(Duration::from_millis(100)));

fn log_failure(caller: &Caller, op: &str, e: &Error) {
    if caller.uid == 0 {
        tracing::info!(uid = caller.uid, "control request {op} failed: {e}");
    } else if let Some(n) = FAILURES.lock().hit(Instant::now()) {
        if n == 0 {
            tracing::info!(uid = caller.uid, "control request {op} failed: {e}");
        } else {
            tracing::info!(
                uid = caller.uid,
                "control request {op} failed: {e} ({n} failures not logged before it)"
            );
        }
    }
}

fn error_reply(e: &Error) -> Reply<Response> {
    Reply::Error {
        code: e.kind(),
        message: e.to_string(),
    }
}

/// Reads request frames with the limits applied, collecting descriptors
/// passed alongside them.
struct FrameReader<'a> {
    fd: RawFd,
    limits: &'a Limits,
    /// A descriptor received with the frame being read.
    passed: Option<OwnedFd>,
}

/// What one `recvmsg` brought.
enum Got {
    Bytes(usize),
    Eof,
    TimedOut,
}

impl<'a> FrameReader<'a> {
    fn new(fd: RawFd, limits: &'a Limits) -> Self {
        FrameReader {
            fd,
            limits,
            passed: None,
        }
    }

    /// The next frame and the descriptor passed with it; `Ok(None)` when the
    /// client closed the connection or left it idle too long between
    /// requests.
    fn next(&mut self) -> Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        self.passed = None;
        let mut header = [0u8; 4];
        let mut have = 0;
        let mut deadline = Instant::now() + self.limits.idle;
        while have < 4 {
            match self.recv(&mut header[have..], deadline)? {
                Got::Bytes(n) => {
                    if have == 0 {
                        deadline = Instant::now() + self.limits.request;
                    }
                    have += n;
                }
                Got::Eof if have == 0 => return Ok(None),
                Got::TimedOut if have == 0 => return Ok(None),
                Got::Eof => return Err(truncated("header")),
                Got::TimedOut => return Err(self.too_slow()),
            }
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > self.limits.max_request {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "control socket: a request of {len} bytes exceeds the limit of {} bytes \
                     (control.max_request_kb)",
                    self.limits.max_request
                ),
            ));
        }
        // Grown as the bytes arrive, so a declared length costs nothing
        // until it is actually sent.
        let mut body = Vec::with_capacity(len.min(64 << 10));
        let mut piece = vec![0u8; len.min(64 << 10)];
        while body.len() < len {
            let want = (len - body.len()).min(piece.len());
            match self.recv(&mut piece[..want], deadline)? {
                Got::Bytes(n) => body.extend_from_slice(&piece[..n]),
                Got::Eof => return Err(truncated("body")),
                Got::TimedOut => return Err(self.too_slow()),
            }
        }
        Ok(Some((body, self.passed.take())))
    }

    fn too_slow(&self) -> Error {
        Error::new(
            ErrorKind::Protocol,
            format!(
                "control socket: a request did not arrive within {} s (control.request_secs)",
                self.limits.request.as_secs()
            ),
        )
    }

    /// Waits until `deadline` for bytes, then receives up to `buf.len()` of
    /// them with any descriptors that came along.
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<Got> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Got::TimedOut);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("control socket: poll", e));
            }
            if r == 0 {
                continue;
            }
            let (n, fds) = match recv_with_fds(self.fd, buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Error::io("control socket: reading", e)),
            };
            for fd in fds {
                // One descriptor per request; any other is closed here.
                if self.passed.is_none() {
                    self.passed = Some(fd);
                }
            }
            return Ok(if n == 0 { Got::Eof } else { Got::Bytes(n) });
        }
    }
}

fn truncated(what: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("control socket: the connection closed in the middle of a request {what}"),
    )
}

/// Room for this many descriptors in one `recvmsg`; the kernel closes any
/// beyond what fits, and every one that does fit is owned (and so closed
/// unless kept) by the caller.
const FDS_PER_RECV: usize = 2;

/// `recvmsg` into `buf`, returning the bytes read and the descriptors that
/// came with them (close-on-exec).
///
/// Parsed by hand rather than with nix's iterator: when the control buffer
/// is truncated (a client sent more descriptors than fit) nix yields none of
/// the ones that were installed, and they would leak.
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_RECV * size_of::<RawFd>()) as u32) } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the
    // kernel's own macros; each SCM_RIGHTS entry holds installed
    // descriptors that this process now owns.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    if raw >= 0 {
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(0));
        assert_eq!(t.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(t.hit(t0 + Duration::from_secs(12)), None);
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 3,
            max_per_uid: 2,
            root_connections: 1,
            idle: Duration::from_secs(1),
            request: Duration::from_secs(1),
            max_request: 1024,
        }
    }

    #[test]
    fn connections_fit_in_a_quarter_of_the_descriptors() {
        let l = Limits {
            max_connections: 64,
            max_per_uid: 8,
            root_connections: 16,
            ..limits()
        };
        let same = l.clone().fit_descriptors(1 << 20);
        assert_eq!((same.max_connections, same.root_connections), (64, 16));
        let small = l.fit_descriptors(256);
        let total = small.max_connections + small.root_connections;
        assert!(total * FDS_PER_CONNECTION <= 64, "{small:?}");
        assert!(small.root_connections >= 1 && small.max_per_uid <= small.max_connections);
    }

    #[test]
    fn slots_bound_each_uid_all_users_and_root_separately() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let l = limits();
        let a1 = take_slot(&counts, &l, 1000).unwrap();
        let _a2 = take_slot(&counts, &l, 1000).unwrap();
        let e = take_slot(&counts, &l, 1000).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("uid 1000"), "{e}");
        let _b1 = take_slot(&counts, &l, 1001).unwrap();
        let e = take_slot(&counts, &l, 1002).err().unwrap();
        assert!(e.to_string().contains("max_connections"), "{e}");
        // Root has its own slots while every other one is taken.
        let r = take_slot(&counts, &l, 0).unwrap();
        assert!(take_slot(&counts, &l, 0).is_err());
        drop(r);
        assert!(take_slot(&counts, &l, 0).is_ok());
        // A slot given back can be taken again.
        drop(a1);
        assert!(take_slot(&counts, &l, 1002).is_ok());
        assert!(!counts.lock().by_uid.contains_key(&1002), "dropped again");
    }
}
