//! A harness that drives the filesystem core through its Rust API, with no
//! FUSE mount: the daemon's core is built by the function `fsd mount` uses
//! (`fsd::daemon::open_core`), from a state directory in a tempdir, and
//! a test then calls the same `Core` methods the FUSE adapter
//! (`src/fuse/mod.rs`) calls for each request. Modelled on mountpoint-s3's
//! `mountpoint-s3-fs/tests/common/mod.rs` (`make_test_filesystem`), which
//! builds its filesystem the same way for `tests/fs.rs`.
//!
//! Everything that depends on how the daemon assembles its parts is in
//! [`build`], so a change of those parts (a constructor, a module that
//! moved) is fixed in one place.
//!
//! Included with `#[path]` by the `core_*` test files rather than from
//! `common/mod.rs`, so the mounted tests do not compile it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsd::config::Config;
use fsd::daemon::StateLock;
use fsd::fs::perm::Caller;
use fsd::fs::types::{Attr, Ctx, FileKind, OpenFlags};
use fsd::fs::{Core, VOLUMES_INO};
use fsd::medium::identity::Primed;
use fsd::store::catalog::Catalog;
use fsd::store::guard::{self, Startup};
use fsd::volume::manager::Manager;
use fsd::volume::native::file::Env;
use fsd::{ErrorKind, Result};

/// The parts of a running daemon that the tests reach, as [`build`] made
/// them.
pub struct Parts {
    pub core: Arc<Core>,
    pub manager: Arc<Manager>,
    pub env: Arc<Env>,
    pub catalog: Arc<Catalog>,
    pub startup: Startup,
    pub lock: StateLock,
}

/// Builds the daemon's core on the state directory `state` with the
/// daemon's own `fsd::daemon::open_core`, minus the mount, the control
/// socket and the background threads (reaper, catalog guard, offload
/// engine): lock the state directory, open the catalog and the chunk store
/// through the guard, record the run, and reload every volume the catalog
/// lists (recovery included), as a restart does.
pub fn build(state: &Path, config: &Config) -> Result<Parts> {
    fsd::daemon::prepare_state_dir(state).map_err(|f| f.error)?;
    let lock = fsd::daemon::lock_state_dir(state).map_err(|f| f.error)?;
    let core = Arc::new(Core::new());
    let fsd::daemon::Opened {
        catalog,
        env,
        manager,
        startup,
    } = fsd::daemon::open_core(state, config, core.clone(), Arc::new(Primed::closed()))
        .map_err(|f| f.error)?;
    guard::record_run(state, &catalog, &startup)?;
    manager.load_all(startup.orphans)?;
    Ok(Parts {
        core,
        manager,
        env,
        catalog,
        startup,
        lock,
    })
}

/// Removes the chunk files no committed data references any more, as the
/// daemon's background reaper does a moment after an unlink or a release.
pub fn collect(env: &Env) {
    fsd::volume::native::file::collect(env);
}

/// A daemon's core on a state directory of its own, without a mount.
pub struct TestCore {
    /// Holds the state directory (and any media a test puts beside it).
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    parts: Option<Parts>,
}

impl TestCore {
    /// A core on a fresh state directory, with the default configuration.
    pub fn new() -> TestCore {
        let dir = tempfile::Builder::new()
            .prefix("fsd-core-")
            .tempdir()
            .unwrap();
        let state = dir.path().join("state");
        let parts = build(&state, &Config::embedded()).expect("building the core");
        TestCore {
            dir,
            state,
            parts: Some(parts),
        }
    }

    fn parts(&self) -> &Parts {
        self.parts.as_ref().expect("the core is running")
    }

    pub fn core(&self) -> &Core {
        &self.parts().core
    }

    pub fn manager(&self) -> &Manager {
        &self.parts().manager
    }

    pub fn env(&self) -> &Env {
        &self.parts().env
    }

    /// Stops the core as a clean shutdown does (catalog checkpoint, run
    /// marked clean, state directory unlocked) and starts a new one on the
    /// same state directory, as a restart of the daemon does.
    pub fn restart(&mut self) {
        self.stop();
        self.parts = Some(build(&self.state, &Config::embedded()).expect("restarting the core"));
    }

    fn stop(&mut self) {
        if let Some(p) = self.parts.take() {
            let _ = p.catalog.sync();
            guard::clean_exit(&self.state, &p.startup);
        }
    }

    /// Creates a native volume named `name` as `caller` and returns the
    /// global inode of its root, found through `/volumes/<id>`.
    pub fn create_volume(&self, name: &str, caller: &Caller) -> u64 {
        let info = self.manager().create(name, caller).unwrap();
        self.lookup(VOLUMES_INO, info.id.as_bytes()).unwrap().ino
    }

    /// The root of the volume named `name`, through the `/volumes/<name>`
    /// symlink, as a path walk in the mount would find it.
    pub fn volume_root(&self, name: &str) -> Result<u64> {
        let link = self.lookup(VOLUMES_INO, name.as_bytes())?;
        assert_eq!(link.kind, FileKind::Symlink);
        let id = self.core().readlink(link.ino)?;
        Ok(self.lookup(VOLUMES_INO, &id)?.ino)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.core().lookup(parent, name).map(|(a, _)| a)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.core().getattr(ino).map(|(a, _)| a)
    }

