//! The catalog: one SQLite database in the state directory holding volumes,
//! archive indexes and (in later schema versions) native metadata, tokens and
//! jobs.
//!
//! The schema is versioned with `PRAGMA user_version` and upgraded by the
//! ordered [`MIGRATIONS`], each in its own transaction, so a crash during an
//! upgrade leaves the previous version intact. A catalog written by a newer
//! fsd is refused rather than misread. A new catalog starts as a copy of
//! [`TEMPLATE`], the migrated empty schema, which is cheaper than building it.
//!
//! WAL mode with `synchronous=NORMAL`: a committed transaction survives a
//! crash of the daemon (it is in the WAL file, in the page cache); calls that
//! promise durability against power loss (fsync) checkpoint explicitly with
//! [`Catalog::sync`].

use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, ErrorKind, Result};
use crate::lifecycle::{Attachment, Kind, Residency};
use crate::util::now_ns;

/// Schema migrations; migration `i` takes the schema from version `i` to
/// `i + 1`. Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: volumes and archive indexes.
    r#"
    CREATE TABLE volumes (
        slot            INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        name            TEXT UNIQUE,
        kind            TEXT NOT NULL,
        state           TEXT NOT NULL,
        format          TEXT,
        medium_path     TEXT UNIQUE,
        medium_size     INTEGER,
        medium_mtime_ns INTEGER,
        medium_sample   TEXT,
        size            INTEGER NOT NULL DEFAULT 0,
        files           INTEGER NOT NULL DEFAULT 0,
        owner_uid       INTEGER NOT NULL DEFAULT 0,
        created_ns      INTEGER NOT NULL,
        updated_ns      INTEGER NOT NULL
    );
    CREATE TABLE archive_index (
        slot    INTEGER PRIMARY KEY REFERENCES volumes(slot) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        blob    BLOB NOT NULL
    );
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ns   INTEGER NOT NULL,
        volume  TEXT,
        level   TEXT NOT NULL,
        message TEXT NOT NULL
    );
    "#,
    // 2: native volumes. Chunk reference counts are kept by triggers on the
    // tables that reference chunks, so no code path can forget one.
    r#"
    ALTER TABLE volumes ADD COLUMN root_ino INTEGER;
    CREATE TABLE inodes (
        ino      INTEGER PRIMARY KEY AUTOINCREMENT,
        slot     INTEGER NOT NULL REFERENCES volumes(slot) ON DELETE CASCADE,
        mode     INTEGER NOT NULL,
        uid      INTEGER NOT NULL,
        gid      INTEGER NOT NULL,
        nlink    INTEGER NOT NULL,
        size     INTEGER NOT NULL DEFAULT 0,
        rdev     INTEGER NOT NULL DEFAULT 0,
        atime_ns INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        target   BLOB
    );
    CREATE INDEX inodes_slot ON inodes(slot);
    CREATE INDEX inodes_orphans ON inodes(slot) WHERE nlink = 0;
    CREATE TABLE dentries (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL,
        name   BLOB NOT NULL,
        ino    INTEGER NOT NULL,
        UNIQUE (parent, name)
    );
    CREATE INDEX dentries_ino ON dentries(ino);
    CREATE INDEX dentries_parent_id ON dentries(parent, id);
    CREATE TABLE chunks (
        hash BLOB PRIMARY KEY,
        len  INTEGER NOT NULL,
        refs INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX chunks_free ON chunks(hash) WHERE refs <= 0;
    CREATE TABLE extents (
        ino  INTEGER NOT NULL,
        idx  INTEGER NOT NULL,
        hash BLOB NOT NULL,
        len  INTEGER NOT NULL,
        PRIMARY KEY (ino, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER extents_ref AFTER INSERT ON extents BEGIN
        INSERT INTO chunks (hash, len, refs) VALUES (NEW.hash, NEW.len, 1)
        ON CONFLICT (hash) DO UPDATE SET refs = refs + 1;
    END;
    CREATE TRIGGER extents_unref AFTER DELETE ON extents BEGIN
        UPDATE chunks SET refs = refs - 1 WHERE hash = OLD.hash;
    END;
    CREATE TRIGGER extents_reref AFTER UPDATE OF hash ON extents BEGIN
        UPDATE chunks SET refs = refs - 1 WHERE hash = OLD.hash;
        INSERT INTO chunks (hash, len, refs) VALUES (NEW.hash, NEW.len, 1)
        ON CONFLICT (hash) DO UPDATE SET refs = refs + 1;
    END;
    CREATE TABLE xattrs (
        ino   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    ) WITHOUT ROWID;
        CREATE TABLE treehashes (
        slot INTEGER NOT NULL,
        ino  INTEGER NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (slot, ino)
    ) WITHOUT ROWID;
    "#,
    // 3: offload tokens. The key R is never stored: tokens are found by the
    // SHA-256 of R and checked against the SHA-256 of the whole token, so a
    // copy of the catalog cannot be used to forge or redeem a token. A
    // persistent token's snapshot holds chunk references (trigger-counted
    // like extents), so the data it represents outlives later writes.
    r#"
    CREATE TABLE tokens (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        key_hash        BLOB NOT NULL UNIQUE,
        token_hash      BLOB NOT NULL,
        grp             INTEGER NOT NULL,
        rod_type        INTEGER NOT NULL,
        created_ns      INTEGER NOT NULL,
        expires_ns      INTEGER NOT NULL,
        inactivity_secs INTEGER NOT NULL,
        last_used_ns    INTEGER NOT NULL,
        state           TEXT NOT NULL,
        reason          TEXT,
        slot            INTEGER NOT NULL,
        ino             INTEGER NOT NULL,
        generation      INTEGER NOT NULL,
        source_size     INTEGER NOT NULL,
        length          INTEGER NOT NULL,
        ranges          BLOB NOT NULL,
        medium_sample   TEXT,
        uid             INTEGER NOT NULL,
        path            TEXT NOT NULL
    );
    CREATE INDEX tokens_state ON tokens(state, expires_ns);
    CREATE TABLE token_chunks (
        token INTEGER NOT NULL,
        idx   INTEGER NOT NULL,
        hash  BLOB NOT NULL,
        len   INTEGER NOT NULL,
        PRIMARY KEY (token, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER token_chunks_ref AFTER INSERT ON token_chunks BEGIN
        INSERT INTO chunks (hash, len, refs) VALUES (NEW.hash, NEW.len, 1)
        ON CONFLICT (hash) DO UPDATE SET refs = refs + 1;
    END;
    CREATE TRIGGER token_chunks_unref AFTER DELETE ON token_chunks BEGIN
        UPDATE chunks SET refs = refs - 1 WHERE hash = OLD.hash;
    END;
    "#,
    // 4: the residency axis of the volume lifecycle (`crate::lifecycle`).
    // Every volume is hot until shelving exists. Kind and attachment stay
    // TEXT columns holding the same strings as before.
    r#"
    ALTER TABLE volumes ADD COLUMN residency TEXT NOT NULL DEFAULT 'hot';
    "#,
];

/// Pages copied per step of a backup (4 MiB at 4 KiB pages): one step
/// holds the catalog for about a millisecond.
const BACKUP_STEP: i32 = 1024;

/// Problems reported by one check, at most.
pub const CHECK_PROBLEMS: u32 = 20;

/// The outcome of [`Catalog::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// What SQLite found wrong; empty if nothing.
    pub problems: Vec<String>,
    /// False if the timeout cut the check short (nothing found so far).
    pub complete: bool,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// [`Catalog::check`] on any connection (the offline check and the check of
/// a new backup use their own).
pub fn check_connection(
    conn: &Connection,
    full: bool,
    timeout: Option<std::time::Duration>,
) -> Result<Check> {
    let pragma = if full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let done = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let timer = timeout.map(|t| {
        let handle = conn.get_interrupt_handle();
        let done = done.clone();
        std::thread::spawn(move || {
            let (m, cv) = &*done;
            let g = m.lock().unwrap_or_else(|p| p.into_inner());
            let (g, _) = cv
                .wait_timeout_while(g, t, |d| !*d)
                .unwrap_or_else(|p| p.into_inner());
            if !*g {
                handle.interrupt();
            }
        })
    });
    let rows = (|| -> rusqlite::Result<Vec<String>> {
        let mut st = conn.prepare(&format!("PRAGMA {pragma}({CHECK_PROBLEMS})"))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    {
        let (m, cv) = &*done;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
    if let Some(t) = timer {
        let _ = t.join();
    }
    match rows {
        Ok(rows) => Ok(Check {
            problems: rows.into_iter().filter(|r| r != "ok").collect(),
            complete: true,
        }),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            Ok(Check {
                problems: Vec::new(),
                complete: false,
            })
        }
        // A page so damaged that the check itself cannot go on.
        Err(rusqlite::Error::SqliteFailure(f, m))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Ok(Check {
                problems: vec![m.unwrap_or_else(|| f.to_string())],
                complete: true,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A volume as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub slot: u32,
    pub id: String,
    pub name: Option<String>,
    pub kind: Kind,
    /// As recorded: `attached` or `detached` (see [`Attachment`]).
    pub state: Attachment,
    pub residency: Residency,
    pub format: Option<String>,
    pub medium_path: Option<String>,
    pub medium_size: Option<u64>,
    pub medium_mtime_ns: Option<i64>,
    pub medium_sample: Option<String>,
    pub size: u64,
    pub files: u64,
    /// The uid that attached or created the volume; it (or root) may detach
    /// or destroy it.
    pub owner_uid: u32,
    pub created_ns: i64,
    /// The root directory's inode row, for native volumes.
    pub root_ino: Option<i64>,
}

const VOLUME_COLS: &str = "slot, id, name, kind, state, format, medium_path, medium_size, \
                           medium_mtime_ns, medium_sample, size, files, created_ns, owner_uid, root_ino, \
                           residency";

/// One volume row. The lifecycle columns are parsed here, at the boundary:
/// the outer result is SQLite's, the inner one a `corrupt` error naming the
/// row for a kind or state this fsd does not know.
fn volume_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<VolumeRecord>> {
    let slot: u32 = r.get(0)?;
    let id: String = r.get(1)?;
    let (kind, state, residency): (String, String, String) = (r.get(3)?, r.get(4)?, r.get(15)?);
    let lifecycle = (|| -> Result<_> {
        let row = format!("catalog: volume {id} (slot {slot})");
        Ok((
            Kind::parse(&kind, &row)?,
            Attachment::parse(&state, &row)?,
            Residency::parse(&residency, &row)?,
        ))
    })();
    let (kind, state, residency) = match lifecycle {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(VolumeRecord {
        slot,
        id,
        name: r.get(2)?,
        kind,
        state,
        residency,
        format: r.get(5)?,
        medium_path: r.get(6)?,
        medium_size: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        medium_mtime_ns: r.get(8)?,
        medium_sample: r.get(9)?,
        size: r.get::<_, i64>(10)? as u64,
        files: r.get::<_, i64>(11)? as u64,
        created_ns: r.get(12)?,
        owner_uid: r.get(13)?,
        root_ino: r.get(14)?,
    }))
}

/// The catalog. One connection behind a mutex: every statement is short, and
/// SQLite serialises writers anyway.
pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// This open created the catalog (there was none, or an empty file).
    created: bool,
}

/// A new catalog: the database that [`MIGRATIONS`] build from nothing, at
/// the version it records, checkpointed and in WAL mode.
///
/// Building the schema statement by statement parses and runs some 25 DDL
/// statements and converts the journal to WAL, about 1.4 ms of a cold start
/// here (0.9 ms with a warm process); writing these 28 pages and opening them
/// is about 0.3 ms. A template older than the code is still correct, only
/// slower: the migrations after its version run as for any old catalog.
/// `template_is_the_migrated_schema` checks that it is current and equal to
/// what the migrations produce, and rewrites it when asked to.
const TEMPLATE: &[u8] = include_bytes!("catalog-template.db");

/// `path` with `suffix` appended to its file name (`catalog.db-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Asks the kernel to read the whole catalog file ahead, in one go. Start-up
/// reads pages all over it (schema, settings, volumes, stored indexes), 4 KiB
/// at a time: with a cold page cache each was a disk round trip on the path
/// of the first answer. Advice only; a failure changes nothing.
fn prefetch(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY-free: posix_fadvise on a descriptor we own.
        let _ = nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        // Missing or empty (a crash before the template was written, or a
        // file created by hand) is new.
        let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        if fresh {
            Self::create(path)?;
        } else {
            prefetch(path);
        }
        let conn = Connection::open(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("{}: cannot open the catalog: {e}", path.display()),
            )
        })?;
        // EXCLUSIVE: the daemon is the catalog's only user (the state
        // directory is locked), so SQLite can skip a pair of fcntl locks and
        // the shared-memory index on every transaction.
        //
        // synchronous=OFF for a new catalog until its WAL exists: the first
        // commit into a new WAL syncs the WAL's header and its directory, two
        // fsyncs (0.55 ms here) on the path of the first attach. The header
        // sync guards against frames of an earlier WAL generation being
        // taken for new ones after a power cut; a new WAL has none. Commits
        // are not synced under NORMAL either (only checkpoints are), so
        // nothing else changes. It is set before journal_mode, which it
        // governs.
        //
        // wal_autocheckpoint 16384 pages (64 MiB): a checkpoint runs on the
        // committing request's thread and costs two fsyncs. At SQLite's
        // default of 1000 pages a burst of unlinks (about 10 pages each)
        // checkpointed every ~100 files, which was a quarter of `rm -r`'s
        // time; checkpointing less often also writes each hot page (a
        // directory's dentries) once per checkpoint instead of once per 100
        // operations. Durability is unchanged: a commit is in the WAL either
        // way (crash-safe), and fsync makes it power-safe with syncfs.
        // journal_size_limit trims the WAL back after one very large
        // transaction without shrinking it in the normal cycle (a WAL that is
        // overwritten in place is cheaper to append to than one re-allocated).
        let configure = |conn: &Connection, sql: &str| {
            conn.execute_batch(sql).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{}: cannot configure the catalog: {e}", path.display()),
                )
            })
        };
        configure(
            &conn,
            &format!(
                "PRAGMA locking_mode=EXCLUSIVE;
                 PRAGMA synchronous={};
                 PRAGMA journal_mode=WAL;
                 PRAGMA foreign_keys=ON;
                 PRAGMA busy_timeout=10000;
                 PRAGMA temp_store=MEMORY;
                 PRAGMA cache_size=-65536;
                 PRAGMA wal_autocheckpoint=16384;
                 PRAGMA journal_size_limit=134217728;",
                if fresh { "OFF" } else { "NORMAL" }
            ),
        )?;
        let cat = Catalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            created: fresh,
        };
        cat.migrate()?;
        if fresh {
            // One commit (rewriting the version) starts the WAL without syncs.
            configure(
                &cat.conn(),
                &format!(
                    "PRAGMA user_version={};
                     PRAGMA synchronous=NORMAL;",
                    MIGRATIONS.len()
                ),
            )?;
        }
        Ok(cat)
    }

    /// True if this open created the catalog: the state directory had
    /// none (or an empty file), so no volume, file or chunk is recorded.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Puts the [`TEMPLATE`] in place at `path`: written beside it and
    /// renamed, so a crash leaves no catalog or a whole one. No fsync: an
    /// empty catalog lost to a power cut comes back missing or empty, which
    /// is the same state, and the first fsync of anything later (a file's,
    /// or the exit checkpoint) makes it durable with the rest.
    ///
    /// A write-ahead log without its database is refused, not replayed onto
    /// the template or deleted: it holds committed data that only the
    /// missing file can make sense of.
    fn create(path: &Path) -> Result<()> {
        let wal = sibling(path, "-wal");
        if let Ok(m) = std::fs::metadata(&wal)
            && m.len() > 0
        {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: the catalog is missing or empty, but its write-ahead log {} holds \
                     {} bytes; restore the catalog, or move the log away to start with an \
                     empty one",
                    path.display(),
                    wal.display(),
                    m.len()
                ),
            ));
        }
        let tmp = sibling(path, ".new");
        std::fs::write(&tmp, TEMPLATE)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(format!("{}: creating the catalog", path.display()), e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exclusive access to the connection, for modules that own tables.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let latest = MIGRATIONS.len() as u32;
        if current > latest {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: catalog schema version {current} is newer than this fsd supports \
                     ({latest}); upgrade fsd",
                    self.path.display()
                ),
            ));
        }
        for v in current..latest {
            let tx = conn.transaction()?;
            tx.execute_batch(MIGRATIONS[v as usize]).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("catalog migration to version {}: {e}", v + 1),
                )
            })?;
            tx.pragma_update(None, "user_version", v + 1)?;
            tx.commit()?;
            tracing::info!("catalog migrated to schema version {}", v + 1);
        }
        Ok(())
    }

    /// Makes every committed transaction durable against power loss and
    /// empties the WAL (the daemon calls it at exit), so the next start has
    /// no frames to read back.
    pub fn sync(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Checks the catalog's pages: `PRAGMA integrity_check` when `full`,
    /// else `PRAGMA quick_check` (no index-to-table cross-checks), reporting
    /// at most [`CHECK_PROBLEMS`] problems. With a `timeout` the check is
    /// interrupted when it runs out, so start-up's check is bounded on any
    /// catalog size. Holds the connection meanwhile: requests wait.
    pub fn check(&self, full: bool, timeout: Option<std::time::Duration>) -> Result<Check> {
        let conn = self.conn();
        check_connection(&conn, full, timeout)
    }

    /// Copies the catalog to `to` (a new file) with SQLite's online backup
    /// API, [`BACKUP_STEP`] pages per step. The connection is held only
    /// during each step, so requests go on between steps; a change made
    /// meanwhile through this same connection is carried into the copy by
    /// SQLite itself, so the copy is a consistent image when it finishes.
    pub fn backup_to(&self, to: &Path) -> Result<()> {
        use rusqlite::backup::{Backup, StepResult};
        let failed = |e: rusqlite::Error| {
            Error::new(ErrorKind::Io, format!("{}: backup: {e}", to.display()))
        };
        let mut dst = Connection::open(to).map_err(failed)?;
        // A new file that the caller fsyncs once when it is complete (and
        // deletes if anything fails): no journal and no syncs of its own.
        dst.execute_batch("PRAGMA synchronous=OFF; PRAGMA journal_mode=OFF;")
            .map_err(failed)?;
        let guard = self.conn();
        // SAFETY: the connection lives inside `self`, which outlives this
        // call, and is never moved out of its mutex. The backup calls into
        // SQLite through this reference only while the mutex is held (at
        // `new`, each `step` and the drop), so no other thread uses the
        // connection at the same time, as holding the guard would ensure.
        let src: &Connection = unsafe { &*(&*guard as *const Connection) };
        let backup = Backup::new(src, &mut dst).map_err(failed);
        drop(guard);
        let backup = backup?;
        let result = loop {
            let step = {
                let _g = self.conn();
                backup.step(BACKUP_STEP)
            };
            match step {
                Ok(StepResult::Done) => break Ok(()),
                Ok(StepResult::More) => std::thread::yield_now(),
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => break Err(failed(e)),
            }
        };
        {
            let _g = self.conn();
            drop(backup);
        }
        result?;
        // A copy of a WAL database is marked WAL; a backup is a plain file.
        dst.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF;")
            .map_err(failed)?;
        Ok(())
    }

    // ----- settings -----

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO settings(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ----- volumes -----

    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {VOLUME_COLS} FROM volumes ORDER BY slot"))?;
        let rows = st.query_map([], volume_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .collect()
    }

    /// Finds a volume by ID or, failing that, by name.
    pub fn find_volume(&self, id_or_name: &str) -> Result<Option<VolumeRecord>> {
        let conn = self.conn();
        let by_id = conn
            .query_row(
                &format!("SELECT {VOLUME_COLS} FROM volumes WHERE id = ?1"),
                [id_or_name],
                volume_row,
            )
            .optional()?;
        if by_id.is_some() {
            return by_id.transpose();
        }
        conn.query_row(
            &format!("SELECT {VOLUME_COLS} FROM volumes WHERE name = ?1"),
            [id_or_name],
            volume_row,
        )
        .optional()?
        .transpose()
    }

    pub fn find_by_medium(&self, path: &str) -> Result<Option<VolumeRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {VOLUME_COLS} FROM volumes WHERE medium_path = ?1"),
                [path],
                volume_row,
            )
            .optional()?
            .transpose()
    }

    pub fn name_taken(&self, name: &str, except_slot: Option<u32>) -> Result<bool> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM volumes WHERE (name = ?1 OR id = ?1) AND slot IS NOT ?2",
            params![name, except_slot],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Inserts a volume (and its archive index, if any) in one transaction,
    /// so a failure leaves no half volume. Returns the new slot.
    pub fn insert_volume(&self, v: &VolumeRecord, index: Option<(u32, &[u8])>) -> Result<u32> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ns();
        tx.execute(
            "INSERT INTO volumes (id, name, kind, state, format, medium_path, medium_size,
                                  medium_mtime_ns, medium_sample, size, files, created_ns, updated_ns,
                                  owner_uid, root_ino, residency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15)",
            params![
                v.id,
                v.name,
                v.kind.as_str(),
                v.state.as_str(),
                v.format,
                v.medium_path,
                v.medium_size.map(|s| s as i64),
                v.medium_mtime_ns,
                v.medium_sample,
                v.size as i64,
                v.files as i64,
                now,
                v.owner_uid,
                v.root_ino,
                v.residency.as_str()
            ],
        )
        .map_err(|e| unique_violation(e, v))?;
        let slot = tx.last_insert_rowid() as u32;
        if let Some((version, blob)) = index {
            tx.execute(
                "INSERT INTO archive_index (slot, version, blob) VALUES (?1, ?2, ?3)",
                params![slot, version, blob],
            )?;
        }
        tx.commit()?;
        Ok(slot)
    }

    /// Replaces a volume's medium identity and index after re-indexing.
    pub fn update_medium(&self, v: &VolumeRecord, index: Option<(u32, &[u8])>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE volumes SET format = ?2, medium_size = ?3, medium_mtime_ns = ?4,
                    medium_sample = ?5, size = ?6, files = ?7, updated_ns = ?8
             WHERE slot = ?1",
            params![
                v.slot,
                v.format,
                v.medium_size.map(|s| s as i64),
                v.medium_mtime_ns,
                v.medium_sample,
                v.size as i64,
                v.files as i64,
                now_ns()
            ],
        )?;
        if let Some((version, blob)) = index {
            tx.execute(
                "INSERT INTO archive_index (slot, version, blob) VALUES (?1, ?2, ?3)
                 ON CONFLICT(slot) DO UPDATE SET version = excluded.version, blob = excluded.blob",
                params![v.slot, version, blob],
            )?;
            // Cached tree hashes describe the old medium.
            tx.execute("DELETE FROM treehashes WHERE slot = ?1", [v.slot])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a volume's attachment. The caller has checked the change
    /// with [`Attachment::can_go_to`].
    pub fn set_state(&self, slot: u32, state: Attachment) -> Result<()> {
        self.conn().execute(
            "UPDATE volumes SET state = ?2, updated_ns = ?3 WHERE slot = ?1",
            params![slot, state.as_str(), now_ns()],
        )?;
        Ok(())
    }

    pub fn set_name(&self, slot: u32, name: Option<&str>) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE volumes SET name = ?2, updated_ns = ?3 WHERE slot = ?1",
                params![slot, name, now_ns()],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::new(
                        ErrorKind::Exists,
                        format!("volume name {:?} is already in use", name.unwrap_or("")),
                    )
                }
                e => e.into(),
            })?;
        Ok(())
    }

    pub fn delete_volume(&self, slot: u32) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM treehashes WHERE slot = ?1", [slot])?;
        tx.execute("DELETE FROM volumes WHERE slot = ?1", [slot])?;
        tx.commit()?;
        Ok(())
    }

    /// A cached tree hash (hex) of an archive member.
    pub fn treehash(&self, slot: u32, ino: u64) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT hash FROM treehashes WHERE slot = ?1 AND ino = ?2",
                params![slot, ino as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_treehash(&self, slot: u32, ino: u64, hash: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO treehashes (slot, ino, hash) VALUES (?1, ?2, ?3)",
            params![slot, ino as i64, hash],
        )?;
        Ok(())
    }

    /// The stored archive index of a volume: (format version, bytes).
    pub fn archive_index(&self, slot: u32) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, blob FROM archive_index WHERE slot = ?1",
                [slot],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The version of the stored archive index of `slot`, without reading
    /// the index itself (an already-attached check needs only this).
    pub fn archive_index_version(&self, slot: u32) -> Result<Option<u32>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version FROM archive_index WHERE slot = ?1",
                [slot],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records an event for `tokenctl status` and later inspection.
    pub fn event(&self, volume: Option<&str>, level: &str, message: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO events (at_ns, volume, level, message) VALUES (?1, ?2, ?3, ?4)",
            params![now_ns(), volume, level, message],
        )?;
        Ok(())
    }
}

