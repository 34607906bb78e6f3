//! The daemon's control service: turns socket requests into manager calls.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::MountOptions;
use crate::control::server::Handler;
use crate::control::{DaemonStatus, Request};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::fs::types::Timespec;
use crate::util;
use crate::volume::manager::Manager;

pub struct Service {
    manager: Arc<Manager>,
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
    pub fn new(manager: Arc<Manager>, opts: &MountOptions) -> Self {
        Service {
            manager,
            mountpoint: opts.mountpoint.display().to_string(),
            state_dir: opts.state_dir.display().to_string(),
            started: Instant::now(),
            started_ns: Timespec::now().as_nanos(),
        }
    }

    fn daemon_status(&self) -> Result<DaemonStatus> {
        let vols = self.manager.volumes()?;
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
        })
    }
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
        }
    }
}
