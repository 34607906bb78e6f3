//! Filesystem session
//!
//! A session runs a filesystem implementation while it is being mounted to a specific mount
//! point. A session begins by mounting the filesystem and ends by unmounting it. While the
//! filesystem is mounted, the session loop receives, dispatches and replies to kernel requests
//! for filesystem operations under its mount point.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::thread::{self};
use std::time::{Duration, Instant};

use log::debug;
use log::error;
use log::info;
use log::warn;
use nix::unistd::Uid;
use nix::unistd::geteuid;
use parking_lot::{Condvar, Mutex};

use crate::Errno;
use crate::Filesystem;
use crate::KernelConfig;
use crate::MountOption;
use crate::ReplyEmpty;
use crate::Request;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::dev_fuse::DevFuse;
use crate::ll;
use crate::ll::Operation;
use crate::ll::ResponseErrno;
use crate::ll::Version;
use crate::ll::flags::init_flags::InitFlags;
use crate::ll::fuse_abi as abi;
use crate::mnt::Mount;
use crate::mnt::mount_options::Config;
use crate::mnt::mount_options::check_option_conflicts;
use crate::notify::Notifier;
use crate::read_buf::FuseReadBuf;
use crate::reply::Reply;
use crate::reply::ReplyRaw;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;

/// The max size of write requests from the kernel. The absolute minimum is 4k,
/// FUSE recommends at least 128k, max 16M. The FUSE default is 16M on macOS
/// and 128k on other systems.
pub(crate) const MAX_WRITE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Default, Debug, Eq, PartialEq, Clone, Copy)]
/// How requests should be filtered based on the calling UID.
pub enum SessionACL {
    /// Allow requests from any user. Corresponds to the `allow_other` mount option.
    All,
    /// Allow requests from root. Corresponds to the `allow_root` mount option.
    RootAndOwner,
    /// Allow requests from the owning UID. This is FUSE's default mode of operation.
    #[default]
    Owner,
}

impl SessionACL {
    /// Returns the mount option string for kernel/fusermount/libfuse paths.
    /// Both `All` and `RootAndOwner` map to `allow_other` - the kernel only
    /// understands `allow_other`, and fuser enforces the root-only restriction internally.
    #[allow(dead_code)]
    pub(crate) fn to_mount_option(self) -> Option<&'static str> {
        match self {
            SessionACL::All | SessionACL::RootAndOwner => Some("allow_other"),
            SessionACL::Owner => None,
        }
    }
}

/// Calls `destroy` on drop.
#[derive(Debug)]
pub(crate) struct FilesystemHolder<FS: Filesystem> {
    pub(crate) fs: Option<FS>,
}

impl<FS: Filesystem> FilesystemHolder<FS> {
    fn destroy(&mut self) {
        if let Some(mut fs) = self.fs.take() {
            fs.destroy();
        }
    }
}

impl<FS: Filesystem> Drop for FilesystemHolder<FS> {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[derive(Debug)]
struct UmountOnDrop {
    mount: Arc<Mutex<Option<Mount>>>,
}

impl UmountOnDrop {
    fn umount(&self) -> io::Result<()> {
        if let Some(mount) = self.mount.lock().take() {
            mount.umount()?;
        }
        Ok(())
    }
}

impl Drop for UmountOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.umount() {
            warn!("Failed to umount filesystem: {}", e);
        }
    }
}

/// The session data structure
#[derive(Debug)]
pub struct Session<FS: Filesystem> {
    /// Filesystem operation implementations. None after `destroy` called.
    pub(crate) filesystem: FilesystemHolder<FS>,
    /// Communication channel to the kernel driver
    pub(crate) ch: Channel,
    /// Handle to the mount.  Dropping this unmounts.
    mount: UmountOnDrop,
    /// Whether to restrict access to owner, root + owner, or unrestricted
    /// Used to implement `allow_root` and `auto_unmount`
    pub(crate) allowed: SessionACL,
    /// User that launched the fuser process
    pub(crate) session_owner: Uid,
    /// FUSE protocol version, as reported by the kernel.
    /// The field is set to `Some` when the init message is received.
    pub(crate) proto_version: Option<Version>,
    pub(crate) config: Config,
}

