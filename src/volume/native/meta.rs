//! Catalog access for native volumes: inodes, directory entries, extents
//! and xattrs. Every function takes a connection (or transaction) so callers
//! decide what is atomic.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::types::{Attr, FileKind, Timespec};
use crate::store::treehash::Hash;

/// One inode row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ino: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub target: Option<Vec<u8>>,
}

impl Row {
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode).unwrap_or(FileKind::File)
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// The attributes `stat` shows; `stored` is the bytes of data chunks.
    pub fn attr(&self, local_ino: u64, stored: u64) -> Attr {
        Attr {
            ino: local_ino,
            kind: self.kind(),
            size: self.size,
            blocks: stored.div_ceil(512),
            perm: (self.mode & 0o7777) as u16,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev as u32,
            atime: Timespec::from_nanos(self.atime),
            mtime: Timespec::from_nanos(self.mtime),
            ctime: Timespec::from_nanos(self.ctime),
            blksize: Attr::blksize_for(self.kind()),
        }
    }
}

/// A chunk reference of a file: chunk `idx` covers bytes
/// `[idx MiB, idx MiB + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    pub hash: Hash,
    pub len: u32,
}

const COLS: &str = "ino, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, target";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        ino: r.get(0)?,
        mode: r.get(1)?,
        uid: r.get(2)?,
        gid: r.get(3)?,
        nlink: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        rdev: r.get::<_, i64>(6)? as u64,
        atime: r.get(7)?,
        mtime: r.get(8)?,
        ctime: r.get(9)?,
        target: r.get(10)?,
    })
}

/// The inode `ino` of volume `slot`.
pub fn get(c: &Connection, slot: u32, ino: i64) -> Result<Row> {
    c.prepare_cached(&format!(
        "SELECT {COLS} FROM inodes WHERE ino = ?1 AND slot = ?2"
    ))?
    .query_row(params![ino, slot], row)
    .optional()?
    .ok_or_else(|| Error::kind_only(ErrorKind::NotFound))
}

/// The inode named `name` in directory `parent`, if any.
pub fn lookup(c: &Connection, parent: i64, name: &[u8]) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2")?
            .query_row(params![parent, name], |r| r.get(0))
            .optional()?,
    )
}

/// A new inode; returns its number.
pub fn insert(c: &Connection, slot: u32, r: &Row) -> Result<i64> {
    c.prepare_cached(
        "INSERT INTO inodes (slot, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        slot,
        r.mode,
        r.uid,
        r.gid,
        r.nlink,
        r.size as i64,
        r.rdev as i64,
        r.atime,
        r.mtime,
        r.ctime,
        r.target
    ])?;
    Ok(c.last_insert_rowid())
}

/// Writes every field of `r` back.
pub fn update(c: &Connection, r: &Row) -> Result<()> {
    c.prepare_cached(
        "UPDATE inodes SET mode = ?2, uid = ?3, gid = ?4, nlink = ?5, size = ?6, rdev = ?7,
                atime_ns = ?8, mtime_ns = ?9, ctime_ns = ?10, target = ?11 WHERE ino = ?1",
    )?
    .execute(params![
        r.ino,
        r.mode,
        r.uid,
        r.gid,
        r.nlink,
        r.size as i64,
        r.rdev as i64,
        r.atime,
        r.mtime,
        r.ctime,
        r.target
    ])?;
    Ok(())
}

/// Sets a directory's mtime and ctime (after its entries changed) and
/// adjusts its link count by `nlink_delta`.
pub fn touch_dir(c: &Connection, dir: i64, now: i64, nlink_delta: i32) -> Result<()> {
    c.prepare_cached(
        "UPDATE inodes SET mtime_ns = ?2, ctime_ns = ?2, nlink = nlink + ?3 WHERE ino = ?1",
    )?
    .execute(params![dir, now, nlink_delta])?;
    Ok(())
}

