//! Opening the medium of a volume attached by reference, kind-neutral: an
//! archive today, a shipped drive later. Who may open what (the caller's own
//! descriptor, or the daemon's rights for root and for the media the
//! catalog remembers), what can be a medium at all, and the owner and mode
//! `media/<id>` shows.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::medium::MediumFile;

/// Opens the medium of an attach request.
///
/// **The caller's permission is exactly open(2)'s.** `tokenctl` opens the
/// medium itself, with the caller's own credentials, and passes the
/// descriptor (`passed`); the daemon never opens a path for an unprivileged
/// caller, so a directory the caller cannot search, an ACL, an LSM or a
/// read-only bind mount all count, and nothing can change between a check
/// and an open. Without a descriptor only root, or the user the daemon runs
/// as (`fsd mount --attach`), may attach: the daemon then opens the path
/// with its own rights, which are that caller's.
pub fn open_medium(
    path: &Path,
    passed: Option<OwnedFd>,
    caller: &Caller,
) -> Result<(PathBuf, MediumFile, std::fs::Metadata)> {
    match passed {
        Some(fd) => open_passed(path, fd),
        None if caller.uid == 0 || caller.uid == nix::unistd::geteuid().as_raw() => open_path(path),
        None => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{}: permission denied (uid {} must pass the medium's descriptor, which \
                 tokenctl does: is it older than fsd?)",
                path.display(),
                caller.uid
            ),
        )),
    }
}

/// Refuses what cannot be a medium: directories, FIFOs, sockets, character
/// devices.
fn check_kind(shown: &str, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_dir() {
        return Err(Error::new(
            ErrorKind::IsDir,
            format!("{shown}: is a directory; attach expects an archive file"),
        ));
    }
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{shown}: not a regular file or block device"),
        ));
    }
    Ok(())
}

/// The medium from the descriptor a caller passed, after checking that it
/// is the file the caller claims.
///
/// **What "claims" means.** The request names a canonical path (tokenctl
/// resolves it with the caller's rights). The descriptor must be readable
/// (not `O_PATH`, not write-only, which the caller could get without read
/// permission), a regular file or a block device, and it must be that path:
/// the kernel's name for the open file (`/proc/self/fd/N`) equals the path,
/// and the path's device and inode equal the descriptor's. So the catalog's
/// identity, the canonical path, is the file whose data the caller could
/// read, and the daemon learns nothing about a path from a stat as root that
/// the caller's own open had not already shown it. A file renamed or
/// replaced while attaching, or a caller in another mount namespace, fails
/// the check with a message saying so.
fn open_passed(path: &Path, fd: OwnedFd) -> Result<(PathBuf, MediumFile, std::fs::Metadata)> {
    let shown = path.display().to_string();
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::io(format!("{shown}: fcntl on the passed descriptor"), e.into()))?;
    if flags & libc::O_PATH != 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("{shown}: permission denied (the passed descriptor is not open for reading)"),
        ));
    }
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("{shown}: stat of the passed descriptor"), e))?;
    check_kind(&shown, &meta)?;
    let named = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| Error::io(format!("{shown}: naming the passed descriptor"), e))?;
    let same = named == path
        && std::fs::metadata(path)
            .map(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
            .unwrap_or(false);
    if !same {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{shown}: the passed descriptor is {}, not this file (renamed or replaced \
                 while attaching, or named from another mount namespace?)",
                named.display()
            ),
        ));
    }
    let size = medium_size(&shown, &file, &meta)?;
    Ok((path.to_path_buf(), MediumFile { file, size }, meta))
}

/// Size and mtime from the open descriptor, so they describe what is read.
fn medium_size(shown: &str, file: &File, meta: &std::fs::Metadata) -> Result<u64> {
    if meta.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(format!("{shown}: size of block device"), e))
    } else {
        Ok(meta.len())
    }
}

/// Opens a medium by path with the daemon's own rights: for root, for the
/// daemon's own `--attach`, and to reopen the media the catalog remembers.
pub fn open_path(path: &Path) -> Result<(PathBuf, MediumFile, std::fs::Metadata)> {
    let shown = path.display().to_string();
    let canon = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NotFound, format!("{shown}: no such file"))
        }
        _ => Error::io(format!("{shown}: cannot resolve the path"), e),
    })?;
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(format!("{shown}: stat"), e))?;
    check_kind(&shown, &meta)?;
    let file = File::open(&canon).map_err(|e| Error::io(format!("{shown}: cannot open"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("{shown}: stat"), e))?;
    check_kind(&shown, &meta)?;
    let size = medium_size(&shown, &file, &meta)?;
    Ok((canon, MediumFile { file, size }, meta))
}

/// Opens a medium the catalog remembers at `path`, with the daemon's rights,
/// for a volume recorded as attached (start-up).
///
/// The remembered path is opened with the daemon's rights, so it must still
/// name the medium itself: a symlink put in its place, or in place of a
/// directory on the way, by a user who can write there would otherwise mount
/// whatever it points to, read as root, under that user's volume.
pub fn reopen(path: &Path) -> Result<(MediumFile, std::fs::Metadata)> {
    let (_, medium, meta) = open_path(path)?;
    let label = path.display().to_string();
    let named = std::fs::read_link(format!("/proc/self/fd/{}", medium.file.as_raw_fd()));
    if named.as_deref().ok() != Some(path) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{label}: now resolves to {}, not to itself (a symlink put in its place?); \
                 attach the file again",
                named.map_or_else(|e| e.to_string(), |n| n.display().to_string())
            ),
        ));
    }
    Ok((medium, meta))
}

/// Refuses a medium on a FUSE filesystem other than fsd's own mount (whose
/// device is `own_dev`, when known). Its server could be the caller's own
/// program, answering reads slowly or never while the daemon indexes the
/// medium (holding the attach lock) or serves it. Root may still attach
/// such media; before descriptor passing, the daemon could not open another
/// user's FUSE mount at all (FUSE refuses other users, root included).
pub fn check_not_foreign_fuse(
    file: &File,
    meta: &std::fs::Metadata,
    canon: &Path,
    own_dev: Option<u64>,
) -> Result<()> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let fs = nix::sys::statfs::fstatfs(file)
        .map_err(|e| Error::io(format!("{}: statfs", canon.display()), e.into()))?;
    if fs.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC || own_dev == Some(meta.dev()) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{}: permission denied (the medium is on another FUSE filesystem, whose server \
             could stall fsd; only root may attach it)",
            canon.display()
        ),
    ))
}
