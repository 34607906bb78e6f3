//! The native kind: writable volumes whose data lives in the chunk store.
//! Created empty, owned by fsd (so they can be shelved), recovered after a
//! crash, checked by `tokenctl fsck`, and their chunks released when they
//! are destroyed.

use std::collections::HashSet;
use std::sync::Arc;

use super::file as native_file;
use super::{NativeVolume, fsck, meta as native_meta};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::perm::Caller;
use crate::lifecycle::Kind;
use crate::store::catalog::VolumeRecord;
use crate::store::chunks::Orphans;
use crate::volume::kinds::{Attaching, Context, Mount, VolumeKind};

pub fn new() -> Box<dyn VolumeKind> {
    Box::new(NativeKind)
}

pub struct NativeKind;

impl VolumeKind for NativeKind {
    fn kind(&self) -> Kind {
        Kind::Native
    }

    fn creates(&self) -> bool {
        true
    }

    /// `limits.native_volumes` per non-root uid.
    fn admit_create(&self, ctx: &Context, caller: &Caller) -> Result<()> {
        let max = ctx.env.limits.native_volumes;
        if caller.uid != 0 && max != 0 {
            let mine = ctx
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
        Ok(())
    }

    /// Creates the root directory, owned by the caller.
    fn create(&self, ctx: &Context, rec: &mut VolumeRecord, caller: &Caller) -> Result<()> {
        let mut conn = ctx.catalog.conn();
        let tx = conn.transaction()?;
        let root = NativeVolume::create_root(&tx, rec.slot, caller.uid, caller.gid)?;
        tx.execute(
            "UPDATE volumes SET root_ino = ?2 WHERE slot = ?1",
            rusqlite::params![rec.slot, root],
        )?;
        tx.commit()?;
        rec.root_ino = Some(root);
        Ok(())
    }

    fn mount(&self, ctx: &Context, rec: &VolumeRecord, _: Option<Attaching>) -> Result<Mount> {
        let root = rec.root_ino.ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{}: native volume without a root", rec.id),
            )
        })?;
        let fs = NativeVolume::new(ctx.env.clone(), rec.slot, root, rec.id.clone());
        // The quota binds the volumes non-root users create; root's have
        // none. It belongs to the volume, so it binds every writer of it
        // (the data path does not know the writer's uid).
        if rec.owner_uid != 0 {
            fs.files()
                .quota
                .set_limit(ctx.env.limits.native_volume_mb << 20);
        }
        Ok(Mount {
            fs: Arc::new(fs),
            media: Vec::new(),
            ttl: ctx.native_ttl,
        })
    }

    /// After a crash: deletes inodes that lost their last name while open,
    /// takes back quarantined chunks the catalog references (a restored
    /// catalog), settles chunk files no committed row references (removed
    /// if the last run wrote them and never committed them, quarantined if
    /// that cannot be proved, see [`Orphans`]) and unreferenced chunks.
    /// Runs during start-up, before any request is served (they wait at
    /// the start-up gate), so no write is in flight.
    fn recover(&self, ctx: &Context, policy: Orphans) -> Result<()> {
        let env = &ctx.env;
        let mut orphans = 0;
        for rec in ctx.catalog.volumes()? {
            if rec.kind != Kind::Native {
                continue;
            }
            let mut conn = ctx.catalog.conn();
            let tx = conn.transaction()?;
            for ino in native_meta::orphans(&tx, rec.slot)? {
                native_meta::delete(&tx, ino)?;
                orphans += 1;
            }
            tx.commit()?;
        }
        native_file::collect(env);
        let tmp = env.store.clean_tmp()?;
        // Read the known chunks first: collection takes the store's pin
        // lock, which must never wait while the catalog is held.
        let known: HashSet<_> = native_meta::all_chunks(&ctx.catalog.conn())?
            .into_iter()
            .collect();
        let back = env.store.release_quarantined(|h| known.contains(h))?;
        let c = env.store.collect_orphans(|h| known.contains(h), policy)?;
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
                env.store.quarantine_dir().display()
            );
            tracing::warn!("{msg}");
            let _ = ctx.catalog.event(None, "warn", &msg);
        }
        if back > 0 {
            tracing::info!(
                "recovery: {back} chunk files the catalog references came back from the quarantine"
            );
        }
        Ok(())
    }

    /// The file count and size from the catalog.
    fn usage(&self, ctx: &Context, slot: u32) -> Option<(u64, u64)> {
        native_meta::usage(&ctx.catalog.conn(), slot).ok()
    }

    /// The volume's files; their chunks are released after the commit.
    fn destroy(
        &self,
        _ctx: &Context,
        tx: &rusqlite::Transaction,
        rec: &VolumeRecord,
    ) -> Result<()> {
        native_meta::delete_volume_data(tx, rec.slot)
    }

    fn destroyed(&self, ctx: &Context) {
        native_file::collect(&ctx.env);
    }

    fn checks(&self) -> bool {
        true
    }

    fn fsck(
        &self,
        ctx: &Context,
        targets: &[fsck::Target],
        whole: bool,
        repair: bool,
    ) -> Result<fsck::Report> {
        fsck::run(&ctx.env, targets, whole, repair)
    }

    /// Its data is all chunks in fsd's store.
    fn shelvable(&self, _rec: &VolumeRecord) -> Result<()> {
        Ok(())
    }
}
