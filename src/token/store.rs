//! The token store: one catalog row per token, and for persistent tokens
//! with a native source, the snapshot of the source's chunks.
//!
//! The key R is never stored. A token is found by SHA-256(R) and checked
//! against the SHA-256 of the whole logical token in constant time, so the
//! catalog alone neither reveals usable tokens nor accepts altered ones.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::{Range, rod_name};
use crate::error::{Error, ErrorKind, Result};
use crate::store::catalog::Catalog;
use crate::store::treehash::Hash;
use crate::util;

/// A token's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub token_hash: Hash,
    pub group: u64,
    pub rod_type: u32,
    pub created_ns: i64,
    pub expires_ns: i64,
    pub inactivity_secs: u32,
    pub last_used_ns: i64,
    pub state: String,
    pub reason: Option<String>,
    pub slot: u32,
    pub ino: u64,
    pub generation: u64,
    pub source_size: u64,
    pub length: u64,
    pub ranges: Vec<Range>,
    pub medium_sample: Option<String>,
    pub uid: u32,
    pub path: String,
}

/// What `tokenctl token list` and `inspect` show (never R).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: i64,
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub rod: String,
    pub created: String,
    pub expires: String,
    pub inactivity_secs: u32,
    pub last_used: String,
    pub source: String,
    pub length: u64,
    pub ranges: usize,
    pub uid: u32,
}

impl Row {
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id,
            state: self.state.clone(),
            reason: self.reason.clone(),
            rod: rod_name(self.rod_type).to_string(),
            created: util::fmt_utc(self.created_ns),
            expires: util::fmt_utc(self.expires_ns),
            inactivity_secs: self.inactivity_secs,
            last_used: util::fmt_utc(self.last_used_ns),
            source: self.path.clone(),
            length: self.length,
            ranges: self.ranges.len(),
            uid: self.uid,
        }
    }
}

pub fn sha256(b: &[u8]) -> Hash {
    Sha256::digest(b).into()
}

/// Compares two hashes in time that does not depend on where they differ.
pub fn ct_eq(a: &Hash, b: &Hash) -> bool {
    let mut diff = 0u8;
    for i in 0..a.len() {
        diff |= a[i] ^ b[i];
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

fn encode_ranges(r: &[Range]) -> Vec<u8> {
    let mut v = Vec::with_capacity(r.len() * 16);
    for x in r {
        v.extend_from_slice(&x.offset.to_be_bytes());
        v.extend_from_slice(&x.length.to_be_bytes());
    }
    v
}

fn decode_ranges(b: &[u8]) -> Vec<Range> {
    b.chunks_exact(16)
        .map(|c| {
            let mut o = [0u8; 8];
            let mut l = [0u8; 8];
            o.copy_from_slice(&c[..8]);
            l.copy_from_slice(&c[8..]);
            Range {
                offset: u64::from_be_bytes(o),
                length: u64::from_be_bytes(l),
            }
        })
        .collect()
}

const COLS: &str = "id, token_hash, grp, rod_type, created_ns, expires_ns, inactivity_secs, last_used_ns, \
                    state, reason, slot, ino, generation, source_size, length, ranges, medium_sample, uid, path";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let th: Vec<u8> = r.get(1)?;
    let ranges: Vec<u8> = r.get(15)?;
    Ok(Row {
        id: r.get(0)?,
        token_hash: th.try_into().unwrap_or([0; 32]),
        group: r.get::<_, i64>(2)? as u64,
        rod_type: r.get::<_, i64>(3)? as u32,
        created_ns: r.get(4)?,
        expires_ns: r.get(5)?,
        inactivity_secs: r.get(6)?,
        last_used_ns: r.get(7)?,
        state: r.get(8)?,
        reason: r.get(9)?,
        slot: r.get(10)?,
        ino: r.get::<_, i64>(11)? as u64,
        generation: r.get::<_, i64>(12)? as u64,
        source_size: r.get::<_, i64>(13)? as u64,
        length: r.get::<_, i64>(14)? as u64,
        ranges: decode_ranges(&ranges),
        medium_sample: r.get(16)?,
        uid: r.get(17)?,
        path: r.get(18)?,
    })
}

/// A token to be inserted (the hashes are filled in once it is encoded).
pub struct New<'a> {
    pub key: &'a [u8],
    pub group: u64,
    pub rod_type: u32,
    pub created_ns: i64,
    pub expires_ns: i64,
    pub inactivity_secs: u32,
    pub slot: u32,
    pub ino: u64,
    pub source_size: u64,
    pub length: u64,
    pub ranges: &'a [Range],
    pub medium_sample: Option<&'a str>,
    pub uid: u32,
    pub path: &'a str,
}

