//! The control socket protocol shared by `fsd` and `tokenctl`.
//!
//! A Unix stream socket at `STATE/fsd.sock`. Each message is a 4-byte
//! big-endian length followed by that many bytes of JSON. The client sends a
//! [`Request`]; the daemon answers with zero or more [`Reply::Progress`]
//! frames and then exactly one [`Reply::Ok`] or [`Reply::Error`]. A
//! connection may carry any number of requests, one after another. Each
//! request's reply type is fixed in [`calls`]: the client calls with a
//! [`calls::Call`] and gets its `Reply`, the daemon answers with a
//! [`calls::Response`].
//!
//! The socket is reachable by every local user; each request is authorised
//! with the caller's uid and gid from SO_PEERCRED, never with anything the
//! message claims. A request may carry one descriptor (SCM_RIGHTS, sent with
//! the frame's first bytes): `attach` passes the medium the client opened
//! with its own rights. What a connection may cost the daemon (connections
//! per uid, timeouts, request size) is bounded in [`server`].

pub mod calls;
pub mod client;
pub mod server;

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::token::engine::{ReadRequest, WriteRequest};
use crate::volume::manager::FormatChoice;

/// Replies larger than this are refused by the client. The daemon's limit on
/// requests is much lower and configurable (`control.max_request_kb`, see
/// [`server`]); replies come from the trusted daemon and a token list can be
/// long.
pub const MAX_FRAME: u32 = 16 << 20;

/// Requests from `tokenctl` to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and version check.
    Ping,
    Attach {
        path: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        format: FormatChoice,
    },
    Volumes,
    Status {
        #[serde(default)]
        volume: Option<String>,
    },
    Detach {
        volume: String,
        #[serde(default)]
        force: bool,
    },
    Create {
        name: String,
    },
    Destroy {
        volume: String,
    },
    Fsck {
        #[serde(default)]
        volume: Option<String>,
        #[serde(default)]
        repair: bool,
        /// Check the catalog database (`PRAGMA integrity_check`) instead.
        #[serde(default)]
        catalog: bool,
    },
    OffloadRead(ReadRequest),
    OffloadWrite(WriteRequest),
    TokenList,
    TokenStatus {
        token: String,
    },
    TokenRevoke {
        token: String,
    },
    TokenLimits,
}

impl Request {
    /// The operation's name, for logs: requests carry tokens, which must
    /// never be logged, so the request itself is never formatted.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Attach { .. } => "attach",
            Request::Volumes => "volumes",
            Request::Status { .. } => "status",
            Request::Detach { .. } => "detach",
            Request::Create { .. } => "create",
            Request::Destroy { .. } => "destroy",
            Request::Fsck { .. } => "fsck",
            Request::OffloadRead(_) => "offload-read",
            Request::OffloadWrite(_) => "offload-write",
            Request::TokenList => "token-list",
            Request::TokenStatus { .. } => "token-status",
            Request::TokenRevoke { .. } => "token-revoke",
            Request::TokenLimits => "token-limits",
        }
    }
}

/// Frames from the daemon. The daemon sends `Reply<calls::Response>`, the
/// typed answer; the client reads `Reply<serde_json::Value>` and then
/// decodes the result into the reply type of the call it made
/// ([`calls::Call`]). Both are the same JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply<R = serde_json::Value> {
    Progress { done: u64, total: u64 },
    Ok { result: R },
    Error { code: ErrorKind, message: String },
}

/// `tokenctl status` without a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub mountpoint: String,
    pub state_dir: String,
    pub started: String,
    pub uptime_secs: u64,
    pub volumes: usize,
    pub attached: usize,
    pub open_files: usize,
    /// Unique chunks in the hot tier and their bytes.
    pub hot_chunks: u64,
    pub hot_bytes: u64,
    /// Capacity of the hot tier's filesystem.
    pub hot_total: u64,
    pub hot_free: u64,
    /// Write data buffered now, the most ever, and the limit.
    pub buffered: u64,
    pub buffered_peak: u64,
    pub buffered_limit: u64,
    /// Resident memory of the daemon now and at its peak (VmRSS, VmHWM).
    pub rss: u64,
    pub rss_peak: u64,
    /// Chunk files start-up moved to STATE/chunks/.quarantine, their
    /// bytes, and the days they are kept (see README, Semantics).
    #[serde(default)]
    pub quarantined_chunks: u64,
    #[serde(default)]
    pub quarantined_bytes: u64,
    #[serde(default)]
    pub quarantine_days: u64,
    /// Log lines dropped since start (the log queue was full or a write
    /// failed, e.g. on a full disk): the log is bounded rather than the
    /// daemon slowed, so this says how much of it is missing. Default for
    /// replies from daemons that predate it.
    #[serde(default)]
    pub log_dropped: u64,
}

/// One frame's bytes: the length, then the JSON.
pub fn frame_bytes(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, value)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("encoding a message: {e}")))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME as usize {
        return Err(Error::new(ErrorKind::Protocol, "message too large"));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> Result<()> {
    let buf = frame_bytes(value)?;
    w.write_all(&buf)
        .map_err(|e| Error::io("control socket: writing", e))?;
    w.flush()
        .map_err(|e| Error::io("control socket: writing", e))
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("control socket: reading", e)),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("control socket: frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| Error::io("control socket: reading a frame body", e))?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip() {
        let req = Request::Attach {
            path: "/a.tar".into(),
            name: Some("n".into()),
            format: FormatChoice::Zip,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let mut r = &buf[..];
        let body = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&body).unwrap(), req);
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_and_truncated_frames_fail() {
        let mut big = (MAX_FRAME + 1).to_be_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert_eq!(
            read_frame(&mut &big[..]).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let short = [0u8, 0, 0, 10, b'{'];
        assert!(read_frame(&mut &short[..]).is_err());
    }

    #[test]
    fn unknown_fields_and_ops_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"detach","volume":"a","x":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"detach","volume":"a"}"#).unwrap(),
            Request::Detach {
                volume: "a".into(),
                force: false
            }
        );
    }
}