    /// `mkdir` as the adapter sends it (umask applied by the core).
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, ctx: &Ctx) -> Result<Attr> {
        self.core()
            .dir_op(parent, |v, p| v.mkdir(p, name.as_bytes(), mode, 0o022, ctx))
            .map(|(a, _)| a)
    }

    pub fn unlink(&self, parent: u64, name: &str, ctx: &Ctx) -> Result<()> {
        self.core()
            .dir_op_unit(parent, |v, p| v.unlink(p, name.as_bytes(), ctx))
    }

    pub fn rmdir(&self, parent: u64, name: &str, ctx: &Ctx) -> Result<()> {
        self.core()
            .dir_op_unit(parent, |v, p| v.rmdir(p, name.as_bytes(), ctx))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        ctx: &Ctx,
    ) -> Result<()> {
        self.core().rename(
            parent,
            name.as_bytes(),
            newparent,
            newname.as_bytes(),
            0,
            ctx,
        )
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &str, ctx: &Ctx) -> Result<Attr> {
        self.core()
            .link(ino, newparent, newname.as_bytes(), ctx)
            .map(|(a, _)| a)
    }

    /// `open(O_CREAT|O_EXCL|O_WRONLY)`, writes, `close`: create, write,
    /// flush and release, as the kernel sends them for a program's
    /// open/write/close. Returns the new file's attributes from `create`.
    pub fn write_new(&self, parent: u64, name: &str, data: &[u8], ctx: &Ctx) -> Result<Attr> {
        let (attr, _, fh, _) = self.core().create(
            parent,
            name.as_bytes(),
            libc::S_IFREG | 0o644,
            0o022,
            OpenFlags(libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
            ctx,
        )?;
        let written = self.write_all(fh, 0, data);
        let flushed = self.core().flush(fh, OWNER);
        let released = self.core().release(fh);
        written.and(flushed).and(released)?;
        Ok(attr)
    }

    /// Writes all of `data` at `offset` through handle `fh` on behalf of
    /// [`OWNER`], in the adapter's request sizes.
    pub fn write_all(&self, fh: u64, offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < data.len() {
            let end = (done + MAX_IO).min(data.len());
            let n = self
                .core()
                .write(fh, offset + done as u64, &data[done..end], Some(OWNER))?;
            assert!(n > 0, "a write of {} bytes wrote nothing", end - done);
            done += n as usize;
        }
        Ok(())
    }

    /// Opens `ino` read-only as `ctx`; returns the handle.
    pub fn open_read(&self, ino: u64, ctx: &Ctx) -> Result<u64> {
        self.core()
            .open(ino, OpenFlags(libc::O_RDONLY), ctx)
            .map(|(fh, _)| fh)
    }

    /// Reads through `fh` from 0 to the end of the file, in the adapter's
    /// request sizes.
    pub fn read_fh(&self, fh: u64) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            self.core()
                .read(fh, all.len() as u64, MAX_IO as u32, &mut buf)?;
            if buf.is_empty() {
                return Ok(all);
            }
            all.extend_from_slice(&buf);
        }
    }

    /// open, read to the end, release.
    pub fn read_all(&self, ino: u64, ctx: &Ctx) -> Result<Vec<u8>> {
        let fh = self.open_read(ino, ctx)?;
        let data = self.read_fh(fh);
        self.core().release(fh)?;
        data
    }

    /// The names in directory `ino`, without `.` and `..`, in listing
    /// order.
    pub fn names(&self, ino: u64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.core().readdir(ino, 0, &mut |e| {
            out.push(String::from_utf8_lossy(e.name).into_owned());
            true
        })?;
        out.retain(|n| n != "." && n != "..");
        Ok(out)
    }

    /// Number of chunk files in the chunk store, after a collection.
    pub fn chunk_files(&self) -> usize {
        collect(self.env());
        count_chunk_files(&self.state)
    }
}

impl Default for TestCore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The lock owner the tests write as (the kernel passes the writing
/// process's; any fixed value will do for one writer).
pub const OWNER: u64 = 0x5eed;

/// The largest read or write the kernel sends (1 MiB, `max_write`).
pub const MAX_IO: usize = 1 << 20;

/// A caller as FUSE passes one: uid, gid and pid.
pub fn ctx(uid: u32, gid: u32) -> Ctx {
    Ctx { uid, gid, pid: 1 }
}

/// The same user as a control-socket caller (no supplementary groups).
pub fn caller(uid: u32, gid: u32) -> Caller {
    Caller {
        uid,
        gid,
        groups: Vec::new(),
        pid: 1,
    }
}

/// Chunk files in the chunk store of `state` (fan-out directories only:
/// not `tmp`, the quarantine, spares or the store's own files).
pub fn count_chunk_files(state: &Path) -> usize {
    let Ok(top) = std::fs::read_dir(state.join("chunks")) else {
        return 0;
    };
    top.flatten()
        .filter(|e| e.file_name() != "tmp" && !e.file_name().to_string_lossy().starts_with('.'))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// Asserts that `r` failed with `kind`, and that the errno the adapter
/// would reply with is `errno`.
#[track_caller]
pub fn assert_fails<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, errno: i32) {
    match r {
        Ok(v) => panic!("expected {kind:?} (errno {errno}), got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.errno(), errno, "{e}");
        }
    }
}

/// Deterministic bytes for file contents (xorshift), distinct per seed so
/// that two files never share a chunk.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