impl<FS: Filesystem> AsFd for Session<FS> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ch.as_fd()
    }
}

impl<FS: Filesystem> Session<FS> {
    /// Create a new session by mounting the given filesystem to the given mountpoint
    /// # Errors
    /// Returns an error if the options are incorrect, or if the fuse device can't be mounted.
    pub fn new<P: AsRef<Path>>(
        filesystem: FS,
        mountpoint: P,
        options: &Config,
    ) -> io::Result<Session<FS>> {
        check_option_conflicts(options)?;

        let mountpoint = mountpoint.as_ref();
        info!("Mounting {}", mountpoint.display());
        // If AutoUnmount is requested, but not AllowRoot or AllowOther, return an error
        // because fusermount needs allow_root or allow_other to handle the auto_unmount option
        if options.mount_options.contains(&MountOption::AutoUnmount)
            && options.acl == SessionACL::Owner
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("auto_unmount requires acl != Owner, got: {:?}", options.acl),
            ));
        }
        let (file, mount) = Mount::new(mountpoint, &options.mount_options, options.acl)?;

        let ch = Channel::new(file);

        let mut session = Session {
            filesystem: FilesystemHolder {
                fs: Some(filesystem),
            },
            ch,
            mount: UmountOnDrop {
                mount: Arc::new(Mutex::new(Some(mount))),
            },
            allowed: options.acl,
            session_owner: geteuid(),
            proto_version: None,
            config: options.clone(),
        };

        session.handshake()?;

        Ok(session)
    }

    /// Wrap an existing /dev/fuse file descriptor. This doesn't mount the
    /// filesystem anywhere; that must be done separately.
    pub fn from_fd(
        filesystem: FS,
        fd: OwnedFd,
        acl: SessionACL,
        config: Config,
    ) -> io::Result<Self> {
        let ch = Channel::new(Arc::new(DevFuse(File::from(fd))));
        let mut session = Session {
            filesystem: FilesystemHolder {
                fs: Some(filesystem),
            },
            ch,
            mount: UmountOnDrop {
                mount: Arc::new(Mutex::new(None)),
            },
            allowed: acl,
            session_owner: geteuid(),
            proto_version: None,
            config,
        };

        session.handshake()?;

        Ok(session)
    }

    /// Run the session loop in a background thread. If the returned handle is dropped,
    /// the filesystem is unmounted and the given session ends.
    pub fn spawn(self) -> io::Result<BackgroundSession> {
        let sender = self.ch.sender();
        // Take the fuse_session, so that we can unmount it
        let mount = std::mem::take(&mut *self.mount.mount.lock());
        let guard = thread::Builder::new()
            .name("fuser-bg".to_string())
            .spawn(move || self.run())?;
        Ok(BackgroundSession {
            guard,
            sender,
            mount,
        })
    }

    /// Run the session loop that receives kernel requests and dispatches them to method
    /// calls into the filesystem. This read-dispatch-loop is non-concurrent to prevent
    /// having multiple buffers (which take up much memory), but the filesystem methods
    /// may run concurrent by spawning threads.
    /// # Errors
    /// Returns any final error when the session comes to an end.
    pub fn run(self) -> io::Result<()> {
        let Session {
            filesystem,
            ch,
            mount: _do_not_umount_yet,
            allowed,
            session_owner,
            proto_version: _,
            config,
        } = self;

        let n_threads = config.n_threads.unwrap_or(1);

        if !cfg!(target_os = "linux") && n_threads != 1 {
            // TODO: check whether it works on macOS/FreeBSD and enable if it works.
            return Err(io::Error::other(
                "n_threads != 1 is only supported on Linux",
            ));
        }

        if n_threads == 0 {
            return Err(io::Error::other("n_threads"));
        }

        let mut filesystem = Arc::new(filesystem);

        // fsd patch: workers start on demand, up to n_threads, as in
        // libfuse's multi-threaded loop. The thread that calls `run` is the
        // first worker and reads from the session's own channel, so a
        // request that arrives right after the mount never waits for a
        // thread to be created or scheduled. When a worker takes a request
        // and no other is idle, it asks the pool thread for one more (a
        // clone of the channel: an open of /dev/fuse and an ioctl, plus a
        // thread), so a request never waits for a spawn either, and a mount
        // that serves one request at a time costs one worker, not
        // n_threads. A clone or spawn that fails leaves the session with
        // the workers it has.
        let (events, inbox) = mpsc::channel::<PoolEvent>();
        let pool = Arc::new(Pool {
            idle: AtomicUsize::new(1),
            started: AtomicUsize::new(1),
            polling: AtomicBool::new(false),
            poll_after_metadata: config.poll_after_metadata,
            max: n_threads,
            events,
            armed: AtomicBool::new(true),
            parked: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            unpark: Condvar::new(),
            release: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let grower = if n_threads > 1 {
            let workers = Workers {
                filesystem: filesystem.clone(),
                ch: ch.clone(),
                clone_fd: config.clone_fd,
                allowed,
                session_owner,
                pool: pool.clone(),
            };
            Some(
                thread::Builder::new()
                    .name("fuser-pool".into())
                    .spawn(move || workers.grow(inbox))?,
            )
        } else {
            drop(inbox);
            None
        };
        let first = SessionEventLoop {
            thread_name: thread::current().name().unwrap_or("fuser-0").to_string(),
            filesystem: filesystem.clone(),
            ch,
            allowed,
            session_owner,
            pool: pool.clone(),
        };
        let mut reply = first.event_loop();
        drop(first);
        pool.close();
        if let Some(grower) = grower {
            pool.send(PoolEvent::Stop);
            match grower.join() {
                Ok(r) => {
                    if reply.is_ok() {
                        reply = r;
                    }
                }
                Err(_) => return Err(io::Error::other("worker pool thread panicked")),
            }
        }

        let Some(filesystem) = Arc::get_mut(&mut filesystem) else {
            return Err(io::Error::other(
                "BUG: must have one refcount for filesystem",
            ));
        };

        filesystem.destroy();

        reply
    }

    fn handshake(&mut self) -> io::Result<()> {
        let mut buf = FuseReadBuf::new();
        let buf = buf.as_mut();

        loop {
            // Read the init request from the kernel
            let size = match self.ch.receive_retrying(buf) {
                Ok(size) => size,
                Err(nix::errno::Errno::ENODEV) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "FUSE device disconnected during handshake",
                    ));
                }
                Err(err) => return Err(err.into()),
            };

            // Parse the request
            let request = match ll::AnyRequest::try_from(&buf[..size]) {
                Ok(request) => request,
                Err(err) => {
                    error!("{err}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, err.to_string()));
                }
            };

            // Extract the init operation
            let op = match request.operation() {
                Ok(op) => op,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "Failed to parse FUSE operation",
                    ));
                }
            };

            let init = match op {
                ll::Operation::Init(init) => init,
                _ => {
                    error!("Received non-init FUSE operation before init: {}", request);
                    // Send error response and return error - non-init during handshake is invalid
                    <ReplyRaw as Reply>::new(
                        request.unique(),
                        ReplySender::Channel(self.ch.sender()),
                    )
                    .send_ll(&ResponseErrno(ll::Errno::EIO));
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "Received non-init FUSE operation during handshake",
                    ));
                }
            };

            let v = init.version();
            if v.0 > abi::FUSE_KERNEL_VERSION {
                // Kernel has a newer major version than we support.
                // Send our version and wait for a second INIT request with a compatible version.
                debug!(
                    "INIT: Kernel version {} > our version {}, sending our version and waiting for next init",
                    v.0,
                    abi::FUSE_KERNEL_VERSION
                );
                let response = init.reply_version_only();
                <ReplyRaw as Reply>::new(request.unique(), ReplySender::Channel(self.ch.sender()))
                    .send_ll(&response);
                continue;
            }

            // We don't support ABI versions before 7.6
            if v < Version(7, 6) {
                error!("Unsupported FUSE ABI version {v}");
                <ReplyRaw as Reply>::new(request.unique(), ReplySender::Channel(self.ch.sender()))
                    .send_ll(&ResponseErrno(ll::Errno::EPROTO));
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("Unsupported FUSE ABI version {v}"),
                ));
            }

            let mut config = KernelConfig::new(init.capabilities(), init.max_readahead(), v);

            // Call filesystem init method and give it a chance to return an error
            let Some(filesystem) = &mut self.filesystem.fs else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "Bug: filesystem must be initialized during handshake",
                ));
            };
            let res = filesystem.init(Request::ref_cast(request.header()), &mut config);
            if let Err(error) = res {
                let errno = Errno::from_i32(error.raw_os_error().unwrap_or(0));
                <ReplyRaw as Reply>::new(request.unique(), ReplySender::Channel(self.ch.sender()))
                    .send_ll(&ResponseErrno(errno));
                return Err(error);
            }

            // Remember the ABI version supported by kernel and mark the session initialized.
            self.proto_version = Some(v);

            // Log capability status for debugging
            for bit in 0..64 {
                let bitflags = InitFlags::from_bits_retain(1 << bit);
                if bitflags == InitFlags::FUSE_INIT_EXT {
                    continue;
                }
                let bitflag_is_known = InitFlags::all().contains(bitflags);
                let kernel_supports = init.capabilities().contains(bitflags);
                let we_requested = config.requested.contains(bitflags);
                // On macOS, there's a clash between linux and macOS constants,
                // so we pick macOS ones (last).
                let name = if let Some((name, _)) = bitflags.iter_names().last() {
                    Cow::Borrowed(name)
                } else {
                    Cow::Owned(format!("(1 << {bit})"))
                };
                if we_requested && kernel_supports {
                    debug!("capability {name} enabled")
                } else if we_requested {
                    debug!("capability {name} not supported by kernel")
                } else if kernel_supports {
                    debug!("capability {name} not requested by client")
                } else if bitflag_is_known {
                    debug!("capability {name} not supported nor requested")
                }
            }

            // Reply with our desired version and settings.
            debug!(
                "INIT response: ABI {}.{}, flags {:#x}, max readahead {}, max write {}",
                abi::FUSE_KERNEL_VERSION,
                abi::FUSE_KERNEL_MINOR_VERSION,
                init.capabilities() & config.requested,
                config.max_readahead,
                config.max_write
            );

            let response = init.reply(&config);
            <ReplyRaw as Reply>::new(request.unique(), ReplySender::Channel(self.ch.sender()))
                .send_ll(&response);

            return Ok(());
        }
    }

    /// Unmount the filesystem
    pub fn unmount(&mut self) -> io::Result<()> {
        self.mount.umount()
    }

    /// Returns a thread-safe object that can be used to unmount the Filesystem
    pub fn unmount_callable(&mut self) -> SessionUnmounter {
        SessionUnmounter {
            mount: self.mount.mount.clone(),
        }
    }

    /// Returns an object that can be used to send notifications to the kernel
    pub fn notifier(&self) -> Notifier {
        Notifier::new(self.ch.sender())
    }
}

