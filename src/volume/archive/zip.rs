//! Builds an [`ArchiveIndex`] from a zip medium without extracting it.
//!
//! The `zip` crate finds the end-of-central-directory record (also behind a
//! prefix, as in self-extracting archives), follows the zip64 records and
//! decodes the central directory. The rest is read here, straight from the
//! medium: each member's local header (its length decides where the data
//! starts, and Info-ZIP keeps the owner only there), the raw central extra
//! fields, and symlink targets. Nothing but symlink targets is decompressed:
//! the index records where each member's bytes are and the volume inflates
//! them when they are read.
//!
//! Hostile input must not take the daemon down, so the crate runs under
//! `catch_unwind` and every offset taken from the medium is checked before it
//! is used.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};

use zip::DateTime;
use zip::read::{ZipArchive, ZipFileEntry};
use zip::result::ZipError;

use super::index::{ArchiveIndex, Data, IndexBuilder, Member, Meta, NodeKind};
use crate::error::{Error, Result};
use crate::medium::{ReadAt, Window};

const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
/// Fixed part of a local file header.
const LOCAL_LEN: u64 = 30;
/// Fixed part of a central directory file header.
const CENTRAL_LEN: u64 = 46;
/// Fixed part of the end-of-central-directory record.
const EOCD_LEN: u64 = 22;
/// The record sits within its own length plus the longest comment of the end.
const EOCD_SEARCH: u64 = EOCD_LEN + u16::MAX as u64;

const METHOD_STORED: u16 = 0;
const METHOD_DEFLATED: u16 = 8;
/// "Version made by" host systems (APPNOTE 4.4.2.2).
const HOST_FAT: u8 = 0;
const HOST_UNIX: u8 = 3;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
/// DOS read-only attribute, in the low byte of the external attributes.
const DOS_READ_ONLY: u32 = 0x01;

/// The longest symlink target kept (PATH_MAX): the target lives in the index,
/// so it must stay small.
const SYMLINK_MAX: u64 = 4096;
/// A deflated target of at most [`SYMLINK_MAX`] bytes never needs more than
/// this; a larger compressed size is hostile and is not read.
const SYMLINK_CSIZE_MAX: u64 = 64 * 1024;

/// Extra field ids (Info-ZIP extrafld.txt).
const EF_TIMESTAMP: u16 = 0x5455; // "UT": mtime/atime/ctime, i32 seconds
const EF_UNIX_N: u16 = 0x7875; // "ux": variable-size uid and gid
const EF_UNIX_2: u16 = 0x7855; // "Ux": 16-bit uid and gid, local header only
const EF_UNIX_1: u16 = 0x5855; // "UX": atime, mtime, then 16-bit uid and gid

/// The crate reads the central directory in small pieces; this window turns
/// them into a few large reads.
const CENTRAL_WINDOW: usize = 64 * 1024;
/// Local headers are scattered through the medium, between member data; one
/// page catches the next few headers of small members without reading far
/// into the data of large ones.
const LOCAL_WINDOW: usize = 4096;
/// Progress is reported every this many members.
const PROGRESS_EVERY: usize = 1000;

/// Whether `medium` looks like a zip archive: it starts with a local file
/// header or an empty archive's end record, or a plausible end record sits in
/// its last 64 KiB + 22 bytes (self-extracting and otherwise prefixed zips).
///
/// Other formats can hold a zip's end record near their end (a tar of a zip
/// does), so callers should test formats with a fixed magic first.
pub fn looks_like_zip(medium: &dyn ReadAt) -> bool {
    let mut head = [0u8; 4];
    if medium.read_exact_at(&mut head, 0).is_ok() && (&head == LOCAL_SIG || &head == EOCD_SIG) {
        return true;
    }
    matches!(find_eocd(medium), Ok(Some(_)))
}

/// Indexes a zip medium. `label` names the medium in errors; `implicit` is
/// the metadata of the root and implicit directories; `progress` is called
/// with the number of bytes scanned so far: the position reached in the
/// central directory, and finally the medium's size.
pub fn index_zip(
    medium: &dyn ReadAt,
    label: &str,
    implicit: Meta,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveIndex> {
    // The offset of the record being decoded, so that a panic can be reported
    // at the place that caused it.
    let mut at = 0u64;
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        index_members(medium, label, implicit, progress, &mut at)
    }));
    run.unwrap_or_else(|payload| {
        Err(Error::corrupt(
            label,
            at,
            format!("zip parser failed: {}", panic_text(&*payload)),
        ))
    })
}

/// The body of [`index_zip`]; `at` tracks the record being decoded.
fn index_members(
    medium: &dyn ReadAt,
    label: &str,
    implicit: Meta,
    progress: &mut dyn FnMut(u64),
    at: &mut u64,
) -> Result<ArchiveIndex> {
    let size = medium.size();
    *at = size.saturating_sub(EOCD_SEARCH);
    let archive = ZipArchive::new(Window::new(medium, CENTRAL_WINDOW))
        .map_err(|e| open_error(medium, label, e))?;
    let dir_start = archive.central_directory_start();
    let directory = archive.metadata();
    let mut ix = Indexer {
        label,
        size,
        central: archive.into_inner(),
        local: Window::new(medium, LOCAL_WINDOW),
        builder: IndexBuilder::new("zip", implicit.clone()),
        implicit,
        backslashes_reported: false,
        local_times: RefCell::default(),
    };
    if directory.has_duplicate_names() {
        ix.builder.warn(
            "the central directory names some members more than once; the last of each is used"
                .to_string(),
        );
    }
    progress(dir_start);
    let mut reached = dir_start;
    for i in 0..directory.len() {
        let entry = directory.entry(i).map_err(|e| {
            Error::corrupt(
                label,
                dir_start,
                format!("central directory entry {i}: {e}"),
            )
        })?;
        *at = entry.central_header_start();
        ix.member(&entry)?;
        if ix.builder.stopped() {
            break; // past the member limit: the index is refused
        }
        if (i + 1) % PROGRESS_EVERY == 0 {
            reached = reached.max(*at);
            progress(reached);
        }
    }
    progress(size);
    Ok(ix.builder.finish())
}

/// Per-archive state while members are fed to the builder.
struct Indexer<'a> {
    label: &'a str,
    /// The medium's size, which every data range must stay within.
    size: u64,
    /// Reads central directory headers (sequential).
    central: Window<'a>,
    /// Reads local headers and symlink targets (scattered).
    local: Window<'a>,
    builder: IndexBuilder,
    implicit: Meta,
    backslashes_reported: bool,
    /// DOS times already converted, by their raw date and time words:
    /// `mktime` re-reads the time zone (a stat of /etc/localtime) on every
    /// call, which was a fifth of indexing 20,000 members, and an archive's
    /// members share few distinct times.
    local_times: RefCell<HashMap<u32, Option<i64>>>,
}

/// What is read from a member's central directory header beyond what the
/// crate exposes.
struct CentralHeader {
    /// The host system from "version made by", which says how to read the
    /// external attributes.
    host: u8,
    /// The raw method number, so that unsupported methods can be named.
    method: u16,
    extra: ExtraInfo,
}

/// What is read from a member's local header.
struct LocalHeader {
    data_start: u64,
    extra: ExtraInfo,
}

