//! Keeps the catalog and the chunk store from being used apart: one store
//! identity, a run counter, a quarantine for chunk files nobody can vouch
//! for, catalog backups and their restore.
//!
//! **Why.** The catalog is the only record of which chunk file belongs to
//! which file. Start-up used to delete every chunk file the catalog did not
//! reference, as the leftovers of writes a crash interrupted. With a lost or
//! emptied catalog that deleted the whole store, and a catalog restored
//! from a copy lost every chunk written after the copy.
//!
//! **Store identity.** A random 128-bit ID is kept in the catalog
//! (`settings.store_id`) and in `STATE/chunks/.store-id` (written once:
//! temporary file and rename; the file and its directory are fsynced once
//! the mount answers, see [`write_store_id`]). Start-up refuses
//! a catalog whose ID differs from the store's, and a catalog without one
//! (new, emptied, or from before identities) beside a store that has chunk
//! files, unless the state directory predates identities entirely, which
//! is migrated. Refusing is exit 4 with the way out in the message.
//!
//! **Runs.** Each start increments a run counter kept in both places
//! (`settings.store_run` with the run's start time, and
//! `STATE/chunks/.run`, which also says whether the run ended cleanly).
//! When both agree, the catalog is the one the last run committed to, and
//! an unreferenced chunk file written since that run started is a write it
//! never committed: it is removed. Anything else (an older file, or
//! counters that disagree because the catalog was restored or replaced) is
//! moved to `STATE/chunks/.quarantine/` and deleted after
//! `[catalog] quarantine_days`. A backup has its counter cleared, so a
//! restored catalog never matches. The run file is rewritten without
//! fsync: if a power cut loses it, the counters disagree and start-up
//! quarantines instead of removing, which is the safe side.
//!
//! **Checks.** After a run that did not end cleanly, start-up runs
//! `PRAGMA quick_check` for at most `[catalog] startup_check_secs`.
//! A damaged catalog stops start-up with the recovery steps.
//!
//! **Backups.** [`Backups`] copies the catalog with SQLite's online backup
//! API to `STATE/backup/catalog-<time>.db` on an interval and at clean
//! shutdown, checks each copy and keeps the newest `backup_keep`.
//! [`restore`] (`fsd restore-catalog`) puts one back.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::catalog::{self, Catalog};
use super::chunks::{Orphans, QUARANTINE};
use crate::config::CatalogConfig;
use crate::error::{CATALOG_RECOVERY, Error, ErrorKind, Result};
use crate::util::now_ns;

const STORE_ID: &str = ".store-id";
const RUN: &str = ".run";
const KEY_ID: &str = "store_id";
const KEY_RUN: &str = "store_run";
const KEY_STARTED: &str = "store_run_started_ns";
/// `store_run` of a backup: matches no run, so a restored catalog
/// quarantines what it does not reference.
const BACKUP_RUN: &str = "backup";

/// What to do when start-up is refused: the same steps in every message.
fn refusal_help(state: &Path) -> String {
    let s = state.display();
    format!(
        "fsd refuses to start rather than treat the chunk files as garbage. To recover: \
         put the catalog's backup back with `fsd restore-catalog --state {s}` (the newest of \
         {s}/backup/, or `--from FILE`); or, if no catalog can be restored and you mean to \
         start over, move {s}/chunks (and {s}/catalog.db) elsewhere first. \
         See README, Troubleshooting: \"fsd refuses to start: catalog and chunk store disagree\""
    )
}

fn refuse(state: &Path, what: String) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("{what}. {}", refusal_help(state)),
    )
}

fn chunks_dir(state: &Path) -> PathBuf {
    state.join("chunks")
}

fn catalog_path(state: &Path) -> PathBuf {
    state.join("catalog.db")
}

fn backup_dir(state: &Path) -> PathBuf {
    state.join("backup")
}

