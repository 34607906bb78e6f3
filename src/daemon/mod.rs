//! The `fsd mount` lifecycle: check the state directory and mountpoint, lock
//! the state directory, open the catalog, reload volumes, serve the control
//! socket and the FUSE session, and unmount cleanly on SIGTERM or SIGINT.

mod service;

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};

pub use self::service::Service;
use crate::config::{self, Config};
use crate::control::server::Server;
use crate::error::{Error, ErrorKind};
use crate::fs::Core;
use crate::fuse::FuseFs;
use crate::fuse::gate::StartGate;
use crate::store::catalog::Catalog;
use crate::store::chunks::ChunkStore;
use crate::token::engine::Offload;
use crate::volume::identity::Primed;
use crate::volume::manager::Manager;
use crate::volume::native::file::Env;
use crate::volume::native::sealer::{Budget, Sealer};

/// `fsd` exit codes; documented in the README ("Exit codes").
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const MOUNTPOINT: i32 = 3;
    pub const STATE_DIR: i32 = 4;
    pub const STATE_BUSY: i32 = 5;
    pub const MOUNT_FAILED: i32 = 6;
    pub const ATTACH_FAILED: i32 = 7;
}

/// A failure of `fsd mount` with the exit code it maps to.
#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub error: Error,
}

impl Fatal {
    pub fn new(code: i32, error: Error) -> Self {
        Fatal { code, error }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Everything `fsd mount` needs to run.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub state_dir: PathBuf,
    pub config: Config,
    /// Archives to attach during start-up, before any request is answered
    /// (`--attach`), absolute.
    pub attach: Vec<PathBuf>,
}

/// Creates the state directory if needed and checks it is usable.
pub fn prepare_state_dir(dir: &Path) -> std::result::Result<(), Fatal> {
    let fail = |msg: String| {
        Err(Fatal::new(
            exit::STATE_DIR,
            Error::new(ErrorKind::Invalid, msg),
        ))
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return fail(format!(
                "state directory {}: not a directory",
                dir.display()
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
            {
                return fail(format!(
                    "state directory {}: cannot create it: {e}",
                    dir.display()
                ));
            }
            // Other users may reach the control socket inside (each request
            // is authorised by its peer credentials) but not list or read
            // anything else: files the daemon creates are private (umask 077).
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711));
        }
        Err(e) => return fail(format!("state directory {}: {e}", dir.display())),
    }
    // Checked, not probed with a scratch file: the kernel answers for the
    // effective user and for read-only filesystems (EROFS) without a create
    // and an unlink in the journal on every start.
    use nix::unistd::{AccessFlags, faccessat};
    match faccessat(
        nix::fcntl::AT_FDCWD,
        dir,
        AccessFlags::W_OK | AccessFlags::X_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    ) {
        Ok(()) => Ok(()),
        Err(e) => fail(format!(
            "state directory {}: not writable: {}",
            dir.display(),
            std::io::Error::from(e)
        )),
    }
}

/// Holds the state directory's lock file for the life of the daemon.
pub struct StateLock {
    _lock: Flock<File>,
}

/// Takes the exclusive lock on `STATE/fsd.lock`, or explains who holds it.
pub fn lock_state_dir(dir: &Path) -> std::result::Result<StateLock, Fatal> {
    let path = dir.join("fsd.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Fatal::new(
                exit::STATE_DIR,
                Error::io(format!("{}: cannot open the lock file", path.display()), e),
            )
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            // A whole page overwritten in place, then cut to length:
            // truncating to zero first would free the file's block and
            // allocate it again (a read of the block bitmap on a cold start),
            // and writing only the pid's bytes would read the old page from
            // disk first (0.5 ms on a cold start).
            let pid = format!("{}\n", std::process::id());
            let mut page = vec![b'\n'; 4096];
            page[..pid.len()].copy_from_slice(pid.as_bytes());
            let _ = std::os::unix::fs::FileExt::write_all_at(&*lock, &page, 0);
            let _ = lock.set_len(pid.len() as u64);
            Ok(StateLock { _lock: lock })
        }
        Err((_, errno)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            Err(Fatal::new(
                exit::STATE_BUSY,
                Error::new(
                    ErrorKind::Busy,
                    format!(
                        "state directory {} is in use by another fsd{who}: {errno}; \
                         use another --state or stop that daemon",
                        dir.display()
                    ),
                ),
            ))
        }
    }
}

