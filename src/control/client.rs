//! The client side of the control socket, used by `tokenctl`.

use std::io::{BufReader, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use super::calls::Call;
use super::{Reply, Request, frame_bytes, read_frame};
use crate::error::{Error, ErrorKind, Result};

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon's socket at `path`.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach fsd at {}: {e}; is `fsd mount` running with this state directory?",
                    path.display()
                ),
            )
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| Error::io("control socket", e))?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends the call and waits for its typed result, passing progress
    /// frames to `progress` as they arrive.
    pub fn call<C: Call>(
        &mut self,
        call: &C,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<C::Reply> {
        self.call_passing(call, None, progress)
    }

    /// [`Client::call`], passing `fd` to the daemon with the request
    /// (SCM_RIGHTS): `attach` sends the medium opened with the caller's own
    /// rights, so the daemon never opens the caller's path for it.
    pub fn call_passing<C: Call>(
        &mut self,
        call: &C,
        fd: Option<BorrowedFd<'_>>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<C::Reply> {
        let v = self.call_untyped(&call.request(), fd, progress)?;
        serde_json::from_value(v).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!(
                    "unexpected reply from fsd to {}: {e}",
                    call.request().name()
                ),
            )
        })
    }

    /// The result of `req` as plain JSON. Only [`Client::call_passing`]
    /// uses it; everything else goes through a typed [`Call`].
    fn call_untyped(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value> {
        if let Err(e) = self.send(req, fd) {
            // The daemon may have refused the connection (too many from
            // this user) or the request (too large) before reading it all;
            // its error frame explains that better than EPIPE does.
            if let Ok(Some(body)) = read_frame(&mut self.reader)
                && let Ok(Reply::Error { code, message }) = serde_json::from_slice::<Reply>(&body)
            {
                return Err(Error::new(code, message));
            }
            return Err(e);
        }
        self.reply(progress)
    }

    /// Writes the request frame with `sendmsg(MSG_NOSIGNAL)`: tokenctl
    /// restores SIGPIPE's default so a closed stdout ends it quietly, but a
    /// daemon that hung up must stay an error (EPIPE) here, not a silent
    /// death. The passed `fd` rides on the first chunk only.
    fn send(&mut self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let buf = frame_bytes(req)?;
        let werr = |e| Error::io("control socket: writing", e);
        let mut sent = 0;
        let mut pass = fd.map(|f| [f.as_raw_fd()]);
        while sent < buf.len() {
            let cmsg: Vec<ControlMessage<'_>> =
                pass.iter().map(|r| ControlMessage::ScmRights(r)).collect();
            match sendmsg::<()>(
                self.writer.as_raw_fd(),
                &[IoSlice::new(&buf[sent..])],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(0) => {
                    return Err(werr(std::io::Error::from(std::io::ErrorKind::WriteZero)));
                }
                Ok(n) => {
                    sent += n;
                    pass = None;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(werr(std::io::Error::from(e))),
            }
        }
        Ok(())
    }

    fn reply(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<serde_json::Value> {
        loop {
            let body = read_frame(&mut self.reader)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    "fsd closed the connection before answering",
                )
            })?;
            let reply: Reply = serde_json::from_slice(&body).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("malformed reply from fsd: {e}"),
                )
            })?;
            match reply {
                Reply::Progress { done, total } => progress(done, total),
                Reply::Ok { result } => return Ok(result),
                Reply::Error { code, message } => return Err(Error::new(code, message)),
            }
        }
    }
}
