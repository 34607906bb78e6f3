//! The daemon's control service: turns socket requests into manager calls.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

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
}

fn json(v: impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("encoding reply: {e}")))
}

impl Service {
    /// The control service of the mount at `mountpoint` (canonical), whose
    /// state is in `state_dir`.
    pub fn new(
        manager: Arc<Manager>,
        offload: Arc<Offload>,
        mountpoint: &Path,
        state_dir: &Path,
    ) -> Self {
        Service {
            manager,
            offload,
            mountpoint: mountpoint.display().to_string(),
            state_dir: state_dir.display().to_string(),
            started: Instant::now(),
            started_ns: Timespec::now().as_nanos(),
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
            attached: vols.iter().filter(|v| v.state == "attached").count(),
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
    fn handle(
        &self,
        req: Request,
        caller: &Caller,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value> {
        match req {
            Request::Ping => json(serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
            })),
            Request::Attach { path, name, format } => json(self.manager.attach(
                Path::new(&path),
                name.as_deref(),
                format,
                caller,
                progress,
            )?),
            Request::Volumes => json(self.manager.volumes()?),
            Request::Status { volume: None } => json(self.daemon_status()?),
            Request::Status { volume: Some(v) } => json(self.manager.status(&v)?),
            Request::Detach { volume, force } => json(self.manager.detach(&volume, force, caller)?),
            Request::Create { name } => json(self.manager.create(&name, caller)?),
            Request::Destroy { volume } => json(self.manager.destroy(&volume, caller)?),
            Request::Fsck { catalog: true, .. } => json(self.manager.fsck_catalog(caller)?),
            Request::Fsck { volume, repair, .. } => {
                json(self.manager.fsck(volume.as_deref(), repair, caller)?)
            }
            Request::OffloadRead(r) => json(self.offload.read(&r, caller)?),
            Request::OffloadWrite(r) => json(self.offload.write(&r, caller)?),
            Request::TokenList => json(self.offload.list(caller)?),
            Request::TokenStatus { token } => json(self.offload.status(&token)?),
            Request::TokenRevoke { token } => json(self.offload.revoke(&token)?),
            Request::TokenLimits => json(self.offload.limits()),
        }
    }
}
