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

/// Declares [`ErrorKind`] and, from the same list, [`ErrorKind::ALL`], so
/// the list of every kind cannot miss one. The errno, exit code and wire
/// code of each kind are an exhaustive `match` in [`ErrorKind::row`]: a kind
/// added here without its row does not compile.
macro_rules! error_kinds {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $v:ident,)* }) => {
        $(#[$meta])*
        pub enum $name { $($(#[$vmeta])* $v,)* }
        impl $name {
            /// Every kind, in declaration order; used for docs and tests.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
        }
    };
}

error_kinds! {
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
}

/// One kind's row: errno for the mount, exit status for the CLI, and the
/// stable name on the wire and in `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub errno: i32,
    pub exit: i32,
    pub code: &'static str,
}

const fn row(errno: i32, exit: i32, code: &'static str) -> Row {
    Row { errno, exit, code }
}

impl ErrorKind {
    /// The table. Exit codes and wire codes are documented in the README
    /// ("Exit codes") and in `tokenctl --help` (generated from
    /// [`exit_rows`]); a change here is a change to a public interface. The
    /// wire code must equal the serde name (a unit test checks it).
    #[rustfmt::skip]
    pub const fn row(self) -> Row {
        match self {
            ErrorKind::NotFound =>                   row(libc::ENOENT,        4, "not_found"),
            ErrorKind::Exists =>                     row(libc::EEXIST,        5, "exists"),
            ErrorKind::NotDir =>                     row(libc::ENOTDIR,       6, "not_dir"),
            ErrorKind::IsDir =>                      row(libc::EISDIR,        6, "is_dir"),
            ErrorKind::NotEmpty =>                   row(libc::ENOTEMPTY,     5, "not_empty"),
            ErrorKind::ReadOnly =>                   row(libc::EROFS,         7, "read_only"),
            ErrorKind::PermissionDenied =>           row(libc::EACCES,        7, "permission_denied"),
            ErrorKind::NotPermitted =>               row(libc::EPERM,         7, "not_permitted"),
            ErrorKind::Invalid =>                    row(libc::EINVAL,        6, "invalid"),
            ErrorKind::Corrupt =>                    row(libc::EIO,           8, "corrupt"),
            ErrorKind::Io =>                         row(libc::EIO,           1, "io"),
            ErrorKind::NoSpace =>                    row(libc::ENOSPC,        9, "no_space"),
            ErrorKind::Busy =>                       row(libc::EBUSY,         5, "busy"),
            ErrorKind::NameTooLong =>                row(libc::ENAMETOOLONG,  6, "name_too_long"),
            ErrorKind::NoAttr =>                     row(libc::ENODATA,       4, "no_attr"),
            ErrorKind::Range =>                      row(libc::ERANGE,        6, "range"),
            ErrorKind::Unsupported =>                row(libc::EOPNOTSUPP,    6, "unsupported"),
            ErrorKind::CrossDevice =>                row(libc::EXDEV,         6, "cross_device"),
            ErrorKind::TooBig =>                     row(libc::EFBIG,         6, "too_big"),
            ErrorKind::TooManyLinks =>               row(libc::EMLINK,        6, "too_many_links"),
            ErrorKind::Integrity =>                  row(libc::EIO,           8, "integrity"),
            ErrorKind::Unavailable =>                row(libc::EIO,           3, "unavailable"),
            ErrorKind::Protocol =>                   row(libc::EPROTO,        3, "protocol"),
            ErrorKind::NoSuchOffset =>               row(libc::ENXIO,         6, "no_such_offset"),
            ErrorKind::Quota =>                      row(libc::EDQUOT,        9, "quota"),
            ErrorKind::Limit =>                      row(libc::EDQUOT,       24, "limit"),
            ErrorKind::TokenUnsupported =>           row(libc::EOPNOTSUPP,   10, "token_unsupported"),
            ErrorKind::TokenInvalid =>               row(libc::EINVAL,       11, "token_invalid"),
            ErrorKind::TokenUnknown =>               row(libc::EINVAL,       12, "token_unknown"),
            ErrorKind::TokenCorrupt =>               row(libc::EINVAL,       13, "token_corrupt"),
            ErrorKind::TokenRevoked =>               row(libc::EINVAL,       14, "token_revoked"),
            ErrorKind::TokenExpired =>               row(libc::EINVAL,       15, "token_expired"),
            ErrorKind::TokenInvalidLength =>         row(libc::EINVAL,       16, "token_invalid_length"),
            ErrorKind::TokenMissingSubtoken =>       row(libc::EINVAL,       17, "token_missing_subtoken"),
            ErrorKind::TokenForeignSubtoken =>       row(libc::EINVAL,       18, "token_foreign_subtoken"),
            ErrorKind::TokenInconsistentCount =>     row(libc::EINVAL,       19, "token_inconsistent_count"),
            ErrorKind::TokenBadSequence =>           row(libc::EINVAL,       20, "token_bad_sequence"),
            ErrorKind::TokenConflictingDuplicate =>  row(libc::EINVAL,       21, "token_conflicting_duplicate"),
            ErrorKind::TokenUnknownProvider =>       row(libc::EINVAL,       22, "token_unknown_provider"),
            ErrorKind::TokenTooManySubtokens =>      row(libc::E2BIG,        23, "token_too_many_subtokens"),
        }
    }

    /// The errno a program in the mount sees.
    pub const fn errno(self) -> i32 {
        self.row().errno
    }

    /// The exit status of a command that failed with this kind.
    pub const fn exit_code(self) -> i32 {
        self.row().exit
    }

    /// The stable snake_case name used on the wire and in `--json` output.
    pub const fn code(self) -> &'static str {
        self.row().code
    }

    /// Every kind, in declaration order; used for docs and tests.
    pub fn all() -> impl Iterator<Item = ErrorKind> {
        Self::ALL.iter().copied()
    }
}

/// What an exit status of `tokenctl` means, for every status it can have:
/// 0, 2 (a usage error, from clap) and each kind's exit code. `None` for a
/// status no kind uses (a unit test checks every kind's has a meaning).
pub const fn exit_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        0 => "success",
        1 => "I/O or internal error",
        2 => "usage error",
        3 => "fsd is not reachable (no daemon on the socket), or a protocol error",
        4 => "no such volume, file or attribute",
        5 => "already exists, or busy (open files, name in use)",
        6 => "invalid argument",
        7 => "permission denied, or read-only",
        8 => "corrupt input (archive, index) or failed integrity check",
        9 => "no space on the hot tier, or a native volume's quota reached",
        10 => "token type not supported",
        11 => "token invalid",
        12 => "token unknown",
        13 => "token corrupt (header, CRC)",
        14 => "token revoked",
        15 => "token expired",
        16 => "token length invalid",
        17 => "a subtoken is missing",
        18 => "a subtoken of another token",
        19 => "subtokens disagree on their count",
        20 => "subtoken sequence out of range",
        21 => "two different subtokens, one sequence",
        22 => "token from another provider",
        23 => "token needs more subtokens than allowed",
        24 => "a per-user limit ([limits] in fsd's config) would be passed",
        _ => return None,
    })
}