/// True if the store under `dir` holds at least one chunk file (a 64-hex
/// name in a fan-out directory) or quarantined chunk.
fn has_chunks(dir: &Path) -> bool {
    let Ok(top) = std::fs::read_dir(dir) else {
        return false;
    };
    let is_chunk = |n: &std::ffi::OsStr| {
        n.to_str()
            .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for e in top.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.len() == 2 || n == QUARANTINE {
            let Ok(rd) = std::fs::read_dir(e.path()) else {
                continue;
            };
            if rd.flatten().any(|f| is_chunk(&f.file_name())) {
                return true;
            }
        }
    }
    false
}

fn read_store_id(dir: &Path) -> Result<Option<String>> {
    let p = dir.join(STORE_ID);
    match std::fs::read_to_string(&p) {
        // Empty: a power cut before the first write reached the disk (see
        // `write_store_id`), which is the same as none.
        Ok(t) if t.is_empty() => Ok(None),
        Ok(t) => {
            let id = t.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(id.to_string()))
            } else {
                Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{}: not a store identity ({} bytes); it is written once when the \
                         store is made and never changed",
                        p.display(),
                        t.len()
                    ),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("{}: reading", p.display()), e)),
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader sees the old content or the new, never a part.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| Error::io(format!("{}: writing", path.display()), e))
}

/// Writes the store identity: a temporary file renamed into place at
/// once. Its fsyncs (the file, then its directory) come later, from
/// [`record_run`] on a thread of its own, once the mount answers: they were
/// most of a cold start's time, and an fsync forces a journal commit that
/// stalls the metadata writes start-up itself makes (the catalog, the run
/// file). A chunk file becomes durable only through a later syncfs of the
/// same filesystem, which takes the identity with it. A power cut before
/// either leaves no identity or an empty file, which start-up reads as none
/// and gives the catalog's again.
fn write_store_id(dir: &Path, id: &str) -> Result<()> {
    write_atomic(&dir.join(STORE_ID), &format!("{id}\n"))
}

/// Makes the identity [`write_store_id`] wrote durable, off the caller's
/// path.
fn sync_store_id(dir: &Path) {
    let path = dir.join(STORE_ID);
    let dir = dir.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("fsd-store-id".into())
        .spawn(move || {
            let r = std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::File::open(&dir)?.sync_all());
            if let Err(e) = r {
                tracing::warn!("{}: fsync: {e}", path.display());
            }
        });
}

fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| Error::io("reading /dev/urandom for a store identity", e))?;
    Ok(hex::encode(b))
}

/// The run file: `<run> <started_ns> running|clean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunFile {
    run: u64,
    started_ns: i64,
    clean: bool,
}

fn read_run(dir: &Path) -> Option<RunFile> {
    let t = std::fs::read_to_string(dir.join(RUN)).ok()?;
    let mut f = t.split_whitespace();
    let run = f.next()?.parse().ok()?;
    let started_ns = f.next()?.parse().ok()?;
    let clean = match f.next()? {
        "clean" => true,
        "running" => false,
        _ => return None,
    };
    Some(RunFile {
        run,
        started_ns,
        clean,
    })
}

fn write_run(dir: &Path, r: RunFile) -> Result<()> {
    let state = if r.clean { "clean" } else { "running" };
    write_atomic(
        &dir.join(RUN),
        &format!("{} {} {state}\n", r.run, r.started_ns),
    )
}