fn unique_violation(e: rusqlite::Error, v: &VolumeRecord) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let what = msg.as_deref().unwrap_or("");
            if what.contains("volumes.name") {
                Error::new(
                    ErrorKind::Exists,
                    format!(
                        "volume name {:?} is already in use",
                        v.name.as_deref().unwrap_or("")
                    ),
                )
            } else if what.contains("medium_path") {
                Error::new(
                    ErrorKind::Exists,
                    format!(
                        "{} is already attached",
                        v.medium_path.as_deref().unwrap_or("")
                    ),
                )
            } else {
                Error::new(ErrorKind::Exists, format!("catalog: {e}"))
            }
        }
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: Option<&str>, medium: Option<&str>) -> VolumeRecord {
        VolumeRecord {
            slot: 0,
            id: id.into(),
            name: name.map(Into::into),
            kind: Kind::Archive,
            state: Attachment::Attached,
            residency: Residency::Hot,
            format: Some("tar".into()),
            medium_path: medium.map(Into::into),
            medium_size: Some(10),
            medium_mtime_ns: Some(5),
            medium_sample: Some("ab".into()),
            size: 10,
            files: 2,
            owner_uid: 0,
            created_ns: 0,
            root_ino: None,
        }
    }

    /// The catalog's `PRAGMA synchronous` (1 = NORMAL).
    fn sync(c: &Catalog) -> i64 {
        c.conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrates_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len() as u32);
        // The WAL was started without syncs, but the catalog is never left
        // that way.
        let wal = std::fs::metadata(d.path().join("catalog.db-wal")).unwrap();
        assert!(wal.len() > 32, "WAL of {} bytes", wal.len());
        assert_eq!(sync(&c), 1, "synchronous=NORMAL after creation");
        let slot = c
            .insert_volume(&rec("vol-1", Some("a"), Some("/m.tar")), Some((1, b"idx")))
            .unwrap();
        drop(c);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(sync(&c), 1, "synchronous=NORMAL after reopening");
        let v = c.find_volume("a").unwrap().unwrap();
        assert_eq!(v.slot, slot);
        assert_eq!(v.id, "vol-1");
        assert_eq!(
            c.archive_index(slot).unwrap().unwrap(),
            (1, b"idx".to_vec())
        );
        assert_eq!(c.find_by_medium("/m.tar").unwrap().unwrap().slot, slot);
    }

    /// Many small commits stay in the WAL instead of checkpointing (two
    /// fsyncs on the committing thread) every 1000 pages.
    #[test]
    fn small_commits_do_not_checkpoint_every_thousand_pages() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        let c = Catalog::open(&p).unwrap();
        let msg = "x".repeat(3000);
        for _ in 0..3000 {
            c.event(None, "info", &msg).unwrap();
        }
        let wal = std::fs::metadata(d.path().join("catalog.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal > 2500 * 4096,
            "WAL of {wal} bytes: it was checkpointed and restarted"
        );
        c.sync().unwrap();
        let wal = std::fs::metadata(d.path().join("catalog.db-wal"))
            .unwrap()
            .len();
        assert_eq!(wal, 0, "the exit checkpoint leaves an empty WAL");
        drop(c);
        let c = Catalog::open(&p).unwrap();
        let n: i64 = c
            .conn()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3000);
    }

    /// Everything that makes two catalogs the same database: the schema,
    /// its version and the file format settings.
    fn shape(p: &Path) -> Vec<String> {
        let conn = Connection::open(p).unwrap();
        let mut out: Vec<String> = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {} {:?}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?
                ))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for pragma in [
            "user_version",
            "page_size",
            "journal_mode",
            "auto_vacuum",
            "encoding",
            "application_id",
            "integrity_check",
        ] {
            let v: rusqlite::types::Value = conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .unwrap();
            out.push(format!("{pragma} = {v:?}"));
        }
        out
    }

    /// The template is the database the migrations build from nothing, at
    /// the latest version. `FSD_WRITE_CATALOG_TEMPLATE=1 cargo test --lib
    /// template_is_the_migrated_schema` rewrites it after a new migration.
    #[test]
    fn template_is_the_migrated_schema() {
        let d = tempfile::tempdir().unwrap();
        // A non-empty database at version 0 is not new, so `open` builds it
        // with every migration instead of copying the template.
        let built = d.path().join("built.db");
        Connection::open(&built)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL;")
            .unwrap();
        let c = Catalog::open(&built).unwrap();
        c.sync().unwrap();
        drop(c);
        if std::env::var_os("FSD_WRITE_CATALOG_TEMPLATE").is_some() {
            let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/catalog-template.db");
            std::fs::copy(&built, &to).unwrap();
            eprintln!("wrote {}; rebuild to embed it", to.display());
            return;
        }
        let version = u32::from_be_bytes(TEMPLATE[60..64].try_into().unwrap());
        assert_eq!(
            version,
            MIGRATIONS.len() as u32,
            "the catalog template is at version {version}; rewrite it with \
             FSD_WRITE_CATALOG_TEMPLATE=1 cargo test --lib template_is_the_migrated_schema"
        );
        let fresh = d.path().join("fresh.db");
        drop(Catalog::open(&fresh).unwrap());
        let fresh_shape = shape(&fresh);
        assert!(fresh_shape.contains(&"integrity_check = Text(\"ok\")".to_string()));
        assert!(fresh_shape.contains(&"journal_mode = Text(\"wal\")".to_string()));
        assert_eq!(fresh_shape, shape(&built));
    }

    /// An empty file is a new catalog; a write-ahead log whose database is
    /// missing is refused and left alone.
    #[test]
    fn new_catalog_beside_an_orphan_log_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        std::fs::write(&p, b"").unwrap();
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len() as u32);
        drop(c);

        let p = d.path().join("other.db");
        let wal = d.path().join("other.db-wal");
        std::fs::write(&wal, vec![7u8; 5000]).unwrap();
        let e = Catalog::open(&p).err().expect("an orphan WAL is refused");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let msg = e.to_string();
        assert!(
            msg.contains("other.db-wal holds 5000 bytes") && msg.contains("other.db:"),
            "{msg}"
        );
        assert!(!p.exists(), "no catalog was created");
        assert_eq!(std::fs::read(&wal).unwrap(), vec![7u8; 5000]);
    }

    #[test]
    fn upgrades_a_version_1_catalog() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO volumes (id, kind, state, created_ns, updated_ns) VALUES ('vol-old', 'archive', 'attached', 1, 1)",
            [],
        )
        .unwrap();
        drop(conn);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(sync(&c), 1, "synchronous=NORMAL after an upgrade");
        let v = c.find_volume("vol-old").unwrap().unwrap();
        assert_eq!(v.root_ino, None);
        assert_eq!((v.kind, v.state), (Kind::Archive, Attachment::Attached));
        assert_eq!(
            v.residency,
            Residency::Hot,
            "migration 4 makes every volume hot"
        );
        c.set_treehash(v.slot, 5, "ab").unwrap();
        assert_eq!(c.treehash(v.slot, 5).unwrap().as_deref(), Some("ab"));
    }

    /// The lifecycle columns round-trip as the strings of before, and a
    /// value this fsd does not know is a `corrupt` error naming the row,
    /// from every way of reading volumes.
    #[test]
    fn lifecycle_columns_are_parsed_at_the_boundary() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.db")).unwrap();
        let slot = c
            .insert_volume(&rec("vol-1", Some("a"), Some("/m")), None)
            .unwrap();
        c.set_state(slot, Attachment::Detached).unwrap();
        let raw = |col: &str| -> String {
            c.conn()
                .query_row(
                    &format!("SELECT {col} FROM volumes WHERE slot = ?1"),
                    [slot],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(
            (raw("kind"), raw("state"), raw("residency")),
            ("archive".into(), "detached".into(), "hot".into())
        );
        assert_eq!(
            c.find_volume("a").unwrap().unwrap().state,
            Attachment::Detached
        );
        for (col, bad) in [
            ("kind", "drive"),
            ("state", "Attached"),
            ("residency", "cold"),
        ] {
            c.conn()
                .execute(
                    &format!("UPDATE volumes SET {col} = ?2 WHERE slot = ?1"),
                    params![slot, bad],
                )
                .unwrap();
            for e in [
                c.volumes().err().unwrap(),
                c.find_volume("vol-1").err().unwrap(),
                c.find_volume("a").err().unwrap(),
                c.find_by_medium("/m").err().unwrap(),
            ] {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                let msg = e.to_string();
                assert!(msg.contains("vol-1") && msg.contains(bad), "{msg}");
            }
            let _ = c.conn().execute(
                "UPDATE volumes SET kind = 'archive', state = 'attached', residency = 'hot'",
                [],
            );
        }
        assert_eq!(c.volumes().unwrap().len(), 1);
    }

    #[test]
    fn extent_triggers_count_chunk_references() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.db")).unwrap();
        let conn = c.conn();
        let refs = |h: &[u8]| -> i64 {
            conn.query_row("SELECT refs FROM chunks WHERE hash = ?1", [h], |r| r.get(0))
                .unwrap()
        };
        conn.execute("INSERT INTO extents VALUES (1, 0, x'aa', 10)", [])
            .unwrap();
        conn.execute("INSERT INTO extents VALUES (2, 0, x'aa', 10)", [])
            .unwrap();
        assert_eq!(refs(&[0xaa]), 2);
        conn.execute("UPDATE extents SET hash = x'bb' WHERE ino = 1", [])
            .unwrap();
        assert_eq!(refs(&[0xaa]), 1);
        assert_eq!(refs(&[0xbb]), 1);
        conn.execute("DELETE FROM extents WHERE ino = 2", [])
            .unwrap();
        assert_eq!(refs(&[0xaa]), 0);
    }

    #[test]
    fn refuses_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        drop(Catalog::open(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        let e = Catalog::open(&p).err().unwrap();
        assert!(e.to_string().contains("newer than this fsd"), "{e}");
    }

    #[test]
    fn unique_names_and_media() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.db")).unwrap();
        c.insert_volume(&rec("vol-1", Some("a"), Some("/m1")), None)
            .unwrap();
        let e = c
            .insert_volume(&rec("vol-2", Some("a"), Some("/m2")), None)
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Exists);
        assert!(e.to_string().contains("name"), "{e}");
        let e = c
            .insert_volume(&rec("vol-3", None, Some("/m1")), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("already attached"), "{e}");
        assert!(c.name_taken("a", None).unwrap());
        assert!(c.name_taken("vol-1", None).unwrap());
        let s = c.find_volume("vol-1").unwrap().unwrap().slot;
        assert!(!c.name_taken("a", Some(s)).unwrap());
    }

    #[test]
    fn slots_are_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.db")).unwrap();
        let s1 = c
            .insert_volume(&rec("vol-1", None, None), Some((1, b"x")))
            .unwrap();
        c.delete_volume(s1).unwrap();
        assert!(
            c.archive_index(s1).unwrap().is_none(),
            "index deleted with volume"
        );
        let s2 = c.insert_volume(&rec("vol-2", None, None), None).unwrap();
        assert!(s2 > s1);
    }
}
