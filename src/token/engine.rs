//! The offload engine: offload read (populate a token), offload write
//! (redeem it into a destination), revoke, list and limits.
//!
//! The initiator (`tokenctl`, or any client of the control socket) only ever
//! holds tokens; the bytes move inside the daemon, by reference where chunks
//! can be shared ([`crate::fs::copy`]).
//!
//! **Point in time.** A persistent token of a native file holds a snapshot:
//! the source's chunk references at populate time, counted like extents, so
//! later writes, truncates and deletes of the source do not change what the
//! token copies. A persistent token of an archive member needs no snapshot
//! (archives never change while attached); it records the medium's identity
//! and is refused if the medium was replaced. A change-vulnerable token
//! holds nothing: an overlapping write, truncate or punch revokes it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::format::{self, ROD_CHANGE_VULNERABLE, ROD_PERSISTENT, Range, Token};
use super::store::{self, New, Row, TokenInfo};
use super::subtoken::{self, Recombined};
use crate::error::{Error, ErrorKind, Result, err};
use crate::fs::Core;
use crate::fs::copy::{self, Live, Source};
use crate::fs::ops::{OpenFile, Shared};
use crate::fs::perm::{self, Caller};
use crate::fs::resolve;
use crate::fs::types::{Ctx, OpenFlags, Timespec};
use crate::store::catalog::Catalog;
use crate::store::chunks::ChunkStore;
use crate::store::treehash::{Hash, LEAF};
use crate::volume::native::file::Env;

const LEAF64: u64 = LEAF as u64;
/// Offsets and lengths are in units of this (the T10 logical block).
pub const BLOCK: u64 = 512;

/// The limits of this provider, after ODX's DEVICE_COPY_OFFLOAD_DESCRIPTOR.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub maximum_token_lifetime_secs: u64,
    pub default_token_lifetime_secs: u64,
    pub default_inactivity_timeout_secs: u32,
    pub maximum_data_descriptors: usize,
    pub maximum_transfer_size: u64,
    pub optimal_transfer_count: u64,
    pub maximum_transfer_length_per_descriptor: u64,
    pub optimal_transfer_length_per_descriptor: u64,
    pub optimal_transfer_length_granularity: u64,
    pub block_size: u64,
    pub maximum_subtokens: usize,
    pub subtoken_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            maximum_token_lifetime_secs: 86_400,
            default_token_lifetime_secs: 3_600,
            default_inactivity_timeout_secs: 600,
            maximum_data_descriptors: format::MAX_RANGES,
            maximum_transfer_size: 64 << 30,
            optimal_transfer_count: 16 << 30,
            maximum_transfer_length_per_descriptor: 64 << 30,
            optimal_transfer_length_per_descriptor: 16 << 30,
            optimal_transfer_length_granularity: LEAF64,
            block_size: BLOCK,
            maximum_subtokens: subtoken::MAX_SUBTOKENS,
            subtoken_size: subtoken::SUBTOKEN,
        }
    }
}

/// ROD type names on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Rod {
    #[default]
    Persistent,
    ChangeVulnerable,
}

/// An offload read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadRequest {
    pub path: String,
    /// Ranges of the file; empty for the whole file.
    #[serde(default)]
    pub ranges: Vec<Range>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub rod: Rod,
    #[serde(default)]
    pub max_subtokens: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadResult {
    /// The token file (subtokens concatenated), hex-encoded.
    pub token: String,
    pub length: u64,
    pub requested: u64,
    pub subtokens: usize,
    pub rod: String,
    pub expires: String,
}

/// An offload write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteRequest {
    pub token: String,
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub token_offset: u64,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub delete_token: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResult {
    pub written: u64,
    /// Of which moved by sharing chunks, without copying data.
    pub shared: u64,
    /// Bytes of the token left after this write (the caller loops).
    pub remaining: u64,
}

/// Change-vulnerable tokens (ID, ranges) by the inode row they watch.
type Watches = HashMap<i64, Vec<(i64, Vec<Range>)>>;

/// Kernel cache invalidation for files changed behind the kernel's back.
pub type InodeInvalidator = Box<dyn Fn(u64) + Send + Sync>;

