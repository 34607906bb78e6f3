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
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::archive::index::{ArchiveIndex, IndexStats, MediumFile, Meta, ReadAt};
use super::archive::{self, ArchiveVolume, Format, SharedMedium};
use super::identity::{MediumId, Primed};
use super::native::file::{self as native_file, Env};
use super::native::{NativeVolume, fsck, meta as native_meta};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::{self, Caller};
use crate::fs::types::Timespec;
use crate::fs::{Core, MEDIA_INO, Mounted, VOLUMES_INO, VolumeInfo};
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

/// Opens a medium for reading after checking what it is and that `caller`
/// may read it.
fn open_medium(path: &Path, caller: &Caller) -> Result<(PathBuf, MediumFile, std::fs::Metadata)> {
    let shown = path.display().to_string();
    let canon = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NotFound, format!("{shown}: no such file"))
        }
        _ => Error::io(format!("{shown}: cannot resolve the path"), e),
    })?;
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(format!("{shown}: stat"), e))?;
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
    if !perm::may_access_meta(caller, &meta, perm::R) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{shown}: permission denied (uid {} may not read it)",
                caller.uid
            ),
        ));
    }
    let file = File::open(&canon).map_err(|e| Error::io(format!("{shown}: cannot open"), e))?;
    // Size and mtime from the open descriptor, so they describe what we read.
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("{shown}: stat"), e))?;
    let size = if meta.file_type().is_block_device() {
        use std::io::Seek;
        (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(format!("{shown}: size of block device"), e))?
    } else {
        meta.len()
    };
    Ok((canon, MediumFile { file, size }, meta))
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

    fn info(rec: &VolumeRecord, state: &str) -> VolumeInfo {
        VolumeInfo {
            id: rec.id.clone(),
            name: rec.name.clone(),
            kind: rec.kind.clone(),
            state: state.to_string(),
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
        let fs = ArchiveVolume::new(label, index, medium.clone(), self.cache_dir.join(&rec.id))
            .with_hash_cache(self.catalog.clone(), rec.slot);
        let m = Arc::new(Mounted {
            slot: rec.slot,
            info: RwLock::new(Self::info(rec, "attached")),
            fs: Arc::new(fs),
            medium: Some(medium),
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
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ArchiveIndex> {
        let format = match choice {
            FormatChoice::Auto => archive::detect(medium, label)?,
            FormatChoice::Tar => Format::Tar,
            FormatChoice::Zip => Format::Zip,
        };
        let total = medium.size();
        let started = std::time::Instant::now();
        let idx = archive::build_index(
            medium,
            label,
            format,
            Self::implicit_meta(meta),
            &mut |done| progress(done.min(total), total),
        )?;
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

    /// Attaches the medium at `path` (absolute, as the caller resolved it).
    pub fn attach(
        &self,
        path: &Path,
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
        let (canon, medium, meta) = open_medium(path, caller)?;
        let label = canon.display().to_string();
        let _guard = self.lock.lock();
        let id = self.ids.id(&medium, &meta, &label)?;
        let medium_path = canon.to_string_lossy().into_owned();

        let existing = self.catalog.find_by_medium(&medium_path)?;
        if let Some(mut rec) = existing {
            if rec.kind != "archive" {
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
                    Self::index_medium(&medium, &meta, &label, format, progress)?,
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
            self.catalog.set_state(rec.slot, "attached")?;
            let m = self.mount_archive(&rec, index, Arc::new(medium))?;
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
        let index = Self::index_medium(&medium, &meta, &label, format, progress)?;
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
            kind: "archive".into(),
            state: "attached".into(),
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
        let m = match self.mount_archive(&rec, index, Arc::new(medium)) {
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
        let Some(m) = self.core.by_slot(rec.slot) else {
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
        self.catalog.set_state(rec.slot, "detached")?;
        self.core.unregister(rec.slot);
        m.info.write().state = "detached".into();
        self.invalidate(&m.info.read());
        let _ = self.catalog.event(
            Some(&rec.id),
            "info",
            &format!("detached{}", if open > 0 { " (forced)" } else { "" }),
        );
        Ok(Self::info(&rec, "detached"))
    }

    /// Every volume the catalog knows, with its live state.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for rec in self.catalog.volumes()? {
            match self.core.by_slot(rec.slot) {
                Some(m) => {
                    if rec.kind == "native" {
                        self.refresh_usage(&m);
                    }
                    out.push(m.info.read().clone())
                }
                None => {
                    let state = if rec.state == "attached" {
                        "missing"
                    } else {
                        rec.state.as_str()
                    };
                    out.push(Self::info(&rec, state));
                }
            }
        }
        Ok(out)
    }

    pub fn status(&self, id_or_name: &str) -> Result<VolumeStatus> {
        let rec = self.record(id_or_name)?;
        let mounted = self.core.by_slot(rec.slot);
        let info = match &mounted {
            Some(m) => {
                if rec.kind == "native" {
                    self.refresh_usage(m);
                }
                m.info.read().clone()
            }
            None => Self::info(
                &rec,
                if rec.state == "attached" {
                    "missing"
                } else {
                    &rec.state
                },
            ),
        };
        let index = match &mounted {
            Some(_) | None if rec.kind == "archive" => self
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
            if rec.state != "attached" {
                continue;
            }
            let r = match rec.kind.as_str() {
                "archive" => self.reload_archive(&rec),
                "native" => self.mount_native(&rec).map(|_| ()),
                _ => continue,
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
            if rec.kind != "native" {
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
        let m = Arc::new(Mounted {
            slot: rec.slot,
            info: RwLock::new(Self::info(rec, "attached")),
            fs: Arc::new(fs),
            medium: None,
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
            kind: "native".into(),
            state: "attached".into(),
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
        if let Some(m) = self.core.by_slot(rec.slot) {
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
            self.core.unregister(rec.slot);
            self.invalidate(&m.info.read());
        }
        {
            let mut conn = self.catalog.conn();
            let tx = conn.transaction()?;
            native_meta::delete_volume_data(&tx, rec.slot)?;
            tx.execute("DELETE FROM treehashes WHERE slot = ?1", [rec.slot])?;
            tx.execute("DELETE FROM volumes WHERE slot = ?1", [rec.slot])?;
            tx.commit()?;
        }
        native_file::collect(&self.native);
        let _ = self.catalog.event(Some(&rec.id), "info", "destroyed");
        Ok(Self::info(&rec, "destroyed"))
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
                if rec.kind != "native" {
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
                    .filter(|r| r.kind == "native")
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
        let (_, medium, meta) = open_medium(&path, &Caller::root())?;
        let label = path.display().to_string();
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
                let ix = Self::index_medium(&medium, &meta, &label, choice, &mut |_, _| {})?;
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
        self.mount_archive(&rec, index, Arc::new(medium))?;
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