/// Before the catalog is opened (which would make a new one): a missing or
/// empty catalog beside a store with chunk files is refused, and nothing is
/// created. Costs one `stat` when the catalog exists.
pub fn precheck(state: &Path) -> Result<()> {
    let cat = catalog_path(state);
    let empty = std::fs::metadata(&cat).map_or(true, |m| m.len() == 0);
    if !empty {
        return Ok(());
    }
    let dir = chunks_dir(state);
    if has_chunks(&dir) {
        return Err(refuse(
            state,
            format!(
                "{}: the catalog is missing or empty, but the chunk store {} holds chunk files",
                cat.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// What start-up found out about the last run, for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startup {
    /// How recovery treats unreferenced chunk files.
    pub orphans: Orphans,
    /// The last run did not end cleanly (or it cannot be known).
    pub unclean: bool,
    /// This run's number.
    pub run: u64,
    pub started_ns: i64,
    /// [`decide`] wrote the store identity file; [`record_run`] makes it
    /// durable.
    pub wrote_store_id: bool,
}

/// Start-up's checks, after the catalog is open and before recovery:
/// the store identity (refusing a catalog that does not belong to the
/// store), the bounded integrity check after an unclean shutdown, and this
/// run's counter. Errors are for exit 4.
pub fn start(state: &Path, catalog: &Catalog, cfg: &CatalogConfig) -> Result<Startup> {
    let s = decide(state, catalog, cfg)?;
    record_run(state, catalog, &s)?;
    Ok(s)
}

/// [`start`]'s checks and decisions without recording the new run. The
/// daemon records it with [`record_run`] once the mount is served (a
/// catalog commit and a file rename, about half a millisecond of a warm
/// start). Nothing is lost by the delay: recovery has already run with
/// this run's decisions, and if the daemon dies before the record, the
/// next start sees the previous run's markers, so it removes unreferenced
/// chunks newer than the previous run's start (which includes this run's
/// uncommitted ones) as it would have anyway; only the integrity check
/// after an unclean shutdown is skipped for a crash in those first
/// milliseconds.
pub fn decide(state: &Path, catalog: &Catalog, cfg: &CatalogConfig) -> Result<Startup> {
    let dir = chunks_dir(state);
    let cat_id = catalog.setting(KEY_ID)?;
    let st_id = read_store_id(&dir)?;
    let mut wrote_store_id = false;
    match (&cat_id, &st_id) {
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => {
            return Err(refuse(
                state,
                format!(
                    "{}: the catalog belongs to store {a}, but the chunk store {} is store {b}",
                    catalog.path().display(),
                    dir.display()
                ),
            ));
        }
        (Some(a), None) => {
            if has_chunks(&dir) {
                return Err(refuse(
                    state,
                    format!(
                        "{}: the chunk store has chunk files but no identity ({STORE_ID}), and \
                         the catalog belongs to store {a}",
                        dir.display()
                    ),
                ));
            }
            // An empty store (first start cut short, or moved away on
            // purpose) takes the catalog's identity.
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            write_store_id(&dir, a)?;
            wrote_store_id = true;
        }
        (None, st) => {
            let chunks_known: i64 =
                catalog
                    .conn()
                    .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))?;
            let store_used = has_chunks(&dir);
            if let Some(b) = st
                && store_used
            {
                return Err(refuse(
                    state,
                    format!(
                        "{}: the catalog has no store identity (it is new, or older than store \
                         identities), but the chunk store {} is store {b} and holds chunk files",
                        catalog.path().display(),
                        dir.display()
                    ),
                ));
            }
            if st.is_none() && store_used && chunks_known == 0 {
                return Err(refuse(
                    state,
                    format!(
                        "{}: the catalog references no chunk, but the chunk store {} holds \
                         chunk files",
                        catalog.path().display(),
                        dir.display()
                    ),
                ));
            }
            // A new state directory, or one from before identities:
            // give both the same identity, catalog first (so a crash in
            // between leaves a store without one, which is adopted).
            let id = match st {
                Some(b) => b.clone(),
                None => new_id()?,
            };
            let migrated = !catalog.created();
            catalog.set_setting(KEY_ID, &id)?;
            if st.is_none() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                write_store_id(&dir, &id)?;
                wrote_store_id = true;
            }
            if migrated {
                tracing::info!("store identity {id} given to the catalog and the chunk store");
            }
        }
    }

    let last = read_run(&dir);
    let cat_run: Option<u64> = catalog.setting(KEY_RUN)?.and_then(|r| r.parse().ok());
    let cat_started: Option<i64> = catalog.setting(KEY_STARTED)?.and_then(|r| r.parse().ok());
    let unclean = !catalog.created() && !last.is_some_and(|l| l.clean);
    let orphans = match (last, cat_run, cat_started) {
        (Some(l), Some(c), Some(t)) if l.run == c && l.started_ns == t => {
            Orphans::RemoveNewerThan(t)
        }
        _ => Orphans::QuarantineAll,
    };
    if unclean {
        let limit = Duration::from_secs(cfg.startup_check_secs);
        let check = catalog.check(false, Some(limit))?;
        if !check.ok() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: the catalog is damaged (after an unclean shutdown, the integrity check \
                     found: {}); {}",
                    catalog.path().display(),
                    check.problems.join("; "),
                    CATALOG_RECOVERY.replace("STATE", &state.display().to_string())
                ),
            ));
        }
        if !check.complete {
            tracing::warn!(
                "catalog check after an unclean shutdown stopped after {limit:?} without finding \
                 damage; run `tokenctl fsck --catalog` for the full check"
            );
        }
    }
    Ok(Startup {
        orphans,
        unclean,
        run: cat_run.max(last.map(|l| l.run)).unwrap_or(0) + 1,
        started_ns: now_ns(),
        wrote_store_id,
    })
}