#[derive(Debug)]
/// A thread-safe object that can be used to unmount a Filesystem
pub struct SessionUnmounter {
    mount: Arc<Mutex<Option<Mount>>>,
}

impl SessionUnmounter {
    /// Unmount the filesystem
    pub fn unmount(&mut self) -> io::Result<()> {
        if let Some(mount) = std::mem::take(&mut *self.mount.lock()) {
            mount.umount()?;
        }
        Ok(())
    }
}

pub(crate) struct SessionEventLoop<FS: Filesystem> {
    /// Cache thread name for faster `debug!`.
    pub(crate) thread_name: String,
    pub(crate) ch: Channel,
    pub(crate) filesystem: Arc<FilesystemHolder<FS>>,
    pub(crate) allowed: SessionACL,
    pub(crate) session_owner: Uid,
    /// fsd patch: the on-demand worker pool this loop belongs to.
    pub(crate) pool: Arc<Pool>,
}

/// fsd patch: what the pool thread is told.
pub(crate) enum PoolEvent {
    /// A worker took a request and none was left idle.
    Busy,
    /// A worker took a request and none was left idle, with the pool at
    /// its size: if requests are still waiting [`GRACE`] later, wake the
    /// parked workers (sent once per arming, see [`Pool::armed`]).
    Check,
    /// A worker the pool thread started ended its loop with this result.
    Exited(io::Result<()>),
    /// The first worker (the thread running the session) has ended: start
    /// no more, and return once the others have ended too.
    Stop,
}

