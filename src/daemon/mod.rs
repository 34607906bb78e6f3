//! The `fsd mount` lifecycle: check the state directory and mountpoint, lock
//! the state directory, open the catalog, reload volumes, serve the control
//! socket and the FUSE session, and unmount cleanly on SIGTERM or SIGINT.

pub mod log;
pub mod reserve;
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

use self::reserve::Reserve;
pub use self::service::Service;
use crate::config::{self, Config};
use crate::control::server::Server;
use crate::error::{Error, ErrorKind};
use crate::fs::Core;
use crate::fuse::FuseFs;
use crate::fuse::gate::StartGate;
use crate::medium::identity::Primed;
use crate::store::catalog::Catalog;
use crate::store::chunks::ChunkStore;
use crate::store::guard;
use crate::token::engine::Offload;
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
    let st = match statx(&canon, 0) {
        Ok(st) => st,
        Err(e) => return fail(ErrorKind::Invalid, format!("mountpoint {shown}: {e}")),
    };
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return fail(
            ErrorKind::NotDir,
            format!("mountpoint {shown}: not a directory"),
        );
    }
    // The kernel says whether the path is the root of a mount (Linux 5.8+);
    // older kernels leave the attribute out of the mask, and mountinfo is
    // read instead.
    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    let mounted = if st.stx_attributes_mask & root != 0 {
        st.stx_attributes & root != 0
    } else {
        mounts().iter().any(|(p, _)| p == &canon)
    };
    if mounted {
        return fail(
            ErrorKind::Busy,
            format!("mountpoint {shown}: something is already mounted there; unmount it first"),
        );
    }
    Ok(canon)
}