/// Inserts a token; `snapshot` (source inode row, chunk ranges) copies the
/// source's chunk references in the same transaction. `finish` receives the
/// new ID and returns the encoded token, whose hash is stored.
pub fn insert(
    cat: &Catalog,
    t: &New<'_>,
    snapshot: Option<(i64, Vec<(u64, u64)>)>,
    finish: impl FnOnce(i64) -> Vec<u8>,
) -> Result<(i64, Vec<u8>)> {
    let mut conn = cat.conn();
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO tokens (key_hash, token_hash, grp, rod_type, created_ns, expires_ns, inactivity_secs,
                                 last_used_ns, state, slot, ino, generation, source_size, length, ranges,
                                 medium_sample, uid, path)
             VALUES (?1, x'', ?2, ?3, ?4, ?5, ?6, ?4, 'valid', ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            &sha256(t.key)[..],
            t.group as i64,
            t.rod_type,
            t.created_ns,
            t.expires_ns,
            t.inactivity_secs,
            t.slot,
            t.ino as i64,
            t.source_size as i64,
            t.length as i64,
            encode_ranges(t.ranges),
            t.medium_sample,
            t.uid,
            t.path
        ],
    )?;
    let id = tx.last_insert_rowid();
    if let Some((src_ino, spans)) = snapshot {
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO token_chunks (token, idx, hash, len)
             SELECT ?1, idx, hash, len FROM extents WHERE ino = ?2 AND idx BETWEEN ?3 AND ?4",
        )?;
        for (a, b) in spans {
            st.execute(params![id, src_ino, a as i64, b as i64])?;
        }
    }
    let bytes = finish(id);
    tx.execute(
        "UPDATE tokens SET token_hash = ?2 WHERE id = ?1",
        params![id, &sha256(&bytes)[..]],
    )?;
    tx.commit()?;
    Ok((id, bytes))
}

/// Finds a token by its key R.
pub fn by_key(cat: &Catalog, key: &[u8]) -> Result<Option<Row>> {
    Ok(cat
        .conn()
        .query_row(
            &format!("SELECT {COLS} FROM tokens WHERE key_hash = ?1"),
            [&sha256(key)[..]],
            row,
        )
        .optional()?)
}