/// fsd patch: what the pool thread needs to start workers.
struct Workers<FS: Filesystem> {
    filesystem: Arc<FilesystemHolder<FS>>,
    ch: Channel,
    clone_fd: bool,
    allowed: SessionACL,
    session_owner: Uid,
    pool: Arc<Pool>,
}

impl<FS: Filesystem> Workers<FS> {
    /// The pool thread: starts a worker whenever one is asked for and the
    /// pool may grow, and once the pool is full, checks that parked
    /// workers are not needed (see `check`), until the first worker has
    /// ended and every other one with it (they all end when the mount goes
    /// away). Returns the first error a worker it started ended with.
    fn grow(self, inbox: mpsc::Receiver<PoolEvent>) -> io::Result<()> {
        let mut threads = Vec::new();
        let mut reply: io::Result<()> = Ok(());
        let (mut live, mut stopping) = (0usize, false);
        let mut check_at: Option<Instant> = None;
        let mut quiet = false;
        while !(stopping && live == 0) {
            let event = match check_at {
                Some(t) => match inbox.recv_timeout(t.saturating_duration_since(Instant::now())) {
                    Ok(e) => Some(e),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match inbox.recv() {
                    Ok(e) => Some(e),
                    Err(_) => break,
                },
            };
            let Some(event) = event else {
                check_at = self.check(&mut quiet);
                continue;
            };
            match event {
                PoolEvent::Check => {
                    if check_at.is_none() && !stopping {
                        check_at = Some(Instant::now() + GRACE);
                        quiet = false;
                    }
                }
                PoolEvent::Busy => {
                    if stopping
                        || self.pool.idle.load(Ordering::Acquire) > 0
                        || self.pool.started.load(Ordering::Acquire) >= self.pool.max
                        || !self.may_add_worker()
                    {
                        continue;
                    }
                    let i = threads.len() + 1;
                    match self.start(i) {
                        Ok(t) => {
                            threads.push(t);
                            live += 1;
                        }
                        Err(e) => {
                            warn!("FUSE worker {i} not started: {e}");
                            // Stop growing: no more workers are asked for.
                            self.pool.started.store(self.pool.max, Ordering::Release);
                        }
                    }
                }
                PoolEvent::Exited(r) => {
                    live -= 1;
                    if let Err(e) = r {
                        if reply.is_ok() {
                            reply = Err(e);
                        }
                    }
                }
                PoolEvent::Stop => {
                    stopping = true;
                    check_at = None;
                }
            }
        }
        for thread in threads {
            if thread.join().is_err() {
                return Err(io::Error::other("event loop thread panicked"));
            }
        }
        reply
    }

    /// Whether the filesystem lets the pool add a worker now.
    fn may_add_worker(&self) -> bool {
        self.filesystem
            .fs
            .as_ref()
            .is_some_and(|f| f.may_add_worker())
    }

    /// A check scheduled after [`PoolEvent::Check`]: if every worker is
    /// still busy and requests wait, the parked workers go back to reading
    /// (a worker that blocks for long must never leave requests unread
    /// while others are parked); checks repeat while every worker stays
    /// busy, and once two in a row find one idle, the next Check is armed
    /// again. Returns when to check next, if at all.
    fn check(&self, quiet: &mut bool) -> Option<Instant> {
        let pool = &self.pool;
        let now = Instant::now();
        if pool.idle.load(Ordering::Acquire) > 0 {
            if *quiet {
                pool.armed.store(true, Ordering::Release);
                return None;
            }
            *quiet = true;
            return Some(now + COOLDOWN);
        }
        *quiet = false;
        if pool.parked.load(Ordering::Acquire) > 0 && self.ch.pending() && self.may_add_worker() {
            pool.release_parked();
            return Some(now + GRACE);
        }
        Some(now + COOLDOWN)
    }

    /// Starts worker `i` on a channel of its own (or the shared one).
    fn start(&self, i: usize) -> io::Result<JoinHandle<()>> {
        let ch = if self.clone_fd {
            #[cfg(target_os = "linux")]
            {
                self.ch.clone_fd()?
            }
            #[cfg(not(target_os = "linux"))]
            {
                return Err(io::Error::other("clone_fd is only supported on Linux"));
            }
        } else {
            self.ch.clone()
        };
        let thread_name = format!("fuser-{i}");
        let event_loop = SessionEventLoop {
            thread_name: thread_name.clone(),
            filesystem: self.filesystem.clone(),
            ch,
            allowed: self.allowed,
            session_owner: self.session_owner,
            pool: self.pool.clone(),
        };
        self.pool.idle.fetch_add(1, Ordering::AcqRel);
        self.pool.started.fetch_add(1, Ordering::AcqRel);
        let exits = self.pool.clone();
        let r = thread::Builder::new().name(thread_name).spawn(move || {
            let r = event_loop.event_loop();
            exits.send(PoolEvent::Exited(r));
        });
        if r.is_err() {
            self.pool.idle.fetch_sub(1, Ordering::AcqRel);
            self.pool.started.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }
}

/// fsd patch: how long every worker may stay busy, with requests waiting
/// and workers parked, before the parked ones are sent back to reading.
const GRACE: Duration = Duration::from_micros(200);

/// fsd patch: how often the pool thread looks again while every worker
/// stays busy without requests waiting, and how long it stays quiet after
/// a check found a worker idle.
const COOLDOWN: Duration = Duration::from_millis(2);

/// fsd patch: the on-demand worker pool's counters.
pub(crate) struct Pool {
    /// Workers waiting for a request.
    idle: AtomicUsize,
    /// Workers started (or, once growing failed, `max`).
    started: AtomicUsize,
    /// A worker is polling for the next request (at most one does).
    polling: AtomicBool,
    /// How long a worker polls after a request other than READ or WRITE.
    poll_after_metadata: Duration,
    max: usize,
    events: mpsc::Sender<PoolEvent>,
    /// Whether the next worker to leave none idle, with the pool at its
    /// size, sends [`PoolEvent::Check`]; the pool thread re-arms it.
    armed: AtomicBool,
    /// Workers parked in user space (see `park_if_surplus`), and the epoch
    /// that releases them.
    parked: AtomicUsize,
    park_lock: Mutex<()>,
    unpark: Condvar,
    release: AtomicU64,
    /// The session is over: parked workers end.
    closed: AtomicBool,
}

impl Pool {
    fn send(&self, e: PoolEvent) {
        let _ = self.events.send(e);
    }

    /// A worker took a request: if none is left idle, ask for another
    /// while the pool may grow, or, once it is full, for a check that
    /// parked workers are not needed (at most once per check cycle).
    fn took(&self) {
        if self.idle.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if self.started.load(Ordering::Acquire) < self.max {
            self.send(PoolEvent::Busy);
        } else if self.armed.swap(false, Ordering::AcqRel) {
            self.send(PoolEvent::Check);
        }
    }

    /// Polls `ch` for the next request for the configured time, unless
    /// another worker already does: one poller catches a stream of
    /// requests, more would only take CPU from the programs sending them.
    fn poll_for_request(&self, ch: &Channel) {
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        ch.poll_for_request(self.poll_after_metadata);
        self.polling.store(false, Ordering::Release);
    }

    /// Parks the calling worker, just done with a request other than READ
    /// or WRITE, if another worker is polling for the next request and none
    /// is waiting. A worker asleep in `read` is woken by the kernel for
    /// every request, only to find that the poller took it: on a 2-core VM
    /// those wake-ups cost `ls -lR` a third of its time. Parked workers go
    /// back to reading at the next READ or WRITE (several of those tend to
    /// arrive at once), when a check of the pool thread finds requests
    /// waiting with every worker busy, or when a worker leaves. Returns
    /// false once the session is over.
    fn park_if_surplus(&self, ch: &Channel) -> bool {
        if !self.polling.load(Ordering::Acquire) || ch.pending() {
            return true;
        }
        // Never the last idle worker: someone must go on reading.
        if self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 1).then(|| n - 1)
            })
            .is_err()
        {
            return true;
        }
        let mut g = self.park_lock.lock();
        let epoch = self.release.load(Ordering::Acquire);
        self.parked.fetch_add(1, Ordering::AcqRel);
        while self.release.load(Ordering::Acquire) == epoch && !self.closed.load(Ordering::Acquire)
        {
            self.unpark.wait(&mut g);
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
        drop(g);
        self.idle.fetch_add(1, Ordering::AcqRel);
        !self.closed.load(Ordering::Acquire)
    }