impl Indexer<'_> {
    /// Decodes one central directory entry and adds (or skips) its member.
    fn member(&mut self, entry: &ZipFileEntry<'_>) -> Result<()> {
        let central = self.central_header(entry)?;
        let name = self.member_name(entry.name_raw(), central.host);
        let local = self.local_header(entry, &name)?;
        self.check_data_range(entry, &name, local.data_start)?;
        let attrs = entry.external_attributes();
        let kind = kind_of(&name, central.host, attrs);
        let meta = self.meta(entry, &central, &local, kind);
        if kind == NodeKind::Dir {
            // A directory has no data, so its method and encryption do not matter.
            self.builder.add(&name, Member::new(NodeKind::Dir, meta));
            return Ok(());
        }
        if entry.encrypted() {
            self.builder.skip(&name, "encrypted");
            return Ok(());
        }
        if central.method != METHOD_STORED && central.method != METHOD_DEFLATED {
            let why = format!(
                "compression method {} is not supported",
                method_name(central.method)
            );
            self.builder.skip(&name, &why);
            return Ok(());
        }
        if central.method == METHOD_STORED && entry.compressed_size() != entry.size() {
            return Err(self.corrupt_member(
                entry,
                &name,
                format!(
                    "stored member has a compressed size of {} bytes but a size of {}",
                    entry.compressed_size(),
                    entry.size()
                ),
            ));
        }
        if kind == NodeKind::Symlink {
            match self.symlink_target(entry, central.method, local.data_start)? {
                Ok(target) => {
                    let mut m = Member::new(NodeKind::Symlink, meta);
                    m.size = target.len() as u64;
                    m.target = target;
                    self.builder.add(&name, m);
                }
                Err(why) => self.builder.skip(&name, &why),
            }
            return Ok(());
        }
        let mut m = Member::new(NodeKind::File, meta);
        m.size = entry.size();
        m.data = match (entry.size(), central.method) {
            (0, _) => Data::None,
            (_, METHOD_STORED) => Data::Stored {
                offset: local.data_start,
            },
            _ => Data::Deflate {
                offset: local.data_start,
                csize: entry.compressed_size(),
                crc32: entry.crc32(),
            },
        };
        self.builder.add(&name, m);
        Ok(())
    }

    /// The member's name as the builder should see it. Archives made on FAT
    /// hosts sometimes separate components with backslashes; like `unzip`,
    /// they become slashes when the name has no slash at all.
    fn member_name(&mut self, raw: &[u8], host: u8) -> Vec<u8> {
        if host != HOST_FAT || !raw.contains(&b'\\') || raw.contains(&b'/') {
            return raw.to_vec();
        }
        if !self.backslashes_reported {
            self.backslashes_reported = true;
            self.builder.warn(format!(
                "{}: the archive uses backslashes as path separators; read as slashes",
                String::from_utf8_lossy(raw)
            ));
        }
        raw.iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect()
    }

    /// Reads the entry's central header again for what the crate keeps to
    /// itself: the host system, the raw method and the raw extra fields.
    fn central_header(&mut self, entry: &ZipFileEntry<'_>) -> Result<CentralHeader> {
        let at = entry.central_header_start();
        let mut fixed = [0u8; CENTRAL_LEN as usize];
        self.central
            .read_exact_at(&mut fixed, at)
            .map_err(|e| read_error(self.label, at, "central directory header", e))?;
        if &fixed[..4] != CENTRAL_SIG {
            return Err(Error::corrupt(
                self.label,
                at,
                "no central directory header signature",
            ));
        }
        let name_len = u64::from(le16(&fixed, 28));
        let extra_len = usize::from(le16(&fixed, 30));
        let mut extra = vec![0u8; extra_len];
        let extra_at = at.saturating_add(CENTRAL_LEN + name_len);
        self.central
            .read_exact_at(&mut extra, extra_at)
            .map_err(|e| read_error(self.label, extra_at, "central extra field", e))?;
        Ok(CentralHeader {
            host: fixed[5],
            method: le16(&fixed, 10),
            extra: ExtraInfo::parse(&extra),
        })
    }

    /// Reads the member's local header: where its data starts and its local
    /// extra fields.
    fn local_header(&mut self, entry: &ZipFileEntry<'_>, name: &[u8]) -> Result<LocalHeader> {
        let at = entry.header_start();
        if at.checked_add(LOCAL_LEN).is_none_or(|end| end > self.size) {
            return Err(self.corrupt_member(
                entry,
                name,
                format!(
                    "local header at offset {at} is past the end of the medium ({} bytes)",
                    self.size
                ),
            ));
        }
        let mut fixed = [0u8; LOCAL_LEN as usize];
        self.local
            .read_exact_at(&mut fixed, at)
            .map_err(|e| read_error(self.label, at, "local header", e))?;
        if &fixed[..4] != LOCAL_SIG {
            return Err(self.corrupt_member(
                entry,
                name,
                format!("no local header signature at offset {at}"),
            ));
        }
        let name_len = u64::from(le16(&fixed, 26));
        let extra_len = le16(&fixed, 28);
        let extra_at = at + LOCAL_LEN + name_len;
        let data_start = extra_at + u64::from(extra_len);
        if data_start > self.size {
            return Err(self.corrupt_member(
                entry,
                name,
                format!(
                    "local header at offset {at} runs to offset {data_start}, past the end of the medium ({} bytes)",
                    self.size
                ),
            ));
        }
        let mut extra = vec![0u8; usize::from(extra_len)];
        self.local
            .read_exact_at(&mut extra, extra_at)
            .map_err(|e| read_error(self.label, extra_at, "local extra field", e))?;
        Ok(LocalHeader {
            data_start,
            extra: ExtraInfo::parse(&extra),
        })
    }

    /// Fails unless `[data_start, data_start + compressed size)` lies within
    /// the medium, so that reads of the member can never run off its end.
    fn check_data_range(
        &self,
        entry: &ZipFileEntry<'_>,
        name: &[u8],
        data_start: u64,
    ) -> Result<()> {
        let csize = entry.compressed_size();
        match data_start.checked_add(csize) {
            Some(end) if end <= self.size => Ok(()),
            end => Err(self.corrupt_member(
                entry,
                name,
                format!(
                    "data at offset {data_start} of {csize} bytes ends at {}, past the end of the medium ({} bytes)",
                    end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string()),
                    self.size
                ),
            )),
        }
    }

    /// [`dos_mtime`], remembered per distinct DOS time.
    fn local_mtime(&self, dt: DateTime) -> Option<i64> {
        let key = (u32::from(dt.datepart()) << 16) | u32::from(dt.timepart());
        *self
            .local_times
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| dos_mtime(dt))
    }

    /// The member's permissions, owner and mtime.
    fn meta(
        &self,
        entry: &ZipFileEntry<'_>,
        central: &CentralHeader,
        local: &LocalHeader,
        kind: NodeKind,
    ) -> Meta {
        // unzip reads the local extra fields; the central copy is the fallback.
        let extra = local.extra.or(&central.extra);
        let (uid, gid) = extra
            .ids
            .or(extra.old_ids)
            .unwrap_or((self.implicit.uid, self.implicit.gid));
        let mtime = extra
            .mtime
            .or(extra.old_mtime)
            .or_else(|| entry.last_modified().and_then(|dt| self.local_mtime(dt)))
            .unwrap_or(self.implicit.mtime);
        Meta {
            perm: perm(central.host, entry.external_attributes(), kind),
            uid,
            gid,
            mtime,
            mtime_nsec: 0,
        }
    }

    /// Reads and checks a symlink's target. The outer error is an I/O
    /// failure; the inner one is why the member is skipped.
    fn symlink_target(
        &mut self,
        entry: &ZipFileEntry<'_>,
        method: u16,
        data_start: u64,
    ) -> Result<Result<Vec<u8>, String>> {
        let (size, csize) = (entry.size(), entry.compressed_size());
        if size == 0 {
            return Ok(Err("symlink with an empty target".to_string()));
        }
        if size > SYMLINK_MAX {
            return Ok(Err(format!(
                "symlink target of {size} bytes is longer than {SYMLINK_MAX}"
            )));
        }
        if csize > SYMLINK_CSIZE_MAX {
            return Ok(Err(format!(
                "symlink target compressed to {csize} bytes is implausibly large"
            )));
        }
        // csize <= SYMLINK_CSIZE_MAX, so it fits in usize.
        let mut raw = vec![0u8; csize as usize];
        self.local
            .read_exact_at(&mut raw, data_start)
            .map_err(|e| read_error(self.label, data_start, "symlink target", e))?;
        let target = if method == METHOD_STORED {
            raw
        } else {
            let mut out = Vec::new();
            let inflated = flate2::read::DeflateDecoder::new(raw.as_slice())
                .take(SYMLINK_MAX + 1)
                .read_to_end(&mut out);
            if let Err(e) = inflated {
                return Ok(Err(format!("symlink target does not inflate: {e}")));
            }
            out
        };
        if target.len() as u64 != size {
            return Ok(Err(format!(
                "symlink target holds {} bytes, not the recorded {size}",
                target.len()
            )));
        }
        if crc32fast::hash(&target) != entry.crc32() {
            return Ok(Err("symlink target does not match its CRC-32".to_string()));
        }
        if target.contains(&0) {
            return Ok(Err("symlink target contains a NUL byte".to_string()));
        }
        Ok(Ok(target))
    }

    /// A Corrupt error at the member's local header that names the member.
    fn corrupt_member(&self, entry: &ZipFileEntry<'_>, name: &[u8], cause: String) -> Error {
        Error::corrupt(
            self.label,
            entry.header_start(),
            format!("member {}: {cause}", String::from_utf8_lossy(name)),
        )
    }
}