/// Records the run [`decide`] numbered, in the catalog and in the run
/// file (marked running until [`clean_exit`]).
pub fn record_run(state: &Path, catalog: &Catalog, s: &Startup) -> Result<()> {
    let dir = chunks_dir(state);
    if s.wrote_store_id {
        sync_store_id(&dir);
    }
    let (run, started_ns) = (s.run, s.started_ns);
    {
        // synchronous=OFF for this one commit: after a clean shutdown the
        // WAL is empty, and the first commit into an empty WAL syncs its
        // header and directory (two fsyncs, most of a warm start's time).
        // An empty WAL has no frames of an earlier generation for the
        // header sync to guard against, and if a power cut loses this
        // commit the counters disagree at the next start, which
        // quarantines rather than removes.
        let mut conn = catalog.conn();
        conn.execute_batch("PRAGMA synchronous=OFF;")?;
        let r = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for (k, v) in [
                (KEY_RUN, run.to_string()),
                (KEY_STARTED, started_ns.to_string()),
            ] {
                tx.execute(
                    "INSERT INTO settings(key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    rusqlite::params![k, v],
                )?;
            }
            tx.commit()
        })();
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        r?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    write_run(
        &dir,
        RunFile {
            run,
            started_ns,
            clean: false,
        },
    )
}

/// At clean shutdown, after the catalog's final checkpoint: records that
/// this run ended cleanly.
pub fn clean_exit(state: &Path, s: &Startup) {
    if let Err(e) = write_run(
        &chunks_dir(state),
        RunFile {
            run: s.run,
            started_ns: s.started_ns,
            clean: true,
        },
    ) {
        tracing::warn!("recording the clean shutdown: {e}");
    }
}

// ----- backups -----

/// Catalog backups of one state directory.
pub struct Backups {
    catalog: Arc<Catalog>,
    dir: PathBuf,
    keep: usize,
    /// One backup at a time (the interval thread and shutdown).
    one: parking_lot::Mutex<()>,
}

/// A backup file's name for the time `ns`: sortable, UTC, unique per ms.
fn backup_name(ns: i64) -> String {
    let t = crate::util::fmt_utc(ns);
    let stamp: String = t
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>();
    format!(
        "catalog-{stamp}-{:03}.db",
        (ns / 1_000_000).rem_euclid(1000)
    )
}

