//! The client side of the control socket, used by `tokenctl`.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{Reply, Request, read_frame, write_frame};
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

    /// Sends `req` and waits for its result, passing progress frames to
    /// `progress` as they arrive.
    pub fn call(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value> {
        write_frame(&mut self.writer, req)?;
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
