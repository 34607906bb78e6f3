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
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{self, AssertUnwindSafe};

use zip::DateTime;
use zip::read::{ZipArchive, ZipFileEntry};
use zip::result::ZipError;

use super::index::{ArchiveIndex, Data, IndexBuilder, Member, Meta, NodeKind, ReadAt};
use crate::error::{Error, Result};

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
        *at = dir_start;
        let entry = directory.entry(i).map_err(|e| {
            Error::corrupt(
                label,
                dir_start,
                format!("central directory entry {i}: {e}"),
            )
        })?;
        *at = entry.central_header_start();
        ix.member(&entry)?;
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
            .or_else(|| entry.last_modified().and_then(dos_mtime))
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
/// attributes. Others get the usual defaults, read-only if DOS says so.
fn perm(host: u8, attrs: u32, kind: NodeKind) -> u16 {
    let mode = attrs >> 16;
    if host == HOST_UNIX && mode != 0 {
        return (mode & 0o7777) as u16;
    }
    let mut perm = if kind == NodeKind::Dir { 0o755 } else { 0o644 };
    if attrs & DOS_READ_ONLY != 0 {
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

/// A `Read + Seek` view of a medium that keeps the bytes around the last
/// read, for the crate (which needs a stream) and for the small header reads
/// done here.
struct Window<'a> {
    medium: &'a dyn ReadAt,
    buf: Vec<u8>,
    /// Medium offset of `buf[0]`.
    start: u64,
    capacity: usize,
    /// Stream position for `Read` and `Seek`.
    pos: u64,
}

impl<'a> Window<'a> {
    fn new(medium: &'a dyn ReadAt, capacity: usize) -> Self {
        Window {
            medium,
            buf: Vec::new(),
            start: 0,
            capacity,
            pos: 0,
        }
    }

    /// Reads up to `out.len()` bytes at `offset`; 0 only at the end.
    fn read_at(&mut self, out: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.holds(offset) {
            if out.len() >= self.capacity {
                return self.medium.read_at(out, offset);
            }
            self.fill(offset)?;
        }
        // `holds` (checked or just made true by `fill`) bounds the index.
        let Some(skip) = offset
            .checked_sub(self.start)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s < self.buf.len())
        else {
            return Ok(0);
        };
        let n = out.len().min(self.buf.len() - skip);
        out[..n].copy_from_slice(&self.buf[skip..skip + n]);
        Ok(n)
    }

    fn read_exact_at(&mut self, mut out: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !out.is_empty() {
            match self.read_at(out, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    out = &mut out[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn holds(&self, offset: u64) -> bool {
        offset >= self.start && offset - self.start < self.buf.len() as u64
    }

    /// Loads the window with the bytes from `offset` on (fewer at the end).
    fn fill(&mut self, offset: u64) -> io::Result<()> {
        self.start = offset;
        self.buf.clear();
        if offset >= self.medium.size() {
            return Ok(());
        }
        self.buf.resize(self.capacity, 0);
        let mut len = 0;
        while len < self.capacity {
            match self
                .medium
                .read_at(&mut self.buf[len..], offset + len as u64)
            {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
        self.buf.truncate(len);
        Ok(())
    }
}

impl Read for Window<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(out, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.medium.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        self.pos = pos;
        Ok(pos)
    }
}
