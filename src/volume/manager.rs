//! Volume management: the registry of volumes, whatever their kind.
//! Attach, create, detach, destroy, list, status and fsck, and reloading
//! the attached volumes when the daemon starts. What depends on a volume's
//! kind (indexing a medium, mounting, recovery, usage, fsck) is asked of
//! the kind through [`super::kinds`]; this module keeps the locking, the
//! owner checks, the lifecycle transitions and the catalog records.
//!
//! An attach is all-or-nothing: the medium is indexed completely in memory,
//! then the volume row and its index are committed in one catalog
//! transaction, and only then does the volume appear in the mount. A medium
//! that fails to parse leaves no trace.
//!
//! A medium is identified by its canonical path. Its index is reused when the
//! size, the mtime and a hash of its first and last 64 KiB all match what the
//! catalog recorded; otherwise it is indexed again under the same volume ID.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::archive::index::IndexStats;
pub use super::kinds::FormatChoice;
use super::kinds::{Attaching, Context, Kinds, Mount, Prepared, Source, VolumeKind};
use super::native::file::Env;
use super::native::fsck;
use super::open;
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::fs::types::Timespec;
use crate::fs::{Core, Mounted, VolumeInfo};
use crate::lifecycle::{Attachment, Residency};
use crate::medium::MediumFile;
use crate::medium::file::Owned;
use crate::medium::identity::Primed;
use crate::store::catalog::{Catalog, VolumeRecord};
use crate::store::chunks::Orphans;
use crate::util;

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
    /// What the kinds share: the core, the catalog, the chunk environment
    /// and the configuration they use.
    ctx: Context,
    kinds: Kinds,
    /// Serialises attach and detach (rare, and they touch several places).
    lock: Mutex<()>,
    invalidator: RwLock<Option<Invalidator>>,
    /// Medium identities computed ahead during start-up.
    ids: Arc<Primed>,
    /// This daemon's own mountpoint and, once looked up, its device: media
    /// stored in fsd's own volumes are the only FUSE-backed media an
    /// unprivileged caller may attach (see [`open::check_not_foreign_fuse`]).
    mountpoint: std::sync::OnceLock<PathBuf>,
    mount_dev: std::sync::OnceLock<u64>,
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
            ctx: Context {
                core,
                catalog: native.catalog.clone(),
                env: native,
                cache_dir,
                archive_ttl,
                native_ttl,
            },
            kinds: Kinds::new(),
            lock: Mutex::new(()),
            invalidator: RwLock::new(None),
            ids: Arc::new(Primed::closed()),
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
        &self.ctx.core
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.ctx.catalog
    }

    /// The kinds of volume this manager serves.
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
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

    /// Makes the kernel forget every name the namespace shows `m` under
    /// (`volumes/<id>`, `volumes/<name>`, each `media/` entry), as they are
    /// now: call before a rename changes them.
    fn invalidate(&self, m: &Mounted) {
        if let Some(f) = &*self.invalidator.read() {
            for (dir, name) in self.ctx.core.dentries_of(m) {
                f(dir, &name);
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

    /// Mounts the volume `rec` through its kind and puts it in the mount.
    fn mount(
        &self,
        kind: &dyn VolumeKind,
        rec: &VolumeRecord,
        attaching: Option<Attaching>,
    ) -> Result<Arc<Mounted>> {
        let Mount { fs, media, ttl } = kind.mount(&self.ctx, rec, attaching)?;
        let m = Arc::new(Mounted {
            slot: rec.slot,
            info: RwLock::new(Self::info(rec, Attachment::Attached)),
            fs,
            media,
            ttl,
            open_files: AtomicU64::new(0),
        });
        self.refresh_usage(kind, &m);
        self.ctx.core.register(m.clone())?;
        Ok(m)
    }

    /// Updates a mounted volume's file count and size, for kinds whose
    /// numbers change while it is mounted.
    fn refresh_usage(&self, kind: &dyn VolumeKind, m: &Mounted) {
        if let Some((files, bytes)) = kind.usage(&self.ctx, m.slot) {
            let mut i = m.info.write();
            i.files = files;
            i.size = bytes;
        }
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
        let (canon, medium, meta) = open::open_medium(path, passed, caller)?;
        if caller.uid != 0 && caller.uid != nix::unistd::geteuid().as_raw() {
            open::check_not_foreign_fuse(&medium.file, &meta, &canon, self.own_dev())?;
        }
        let label = canon.display().to_string();
        let _guard = self.lock.lock();
        let id = self.ids.id(&medium, &meta, &label)?;
        let medium_path = canon.to_string_lossy().into_owned();
        let catalog = &self.ctx.catalog;

        let existing = catalog.find_by_medium(&medium_path)?;
        // The kind: the record's, or for a new medium the one its format
        // names or detection finds.
        let (kind, row) = match &existing {
            Some(rec) => (
                self.kinds.get(rec.kind)?,
                format.row_name().and_then(super::kinds::row),
            ),
            None => self.kinds.for_medium(format, &medium, &label)?,
        };
        let budget = kind.admit_attach(&self.ctx, caller, existing.as_ref(), &label)?;
        let src = Source {
            file: &medium,
            meta: &meta,
            label: &label,
        };
        if let Some(mut rec) = existing {
            if let Some(n) = name
                && rec.name.as_deref() != Some(n)
                && catalog.name_taken(n, Some(rec.slot))?
            {
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!("volume name {n:?} is already in use"),
                ));
            }
            let mounted = self.ctx.core.by_slot(rec.slot);
            // Detached, missing, or attached with a changed medium: each
            // may become attached (a destroyed volume has no record).
            let attached = Attachment::live(rec.state, mounted.is_some())
                .transition(Attachment::Attached, &rec.id)?;
            if let Some(m) = mounted
                .as_ref()
                .filter(|_| kind.unchanged(&self.ctx, &rec, &id))
            {
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
            let stored = kind.stored(&self.ctx, &rec, &id);
            let (mut prepared, indexed) = match stored {
                Some(p) => (p, false),
                None => (kind.prepare(&self.ctx, &src, row, &budget, progress)?, true),
            };
            rec.format = prepared.format.clone();
            rec.medium_size = Some(id.size);
            rec.medium_mtime_ns = Some(id.mtime_ns);
            rec.medium_sample = Some(id.sample.clone());
            rec.size = id.size;
            rec.files = prepared.files;
            if indexed {
                let data = prepared.record_data.take();
                catalog.update_medium(&rec, data.as_ref().map(|(v, b)| (*v, b.as_slice())))?;
            }
            if let Some(n) = name {
                catalog.set_name(rec.slot, Some(n))?;
                rec.name = Some(n.to_string());
            }
            if let Some(m) = mounted {
                self.ctx.core.unregister(m.slot);
                self.invalidate(&m);
            }
            catalog.set_state(rec.slot, attached)?;
            let m = self.mount(kind, &rec, Some(Self::attaching(prepared, medium, &meta)))?;
            let info = m.info.read().clone();
            let _ = catalog.event(Some(&rec.id), "info", &format!("attached {label}"));
            return Ok(Attached {
                volume: info,
                already_attached: false,
                indexed,
            });
        }

        // A new medium.
        let mut prepared = kind.prepare(&self.ctx, &src, row, &budget, progress)?;
        let name = match name {
            Some(n) => {
                if catalog.name_taken(n, None)? {
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
            kind: kind.kind(),
            state: Attachment::Attached,
            residency: Residency::Hot,
            format: prepared.format.clone(),
            medium_path: Some(medium_path),
            medium_size: Some(id.size),
            medium_mtime_ns: Some(id.mtime_ns),
            medium_sample: Some(id.sample),
            size: id.size,
            files: prepared.files,
            owner_uid: caller.uid,
            created_ns: Timespec::now().as_nanos(),
            root_ino: None,
        };
        let data = prepared.record_data.take();
        rec.slot = catalog.insert_volume(&rec, data.as_ref().map(|(v, b)| (*v, b.as_slice())))?;
        drop(data);
        let m = match self.mount(kind, &rec, Some(Self::attaching(prepared, medium, &meta))) {
            Ok(m) => m,
            Err(e) => {
                // Keep "no half volume": undo the catalog row.
                let _ = catalog.delete_volume(rec.slot);
                return Err(e);
            }
        };
        let _ = catalog.event(Some(&rec.id), "info", &format!("attached {label}"));
        let info = m.info.read().clone();
        Ok(Attached {
            volume: info,
            already_attached: false,
            indexed: true,
        })
    }

    /// A prepared medium with the owner and mode its file had when opened.
    fn attaching(prepared: Prepared, medium: MediumFile, meta: &std::fs::Metadata) -> Attaching {
        Attaching {
            prepared,
            medium: Owned::shared(medium, meta),
        }
    }

    /// The file name of the medium, if it is a valid and unused volume name.
    fn default_name(&self, canon: &Path) -> Result<Option<String>> {
        let Some(n) = canon.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        if check_name(n).is_err() || self.ctx.catalog.name_taken(n, None)? {
            return Ok(None);
        }
        Ok(Some(n.to_string()))
    }

    fn rename_mounted(&self, rec: &VolumeRecord, m: &Arc<Mounted>, name: &str) -> Result<()> {
        self.ctx.catalog.set_name(rec.slot, Some(name))?;
        self.ctx.core.unregister(m.slot);
        self.invalidate(m);
        m.info.write().name = Some(name.to_string());
        self.ctx.core.register(m.clone())
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
        self.ctx
            .catalog
            .find_volume(id_or_name)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{id_or_name}: no such volume")))
    }

    /// Removes a volume from the mount, keeping it in the catalog as
    /// `detached` so that attaching it again is instant and keeps its ID.
    pub fn detach(&self, id_or_name: &str, force: bool, caller: &Caller) -> Result<VolumeInfo> {
        let _guard = self.lock.lock();
        let rec = self.record(id_or_name)?;
        Self::check_owner(&rec, caller)?;
        let mounted = self.ctx.core.by_slot(rec.slot);
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
        self.ctx.catalog.set_state(rec.slot, Attachment::Detached)?;
        self.ctx.core.unregister(rec.slot);
        m.info.write().state = Attachment::Detached;
        self.invalidate(&m);
        let _ = self.ctx.catalog.event(
            Some(&rec.id),
            "info",
            &format!("detached{}", if open > 0 { " (forced)" } else { "" }),
        );
        Ok(Self::info(&rec, Attachment::Detached))
    }

    /// Every volume the catalog knows, with its live state.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for rec in self.ctx.catalog.volumes()? {
            match self.ctx.core.by_slot(rec.slot) {
                Some(m) => {
                    self.refresh_usage(self.kinds.get(rec.kind)?, &m);
                    out.push(m.info.read().clone())
                }
                None => out.push(Self::info(&rec, Attachment::live(rec.state, false))),
            }
        }
        Ok(out)
    }

    pub fn status(&self, id_or_name: &str) -> Result<VolumeStatus> {
        let rec = self.record(id_or_name)?;
        let kind = self.kinds.get(rec.kind)?;
        let mounted = self.ctx.core.by_slot(rec.slot);
        let info = match &mounted {
            Some(m) => {
                self.refresh_usage(kind, m);
                m.info.read().clone()
            }
            None => Self::info(&rec, Attachment::live(rec.state, false)),
        };
        let index = kind.index_stats(&self.ctx, &rec)?;
        Ok(VolumeStatus {
            info,
            created: util::fmt_utc(rec.created_ns),
            open_files: mounted
                .map(|m| m.open_files.load(Ordering::Acquire))
                .unwrap_or(0),
            index,
        })
    }

    /// Whether the volume `id_or_name` can be shelved; the error says why
    /// not (an archive's data is not fsd's to move).
    pub fn shelvable(&self, id_or_name: &str) -> Result<()> {
        let rec = self.record(id_or_name)?;
        self.kinds.get(rec.kind)?.shelvable(&rec)
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
        if !self.ctx.catalog.created() {
            for kind in self.kinds.all() {
                kind.recover(&self.ctx, orphans)?;
            }
        }
        for rec in self.ctx.catalog.volumes()? {
            if rec.state != Attachment::Attached {
                continue;
            }
            let r = self.kinds.get(rec.kind).and_then(|kind| {
                if kind.by_reference() {
                    self.reload(kind, &rec)
                } else {
                    self.mount(kind, &rec, None).map(|_| ())
                }
            });
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    missing += 1;
                    tracing::warn!(volume = %rec.id, "not mounted: {e}");
                    let _ =
                        self.ctx
                            .catalog
                            .event(Some(&rec.id), "warn", &format!("not mounted: {e}"));
                }
            }
        }
        Ok((ok, missing))
    }

    /// Mounts a volume attached by reference from the medium the catalog
    /// remembers, indexing it again (for its owner) if it changed.
    fn reload(&self, kind: &dyn VolumeKind, rec: &VolumeRecord) -> Result<()> {
        let path = PathBuf::from(rec.medium_path.clone().unwrap_or_default());
        let (medium, meta) = open::reopen(&path)?;
        let label = path.display().to_string();
        let id = self.ids.id(&medium, &meta, &label)?;
        let mut rec = rec.clone();
        let prepared = match kind.stored(&self.ctx, &rec, &id) {
            Some(p) => p,
            None => {
                tracing::info!(volume = %rec.id, "{label} changed since it was indexed; indexing again");
                let row = rec.format.as_deref().and_then(super::kinds::serving);
                let budget = kind.reload_budget(&self.ctx, &rec);
                let src = Source {
                    file: &medium,
                    meta: &meta,
                    label: &label,
                };
                let mut p = kind.prepare(&self.ctx, &src, row, &budget, &mut |_, _| {})?;
                rec.medium_size = Some(id.size);
                rec.medium_mtime_ns = Some(id.mtime_ns);
                rec.medium_sample = Some(id.sample);
                rec.size = id.size;
                rec.files = p.files;
                let data = p.record_data.take();
                self.ctx
                    .catalog
                    .update_medium(&rec, data.as_ref().map(|(v, b)| (*v, b.as_slice())))?;
                p
            }
        };
        self.mount(kind, &rec, Some(Self::attaching(prepared, medium, &meta)))?;
        Ok(())
    }

    /// Creates an empty volume named `name`, owned by the caller, of the
    /// kind that is created (native).
    pub fn create(&self, name: &str, caller: &Caller) -> Result<VolumeInfo> {
        check_name(name)?;
        let _guard = self.lock.lock();
        let kind = self.kinds.creator()?;
        kind.admit_create(&self.ctx, caller)?;
        let catalog = &self.ctx.catalog;
        if catalog.name_taken(name, None)? {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("volume name {name:?} is already in use"),
            ));
        }
        let mut rec = VolumeRecord {
            slot: 0,
            id: util::new_volume_id()?,
            name: Some(name.to_string()),
            kind: kind.kind(),
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
        rec.slot = catalog.insert_volume(&rec, None)?;
        if let Err(e) = kind.create(&self.ctx, &mut rec, caller) {
            let _ = catalog.delete_volume(rec.slot);
            return Err(e);
        }
        let m = self.mount(kind, &rec, None)?;
        let _ = catalog.event(Some(&rec.id), "info", &format!("created {name}"));
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
        let kind = self.kinds.get(rec.kind)?;
        let mounted = self.ctx.core.by_slot(rec.slot);
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
        let fenced = self.ctx.core.unregister(rec.slot);
        let committed = (|| -> Result<()> {
            let mut conn = self.ctx.catalog.conn();
            let tx = conn.transaction()?;
            kind.destroy(&self.ctx, &tx, &rec)?;
            tx.execute("DELETE FROM treehashes WHERE slot = ?1", [rec.slot])?;
            tx.execute("DELETE FROM volumes WHERE slot = ?1", [rec.slot])?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = committed {
            if let Some(m) = fenced
                && let Err(r) = self.ctx.core.register(m)
            {
                tracing::error!(
                    "{}: destroy failed and the volume could not be put back: {r}",
                    rec.id
                );
            }
            return Err(e);
        }
        if let Some(m) = fenced {
            self.invalidate(&m);
        }
        kind.destroyed(&self.ctx);
        let _ = self.ctx.catalog.event(Some(&rec.id), "info", "destroyed");
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
        crate::store::guard::check_live(&self.ctx.catalog, self.ctx.env.store.dir())
    }

    /// Checks one volume, or all of them and what they share (the whole
    /// chunk store), through the kinds that have something to check.
    pub fn fsck(
        &self,
        volume: Option<&str>,
        repair: bool,
        caller: &Caller,
    ) -> Result<fsck::Report> {
        let busy = |slot: u32| {
            self.ctx
                .core
                .by_slot(slot)
                .map(|m| m.fs.busy_inodes().into_iter().collect())
                .unwrap_or_default()
        };
        let target = |rec: VolumeRecord| fsck::Target {
            busy: busy(rec.slot),
            slot: rec.slot,
            id: rec.id,
        };
        let rep = match volume {
            Some(v) => {
                let rec = self.record(v)?;
                Self::check_owner(&rec, caller)?;
                let kind = self.kinds.get(rec.kind)?;
                if !kind.checks() {
                    return Err(self.kinds.fsck_refusal(&rec));
                }
                kind.fsck(&self.ctx, &[target(rec)], false, repair)?
            }
            None => {
                if caller.uid != 0 {
                    return Err(Error::new(
                        ErrorKind::NotPermitted,
                        "checking the whole store needs root; name a volume you own",
                    ));
                }
                let all = self.ctx.catalog.volumes()?;
                let mut rep: Option<fsck::Report> = None;
                for kind in self.kinds.all().filter(|k| k.checks()) {
                    let targets: Vec<fsck::Target> = all
                        .iter()
                        .filter(|r| r.kind == kind.kind())
                        .cloned()
                        .map(target)
                        .collect();
                    let r = kind.fsck(&self.ctx, &targets, true, repair)?;
                    rep = Some(match rep {
                        None => r,
                        Some(mut acc) => {
                            acc.volumes.extend(r.volumes);
                            acc.inodes += r.inodes;
                            acc.chunks += r.chunks;
                            acc.bytes_verified += r.bytes_verified;
                            acc.problems.extend(r.problems);
                            acc
                        }
                    });
                }
                rep.unwrap_or_default()
            }
        };
        let _ = self.ctx.catalog.event(
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
        let (n, b): (i64, i64) = self.ctx.catalog.conn().query_row(
            "SELECT count(*), COALESCE(SUM(len), 0) FROM chunks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as u64, b as u64))
    }

    /// The shared native-volume environment.
    pub fn native_env(&self) -> &Arc<Env> {
        &self.ctx.env
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
