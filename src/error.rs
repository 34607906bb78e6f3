//! The one error type of fsd and the one table that maps it to errno values
//! (for the FUSE adapter), wire codes (for the control socket) and process exit
//! codes (for `tokenctl` and `fsd`).
//!
//! Every failure a user can see goes through [`Error`], so the message that the
//! daemon logs, the errno a program in the mount sees and the exit status of
//! `tokenctl` always agree. Messages name the file, offset and cause where they
//! are known, because "corrupt archive" alone helps nobody at 3 a.m.

use std::io;

use serde::{Deserialize, Serialize};

/// The category of an error. It decides the errno, the wire code and the exit
/// code; the [`Error`] that carries it adds the human detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    ReadOnly,
    PermissionDenied,
    NotPermitted,
    Invalid,
    Corrupt,
    Io,
    NoSpace,
    Busy,
    NameTooLong,
    NoAttr,
    Range,
    Unsupported,
    CrossDevice,
    TooBig,
    TooManyLinks,
    Integrity,
    Unavailable,
    Protocol,
    /// An offset past the end of the data (ENXIO, from SEEK_DATA/SEEK_HOLE).
    NoSuchOffset,
    /// A native volume's quota (`limits.native_volume_mb`) would be passed.
    Quota,
    /// A per-user limit of `[limits]` (attached or native volumes, archive
    /// members) would be passed.
    Limit,
    // Offload-token errors, after ODX's STATUS_* and T10's INVALID TOKEN
    // OPERATION additional sense codes (ASC 0x23).
    TokenUnsupported,
    TokenInvalid,
    TokenUnknown,
    TokenCorrupt,
    TokenRevoked,
    TokenExpired,
    TokenInvalidLength,
    TokenMissingSubtoken,
    TokenForeignSubtoken,
    TokenInconsistentCount,
    TokenBadSequence,
    TokenConflictingDuplicate,
    TokenUnknownProvider,
    TokenTooManySubtokens,
}

/// One row of the table: errno for the mount, exit status for the CLI.
struct Row {
    kind: ErrorKind,
    errno: i32,
    exit: i32,
}

/// Used for a kind missing from the table (a unit test checks there is none).
const IO_ROW: Row = Row {
    kind: ErrorKind::Io,
    errno: libc::EIO,
    exit: 1,
};