/// The offload engine of one daemon.
pub struct Offload {
    core: Arc<Core>,
    catalog: Arc<Catalog>,
    store: Arc<ChunkStore>,
    provider: [u8; format::P_LEN],
    address: String,
    mountpoint: PathBuf,
    limits: Limits,
    /// Change-vulnerable tokens by source inode row.
    watches: Mutex<Watches>,
    env: Arc<Env>,
    invalidate: parking_lot::RwLock<Option<InodeInvalidator>>,
}

fn now() -> i64 {
    Timespec::now().as_nanos()
}

fn ctx_of(c: &Caller) -> Ctx {
    Ctx {
        uid: c.uid,
        gid: c.gid,
        pid: c.pid,
    }
}

fn hexdecode(s: &str) -> Result<Vec<u8>> {
    hex::decode(s.trim())
        .map_err(|_| Error::new(ErrorKind::TokenInvalidLength, "the token is not valid hex"))
}

/// A persistent token's snapshot of a native file, as a transfer source.
struct Snapshot {
    /// For pins; the data is read through `access`.
    store: Arc<ChunkStore>,
    access: Arc<dyn crate::store::access::ChunkAccess>,
    chunks: BTreeMap<u64, (Hash, u32)>,
    size: u64,
}

impl Snapshot {
    /// Fills `out` from `off` (as much of it as the snapshot holds; holes
    /// and the part of a chunk past its length read as zeros). Returns the
    /// bytes filled.
    fn fill(&self, off: u64, out: &mut [u8]) -> Result<usize> {
        if off >= self.size {
            return Ok(0);
        }
        let end = (off + out.len() as u64).min(self.size);
        let out = &mut out[..(end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / LEAF64;
            let a = (pos - idx * LEAF64) as usize;
            let b = ((end - idx * LEAF64).min(LEAF64)) as usize;
            let at = (pos - off) as usize;
            let piece = &mut out[at..at + b - a];
            let stored = match self.chunks.get(&idx) {
                Some((h, l)) => {
                    let stop = b.min(*l as usize).max(a);
                    self.access.read(h, a, &mut piece[..stop - a])?;
                    stop - a
                }
                None => 0,
            };
            piece[stored..].fill(0);
            pos = idx * LEAF64 + b as u64;
        }
        Ok(out.len())
    }
}

impl Source for Snapshot {
    fn read(&self, off: u64, len: u32, out: &mut Vec<u8>) -> Result<()> {
        let n = u64::from(len).min(self.size.saturating_sub(off)) as usize;
        crate::fs::ops::len_for_overwrite(out, n);
        self.fill(off, out)?;
        Ok(())
    }

    fn read_into(&self, off: u64, buf: &mut [u8], _scratch: &mut Vec<u8>) -> Result<usize> {
        self.fill(off, buf)
    }

    fn extent_at(&self, off: u64) -> Result<Option<Shared>> {
        if !off.is_multiple_of(LEAF64) || off >= self.size {
            return Ok(None);
        }
        let idx = off / LEAF64;
        let len = (self.size - off).min(LEAF64) as u32;
        Ok(Some(match self.chunks.get(&idx) {
            Some((h, l)) => Shared {
                hash: Some(*h),
                len: *l,
                pin: Some(self.store.pin(*h)),
            },
            None => Shared {
                hash: None,
                len,
                pin: None,
            },
        }))
    }
}

/// Checks offsets and lengths: multiples of 512, except a length that ends
/// exactly at the end of the file.
fn check_aligned(what: &str, off: u64, len: u64, size: u64) -> Result<()> {
    if !off.is_multiple_of(BLOCK) {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{what}: offset {off} is not a multiple of {BLOCK}"),
        ));
    }
    if !len.is_multiple_of(BLOCK) && off + len != size {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{what}: length {len} is not a multiple of {BLOCK} and does not end at the end of the file"
            ),
        ));
    }
    Ok(())
}