/// statx(2) of `path` (which must not end in a symlink to follow) with
/// `flags`, asking for the basic fields.
fn statx(path: &Path, flags: i32) -> std::io::Result<libc::statx> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer the size of a
    // struct statx, which the kernel fills on success.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            st.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statx succeeded, so the kernel wrote the struct.
    Ok(unsafe { st.assume_init() })
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
/// The mount's device number comes from a statx of the mountpoint with
/// AT_STATX_DONT_SYNC, which FUSE answers from the kernel's cached
/// attributes without sending a request: a request would wait for the
/// daemon's own workers just as a caller's first requests arrive, and while
/// it runs the mount is busy, so an unmount issued at that moment failed
/// with EBUSY. Where that is not possible, mountinfo (the last mount on the
/// path is ours) gives it.
fn set_read_ahead(mountpoint: &Path, kb: u32) {
    if kb == 0 {
        return;
    }
    let dev = match statx(mountpoint, libc::AT_STATX_DONT_SYNC) {
        Ok(st) => Some((st.stx_dev_major, st.stx_dev_minor)),
        Err(_) => mounts()
            .into_iter()
            .rev()
            .find(|(p, _)| p == mountpoint)
            .and_then(|(_, dev)| dev),
    };
    let Some((major, minor)) = dev else {
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
    fuse_cfg.poll_after_metadata = Duration::from_micros(config.mount.poll_us.into());
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
    startup: guard::Startup,
}

/// The daemon's core on a prepared and locked state directory, without a
/// mount: the catalog and the guard's decisions for this run, the chunk
/// store and its environment, and the `Manager` over `core`. The new run is
/// not recorded yet ([`guard::record_run`]) and no volume is loaded
/// ([`Manager::load_all`]). `fsd mount` starts from here, and so do the
/// core tests (`tests/common/core.rs`), so they build exactly what the
/// daemon builds.
pub struct Opened {
    pub catalog: Arc<Catalog>,
    pub env: Arc<Env>,
    pub manager: Arc<Manager>,
    pub startup: guard::Startup,
}

/// See [`Opened`]. `ids` gives medium identities computed ahead
/// ([`Primed::closed`] for none).
pub fn open_core(
    state: &Path,
    config: &Config,
    core: Arc<Core>,
    ids: Arc<Primed>,
) -> std::result::Result<Opened, Fatal> {
    let unusable = |e: Error| Fatal::new(exit::STATE_DIR, e);
    guard::precheck(state).map_err(unusable)?;
    let catalog = Catalog::open(&state.join("catalog.db")).map_err(unusable)?;
    // The new run is recorded in `finish`, off the path of the first
    // answer (see `guard::decide`).
    let startup = guard::decide(state, &catalog, &config.catalog).map_err(unusable)?;
    let catalog = Arc::new(catalog);
    raise_fd_limit();
    let store =
        ChunkStore::open(&state.join("chunks")).map_err(|e| Fatal::new(exit::STATE_DIR, e))?;
    let env = Arc::new(Env {
        catalog: catalog.clone(),
        chunks: crate::store::access::HotChunks::new(store.clone()),
        store,
        sealer: Sealer::new(config.native.seal_threads),
        budget: Budget::new(config.native.dirty_limit_mb << 20),
        watch: Default::default(),
        stale: Default::default(),
        reaper: Default::default(),
        direct_io: config.native.direct_io,
        limits: config.limits.clone(),
    });
    // Keep enough chunk buffers for a full write budget plus the sealer
    // queue, so a long copy reuses memory instead of faulting in fresh
    // pages; the reaper returns idle ones.
    let budget_chunks =
        (config.native.dirty_limit_mb << 20) as usize / crate::store::treehash::LEAF;
    crate::store::buf::set_limit(budget_chunks + config.native.seal_threads * 2);
    crate::volume::archive::cache::configure(
        config.cache.budget_mb << 20,
        config.cache.checkpoint_mb << 20,
        config.archive.max_ratio,
    );
    let manager = Arc::new(
        Manager::new(
            core,
            env.clone(),
            state.join("cache"),
            Duration::from_secs(config.mount.archive_ttl_secs),
            Duration::from_secs(config.native.ttl_secs),
        )
        .with_primed(ids),
    );
    Ok(Opened {
        catalog,
        env,
        manager,
        startup,
    })
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
    // Store identity, run counter and the check after an unclean shutdown
    // (store::guard): a catalog that does not belong to the chunk store
    // stops start-up here, before recovery could touch a chunk.
    let Opened {
        catalog,
        env,
        manager,
        startup,
    } = open_core(&opts.state_dir, &opts.config, core, ids)?;
    let (ok, missing) = manager.load_all(startup.orphans).map_err(failed)?;
    tracing::info!("{ok} volumes reloaded from the catalog, {missing} missing");
    let attached = attach_at_start(&manager, &opts.attach)?;
    Ok(Loaded {
        catalog,
        env,
        manager,
        attached,
        startup,
    })
}

/// The mount side of start-up, done: the kernel mount, whose session the
/// main thread then runs.
struct Mounted {
    /// The mountpoint, canonical.
    mountpoint: PathBuf,
    unmounter: fuser::SessionUnmounter,
    entries: fuser::Notifier,
    inodes: fuser::Notifier,
}

/// Checks the mountpoint, binds the control socket and mounts. The socket is
/// bound before the mount and served after start-up, so a tokenctl that
/// finds the mount can connect at once and waits in the listen queue.
///
/// The signal thread starts first: nothing after the mount should create a
/// thread, since the first requests wait for whatever runs then.
fn mount_side(
    opts: &MountOptions,
    fs: FuseFs,
    events: mpsc::Sender<Event>,
    sigs: SigSet,
) -> std::result::Result<(fuser::Session<FuseFs>, Mounted, Server), Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    // SIGTERM before the thread starts stays pending until then.
    std::thread::Builder::new()
        .name("fsd-signals".into())
        .spawn(move || {
            while let Ok(sig) = sigs.wait() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| failed(Error::io("starting the signal thread", e)))?;
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    let socket = Server::bind(&config::socket_path(&opts.state_dir)).map_err(failed)?;
    let mut session = mount(&opts.config, &mountpoint, fs)?;
    let unmounter = session.unmount_callable();
    let entries = session.notifier();
    let inodes = session.notifier();
    set_read_ahead(&mountpoint, opts.config.mount.read_ahead_kb);
    let mounted = Mounted {
        mountpoint,
        unmounter,
        entries,
        inodes,
    };
    Ok((session, mounted, socket))
}

/// What start-up leaves running, besides the FUSE session.
struct Started {
    catalog: Arc<Catalog>,
    guard: guard::Guard,
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
    reserve: Arc<Reserve>,
) -> std::result::Result<Started, Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    let Loaded {
        catalog,
        env,
        manager,
        attached,
        startup,
    } = loaded;
    guard::record_run(&opts.state_dir, &catalog, &startup)
        .map_err(|e| Fatal::new(exit::STATE_DIR, e))?;
    let guard = guard::Guard::start(
        &opts.state_dir,
        catalog.clone(),
        env.store.clone(),
        &opts.config.catalog,
        startup,
    )
    .map_err(failed)?;
    let entries = mounted.entries.clone();
    manager.set_mountpoint(&mounted.mountpoint);
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
        reserve,
    ));
    Ok(Started {
        catalog,
        guard,
        attached,
        _control: socket.serve(
            service,
            crate::control::server::Limits::from_config(&opts.config.control),
        ),
    })
}