/// Directories are named with a trailing slash or carry a directory mode;
/// symlinks exist only as Unix modes. Anything else is a regular file, as
/// `unzip` extracts it.
fn kind_of(name: &[u8], host: u8, attrs: u32) -> NodeKind {
    let format = if host == HOST_UNIX {
        (attrs >> 16) & S_IFMT
    } else {
        0
    };
    if name.last() == Some(&b'/') || format == S_IFDIR {
        NodeKind::Dir
    } else if format == S_IFLNK {
        NodeKind::Symlink
    } else {
        NodeKind::File
    }
}

/// Unix-made entries carry their mode in the high half of the external
/// attributes. Entries marked as made on FAT may carry one too (PKZip for
/// Unix and Python's wheel tools do this); like `unzip`, it is used when its
/// owner bits agree with the DOS attributes (readable, writable unless
/// read-only, searchable if a directory). Everything else gets 0644 / 0755,
/// read-only if DOS says so: `unzip`'s 0666 / 0777 under the usual umask 022.
fn perm(host: u8, attrs: u32, kind: NodeKind) -> u16 {
    let mode = attrs >> 16;
    if host == HOST_UNIX && mode != 0 {
        return (mode & 0o7777) as u16;
    }
    let dir = kind == NodeKind::Dir;
    let writable = attrs & DOS_READ_ONLY == 0;
    if host == HOST_FAT && mode != 0 {
        let owner = (mode >> 6) & 7;
        let want = 4 | if writable { 2 } else { 0 } | if dir { 1 } else { 0 };
        if owner == want {
            return (mode & 0o7777) as u16;
        }
    }
    let mut perm = if dir { 0o755 } else { 0o644 };
    if !writable {
        perm &= !0o222;
    }
    perm
}

/// Converts a DOS date and time, which are local time on the machine that
/// wrote the archive, in this machine's time zone as `unzip` does. `None` for
/// an invalid date.
fn dos_mtime(dt: DateTime) -> Option<i64> {
    if !dt.is_valid() {
        return None;
    }
    // SAFETY: `tm` is a plain C struct for which all zeros is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = i32::from(dt.year()) - 1900;
    tm.tm_mon = i32::from(dt.month()) - 1;
    tm.tm_mday = i32::from(dt.day());
    tm.tm_hour = i32::from(dt.hour());
    tm.tm_min = i32::from(dt.minute());
    tm.tm_sec = i32::from(dt.second());
    // Let the zone's rules decide whether daylight saving time applies.
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed `struct tm`.
    let t = unsafe { libc::mktime(&mut tm) };
    // DOS dates start in 1980, so -1 can only be mktime's error value.
    // time_t is i64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    (t != -1).then_some(t as i64)
}

/// Loads the local time zone now. [`dos_mtime`] converts with `mktime`,
/// whose first call reads `/etc/localtime` and the zone file it links to;
/// with cold caches (after boot, or on a busy host) those lookups are
/// several disk reads, about 0.9 ms here, on the path of the first zip
/// attach. The daemon calls this from its start-up prefetch thread, so the
/// reads overlap opening the catalog; a later `mktime` finds the zone loaded
/// (glibc serialises both under one lock, so it can only wait, never see a
/// half-loaded zone).
pub fn load_time_zone() {
    // POSIX; the libc crate does not declare it.
    unsafe extern "C" {
        fn tzset();
    }
    // SAFETY: tzset takes no arguments and glibc makes it thread-safe; fsd
    // never changes TZ after start.
    unsafe { tzset() }
}

/// Names a compression method for the warning that skips its member.
fn method_name(method: u16) -> String {
    let name = match method {
        1 => "shrink",
        2..=5 => "reduce",
        6 => "implode",
        9 => "deflate64",
        10 => "PKWARE DCL implode",
        12 => "bzip2",
        14 => "lzma",
        18 => "IBM TERSE",
        19 => "IBM LZ77",
        20 | 93 => "zstd",
        94 => "mp3",
        95 => "xz",
        96 => "jpeg",
        97 => "wavpack",
        98 => "ppmd",
        99 => "AES",
        _ => return method.to_string(),
    };
    format!("{method} ({name})")
}

/// What the Info-ZIP Unix extra fields of one header say. The newer fields
/// ("UT", "ux") win over the older ones ("UX", "Ux").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ExtraInfo {
    /// From "UT" (0x5455).
    mtime: Option<i64>,
    /// From "UX" (0x5855).
    old_mtime: Option<i64>,
    /// From "ux" (0x7875).
    ids: Option<(u32, u32)>,
    /// From "Ux" (0x7855) or "UX" (0x5855).
    old_ids: Option<(u32, u32)>,
}

impl ExtraInfo {
    /// Parses a header's extra field. Fields that are cut short or malformed
    /// are ignored rather than failing the member: they only refine metadata.
    fn parse(mut bytes: &[u8]) -> Self {
        let mut info = ExtraInfo::default();
        while bytes.len() >= 4 {
            let id = le16(bytes, 0);
            let len = usize::from(le16(bytes, 2));
            let Some(data) = bytes.get(4..4 + len) else {
                break;
            };
            match id {
                EF_TIMESTAMP => info.mtime = info.mtime.or(timestamp_mtime(data)),
                EF_UNIX_N => info.ids = info.ids.or(unix_n_ids(data)),
                EF_UNIX_2 if data.len() >= 4 => {
                    let ids = (u32::from(le16(data, 0)), u32::from(le16(data, 2)));
                    info.old_ids = info.old_ids.or(Some(ids));
                }
                EF_UNIX_1 if data.len() >= 8 => {
                    info.old_mtime = info.old_mtime.or(Some(i64::from(le32(data, 4) as i32)));
                    if data.len() >= 12 {
                        let ids = (u32::from(le16(data, 8)), u32::from(le16(data, 10)));
                        info.old_ids = info.old_ids.or(Some(ids));
                    }
                }
                _ => {}
            }
            bytes = &bytes[4 + len..];
        }
        info
    }

    /// Fills what `self` lacks from `other`.
    fn or(&self, other: &ExtraInfo) -> ExtraInfo {
        ExtraInfo {
            mtime: self.mtime.or(other.mtime),
            old_mtime: self.old_mtime.or(other.old_mtime),
            ids: self.ids.or(other.ids),
            old_ids: self.old_ids.or(other.old_ids),
        }
    }
}

/// The mtime of a "UT" field: a flags byte, then (if bit 0 is set) the
/// mtime as signed 32-bit seconds. The central copy has the same layout.
fn timestamp_mtime(data: &[u8]) -> Option<i64> {
    let flags = *data.first()?;
    if flags & 1 == 0 || data.len() < 5 {
        return None;
    }
    Some(i64::from(le32(data, 1) as i32))
}

/// The uid and gid of a "ux" field: version 1, then a size byte and that
/// many little-endian bytes for each id. The central copy is empty.
fn unix_n_ids(data: &[u8]) -> Option<(u32, u32)> {
    if *data.first()? != 1 {
        return None;
    }
    let (uid, rest) = sized_id(data.get(1..)?)?;
    let (gid, _) = sized_id(rest)?;
    Some((uid, gid))
}