/// The mounts of this mount namespace from /proc/self/mountinfo, in mount
/// order: each one's mount point (unescaped) and device number.
fn mounts() -> Vec<(PathBuf, Option<(u32, u32)>)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2).and_then(|d| {
                let (ma, mi) = d.split_once(':')?;
                Some((ma.parse().ok()?, mi.parse().ok()?))
            });
            Some((unescape_mountinfo(f.nth(1)?), dev))
        })
        .collect()
}

/// A mountinfo path: space, tab, newline and backslash are escaped as \ooo.
fn unescape_mountinfo(p: &str) -> PathBuf {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Checks that `mp` exists, is a directory and is not already mounted on.
fn check_mountpoint(mp: &Path) -> std::result::Result<PathBuf, Fatal> {
    let fail =
        |kind: ErrorKind, msg: String| Err(Fatal::new(exit::MOUNTPOINT, Error::new(kind, msg)));
    let shown = mp.display();
    let canon = match std::fs::canonicalize(mp) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                ErrorKind::NotFound,
                format!("mountpoint {shown}: no such directory"),
            );
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return fail(
                ErrorKind::Busy,
                format!(
                    "mountpoint {shown}: a dead FUSE mount is still there (transport endpoint is \
                     not connected); run `fusermount3 -u {shown}` or `umount -l {shown}`"
                ),
            );
        }
        Err(e) => return fail(ErrorKind::Invalid, format!("mountpoint {shown}: {e}")),
    };
    match std::fs::metadata(&canon) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return fail(
                ErrorKind::NotDir,
                format!("mountpoint {shown}: not a directory"),
            );
        }
        Err(e) => return fail(ErrorKind::Invalid, format!("mountpoint {shown}: {e}")),
    }
    if mounts().iter().any(|(p, _)| p == &canon) {
        return fail(
            ErrorKind::Busy,
            format!("mountpoint {shown}: something is already mounted there; unmount it first"),
        );
    }
    Ok(canon)
}

/// Raises the open-file limit to the hard limit: the chunk store keeps up to
/// 4096 chunk files open, and FUSE clones one descriptor per thread.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Raises the kernel read-ahead of the mount so sequential reads arrive as
/// 1 MiB requests. Best effort: a failure only costs speed.
///
/// The mount's device number comes from mountinfo (the last mount on the
/// path is ours), not from a stat of the mountpoint: that stat is a FUSE
/// request served by the daemon's own workers just as the first requests
/// of a caller arrive, and while it runs the mount is busy, so an unmount
/// issued at that moment failed with EBUSY.
fn set_read_ahead(mountpoint: &Path, kb: u32) {
    if kb == 0 {
        return;
    }
    let Some((major, minor)) = mounts()
        .into_iter()
        .rev()
        .find(|(p, _)| p == mountpoint)
        .and_then(|(_, dev)| dev)
    else {
        return;
    };
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!("read-ahead set to {kb} KiB ({path})"),
        Err(e) => {
            tracing::info!("cannot set read-ahead ({path}): {e}; sequential reads may be slower")
        }
    }
}

/// Reads, on a thread of its own, what start-up will need later on the
/// catalog thread: the identities of the `--attach` archives (a SHA-256 of
/// their ends, 0.1-0.2 ms each, see [`Primed`]), the time zone (for zip
/// member times) and the chunk store's directories (the recovery scan lists
/// them). After a reboot or with cold caches the last two are a few disk
/// reads, together 1-2 ms here; fetched while the state directory is locked
/// and the catalog opens, the catalog thread then finds them ready.
/// Read-only and best effort: an error here is met again, and reported,
/// where the data is used.
fn prefetch(state_dir: &Path, attach: &[PathBuf], ids: Arc<Primed>) {
    let chunks = state_dir.join("chunks");
    let attach = attach.to_vec();
    let _ = std::thread::Builder::new()
        .name("fsd-prefetch".into())
        .spawn(move || {
            for p in &attach {
                ids.prime(p);
            }
            crate::volume::archive::zip::load_time_zone();
            let Ok(top) = std::fs::read_dir(&chunks) else {
                return;
            };
            for e in top.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::read_dir(e.path()).map(|d| d.count());
                }
            }
        });
}

enum Event {
    Signal(Signal),
    SessionEnded(std::io::Result<()>),
}

