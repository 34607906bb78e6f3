//! Path resolution for requests that do not come through the kernel (the
//! control socket): an absolute path inside the mount becomes a global
//! inode, with the permission checks open(2) would make for the caller.
//!
//! It lives beside the core rather than in the offload engine because every
//! job that names files by path (offload today; import, export and
//! retrieval later) must check a caller's rights the same way.

use std::path::{Component, Path};

use super::perm::{self, Caller};
use super::types::FileKind;
use super::{Core, ROOT_INO};
use crate::error::{Error, ErrorKind, Result};

/// How many symlinks one resolution may follow, as Linux's MAXSYMLINKS.
const MAX_FOLLOWS: u32 = 40;

/// Resolves `path` (absolute, inside the mount at `mountpoint`) to a global
/// inode of a regular file, checking search permission on every directory
/// and `want` (`perm::R`, `perm::W`, ...) on the file, as open(2) would for
/// `caller`. Only relative symlinks that stay inside the mount (such as
/// `volumes/NAME`) are followed.
pub fn resolve(
    core: &Core,
    mountpoint: &Path,
    path: &str,
    caller: &Caller,
    want: u32,
) -> Result<u64> {
    let mut comps = components(mountpoint, path)?;
    let mut ino = ROOT_INO;
    let mut follows = 0;
    let mut i = 0;
    while i < comps.len() {
        let (dir, _) = core.getattr(ino)?;
        if !perm::may_access(
            caller,
            dir.kind.mode_bits() | u32::from(dir.perm),
            dir.uid,
            dir.gid,
            perm::X,
        ) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{path}: permission denied"),
            ));
        }
        let (a, _) = core
            .lookup(ino, &comps[i])
            .map_err(|e| Error::new(e.kind(), format!("{path}: {e}")))?;
        if a.kind == FileKind::Symlink {
            follows += 1;
            let target = core.readlink(a.ino)?;
            let rest = (follows <= MAX_FOLLOWS)
                .then(|| link_components(&target))
                .flatten()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Invalid,
                        format!("{path}: cannot follow a symlink"),
                    )
                })?;
            comps.splice(i..=i, rest);
            continue;
        }
        ino = a.ino;
        i += 1;
    }
    let (a, _) = core.getattr(ino)?;
    if a.kind != FileKind::File {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{path}: not a regular file"),
        ));
    }
    if !perm::may_access(
        caller,
        a.kind.mode_bits() | u32::from(a.perm),
        a.uid,
        a.gid,
        want,
    ) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("{path}: permission denied"),
        ));
    }
    Ok(ino)
}

/// The names along `path` below `mountpoint`. Refuses a path outside the
/// mount and one with `..` (the caller must canonicalise it: a `..` here
/// could not be checked the way the kernel checks it).
fn components(mountpoint: &Path, path: &str) -> Result<Vec<Vec<u8>>> {
    let rel = Path::new(path).strip_prefix(mountpoint).map_err(|_| {
        Error::new(
            ErrorKind::Invalid,
            format!(
                "{path} is not inside the fsd mount at {}",
                mountpoint.display()
            ),
        )
    })?;
    let mut comps = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => comps.push(std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec()),
            Component::CurDir => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{path}: use a canonical path"),
                ));
            }
        }
    }
    Ok(comps)
}

/// The names a symlink's `target` stands for, or `None` if it may not be
/// followed: absolute targets could leave the mount, and `..` would escape
/// the directory whose search permission was checked.
fn link_components(target: &[u8]) -> Option<Vec<Vec<u8>>> {
    if target.starts_with(b"/") {
        return None;
    }
    let rest: Vec<Vec<u8>> = target
        .split(|&b| b == b'/')
        .filter(|s| !s.is_empty() && *s != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if rest.iter().any(|s| s == b"..") {
        return None;
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn components_inside_the_mount() {
        let m = Path::new("/mnt/fsd");
        assert_eq!(
            components(m, "/mnt/fsd/volumes/./a/b").unwrap(),
            names(&["volumes", "a", "b"])
        );
        assert_eq!(components(m, "/mnt/fsd").unwrap(), names(&[]));
        let e = components(m, "/mnt/other/x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("/mnt/fsd"), "{e}");
        let e = components(m, "/mnt/fsd/volumes/../etc").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("canonical"), "{e}");
        assert!(components(m, "mnt/fsd/x").is_err(), "relative");
    }

    #[test]
    fn only_relative_links_without_dotdot_are_followed() {
        assert_eq!(
            link_components(b"dir//./file"),
            Some(names(&["dir", "file"]))
        );
        assert_eq!(link_components(b"ID"), Some(names(&["ID"])));
        assert_eq!(link_components(b"/etc/passwd"), None);
        assert_eq!(link_components(b"../x"), None);
        assert_eq!(link_components(b"a/../../x"), None);
    }
}