/// One exit status of `tokenctl`: what it means and the wire codes (the
/// `code` of a `--json` error) that lead to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRow {
    pub exit: i32,
    pub meaning: &'static str,
    pub codes: Vec<&'static str>,
}

/// Every exit status of `tokenctl`, in order, generated from the table.
pub fn exit_rows() -> Vec<ExitRow> {
    (0..=u8::MAX as i32)
        .filter_map(|exit| {
            let meaning = exit_meaning(exit)?;
            let codes = ErrorKind::all()
                .filter(|k| k.exit_code() == exit)
                .map(ErrorKind::code)
                .collect();
            Some(ExitRow {
                exit,
                meaning,
                codes,
            })
        })
        .collect()
}

/// The "Exit codes" section of `tokenctl --help`, generated from
/// [`exit_rows`] so it cannot drift from the table.
pub fn exit_help() -> String {
    let mut s = String::from("Exit codes (with --json, the error's code in brackets):");
    for r in exit_rows() {
        s.push_str(&format!("\n  {:<3} {}", r.exit, r.meaning));
        if !r.codes.is_empty() {
            s.push_str(&format!(" [{}]", r.codes.join(", ")));
        }
    }
    s
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
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::all() {
            // The wire code in the table is the name serde uses.
            let v = serde_json::to_value(k).unwrap();
            assert_eq!(v.as_str(), Some(k.code()), "{k:?}");
            let back: ErrorKind = serde_json::from_value(serde_json::json!(k.code())).unwrap();
            assert_eq!(back, k);
            assert!(seen.insert(k.code()), "{k:?}: code used twice");
            assert!(
                exit_meaning(k.exit_code()).is_some(),
                "{k:?} exits {}, which has no documented meaning",
                k.exit_code()
            );
        }
        assert_eq!(ErrorKind::ReadOnly.errno(), libc::EROFS);
        assert_eq!(ErrorKind::NotFound.exit_code(), 4);
        assert_eq!(ErrorKind::TokenExpired.code(), "token_expired");
        assert_eq!(ErrorKind::Limit.exit_code(), 24);
    }

    #[test]
    fn exit_help_lists_every_status_with_its_codes() {
        let rows = exit_rows();
        assert_eq!(rows.first().map(|r| r.exit), Some(0));
        assert!(rows.iter().any(|r| r.exit == 2 && r.codes.is_empty()));
        let help = exit_help();
        for k in ErrorKind::all() {
            assert!(help.contains(k.code()), "{k:?} missing from the help");
        }
        assert!(
            help.contains("\n  14  token revoked [token_revoked]"),
            "{help}"
        );
    }

    /// The README's `tokenctl` exit-code table says the same as the
    /// generated rows: each row names only codes that exit with its status
    /// (`token_*` standing for every token code in its range), and every
    /// code appears in the row of its status.
    #[test]
    fn readme_exit_table_matches_the_table() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("`tokenctl` (with `--json`")
            .expect("README: tokenctl exit-code table");
        let mut documented: Vec<(std::ops::RangeInclusive<i32>, Vec<&str>)> = Vec::new();
        for line in readme[start..].lines().skip(1) {
            if line.trim().is_empty() && !documented.is_empty() {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                continue;
            }
            let range = match cells[1].split_once('–') {
                Some((a, b)) => match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) => a..=b,
                    _ => continue,
                },
                None => match cells[1].parse() {
                    Ok(c) => c..=c,
                    Err(_) => continue,
                },
            };
            let codes = cells[3].split('`').skip(1).step_by(2).collect::<Vec<_>>();
            documented.push((range, codes));
        }
        for r in exit_rows() {
            let row = documented
                .iter()
                .find(|(range, _)| range.contains(&r.exit))
                .unwrap_or_else(|| panic!("README has no row for exit {}", r.exit));
            let names = |code: &str| {
                row.1
                    .iter()
                    .any(|d| *d == code || d.strip_suffix('*').is_some_and(|p| code.starts_with(p)))
            };
            for c in &r.codes {
                assert!(
                    names(c),
                    "README: `{c}` missing from the row of exit {}",
                    r.exit
                );
            }
            for d in &row.1 {
                let ok = ErrorKind::all().any(|k| {
                    row.0.contains(&k.exit_code())
                        && (k.code() == *d
                            || d.strip_suffix('*').is_some_and(|p| k.code().starts_with(p)))
                });
                assert!(
                    ok,
                    "README: `{d}` in the row of exit {:?} exits elsewhere",
                    row.0
                );
            }
        }
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