/// Attaches the `--attach` archives. Runs before any request is served (the
/// requests wait at the start-up gate), so a script that waits for
/// `fsd mount` finds its volumes in place, and a medium that cannot be
/// attached stops the daemon, which removes the mount before it exits.
fn attach_at_start(manager: &Manager, paths: &[PathBuf]) -> std::result::Result<String, Fatal> {
    let caller = crate::fs::perm::Caller::current();
    let mut summary = String::new();
    for path in paths {
        let r = manager
            .attach(
                path,
                None,
                crate::volume::manager::FormatChoice::Auto,
                &caller,
                &mut |_, _| {},
            )
            .map_err(|e| {
                Fatal::new(
                    exit::ATTACH_FAILED,
                    Error::new(e.kind(), format!("--attach {}: {e}", path.display())),
                )
            })?;
        let v = &r.volume;
        let how = if r.already_attached {
            "already attached"
        } else if r.indexed {
            "indexed and attached"
        } else {
            "attached"
        };
        let line = format!(
            "{}: {how} as {}{}",
            path.display(),
            v.id,
            v.name
                .as_deref()
                .map(|n| format!(" (volumes/{n})"))
                .unwrap_or_default()
        );
        tracing::info!("{line}");
        summary.push_str(&line);
        summary.push('\n');
    }
    Ok(summary)
}

/// Mounts `fs` at the mountpoint (the kernel mount only: requests are
/// served once the session runs).
fn mount(
    config: &Config,
    mountpoint: &Path,
    fs: FuseFs,
) -> std::result::Result<fuser::Session<FuseFs>, Fatal> {
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName("fsd".into()),
        fuser::MountOption::Subtype("fsd".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        // Archives come from strangers: their setuid bits and device nodes
        // are shown as they are but never honoured.
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    if config.mount.allow_other {
        fuse_cfg.acl = fuser::SessionACL::All;
    }
    fuse_cfg.n_threads = Some(config.mount.threads);
    fuse_cfg.clone_fd = true;
    fuser::Session::new(fs, mountpoint, &fuse_cfg).map_err(|e| {
        Fatal::new(
            exit::MOUNT_FAILED,
            Error::new(
                ErrorKind::Io,
                format!(
                    "cannot mount at {}: {e} (is /dev/fuse present and fuse3 installed? \
                     run scripts/setup)",
                    mountpoint.display()
                ),
            ),
        )
    })
}

/// The catalog side of start-up, done: the catalog, the chunk store and
/// every volume it lists, and the `--attach` archives.
struct Loaded {
    catalog: Arc<Catalog>,
    env: Arc<Env>,
    manager: Arc<Manager>,
    /// One line per `--attach` archive, for `ready`.
    attached: String,
}

/// Opens the catalog and the chunk store, reloads the volumes and attaches
/// the `--attach` archives. Runs on a thread of its own while the other
/// checks the mountpoint and mounts; the caller holds the state lock.
fn load(
    opts: &MountOptions,
    core: Arc<Core>,
    ids: Arc<Primed>,
) -> std::result::Result<Loaded, Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    let catalog = Catalog::open(&opts.state_dir.join("catalog.db"))
        .map_err(|e| Fatal::new(exit::STATE_DIR, e))?;
    let catalog = Arc::new(catalog);
    raise_fd_limit();
    let store = ChunkStore::open(&opts.state_dir.join("chunks"))
        .map_err(|e| Fatal::new(exit::STATE_DIR, e))?;
    let env = Arc::new(Env {
        catalog: catalog.clone(),
        store,
        sealer: Sealer::new(opts.config.native.seal_threads),
        budget: Budget::new(opts.config.native.dirty_limit_mb << 20),
        watch: Default::default(),
        stale: Default::default(),
        reaper: Default::default(),
        direct_io: opts.config.native.direct_io,
    });
    // Keep enough chunk buffers for a full write budget plus the sealer
    // queue, so a long copy reuses memory instead of faulting in fresh
    // pages; the reaper returns idle ones.
    let budget_chunks =
        (opts.config.native.dirty_limit_mb << 20) as usize / crate::store::treehash::LEAF;
    crate::store::buf::set_limit(budget_chunks + opts.config.native.seal_threads * 2);
    let manager = Arc::new(
        Manager::new(
            core,
            env.clone(),
            opts.state_dir.join("cache"),
            Duration::from_secs(opts.config.mount.archive_ttl_secs),
            Duration::from_secs(opts.config.native.ttl_secs),
        )
        .with_primed(ids),
    );
    let (ok, missing) = manager.load_all().map_err(failed)?;
    tracing::info!("{ok} volumes reloaded from the catalog, {missing} missing");
    let attached = attach_at_start(&manager, &opts.attach)?;
    Ok(Loaded {
        catalog,
        env,
        manager,
        attached,
    })
}