/// The errno table. Exit codes are documented in the README ("Exit codes"); a
/// change here is a change to a public interface.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    Row { kind: ErrorKind::NotFound,                  errno: libc::ENOENT,       exit: 4 },
    Row { kind: ErrorKind::Exists,                    errno: libc::EEXIST,       exit: 5 },
    Row { kind: ErrorKind::NotDir,                    errno: libc::ENOTDIR,      exit: 6 },
    Row { kind: ErrorKind::IsDir,                     errno: libc::EISDIR,       exit: 6 },
    Row { kind: ErrorKind::NotEmpty,                  errno: libc::ENOTEMPTY,    exit: 5 },
    Row { kind: ErrorKind::ReadOnly,                  errno: libc::EROFS,        exit: 7 },
    Row { kind: ErrorKind::PermissionDenied,          errno: libc::EACCES,       exit: 7 },
    Row { kind: ErrorKind::NotPermitted,              errno: libc::EPERM,        exit: 7 },
    Row { kind: ErrorKind::Invalid,                   errno: libc::EINVAL,       exit: 6 },
    Row { kind: ErrorKind::Corrupt,                   errno: libc::EIO,          exit: 8 },
    Row { kind: ErrorKind::Io,                        errno: libc::EIO,          exit: 1 },
    Row { kind: ErrorKind::NoSpace,                   errno: libc::ENOSPC,       exit: 9 },
    Row { kind: ErrorKind::Busy,                      errno: libc::EBUSY,        exit: 5 },
    Row { kind: ErrorKind::NameTooLong,               errno: libc::ENAMETOOLONG, exit: 6 },
    Row { kind: ErrorKind::NoAttr,                    errno: libc::ENODATA,      exit: 4 },
    Row { kind: ErrorKind::Range,                     errno: libc::ERANGE,       exit: 6 },
    Row { kind: ErrorKind::Unsupported,               errno: libc::EOPNOTSUPP,   exit: 6 },
    Row { kind: ErrorKind::CrossDevice,               errno: libc::EXDEV,        exit: 6 },
    Row { kind: ErrorKind::TooBig,                    errno: libc::EFBIG,        exit: 6 },
    Row { kind: ErrorKind::TooManyLinks,              errno: libc::EMLINK,       exit: 6 },
    Row { kind: ErrorKind::Integrity,                 errno: libc::EIO,          exit: 8 },
    Row { kind: ErrorKind::Unavailable,               errno: libc::EIO,          exit: 3 },
    Row { kind: ErrorKind::Protocol,                  errno: libc::EPROTO,       exit: 3 },
    Row { kind: ErrorKind::NoSuchOffset,              errno: libc::ENXIO,        exit: 6 },
    Row { kind: ErrorKind::Quota,                     errno: libc::EDQUOT,       exit: 9 },
    Row { kind: ErrorKind::Limit,                     errno: libc::EDQUOT,       exit: 24 },
    Row { kind: ErrorKind::TokenUnsupported,          errno: libc::EOPNOTSUPP,   exit: 10 },
    Row { kind: ErrorKind::TokenInvalid,              errno: libc::EINVAL,       exit: 11 },
    Row { kind: ErrorKind::TokenUnknown,              errno: libc::EINVAL,       exit: 12 },
    Row { kind: ErrorKind::TokenCorrupt,              errno: libc::EINVAL,       exit: 13 },
    Row { kind: ErrorKind::TokenRevoked,              errno: libc::EINVAL,       exit: 14 },
    Row { kind: ErrorKind::TokenExpired,              errno: libc::EINVAL,       exit: 15 },
    Row { kind: ErrorKind::TokenInvalidLength,        errno: libc::EINVAL,       exit: 16 },
    Row { kind: ErrorKind::TokenMissingSubtoken,      errno: libc::EINVAL,       exit: 17 },
    Row { kind: ErrorKind::TokenForeignSubtoken,      errno: libc::EINVAL,       exit: 18 },
    Row { kind: ErrorKind::TokenInconsistentCount,    errno: libc::EINVAL,       exit: 19 },
    Row { kind: ErrorKind::TokenBadSequence,          errno: libc::EINVAL,       exit: 20 },
    Row { kind: ErrorKind::TokenConflictingDuplicate, errno: libc::EINVAL,       exit: 21 },
    Row { kind: ErrorKind::TokenUnknownProvider,      errno: libc::EINVAL,       exit: 22 },
    Row { kind: ErrorKind::TokenTooManySubtokens,     errno: libc::E2BIG,        exit: 23 },
];

impl ErrorKind {
    fn row(self) -> &'static Row {
        // The table is small and covers every kind (a unit test checks it), so
        // a linear scan is both simple and fast enough for an error path.
        TABLE.iter().find(|r| r.kind == self).unwrap_or(&IO_ROW)
    }

    /// The errno a program in the mount sees.
    pub fn errno(self) -> i32 {
        self.row().errno
    }

    /// The exit status of a command that failed with this kind.
    pub fn exit_code(self) -> i32 {
        self.row().exit
    }

    /// The stable snake_case name used on the wire and in `--json` output.
    pub fn code(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "io".into())
    }

    /// Every kind, in table order; used for docs and tests.
    pub fn all() -> impl Iterator<Item = ErrorKind> {
        TABLE.iter().map(|r| r.kind)
    }
}