pub fn by_id(cat: &Catalog, id: i64) -> Result<Option<Row>> {
    Ok(cat
        .conn()
        .query_row(
            &format!("SELECT {COLS} FROM tokens WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

/// Every token (of `uid`, unless `None`), newest first.
pub fn list(cat: &Catalog, uid: Option<u32>) -> Result<Vec<Row>> {
    let conn = cat.conn();
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM tokens WHERE ?1 IS NULL OR uid = ?1 ORDER BY id DESC"
    ))?;
    let rows = st.query_map([uid], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The snapshot of a persistent token: chunk number → (hash, length).
pub fn snapshot(cat: &Catalog, id: i64) -> Result<std::collections::BTreeMap<u64, (Hash, u32)>> {
    let conn = cat.conn();
    let mut st = conn.prepare_cached("SELECT idx, hash, len FROM token_chunks WHERE token = ?1")?;
    let rows = st.query_map([id], |r| {
        let h: Vec<u8> = r.get(1)?;
        Ok((r.get::<_, i64>(0)? as u64, h, r.get::<_, u32>(2)?))
    })?;
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        let (idx, h, len) = r?;
        let h: Hash = h
            .try_into()
            .map_err(|_| Error::new(ErrorKind::Corrupt, "token snapshot with a bad hash"))?;
        out.insert(idx, (h, len));
    }
    Ok(out)
}

pub fn touch(cat: &Catalog, id: i64, now: i64) -> Result<()> {
    cat.conn().execute(
        "UPDATE tokens SET last_used_ns = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// Moves a valid token to `state` (revoked or expired) with a reason and
/// releases its snapshot. Returns false if it was not valid.
pub fn end(cat: &Catalog, id: i64, state: &str, reason: &str) -> Result<bool> {
    let mut conn = cat.conn();
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE tokens SET state = ?2, reason = ?3 WHERE id = ?1 AND state = 'valid'",
        params![id, state, reason],
    )?;
    tx.execute("DELETE FROM token_chunks WHERE token = ?1", [id])?;
    tx.commit()?;
    Ok(n > 0)
}

/// Valid tokens past their expiry or inactivity deadline at `now`.
pub fn due(cat: &Catalog, now: i64) -> Result<Vec<i64>> {
    let conn = cat.conn();
    let mut st = conn.prepare_cached(
        "SELECT id FROM tokens WHERE state = 'valid'
           AND (expires_ns <= ?1 OR last_used_ns + inactivity_secs * 1000000000 <= ?1)",
    )?;
    let rows = st.query_map([now], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Valid change-vulnerable tokens, to watch their sources again at startup.
pub fn watched(cat: &Catalog, rod_type: u32) -> Result<Vec<Row>> {
    let conn = cat.conn();
    let mut st = conn.prepare(&format!(
        "SELECT {COLS} FROM tokens WHERE state = 'valid' AND rod_type = ?1"
    ))?;
    let rows = st.query_map([rod_type], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_roundtrip_and_ct_eq() {
        let r = vec![
            Range {
                offset: 0,
                length: 512,
            },
            Range {
                offset: 1 << 40,
                length: 7,
            },
        ];
        assert_eq!(decode_ranges(&encode_ranges(&r)), r);
        let a = [1u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn insert_find_end() {
        let d = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&d.path().join("c.db")).unwrap();
        let ranges = [Range {
            offset: 0,
            length: 100,
        }];
        let t = New {
            key: b"0123456789abcdef0123456789abcdef",
            group: 9,
            rod_type: 0x0080_0003,
            created_ns: 10,
            expires_ns: 1_000_000_000_000,
            inactivity_secs: 60,
            slot: 1,
            ino: 2,
            source_size: 100,
            length: 100,
            ranges: &ranges,
            medium_sample: None,
            uid: 0,
            path: "/x",
        };
        let (id, bytes) = insert(&cat, &t, None, |id| format!("token {id}").into_bytes()).unwrap();
        let row = by_key(&cat, t.key).unwrap().unwrap();
        assert_eq!(row.id, id);
        assert!(ct_eq(&row.token_hash, &sha256(&bytes)));
        assert_eq!(row.ranges, ranges);
        assert!(by_key(&cat, b"nope").unwrap().is_none());
        assert_eq!(due(&cat, 11).unwrap(), Vec::<i64>::new());
        assert_eq!(due(&cat, 61_000_000_000).unwrap(), vec![id], "inactive");
        assert!(end(&cat, id, "revoked", "test").unwrap());
        assert!(!end(&cat, id, "expired", "again").unwrap());
        let row = by_id(&cat, id).unwrap().unwrap();
        assert_eq!(row.state, "revoked");
        assert_eq!(row.info().rod, "persistent");
    }
}