    /// Sends every parked worker back to reading.
    fn release_parked(&self) {
        if self.parked.load(Ordering::Acquire) == 0 {
            return;
        }
        let _g = self.park_lock.lock();
        self.release.fetch_add(1, Ordering::AcqRel);
        self.unpark.notify_all();
    }

    /// A worker leaves its loop for good while the session goes on (an
    /// error): it no longer counts as idle, and the parked workers read.
    fn leave(&self) {
        self.idle.fetch_sub(1, Ordering::AcqRel);
        self.release_parked();
    }

    /// The session is over (the mount is gone, or the kernel said
    /// DESTROY): parked workers end.
    fn close(&self) {
        let _g = self.park_lock.lock();
        self.closed.store(true, Ordering::Release);
        self.unpark.notify_all();
    }

    fn done(&self) {
        self.idle.fetch_add(1, Ordering::AcqRel);
    }
}

impl<FS: Filesystem> SessionEventLoop<FS> {
    fn event_loop(&self) -> io::Result<()> {
        // Buffer for receiving requests from the kernel. Only one is allocated and
        // it is reused immediately after dispatching to conserve memory and allocations.
        let mut buf = FuseReadBuf::new();
        let buf = buf.as_mut();
        // fsd patch: after a metadata request, poll briefly for the next one.
        let mut poll = false;
        loop {
            if poll {
                self.pool.poll_for_request(&self.ch);
            }
            // Read the next request from the given channel to kernel driver
            // The kernel driver makes sure that we get exactly one request per read
            match self.ch.receive_retrying(buf) {
                Ok(size) => match RequestWithSender::new(self.ch.sender(), &buf[..size]) {
                    // Dispatch request
                    Some(req) => {
                        let op = req.request.operation();
                        if let Ok(Operation::Destroy(_)) = op {
                            req.reply::<ReplyEmpty>().ok();
                            self.pool.close();
                            return Ok(());
                        } else {
                            // Data requests come from read-ahead and
                            // writeback as often as from a waiting program,
                            // and take long enough to make polling moot;
                            // they come several at a time, so parked
                            // workers read again.
                            let data = matches!(&op, Ok(Operation::Read(_) | Operation::Write(_)));
                            poll = !data && !self.pool.poll_after_metadata.is_zero();
                            if data {
                                self.pool.release_parked();
                            }
                            self.pool.took();
                            req.dispatch(self);
                            self.pool.done();
                            if !data && !self.pool.park_if_surplus(&self.ch) {
                                return Ok(());
                            }
                        }
                    }
                    // Quit loop on illegal request
                    None => {
                        self.pool.leave();
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "Invalid request",
                        ));
                    }
                },
                Err(nix::errno::Errno::ENODEV) => {
                    self.pool.close();
                    return Ok(());
                }
                Err(err) => {
                    self.pool.leave();
                    return Err(err.into());
                }
            }
        }
    }
}

/// The background session data structure
#[derive(Debug)]
pub struct BackgroundSession {
    /// Thread guard of the background session
    pub guard: JoinHandle<io::Result<()>>,
    /// Object for creating Notifiers for client use
    sender: ChannelSender,
    /// Ensures the filesystem is unmounted when the session ends
    mount: Option<Mount>,
}

impl BackgroundSession {
    /// Unmount the filesystem and join the background thread.
    pub fn umount_and_join(mut self) -> io::Result<()> {
        if let Some(mount) = self.mount.take() {
            mount.umount()?;
        }
        self.join()
    }

    /// Returns an object that can be used to send notifications to the kernel
    pub fn notifier(&self) -> Notifier {
        Notifier::new(self.sender.clone())
    }

    /// Join the filesystem thread.
    pub fn join(self) -> io::Result<()> {
        self.guard
            .join()
            .map_err(|_panic: Box<dyn std::any::Any + Send>| {
                io::Error::new(
                    io::ErrorKind::Other,
                    "filesystem background thread panicked",
                )
            })?
    }
}
