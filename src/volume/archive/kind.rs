//! The archive kind: tar and zip media attached by reference. Indexes a
//! medium within the caller's limits, keeps the index in the catalog (and
//! reuses it while the medium is unchanged) and mounts an
//! [`ArchiveVolume`] over it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use parking_lot::Mutex;

use super::index::{ArchiveIndex, IndexStats, Meta};
use super::{ArchiveVolume, Format};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::lifecycle::{Attachment, Kind};
use crate::medium::identity::MediumId;
use crate::medium::{MediumFile, ReadAt};
use crate::store::catalog::VolumeRecord;
use crate::volume::kinds::{
    Attaching, Budget, Context, Mount, Prepared, Row, Source, VolumeKind, detect,
};

/// Bumped whenever [`ArchiveIndex`]'s encoding changes; older stored indexes
/// are then rebuilt instead of misread.
pub const INDEX_VERSION: u32 = 1;

/// Detects a tar from its first block ([`crate::volume::kinds::KINDS`]).
pub fn is_tar(head: &[u8], _medium: &dyn ReadAt) -> bool {
    head.len() == 512 && super::tar::looks_like_tar(head)
}

/// Detects a zip from its signatures, at its start or near its end.
pub fn is_zip(_head: &[u8], medium: &dyn ReadAt) -> bool {
    super::zip::looks_like_zip(medium)
}

pub fn new() -> Box<dyn VolumeKind> {
    Box::new(ArchiveKind::default())
}

#[derive(Default)]
pub struct ArchiveKind {
    /// Members indexed per mounted archive volume (slot → count), for the
    /// per-user member limit.
    members: Mutex<HashMap<u32, u64>>,
}

impl ArchiveKind {
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
        format: Format,
        budget: &Budget,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ArchiveIndex> {
        let total = medium.size();
        let started = std::time::Instant::now();
        let (idx, over) = super::index::with_member_limit(budget.max, || {
            super::build_index(
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

    fn prepared(index: ArchiveIndex, record_data: Option<(u32, Vec<u8>)>) -> Prepared {
        Prepared {
            format: Some(index.format.split(' ').next().unwrap_or("tar").to_string()),
            files: index.stats.files,
            record_data,
            state: Box::new(index),
        }
    }
}

impl VolumeKind for ArchiveKind {
    fn kind(&self) -> Kind {
        Kind::Archive
    }

    fn by_reference(&self) -> bool {
        true
    }

    /// Applies the per-user attach limits of `[limits]` (root is exempt)
    /// to an attach by `caller` of a medium whose record is `existing`:
    /// refuses a new attachment past `attached_volumes`, and says how many
    /// members indexing may take before it is refused (the lesser of
    /// `members_per_attach` and what `members_per_uid` leaves). Every
    /// attach counts on its own, so hard links or bind-mounted paths to
    /// one archive (separate volumes, since a medium is identified by its
    /// path) cannot multiply the cost beyond these limits.
    fn admit_attach(
        &self,
        ctx: &Context,
        caller: &Caller,
        existing: Option<&VolumeRecord>,
        _label: &str,
    ) -> Result<Budget> {
        if caller.uid == 0 {
            return Ok(Budget::UNLIMITED);
        }
        let limits = &ctx.env.limits;
        let except = existing.map(|r| r.slot);
        let mine: Vec<VolumeRecord> = ctx
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
        let adds = existing.is_none_or(|r| ctx.core.by_slot(r.slot).is_none());
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
        let mut budget = Budget::UNLIMITED;
        if limits.members_per_attach != 0 {
            budget = Budget {
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
                budget = Budget {
                    max: left,
                    limit: "with the members of the other archives this uid attached, that \
                            passes limits.members_per_uid",
                };
            }
        }
        Ok(budget)
    }

    /// Indexed again for its owner: the per-attach limit holds.
    fn reload_budget(&self, ctx: &Context, rec: &VolumeRecord) -> Budget {
        let per_attach = ctx.env.limits.members_per_attach;
        Budget {
            max: if rec.owner_uid == 0 || per_attach == 0 {
                u64::MAX
            } else {
                per_attach
            },
            limit: "limits.members_per_attach allows no more in one attach",
        }
    }

    /// Loads the stored index if it is current for `id`.
    fn stored(&self, ctx: &Context, rec: &VolumeRecord, id: &MediumId) -> Option<Prepared> {
        if !same_medium(rec, id) {
            return None;
        }
        match ctx.catalog.archive_index(rec.slot) {
            Ok(Some((INDEX_VERSION, blob))) => {
                ArchiveIndex::from_bytes(&blob).map(|ix| Self::prepared(ix, None))
            }
            _ => None,
        }
    }

    fn unchanged(&self, ctx: &Context, rec: &VolumeRecord, id: &MediumId) -> bool {
        same_medium(rec, id)
            && matches!(
                ctx.catalog.archive_index_version(rec.slot),
                Ok(Some(INDEX_VERSION))
            )
    }

    fn prepare(
        &self,
        _ctx: &Context,
        src: &Source,
        row: Option<&'static Row>,
        budget: &Budget,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Prepared> {
        let row = match row {
            Some(r) => r,
            None => detect(src.file, src.label)?,
        };
        let format = Format::parse(row.name).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{}: a {} medium is not an archive", src.label, row.name),
            )
        })?;
        let index = Self::index_medium(src.file, src.meta, src.label, format, budget, progress)?;
        let data = index.to_bytes();
        Ok(Self::prepared(index, Some((INDEX_VERSION, data))))
    }

    fn mount(
        &self,
        ctx: &Context,
        rec: &VolumeRecord,
        attaching: Option<Attaching>,
    ) -> Result<Mount> {
        let Some(Attaching { prepared, medium }) = attaching else {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{}: an archive volume mounts from its medium", rec.id),
            ));
        };
        let index = prepared.state.downcast::<ArchiveIndex>().map_err(|_| {
            Error::new(
                ErrorKind::Invalid,
                format!("{}: not an archive index", rec.id),
            )
        })?;
        let label = rec.medium_path.clone().unwrap_or_else(|| rec.id.clone());
        self.members.lock().insert(rec.slot, index.stats.members);
        let fs = ArchiveVolume::new(label, *index, medium.clone(), ctx.cache_dir.join(&rec.id))
            .with_hash_cache(ctx.catalog.clone(), rec.slot);
        Ok(Mount {
            fs: std::sync::Arc::new(fs),
            media: self.media(&medium),
            ttl: ctx.archive_ttl,
        })
    }

    fn index_stats(&self, ctx: &Context, rec: &VolumeRecord) -> Result<Option<IndexStats>> {
        Ok(ctx
            .catalog
            .archive_index(rec.slot)?
            .and_then(|(_, b)| ArchiveIndex::from_bytes(&b))
            .map(|i| i.stats))
    }

    fn shelvable(&self, rec: &VolumeRecord) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{}: an archive volume is attached by reference and its data stays in {}, \
                 which fsd does not own; copy it into fsd with `tokenctl import` to shelve it",
                rec.id,
                rec.medium_path.as_deref().unwrap_or("its medium")
            ),
        ))
    }
}

/// Whether the record was indexed from the medium whose identity is `id`.
fn same_medium(rec: &VolumeRecord, id: &MediumId) -> bool {
    rec.medium_size == Some(id.size)
        && rec.medium_mtime_ns == Some(id.mtime_ns)
        && rec.medium_sample.as_deref() == Some(id.sample.as_str())
}
