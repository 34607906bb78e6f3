//! `tokenctl fsck`: checks the catalog against the chunk store and every
//! chunk's content against its name, and repairs only when asked.
//!
//! What is checked:
//! * every referenced chunk exists, has a sound footer and block CRCs, and
//!   its data hashes to its name (`missing_chunk`, `corrupt_chunk`);
//! * chunk reference counts equal the references that exist (`refcount`);
//! * extents name a chunk the catalog knows (`dangling_extent`) and have
//!   the length the file size implies (`extent_shape`);
//! * directory entries name existing inodes (`dangling_entry`), link counts
//!   match the entries (`nlink`), and no inode is unreachable (`orphan_inode`);
//! * (whole store only) chunk files no row knows (`orphan_file`) and rows
//!   nothing references (`unreferenced_chunk`).
//!
//! Repairs never invent data: a missing or corrupt chunk is reported with
//! the files that use it, and stays as it is for the durable tier (or the
//! operator) to restore. Nor do they destroy it: an `orphan_file` is moved
//! to the catalog quarantine (`STATE/chunks/.quarantine/`, see
//! `store::guard`), not deleted, since the catalog may be the wrong one.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::file::Env;
use super::meta;
use crate::error::Result;
use crate::store::chunks::hex;
use crate::store::treehash::{Hash, LEAF};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    pub kind: String,
    pub detail: String,
    pub repaired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Report {
    pub volumes: Vec<String>,
    pub inodes: u64,
    pub chunks: u64,
    pub bytes_verified: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    fn add(&mut self, kind: &str, detail: String, repaired: bool) {
        self.problems.push(Problem {
            kind: kind.into(),
            detail,
            repaired,
        });
    }

    /// Problems left after the run.
    pub fn unrepaired(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }
}

/// A volume to check: its slot, its ID (for messages) and the inode rows in
/// use right now (open, possibly unlinked: not orphans).
pub struct Target {
    pub slot: u32,
    pub id: String,
    pub busy: HashSet<i64>,
}

/// Checks native volumes `targets`; `whole` adds the store-wide checks.
pub fn run(env: &Env, targets: &[Target], whole: bool, repair: bool) -> Result<Report> {
    let mut rep = Report {
        volumes: targets.iter().map(|t| t.id.clone()).collect(),
        ..Report::default()
    };
    // Which files use each chunk, for messages.
    let mut users: HashMap<Hash, Vec<String>> = HashMap::new();
    for t in targets {
        check_tree(env, t, repair, &mut rep, &mut users)?;
    }
    // Chunk content.
    let mut hashes: Vec<Hash> = users.keys().copied().collect();
    hashes.sort();
    for h in &hashes {
        rep.chunks += 1;
        match env.chunks.verify(h) {
            Ok(n) => rep.bytes_verified += u64::from(n),
            Err(e) => {
                let kind = if env.chunks.is_hot(h) {
                    "corrupt_chunk"
                } else {
                    "missing_chunk"
                };
                let who = users.get(h).map(|u| u.join(", ")).unwrap_or_default();
                rep.add(kind, format!("{e}; used by {who}"), false);
            }
        }
    }
    if whole {
        // Chunks dropped a moment ago may still await collection (a reader
        // held them); collect first so only real leftovers are reported,
        // and keep the background collector out until the check is done.
        let _no_collection = env.reaper.collecting.lock();
        super::file::collect_locked(env);
        check_store(env, repair, &mut rep)?;
    }
    Ok(rep)
}