/// How long the FUSE session may take to end after the unmount.
const DRAIN: Duration = Duration::from_secs(30);

/// Unmounts, lazily if the mount is busy (open files keep being served
/// until they close), and waits for the main thread to report that the
/// session's requests have drained: the session ends when the kernel says
/// the mount is gone. Returns false if that did not happen within [`DRAIN`].
fn unmount_and_wait(
    unmounter: &mut fuser::SessionUnmounter,
    mountpoint: &Path,
    events: &mpsc::Receiver<Event>,
) -> bool {
    if let Err(e) = unmounter.unmount() {
        tracing::warn!(
            "unmount: {e}; the mount is busy, detaching it lazily and waiting for open files to \
             close"
        );
        let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    wait_for_session_end(events)
}

/// Waits up to [`DRAIN`] for [`Event::SessionEnded`]; further signals are
/// ignored meanwhile (the unmount is already under way).
fn wait_for_session_end(events: &mpsc::Receiver<Event>) -> bool {
    let deadline = Instant::now() + DRAIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::SessionEnded(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            Ok(Event::Signal(_)) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// The session did not end in time after the unmount: the main thread is
/// still inside it, so this thread ends the process, as the daemon has
/// always done after [`DRAIN`]. Open files on a lazily detached mount then
/// get ENOTCONN.
fn exit_without_drain(catalog: Option<&Catalog>, code: i32) -> ! {
    tracing::warn!("the FUSE session did not end within {DRAIN:?}; exiting anyway");
    if let Some(c) = catalog
        && let Err(e) = c.sync()
    {
        tracing::warn!("catalog checkpoint at exit: {e}");
    }
    log::flush(Duration::from_secs(2));
    std::process::exit(code)
}

/// Everything but serving FUSE requests, on the catalog thread: start-up's
/// catalog side ([`load`]), then, once the main thread has mounted, the
/// rest of start-up ([`finish`]), `ready`, and the wait for a signal or the
/// end of the session. Returns when the session has ended.
#[allow(clippy::too_many_arguments)]
fn lifecycle(
    opts: &MountOptions,
    core: Arc<Core>,
    ids: Arc<Primed>,
    gate: &StartGate,
    loaded_done: &(dyn Fn() + Sync),
    mounted: mpsc::Receiver<Option<(Mounted, Server)>>,
    events: mpsc::Receiver<Event>,
    reserve: Arc<Reserve>,
    ready: impl FnOnce(&str),
) -> std::result::Result<(), Fatal> {
    let failed = |e: Error| Fatal::new(exit::FAILED, e);
    let loaded = load(opts, core, ids.clone());
    if loaded.is_ok() {
        loaded_done();
    }
    ids.close();
    // None: the mount side failed, and the main thread reports it (a
    // mountpoint refusal comes first, as when it was checked before
    // anything else).
    let Ok(Some((mut mounted, socket))) = mounted.recv() else {
        return Ok(());
    };
    let started = match loaded.and_then(|l| finish(opts, l, &mounted, socket, reserve.clone())) {
        Ok(s) => s,
        Err(f) => {
            gate.fail();
            if !unmount_and_wait(&mut mounted.unmounter, &mounted.mountpoint, &events) {
                tracing::error!("{f}");
                exit_without_drain(None, f.code);
            }
            return Err(f);
        }
    };
    let mountpoint = &mounted.mountpoint;
    tracing::info!(
        mountpoint = %mountpoint.display(),
        state = %opts.state_dir.display(),
        "fsd is serving"
    );
    ready(&started.attached);
    // Once serving, off the path of start-up: allocating the reserve costs
    // a few milliseconds the first time (a delete before then allocates it
    // itself).
    reserve.restore();

    let mut result = Ok(());
    match events.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!("{sig:?} received; unmounting {}", mountpoint.display());
            if !unmount_and_wait(&mut mounted.unmounter, mountpoint, &events) {
                exit_without_drain(Some(&started.catalog), exit::OK);
            }
        }
        Ok(Event::SessionEnded(r)) => {
            if let Err(e) = r {
                result = Err(failed(Error::io("FUSE session", e)));
            }
            tracing::info!("{} was unmounted", mountpoint.display());
        }
        Err(_) => {}
    }
    if let Err(e) = started.catalog.sync() {
        tracing::warn!("catalog checkpoint at exit: {e}");
    }
    started.guard.at_exit();
    tracing::info!("fsd stopped");
    result
}

/// Serves the mount until it is unmounted or the daemon is signalled.
/// `ready` is called once start-up has finished and requests are served,
/// with one line per `--attach` archive.
///
/// Once the state directory is locked, start-up runs on two threads: one
/// opens the catalog, reloads the volumes and attaches the `--attach`
/// archives ([`load`]); the main thread checks the mountpoint, mounts
/// ([`mount_side`]) and then serves FUSE requests itself as the session's
/// first worker, so the first request after the mount needs no thread to
/// be created or woken. Requests that arrive before the catalog side is
/// done wait at the start-up gate ([`crate::fuse::gate`]). If start-up
/// fails after the mount, they get EIO and the mount is removed before the
/// error returns. The catalog thread then runs the rest of the daemon's
/// life ([`lifecycle`]).
pub fn run(opts: &MountOptions, ready: impl FnOnce(&str) + Send) -> std::result::Result<(), Fatal> {
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
    let reserve = Arc::new(Reserve::new(&opts.state_dir));
    let (tx, rx) = mpsc::channel::<Event>();
    // The side that finishes last opens the gate at once.
    let pending = AtomicUsize::new(2);
    let done = || {
        if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            gate.open();
        }
    };
    std::thread::scope(|s| {
        let (mounted_tx, mounted_rx) = mpsc::channel();
        let life = std::thread::Builder::new()
            .name("fsd-lifecycle".into())
            .spawn_scoped(s, || {
                lifecycle(
                    opts,
                    core.clone(),
                    ids.clone(),
                    &gate,
                    &done,
                    mounted_rx,
                    rx,
                    reserve.clone(),
                    ready,
                )
            })
            .map_err(|e| failed(Error::io("starting the catalog thread", e)))?;
        let joined = |h: std::thread::ScopedJoinHandle<'_, _>| {
            h.join().unwrap_or_else(|_| {
                Err(failed(Error::new(
                    ErrorKind::Io,
                    "the catalog thread panicked",
                )))
            })
        };
        let fs = FuseFs::new(core.clone(), gate.clone(), reserve.clone());
        let (session, mounted, socket) = match mount_side(opts, fs, tx.clone(), sigs) {
            Ok(m) => m,
            Err(f) => {
                let _ = mounted_tx.send(None);
                let _ = joined(life);
                return Err(f);
            }
        };
        let _ = mounted_tx.send(Some((mounted, socket)));
        done();
        let r = session.run();
        let _ = tx.send(Event::SessionEnded(r));
        joined(life)
    })
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