/// The backups in `dir`, oldest first.
pub fn list_backups(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("catalog-") && n.ends_with(".db"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Backups {
    pub fn new(state: &Path, catalog: Arc<Catalog>, cfg: &CatalogConfig) -> Self {
        Backups {
            catalog,
            dir: backup_dir(state),
            keep: cfg.backup_keep.max(1),
            one: parking_lot::Mutex::new(()),
        }
    }

    /// Makes one backup: copied with the online backup API, marked as a
    /// backup (its run counter cleared), checked with `quick_check`, made
    /// durable and renamed into place; then the oldest beyond `keep` are
    /// deleted. A copy that fails its check is deleted and the older
    /// backups are kept: a damaged catalog never rotates the good copies
    /// out.
    pub fn backup(&self) -> Result<PathBuf> {
        let _one = self.one.lock();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let name = backup_name(now_ns());
        let to = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let r = (|| -> Result<()> {
            self.catalog.backup_to(&tmp)?;
            let conn = Connection::open(&tmp)
                .map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", tmp.display())))?;
            conn.execute(
                "INSERT INTO settings(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                rusqlite::params![KEY_RUN, BACKUP_RUN],
            )?;
            let check = catalog::check_connection(&conn, false, None)?;
            drop(conn);
            if !check.ok() {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "the catalog's backup failed its check ({}), so the catalog itself is \
                         probably damaged; the older backups are kept; {CATALOG_RECOVERY}",
                        check.problems.join("; ")
                    ),
                ));
            }
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(format!("{}: writing", tmp.display()), e))?;
            // Room for the new one first, so there are never more than
            // `keep`; only a copy that passed its check makes room.
            let all = list_backups(&self.dir);
            if all.len() >= self.keep {
                for old in &all[..all.len() + 1 - self.keep] {
                    let _ = std::fs::remove_file(old);
                }
            }
            std::fs::rename(&tmp, &to)
                .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
                .map_err(|e| Error::io(format!("{}: writing", to.display()), e))
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(to)
    }

    /// [`Self::backup`], logged.
    pub fn backup_logged(&self, why: &str) {
        match self.backup() {
            Ok(p) => tracing::info!("catalog backed up ({why}) to {}", p.display()),
            Err(e) if e.kind() == ErrorKind::Corrupt => tracing::error!("catalog backup: {e}"),
            Err(e) => tracing::warn!("catalog backup ({why}): {e}"),
        }
    }

    /// Starts the thread that backs up every `interval` (none if zero) and
    /// deletes quarantined chunks past their grace period.
    pub fn start(
        self: &Arc<Self>,
        interval: Duration,
        store: Arc<super::chunks::ChunkStore>,
        grace: Duration,
    ) -> Result<()> {
        let me = self.clone();
        let tick = if interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            interval.min(Duration::from_secs(3600))
        };
        std::thread::Builder::new()
            .name("fsd-backup".into())
            .spawn(move || {
                let mut since = Duration::ZERO;
                loop {
                    std::thread::sleep(tick);
                    since += tick;
                    if !interval.is_zero() && since >= interval {
                        since = Duration::ZERO;
                        me.backup_logged("interval");
                    }
                    let n = store.purge_quarantine(grace);
                    if n > 0 {
                        tracing::info!(
                            "deleted {n} quarantined chunk files past their grace period"
                        );
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::io("starting the backup thread", e))
    }
}

/// What the daemon keeps of this module while it runs: the backups and
/// this run's counter, for the clean-shutdown steps.
pub struct Guard {
    state: PathBuf,
    startup: Startup,
    backups: Arc<Backups>,
}

impl Guard {
    /// After start-up: deletes quarantined chunks past their grace period
    /// and starts the backup thread.
    pub fn start(
        state: &Path,
        catalog: Arc<Catalog>,
        store: Arc<super::chunks::ChunkStore>,
        cfg: &CatalogConfig,
        startup: Startup,
    ) -> Result<Self> {
        let grace = Duration::from_secs(cfg.quarantine_days.saturating_mul(86400));
        store.set_quarantine_days(cfg.quarantine_days);
        let n = store.purge_quarantine(grace);
        if n > 0 {
            tracing::info!("deleted {n} quarantined chunk files past their grace period");
        }
        let backups = Arc::new(Backups::new(state, catalog, cfg));
        backups.start(Duration::from_secs(cfg.backup_interval_secs), store, grace)?;
        Ok(Guard {
            state: state.to_path_buf(),
            startup,
            backups,
        })
    }

    /// At clean shutdown, after the catalog's final checkpoint: a backup,
    /// then the mark that this run ended cleanly.
    pub fn at_exit(&self) {
        self.backups.backup_logged("shutdown");
        clean_exit(&self.state, &self.startup);
    }
}

/// Reads the chunk store's identity (if `chunks` is given) and adds a
/// problem when it cannot be read or differs from the catalog's
/// `store_id`; shared by the live and the offline catalog checks.
fn compare_store_ids(
    store_id: Option<&str>,
    chunks: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<String> {
    let chunk_store_id = chunks.and_then(|d| match read_store_id(d) {
        Ok(id) => id,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    });
    if let (Some(a), Some(b)) = (store_id, &chunk_store_id)
        && a != b
    {
        problems.push(format!(
            "the catalog belongs to store {a}, but the chunk store is store {b}"
        ));
    }
    chunk_store_id
}

/// `tokenctl fsck --catalog` against the running daemon: the full
/// `PRAGMA integrity_check` of the live catalog and its store identity
/// against the chunk store's.
pub fn check_live(catalog: &Catalog, chunks: &Path) -> Result<CatalogReport> {
    let c = catalog.check(true, None)?;
    let mut problems = c.problems;
    let store_id = if problems.is_empty() {
        catalog.setting(KEY_ID)?
    } else {
        None
    };
    let chunk_store_id = compare_store_ids(store_id.as_deref(), Some(chunks), &mut problems);
    let ok = problems.is_empty();
    let state = chunks.parent().unwrap_or(chunks).display().to_string();
    Ok(CatalogReport {
        catalog: catalog.path().display().to_string(),
        ok,
        problems,
        store_id,
        chunk_store_id,
        recovery: (!ok).then(|| CATALOG_RECOVERY.replace("STATE", &state)),
    })
}

// ----- offline check and restore -----

/// The outcome of checking a catalog file offline (no daemon).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CatalogReport {
    pub catalog: String,
    pub ok: bool,
    pub problems: Vec<String>,
    /// The store identity the catalog records, and the chunk store's.
    pub store_id: Option<String>,
    pub chunk_store_id: Option<String>,
    /// The steps to take when not ok.
    pub recovery: Option<String>,
}

/// Opens a catalog file for checking, without creating or changing it.
fn open_for_check(path: &Path) -> Result<Connection> {
    Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::new(ErrorKind::Corrupt, format!("{}: {e}", path.display())))
}

/// Runs the full `PRAGMA integrity_check` on `path` and compares its store
/// identity with `chunks` (if given).
pub fn check_file(path: &Path, chunks: Option<&Path>) -> CatalogReport {
    let mut problems = Vec::new();
    let mut store_id = None;
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => problems.push("the catalog is empty (0 bytes)".to_string()),
        Ok(_) => match open_for_check(path) {
            Ok(conn) => {
                match catalog::check_connection(&conn, true, None) {
                    Ok(c) => problems.extend(c.problems),
                    Err(e) => problems.push(e.to_string()),
                }
                if problems.is_empty() {
                    match conn.query_row(
                        "SELECT value FROM settings WHERE key = ?1",
                        [KEY_ID],
                        |r| r.get::<_, String>(0),
                    ) {
                        Ok(id) => store_id = Some(id),
                        Err(rusqlite::Error::QueryReturnedNoRows) => {}
                        Err(e) => problems.push(format!("reading the store identity: {e}")),
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
        Err(e) => problems.push(format!("cannot read it: {e}")),
    }
    let chunk_store_id = compare_store_ids(store_id.as_deref(), chunks, &mut problems);
    let ok = problems.is_empty();
    CatalogReport {
        catalog: path.display().to_string(),
        ok,
        problems,
        store_id,
        chunk_store_id,
        recovery: (!ok).then(|| CATALOG_RECOVERY.to_string()),
    }
}

/// `tokenctl fsck --catalog` with no daemon answering: checks
/// `STATE/catalog.db` under the state directory's lock, so no fsd starts
/// meanwhile.
pub fn check_offline(state: &Path) -> Result<CatalogReport> {
    let _lock = lock(state)?;
    let mut r = check_file(&catalog_path(state), Some(&chunks_dir(state)));
    if let Some(rec) = &mut r.recovery {
        *rec = rec.replace("STATE", &state.display().to_string());
    }
    Ok(r)
}

/// The state directory's lock (as `fsd mount` takes it), for commands that
/// must not run beside a daemon.
fn lock(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = state.join("fsd.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(format!("{}: cannot open the lock file", path.display()), e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::new(
            ErrorKind::Busy,
            format!(
                "state directory {} is in use by a running fsd; stop it first",
                state.display()
            ),
        )
    })
}

/// Removes an SQLite file and its journals.
fn remove_db(p: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub from: PathBuf,
    /// Where the catalog that was replaced went (None if there was none).
    pub kept: Vec<PathBuf>,
    pub store_id: Option<String>,
}

/// `fsd restore-catalog`: with the daemon stopped, checks a backup (the
/// newest in `STATE/backup/`, or `from`) with `integrity_check` and
/// against the chunk store's identity, moves the current catalog and its
/// WAL aside as `catalog.db.damaged-<time>`, and copies the backup into
/// place (fsynced). The backup's cleared run counter makes the next start
/// quarantine, not delete, chunk files written after the backup.
pub fn restore(state: &Path, from: Option<&Path>) -> Result<Restored> {
    let _lock = lock(state)?;
    let from = match from {
        Some(f) => f.to_path_buf(),
        None => list_backups(&backup_dir(state)).pop().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no backup in {}; name one with --from FILE",
                    backup_dir(state).display()
                ),
            )
        })?,
    };
    // Check a private copy, so the backup file itself is never changed
    // (opening a WAL-mode file may write to it).
    let cat = catalog_path(state);
    let staged = state.join("catalog.db.restore");
    remove_db(&staged);
    std::fs::copy(&from, &staged)
        .map_err(|e| Error::io(format!("{}: copying", from.display()), e))?;
    let report = check_file(&staged, Some(&chunks_dir(state)));
    if !report.ok {
        remove_db(&staged);
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: not restored: {}",
                from.display(),
                report.problems.join("; ")
            ),
        ));
    }
    if report.store_id.is_none() {
        remove_db(&staged);
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: not restored: it records no store identity, so it cannot be matched with \
                 the chunk store",
                from.display()
            ),
        ));
    }
    {
        // Make sure it reads as a backup even if it is a copy made by hand.
        let conn = open_for_check(&staged)?;
        conn.execute(
            "INSERT INTO settings(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![KEY_RUN, BACKUP_RUN],
        )?;
        conn.execute_batch("PRAGMA journal_mode=DELETE;")?;
    }
    let stamp = backup_name(now_ns())
        .trim_start_matches("catalog-")
        .trim_end_matches(".db")
        .to_string();
    let mut kept = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", cat.display()));
        if p.exists() {
            let to = PathBuf::from(format!("{}.damaged-{stamp}{suffix}", cat.display()));
            std::fs::rename(&p, &to)
                .map_err(|e| Error::io(format!("moving {} aside", p.display()), e))?;
            kept.push(to);
        }
    }
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&staged, &cat))
        .and_then(|()| std::fs::File::open(state)?.sync_all())
        .map_err(|e| Error::io(format!("{}: putting the backup in place", cat.display()), e))?;
    Ok(Restored {
        from,
        kept,
        store_id: report.store_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_by_time() {
        let a = backup_name(1_700_000_000_000_000_000);
        let b = backup_name(1_700_000_000_001_000_000);
        let c = backup_name(1_700_000_060_000_000_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(a.starts_with("catalog-") && a.ends_with(".db"));
    }

    fn cfg() -> CatalogConfig {
        crate::config::Config::embedded().catalog
    }

    /// A chunk-like file (64 hex digits) in the store of `state`.
    fn plant_chunk(state: &Path) {
        let d = chunks_dir(state).join("ab");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ab".repeat(32)), b"x").unwrap();
    }

    #[test]
    fn runs_decide_between_removing_and_quarantining() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path();
        precheck(state).unwrap();
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        let first = start(state, &cat, &cfg()).unwrap();
        assert_eq!(
            first.orphans,
            Orphans::QuarantineAll,
            "nothing to prove yet"
        );
        assert!(!first.unclean, "a new catalog needs no check");
        let id = cat.setting(KEY_ID).unwrap().unwrap();
        assert_eq!(read_store_id(&chunks_dir(state)).unwrap(), Some(id));
        clean_exit(state, &first);
        drop(cat);

        // The same catalog again: the last run's writes are provable.
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        let second = start(state, &cat, &cfg()).unwrap();
        assert_eq!(second.orphans, Orphans::RemoveNewerThan(first.started_ns));
        assert!(!second.unclean);
        assert_eq!(second.run, first.run + 1);
        drop(cat);

        // No clean exit: the next start is unclean, still provable.
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        let third = start(state, &cat, &cfg()).unwrap();
        assert!(third.unclean);
        assert_eq!(third.orphans, Orphans::RemoveNewerThan(second.started_ns));
        // A catalog that is a backup never matches a run.
        cat.set_setting(KEY_RUN, BACKUP_RUN).unwrap();
        drop(cat);
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        assert_eq!(
            start(state, &cat, &cfg()).unwrap().orphans,
            Orphans::QuarantineAll
        );
    }

    #[test]
    fn foreign_and_lost_catalogs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path();
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        start(state, &cat, &cfg()).unwrap();
        drop(cat);
        plant_chunk(state);

        // Another store's identity.
        let idf = chunks_dir(state).join(STORE_ID);
        let mine = std::fs::read_to_string(&idf).unwrap();
        std::fs::write(&idf, "0123456789abcdef0123456789abcdef\n").unwrap();
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        let e = start(state, &cat, &cfg()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("restore-catalog"), "{e}");
        drop(cat);
        std::fs::write(&idf, &mine).unwrap();

        // An emptied catalog is refused before anything is created.
        std::fs::write(catalog_path(state), b"").unwrap();
        let _ = std::fs::remove_file(state.join("catalog.db-wal"));
        let e = precheck(state).unwrap_err();
        assert!(e.to_string().contains("missing or empty"), "{e}");
        assert_eq!(std::fs::metadata(catalog_path(state)).unwrap().len(), 0);

        // A new catalog (as an older fsd would have made) beside the store.
        std::fs::remove_file(catalog_path(state)).unwrap();
        let cat = Catalog::open(&catalog_path(state)).unwrap();
        let e = start(state, &cat, &cfg()).unwrap_err();
        assert!(e.to_string().contains("no store identity"), "{e}");

        // An empty store without an identity takes the catalog's.
        let d2 = tempfile::tempdir().unwrap();
        let cat2 = Catalog::open(&catalog_path(d2.path())).unwrap();
        start(d2.path(), &cat2, &cfg()).unwrap();
        std::fs::remove_file(chunks_dir(d2.path()).join(STORE_ID)).unwrap();
        start(d2.path(), &cat2, &cfg()).unwrap();
        assert_eq!(
            read_store_id(&chunks_dir(d2.path())).unwrap(),
            cat2.setting(KEY_ID).unwrap()
        );
    }

    #[test]
    fn run_file_roundtrips_and_garbage_is_none() {
        let d = tempfile::tempdir().unwrap();
        let r = RunFile {
            run: 7,
            started_ns: 123,
            clean: false,
        };
        write_run(d.path(), r).unwrap();
        assert_eq!(read_run(d.path()), Some(r));
        std::fs::write(d.path().join(RUN), b"").unwrap();
        assert_eq!(read_run(d.path()), None);
    }
}
