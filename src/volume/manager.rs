//! Volume management: attach, detach, list and status, and reloading the
//! attached volumes when the daemon starts.
//!
//! An attach is all-or-nothing: the medium is indexed completely in memory,
//! then the volume row and its index are committed in one catalog
//! transaction, and only then does the volume appear in the mount. A medium
//! that fails to parse leaves no trace.
//!
//! A medium is identified by its canonical path. Its index is reused when the
//! size, the mtime and a hash of its first and last 64 KiB all match what the
//! catalog recorded; otherwise it is indexed again under the same volume ID.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::archive::index::{ArchiveIndex, IndexStats, Meta};
use super::archive::{self, ArchiveVolume, Format};
use super::native::file::{self as native_file, Env};
use super::native::{NativeVolume, fsck, meta as native_meta};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::fs::types::Timespec;
use crate::fs::{Core, MEDIA_INO, MediaEntry, Mounted, VOLUMES_INO, VolumeInfo};
use crate::lifecycle::{Attachment, Kind, Residency};
use crate::medium::identity::{MediumId, Primed};
use crate::medium::{MediumFile, MediumOwner, ReadAt, SharedMedium};
use crate::store::catalog::{Catalog, VolumeRecord};
use crate::store::chunks::Orphans;
use crate::util;

/// Bumped whenever [`ArchiveIndex`]'s encoding changes; older stored indexes
/// are then rebuilt instead of misread.
pub const INDEX_VERSION: u32 = 1;

/// The format a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    #[default]
    Auto,
    Tar,
    Zip,
}

/// Tells the kernel to forget a name, so a detached volume disappears at once
/// instead of after the entry lifetime. Set by the FUSE adapter.
pub type Invalidator = Box<dyn Fn(u64, &[u8]) + Send + Sync>;

/// The result of an attach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attached {
    pub volume: VolumeInfo,
    /// True if the medium was already attached and nothing changed.
    pub already_attached: bool,
    /// True if the index was (re)built rather than loaded from the catalog.
    pub indexed: bool,
}

/// `tokenctl status VOLUME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeStatus {
    #[serde(flatten)]
    pub info: VolumeInfo,
    pub created: String,
    pub open_files: u64,
    #[serde(default)]
    pub index: Option<IndexStats>,
}

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
fn open_medium(
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
fn open_path(path: &Path) -> Result<(PathBuf, MediumFile, std::fs::Metadata)> {
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

/// A medium with the owner and mode its file had when it was opened, which
/// `media/<id>` shows (read-only: write bits cleared). The kernel checks
/// them (default_permissions), so the whole medium is readable through the
/// mount by exactly those who could read the file itself.
struct Owned {
    file: MediumFile,
    owner: MediumOwner,
}

impl Owned {
    fn shared(file: MediumFile, meta: &std::fs::Metadata) -> SharedMedium {
        Arc::new(Owned {
            file,
            owner: MediumOwner {
                uid: meta.uid(),
                gid: meta.gid(),
                perm: (meta.mode() & 0o444) as u16,
            },
        })
    }
}

impl ReadAt for Owned {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn owner(&self) -> Option<MediumOwner> {
        Some(self.owner)
    }
}

/// Checks a volume name: not empty, no `/` or NUL, not `.`/`..`, at most 255
/// bytes, and not shaped like a volume ID (which would be ambiguous).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("volume name {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if util::is_volume_id(name) {
        return bad("looks like a volume ID");
    }
    Ok(())
}

/// Manages the volumes of one daemon.
pub struct Manager {
    core: Arc<Core>,
    catalog: Arc<Catalog>,
    cache_dir: PathBuf,
    archive_ttl: Duration,
    native: Arc<Env>,
    native_ttl: Duration,
    /// Serialises attach and detach (rare, and they touch several places).
    lock: Mutex<()>,
    invalidator: RwLock<Option<Invalidator>>,
    /// Medium identities computed ahead during start-up.
    ids: Arc<Primed>,
    /// Members indexed per mounted archive volume (slot → count), for the
    /// per-user member limit.
    members: Mutex<std::collections::HashMap<u32, u64>>,
    /// This daemon's own mountpoint and, once looked up, its device: media
    /// stored in fsd's own volumes are the only FUSE-backed media an
    /// unprivileged caller may attach (see [`open_passed`]).
    mountpoint: std::sync::OnceLock<PathBuf>,
    mount_dev: std::sync::OnceLock<u64>,
}

/// How many members an attach may index, and which limit says so.
struct MemberBudget {
    max: u64,
    limit: &'static str,
}