impl Offload {
    pub fn new(
        core: Arc<Core>,
        env: Arc<Env>,
        address: String,
        mountpoint: PathBuf,
        lifetimes: &crate::config::TokenConfig,
    ) -> Result<Arc<Self>> {
        let catalog = env.catalog.clone();
        let provider = match catalog.setting("provider_id")? {
            Some(h) => hex::decode(&h)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::new(ErrorKind::Corrupt, "catalog: bad provider_id"))?,
            None => {
                let mut p = [0u8; format::P_LEN];
                crate::util::os_random(&mut p)?;
                catalog.set_setting("provider_id", &hex::encode(p))?;
                p
            }
        };
        let me = Arc::new(Offload {
            core,
            store: env.store.clone(),
            catalog,
            provider,
            address,
            mountpoint,
            limits: Limits {
                maximum_token_lifetime_secs: lifetimes.max_ttl_secs,
                default_token_lifetime_secs: lifetimes.default_ttl_secs,
                default_inactivity_timeout_secs: lifetimes.inactivity_secs,
                ..Limits::default()
            },
            watches: Mutex::new(HashMap::new()),
            env: env.clone(),
            invalidate: parking_lot::RwLock::new(None),
        });
        let weak = Arc::downgrade(&me);
        env.watch.set_hook(Box::new(move |ino, off, len| {
            if let Some(me) = weak.upgrade() {
                me.source_changed(ino, off, len);
            }
        }));
        me.expire_due()?;
        for row in store::watched(&me.catalog, ROD_CHANGE_VULNERABLE)? {
            if let Some(src) = me.native_row_of(row.ino) {
                me.watch(src, row.id, row.ranges.clone());
            }
        }
        Ok(me)
    }

    pub fn provider(&self) -> [u8; format::P_LEN] {
        self.provider
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn set_invalidator(&self, f: InodeInvalidator) {
        *self.invalidate.write() = Some(f);
    }

    /// Starts the thread that expires tokens past their deadlines.
    pub fn start_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("fsd-tokens".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(me) = weak.upgrade() else { return };
                    if let Err(e) = me.expire_due() {
                        tracing::warn!("token expiry: {e}");
                    }
                }
            });
    }

    fn expire_due(&self) -> Result<()> {
        let due = store::due(&self.catalog, now())?;
        for id in &due {
            if store::end(&self.catalog, *id, "expired", "expired")? {
                tracing::info!(token = id, "token expired");
            }
            self.unwatch(*id);
        }
        if !due.is_empty() {
            crate::volume::native::file::collect(&self.env);
        }
        Ok(())
    }

    // ----- change-vulnerable watches -----

    fn watch(&self, ino_row: i64, token: i64, ranges: Vec<Range>) {
        let mut w = self.watches.lock();
        w.entry(ino_row).or_default().push((token, ranges));
        self.env.watch.active.store(w.len(), Ordering::Release);
    }

    fn unwatch(&self, token: i64) {
        let mut w = self.watches.lock();
        for list in w.values_mut() {
            list.retain(|(t, _)| *t != token);
        }
        w.retain(|_, l| !l.is_empty());
        self.env.watch.active.store(w.len(), Ordering::Release);
    }

    /// A watched file changed at [off, off+len): revoke the tokens whose
    /// ranges overlap.
    fn source_changed(&self, ino_row: i64, off: u64, len: u64) {
        let hit: Vec<i64> = {
            let w = self.watches.lock();
            let Some(list) = w.get(&ino_row) else { return };
            list.iter()
                .filter(|(_, ranges)| {
                    ranges
                        .iter()
                        .any(|r| off < r.offset + r.length && r.offset < off + len)
                })
                .map(|(t, _)| *t)
                .collect()
        };
        for t in hit {
            match store::end(&self.catalog, t, "revoked", "the source changed") {
                Ok(_) => {
                    tracing::info!(token = t, "change-vulnerable token revoked: source changed")
                }
                Err(e) => tracing::warn!(token = t, "revoking: {e}"),
            }
            self.unwatch(t);
        }
    }

    /// The catalog row of a native file, by its global inode number.
    fn native_row_of(&self, ino: u64) -> Option<i64> {
        let m = self.core.volume_of(ino)?;
        let fh = self
            .core
            .open(ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
            .ok()?;
        let row = self.core.handle(fh.0).ok().and_then(|h| h.file.chunk_row());
        let _ = self.core.release(fh.0);
        drop(m);
        row
    }

    // ----- paths -----

    /// Resolves `path` for `caller` as open(2) would ([`resolve::resolve`]).
    fn resolve(&self, path: &str, caller: &Caller, want: u32) -> Result<u64> {
        resolve::resolve(&self.core, &self.mountpoint, path, caller, want)
    }

    /// Opens a file of the mount and runs `f` with it; the handle counts as
    /// an open file of its volume while `f` runs.
    fn with_open<T>(
        &self,
        ino: u64,
        flags: i32,
        caller: &Caller,
        f: impl FnOnce(&dyn OpenFile) -> Result<T>,
    ) -> Result<T> {
        let (fh, _) = self.core.open(ino, OpenFlags(flags), &ctx_of(caller))?;
        let r = self.core.handle(fh).and_then(|h| f(h.file.as_ref()));
        let rel = self.core.release(fh);
        let v = r?;
        rel?;
        Ok(v)
    }

    // ----- offload read -----

    pub fn read(&self, req: &ReadRequest, caller: &Caller) -> Result<ReadResult> {
        let ttl = req
            .ttl_secs
            .unwrap_or(self.limits.default_token_lifetime_secs);
        if ttl == 0 || ttl > self.limits.maximum_token_lifetime_secs {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "--ttl must be between 1 and {} seconds",
                    self.limits.maximum_token_lifetime_secs
                ),
            ));
        }
        if req.ranges.len() > self.limits.maximum_data_descriptors {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("at most {} ranges", self.limits.maximum_data_descriptors),
            ));
        }
        let rod_type = match req.rod {
            Rod::Persistent => ROD_PERSISTENT,
            Rod::ChangeVulnerable => ROD_CHANGE_VULNERABLE,
        };
        let ino = self.resolve(&req.path, caller, perm::R)?;
        let vol = self.core.volume_of(ino).ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("{}: not a volume file", req.path),
            )
        })?;
        let slot = vol.slot;
        let vol_id = vol.info.read().id.clone();
        self.with_open(ino, libc::O_RDONLY, caller, |file| {
            // Commit pending writes so the token describes them.
            file.flush()?;
            let size = file.size()?;
            let asked: Vec<Range> = if req.ranges.is_empty() {
                vec![Range { offset: 0, length: size }]
            } else {
                req.ranges.clone()
            };
            let requested: u64 = asked.iter().map(|r| r.length).sum();
            // Clip to the file and to the transfer limit; the caller loops.
            let mut ranges = Vec::new();
            let mut total = 0u64;
            for r in &asked {
                check_aligned(&req.path, r.offset, r.length, size)?;
                let end = r.offset.saturating_add(r.length).min(size);
                if r.offset >= end {
                    continue;
                }
                let len = (end - r.offset).min(self.limits.maximum_transfer_size - total);
                if len == 0 {
                    break;
                }
                ranges.push(Range { offset: r.offset, length: len });
                total += len;
            }
            if ranges.is_empty() {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{}: nothing to represent (the ranges lie past the end of the file)", req.path),
                ));
            }
            let native = file.chunk_row();
            let sample = self.catalog.find_volume(&vol_id)?.and_then(|r| r.medium_sample);
            let created = now();
            let expires = created + (ttl as i64) * 1_000_000_000;
            let mut key = [0u8; format::KEY_LEN];
            crate::util::os_random(&mut key)?;
            let mut g = [0u8; 8];
            crate::util::os_random(&mut g)?;
            let group = u64::from_be_bytes(g);
            let mut token = Token {
                rod_type,
                created_ns: created,
                expires_ns: expires,
                inactivity_secs: self.limits.default_inactivity_timeout_secs,
                provider: self.provider,
                key,
                address: self.address.clone(),
                volume: vol_id.clone(),
                inode: ino,
                generation: 0,
                snapshot: 0,
                length: total,
                ranges: ranges.clone(),
            };
            let need = subtoken::count_for(token.encoded_len());
            if let Some(max) = req.max_subtokens
                && need > max
            {
                return Err(Error::new(
                    ErrorKind::TokenTooManySubtokens,
                    format!("this token needs {need} subtokens; --max-subtokens allows {max}"),
                ));
            }
            let snapshot = match (rod_type, native) {
                (ROD_PERSISTENT, Some(row)) => Some((
                    row,
                    ranges
                        .iter()
                        .map(|r| (r.offset / LEAF64, (r.offset + r.length - 1) / LEAF64))
                        .collect(),
                )),
                _ => None,
            };
            let rel_path = req
                .path
                .strip_prefix(&*self.mountpoint.to_string_lossy())
                .unwrap_or(&req.path)
                .to_string();
            let (id, bytes) = store::insert(
                &self.catalog,
                &New {
                    key: &key,
                    group,
                    rod_type,
                    created_ns: created,
                    expires_ns: expires,
                    inactivity_secs: token.inactivity_secs,
                    slot,
                    ino: token.inode,
                    source_size: size,
                    length: total,
                    ranges: &ranges,
                    medium_sample: sample.as_deref(),
                    uid: caller.uid,
                    path: &rel_path,
                },
                snapshot,
                |id| {
                    token.snapshot = id as u64;
                    token.encode()
                },
            )?;
            if rod_type == ROD_CHANGE_VULNERABLE
                && let Some(row) = native
            {
                self.watch(row, id, ranges.clone());
            }
            let subs = subtoken::split(&bytes, rod_type, &self.provider, group)?;
            let file_bytes: Vec<u8> = subs.iter().flatten().copied().collect();
            tracing::info!(token = id, volume = %vol_id, length = total, rod = format::rod_name(rod_type), "token created");
            Ok(ReadResult {
                token: hex::encode(file_bytes),
                length: total,
                requested,
                subtokens: subs.len(),
                rod: format::rod_name(rod_type).into(),
                expires: crate::util::fmt_utc(expires),
            })
        })
    }

    // ----- validation -----

    /// Recombines and checks a token file against the store: the distinct
    /// errors of the issue, in the order a careful provider checks them.
    fn validate(&self, token_hex: &str) -> Result<Option<(Token, Row)>> {
        let file = hexdecode(token_hex)?;
        let (bytes, rod_type, group) = match subtoken::recombine(&file, &self.provider)? {
            Recombined::Zero => return Ok(None),
            Recombined::Token {
                bytes,
                rod_type,
                group,
            } => (bytes, rod_type, group),
        };
        let token = Token::decode(&bytes)?;
        if token.provider != self.provider {
            return Err(Error::new(
                ErrorKind::TokenUnknownProvider,
                "the token comes from another provider",
            ));
        }
        if token.rod_type != rod_type {
            return Err(Error::new(
                ErrorKind::TokenInvalid,
                "the token's type disagrees with its subtokens",
            ));
        }
        let row = store::by_key(&self.catalog, &token.key)?
            .ok_or_else(|| Error::new(ErrorKind::TokenUnknown, "no such token (unknown key)"))?;
        if !store::ct_eq(&row.token_hash, &store::sha256(&bytes)) || row.group != group {
            return Err(Error::new(
                ErrorKind::TokenUnknown,
                "no such token (the token was altered)",
            ));
        }
        match row.state.as_str() {
            "revoked" => {
                return Err(Error::new(
                    ErrorKind::TokenRevoked,
                    format!(
                        "token {} was revoked ({})",
                        row.id,
                        row.reason.as_deref().unwrap_or("")
                    ),
                ));
            }
            "expired" => {
                return Err(Error::new(
                    ErrorKind::TokenExpired,
                    format!("token {} expired", row.id),
                ));
            }
            _ => {}
        }
        let t = now();
        let idle = row.last_used_ns + i64::from(row.inactivity_secs) * 1_000_000_000;
        if t >= row.expires_ns || t >= idle {
            store::end(&self.catalog, row.id, "expired", "expired")?;
            self.unwatch(row.id);
            return Err(Error::new(
                ErrorKind::TokenExpired,
                format!(
                    "token {} expired ({})",
                    row.id,
                    if t >= row.expires_ns {
                        "lifetime"
                    } else {
                        "inactivity timeout"
                    }
                ),
            ));
        }
        Ok(Some((token, row)))
    }

    // ----- offload write -----

    pub fn write(&self, req: &WriteRequest, caller: &Caller) -> Result<WriteResult> {
        // Everything about the token is checked before the destination is
        // touched, so a rejected token leaves it byte for byte unchanged.
        let valid = self.validate(&req.token)?;
        let dst = self.resolve(&req.path, caller, perm::W)?;
        if !req.offset.is_multiple_of(BLOCK) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("offset {} is not a multiple of {BLOCK}", req.offset),
            ));
        }
        let Some((_token, row)) = valid else {
            let len = req
                .length
                .ok_or_else(|| Error::new(ErrorKind::Invalid, "a zero token needs --length"))?;
            if !len.is_multiple_of(BLOCK) {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("length {len} is not a multiple of {BLOCK}"),
                ));
            }
            self.with_open(dst, libc::O_WRONLY, caller, |f| {
                // A write by anyone but root drops setuid/setgid, as
                // write(2) through the mount does.
                if len > 0 {
                    f.kill_privs(&ctx_of(caller))?;
                }
                f.zero_range(req.offset, len)?;
                f.flush()
            })?;
            self.invalidate(dst);
            return Ok(WriteResult {
                written: len,
                shared: 0,
                remaining: 0,
            });
        };
        if req.token_offset >= row.length {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "token offset {} is at or past the {} bytes the token represents",
                    req.token_offset, row.length
                ),
            ));
        }
        if !req.token_offset.is_multiple_of(BLOCK) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "token offset {} is not a multiple of {BLOCK}",
                    req.token_offset
                ),
            ));
        }
        let avail = row.length - req.token_offset;
        let want = req
            .length
            .unwrap_or(avail)
            .min(avail)
            .min(self.limits.maximum_transfer_size);
        if want == 0 {
            return Ok(WriteResult {
                written: 0,
                shared: 0,
                remaining: avail,
            });
        }
        let moved = self.with_open(dst, libc::O_WRONLY, caller, |d| {
            d.kill_privs(&ctx_of(caller))?;
            let moved = self.transfer_token(&row, req.token_offset, want, d, req.offset)?;
            d.flush()?;
            Ok(moved)
        })?;
        self.invalidate(dst);
        store::touch(&self.catalog, row.id, now())?;
        if req.delete_token {
            store::end(&self.catalog, row.id, "revoked", "deleted after use")?;
            self.unwatch(row.id);
            crate::volume::native::file::collect(&self.env);
        }
        Ok(WriteResult {
            written: moved.bytes,
            shared: moved.shared,
            remaining: avail - moved.bytes,
        })
    }

    /// Copies `len` bytes of the token's stream from `toff` to `dst` at
    /// `doff`, range by range.
    fn transfer_token(
        &self,
        row: &Row,
        toff: u64,
        len: u64,
        dst: &dyn OpenFile,
        doff: u64,
    ) -> Result<copy::Moved> {
        let live_ino = row.ino;
        let snap;
        let handle;
        let live;
        let mut live_fh = None;
        let src: &dyn Source = if row.rod_type == ROD_PERSISTENT && row.medium_sample.is_none() {
            snap = Snapshot {
                store: self.store.clone(),
                access: self.env.chunks.clone(),
                chunks: store::snapshot(&self.catalog, row.id)?,
                size: row.source_size,
            };
            // The snapshot is pinned chunk by chunk as it is used; check the
            // token is still valid now that its rows are read.
            if store::by_id(&self.catalog, row.id)?.map(|r| r.state) != Some("valid".into()) {
                return Err(Error::new(
                    ErrorKind::TokenRevoked,
                    "the token was revoked while in use",
                ));
            }
            &snap
        } else {
            // Change-vulnerable tokens and archive members read the source
            // as it is; the medium must be the one the token was made from.
            let m = self.core.by_slot(row.slot).ok_or_else(|| {
                Error::new(
                    ErrorKind::TokenRevoked,
                    "the token's source volume is not attached",
                )
            })?;
            if let Some(sample) = &row.medium_sample {
                let now_sample = self
                    .catalog
                    .find_volume(&m.info.read().id)?
                    .and_then(|r| r.medium_sample);
                if now_sample.as_ref() != Some(sample) {
                    return Err(Error::new(
                        ErrorKind::TokenRevoked,
                        "the token's source medium changed",
                    ));
                }
            }
            let (fh, _) = self
                .core
                .open(live_ino, OpenFlags(libc::O_RDONLY), &Ctx::ROOT)
                .map_err(|_| {
                    Error::new(ErrorKind::TokenRevoked, "the token's source file is gone")
                })?;
            live_fh = Some(fh);
            handle = self.core.handle(fh)?;
            live = Live(handle.file.as_ref());
            &live
        };
        let mut moved = copy::Moved::default();
        // Walk the token's stream: token offset → source ranges.
        let mut walk = || -> Result<()> {
            let mut pos = 0u64;
            for r in &row.ranges {
                let (rs, re) = (pos, pos + r.length);
                pos = re;
                let from = toff.max(rs);
                let to = (toff + len).min(re);
                if from >= to {
                    continue;
                }
                let m = copy::transfer(
                    src,
                    r.offset + (from - rs),
                    dst,
                    doff + (from - toff),
                    to - from,
                )?;
                moved.bytes += m.bytes;
                moved.shared += m.shared;
                if m.bytes < to - from {
                    break;
                }
            }
            Ok(())
        };
        let r = walk();
        if let Some(fh) = live_fh {
            let _ = self.core.release(fh);
        }
        r?;
        Ok(moved)
    }

    fn invalidate(&self, ino: u64) {
        if let Some(f) = &*self.invalidate.read() {
            f(ino);
        }
    }

    // ----- management -----

    /// Decodes a token file and reports its state (never R).
    pub fn status(&self, token_hex: &str) -> Result<TokenInfo> {
        let file = hexdecode(token_hex)?;
        let bytes = match subtoken::recombine(&file, &self.provider)? {
            Recombined::Zero => return err(ErrorKind::TokenInvalid),
            Recombined::Token { bytes, .. } => bytes,
        };
        let token = Token::decode(&bytes)?;
        let row = store::by_key(&self.catalog, &token.key)?
            .ok_or_else(|| Error::new(ErrorKind::TokenUnknown, "no such token"))?;
        Ok(row.info())
    }

    /// Revokes a token. Holding a token lets one redeem it, not end it for
    /// everyone else: only the user who populated it, or root, may revoke.
    pub fn revoke(&self, token_hex: &str, caller: &Caller) -> Result<TokenInfo> {
        let (_, row) = self.validate(token_hex)?.ok_or_else(|| {
            Error::new(ErrorKind::TokenInvalid, "the zero token cannot be revoked")
        })?;
        if caller.uid != 0 && caller.uid != row.uid {
            return Err(Error::new(
                ErrorKind::NotPermitted,
                format!(
                    "token {}: operation not permitted (populated by uid {}; only that user \
                     or root may revoke it)",
                    row.id, row.uid
                ),
            ));
        }
        store::end(&self.catalog, row.id, "revoked", "revoked by tokenctl")?;
        self.unwatch(row.id);
        crate::volume::native::file::collect(&self.env);
        let row = store::by_id(&self.catalog, row.id)?
            .ok_or_else(|| Error::kind_only(ErrorKind::TokenUnknown))?;
        Ok(row.info())
    }

    /// Tokens of the caller (all of them for root).
    pub fn list(&self, caller: &Caller) -> Result<Vec<TokenInfo>> {
        let uid = (caller.uid != 0).then_some(caller.uid);
        Ok(store::list(&self.catalog, uid)?
            .iter()
            .map(Row::info)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_rules() {
        assert!(check_aligned("f", 0, 512, 10_000).is_ok());
        assert!(check_aligned("f", 512, 9488, 10_000).is_ok(), "ends at EOF");
        assert!(check_aligned("f", 1, 512, 10_000).is_err());
        assert!(check_aligned("f", 0, 100, 10_000).is_err());
    }

    #[test]
    fn snapshot_reads_and_lends_chunks() {
        let d = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(d.path()).unwrap();
        let a: Vec<u8> = (0..LEAF).map(|i| (i % 251) as u8).collect();
        let h = *store.put(&a).unwrap().hash();
        let mut chunks = BTreeMap::new();
        chunks.insert(1u64, (h, LEAF as u32));
        let s = Snapshot {
            access: crate::store::access::HotChunks::new(store.clone()),
            store,
            chunks,
            size: 2 * LEAF64 + 10,
        };
        let mut out = Vec::new();
        s.read(LEAF64 - 2, 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, a[0], a[1]]);
        s.read(2 * LEAF64, 100, &mut out).unwrap();
        assert_eq!(out, vec![0; 10], "a hole, clipped at the size");
        assert_eq!(s.extent_at(LEAF64).unwrap().unwrap().hash, Some(h));
        assert_eq!(s.extent_at(0).unwrap().unwrap().hash, None);
        assert_eq!(s.extent_at(2 * LEAF64).unwrap().unwrap().len, 10);
        assert!(s.extent_at(5).unwrap().is_none());
    }
}