/// The mount side of start-up, done: the kernel mount and its session
/// running on its own thread.
struct Mounted {
    /// The mountpoint, canonical.
    mountpoint: PathBuf,
    unmounter: fuser::SessionUnmounter,
    entries: fuser::Notifier,
    inodes: fuser::Notifier,
    session: std::thread::JoinHandle<()>,
}

/// Checks the mountpoint, binds the control socket and mounts. The socket is
/// bound before the mount and served after start-up, so a tokenctl that
/// finds the mount can connect at once and waits in the listen queue.
fn mount_side(
    opts: &MountOptions,
    fs: FuseFs,
    events: mpsc::Sender<Event>,
    sigs: SigSet,
) -> std::result::Result<(Mounted, Server), Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    let socket = Server::bind(&config::socket_path(&opts.state_dir)).map_err(failed)?;
    let mut session = mount(&opts.config, &mountpoint, fs)?;
    let mut unmounter = session.unmount_callable();
    let entries = session.notifier();
    let inodes = session.notifier();
    let signals = events.clone();
    let session = std::thread::Builder::new()
        .name("fsd-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = events.send(Event::SessionEnded(r));
        });
    let session = match session {
        Ok(t) => t,
        Err(e) => {
            let _ = unmounter.unmount();
            return Err(failed(Error::io("starting the FUSE session", e)));
        }
    };
    // The signal thread; SIGTERM before it starts stays pending until then.
    let signal_thread = std::thread::Builder::new()
        .name("fsd-signals".into())
        .spawn(move || {
            while let Ok(sig) = sigs.wait() {
                if signals.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = signal_thread {
        let _ = unmounter.unmount();
        return Err(failed(Error::io("starting the signal thread", e)));
    }
    set_read_ahead(&mountpoint, opts.config.mount.read_ahead_kb);
    let mounted = Mounted {
        mountpoint,
        unmounter,
        entries,
        inodes,
        session,
    };
    Ok((mounted, socket))
}

/// What start-up leaves running, besides the FUSE session.
struct Started {
    catalog: Arc<Catalog>,
    attached: String,
    _control: std::thread::JoinHandle<()>,
}

/// After both sides: connects the manager to the kernel's entry cache,
/// starts the background chunk reaper and the offload engine, and serves
/// the control socket. FUSE requests need none of it (the gate may already
/// be open), and only control requests attach or detach, so the kernel
/// holds no entry the invalidator would have had to drop.
fn finish(
    opts: &MountOptions,
    loaded: Loaded,
    mounted: &Mounted,
    socket: Server,
) -> std::result::Result<Started, Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    let Loaded {
        catalog,
        env,
        manager,
        attached,
    } = loaded;
    let entries = mounted.entries.clone();
    manager.set_invalidator(Box::new(move |parent, name| {
        let _ = entries.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::from_bytes(name));
    }));
    crate::volume::native::file::start_reaper(&env).map_err(failed)?;
    let offload = Offload::new(
        manager.core().clone(),
        env,
        config::socket_path(&opts.state_dir).display().to_string(),
        mounted.mountpoint.clone(),
        &opts.config.tokens,
    )
    .map_err(failed)?;
    let inodes = mounted.inodes.clone();
    offload.set_invalidator(Box::new(move |ino| {
        // Offload writes change files behind the kernel's back: drop its
        // cached pages and attributes of the destination.
        let _ = inodes.inval_inode(fuser::INodeNo(ino), 0, 0);
    }));
    offload.start_sweeper();
    let service = Arc::new(Service::new(
        manager,
        offload,
        &mounted.mountpoint,
        &opts.state_dir,
    ));
    Ok(Started {
        catalog,
        attached,
        _control: socket.serve(service),
    })
}

