//! The daemon side of the control socket.

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{Reply, Request, read_frame, write_frame};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fs::perm::Caller;

/// What serves requests; implemented by the daemon's service.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request,
        caller: &Caller,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value>;
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

    /// Accepts connections until the process ends, one thread each.
    pub fn serve(self, handler: Arc<dyn Handler>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("fsd-control".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            let h = handler.clone();
                            let _ = std::thread::Builder::new()
                                .name("fsd-conn".into())
                                .spawn(move || serve_conn(stream, h.as_ref()));
                        }
                        Err(e) => tracing::warn!("control socket accept: {e}"),
                    }
                }
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

fn peer(stream: &UnixStream) -> Result<Caller> {
    let cred = getsockopt(stream, PeerCredentials)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("SO_PEERCRED: {e}")))?;
    Ok(Caller::from_peer(cred.pid() as u32, cred.uid(), cred.gid()))
}

fn serve_conn(stream: UnixStream, handler: &dyn Handler) {
    let caller = match peer(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("control connection refused: {e}");
            return;
        }
    };
    let (Ok(mut writer), Ok(mut progress_writer)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let body = match read_frame(&mut reader) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                let _ = write_frame(&mut writer, &error_reply(&e));
                return;
            }
        };
        let reply = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => {
                let op = req.name();
                tracing::debug!(uid = caller.uid, pid = caller.pid, "control request {op}");
                // Progress is best effort: a client that stopped listening
                // does not stop the work.
                let mut progress = |done: u64, total: u64| {
                    let _ = write_frame(&mut progress_writer, &Reply::Progress { done, total });
                };
                match handler.handle(req, &caller, &mut progress) {
                    Ok(result) => Reply::Ok { result },
                    Err(e) => {
                        tracing::info!(uid = caller.uid, "control request {op} failed: {e}");
                        error_reply(&e)
                    }
                }
            }
            Err(e) => Reply::Error {
                code: ErrorKind::Protocol,
                message: format!("malformed request: {e}"),
            },
        };
        if write_frame(&mut writer, &reply).is_err() {
            return;
        }
    }
}

fn error_reply(e: &Error) -> Reply {
    Reply::Error {
        code: e.kind(),
        message: e.to_string(),
    }
}