impl Manager {
    pub fn new(
        core: Arc<Core>,
        native: Arc<Env>,
        cache_dir: PathBuf,
        archive_ttl: Duration,
        native_ttl: Duration,
    ) -> Self {
        Manager {
            core,
            catalog: native.catalog.clone(),
            cache_dir,
            archive_ttl,
            native,
            native_ttl,
            lock: Mutex::new(()),
            invalidator: RwLock::new(None),
            ids: Arc::new(Primed::closed()),
            members: Mutex::new(Default::default()),
            mountpoint: std::sync::OnceLock::new(),
            mount_dev: std::sync::OnceLock::new(),
        }
    }

    /// Takes medium identities from `ids` while it is open (start-up).
    pub fn with_primed(mut self, ids: Arc<Primed>) -> Self {
        self.ids = ids;
        self
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Tells the manager where its mount is (after the mount is made).
    pub fn set_mountpoint(&self, mountpoint: &Path) {
        let _ = self.mountpoint.set(mountpoint.to_path_buf());
    }

    /// The device of this daemon's mount. Looked up on first use, from a
    /// control request, never during start-up: the stat is a request to
    /// the mount itself.
    fn own_dev(&self) -> Option<u64> {
        if let Some(d) = self.mount_dev.get() {
            return Some(*d);
        }
        let dev = std::fs::metadata(self.mountpoint.get()?).ok()?.dev();
        Some(*self.mount_dev.get_or_init(|| dev))
    }

    pub fn set_invalidator(&self, f: Invalidator) {
        *self.invalidator.write() = Some(f);
    }

    fn invalidate(&self, info: &VolumeInfo) {
        if let Some(f) = &*self.invalidator.read() {
            f(VOLUMES_INO, info.id.as_bytes());
            f(MEDIA_INO, info.id.as_bytes());
            if let Some(n) = &info.name {
                f(VOLUMES_INO, n.as_bytes());
            }
        }
    }

    fn info(rec: &VolumeRecord, state: Attachment) -> VolumeInfo {
        VolumeInfo {
            id: rec.id.clone(),
            name: rec.name.clone(),
            kind: rec.kind,
            state,
            format: rec.format.clone(),
            medium: rec.medium_path.clone(),
            size: rec.size,
            files: rec.files,
            slot: rec.slot,
        }
    }

    fn mount_archive(
        &self,
        rec: &VolumeRecord,
        index: ArchiveIndex,
        medium: SharedMedium,
    ) -> Result<Arc<Mounted>> {
        let label = rec.medium_path.clone().unwrap_or_else(|| rec.id.clone());
        self.members.lock().insert(rec.slot, index.stats.members);
        let fs = ArchiveVolume::new(label, index, medium.clone(), self.cache_dir.join(&rec.id))
            .with_hash_cache(self.catalog.clone(), rec.slot);
        let m = Arc::new(Mounted {
            slot: rec.slot,
            info: RwLock::new(Self::info(rec, Attachment::Attached)),
            fs: Arc::new(fs),
            media: vec![MediaEntry::whole(medium)],
            ttl: self.archive_ttl,
            open_files: AtomicU64::new(0),
        });
        self.core.register(m.clone())?;
        Ok(m)
    }

    fn implicit_meta(meta: &std::fs::Metadata) -> Meta {
        Meta {
            perm: 0o755,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
        }
    }

    fn index_medium(
        medium: &MediumFile,
        meta: &std::fs::Metadata,
        label: &str,
        choice: FormatChoice,
        budget: &MemberBudget,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ArchiveIndex> {
        let format = match choice {
            FormatChoice::Auto => archive::detect(medium, label)?,
            FormatChoice::Tar => Format::Tar,
            FormatChoice::Zip => Format::Zip,
        };
        let total = medium.size();
        let started = std::time::Instant::now();
        let (idx, over) = archive::index::with_member_limit(budget.max, || {
            archive::build_index(
                medium,
                label,
                format,
                Self::implicit_meta(meta),
                &mut |done| progress(done.min(total), total),
            )
        });
        if over {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "{label}: more than {} archive members; {} (nothing was attached)",
                    budget.max, budget.limit
                ),
            ));
        }
        let idx = idx?;
        progress(total, total);
        tracing::info!(
            medium = label,
            files = idx.stats.files,
            dirs = idx.stats.dirs,
            ms = started.elapsed().as_millis() as u64,
            "indexed {format:?} archive"
        );
        Ok(idx)
    }

    /// Loads a stored index if it is current for `id`.
    fn stored_index(&self, rec: &VolumeRecord, id: &MediumId) -> Option<ArchiveIndex> {
        if rec.medium_size != Some(id.size)
            || rec.medium_mtime_ns != Some(id.mtime_ns)
            || rec.medium_sample.as_deref() != Some(id.sample.as_str())
        {
            return None;
        }
        match self.catalog.archive_index(rec.slot) {
            Ok(Some((INDEX_VERSION, blob))) => ArchiveIndex::from_bytes(&blob),
            _ => None,
        }
    }

    /// Refuses a medium on a FUSE filesystem other than fsd's own mount.
    /// Its server could be the caller's own program, answering reads
    /// slowly or never while the daemon indexes the medium (holding the
    /// attach lock) or serves it. Root may still attach such media; before
    /// descriptor passing, the daemon could not open another user's FUSE
    /// mount at all (FUSE refuses other users, root included).
    fn check_not_foreign_fuse(
        &self,
        file: &File,
        meta: &std::fs::Metadata,
        canon: &Path,
    ) -> Result<()> {
        const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
        let fs = nix::sys::statfs::fstatfs(file)
            .map_err(|e| Error::io(format!("{}: statfs", canon.display()), e.into()))?;
        if fs.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC || self.own_dev() == Some(meta.dev()) {
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

    /// Attaches the medium at `path` (absolute, as the caller resolved it).
    pub fn attach(
        &self,
        path: &Path,
        passed: Option<OwnedFd>,
        name: Option<&str>,
        format: FormatChoice,
        caller: &Caller,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Attached> {
        if !path.is_absolute() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{}: the path must be absolute", path.display()),
            ));
        }
        if let Some(n) = name {
            check_name(n)?;
        }
        let (canon, medium, meta) = open_medium(path, passed, caller)?;
        if caller.uid != 0 && caller.uid != nix::unistd::geteuid().as_raw() {
            self.check_not_foreign_fuse(&medium.file, &meta, &canon)?;
        }
        let label = canon.display().to_string();
        let _guard = self.lock.lock();
        let id = self.ids.id(&medium, &meta, &label)?;
        let medium_path = canon.to_string_lossy().into_owned();

        let existing = self.catalog.find_by_medium(&medium_path)?;
        let budget = self.attach_budget(caller, existing.as_ref())?;
        if let Some(mut rec) = existing {
            if rec.kind != Kind::Archive {
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!("{label} belongs to {} volume {}", rec.kind, rec.id),
                ));
            }
            if let Some(n) = name
                && rec.name.as_deref() != Some(n)
                && self.catalog.name_taken(n, Some(rec.slot))?
            {
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!("volume name {n:?} is already in use"),
                ));
            }
            let mounted = self.core.by_slot(rec.slot);
            // Detached, missing, or attached with a changed medium: each
            // may become attached (a destroyed volume has no record).
            let attached = Attachment::live(rec.state, mounted.is_some())
                .transition(Attachment::Attached, &rec.id)?;
            let stored = self.stored_index(&rec, &id);
            if let (Some(m), Some(_)) = (&mounted, &stored) {
                // Already attached and unchanged: idempotent. A new name is
                // applied in place.
                if let Some(n) = name
                    && rec.name.as_deref() != Some(n)
                {
                    self.rename_mounted(&rec, m, n)?;
                    rec.name = Some(n.to_string());
                }
                return Ok(Attached {
                    volume: m.info.read().clone(),
                    already_attached: true,
                    indexed: false,
                });
            }
            if let Some(m) = &mounted {
                let open = m.open_files.load(Ordering::Acquire);
                if open > 0 {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        format!(
                            "{label} changed since it was indexed, and volume {} has {open} open \
                             files; close them and attach again",
                            rec.id
                        ),
                    ));
                }
            }
            let (index, indexed) = match stored {
                Some(ix) => (ix, false),
                None => (
                    Self::index_medium(&medium, &meta, &label, format, &budget, progress)?,
                    true,
                ),
            };
            rec.format = Some(index.format.split(' ').next().unwrap_or("tar").to_string());
            rec.medium_size = Some(id.size);
            rec.medium_mtime_ns = Some(id.mtime_ns);
            rec.medium_sample = Some(id.sample.clone());
            rec.size = id.size;
            rec.files = index.stats.files;
            if indexed {
                self.catalog
                    .update_medium(&rec, Some((INDEX_VERSION, &index.to_bytes())))?;
            }
            if let Some(n) = name {
                self.catalog.set_name(rec.slot, Some(n))?;
                rec.name = Some(n.to_string());
            }
            if let Some(m) = mounted {
                self.core.unregister(m.slot);
                self.invalidate(&m.info.read());
            }
            self.catalog.set_state(rec.slot, attached)?;
            let m = self.mount_archive(&rec, index, Owned::shared(medium, &meta))?;
            let info = m.info.read().clone();
            let _ = self
                .catalog
                .event(Some(&rec.id), "info", &format!("attached {label}"));
            return Ok(Attached {
                volume: info,
                already_attached: false,
                indexed,
            });
        }

        // A new medium.
        let index = Self::index_medium(&medium, &meta, &label, format, &budget, progress)?;
        let name = match name {
            Some(n) => {
                if self.catalog.name_taken(n, None)? {
                    return Err(Error::new(
                        ErrorKind::Exists,
                        format!("volume name {n:?} is already in use"),
                    ));
                }
                Some(n.to_string())
            }
            None => self.default_name(&canon)?,
        };
        let mut rec = VolumeRecord {
            slot: 0,
            id: util::new_volume_id()?,
            name,
            kind: Kind::Archive,
            state: Attachment::Attached,
            residency: Residency::Hot,
            format: Some(index.format.split(' ').next().unwrap_or("tar").to_string()),
            medium_path: Some(medium_path),
            medium_size: Some(id.size),
            medium_mtime_ns: Some(id.mtime_ns),
            medium_sample: Some(id.sample),
            size: id.size,
            files: index.stats.files,
            owner_uid: caller.uid,
            created_ns: Timespec::now().as_nanos(),
            root_ino: None,
        };
        rec.slot = self
            .catalog
            .insert_volume(&rec, Some((INDEX_VERSION, &index.to_bytes())))?;
        let m = match self.mount_archive(&rec, index, Owned::shared(medium, &meta)) {
            Ok(m) => m,
            Err(e) => {
                // Keep "no half volume": undo the catalog row.
                let _ = self.catalog.delete_volume(rec.slot);
                return Err(e);
            }
        };
        let _ = self
            .catalog
            .event(Some(&rec.id), "info", &format!("attached {label}"));
        let info = m.info.read().clone();
        Ok(Attached {
            volume: info,
            already_attached: false,
            indexed: true,
        })
    }

    /// Applies the per-user attach limits of `[limits]` (root is exempt)
    /// to an attach by `caller` of a medium whose record is `existing`:
    /// refuses a new attachment past `attached_volumes`, and says how many
    /// members indexing may take before it is refused (the lesser of
    /// `members_per_attach` and what `members_per_uid` leaves). Every
    /// attach counts on its own, so hard links or bind-mounted paths to
    /// one archive (separate volumes, since a medium is identified by its
    /// path) cannot multiply the cost beyond these limits.
    fn attach_budget(
        &self,
        caller: &Caller,
        existing: Option<&VolumeRecord>,
    ) -> Result<MemberBudget> {
        let unlimited = MemberBudget {
            max: u64::MAX,
            limit: "",
        };
        if caller.uid == 0 {
            return Ok(unlimited);
        }
        let limits = &self.native.limits;
        let except = existing.map(|r| r.slot);
        let mine: Vec<VolumeRecord> = self
            .catalog
            .volumes()?
            .into_iter()
            .filter(|r| {
                r.kind == Kind::Archive
                    && r.owner_uid == caller.uid
                    && r.state == Attachment::Attached
                    && Some(r.slot) != except
            })
            .collect();
        let adds = existing.is_none_or(|r| self.core.by_slot(r.slot).is_none());
        let max_vols = limits.attached_volumes;
        if adds && max_vols != 0 && mine.len() as u64 >= max_vols {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "uid {} has {} archive volumes attached, the most limits.attached_volumes \
                     allows ({max_vols}); detach one first",
                    caller.uid,
                    mine.len()
                ),
            ));
        }
        let mut budget = unlimited;
        if limits.members_per_attach != 0 {
            budget = MemberBudget {
                max: limits.members_per_attach,
                limit: "limits.members_per_attach allows no more in one attach",
            };
        }
        if limits.members_per_uid != 0 {
            let counts = self.members.lock();
            let used: u64 = mine
                .iter()
                .map(|r| counts.get(&r.slot).copied().unwrap_or(r.files))
                .sum();
            // 0 left refuses the first member, so re-attaching a volume
            // that needs no indexing still works at the limit.
            let left = limits.members_per_uid.saturating_sub(used);
            if left < budget.max {
                budget = MemberBudget {
                    max: left,
                    limit: "with the members of the other archives this uid attached, that \
                            passes limits.members_per_uid",
                };
            }
        }
        Ok(budget)
    }

    /// The file name of the medium, if it is a valid and unused volume name.
    fn default_name(&self, canon: &Path) -> Result<Option<String>> {
        let Some(n) = canon.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        if check_name(n).is_err() || self.catalog.name_taken(n, None)? {
            return Ok(None);
        }
        Ok(Some(n.to_string()))
    }

    fn rename_mounted(&self, rec: &VolumeRecord, m: &Arc<Mounted>, name: &str) -> Result<()> {
        self.catalog.set_name(rec.slot, Some(name))?;
        self.core.unregister(m.slot);
        self.invalidate(&m.info.read());
        m.info.write().name = Some(name.to_string());
        self.core.register(m.clone())
    }

    /// Only root and the user who attached or created a volume may detach
    /// or destroy it.
    fn check_owner(rec: &VolumeRecord, caller: &Caller) -> Result<()> {
        if caller.uid == 0 || caller.uid == rec.owner_uid {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::NotPermitted,
            format!(
                "{}: only root or uid {} (who attached it) may do this",
                rec.id, rec.owner_uid
            ),
        ))
    }

    /// Finds a volume record by ID or name.
    pub fn record(&self, id_or_name: &str) -> Result<VolumeRecord> {
        self.catalog
            .find_volume(id_or_name)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{id_or_name}: no such volume")))
    }

    /// Removes a volume from the mount, keeping it in the catalog as
    /// `detached` so that attaching it again is instant and keeps its ID.
    pub fn detach(&self, id_or_name: &str, force: bool, caller: &Caller) -> Result<VolumeInfo> {
        let _guard = self.lock.lock();
        let rec = self.record(id_or_name)?;
        Self::check_owner(&rec, caller)?;
        let mounted = self.core.by_slot(rec.slot);
        let live = Attachment::live(rec.state, mounted.is_some());
        let (Some(m), true) = (mounted, live.can_go_to(Attachment::Detached)) else {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{}: not attached (state {})", rec.id, rec.state),
            ));
        };
        let open = m.open_files.load(Ordering::Acquire);
        if open > 0 && !force {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{}: {open} file{} open in the volume; close {} or use --force",
                    rec.id,
                    if open == 1 { " is" } else { "s are" },
                    if open == 1 { "it" } else { "them" }
                ),
            ));
        }
        self.catalog.set_state(rec.slot, Attachment::Detached)?;
        self.core.unregister(rec.slot);
        m.info.write().state = Attachment::Detached;
        self.invalidate(&m.info.read());
        let _ = self.catalog.event(
            Some(&rec.id),
            "info",
            &format!("detached{}", if open > 0 { " (forced)" } else { "" }),
        );
        Ok(Self::info(&rec, Attachment::Detached))
    }

    /// Every volume the catalog knows, with its live state.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for rec in self.catalog.volumes()? {
            match self.core.by_slot(rec.slot) {
                Some(m) => {
                    if rec.kind == Kind::Native {
                        self.refresh_usage(&m);
                    }
                    out.push(m.info.read().clone())
                }
                None => out.push(Self::info(&rec, Attachment::live(rec.state, false))),
            }
        }
        Ok(out)
    }

    pub fn status(&self, id_or_name: &str) -> Result<VolumeStatus> {
        let rec = self.record(id_or_name)?;
        let mounted = self.core.by_slot(rec.slot);
        let info = match &mounted {
            Some(m) => {
                if rec.kind == Kind::Native {
                    self.refresh_usage(m);
                }
                m.info.read().clone()
            }
            None => Self::info(&rec, Attachment::live(rec.state, false)),
        };
        let index = match &mounted {
            Some(_) | None if rec.kind == Kind::Archive => self
                .catalog
                .archive_index(rec.slot)?
                .and_then(|(_, b)| ArchiveIndex::from_bytes(&b))
                .map(|i| i.stats),
            _ => None,
        };
        Ok(VolumeStatus {
            info,
            created: util::fmt_utc(rec.created_ns),
            open_files: mounted
                .map(|m| m.open_files.load(Ordering::Acquire))
                .unwrap_or(0),
            index,
        })
    }

    /// Mounts every volume the catalog has as attached. A medium that is
    /// gone or unreadable is logged and shown as `missing`; one that changed
    /// is indexed again. Returns (mounted, missing).
    ///
    /// `orphans` says what recovery does with chunk files the catalog does
    /// not reference (see `store::guard`).
    pub fn load_all(&self, orphans: Orphans) -> Result<(usize, usize)> {
        let _guard = self.lock.lock();
        let (mut ok, mut missing) = (0, 0);
        // A catalog this start created records no volume, so nothing can
        // need recovering (and start-up refused it if the store has
        // chunk files).
        if !self.catalog.created() {
            self.recover_natives(orphans)?;
        }
        for rec in self.catalog.volumes()? {
            if rec.state != Attachment::Attached {
                continue;
            }
            let r = match rec.kind {
                Kind::Archive => self.reload_archive(&rec),
                Kind::Native => self.mount_native(&rec).map(|_| ()),
            };
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    missing += 1;
                    tracing::warn!(volume = %rec.id, "not mounted: {e}");
                    let _ = self
                        .catalog
                        .event(Some(&rec.id), "warn", &format!("not mounted: {e}"));
                }
            }
        }
        Ok((ok, missing))
    }

    /// After a crash: deletes inodes that lost their last name while open,
    /// takes back quarantined chunks the catalog references (a restored
    /// catalog), settles chunk files no committed row references (removed
    /// if the last run wrote them and never committed them, quarantined if
    /// that cannot be proved, see [`Orphans`]) and unreferenced chunks.
    /// Runs during start-up, before any request is served (they wait at
    /// the start-up gate), so no write is in flight.
    fn recover_natives(&self, policy: Orphans) -> Result<()> {
        let mut orphans = 0;
        for rec in self.catalog.volumes()? {
            if rec.kind != Kind::Native {
                continue;
            }
            let mut conn = self.catalog.conn();
            let tx = conn.transaction()?;
            for ino in native_meta::orphans(&tx, rec.slot)? {
                native_meta::delete(&tx, ino)?;
                orphans += 1;
            }
            tx.commit()?;
        }
        native_file::collect(&self.native);
        let tmp = self.native.store.clean_tmp()?;
        // Read the known chunks first: collection takes the store's pin
        // lock, which must never wait while the catalog is held.
        let known: std::collections::HashSet<_> = native_meta::all_chunks(&self.catalog.conn())?
            .into_iter()
            .collect();
        let back = self
            .native
            .store
            .release_quarantined(|h| known.contains(h))?;
        let c = self
            .native
            .store
            .collect_orphans(|h| known.contains(h), policy)?;
        let files = c.removed;
        if orphans + tmp + files > 0 {
            tracing::info!(
                "recovery: removed {orphans} unlinked inodes, {tmp} partial chunk writes, \
                 {files} uncommitted chunk files"
            );
        }
        if c.quarantined > 0 {
            let msg = format!(
                "recovery: {} unreferenced chunk files could not be proved to be uncommitted \
                 writes of the last run; moved to {} (deleted after the grace period)",
                c.quarantined,
                self.native.store.quarantine_dir().display()
            );
            tracing::warn!("{msg}");
            let _ = self.catalog.event(None, "warn", &msg);
        }
        if back > 0 {
            tracing::info!(
                "recovery: {back} chunk files the catalog references came back from the quarantine"
            );
        }
        Ok(())
    }

    fn mount_native(&self, rec: &VolumeRecord) -> Result<Arc<Mounted>> {
        let root = rec.root_ino.ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{}: native volume without a root", rec.id),
            )
        })?;
        let fs = NativeVolume::new(self.native.clone(), rec.slot, root, rec.id.clone());
        // The quota binds the volumes non-root users create; root's have
        // none. It belongs to the volume, so it binds every writer of it
        // (the data path does not know the writer's uid).
        if rec.owner_uid != 0 {
            fs.files()
                .quota
                .set_limit(self.native.limits.native_volume_mb << 20);
        }
        let m = Arc::new(Mounted {
            slot: rec.slot,
            info: RwLock::new(Self::info(rec, Attachment::Attached)),
            fs: Arc::new(fs),
            media: Vec::new(),
            ttl: self.native_ttl,
            open_files: AtomicU64::new(0),
        });
        self.refresh_usage(&m);
        self.core.register(m.clone())?;
        Ok(m)
    }

    /// Updates a native volume's file count and size from the catalog.
    fn refresh_usage(&self, m: &Mounted) {
        if let Ok((files, bytes)) = native_meta::usage(&self.catalog.conn(), m.slot) {
            let mut i = m.info.write();
            i.files = files;
            i.size = bytes;
        }
    }

    /// Creates an empty native volume named `name`, owned by the caller.
    pub fn create(&self, name: &str, caller: &Caller) -> Result<VolumeInfo> {
        check_name(name)?;
        let _guard = self.lock.lock();
        let max = self.native.limits.native_volumes;
        if caller.uid != 0 && max != 0 {
            let mine = self
                .catalog
                .volumes()?
                .iter()
                .filter(|r| r.kind == Kind::Native && r.owner_uid == caller.uid)
                .count() as u64;
            if mine >= max {
                return Err(Error::new(
                    ErrorKind::Limit,
                    format!(
                        "uid {} has {mine} native volumes, the most limits.native_volumes \
                         allows ({max}); destroy one first",
                        caller.uid
                    ),
                ));
            }
        }
        if self.catalog.name_taken(name, None)? {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("volume name {name:?} is already in use"),
            ));
        }
        let mut rec = VolumeRecord {
            slot: 0,
            id: util::new_volume_id()?,
            name: Some(name.to_string()),
            kind: Kind::Native,
            state: Attachment::Attached,
            residency: Residency::Hot,
            format: None,
            medium_path: None,
            medium_size: None,
            medium_mtime_ns: None,
            medium_sample: None,
            size: 0,
            files: 0,
            owner_uid: caller.uid,
            created_ns: Timespec::now().as_nanos(),
            root_ino: None,
        };
        rec.slot = self.catalog.insert_volume(&rec, None)?;
        let root = (|| -> Result<i64> {
            let mut conn = self.catalog.conn();
            let tx = conn.transaction()?;
            let root = NativeVolume::create_root(&tx, rec.slot, caller.uid, caller.gid)?;
            tx.execute(
                "UPDATE volumes SET root_ino = ?2 WHERE slot = ?1",
                rusqlite::params![rec.slot, root],
            )?;
            tx.commit()?;
            Ok(root)
        })();
        let root = match root {
            Ok(r) => r,
            Err(e) => {
                let _ = self.catalog.delete_volume(rec.slot);
                return Err(e);
            }
        };
        rec.root_ino = Some(root);
        let m = self.mount_native(&rec)?;
        let _ = self
            .catalog
            .event(Some(&rec.id), "info", &format!("created {name}"));
        let info = m.info.read().clone();
        Ok(info)
    }

    /// Deletes a volume: a native volume with all its files (its chunks are
    /// released), an archive volume's catalog entry (the archive file is
    /// untouched). Refused while files of it are open.
    pub fn destroy(&self, id_or_name: &str, caller: &Caller) -> Result<VolumeInfo> {
        let _guard = self.lock.lock();
        let rec = self.record(id_or_name)?;
        Self::check_owner(&rec, caller)?;
        let mounted = self.core.by_slot(rec.slot);
        Attachment::live(rec.state, mounted.is_some())
            .transition(Attachment::Destroyed, &rec.id)?;
        if let Some(m) = mounted {
            let open = m.open_files.load(Ordering::Acquire);
            if open > 0 {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{}: {open} file{} open in the volume; close {} first",
                        rec.id,
                        if open == 1 { " is" } else { "s are" },
                        if open == 1 { "it" } else { "them" }
                    ),
                ));
            }
        }
        // Out of the namespace while its rows go, so no request opens a file
        // of it meanwhile; but the kernel's entries are dropped only after
        // the commit, and if the commit fails (a full disk) the volume is
        // put back as it was: a failed destroy changes nothing anyone sees.
        let fenced = self.core.unregister(rec.slot);
        let committed = (|| -> Result<()> {
            let mut conn = self.catalog.conn();
            let tx = conn.transaction()?;
            native_meta::delete_volume_data(&tx, rec.slot)?;
            tx.execute("DELETE FROM treehashes WHERE slot = ?1", [rec.slot])?;
            tx.execute("DELETE FROM volumes WHERE slot = ?1", [rec.slot])?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = committed {
            if let Some(m) = fenced
                && let Err(r) = self.core.register(m)
            {
                tracing::error!(
                    "{}: destroy failed and the volume could not be put back: {r}",
                    rec.id
                );
            }
            return Err(e);
        }
        if let Some(m) = fenced {
            self.invalidate(&m.info.read());
        }
        native_file::collect(&self.native);
        let _ = self.catalog.event(Some(&rec.id), "info", "destroyed");
        Ok(Self::info(&rec, Attachment::Destroyed))
    }

    /// `tokenctl fsck --catalog`: the full integrity check of the catalog
    /// and its store identity against the chunk store's. Root only: it
    /// reads every page and holds the catalog meanwhile.
    pub fn fsck_catalog(&self, caller: &Caller) -> Result<crate::store::guard::CatalogReport> {
        if caller.uid != 0 {
            return Err(Error::new(
                ErrorKind::NotPermitted,
                "checking the catalog needs root",
            ));
        }
        crate::store::guard::check_live(&self.catalog, self.native.store.dir())
    }

    /// Checks one native volume, or all of them and the whole chunk store.
    pub fn fsck(
        &self,
        volume: Option<&str>,
        repair: bool,
        caller: &Caller,
    ) -> Result<fsck::Report> {
        let slots: Vec<(u32, String)> = match volume {
            Some(v) => {
                let rec = self.record(v)?;
                Self::check_owner(&rec, caller)?;
                if rec.kind != Kind::Native {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        format!(
                            "{}: fsck checks native volumes; this one is {}",
                            rec.id, rec.kind
                        ),
                    ));
                }
                vec![(rec.slot, rec.id)]
            }
            None => {
                if caller.uid != 0 {
                    return Err(Error::new(
                        ErrorKind::NotPermitted,
                        "checking the whole store needs root; name a volume you own",
                    ));
                }
                self.catalog
                    .volumes()?
                    .into_iter()
                    .filter(|r| r.kind == Kind::Native)
                    .map(|r| (r.slot, r.id))
                    .collect()
            }
        };
        let targets: Vec<fsck::Target> = slots
            .into_iter()
            .map(|(slot, id)| fsck::Target {
                busy: self
                    .core
                    .by_slot(slot)
                    .map(|m| m.fs.busy_inodes().into_iter().collect())
                    .unwrap_or_default(),
                slot,
                id,
            })
            .collect();
        let rep = fsck::run(&self.native, &targets, volume.is_none(), repair)?;
        let _ = self.catalog.event(
            volume,
            if rep.problems.is_empty() {
                "info"
            } else {
                "warn"
            },
            &format!(
                "fsck: {} problems, {} unrepaired",
                rep.problems.len(),
                rep.unrepaired()
            ),
        );
        Ok(rep)
    }

    /// Hot-tier usage: (unique chunks, their bytes).
    pub fn hot_usage(&self) -> Result<(u64, u64)> {
        let (n, b): (i64, i64) = self.catalog.conn().query_row(
            "SELECT count(*), COALESCE(SUM(len), 0) FROM chunks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as u64, b as u64))
    }

    /// The shared native-volume environment.
    pub fn native_env(&self) -> &Arc<Env> {
        &self.native
    }

    fn reload_archive(&self, rec: &VolumeRecord) -> Result<()> {
        let path = PathBuf::from(rec.medium_path.clone().unwrap_or_default());
        let (_, medium, meta) = open_path(&path)?;
        let label = path.display().to_string();
        // The remembered path is opened with the daemon's rights, so it
        // must still name the medium itself: a symlink put in its place, or
        // in place of a directory on the way, by a user who can write there
        // would otherwise mount whatever it points to, read as root, under
        // that user's volume.
        let named = std::fs::read_link(format!("/proc/self/fd/{}", medium.file.as_raw_fd()));
        if named.as_deref().ok() != Some(path.as_path()) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{label}: now resolves to {}, not to itself (a symlink put in its place?); \
                     attach the file again",
                    named.map_or_else(|e| e.to_string(), |n| n.display().to_string())
                ),
            ));
        }
        let id = self.ids.id(&medium, &meta, &label)?;
        let mut rec = rec.clone();
        let index = match self.stored_index(&rec, &id) {
            Some(ix) => ix,
            None => {
                tracing::info!(volume = %rec.id, "{label} changed since it was indexed; indexing again");
                let choice = match rec.format.as_deref() {
                    Some("zip") => FormatChoice::Zip,
                    Some("tar") => FormatChoice::Tar,
                    _ => FormatChoice::Auto,
                };
                // Indexed again for its owner: the per-attach limit holds.
                let per_attach = self.native.limits.members_per_attach;
                let budget = MemberBudget {
                    max: if rec.owner_uid == 0 || per_attach == 0 {
                        u64::MAX
                    } else {
                        per_attach
                    },
                    limit: "limits.members_per_attach allows no more in one attach",
                };
                let ix =
                    Self::index_medium(&medium, &meta, &label, choice, &budget, &mut |_, _| {})?;
                rec.medium_size = Some(id.size);
                rec.medium_mtime_ns = Some(id.mtime_ns);
                rec.medium_sample = Some(id.sample);
                rec.size = id.size;
                rec.files = ix.stats.files;
                self.catalog
                    .update_medium(&rec, Some((INDEX_VERSION, &ix.to_bytes())))?;
                ix
            }
        };
        self.mount_archive(&rec, index, Owned::shared(medium, &meta))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("photos-2024").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("vol-0123456789abcdef").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
    }
}