fn check_tree(
    env: &Env,
    t: &Target,
    repair: bool,
    rep: &mut Report,
    users: &mut HashMap<Hash, Vec<String>>,
) -> Result<()> {
    let (slot, id) = (t.slot, t.id.as_str());
    let mut conn = env.catalog.conn();
    let tx = conn.transaction()?;
    let root: Option<i64> = tx.query_row(
        "SELECT root_ino FROM volumes WHERE slot = ?1",
        [slot],
        |r| r.get(0),
    )?;
    let inodes: Vec<(i64, u32, u32, u64)> = {
        let mut st = tx.prepare("SELECT ino, mode, nlink, size FROM inodes WHERE slot = ?1")?;
        let rows = st.query_map([slot], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    rep.inodes += inodes.len() as u64;
    let known: HashSet<i64> = inodes.iter().map(|i| i.0).collect();
    // Entries and link counts.
    let mut names: HashMap<i64, u32> = HashMap::new();
    let mut subdirs: HashMap<i64, u32> = HashMap::new();
    let is_dir: HashSet<i64> = inodes
        .iter()
        .filter(|i| i.1 & libc::S_IFMT == libc::S_IFDIR)
        .map(|i| i.0)
        .collect();
    let entries: Vec<(i64, i64, Vec<u8>)> = {
        let mut st = tx.prepare(
            "SELECT d.parent, d.ino, d.name FROM dentries d JOIN inodes p ON p.ino = d.parent WHERE p.slot = ?1",
        )?;
        let rows = st.query_map([slot], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for (parent, ino, name) in &entries {
        if !known.contains(ino) {
            let fixed = repair && meta::unlink(&tx, *parent, name).is_ok();
            rep.add(
                "dangling_entry",
                format!(
                    "{id}: entry {:?} in directory {parent} names missing inode {ino}",
                    String::from_utf8_lossy(name)
                ),
                fixed,
            );
            continue;
        }
        *names.entry(*ino).or_default() += 1;
        if is_dir.contains(ino) {
            *subdirs.entry(*parent).or_default() += 1;
        }
    }
    for &(ino, mode, nlink, size) in &inodes {
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let n = names.get(&ino).copied().unwrap_or(0);
        if t.busy.contains(&ino) && n == 0 {
            // Unlinked (or removed) but still open: it goes when closed.
            if mode & libc::S_IFMT == libc::S_IFREG {
                check_extents(&tx, id, ino, size, repair, rep, users)?;
            }
            continue;
        }
        if Some(ino) != root && n == 0 {
            let fixed = repair && meta::delete(&tx, ino).is_ok();
            rep.add(
                "orphan_inode",
                format!("{id}: inode {ino} has no name (nlink {nlink})"),
                fixed,
            );
            continue;
        }
        let want = if dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            n
        };
        if nlink != want {
            let fixed = repair
                && tx
                    .execute(
                        "UPDATE inodes SET nlink = ?2 WHERE ino = ?1",
                        rusqlite::params![ino, want],
                    )
                    .is_ok();
            rep.add(
                "nlink",
                format!("{id}: inode {ino} has link count {nlink}, its entries make {want}"),
                fixed,
            );
        }
        if mode & libc::S_IFMT == libc::S_IFREG {
            check_extents(&tx, id, ino, size, repair, rep, users)?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn check_extents(
    tx: &rusqlite::Connection,
    id: &str,
    ino: i64,
    size: u64,
    repair: bool,
    rep: &mut Report,
    users: &mut HashMap<Hash, Vec<String>>,
) -> Result<()> {
    let leaf = LEAF as u64;
    for (idx, e) in meta::extents(tx, ino)? {
        let want = size.saturating_sub(idx * leaf).min(leaf);
        if u64::from(e.len) != want {
            let fixed = repair && want == 0 && meta::set_extent(tx, ino, idx, None).is_ok();
            rep.add(
                "extent_shape",
                format!(
                    "{id}: inode {ino} chunk {idx} holds {} bytes, the file size {size} implies {want}",
                    e.len
                ),
                fixed,
            );
        }
        if !meta::chunk_known(tx, &e.hash)? {
            rep.add(
                "dangling_extent",
                format!(
                    "{id}: inode {ino} chunk {idx} names unknown chunk {}",
                    hex(&e.hash)
                ),
                false,
            );
        }
        users
            .entry(e.hash)
            .or_default()
            .push(format!("{id} inode {ino} offset {}", idx * leaf));
    }
    Ok(())
}

fn check_store(env: &Env, repair: bool, rep: &mut Report) -> Result<()> {
    // Reference counts against the references that exist.
    let rows: Vec<(Hash, i64, i64)> = {
        let conn = env.catalog.conn();
        let mut st = conn.prepare(
            "SELECT c.hash, c.refs,
                    (SELECT count(*) FROM extents e WHERE e.hash = c.hash)
                  + (SELECT count(*) FROM token_chunks t WHERE t.hash = c.hash)
             FROM chunks c",
        )?;
        let rows = st.query_map([], |r| {
            let h: Vec<u8> = r.get(0)?;
            Ok((h, r.get(1)?, r.get(2)?))
        })?;
        rows.filter_map(|r| r.ok())
            .filter_map(|(h, a, b)| Some((h.try_into().ok()?, a, b)))
            .collect()
    };
    let mut known: HashSet<Hash> = HashSet::new();
    for (h, refs, actual) in rows {
        known.insert(h);
        if refs != actual {
            let fixed = repair
                && env
                    .catalog
                    .conn()
                    .execute(
                        "UPDATE chunks SET refs = ?2 WHERE hash = ?1",
                        rusqlite::params![&h[..], actual],
                    )
                    .is_ok();
            rep.add(
                "refcount",
                format!(
                    "chunk {} has reference count {refs}, {actual} references exist",
                    hex(&h)
                ),
                fixed,
            );
        }
        if actual == 0 {
            let fixed = repair
                && env
                    .store
                    .remove_unpinned(&h, || meta::drop_chunk_if_free(&env.catalog.conn(), &h))
                    .unwrap_or(false);
            rep.add(
                "unreferenced_chunk",
                format!("chunk {} is not used", hex(&h)),
                fixed,
            );
        }
    }
    for h in env.store.list()? {
        // A pinned file is being written and will be committed shortly.
        if !known.contains(&h) && !env.store.is_pinned(&h) {
            // A superseded chunk that a reader still held during the
            // collection above is garbage awaiting its retry, not a
            // leftover: retry now that the pin is gone.
            let stale = env.stale.lock().remove(&h);
            if stale {
                super::file::discard_one(env, h);
                if !env.store.contains(&h) {
                    continue;
                }
            }
            // Repair quarantines rather than deletes: against a wrong or
            // restored catalog the file is data. The grace period
            // (`catalog.quarantine_days`) deletes it later; a catalog that
            // references it takes it back at start-up.
            let fixed = repair && env.store.quarantine_unpinned(&h).unwrap_or(false);
            let path = env.store.path(&h);
            rep.add(
                "orphan_file",
                if fixed {
                    format!(
                        "{} has no catalog row; moved to {}",
                        path.display(),
                        env.store.quarantine_dir().display()
                    )
                } else {
                    format!("{} has no catalog row", path.display())
                },
                fixed,
            );
        }
    }
    Ok(())
}