pub fn link(c: &Connection, parent: i64, name: &[u8], ino: i64) -> Result<()> {
    match c
        .prepare_cached("INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)")?
        .execute(params![parent, name, ino])
    {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            err(ErrorKind::Exists)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn unlink(c: &Connection, parent: i64, name: &[u8]) -> Result<()> {
    c.prepare_cached("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent, name])?;
    Ok(())
}

/// Points an existing entry at another inode (rename over, exchange).
pub fn relink(c: &Connection, parent: i64, name: &[u8], ino: i64) -> Result<()> {
    c.prepare_cached("UPDATE dentries SET ino = ?3 WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent, name, ino])?;
    Ok(())
}

pub fn has_children(c: &Connection, dir: i64) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")?
            .query_row([dir], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// The directory holding `dir`'s entry (directories have exactly one).
pub fn parent_of(c: &Connection, dir: i64) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT parent FROM dentries WHERE ino = ?1 LIMIT 1")?
            .query_row([dir], |r| r.get(0))
            .optional()?,
    )
}

/// Up to `limit` entries of `dir` after entry id `after`, with their inodes.
pub fn list(c: &Connection, dir: i64, after: i64, limit: u32) -> Result<Vec<(i64, Vec<u8>, Row)>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT d.id, d.name, {} FROM dentries d JOIN inodes i ON i.ino = d.ino
         WHERE d.parent = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3",
        COLS.split(", ")
            .map(|c| format!("i.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let rows = st.query_map(params![dir, after, limit], |r| {
        let id: i64 = r.get(0)?;
        let name: Vec<u8> = r.get(1)?;
        let ino: i64 = r.get(2)?;
        Ok((
            id,
            name,
            Row {
                ino,
                mode: r.get(3)?,
                uid: r.get(4)?,
                gid: r.get(5)?,
                nlink: r.get(6)?,
                size: r.get::<_, i64>(7)? as u64,
                rdev: r.get::<_, i64>(8)? as u64,
                atime: r.get(9)?,
                mtime: r.get(10)?,
                ctime: r.get(11)?,
                target: r.get(12)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn hash_of(v: Vec<u8>) -> rusqlite::Result<Hash> {
    v.try_into().map_err(|_| {
        rusqlite::Error::InvalidColumnType(0, "hash".into(), rusqlite::types::Type::Blob)
    })
}

/// The chunk map of a file.
pub fn extents(c: &Connection, ino: i64) -> Result<BTreeMap<u64, Ext>> {
    let mut st = c.prepare_cached("SELECT idx, hash, len FROM extents WHERE ino = ?1")?;
    let rows = st.query_map([ino], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            Ext {
                hash: hash_of(r.get(1)?)?,
                len: r.get(2)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?)
}

/// Sets or clears (`None`: a hole) chunk `idx` of a file.
pub fn set_extent(c: &Connection, ino: i64, idx: u64, ext: Option<Ext>) -> Result<()> {
    match ext {
        Some(e) => {
            c.prepare_cached(
                "INSERT INTO extents (ino, idx, hash, len) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ino, idx) DO UPDATE SET hash = excluded.hash, len = excluded.len",
            )?
            .execute(params![ino, idx as i64, &e.hash[..], e.len])?;
        }
        None => {
            c.prepare_cached("DELETE FROM extents WHERE ino = ?1 AND idx = ?2")?
                .execute(params![ino, idx as i64])?;
        }
    }
    Ok(())
}

/// Bytes of data chunks a file references (for `st_blocks`).
pub fn stored_bytes(c: &Connection, ino: i64) -> Result<u64> {
    Ok(
        c.prepare_cached("SELECT COALESCE(SUM(len), 0) FROM extents WHERE ino = ?1")?
            .query_row([ino], |r| r.get::<_, i64>(0))? as u64,
    )
}

/// Deletes an inode with its extents and xattrs.
pub fn delete(c: &Connection, ino: i64) -> Result<()> {
    c.prepare_cached("DELETE FROM extents WHERE ino = ?1")?
        .execute([ino])?;
    c.prepare_cached("DELETE FROM xattrs WHERE ino = ?1")?
        .execute([ino])?;
    c.prepare_cached("DELETE FROM inodes WHERE ino = ?1")?
        .execute([ino])?;
    Ok(())
}

pub fn xattr(c: &Connection, ino: i64, name: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(
        c.prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?
            .query_row(params![ino, name], |r| r.get(0))
            .optional()?,
    )
}

pub fn xattr_names(c: &Connection, ino: i64) -> Result<Vec<Vec<u8>>> {
    let mut st = c.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
    let rows = st.query_map([ino], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn set_xattr(c: &Connection, ino: i64, name: &[u8], value: &[u8]) -> Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)")?
        .execute(params![ino, name, value])?;
    Ok(())
}

pub fn remove_xattr(c: &Connection, ino: i64, name: &[u8]) -> Result<bool> {
    Ok(
        c.prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?
            .execute(params![ino, name])?
            > 0,
    )
}

/// The hashes a query selects (its only column).
fn hashes(c: &Connection, sql: &str) -> Result<Vec<Hash>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([], |r| hash_of(r.get(0)?))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Chunks that nothing references any more.
pub fn free_chunks(c: &Connection) -> Result<Vec<Hash>> {
    hashes(c, "SELECT hash FROM chunks WHERE refs <= 0")
}

/// Drops a chunk row if it is still unreferenced; true if it was dropped.
pub fn drop_chunk_if_free(c: &Connection, h: &Hash) -> Result<bool> {
    Ok(
        c.prepare_cached("DELETE FROM chunks WHERE hash = ?1 AND refs <= 0")?
            .execute([&h[..]])?
            > 0,
    )
}

/// Drops the rows of those of `hashes` that are still unreferenced, in one
/// transaction; returns the ones dropped.
pub fn drop_chunks_if_free(c: &mut Connection, hashes: &[Hash]) -> Result<Vec<Hash>> {
    let tx = c.transaction()?;
    let mut gone = Vec::new();
    {
        let mut st = tx.prepare_cached("DELETE FROM chunks WHERE hash = ?1 AND refs <= 0")?;
        for h in hashes {
            if st.execute([&h[..]])? > 0 {
                gone.push(*h);
            }
        }
    }
    tx.commit()?;
    Ok(gone)
}

/// Every chunk the catalog knows.
pub fn all_chunks(c: &Connection) -> Result<Vec<Hash>> {
    hashes(c, "SELECT hash FROM chunks")
}

/// Whether the catalog knows chunk `h` (referenced or awaiting collection).
pub fn chunk_known(c: &Connection, h: &Hash) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?
        .query_row([&h[..]], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Inodes of `slot` with no names left (unlinked while open before a crash).
pub fn orphans(c: &Connection, slot: u32) -> Result<Vec<i64>> {
    let mut st = c.prepare_cached("SELECT ino FROM inodes WHERE slot = ?1 AND nlink = 0")?;
    let rows = st.query_map([slot], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Number of regular files in `slot`, and the bytes the volume uses: their
/// total size plus the names and values of every xattr (what the quota
/// counts, see `quota.rs`).
pub fn usage(c: &Connection, slot: u32) -> Result<(u64, u64)> {
    let (n, bytes): (i64, i64) = c
        .prepare_cached(
            "SELECT count(*), COALESCE(SUM(size), 0) FROM inodes WHERE slot = ?1 AND (mode & 61440) = 32768",
        )?
        .query_row([slot], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let xattrs: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(length(x.name) + length(x.value)), 0) FROM xattrs x \
             JOIN inodes i ON i.ino = x.ino WHERE i.slot = ?1",
        )?
        .query_row([slot], |r| r.get(0))?;
    Ok((n as u64, (bytes + xattrs) as u64))
}

/// Bytes of xattrs (names plus values) of inode `ino`.
pub fn xattr_bytes(c: &Connection, ino: i64) -> Result<u64> {
    let n: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(length(name) + length(value)), 0) FROM xattrs WHERE ino = ?1",
        )?
        .query_row([ino], |r| r.get(0))?;
    Ok(n as u64)
}

/// Deletes every inode of a volume and what hangs off them.
pub fn delete_volume_data(c: &Connection, slot: u32) -> Result<()> {
    c.execute(
        "DELETE FROM extents WHERE ino IN (SELECT ino FROM inodes WHERE slot = ?1)",
        [slot],
    )?;
    c.execute(
        "DELETE FROM xattrs WHERE ino IN (SELECT ino FROM inodes WHERE slot = ?1)",
        [slot],
    )?;
    c.execute(
        "DELETE FROM dentries WHERE ino IN (SELECT ino FROM inodes WHERE slot = ?1)",
        [slot],
    )?;
    c.execute("DELETE FROM inodes WHERE slot = ?1", [slot])?;
    Ok(())
}
