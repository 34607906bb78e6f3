//! The daemon's control service: turns socket requests into manager calls.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::reserve::Reserve;
use crate::control::calls::{Pong, Response};
use crate::control::server::Handler;
use crate::control::{DaemonStatus, Request};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::fs::types::Timespec;
use crate::token::engine::Offload;
use crate::util;
use crate::volume::manager::Manager;

pub struct Service {
    manager: Arc<Manager>,
    offload: Arc<Offload>,
    mountpoint: String,
    state_dir: String,
    started: Instant,
    started_ns: i64,
    reserve: Arc<Reserve>,
    /// `FSD_TEST_PANIC=1` at start: `status` of the volume [`TEST_PANIC`]
    /// panics, so the tests can check that a panicking control request is
    /// answered with an error and the daemon goes on.
    test_panic: bool,
}

/// The volume name whose `status` panics under `FSD_TEST_PANIC=1`.
const TEST_PANIC: &str = "fsd-test-panic";

impl Service {
    /// The control service of the mount at `mountpoint` (canonical), whose
    /// state is in `state_dir`.
    pub fn new(
        manager: Arc<Manager>,
        offload: Arc<Offload>,
        mountpoint: &Path,
        state_dir: &Path,
        reserve: Arc<Reserve>,
    ) -> Self {
        Service {
            manager,
            offload,
            mountpoint: mountpoint.display().to_string(),
            state_dir: state_dir.display().to_string(),
            started: Instant::now(),
            started_ns: Timespec::now().as_nanos(),
            reserve,
            test_panic: std::env::var_os("FSD_TEST_PANIC").is_some_and(|v| v == "1"),
        }
    }

    fn daemon_status(&self) -> Result<DaemonStatus> {
        let vols = self.manager.volumes()?;
        let env = self.manager.native_env();
        // Settle what the background collector has not got to yet, so the
        // hot tier's numbers reflect every unlink that has returned.
        crate::volume::native::file::collect(env);
        let (hot_chunks, hot_bytes) = self.manager.hot_usage()?;
        let fs = env.store.statfs()?;
        let (rss, rss_peak) = memory();
        let quarantined = env.store.quarantined();
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            mountpoint: self.mountpoint.clone(),
            state_dir: self.state_dir.clone(),
            started: util::fmt_utc(self.started_ns),
            uptime_secs: self.started.elapsed().as_secs(),
            volumes: vols.len(),
            attached: vols
                .iter()
                .filter(|v| v.state == crate::lifecycle::Attachment::Attached)
                .count(),
            open_files: self.manager.core().open_handles(),
            hot_chunks,
            hot_bytes,
            hot_total: fs.blocks * u64::from(fs.frsize),
            hot_free: fs.bavail * u64::from(fs.frsize),
            buffered: env.budget.used(),
            buffered_peak: env.budget.peak(),
            buffered_limit: env.budget.limit(),
            rss,
            rss_peak,
            quarantined_chunks: quarantined.len() as u64,
            quarantined_bytes: quarantined.iter().map(|q| q.1).sum(),
            quarantine_days: env.store.quarantine_days(),
            log_dropped: crate::daemon::log::dropped(),
        })
    }
}

/// VmRSS and VmHWM of this process in bytes.
fn memory() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

impl Handler for Service {
    /// A panic while serving a request answers that request with an I/O
    /// error (the panic hook logs message and backtrace) instead of ending
    /// the connection's thread; the daemon keeps serving.
    fn handle(
        &self,
        req: Request,
        caller: &Caller,
        passed: Option<OwnedFd>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve(req, caller, passed, progress)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("a control request from uid {} panicked", caller.uid);
            Err(Error::new(
                ErrorKind::Io,
                "internal error: the request panicked (message and backtrace in the daemon's \
                 log); fsd keeps serving",
            ))
        })
    }
}

impl Service {
    fn serve(
        &self,
        req: Request,
        caller: &Caller,
        passed: Option<OwnedFd>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response> {
        // Each arm's value must be the reply type of its call
        // (`control::calls`): `Response` has one variant per call.
        Ok(match req {
            Request::Ping => Response::Ping(Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
            }),
            Request::Attach { path, name, format } => Response::Attach(self.manager.attach(
                Path::new(&path),
                passed,
                name.as_deref(),
                format,
                caller,
                progress,
            )?),
            Request::Volumes => Response::Volumes(self.manager.volumes()?),
            Request::Status { volume: None } => Response::Status(self.daemon_status()?),
            Request::Status { volume: Some(v) } if self.test_panic && v == TEST_PANIC => {
                panic!("test panic: status {TEST_PANIC} with FSD_TEST_PANIC=1")
            }
            Request::Status { volume: Some(v) } => Response::VolumeStatus(self.manager.status(&v)?),
            // Deletes: on a full state filesystem, the reserve makes room
            // for their commit (see `reserve`).
            Request::Detach { volume, force } => Response::Detach(
                self.reserve
                    .for_delete(|| self.manager.detach(&volume, force, caller))?,
            ),
            Request::Create { name } => Response::Create(self.manager.create(&name, caller)?),
            Request::Destroy { volume } => Response::Destroy(
                self.reserve
                    .for_delete(|| self.manager.destroy(&volume, caller))?,
            ),
            Request::Fsck { catalog: true, .. } => {
                Response::FsckCatalog(self.manager.fsck_catalog(caller)?)
            }
            Request::Fsck { volume, repair, .. } => {
                Response::Fsck(self.manager.fsck(volume.as_deref(), repair, caller)?)
            }
            Request::OffloadRead(r) => Response::OffloadRead(self.offload.read(&r, caller)?),
            Request::OffloadWrite(r) => Response::OffloadWrite(self.offload.write(&r, caller)?),
            Request::TokenList => Response::TokenList(self.offload.list(caller)?),
            Request::TokenStatus { token } => Response::TokenStatus(self.offload.status(&token)?),
            Request::TokenRevoke { token } => {
                Response::TokenRevoke(self.offload.revoke(&token, caller)?)
            }
            Request::TokenLimits => Response::TokenLimits(self.offload.limits().clone()),
        })
    }
}