/// Reads one size-prefixed id of a "ux" field; ids that do not fit in 32
/// bits cannot be used and make the field invalid.
fn sized_id(data: &[u8]) -> Option<(u32, &[u8])> {
    let size = usize::from(*data.first()?);
    if !(1..=8).contains(&size) {
        return None;
    }
    let bytes = data.get(1..1 + size)?;
    let value = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Some((u32::try_from(value).ok()?, &data[1 + size..]))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An end-of-central-directory record found by [`find_eocd`].
#[derive(Debug, Clone, Copy)]
struct Eocd {
    at: u64,
    cd_size: u32,
    cd_offset: u32,
}

impl Eocd {
    /// zip64 archives keep the real values in the zip64 records.
    fn is_zip64(&self) -> bool {
        self.cd_size == u32::MAX || self.cd_offset == u32::MAX
    }

    /// Whether the central directory it describes ends before the record:
    /// a prefix can move the directory later, never earlier.
    fn directory_fits(&self) -> bool {
        self.is_zip64() || u64::from(self.cd_offset) + u64::from(self.cd_size) <= self.at
    }
}

/// The end-of-central-directory records in the tail of the medium whose
/// comment fits in the medium, last first.
fn eocd_candidates(medium: &dyn ReadAt) -> io::Result<Vec<Eocd>> {
    let size = medium.size();
    if size < EOCD_LEN {
        return Ok(Vec::new());
    }
    let start = size.saturating_sub(EOCD_SEARCH);
    // The tail is at most EOCD_SEARCH bytes, so it fits in usize.
    let mut tail = vec![0u8; (size - start) as usize];
    medium.read_exact_at(&mut tail, start)?;
    let fixed = EOCD_LEN as usize;
    Ok((0..=tail.len() - fixed)
        .rev()
        .filter(|&i| &tail[i..i + 4] == EOCD_SIG)
        .filter(|&i| i + fixed + usize::from(le16(&tail, i + 20)) <= tail.len())
        .map(|i| Eocd {
            at: start + i as u64,
            cd_size: le32(&tail, i + 12),
            cd_offset: le32(&tail, i + 16),
        })
        .collect())
}

/// The last plausible end-of-central-directory record: one whose central
/// directory fits before it.
fn find_eocd(medium: &dyn ReadAt) -> io::Result<Option<Eocd>> {
    Ok(eocd_candidates(medium)?
        .into_iter()
        .find(Eocd::directory_fits))
}

/// Turns the crate's failure to open the archive into an error that names an
/// offset: that of the end record if one can be found, else the start of the
/// region where it was looked for.
fn open_error(medium: &dyn ReadAt, label: &str, e: ZipError) -> Error {
    let e = match e {
        // An OS error from the medium is an I/O failure, not a damaged archive.
        ZipError::Io(io) if io.raw_os_error().is_some() => {
            return Error::io(format!("{label}: reading the zip central directory"), io);
        }
        e => e,
    };
    let size = medium.size();
    let search_start = size.saturating_sub(EOCD_SEARCH);
    // Prefer a plausible record; else the last one, to say what is wrong with it.
    let found = find_eocd(medium).and_then(|plausible| match plausible {
        Some(eocd) => Ok(Some(eocd)),
        None => Ok(eocd_candidates(medium)?.into_iter().next()),
    });
    match found {
        Err(io) => Error::io(format!("{label}: looking for the zip end record"), io),
        Ok(None) => Error::corrupt(
            label,
            search_start,
            format!(
                "no end-of-central-directory record in the last {} bytes: not a zip archive, or a truncated one ({e})",
                size - search_start
            ),
        ),
        Ok(Some(eocd)) if !eocd.directory_fits() => Error::corrupt(
            label,
            eocd.at,
            format!(
                "the end-of-central-directory record places the central directory at offset {} ({} bytes), which runs past the record itself",
                eocd.cd_offset, eocd.cd_size
            ),
        ),
        Ok(Some(eocd)) => Error::corrupt(
            label,
            eocd.at,
            format!(
                "cannot read the central directory this end-of-central-directory record describes: {e}"
            ),
        ),
    }
}

/// A read error at `offset`: running into the end of the medium means the
/// archive is damaged, anything else is the medium's failure.
fn read_error(label: &str, offset: u64, what: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::corrupt(
            label,
            offset,
            format!("{what} is cut short by the end of the medium"),
        )
    } else {
        Error::io(format!("{label}: reading the {what} at offset {offset}"), e)
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::volume::archive::index::{Node, ROOT};
    use std::ffi::OsStr;
    use std::fs;
    use std::io::{Seek, SeekFrom};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, UNIX_EPOCH};

    /// The metadata of the medium, distinct from anything a fixture holds.
    fn implicit() -> Meta {
        Meta {
            perm: 0o755,
            uid: 4242,
            gid: 4343,
            mtime: 1_234_567_890,
            mtime_nsec: 0,
        }
    }

    // A `Vec`, not a slice: `[u8]` is unsized and cannot become a `&dyn ReadAt`.
    #[allow(clippy::ptr_arg)]
    fn index(bytes: &Vec<u8>) -> Result<ArchiveIndex> {
        index_zip(bytes, "test.zip", implicit(), &mut |_| {})
    }

    /// Runs a fixture tool, failing the test with its stderr if it fails;
    /// returns its stdout.
    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs the test tools)"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Runs a python3 script that receives `args` in sys.argv[1:]; returns
    /// what it prints.
    fn python(script: &str, args: &[&Path]) -> String {
        let out = run(Command::new("python3").arg("-c").arg(script).args(args));
        String::from_utf8(out).unwrap()
    }

    /// Info-ZIP zip, run inside `dir` so member names are relative.
    fn info_zip(dir: &Path, zip: &Path, flags: &[&str]) {
        let _ = run(Command::new("zip")
            .current_dir(dir)
            .arg("-q")
            .args(flags)
            .arg(zip)
            .arg("."));
    }

    fn lookup(idx: &ArchiveIndex, path: &[u8]) -> Option<u32> {
        let mut n = ROOT;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            n = idx.lookup(n, c)?;
        }
        Some(n)
    }

    fn node<'a>(idx: &'a ArchiveIndex, path: &str) -> &'a Node {
        let n =
            lookup(idx, path.as_bytes()).unwrap_or_else(|| panic!("{path} is not in the index"));
        &idx.nodes[n as usize]
    }

    /// Every path of the index (but the root) with its node, parents first.
    fn walk(idx: &ArchiveIndex) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        let mut todo = vec![(Vec::new(), ROOT)];
        while let Some((path, dir)) = todo.pop() {
            for e in idx.children(dir) {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                if idx.nodes[e.node as usize].kind == NodeKind::Dir {
                    todo.push((p.clone(), e.node));
                }
                out.push((p, e.node));
            }
        }
        out
    }

    /// The bytes a node's data location yields, checked against its CRC-32.
    fn contents(zip: &[u8], n: &Node) -> Vec<u8> {
        let size = n.size as usize;
        match n.data {
            Data::None => {
                assert_eq!(n.size, 0, "only empty files have no data");
                Vec::new()
            }
            Data::Stored { offset } => zip[offset as usize..offset as usize + size].to_vec(),
            Data::Deflate {
                offset,
                csize,
                crc32,
            } => {
                let raw = &zip[offset as usize..(offset + csize) as usize];
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(out.len(), size);
                assert_eq!(crc32fast::hash(&out), crc32);
                out
            }
            Data::Sparse { .. } => panic!("zip has no sparse members"),
        }
    }

    /// Extracts `zip` with unzip and checks that the index describes exactly
    /// the extracted tree: kinds, sizes, contents, modes, mtimes and symlink
    /// targets. Directories are compared only when they were members (an
    /// implicit one has the medium's metadata, unzip's has the present).
    fn compare_with_unzip(zip: &Path, idx: &ArchiveIndex) {
        let bytes = fs::read(zip).unwrap();
        let out = tempfile::tempdir().unwrap();
        let _ = run(Command::new("unzip")
            .arg("-q")
            .arg(zip)
            .arg("-d")
            .arg(out.path()));
        let mut extracted = Vec::new();
        list_tree(out.path(), out.path(), &mut extracted);
        let mut indexed: Vec<Vec<u8>> = walk(idx).into_iter().map(|(p, _)| p).collect();
        extracted.sort();
        indexed.sort();
        assert_eq!(
            indexed
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>(),
            extracted
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>()
        );
        for (path, n) in walk(idx) {
            let n = &idx.nodes[n as usize];
            let on_disk = out.path().join(OsStr::from_bytes(&path));
            let md = fs::symlink_metadata(&on_disk).unwrap();
            let what = String::from_utf8_lossy(&path);
            match n.kind {
                NodeKind::Dir => {
                    assert!(md.is_dir(), "{what}");
                    if n.meta != implicit() {
                        assert_eq!(md.mode() & 0o7777, u32::from(n.meta.perm), "{what}");
                        assert_eq!(md.mtime(), n.meta.mtime, "{what}");
                    }
                }
                NodeKind::File => {
                    assert!(md.is_file(), "{what}");
                    assert_eq!(md.len(), n.size, "{what}");
                    assert_eq!(contents(&bytes, n), fs::read(&on_disk).unwrap(), "{what}");
                    assert_eq!(md.mode() & 0o7777, u32::from(n.meta.perm), "{what}");
                    assert_eq!(md.mtime(), n.meta.mtime, "{what}");
                }
                NodeKind::Symlink => {
                    assert!(md.is_symlink(), "{what}");
                    let target = fs::read_link(&on_disk).unwrap();
                    assert_eq!(target.as_os_str().as_bytes(), n.target.as_slice(), "{what}");
                    assert_eq!(n.size, n.target.len() as u64);
                }
                k => panic!("{what}: unexpected {k:?}"),
            }
        }
    }

    fn list_tree(root: &Path, dir: &Path, out: &mut Vec<Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.push(rel);
            if e.file_type().unwrap().is_dir() {
                list_tree(root, &p, out);
            }
        }
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    /// A tree with every kind of member Info-ZIP stores: text and binary
    /// files, an empty file, modes 0644, 0755 and 0600, nested and empty
    /// directories, and symlinks to a file and to a directory.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/dir")).unwrap();
        fs::create_dir_all(root.join("emptydir")).unwrap();
        let files: [(&str, Vec<u8>, u32); 5] = [
            ("a.txt", b"hello, zip\n".repeat(200), 0o644),
            ("exec.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
            ("secret", b"s3cr3t".to_vec(), 0o600),
            ("empty", Vec::new(), 0o644),
            ("sub/dir/deep.bin", pseudo_random(100_000, 7), 0o640),
        ];
        for (i, (name, data, mode)) in files.iter().enumerate() {
            let p = root.join(name);
            fs::write(&p, data).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            set_mtime(&p, 1_500_000_000 + 1000 * i as u64 + 1);
        }
        symlink("a.txt", root.join("link")).unwrap();
        symlink("sub/dir", root.join("dirlink")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    }

    /// Deterministic bytes for fixtures and the fuzz test (xorshift64).
    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed.max(1));
        (0..len).map(|_| rng.next() as u8).collect()
    }

    use crate::util::TestRng as XorShift;

    fn assert_tree(idx: &ArchiveIndex, zip: &[u8]) {
        assert_eq!(idx.format, "zip");
        assert_eq!(
            contents(zip, node(idx, "a.txt")),
            b"hello, zip\n".repeat(200)
        );
        assert_eq!(node(idx, "exec.sh").meta.perm, 0o755);
        assert_eq!(node(idx, "secret").meta.perm, 0o600);
        assert_eq!(node(idx, "sub/dir/deep.bin").meta.perm, 0o640);
        assert_eq!(node(idx, "sub").meta.perm, 0o750);
        assert_eq!(node(idx, "sub/dir/deep.bin").meta.mtime, 1_500_004_001);
        assert_eq!(
            contents(zip, node(idx, "sub/dir/deep.bin")),
            pseudo_random(100_000, 7)
        );
        let empty = node(idx, "empty");
        assert_eq!(
            (empty.kind, empty.size, &empty.data),
            (NodeKind::File, 0, &Data::None)
        );
        assert_eq!(node(idx, "emptydir").kind, NodeKind::Dir);
        assert_eq!(node(idx, "link").kind, NodeKind::Symlink);
        assert_eq!(node(idx, "link").target, b"a.txt");
        assert_eq!(node(idx, "dirlink").target, b"sub/dir");
        assert!(idx.stats.warnings.is_empty(), "{:?}", idx.stats.warnings);
        assert_eq!(idx.stats.skipped, 0);
    }

    #[test]
    fn info_zip_deflated_tree_matches_unzip() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("t.zip");
        info_zip(&src, &zip, &["-r", "-y"]);
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert_tree(&idx, &bytes);
        assert!(
            matches!(node(&idx, "a.txt").data, Data::Deflate { .. }),
            "zip deflates text"
        );
        // The "ux" field carries the owner.
        let owner = fs::metadata(src.join("a.txt")).unwrap();
        assert_eq!(node(&idx, "a.txt").meta.uid, owner.uid());
        assert_eq!(node(&idx, "a.txt").meta.gid, owner.gid());
        compare_with_unzip(&zip, &idx);
    }

    #[test]
    fn info_zip_stored_tree_matches_unzip() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("t.zip");
        info_zip(&src, &zip, &["-r", "-y", "-0"]);
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert_tree(&idx, &bytes);
        for (path, n) in walk(&idx) {
            let n = &idx.nodes[n as usize];
            if n.kind == NodeKind::File && n.size > 0 {
                assert!(
                    matches!(n.data, Data::Stored { .. }),
                    "{}",
                    String::from_utf8_lossy(&path)
                );
            }
        }
        compare_with_unzip(&zip, &idx);
    }

    #[test]
    fn without_extra_attributes_owner_is_the_medium_s() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("t.zip");
        info_zip(&src, &zip, &["-r", "-y", "-X"]);
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        let a = node(&idx, "a.txt");
        assert_eq!((a.meta.uid, a.meta.gid), (implicit().uid, implicit().gid));
        // Without "UT" the DOS time is used: local time, two-second steps.
        assert!(
            (a.meta.mtime - 1_500_000_001).abs() <= 1,
            "{}",
            a.meta.mtime
        );
        compare_with_unzip(&zip, &idx);
    }

    /// A python zipfile fixture: `script` gets `z` (an open ZipFile), `info`
    /// (a ZipInfo factory) and `zipfile`, and may print.
    fn python_zip(zip: &Path, script: &str) -> String {
        let prelude = r#"
import sys, time, zipfile
def info(name, mode=0o100644, system=3, attr=0, date=(2021, 6, 15, 12, 34, 56),
         method=zipfile.ZIP_DEFLATED):
    zi = zipfile.ZipInfo(name, date_time=date)
    zi.create_system = system
    zi.compress_type = method
    zi.external_attr = (mode << 16) | attr
    return zi
z = zipfile.ZipFile(sys.argv[1], 'w')
"#;
        let program = format!("{prelude}{}\nz.close()\n", dedent(script));
        python(&program, &[zip])
    }

    fn dedent(s: &str) -> String {
        let indent = s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        s.lines()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
        hay.windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect()
    }

    /// The offset of the central directory header of the member `name`.
    fn central_header_of(zip: &[u8], name: &[u8]) -> usize {
        find_all(zip, CENTRAL_SIG)
            .into_iter()
            .find(|&at| {
                let len = usize::from(le16(zip, at + 28));
                zip.get(at + 46..at + 46 + len) == Some(name)
            })
            .unwrap_or_else(|| panic!("no central header for {}", String::from_utf8_lossy(name)))
    }

    fn eocd_of(zip: &[u8]) -> usize {
        *find_all(zip, EOCD_SIG).last().expect("an end record")
    }

    fn put32(zip: &mut [u8], at: usize, v: u32) {
        zip[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Fails unless `r` is a Corrupt error whose message names an offset.
    fn assert_corrupt(r: Result<ArchiveIndex>) -> String {
        let e = r.expect_err("damaged input must not index");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("test.zip: offset "), "{msg}");
        msg
    }

    #[test]
    fn python_members_match_unzip() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("p.zip");
        let printed = python_zip(
            &zip,
            r#"
            z.writestr(info('stored.txt', method=zipfile.ZIP_STORED), b'stored\n' * 10)
            z.writestr(info('deflated.sh', 0o100755), b'deflated\n' * 100)
            z.writestr(info('private', 0o100600), b'p')
            z.writestr(info('empty-stored', method=zipfile.ZIP_STORED), b'')
            z.writestr(info('empty-deflated'), b'')
            z.writestr(info('dir/', 0o40700), b'')
            z.writestr(info('dir/in.txt'), b'in dir')
            z.writestr(info('implicit/parent/f'), b'f')
            z.writestr(info('link', 0o120777), b'deflated.sh')
            z.writestr(info('stored-link', 0o120777, method=zipfile.ZIP_STORED), b'dir/in.txt')
            z.writestr(info('dos.txt', 0, system=0, attr=0x20), b'dos')
            z.writestr(info('dos-ro.txt', 0, system=0, attr=0x21), b'read-only')
            z.writestr(info('dosdir/', 0, system=0, attr=0x10), b'')
            z.writestr(info('old.txt', date=(1980, 1, 1, 0, 0, 0)), b'old')
            print(int(time.mktime((2021, 6, 15, 12, 34, 56, 0, 0, -1))))
            print(int(time.mktime((1980, 1, 1, 0, 0, 0, 0, 0, -1))))
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert!(idx.stats.warnings.is_empty(), "{:?}", idx.stats.warnings);
        let stored = node(&idx, "stored.txt");
        assert_eq!(
            stored.data,
            Data::Stored {
                offset: stored_offset(&bytes, b"stored.txt")
            }
        );
        assert_eq!(contents(&bytes, stored), b"stored\n".repeat(10));
        let deflated = node(&idx, "deflated.sh");
        assert!(matches!(deflated.data, Data::Deflate { .. }));
        assert_eq!(contents(&bytes, deflated), b"deflated\n".repeat(100));
        assert_eq!(deflated.meta.perm, 0o755);
        // The DOS time is local time, as python's mktime reads it too; each
        // distinct DOS time converts on its own (they are remembered).
        let local: Vec<i64> = printed.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(deflated.meta.mtime, local[0]);
        assert_eq!(node(&idx, "stored.txt").meta.mtime, local[0]);
        assert_eq!(node(&idx, "old.txt").meta.mtime, local[1]);
        assert_eq!(node(&idx, "private").meta.perm, 0o600);
        for empty in ["empty-stored", "empty-deflated"] {
            assert_eq!(
                (node(&idx, empty).size, &node(&idx, empty).data),
                (0, &Data::None)
            );
        }
        assert_eq!(node(&idx, "dir").meta.perm, 0o700);
        assert_eq!(node(&idx, "implicit/parent").meta, implicit());
        assert_eq!(node(&idx, "link").target, b"deflated.sh");
        assert_eq!(node(&idx, "stored-link").target, b"dir/in.txt");
        assert_eq!(node(&idx, "dos.txt").meta.perm, 0o644);
        assert_eq!(node(&idx, "dos-ro.txt").meta.perm, 0o444);
        assert_eq!(node(&idx, "dosdir").meta.perm, 0o755);
        assert_eq!(node(&idx, "dosdir").kind, NodeKind::Dir);
        compare_with_unzip(&zip, &idx);
    }

    /// Where a stored member's data starts, found independently: after its
    /// local header, name and extra field.
    fn stored_offset(zip: &[u8], name: &[u8]) -> u64 {
        let central = central_header_of(zip, name);
        let local = le32(zip, central + 42) as usize;
        (local + 30 + usize::from(le16(zip, local + 26)) + usize::from(le16(zip, local + 28)))
            as u64
    }

    /// Modes where unzip differs on purpose: it drops special bits without
    /// -K, and gives a Unix entry without a mode no permissions at all.
    #[test]
    fn special_bits_and_missing_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("p.zip");
        python_zip(
            &zip,
            r#"
            z.writestr(info('setuid', 0o104755), b'x')
            z.writestr(info('sticky/', 0o41777), b'')
            z.writestr(info('no-mode', 0, attr=0x20), b'unix host, DOS attributes only')
            z.writestr(info('no-mode-ro', 0, attr=0x21), b'and read-only')
            "#,
        );
        let idx = index(&fs::read(&zip).unwrap()).unwrap();
        assert_eq!(node(&idx, "setuid").meta.perm, 0o4755);
        assert_eq!(node(&idx, "sticky").meta.perm, 0o1777);
        assert_eq!(node(&idx, "no-mode").meta.perm, 0o644);
        assert_eq!(node(&idx, "no-mode-ro").meta.perm, 0o444);
    }

    #[test]
    fn invalid_dos_date_uses_the_medium_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("p.zip");
        python_zip(
            &zip,
            "z.writestr(info('f', date=(1980, 0, 0, 0, 0, 0)), b'x')",
        );
        let idx = index(&fs::read(&zip).unwrap()).unwrap();
        assert_eq!(node(&idx, "f").meta.mtime, implicit().mtime);
    }

    #[test]
    fn zip64_from_python_and_info_zip() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("p64.zip");
        python_zip(
            &zip,
            r#"
            for name, data, method in [('s', b'stored' * 50, zipfile.ZIP_STORED),
                                       ('d', b'deflated' * 500, zipfile.ZIP_DEFLATED),
                                       ('e', b'', zipfile.ZIP_DEFLATED)]:
                with z.open(info(name, method=method), 'w', force_zip64=True) as f:
                    f.write(data)
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let local = le32(&bytes, central_header_of(&bytes, b"d") + 42) as usize;
        let extra = local + 30 + usize::from(le16(&bytes, local + 26));
        assert_eq!(
            le16(&bytes, extra),
            0x0001,
            "a zip64 extra field comes first"
        );
        let idx = index(&bytes).unwrap();
        assert_eq!(contents(&bytes, node(&idx, "s")), b"stored".repeat(50));
        assert_eq!(contents(&bytes, node(&idx, "d")), b"deflated".repeat(500));
        assert_eq!(node(&idx, "e").size, 0);
        compare_with_unzip(&zip, &idx);

        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("i64.zip");
        info_zip(&src, &zip, &["-r", "-y", "-fz"]);
        let bytes = fs::read(&zip).unwrap();
        assert!(
            !find_all(&bytes, b"PK\x06\x06").is_empty(),
            "zip -fz writes a zip64 end record"
        );
        let idx = index(&bytes).unwrap();
        assert_tree(&idx, &bytes);
        compare_with_unzip(&zip, &idx);
    }

    #[test]
    fn many_members_use_the_zip64_end_record_and_report_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("many.zip");
        python_zip(
            &zip,
            r#"
            for i in range(70000):
                z.writestr(info('d%d/f%d' % (i % 100, i), method=zipfile.ZIP_STORED), b'%d' % i)
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let mut seen = Vec::new();
        let idx = index_zip(&bytes, "test.zip", implicit(), &mut |b| seen.push(b)).unwrap();
        assert_eq!(idx.stats.files, 70000);
        assert_eq!(contents(&bytes, node(&idx, "d99/f69999")), b"69999");
        assert!(seen.len() >= 70, "{} progress reports", seen.len());
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "progress is monotonic"
        );
        assert_eq!(seen.last(), Some(&(bytes.len() as u64)));
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join(OsStr::from_bytes(b"d\xff"))).unwrap();
        fs::write(src.join(OsStr::from_bytes(b"caf\xe9.txt")), b"latin-1").unwrap();
        fs::write(src.join(OsStr::from_bytes(b"d\xff/x\x80")), b"inside").unwrap();
        let zip = tmp.path().join("n.zip");
        info_zip(&src, &zip, &["-r"]);
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        let n = lookup(&idx, b"caf\xe9.txt").expect("raw name");
        assert_eq!(contents(&bytes, &idx.nodes[n as usize]), b"latin-1");
        let n = lookup(&idx, b"d\xff/x\x80").expect("raw names");
        assert_eq!(contents(&bytes, &idx.nodes[n as usize]), b"inside");
    }

    #[test]
    fn prefixed_zip_with_and_without_adjusted_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("t.zip");
        info_zip(&src, &zip, &["-r", "-y"]);
        let mut sfx = b"#!/bin/sh\necho not really self-extracting\nexit 0\n".to_vec();
        sfx.extend(pseudo_random(5000, 3));
        sfx.extend(fs::read(&zip).unwrap());
        let sfx_path = tmp.path().join("sfx.zip");
        fs::write(&sfx_path, &sfx).unwrap();
        assert!(looks_like_zip(&sfx));
        // Offsets relative to the zip's own start: the crate finds the shift.
        let idx = index(&sfx).unwrap();
        assert_tree(&idx, &sfx);

        let _ = run(Command::new("zip").arg("-q").arg("-A").arg(&sfx_path));
        let adjusted = fs::read(&sfx_path).unwrap();
        assert_ne!(adjusted, sfx, "zip -A rewrites the offsets");
        let idx = index(&adjusted).unwrap();
        assert_tree(&idx, &adjusted);
        compare_with_unzip(&sfx_path, &idx);
    }

    #[test]
    fn empty_zip_is_an_empty_root() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("e.zip");
        python_zip(&zip, "");
        let bytes = fs::read(&zip).unwrap();
        assert_eq!(bytes.len(), 22);
        assert!(looks_like_zip(&bytes));
        let idx = index(&bytes).unwrap();
        assert_eq!(idx.nodes.len(), 1);
        assert_eq!(idx.nodes[0].meta, implicit());
        assert_eq!(idx.stats.members, 0);
    }

    #[test]
    fn unsupported_methods_and_encryption_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("m.zip");
        python_zip(
            &zip,
            r#"
            z.writestr(info('ok'), b'fine')
            z.writestr(info('b', method=zipfile.ZIP_BZIP2), b'bzip2' * 100)
            z.writestr(info('l', method=zipfile.ZIP_LZMA), b'lzma' * 100)
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert_eq!(contents(&bytes, node(&idx, "ok")), b"fine");
        assert!(lookup(&idx, b"b").is_none() && lookup(&idx, b"l").is_none());
        assert_eq!(idx.stats.skipped, 2);
        let w = idx.stats.warnings.join("\n");
        assert!(
            w.contains("b: skipped: compression method 12 (bzip2) is not supported"),
            "{w}"
        );
        assert!(
            w.contains("l: skipped: compression method 14 (lzma) is not supported"),
            "{w}"
        );

        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("enc.zip");
        info_zip(&src, &zip, &["-r", "-P", "password"]);
        let idx = index(&fs::read(&zip).unwrap()).unwrap();
        assert!(lookup(&idx, b"a.txt").is_none());
        assert_eq!(
            node(&idx, "sub/dir").kind,
            NodeKind::Dir,
            "directories carry no data"
        );
        assert!(
            idx.stats
                .warnings
                .iter()
                .any(|w| w == "a.txt: skipped: encrypted")
        );
    }

    #[test]
    fn symlinks_that_cannot_be_kept_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("s.zip");
        python_zip(
            &zip,
            r#"
            z.writestr(info('long', 0o120777), b'x' * 5000)
            z.writestr(info('nul', 0o120777, method=zipfile.ZIP_STORED), b'a\0b')
            z.writestr(info('badcrc', 0o120777), b'target')
            z.writestr(info('empty', 0o120777), b'')
            "#,
        );
        let mut bytes = fs::read(&zip).unwrap();
        let at = central_header_of(&bytes, b"badcrc");
        let crc = le32(&bytes, at + 16);
        put32(&mut bytes, at + 16, crc ^ 1);
        let idx = index(&bytes).unwrap();
        assert_eq!(idx.nodes.len(), 1, "nothing is kept");
        let w = idx.stats.warnings.join("\n");
        assert!(
            w.contains("long: skipped: symlink target of 5000 bytes is longer than 4096"),
            "{w}"
        );
        assert!(
            w.contains("nul: skipped: symlink target contains a NUL byte"),
            "{w}"
        );
        assert!(
            w.contains("badcrc: skipped: symlink target does not match its CRC-32"),
            "{w}"
        );
        assert!(
            w.contains("empty: skipped: symlink with an empty target"),
            "{w}"
        );
    }

    #[test]
    fn backslash_separators_from_fat_hosts_become_slashes() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("w.zip");
        python_zip(
            &zip,
            r#"
            z.writestr(info('win\\sub\\file.txt', 0, system=0), b'windows')
            z.writestr(info('unix\\name', system=3), b'a backslash is a name byte on unix')
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert_eq!(contents(&bytes, node(&idx, "win/sub/file.txt")), b"windows");
        assert!(lookup(&idx, b"unix\\name").is_some());
        assert_eq!(idx.stats.warnings.len(), 1, "{:?}", idx.stats.warnings);
    }

    #[test]
    fn duplicate_names_keep_the_last_and_warn() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = tmp.path().join("d.zip");
        python_zip(
            &zip,
            r#"
            import warnings
            warnings.simplefilter('ignore')
            z.writestr(info('dup'), b'first')
            z.writestr(info('other'), b'other')
            z.writestr(info('dup'), b'second')
            "#,
        );
        let bytes = fs::read(&zip).unwrap();
        let idx = index(&bytes).unwrap();
        assert_eq!(contents(&bytes, node(&idx, "dup")), b"second");
        assert!(
            idx.stats.warnings[0].contains("more than once"),
            "{:?}",
            idx.stats.warnings
        );
    }

    /// A small zip with every kind of member, for the damage tests.
    fn sample_zip(tmp: &Path) -> Vec<u8> {
        let zip = tmp.join("sample.zip");
        python_zip(
            &zip,
            r#"
            z.writestr(info('stored', method=zipfile.ZIP_STORED), b'stored data' * 20)
            z.writestr(info('deflated'), b'deflated data' * 100)
            z.writestr(info('dir/', 0o40755), b'')
            z.writestr(info('dir/link', 0o120777), b'../stored')
            z.writestr(info('empty'), b'')
            "#,
        );
        fs::read(&zip).unwrap()
    }

    #[test]
    fn truncated_and_garbage_media_are_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = sample_zip(tmp.path());
        let half = zip[..zip.len() / 2].to_vec();
        let msg = assert_corrupt(index(&half));
        assert!(msg.contains("no end-of-central-directory record"), "{msg}");
        assert_corrupt(index(&pseudo_random(10_000, 11)));
        assert_corrupt(index(&Vec::new()));
        assert_corrupt(index(&b"PK\x03\x04".to_vec()));
        // Cut inside the central directory, keeping the end record.
        let eocd = eocd_of(&zip);
        let mut cut = zip[..eocd - 30].to_vec();
        cut.extend_from_slice(&zip[eocd..]);
        assert_corrupt(index(&cut));
    }

    #[test]
    fn central_directory_past_the_end_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut zip = sample_zip(tmp.path());
        let eocd = eocd_of(&zip);
        let past = zip.len() as u32 + 1000;
        put32(&mut zip, eocd + 16, past);
        let msg = assert_corrupt(index(&zip));
        assert!(
            msg.starts_with(&format!("test.zip: offset {eocd}: ")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("central directory at offset {past}")),
            "{msg}"
        );
    }

    #[test]
    fn local_header_past_the_end_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut zip = sample_zip(tmp.path());
        let at = central_header_of(&zip, b"deflated");
        let past = zip.len() as u32 + 100;
        put32(&mut zip, at + 42, past);
        let msg = assert_corrupt(index(&zip));
        assert!(
            msg.starts_with(&format!("test.zip: offset {past}: member deflated: ")),
            "{msg}"
        );
        assert!(msg.contains("past the end of the medium"), "{msg}");
    }

    #[test]
    fn local_header_without_signature_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut zip = sample_zip(tmp.path());
        let at = central_header_of(&zip, b"deflated");
        let local = le32(&zip, at + 42) as usize;
        zip[local] = b'X';
        let msg = assert_corrupt(index(&zip));
        assert!(
            msg.contains(&format!("no local header signature at offset {local}")),
            "{msg}"
        );
    }

    #[test]
    fn data_past_the_end_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut zip = sample_zip(tmp.path());
        let at = central_header_of(&zip, b"deflated");
        put32(&mut zip, at + 20, 0x7fff_ffff);
        let msg = assert_corrupt(index(&zip));
        assert!(msg.contains("member deflated: data at offset"), "{msg}");
        assert!(msg.contains("past the end of the medium"), "{msg}");
    }

    #[test]
    fn stored_member_with_two_sizes_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut zip = sample_zip(tmp.path());
        let at = central_header_of(&zip, b"stored");
        let csize = le32(&zip, at + 20);
        put32(&mut zip, at + 20, csize - 1);
        let msg = assert_corrupt(index(&zip));
        assert!(
            msg.contains("member stored: stored member has a compressed size"),
            "{msg}"
        );
    }

    /// Damaged media must give Ok or Err, never a panic, and an index that
    /// is returned must only point inside the medium.
    #[test]
    fn random_damage_never_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let python = sample_zip(tmp.path());
        let src = tmp.path().join("src");
        make_tree(&src);
        let zip = tmp.path().join("t.zip");
        info_zip(&src, &zip, &["-r", "-y", "-fz"]);
        let info = fs::read(&zip).unwrap();
        let mut rng = XorShift(0x5eed);
        let (mut ok, mut err) = (0, 0);
        for round in 0..4000 {
            let base = if round % 2 == 0 { &python } else { &info };
            let mut bytes = base.clone();
            let len = bytes.len() as u64;
            let tail = len - len.min(300);
            for _ in 0..1 + rng.below(8) {
                // Half the damage goes to the central directory and end records.
                let at = if rng.below(2) == 0 {
                    rng.below(len)
                } else {
                    tail + rng.below(len - tail)
                };
                bytes[at as usize] = rng.next() as u8;
            }
            if round % 10 == 0 {
                bytes.truncate(rng.below(len) as usize);
            }
            match index(&bytes) {
                Ok(idx) => {
                    ok += 1;
                    assert_within(&idx, bytes.len() as u64);
                }
                Err(e) => {
                    err += 1;
                    assert!(e.to_string().starts_with("test.zip"), "{e}");
                }
            }
        }
        assert!(ok > 100 && err > 100, "{ok} indexed, {err} rejected");
    }

    /// A medium whose reads panic, standing in for a parser bug.
    struct Panicky(u64);

    impl ReadAt for Panicky {
        fn read_at(&self, _: &mut [u8], offset: u64) -> io::Result<usize> {
            panic!("boom at {offset}");
        }
        fn size(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_panic_becomes_a_corrupt_error() {
        let e = index_zip(&Panicky(1000), "test.zip", implicit(), &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("zip parser failed: boom at"), "{e}");
    }

    fn assert_within(idx: &ArchiveIndex, len: u64) {
        for n in &idx.nodes {
            match n.data {
                Data::Stored { offset } => assert!(offset + n.size <= len),
                Data::Deflate { offset, csize, .. } => assert!(offset + csize <= len),
                _ => {}
            }
        }
    }

    #[test]
    fn detection() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(looks_like_zip(&sample_zip(tmp.path())));
        assert!(!looks_like_zip(&Vec::new()));
        assert!(!looks_like_zip(&b"PK".to_vec()));
        assert!(!looks_like_zip(&pseudo_random(100_000, 5)));
        let src = tmp.path().join("src");
        make_tree(&src);
        let tar = tmp.path().join("t.tar");
        let _ = run(Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("."));
        assert!(!looks_like_zip(&fs::read(&tar).unwrap()));
    }

    #[test]
    fn extra_fields() {
        let field = |id: u16, data: &[u8]| {
            let mut f = id.to_le_bytes().to_vec();
            f.extend((data.len() as u16).to_le_bytes());
            f.extend(data);
            f
        };
        // "UT" as in a local header (mtime and atime) and negative times.
        let ut = field(EF_TIMESTAMP, &[3, 0x10, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(ExtraInfo::parse(&ut).mtime, Some(16));
        let ut = field(EF_TIMESTAMP, &[1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(ExtraInfo::parse(&ut).mtime, Some(-1));
        assert_eq!(
            ExtraInfo::parse(&field(EF_TIMESTAMP, &[2, 1, 2, 3, 4])).mtime,
            None
        );
        // "ux" with 4-byte, 2-byte and oversized ids.
        let ux = field(EF_UNIX_N, &[1, 4, 0xe8, 3, 0, 0, 2, 0xd0, 7]);
        assert_eq!(ExtraInfo::parse(&ux).ids, Some((1000, 2000)));
        let big = field(EF_UNIX_N, &[1, 8, 0, 0, 0, 0, 1, 0, 0, 0, 1, 5]);
        assert_eq!(ExtraInfo::parse(&big).ids, None);
        assert_eq!(ExtraInfo::parse(&field(EF_UNIX_N, &[])).ids, None);
        assert_eq!(
            ExtraInfo::parse(&field(EF_UNIX_N, &[2, 1, 1, 1, 1])).ids,
            None
        );
        // "Ux" and "UX".
        assert_eq!(
            ExtraInfo::parse(&field(EF_UNIX_2, &[1, 0, 2, 0])).old_ids,
            Some((1, 2))
        );
        let old = ExtraInfo::parse(&field(EF_UNIX_1, &[0, 0, 0, 0, 9, 0, 0, 0, 3, 0, 4, 0]));
        assert_eq!((old.old_mtime, old.old_ids), (Some(9), Some((3, 4))));
        // Several fields, then one cut short: what precedes it still counts.
        let mut all = field(0xcafe, b"unknown");
        all.extend(&ux);
        all.extend(field(EF_TIMESTAMP, &[1, 5, 0, 0, 0]));
        all.extend(&EF_TIMESTAMP.to_le_bytes());
        all.extend(&[200, 0, 1]);
        let info = ExtraInfo::parse(&all);
        assert_eq!((info.mtime, info.ids), (Some(5), Some((1000, 2000))));
        // Local fields win over central ones, field by field.
        let local = ExtraInfo {
            mtime: Some(1),
            ..Default::default()
        };
        let central = ExtraInfo {
            mtime: Some(2),
            ids: Some((3, 4)),
            ..Default::default()
        };
        assert_eq!(local.or(&central).mtime, Some(1));
        assert_eq!(local.or(&central).ids, Some((3, 4)));
    }

    #[test]
    fn kinds_and_modes() {
        let unix = |mode: u32| mode << 16;
        // FAT-made entries keep a Unix mode that agrees with the DOS bits.
        assert_eq!(perm(HOST_FAT, unix(0o100666), NodeKind::File), 0o666);
        assert_eq!(perm(HOST_FAT, unix(0o100755), NodeKind::File), 0o644);
        assert_eq!(
            perm(HOST_FAT, unix(0o100444) | DOS_READ_ONLY, NodeKind::File),
            0o444
        );
        assert_eq!(
            perm(HOST_FAT, unix(0o100644) | DOS_READ_ONLY, NodeKind::File),
            0o444
        );
        assert_eq!(perm(HOST_FAT, unix(0o40775), NodeKind::Dir), 0o775);
        assert_eq!(kind_of(b"d/", HOST_UNIX, unix(0o100644)), NodeKind::Dir);
        assert_eq!(kind_of(b"d", HOST_UNIX, unix(0o40755)), NodeKind::Dir);
        assert_eq!(kind_of(b"l", HOST_UNIX, unix(0o120777)), NodeKind::Symlink);
        assert_eq!(kind_of(b"l", HOST_FAT, unix(0o120777)), NodeKind::File);
        assert_eq!(kind_of(b"f", HOST_UNIX, 0), NodeKind::File);
        assert_eq!(perm(HOST_UNIX, unix(0o104755), NodeKind::File), 0o4755);
        assert_eq!(perm(HOST_UNIX, 0, NodeKind::File), 0o644);
        assert_eq!(perm(HOST_UNIX, 1, NodeKind::Dir), 0o555);
        assert_eq!(perm(HOST_FAT, unix(0o100600) | 0x20, NodeKind::File), 0o600);
        assert_eq!(perm(HOST_FAT, 0x21, NodeKind::File), 0o444);
        assert_eq!(method_name(12), "12 (bzip2)");
        assert_eq!(method_name(77), "77");
    }

    #[test]
    fn window_reads_match_the_medium() {
        let medium = pseudo_random(50_000, 9);
        let mut w = Window::new(&medium, 4096);
        let mut rng = XorShift(77);
        for _ in 0..2000 {
            let at = rng.below(52_000);
            let len = rng.below(9000) as usize;
            let mut buf = vec![0u8; len];
            let r = w.read_exact_at(&mut buf, at);
            if at as usize + len <= medium.len() {
                r.unwrap();
                assert_eq!(buf, medium[at as usize..at as usize + len]);
            } else {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            }
        }
        assert_eq!(w.seek(SeekFrom::End(-10)).unwrap(), 49_990);
        let mut rest = Vec::new();
        w.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, medium[49_990..]);
        assert!(w.seek(SeekFrom::Current(-60_000)).is_err());
        assert_eq!(w.seek(SeekFrom::Start(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(w.read(&mut [0u8; 10]).unwrap(), 0);
    }

    /// Measures indexing 20,000 small files made by Info-ZIP; run with
    /// `cargo test --release --lib zip::tests::time_20000 -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn time_20000_small_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        for i in 0..20_000 {
            let dir = src.join(format!("d{}", i / 100));
            if i % 100 == 0 {
                fs::create_dir_all(&dir).unwrap();
            }
            fs::write(
                dir.join(format!("f{i}.txt")),
                format!("file {i}\n").repeat(i % 50),
            )
            .unwrap();
        }
        let zip = tmp.path().join("20k.zip");
        info_zip(&src, &zip, &["-r"]);
        let medium = crate::medium::MediumFile {
            file: fs::File::open(&zip).unwrap(),
            size: fs::metadata(&zip).unwrap().len(),
        };
        let start = std::time::Instant::now();
        let idx = index_zip(&medium, "20k.zip", implicit(), &mut |_| {}).unwrap();
        let took = start.elapsed();
        assert_eq!(idx.stats.files, 20_000);
        println!(
            "indexed {} members of {} bytes in {took:?}",
            idx.stats.members, medium.size
        );
    }
}