/// Unmounts, lazily if the mount is busy (open files keep being served
/// until they close), and waits for the session's requests to drain: the
/// session ends when the kernel says the mount is gone, but the wait is
/// bounded.
fn unmount_and_drain(
    unmounter: &mut fuser::SessionUnmounter,
    mountpoint: &Path,
    session: std::thread::JoinHandle<()>,
) {
    if let Err(e) = unmounter.unmount() {
        tracing::warn!(
            "unmount: {e}; the mount is busy, detaching it lazily and waiting for open files to \
             close"
        );
        let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    drain(session);
}

fn drain(session: std::thread::JoinHandle<()>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !session.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !session.is_finished() {
        tracing::warn!("the FUSE session did not end within 30 s; exiting anyway");
    } else {
        let _ = session.join();
    }
}

/// Serves the mount until it is unmounted or the daemon is signalled.
/// `ready` is called once start-up has finished and requests are served,
/// with one line per `--attach` archive.
///
/// Once the state directory is locked, start-up runs on two threads: one
/// opens the catalog, reloads the volumes and attaches the `--attach`
/// archives ([`load`]); the other checks the mountpoint and mounts
/// ([`mount_side`]). FUSE requests that arrive before both are done wait at
/// the start-up gate ([`crate::fuse::gate`]). If start-up fails after the
/// mount, they get EIO and the mount is removed before the error returns.
pub fn run(opts: &MountOptions, ready: impl FnOnce(&str)) -> std::result::Result<(), Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    // Block the shutdown signals in every thread; one thread waits for them.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block()
        .map_err(|e| failed(Error::new(ErrorKind::Io, format!("blocking signals: {e}"))))?;
    // After the signal mask, which the thread inherits.
    let ids = Arc::new(Primed::default());
    prefetch(&opts.state_dir, &opts.attach, ids.clone());

    // Catalog, chunks and caches are private to the daemon's user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _lock = lock_state_dir(&opts.state_dir)?;
    let core = Arc::new(Core::new());
    let gate = Arc::new(StartGate::default());
    let (tx, rx) = mpsc::channel::<Event>();
    // The side that finishes last opens the gate at once, without waiting
    // for this thread to join the other.
    let pending = AtomicUsize::new(2);
    let done = || {
        if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            gate.open();
        }
    };
    let load_and_open = || {
        let r = load(opts, core.clone(), ids.clone());
        if r.is_ok() {
            done();
        }
        r
    };
    let (mounted, loaded) = std::thread::scope(|s| {
        let loader = std::thread::Builder::new()
            .name("fsd-load".into())
            .spawn_scoped(s, load_and_open);
        let fs = FuseFs::new(core.clone(), gate.clone());
        let mounted = mount_side(opts, fs, tx.clone(), sigs);
        if mounted.is_ok() {
            done();
        }
        let loaded = match loader {
            Ok(h) => h.join().unwrap_or_else(|_| {
                Err(failed(Error::new(
                    ErrorKind::Io,
                    "start-up: the catalog thread panicked",
                )))
            }),
            Err(_) => load_and_open(),
        };
        (mounted, loaded)
    });
    ids.close();
    // A mountpoint refusal comes first, as it did when the mountpoint was
    // checked before anything else.
    let (mut mounted, socket) = mounted?;
    let started = match loaded.and_then(|l| finish(opts, l, &mounted, socket)) {
        Ok(s) => s,
        Err(f) => {
            gate.fail();
            unmount_and_drain(&mut mounted.unmounter, &mounted.mountpoint, mounted.session);
            return Err(f);
        }
    };
    let Mounted {
        mountpoint,
        mut unmounter,
        session,
        ..
    } = mounted;
    tracing::info!(
        mountpoint = %mountpoint.display(),
        state = %opts.state_dir.display(),
        "fsd is serving"
    );
    ready(&started.attached);

    let mut result = Ok(());
    match rx.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!("{sig:?} received; unmounting {}", mountpoint.display());
            unmount_and_drain(&mut unmounter, &mountpoint, session);
        }
        Ok(Event::SessionEnded(r)) => {
            if let Err(e) = r {
                result = Err(failed(Error::io("FUSE session", e)));
            }
            tracing::info!("{} was unmounted", mountpoint.display());
            drain(session);
        }
        Err(_) => drain(session),
    }
    if let Err(e) = started.catalog.sync() {
        tracing::warn!("catalog checkpoint at exit: {e}");
    }
    tracing::info!("fsd stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_and_devices() {
        assert_eq!(
            unescape_mountinfo("/mnt/a\\040b\\011c\\134d"),
            PathBuf::from("/mnt/a b\tc\\d")
        );
        assert_eq!(unescape_mountinfo("/x\\09"), PathBuf::from("/x\\09"));
        let root = mounts();
        let (_, dev) = root
            .iter()
            .find(|(p, _)| p == Path::new("/"))
            .expect("/ is mounted");
        assert!(dev.is_some(), "the root's device number is parsed");
    }
}