/// The error type of fsd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure with a kind and a complete human message.
    #[error("{msg}")]
    Msg { kind: ErrorKind, msg: String },
    /// Malformed input (archive, token, message) at a known byte offset.
    #[error("{path}: offset {offset}: {cause}")]
    Corrupt {
        path: String,
        offset: u64,
        cause: String,
    },
    /// An I/O failure, with what was being done when it happened.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error::Msg {
            kind,
            msg: msg.into(),
        }
    }

    /// A bare errno-style error for the filesystem paths, where the kernel
    /// already knows the file and only the errno reaches the caller.
    pub fn kind_only(kind: ErrorKind) -> Self {
        let msg = match kind {
            ErrorKind::NotFound => "no such file or directory",
            ErrorKind::Exists => "file exists",
            ErrorKind::NotDir => "not a directory",
            ErrorKind::IsDir => "is a directory",
            ErrorKind::NotEmpty => "directory not empty",
            ErrorKind::ReadOnly => "read-only volume",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::NotPermitted => "operation not permitted",
            ErrorKind::NameTooLong => "name too long",
            ErrorKind::NoAttr => "no such attribute",
            ErrorKind::Range => "buffer too small",
            ErrorKind::CrossDevice => "cross-volume link or rename",
            ErrorKind::Quota => "disk quota exceeded",
            _ => "error",
        };
        Error::new(kind, msg)
    }

    pub fn corrupt(path: impl Into<String>, offset: u64, cause: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            cause: cause.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Msg { kind, .. } => *kind,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Io { source, .. } => io_kind(source),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            // Keep the precise errno of an I/O failure (ENOSPC, EDQUOT, EACCES …)
            // rather than flattening it to EIO.
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => self.kind().errno(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
    }
}

fn io_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EEXIST) => ErrorKind::Exists,
        Some(libc::ENOTDIR) => ErrorKind::NotDir,
        Some(libc::EISDIR) => ErrorKind::IsDir,
        Some(libc::EACCES) => ErrorKind::PermissionDenied,
        Some(libc::EPERM) => ErrorKind::NotPermitted,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
        Some(libc::EROFS) => ErrorKind::ReadOnly,
        Some(libc::EBUSY) => ErrorKind::Busy,
        Some(libc::EINVAL) => ErrorKind::Invalid,
        _ => match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        },
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return Error::new(ErrorKind::NoSpace, format!("catalog: {e}"));
        }
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            )
        {
            return catalog_corrupt(&e);
        }
        Error::new(ErrorKind::Io, format!("catalog: {e}"))
    }
}

/// What an operator does about a damaged catalog; every message about one
/// ends with it.
pub const CATALOG_RECOVERY: &str = "to recover: stop fsd, check the catalog with \
    `tokenctl fsck --catalog --state STATE`, then put the newest good backup back with \
    `fsd restore-catalog --state STATE` (README, Troubleshooting: \"Restoring the catalog\")";

/// SQLite found a damaged page (SQLITE_CORRUPT, SQLITE_NOTADB) during a
/// request: the caller gets a `corrupt` error (EIO, exit 8) that says so,
/// and the log gets one line naming the cause and the recovery, at most
/// every 10 s, so a damaged catalog is never just EIO on random
/// directories.
fn catalog_corrupt(e: &rusqlite::Error) -> Error {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!("the catalog is damaged ({e}); {CATALOG_RECOVERY}");
    }
    Error::new(
        ErrorKind::Corrupt,
        format!("catalog is damaged: {e}; {CATALOG_RECOVERY}"),
    )
}

/// Shorthand used throughout the filesystem core.
pub fn err<T>(kind: ErrorKind) -> Result<T> {
    Err(Error::kind_only(kind))
}

/// Attaches context to I/O results: `file.read_at(..).ctx(|| format!(..))`.
pub trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_row() {
        let names = [
            "not_found",
            "exists",
            "read_only",
            "token_expired",
            "token_too_many_subtokens",
        ];
        for n in names {
            let k: ErrorKind = serde_json::from_value(serde_json::json!(n)).unwrap();
            assert_eq!(k.code(), n);
        }
        let mut seen = std::collections::HashSet::new();
        for r in TABLE {
            assert!(seen.insert(r.kind), "{:?} twice in the table", r.kind);
        }
        assert_eq!(ErrorKind::ReadOnly.errno(), libc::EROFS);
        assert_eq!(ErrorKind::NotFound.exit_code(), 4);
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = Error::io("writing chunk", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.to_string().starts_with("writing chunk: "));
    }

    #[test]
    fn corrupt_names_path_and_offset() {
        let e = Error::corrupt("/x/a.tar", 1536, "bad header checksum");
        assert_eq!(e.to_string(), "/x/a.tar: offset 1536: bad header checksum");
        assert_eq!(e.errno(), libc::EIO);
    }
}
