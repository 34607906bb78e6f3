//! Builds an [`ArchiveIndex`] from a tar medium without extracting it.
//!
//! The walk over the archive is our own rather than the `tar` crate's because
//! the index must record the exact medium offset of every byte of member data,
//! including each stored run of a sparse member, and because archives come
//! from strangers: every size is checked against the medium before it is used,
//! every sum is overflow-checked, nothing is allocated on a size the input
//! claims until that size has been capped, and every step of the walk advances
//! the offset, so no input can make it panic, hang or exhaust memory.
//!
//! Decoded: v7, ustar (with the `prefix` field, and star's shorter one), GNU
//! (long names `L`/`K`, base-256 numbers, old sparse members `S` with their
//! extension blocks, dump directories `D`) and pax (`x`/`g` headers, Solaris
//! `X`, and the GNU sparse formats 0.0, 0.1 and 1.0). Naming rules are not
//! decided here: every member goes to the [`IndexBuilder`] under its raw name.
//!
//! Headers are served from a read [`Window`] so that an archive of many small
//! members costs one `pread` per window rather than one per header, while the
//! data of large members is skipped without being read.

use std::mem;

use super::index::{ArchiveIndex, Data, IndexBuilder, Member, Meta, NodeKind, Segment};
use crate::error::{Error, Result};
use crate::medium::{ReadAt, Window};

/// The tar block size: headers start, and member data is padded, on multiples of it.
const BLOCK: u64 = 512;
/// The largest GNU long name or long link name accepted. Linux paths end at
/// 4 KiB, so anything near this is an attack or damage, not a name.
const MAX_LONG_NAME: u64 = 1 << 20;
/// The largest pax extended header accepted. Larger than [`MAX_LONG_NAME`]
/// because GNU sparse maps (formats 0.0 and 0.1) and extended attributes live
/// in it.
const MAX_PAX_HEADER: u64 = 8 << 20;
/// The most bytes of extended attributes a pax global header may give every
/// member.
const MAX_GLOBAL_XATTRS: usize = 4 << 10;
/// The most entries a sparse map may have (each becomes a 24-byte segment).
const MAX_SPARSE_ENTRIES: usize = 1_000_000;
/// How far the scan advances between calls to the progress callback.
const PROGRESS_STEP: u64 = 1 << 20;
/// Bounds and starting size of the read window (see [`Source`]).
const WINDOW_MIN: usize = 8 << 10;
const WINDOW_START: usize = 64 << 10;
const WINDOW_MAX: usize = 256 << 10;

/// Indexes a tar medium. `label` names the medium in errors; `implicit` is
/// the metadata of the root and implicit directories; `progress` is called
/// with the number of bytes scanned so far.
pub fn index_tar(
    medium: &dyn ReadAt,
    label: &str,
    implicit: Meta,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveIndex> {
    let mut walker = Walker {
        label,
        win: Source::new(medium, label),
        builder: IndexBuilder::new("tar", implicit),
        global: PaxAttrs::default(),
        pending: Pending::default(),
        seen: Seen::default(),
    };
    walker.run(progress)?;
    let format = walker.seen.format();
    walker.builder.set_format(format);
    Ok(walker.builder.finish())
}

/// True if `first_block` starts with a tar header: 512 bytes, not all zero,
/// whose checksum matches (as an unsigned or, like some old writers, a signed
/// byte sum). Used to recognise tar media whatever their name.
pub fn looks_like_tar(first_block: &[u8]) -> bool {
    let Some(block) = first_block.get(..BLOCK as usize) else {
        return false;
    };
    !is_zero(block) && checksum_error(block).is_none()
}

// ---------------------------------------------------------------------------
// Header fields
// ---------------------------------------------------------------------------

/// A numeric header field: its name for messages, where it is and how long.
struct Field {
    name: &'static str,
    at: usize,
    len: usize,
}

const MODE: Field = Field {
    name: "mode",
    at: 100,
    len: 8,
};
const UID: Field = Field {
    name: "uid",
    at: 108,
    len: 8,
};
const GID: Field = Field {
    name: "gid",
    at: 116,
    len: 8,
};
const SIZE: Field = Field {
    name: "size",
    at: 124,
    len: 12,
};
const MTIME: Field = Field {
    name: "mtime",
    at: 136,
    len: 12,
};
const CHKSUM: Field = Field {
    name: "checksum",
    at: 148,
    len: 8,
};
const DEVMAJOR: Field = Field {
    name: "devmajor",
    at: 329,
    len: 8,
};
const DEVMINOR: Field = Field {
    name: "devminor",
    at: 337,
    len: 8,
};
/// Old GNU sparse members: the size of the file with its holes.
const REALSIZE: Field = Field {
    name: "GNU realsize",
    at: 483,
    len: 12,
};
/// Old GNU sparse members: four (offset, numbytes) pairs in the header, then
/// the "more in extension blocks" flag; each extension block holds 21 pairs
/// and its own flag.
const OLD_SPARSE_AT: usize = 386;
const OLD_SPARSE_IN_HEADER: usize = 4;
const OLD_EXTENDED_AT: usize = 482;
const OLD_SPARSE_IN_BLOCK: usize = 21;
const OLD_BLOCK_EXTENDED_AT: usize = 504;

/// Which header layout a block uses; it decides whether `prefix` exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V7,
    Ustar,
    Gnu,
}

/// One 512-byte header block, copied out of the window so that the window
/// can move while the header is decoded.
struct Header([u8; BLOCK as usize]);

impl Header {
    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        self.0.get(at..at + len).unwrap_or(&[])
    }

    fn field(&self, f: &Field) -> &[u8] {
        self.bytes(f.at, f.len)
    }

    fn typeflag(&self) -> u8 {
        self.0[156]
    }

    fn flavor(&self) -> Flavor {
        match self.bytes(257, 6) {
            b"ustar\0" => Flavor::Ustar,
            b"ustar " => Flavor::Gnu,
            _ => Flavor::V7,
        }
    }

    /// The name from the header alone: `prefix/name` in ustar, `name` in v7
    /// and GNU (whose bytes 345.. hold times and sparse data, not a prefix).
    fn name(&self) -> Vec<u8> {
        let name = until_nul(self.bytes(0, 100));
        if self.flavor() != Flavor::Ustar {
            return name.to_vec();
        }
        // star writes "tar\0" at the end of the block and keeps its atime and
        // ctime in the last 24 bytes of what ustar calls the prefix.
        let prefix_len = if self.bytes(508, 4) == b"tar\0" {
            131
        } else {
            155
        };
        let prefix = until_nul(self.bytes(345, prefix_len));
        if prefix.is_empty() {
            name.to_vec()
        } else {
            [prefix, b"/", name].concat()
        }
    }

    fn linkname(&self) -> Vec<u8> {
        until_nul(self.bytes(157, 100)).to_vec()
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b.get(..end).unwrap_or(b)
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&c| c == 0)
}

/// Quotes raw bytes for a message, shortened so a hostile field cannot make
/// the message huge.
fn show(b: &[u8]) -> String {
    const LIMIT: usize = 64;
    let cut = b.get(..LIMIT).unwrap_or(b);
    let more = if b.len() > LIMIT { "..." } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

/// Quotes a member name for a message.
fn show_name(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// Checks a header's checksum; returns why it is wrong, or `None`. The sum is
/// taken with the checksum field read as spaces, unsigned as POSIX says or
/// signed as some historic writers computed it.
fn checksum_error(block: &[u8]) -> Option<String> {
    let field_end = CHKSUM.at + CHKSUM.len;
    let before = block.get(..CHKSUM.at).unwrap_or(&[]);
    let after = block.get(field_end..).unwrap_or(&[]);
    let spaces = 8 * u32::from(b' ');
    // Summed in u32 slices so that the common case vectorises: this runs for
    // every header. A block holds 512 bytes, so neither sum can overflow.
    let unsigned = sum_unsigned(before) + sum_unsigned(after) + spaces;
    let stored = match parse_octal(block.get(CHKSUM.at..field_end).unwrap_or(&[])) {
        Ok(stored) => stored,
        Err(why) => return Some(format!("header checksum field: {why}")),
    };
    if stored == i128::from(unsigned) {
        return None;
    }
    let signed = sum_signed(before) + sum_signed(after) + spaces as i32;
    if stored == i128::from(signed) {
        return None;
    }
    Some(format!(
        "header checksum mismatch (stored 0o{stored:o}, computed 0o{unsigned:o})"
    ))
}

fn sum_unsigned(b: &[u8]) -> u32 {
    b.iter().map(|&x| u32::from(x)).sum()
}

fn sum_signed(b: &[u8]) -> i32 {
    b.iter().map(|&x| i32::from(x as i8)).sum()
}

/// Decodes a numeric header field: octal text, or GNU base-256 (two's
/// complement, big-endian) when the high bit of the first byte is set, which
/// is how GNU tar stores sizes over 8 GiB and negative times.
fn parse_number(field: &[u8]) -> Result<i128, String> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => parse_base256(field),
        _ => parse_octal(field),
    }
}

fn parse_base256(field: &[u8]) -> Result<i128, String> {
    // Header fields are at most 12 bytes: 95 bits of magnitude fit an i128.
    if field.len() > 15 {
        return Err(format!("base-256 field of {} bytes", field.len()));
    }
    let mut value: i128 = 0;
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 { b & 0x7f } else { b };
        value = (value << 8) | i128::from(b);
    }
    if field.first().is_some_and(|&b| b & 0x40 != 0) {
        value -= 1i128 << (8 * field.len() - 1);
    }
    Ok(value)
}

/// Octal text ended by NUL or space, with leading spaces tolerated; an empty
/// field (v7 has no device fields, some writers leave fields blank) is 0.
fn parse_octal(field: &[u8]) -> Result<i128, String> {
    let text = until_nul(field).trim_ascii();
    let mut value: i128 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("{} is not an octal number", show(field)));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(|| format!("{} is too large", show(field)))?;
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// Pax
// ---------------------------------------------------------------------------

/// One `LEN KEY=VALUE\n` record of a pax header, with its medium offset so
/// that a bad value can be reported where it is.
struct PaxRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    offset: u64,
}

/// Splits the data of a pax header (read from medium offset `base`) into
/// records. The framing is validated strictly: `LEN` must be decimal, count
/// the whole record and land on a newline. Trailing NUL padding is tolerated.
fn parse_pax_records(data: &[u8], base: u64) -> Result<Vec<PaxRecord>, (u64, String)> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
        let at = base + pos as u64;
        if is_zero(rest) {
            break;
        }
        let record = pax_record_at(rest).map_err(|why| (at, format!("pax record: {why}")))?;
        let len = record.0;
        let (key, value) = record.1;
        if is_used(key) {
            records.push(PaxRecord {
                key: key.to_vec(),
                value: value.to_vec(),
                offset: at,
            });
        }
        pos += len;
    }
    Ok(records)
}

/// Whether [`PaxAttrs::apply`] looks at records with this key. Others (atime,
/// ctime, uname, gname, comment, charset, ...) are validated but not kept:
/// GNU tar writes three times per member, and copying them would cost more
/// than the rest of the member.
fn is_used(key: &[u8]) -> bool {
    matches!(
        key,
        b"path" | b"linkpath" | b"size" | b"uid" | b"gid" | b"mtime"
    ) || key.starts_with(b"SCHILY.xattr.")
        || key.starts_with(b"GNU.sparse.")
}

/// Decodes the record at the start of `rest`: its length and key and value.
#[allow(clippy::type_complexity)]
fn pax_record_at(rest: &[u8]) -> Result<(usize, (&[u8], &[u8])), String> {
    let space = rest
        .iter()
        .take(21)
        .position(|&b| b == b' ')
        .ok_or_else(|| format!("{} does not start with a length", show(rest)))?;
    let digits = rest.get(..space).unwrap_or(&[]);
    let len = decimal(digits).map_err(|why| format!("length {why}"))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > rest.len() {
        return Err(format!(
            "length {len} runs past the end of the header ({} bytes left)",
            rest.len()
        ));
    }
    let record = rest.get(..len).unwrap_or(&[]);
    // "N k=v\n": the body sits between the space and the final newline.
    let body = match record.split_last() {
        Some((b'\n', head)) if head.len() > space => head.get(space + 1..).unwrap_or(&[]),
        _ => {
            return Err(format!(
                "{} of length {len} does not end in a newline",
                show(record)
            ));
        }
    };
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .filter(|&i| i > 0)
        .ok_or_else(|| format!("{} has no KEY=VALUE", show(record)))?;
    let (key, value) = body.split_at(eq);
    Ok((len, (key, value.get(1..).unwrap_or(&[]))))
}

/// A strict unsigned decimal number (pax lengths, sizes, ids, sparse maps).
fn decimal(value: &[u8]) -> Result<u64, String> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(format!("{} is not a decimal number", show(value)));
    }
    value
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| format!("{} does not fit in 64 bits", show(value)))
}

/// A pax time: `[-]SECONDS[.FRACTION]`, as seconds and nanoseconds with the
/// nanoseconds always forward from the seconds (`-1.25` is -2 s + 750 ms).
fn pax_time(value: &[u8]) -> Result<(i64, u32), String> {
    let bad = || format!("{} is not a time", show(value));
    let (negative, body) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let mut parts = body.splitn(2, |&b| b == b'.');
    let whole = parts.next().unwrap_or(&[]);
    let frac = parts.next().unwrap_or(&[]);
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs = i64::try_from(decimal(whole).map_err(|_| bad())?).map_err(|_| bad())?;
    let nsec = (0..9).fold(0u32, |acc, i| {
        acc * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'))
    });
    if !negative {
        Ok((secs, nsec))
    } else if nsec == 0 {
        Ok((-secs, 0))
    } else {
        Ok((-secs - 1, 1_000_000_000 - nsec))
    }
}

/// The attributes pax records give a member. `None` means "use the header".
#[derive(Clone, Default)]
struct PaxAttrs {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: PaxSparse,
}

/// The `GNU.sparse.*` records of one member.
#[derive(Clone, Default)]
struct PaxSparse {
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    realsize: Option<u64>,
    numblocks: Option<u64>,
    /// Format 0.1: `GNU.sparse.map`.
    map: Option<Vec<(u64, u64)>>,
    /// Format 0.0: `GNU.sparse.offset` / `GNU.sparse.numbytes` pairs, in order.
    pairs: Vec<(u64, u64)>,
    /// Format 0.0: an offset waiting for its numbytes, and its record offset.
    open_offset: Option<(u64, u64)>,
}

impl PaxSparse {
    fn present(&self) -> bool {
        self.major.is_some()
            || self.map.is_some()
            || !self.pairs.is_empty()
            || self.numblocks.is_some()
    }

    fn apply(&mut self, key: &[u8], value: &[u8], offset: u64) -> Result<(), String> {
        match key {
            b"major" => self.major = Some(decimal(value)?),
            b"minor" => self.minor = Some(decimal(value)?),
            b"name" => self.name = Some(value.to_vec()),
            b"realsize" | b"size" => self.realsize = Some(decimal(value)?),
            b"numblocks" => self.numblocks = Some(decimal(value)?),
            b"offset" => {
                if self.open_offset.is_some() {
                    return Err("GNU.sparse.offset follows another one without a \
                                GNU.sparse.numbytes between them"
                        .into());
                }
                self.open_offset = Some((decimal(value)?, offset));
            }
            b"numbytes" => {
                let (start, _) = self
                    .open_offset
                    .take()
                    .ok_or("GNU.sparse.numbytes without a GNU.sparse.offset before it")?;
                push_entry(&mut self.pairs, (start, decimal(value)?))?;
            }
            b"map" => self.map = Some(parse_sparse_map_01(value)?),
            _ => {}
        }
        Ok(())
    }
}

impl PaxAttrs {
    /// Applies one record. An empty value deletes the keyword, so the header
    /// field applies again (POSIX); extended attributes may be empty, though.
    /// Sparse records in a global header are ignored: a sparse map describes
    /// one member's data.
    fn apply(&mut self, r: &PaxRecord, global: bool) -> Result<(), String> {
        let value = r.value.as_slice();
        let set = (!value.is_empty()).then_some(value);
        let wrap = |why: String| format!("pax record {}: {why}", String::from_utf8_lossy(&r.key));
        match r.key.as_slice() {
            b"path" => self.path = set.map(<[u8]>::to_vec),
            b"linkpath" => self.linkpath = set.map(<[u8]>::to_vec),
            b"size" => self.size = set.map(decimal).transpose().map_err(wrap)?,
            b"uid" => self.uid = set.map(pax_id).transpose().map_err(wrap)?,
            b"gid" => self.gid = set.map(pax_id).transpose().map_err(wrap)?,
            b"mtime" => self.mtime = set.map(pax_time).transpose().map_err(wrap)?,
            key => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    self.set_xattr(name, value);
                } else if let Some(k) = key.strip_prefix(b"GNU.sparse.")
                    && !global
                {
                    self.sparse.apply(k, value, r.offset).map_err(wrap)?;
                }
            }
        }
        Ok(())
    }

    fn set_xattr(&mut self, name: &[u8], value: &[u8]) {
        if name.is_empty() {
            return;
        }
        match self.xattrs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_vec(),
            None => self.xattrs.push((name.to_vec(), value.to_vec())),
        }
    }
}

fn pax_id(value: &[u8]) -> Result<u32, String> {
    let v = decimal(value)?;
    u32::try_from(v).map_err(|_| format!("{v} does not fit in 32 bits"))
}

fn push_entry(entries: &mut Vec<(u64, u64)>, entry: (u64, u64)) -> Result<(), String> {
    if entries.len() >= MAX_SPARSE_ENTRIES {
        return Err(format!(
            "sparse map has more than {MAX_SPARSE_ENTRIES} entries"
        ));
    }
    entries.push(entry);
    Ok(())
}

/// `GNU.sparse.map` (format 0.1): `offset,size,offset,size,...`.
fn parse_sparse_map_01(value: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let mut entries = Vec::new();
    if value.is_empty() {
        return Ok(entries);
    }
    let mut numbers = value.split(|&b| b == b',');
    while let Some(start) = numbers.next() {
        let len = numbers
            .next()
            .ok_or("GNU.sparse.map has an odd number of values")?;
        push_entry(&mut entries, (decimal(start)?, decimal(len)?))?;
    }
    Ok(entries)
}

/// Turns a sparse map (`(logical, len)` in archive order) into segments whose
/// data is stored back to back from medium offset `data`, and checks that the
/// map is sorted, has no overlaps, stays inside `realsize` and accounts for
/// exactly the `stored` bytes of the member. Empty runs (GNU tar ends its maps
/// with one at the real size) are checked, then dropped.
fn build_segments(
    entries: &[(u64, u64)],
    data: u64,
    stored: u64,
    realsize: u64,
) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::with_capacity(entries.len());
    let mut prev_end = 0u64;
    let mut offset = data;
    let mut total = 0u64;
    for (i, &(logical, len)) in entries.iter().enumerate() {
        if logical < prev_end {
            return Err(format!(
                "sparse map entry {i} at {logical} is before the end ({prev_end}) \
                 of the previous one"
            ));
        }
        let end = logical
            .checked_add(len)
            .filter(|&e| e <= realsize)
            .ok_or_else(|| {
                format!(
                    "sparse map entry {i} ({len} bytes at {logical}) ends beyond \
                     the real size {realsize}"
                )
            })?;
        if len > 0 {
            segments.push(Segment {
                logical,
                offset,
                len,
            });
        }
        let overflow = || "sparse map sizes overflow".to_string();
        offset = offset.checked_add(len).ok_or_else(overflow)?;
        total = total.checked_add(len).ok_or_else(overflow)?;
        prev_end = end;
    }
    if total != stored {
        return Err(format!(
            "sparse map accounts for {total} stored bytes but the member stores {stored}"
        ));
    }
    Ok(segments)
}

/// Appends the entries of an old GNU sparse array (`count` pairs of 12-byte
/// numbers at `at` in `block`), stopping at the first empty one as GNU tar does.
fn old_sparse_entries(
    block: &[u8],
    at: usize,
    count: usize,
    entries: &mut Vec<(u64, u64)>,
) -> Result<(), String> {
    for i in 0..count {
        let base = at + 24 * i;
        let offset = block.get(base..base + 12).unwrap_or(&[]);
        let numbytes = block.get(base + 12..base + 24).unwrap_or(&[]);
        if numbytes.first().is_none_or(|&b| b == 0) {
            break;
        }
        let number = |f: &[u8]| {
            parse_number(f).and_then(|v| {
                u64::try_from(v).map_err(|_| format!("sparse map value {v} is out of range"))
            })
        };
        push_entry(entries, (number(offset)?, number(numbytes)?))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading the medium
// ---------------------------------------------------------------------------

/// The medium as the walk reads it: headers and small extension data come
/// from the shared read-ahead [`Window`], in its adaptive shape (it grows
/// while most of each window is used, for many small members, and shrinks
/// while most is skipped, for large members whose data we step over), and
/// every error names the medium and the offset.
struct Source<'a> {
    win: Window<'a>,
    label: &'a str,
    size: u64,
}

impl<'a> Source<'a> {
    fn new(medium: &'a dyn ReadAt, label: &'a str) -> Self {
        let win = Window::adaptive(medium, WINDOW_MIN, WINDOW_START, WINDOW_MAX);
        Source {
            size: win.size(),
            win,
            label,
        }
    }

    /// `len` (at most [`WINDOW_MAX`]) bytes at `off`, which the caller has
    /// checked lie inside the medium.
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8]> {
        let label = self.label;
        let got = self
            .win
            .get(off, len)
            .map_err(|e| Error::io(format!("{label}: reading at offset {off}"), e))?;
        if got.len() < len {
            return Err(Error::corrupt(
                label,
                off,
                "read past the end of the medium",
            ));
        }
        Ok(got)
    }

    fn byte(&mut self, off: u64) -> Result<u8> {
        Ok(self.get(off, 1)?.first().copied().unwrap_or(0))
    }

    /// `len` bytes at `off` as an owned buffer; `len` has been capped and
    /// checked against the medium by the caller.
    fn read_owned(&mut self, off: u64, len: usize) -> Result<Vec<u8>> {
        if len <= WINDOW_MAX {
            return Ok(self.get(off, len)?.to_vec());
        }
        let mut buf = vec![0u8; len];
        self.win
            .medium()
            .read_exact_at(&mut buf, off)
            .map_err(|e| Error::io(format!("{}: reading at offset {off}", self.label), e))?;
        Ok(buf)
    }
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

/// Extension headers (`L`, `K`, `x`) seen since the last member; they apply
/// to the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    records: Vec<PaxRecord>,
    /// The sum of their sizes.
    bytes: u64,
    /// Where the first of them is, to name it if no member follows.
    first: Option<u64>,
}

/// What the walk has seen, to describe the archive's format.
#[derive(Default)]
struct Seen {
    headers: bool,
    pax: bool,
    gnu: bool,
    ustar: bool,
}

impl Seen {
    fn note(&mut self, h: &Header) {
        self.headers = true;
        match h.flavor() {
            Flavor::Gnu => self.gnu = true,
            Flavor::Ustar => self.ustar = true,
            Flavor::V7 => {}
        }
        match h.typeflag() {
            b'x' | b'X' | b'g' => self.pax = true,
            b'L' | b'K' | b'S' | b'D' | b'M' | b'V' => self.gnu = true,
            _ => {}
        }
    }

    fn format(&self) -> &'static str {
        if self.pax {
            "tar (pax)"
        } else if self.gnu {
            "tar (gnu)"
        } else if self.ustar {
            "tar (ustar)"
        } else if self.headers {
            "tar (v7)"
        } else {
            "tar"
        }
    }
}

/// What a member's type flag makes of it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    OldSparse,
    HardLink,
    Symlink,
    CharDev,
    BlockDev,
    Dir,
    Fifo,
    /// GNU dump directories (`D`), whose data lists the directory's names,
    /// and old directories written as regular files with a trailing slash:
    /// directories whose header is followed by data to step over.
    DirWithData,
    Volume,
    Continuation,
    Unknown(u8),
}

impl Kind {
    fn of(typeflag: u8, name: &[u8]) -> Kind {
        match typeflag {
            // Old archives mark directories by a trailing slash alone.
            b'0' | 0 if name.ends_with(b"/") => Kind::DirWithData,
            b'0' | 0 | b'7' => Kind::Regular,
            b'S' => Kind::OldSparse,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDev,
            b'4' => Kind::BlockDev,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'D' => Kind::DirWithData,
            b'V' => Kind::Volume,
            b'M' => Kind::Continuation,
            other => Kind::Unknown(other),
        }
    }

    /// Types for which POSIX stores no data whatever the size field says.
    fn has_no_data(self) -> bool {
        matches!(
            self,
            Kind::Symlink | Kind::CharDev | Kind::BlockDev | Kind::Dir | Kind::Fifo
        )
    }
}

/// The member being decoded: where its header is, its final name and the
/// number of bytes its data area holds.
struct At<'n> {
    header: u64,
    name: &'n [u8],
    size: u64,
}

impl At<'_> {
    /// Where the data area starts. The header lies inside the medium, so this
    /// cannot overflow.
    fn data(&self) -> u64 {
        self.header + BLOCK
    }
}

enum Step {
    Next(u64),
    End(u64),
}

struct Walker<'a> {
    label: &'a str,
    win: Source<'a>,
    builder: IndexBuilder,
    global: PaxAttrs,
    pending: Pending,
    seen: Seen,
}

impl Walker<'_> {
    fn corrupt(&self, offset: u64, cause: impl Into<String>) -> Error {
        Error::corrupt(self.label, offset, cause)
    }

    fn run(&mut self, progress: &mut dyn FnMut(u64)) -> Result<()> {
        if self.win.size == 0 {
            return Err(self.corrupt(0, "not a tar archive: the medium is empty"));
        }
        let mut off = 0u64;
        let mut next_report = PROGRESS_STEP;
        let end = loop {
            if off >= next_report {
                progress(off);
                next_report = off.saturating_add(PROGRESS_STEP);
            }
            if self.builder.stopped() {
                break off; // past the member limit: the index is refused
            }
            match self.step(off)? {
                // Every step consumes at least one block, so the walk ends.
                Step::Next(next) if next > off => off = next,
                Step::Next(_) => return Err(self.corrupt(off, "the walk did not advance")),
                Step::End(end) => break end,
            }
        };
        if let Some(at) = self.pending.first {
            self.builder.warn(format!(
                "extension header at offset {at} is not followed by a member; ignored"
            ));
        }
        progress(end);
        Ok(())
    }

    /// Decodes the header at `off` (and its data) and says where the next one is.
    fn step(&mut self, off: u64) -> Result<Step> {
        let size = self.win.size;
        let Some(remaining) = size.checked_sub(off) else {
            return Err(self.corrupt(
                off,
                format!(
                    "truncated: the medium ends at {size}, inside the padding before this header"
                ),
            ));
        };
        if remaining == 0 {
            self.builder
                .warn("archive has no end-of-archive marker".to_string());
            return Ok(Step::End(off));
        }
        if remaining < BLOCK {
            let why = if off == 0 {
                format!("not a tar archive: truncated header (the medium is only {size} bytes)")
            } else {
                format!("truncated header: the medium ends {remaining} bytes into it")
            };
            return Err(self.corrupt(off, why));
        }
        let block: [u8; BLOCK as usize] = self
            .win
            .get(off, BLOCK as usize)?
            .try_into()
            .map_err(|_| self.corrupt(off, "short header read"))?;
        if is_zero(&block) {
            return self.zero_block(off);
        }
        if let Some(why) = checksum_error(&block) {
            let why = if off == 0 {
                format!("not a tar archive: {why}")
            } else {
                why
            };
            return Err(self.corrupt(off, why));
        }
        let h = Header(block);
        self.seen.note(&h);
        let next = match h.typeflag() {
            b'L' | b'K' | b'x' | b'X' | b'g' => self.extension(&h, off)?,
            _ => self.member(&h, off)?,
        };
        Ok(Step::Next(next))
    }

    /// A zero block ends the archive. Two are the norm; one followed by the
    /// end of the medium is accepted, and one followed by anything else ends
    /// the archive too (as GNU tar does), with a warning.
    fn zero_block(&mut self, off: u64) -> Result<Step> {
        let next = off + BLOCK;
        let size = self.win.size;
        if next == size {
            return Ok(Step::End(next));
        }
        if size - next >= BLOCK && is_zero(self.win.get(next, BLOCK as usize)?) {
            return Ok(Step::End(next + BLOCK));
        }
        self.builder.warn(format!(
            "lone zero block at offset {off}; treated as the end of the archive"
        ));
        Ok(Step::End(next))
    }

    /// Checks that `size` bytes of data at `data` fit in the medium and
    /// returns the offset of the next header (after the padding).
    fn data_end(&self, at: &At, data: u64, size: u64) -> Result<u64> {
        let medium = self.win.size;
        let end = data
            .checked_add(size)
            .filter(|&e| e <= medium)
            .ok_or_else(|| {
                self.corrupt(
                    at.header,
                    format!(
                        "truncated: member {} needs {size} bytes of data at offset {data} \
                         but the medium ends at {medium}",
                        show_name(at.name)
                    ),
                )
            })?;
        end.checked_add(BLOCK - 1)
            .map(|e| e / BLOCK * BLOCK)
            .ok_or_else(|| self.corrupt(at.header, "member data ends beyond 2^64"))
    }

    /// A numeric header field of the member at `at`, converted to `T`.
    fn num<T: TryFrom<i128>>(&self, h: &Header, at: &At, f: &Field) -> Result<T> {
        let bad = |why: String| {
            self.corrupt(
                at.header,
                format!("{} field of {}: {why}", f.name, show_name(at.name)),
            )
        };
        let v = parse_number(h.field(f)).map_err(bad)?;
        T::try_from(v).map_err(|_| bad(format!("{v} is out of range")))
    }

    /// `L`, `K`, `x`/`X` and `g`: headers whose data describes the next
    /// member (or, for `g`, all following members).
    fn extension(&mut self, h: &Header, off: u64) -> Result<u64> {
        let name = h.name();
        let mut at = At {
            header: off,
            name: &name,
            size: 0,
        };
        at.size = self.num(h, &at, &SIZE)?;
        let (what, limit) = match h.typeflag() {
            b'L' => ("GNU long name", MAX_LONG_NAME),
            b'K' => ("GNU long link name", MAX_LONG_NAME),
            b'g' => ("pax global header", MAX_PAX_HEADER),
            _ => ("pax extended header", MAX_PAX_HEADER),
        };
        if at.size > limit {
            return Err(self.corrupt(
                off,
                format!(
                    "{what} of {} bytes is larger than the limit of {limit} bytes",
                    at.size
                ),
            ));
        }
        let next = self.data_end(&at, at.data(), at.size)?;
        if h.typeflag() != b'g' {
            // Each header is capped; so is their sum, or a chain of them
            // before one member could hold any amount of memory.
            self.pending.bytes = self.pending.bytes.saturating_add(at.size);
            if self.pending.bytes > MAX_PAX_HEADER {
                return Err(self.corrupt(
                    off,
                    format!(
                        "extension headers for one member add up to more than \
                         {MAX_PAX_HEADER} bytes"
                    ),
                ));
            }
            self.pending.first.get_or_insert(off);
        }
        let data = self.win.read_owned(at.data(), at.size as usize)?;
        match h.typeflag() {
            b'L' => self.pending.long_name = Some(until_nul(&data).to_vec()),
            b'K' => self.pending.long_link = Some(until_nul(&data).to_vec()),
            b'g' => self.global_header(&data, &at)?,
            _ => {
                let records = parse_pax_records(&data, at.data())
                    .map_err(|(offset, why)| self.corrupt(offset, why))?;
                self.pending.records.extend(records);
            }
        }
        Ok(next)
    }

    /// Applies a pax global header to the attributes of all later members.
    /// Its extended attributes are copied into every member, so they are
    /// capped (at a size no real archive comes near) to keep a small archive
    /// from making a huge index.
    fn global_header(&mut self, data: &[u8], at: &At) -> Result<()> {
        let records = parse_pax_records(data, at.data())
            .map_err(|(offset, why)| self.corrupt(offset, why))?;
        for r in &records {
            self.global
                .apply(r, true)
                .map_err(|why| self.corrupt(r.offset, why))?;
        }
        let xattr_bytes: usize = (self.global.xattrs.iter())
            .map(|(name, value)| name.len() + value.len())
            .sum();
        if xattr_bytes > MAX_GLOBAL_XATTRS {
            self.global.xattrs.clear();
            self.builder.warn(format!(
                "pax global header at offset {}: extended attributes of more than \
                 {MAX_GLOBAL_XATTRS} bytes for every member; ignored",
                at.header
            ));
        }
        Ok(())
    }

    /// The effective pax attributes of the next member: the global ones with
    /// the member's own records applied in order over them.
    fn member_pax(&self, records: &[PaxRecord]) -> Result<PaxAttrs> {
        let mut pax = self.global.clone();
        for r in records {
            pax.apply(r, false)
                .map_err(|why| self.corrupt(r.offset, why))?;
        }
        if let Some((_, offset)) = pax.sparse.open_offset {
            return Err(self.corrupt(
                offset,
                "GNU.sparse.offset without a GNU.sparse.numbytes after it",
            ));
        }
        Ok(pax)
    }

    /// A member header: decodes it with the pending extensions and hands it
    /// to the builder. Returns the offset of the next header.
    fn member(&mut self, h: &Header, off: u64) -> Result<u64> {
        let pending = mem::take(&mut self.pending);
        let mut pax = self.member_pax(&pending.records)?;
        let name = (pax.sparse.name.take())
            .or(pax.path.take())
            .or(pending.long_name)
            .unwrap_or_else(|| h.name());
        let link = (pax.linkpath.take())
            .or(pending.long_link)
            .unwrap_or_else(|| h.linkname());
        let mut at = At {
            header: off,
            name: &name,
            size: 0,
        };
        at.size = match pax.size {
            Some(size) => size,
            None => self.num(h, &at, &SIZE)?,
        };
        let kind = Kind::of(h.typeflag(), &name);
        match kind {
            Kind::Volume => return self.data_end(&at, at.data(), at.size),
            Kind::Continuation => {
                let next = self.data_end(&at, at.data(), at.size)?;
                self.builder.skip(
                    &name,
                    "continues a file from the previous volume of a multi-volume archive",
                );
                return Ok(next);
            }
            Kind::HardLink => {
                // Hard links normally have no data; pax allows it (and it is
                // the target's), so step over whatever the size says.
                let next = self.data_end(&at, at.data(), at.size)?;
                self.builder.add_hardlink(&name, &link);
                return Ok(next);
            }
            Kind::Symlink if link.is_empty() => {
                // Linux cannot create one, and programs do not expect one.
                self.builder
                    .skip(&name, "symbolic link with an empty target");
                return Ok(at.data());
            }
            Kind::Unknown(flag) => self.builder.warn(format!(
                "{}: unknown type flag {} (0x{flag:02x}); treated as a regular file",
                String::from_utf8_lossy(&name),
                show(&[flag]),
            )),
            _ => {}
        }
        let meta = self.meta(h, &at, &pax)?;
        let (mut member, next) = match kind {
            Kind::Regular | Kind::Unknown(_) => self.regular(&at, meta, &pax.sparse)?,
            Kind::OldSparse => self.old_sparse(h, &at, meta)?,
            Kind::DirWithData => (
                Member::new(NodeKind::Dir, meta),
                self.data_end(&at, at.data(), at.size)?,
            ),
            _ => self.no_data(h, &at, kind, meta, link)?,
        };
        member.xattrs = pax.xattrs;
        self.builder.add(&name, member);
        Ok(next)
    }

    fn meta(&self, h: &Header, at: &At, pax: &PaxAttrs) -> Result<Meta> {
        let mode: u64 = self.num(h, at, &MODE)?;
        let uid = match pax.uid {
            Some(uid) => uid,
            None => self.num(h, at, &UID)?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => self.num(h, at, &GID)?,
        };
        let (mtime, mtime_nsec) = match pax.mtime {
            Some(t) => t,
            None => (self.num(h, at, &MTIME)?, 0),
        };
        Ok(Meta {
            perm: (mode & 0o7777) as u16,
            uid,
            gid,
            mtime,
            mtime_nsec,
        })
    }

    /// Directories, symlinks, devices and FIFOs: POSIX stores no data for
    /// them, so a size field is not followed (a few writers fill it in).
    fn no_data(
        &mut self,
        h: &Header,
        at: &At,
        kind: Kind,
        meta: Meta,
        link: Vec<u8>,
    ) -> Result<(Member, u64)> {
        debug_assert!(kind.has_no_data());
        if at.size > 0 {
            self.builder.warn(format!(
                "{}: header of type {} declares {} bytes of data; ignored, as this \
                 type stores none",
                String::from_utf8_lossy(at.name),
                show(&[h.typeflag()]),
                at.size
            ));
        }
        let node_kind = match kind {
            Kind::Symlink => NodeKind::Symlink,
            Kind::CharDev => NodeKind::CharDev,
            Kind::BlockDev => NodeKind::BlockDev,
            Kind::Fifo => NodeKind::Fifo,
            _ => NodeKind::Dir,
        };
        let mut member = Member::new(node_kind, meta);
        if node_kind == NodeKind::Symlink {
            member.target = link;
        }
        if matches!(node_kind, NodeKind::CharDev | NodeKind::BlockDev) {
            let major: u32 = self.num(h, at, &DEVMAJOR)?;
            let minor: u32 = self.num(h, at, &DEVMINOR)?;
            member.rdev = libc::makedev(major, minor);
        }
        Ok((member, at.data()))
    }

    /// A regular file: stored contiguously, or sparse if pax records say so.
    fn regular(&mut self, at: &At, meta: Meta, sparse: &PaxSparse) -> Result<(Member, u64)> {
        if sparse.present() {
            return self.pax_sparse(at, meta, sparse);
        }
        let next = self.data_end(at, at.data(), at.size)?;
        let mut member = Member::new(NodeKind::File, meta);
        member.size = at.size;
        if at.size > 0 {
            member.data = Data::Stored { offset: at.data() };
        }
        Ok((member, next))
    }

    fn sparse_member(
        &self,
        at: &At,
        meta: Meta,
        map: (&[(u64, u64)], u64),
        stored: u64,
        realsize: u64,
    ) -> Result<Member> {
        let (entries, data) = map;
        let segments = build_segments(entries, data, stored, realsize)
            .map_err(|why| self.corrupt(at.header, format!("{}: {why}", show_name(at.name))))?;
        let mut member = Member::new(NodeKind::File, meta);
        member.size = realsize;
        member.data = Data::Sparse { segments };
        Ok(member)
    }

    /// Old GNU sparse (`S`): the map is in the header and in extension blocks
    /// that follow it; the stored runs follow those, back to back.
    fn old_sparse(&mut self, h: &Header, at: &At, meta: Meta) -> Result<(Member, u64)> {
        let realsize: u64 = self.num(h, at, &REALSIZE)?;
        let label = self.label;
        let bad = |offset: u64, why: String| {
            Error::corrupt(label, offset, format!("{}: {why}", show_name(at.name)))
        };
        let mut entries = Vec::new();
        old_sparse_entries(&h.0, OLD_SPARSE_AT, OLD_SPARSE_IN_HEADER, &mut entries)
            .map_err(|why| bad(at.header, why))?;
        let mut extended = h.0[OLD_EXTENDED_AT] != 0;
        let mut cur = at.data();
        while extended {
            if self.win.size.saturating_sub(cur) < BLOCK {
                return Err(bad(
                    at.header,
                    format!(
                        "truncated: sparse extension block at offset {cur} runs past the \
                         end of the medium at {}",
                        self.win.size
                    ),
                ));
            }
            let block = self.win.get(cur, BLOCK as usize)?;
            old_sparse_entries(block, 0, OLD_SPARSE_IN_BLOCK, &mut entries)
                .map_err(|why| bad(cur, why))?;
            extended = block.get(OLD_BLOCK_EXTENDED_AT).is_some_and(|&b| b != 0);
            cur += BLOCK;
        }
        let next = self.data_end(at, cur, at.size)?;
        let member = self.sparse_member(at, meta, (&entries, cur), at.size, realsize)?;
        Ok((member, next))
    }

    /// GNU sparse members in pax archives. Formats 0.0 and 0.1 carry the map
    /// in pax records; 1.0 puts it at the start of the data area as decimal
    /// lines, padded to a block, with the stored runs after it.
    fn pax_sparse(&mut self, at: &At, meta: Meta, sparse: &PaxSparse) -> Result<(Member, u64)> {
        let realsize = sparse.realsize.ok_or_else(|| {
            self.corrupt(
                at.header,
                format!(
                    "sparse member {} has no GNU.sparse.realsize or GNU.sparse.size",
                    show_name(at.name)
                ),
            )
        })?;
        let next = self.data_end(at, at.data(), at.size)?;
        let (entries, map_len) = match (sparse.major, sparse.minor) {
            (Some(1), None | Some(0)) => self.sparse_map_10(at)?,
            (None | Some(0), _) => {
                let entries = sparse.map.clone().unwrap_or_else(|| sparse.pairs.clone());
                if let Some(n) = sparse.numblocks.filter(|&n| n != entries.len() as u64) {
                    return Err(self.corrupt(
                        at.header,
                        format!(
                            "{}: GNU.sparse.numblocks is {n} but the map has {} entries",
                            show_name(at.name),
                            entries.len()
                        ),
                    ));
                }
                (entries, 0)
            }
            (Some(major), minor) => {
                return Err(self.corrupt(
                    at.header,
                    format!(
                        "{}: unsupported GNU sparse format {major}.{}",
                        show_name(at.name),
                        minor.unwrap_or(0)
                    ),
                ));
            }
        };
        // map_len <= at.size was checked by sparse_map_10.
        let data = at.data() + map_len;
        let stored = at.size - map_len;
        let member = self.sparse_member(at, meta, (&entries, data), stored, realsize)?;
        Ok((member, next))
    }

    /// Reads a format 1.0 sparse map from the member's data area. Returns the
    /// entries and the length of the map with its padding.
    fn sparse_map_10(&mut self, at: &At) -> Result<(Vec<(u64, u64)>, u64)> {
        let mut pos = 0u64;
        let count = self.map_number(at, &mut pos)?;
        if count > MAX_SPARSE_ENTRIES as u64 {
            return Err(self.corrupt(
                at.data(),
                format!(
                    "{}: sparse map has {count} entries, more than {MAX_SPARSE_ENTRIES}",
                    show_name(at.name)
                ),
            ));
        }
        let mut entries = Vec::new();
        for _ in 0..count {
            let start = self.map_number(at, &mut pos)?;
            let len = self.map_number(at, &mut pos)?;
            entries.push((start, len));
        }
        let map_len = pos.div_ceil(BLOCK) * BLOCK;
        if map_len > at.size {
            return Err(self.corrupt(
                at.data(),
                format!(
                    "{}: sparse map with its padding ({map_len} bytes) is larger than \
                     the member's data ({} bytes)",
                    show_name(at.name),
                    at.size
                ),
            ));
        }
        Ok((entries, map_len))
    }

    /// One decimal line of a format 1.0 sparse map, at `pos` in the data
    /// area. Stays inside the member's data, which the caller has checked
    /// lies inside the medium.
    fn map_number(&mut self, at: &At, pos: &mut u64) -> Result<u64> {
        let start = *pos;
        let mut value = 0u64;
        let mut digits = 0;
        loop {
            let off = at.data() + *pos;
            if *pos >= at.size {
                return Err(self.corrupt(
                    at.data() + start,
                    format!(
                        "{}: sparse map runs past the end of the member's data",
                        show_name(at.name)
                    ),
                ));
            }
            let b = self.win.byte(off)?;
            *pos += 1;
            match b {
                b'0'..=b'9' if digits < 20 => {
                    digits += 1;
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or_else(|| {
                            self.corrupt(off, "sparse map number does not fit in 64 bits")
                        })?;
                }
                b'\n' if digits > 0 => return Ok(value),
                _ => {
                    return Err(self.corrupt(
                        off,
                        format!(
                            "{}: unexpected byte {} in the sparse map",
                            show_name(at.name),
                            show(&[b])
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::fs::{self, File};
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::error::ErrorKind;
    use crate::volume::archive::index::{Node, ROOT};

    const GNU_TAR: &str = "/usr/bin/tar";

    // -- helpers: indexing and inspecting ----------------------------------

    fn implicit() -> Meta {
        Meta {
            perm: 0o755,
            uid: 7,
            gid: 8,
            mtime: 1_000,
            mtime_nsec: 0,
        }
    }

    fn index(medium: &dyn ReadAt) -> Result<ArchiveIndex> {
        index_tar(medium, "test.tar", implicit(), &mut |_| {})
    }

    /// Indexes `medium`, which must be valid, and checks the sparse invariants.
    fn index_ok(medium: &dyn ReadAt) -> ArchiveIndex {
        let idx = index(medium).unwrap_or_else(|e| panic!("index failed: {e}"));
        for n in &idx.nodes {
            if let Data::Sparse { segments } = &n.data {
                let mut end = 0;
                for s in segments {
                    assert!(
                        s.logical >= end && s.len > 0,
                        "bad segment order {segments:?}"
                    );
                    end = s.logical + s.len;
                }
                assert!(end <= n.size);
            }
        }
        idx
    }

    /// The offset and cause of a Corrupt error.
    fn corrupt(r: Result<ArchiveIndex>) -> (u64, String) {
        let e = match r {
            Ok(_) => panic!("expected a Corrupt error, got an index"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        match e {
            Error::Corrupt {
                path,
                offset,
                cause,
            } => {
                assert_eq!(path, "test.tar");
                (offset, cause)
            }
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }

    fn node<'i>(idx: &'i ArchiveIndex, path: &[u8]) -> &'i Node {
        let mut n = ROOT;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            n = idx
                .lookup(n, c)
                .unwrap_or_else(|| panic!("{} not in the index", String::from_utf8_lossy(path)));
        }
        &idx.nodes[n as usize]
    }

    /// The bytes of a node, materialised from its data locations.
    fn contents(medium: &[u8], n: &Node) -> Vec<u8> {
        let size = n.size as usize;
        match &n.data {
            Data::None => {
                assert_eq!(size, 0, "a node with no data has size 0");
                Vec::new()
            }
            Data::Stored { offset } => medium[*offset as usize..][..size].to_vec(),
            Data::Sparse { segments } => {
                let mut out = vec![0u8; size];
                for s in segments {
                    let (l, o, n) = (s.logical as usize, s.offset as usize, s.len as usize);
                    out[l..l + n].copy_from_slice(&medium[o..o + n]);
                }
                out
            }
            Data::Deflate { .. } => panic!("tar members are never deflated"),
        }
    }

    /// Every path in the index (components joined by '/') and its node.
    fn index_paths(idx: &ArchiveIndex) -> BTreeMap<Vec<u8>, u32> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT, Vec::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for e in idx.children(dir) {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&e.name);
                if idx.nodes[e.node as usize].kind == NodeKind::Dir {
                    stack.push((e.node, path.clone()));
                }
                out.insert(path, e.node);
            }
        }
        out
    }

    /// Every path under `root`, relative, as raw bytes.
    fn fs_paths(root: &Path) -> BTreeMap<Vec<u8>, PathBuf> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.insert(rel, p);
            }
        }
        out
    }

    /// What a fixture was archived with, to know what to compare.
    struct Expect {
        uid: u32,
        gid: u32,
        nsec: bool,
    }

    fn check_meta(n: &Node, md: &fs::Metadata, want: &Expect, what: &str) {
        assert_eq!(u32::from(n.meta.perm), md.mode() & 0o7777, "{what}: perm");
        assert_eq!(
            (n.meta.uid, n.meta.gid),
            (want.uid, want.gid),
            "{what}: owner"
        );
        assert_eq!(n.meta.mtime, md.mtime(), "{what}: mtime");
        if want.nsec {
            assert_eq!(
                i64::from(n.meta.mtime_nsec),
                md.mtime_nsec(),
                "{what}: nsec"
            );
        }
    }

    /// Asserts that the index of `medium` describes the tree at `root` exactly:
    /// names, kinds, metadata, contents, link targets and link counts.
    fn assert_matches_tree(idx: &ArchiveIndex, medium: &[u8], root: &Path, want: &Expect) {
        let in_index = index_paths(idx);
        let on_disk = fs_paths(root);
        let names = |m: Vec<&Vec<u8>>| -> Vec<String> {
            m.into_iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        assert_eq!(
            names(in_index.keys().collect()),
            names(on_disk.keys().collect()),
            "the index has the same paths as the tree"
        );
        check_meta(
            &idx.nodes[ROOT as usize],
            &fs::metadata(root).unwrap(),
            want,
            ".",
        );
        for (rel, path) in &on_disk {
            let what = String::from_utf8_lossy(rel).into_owned();
            let n = &idx.nodes[in_index[rel] as usize];
            let md = fs::symlink_metadata(path).unwrap();
            check_meta(n, &md, want, &what);
            let ft = md.file_type();
            if ft.is_dir() {
                assert_eq!(n.kind, NodeKind::Dir, "{what}");
            } else if ft.is_symlink() {
                assert_eq!(n.kind, NodeKind::Symlink, "{what}");
                let target = fs::read_link(path).unwrap();
                assert_eq!(n.target, target.as_os_str().as_bytes(), "{what}: target");
            } else if ft.is_fifo() {
                assert_eq!(n.kind, NodeKind::Fifo, "{what}");
            } else {
                assert_eq!(n.kind, NodeKind::File, "{what}");
                assert_eq!(n.size, md.len(), "{what}: size");
                assert!(
                    contents(medium, n) == fs::read(path).unwrap(),
                    "{what}: contents"
                );
                assert_eq!(u64::from(n.nlink), md.nlink(), "{what}: nlink");
            }
        }
    }

    // -- helpers: fixtures ---------------------------------------------------

    /// Deterministic, position-dependent bytes so that misplaced data shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// Runs GNU tar with `args` to archive `.` of `src` and returns the archive.
    fn gnu_tar(src: &Path, args: &[&str]) -> Vec<u8> {
        let out = src.with_extension("tar");
        let status = Command::new(GNU_TAR)
            .arg("-C")
            .arg(src)
            .arg("-cf")
            .arg(&out)
            .args(["--owner=1234", "--group=5678"])
            .args(args)
            .arg(".")
            .status()
            .expect("GNU tar runs");
        assert!(status.success(), "tar {args:?} failed");
        fs::read(&out).unwrap()
    }

    const OWNED: Expect = Expect {
        uid: 1234,
        gid: 5678,
        nsec: false,
    };

    /// A tree every format can hold: files of awkward sizes and modes, an
    /// empty file and directory, nested directories, a symlink, a hard link.
    fn basic_tree(root: &Path) {
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::create_dir(root.join("emptydir")).unwrap();
        write(&root.join("empty"), b"", 0o644);
        write(&root.join("one"), b"1", 0o600);
        write(&root.join("block"), &pattern(512, 1), 0o640);
        write(&root.join("d/f513"), &pattern(513, 2), 0o4755);
        write(&root.join("d/e/big"), &pattern(100_000, 3), 0o644);
        fs::hard_link(root.join("d/e/big"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("d/e/big", root.join("link")).unwrap();
        fs::set_permissions(root.join("emptydir"), fs::Permissions::from_mode(0o1777)).unwrap();
        set_mtime(
            &root.join("one"),
            UNIX_EPOCH + Duration::new(1_234_567_890, 0),
        );
    }

    /// Additions for formats with long names (GNU, pax): a path over 255
    /// bytes in deep directories, a 200-byte component, a symlink and a hard
    /// link whose targets are over 100 bytes, a name that is not UTF-8.
    fn long_tree(root: &Path) -> Vec<u8> {
        let deep: PathBuf = (0..6).map(|i| format!("{i}{}", "x".repeat(49))).collect();
        fs::create_dir_all(root.join(&deep)).unwrap();
        let long_file = deep.join(format!("{}.txt", "n".repeat(200)));
        write(&root.join(&long_file), &pattern(3000, 4), 0o644);
        let long_target = long_file.as_os_str().as_bytes().to_vec();
        assert!(long_target.len() > 255);
        std::os::unix::fs::symlink(&long_file, root.join("longlink")).unwrap();
        fs::hard_link(root.join(&long_file), root.join(deep.join("hard"))).unwrap();
        write(&root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1", 0o644);
        fs::create_dir(root.join(OsStr::from_bytes(b"dir\xff\xfe"))).unwrap();
        long_target
    }

    fn fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o620) }, 0);
    }

    // -- hand-made archives ---------------------------------------------------

    fn header(name: &str, flag: u8, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(1);
        h.set_gid(2);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h
    }

    fn pad(out: &mut Vec<u8>) {
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// Appends a header and its data, padded.
    fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        pad(out);
    }

    fn push_file(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        push(out, &header(name, b'0', data.len() as u64), data);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    /// One pax record with its correct length prefix.
    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    /// Appends a pax header of type `flag` ('x' or 'g') with raw record bytes.
    fn push_pax(out: &mut Vec<u8>, flag: u8, records: &[u8]) {
        push(
            out,
            &header("PaxHeaders/x", flag, records.len() as u64),
            records,
        );
    }

    /// Rewrites a header's checksum after its bytes were edited.
    fn fix_checksum(block: &mut [u8]) {
        block[148..156].fill(b' ');
        let sum: u32 = block[..512].iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    // -- formats, compared with the tree GNU tar archived ----------------------

    #[test]
    fn v7_archive_matches_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        basic_tree(&src);
        let tar = gnu_tar(&src, &["--format=v7"]);
        let idx = index_ok(&tar);
        assert_eq!(idx.format, "tar (v7)");
        assert_matches_tree(&idx, &tar, &src, &OWNED);
        assert_eq!(node(&idx, b"hard").nlink, 2);
        assert!(idx.stats.warnings.is_empty(), "{:?}", idx.stats.warnings);
    }

    #[test]
    fn ustar_archive_matches_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        basic_tree(&src);
        fifo(&src.join("fifo"));
        // 130 bytes: only fits with the prefix field.
        let split = format!("{}/{}/file", "p".repeat(60), "q".repeat(60));
        fs::create_dir_all(src.join(&split).parent().unwrap()).unwrap();
        write(&src.join(&split), b"prefixed", 0o644);
        let tar = gnu_tar(&src, &["--format=ustar"]);
        let idx = index_ok(&tar);
        assert_eq!(idx.format, "tar (ustar)");
        assert_matches_tree(&idx, &tar, &src, &OWNED);
        assert_eq!(contents(&tar, node(&idx, split.as_bytes())), b"prefixed");
    }

    #[test]
    fn gnu_archive_matches_tree() {
        for format in ["--format=gnu", "--format=oldgnu"] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            basic_tree(&src);
            fifo(&src.join("fifo"));
            let long_target = long_tree(&src);
            // Before 1970, with a fraction: GNU writes it in base-256.
            set_mtime(
                &src.join("empty"),
                UNIX_EPOCH - Duration::new(100, 750_000_000),
            );
            let tar = gnu_tar(&src, &[format]);
            let idx = index_ok(&tar);
            assert_eq!(idx.format, "tar (gnu)");
            assert_matches_tree(&idx, &tar, &src, &OWNED);
            assert_eq!(node(&idx, b"empty").meta.mtime, -101);
            assert_eq!(node(&idx, b"longlink").target, long_target);
            assert_eq!(node(&idx, b"caf\xe9").size, 7);
        }
    }

    #[test]
    fn pax_archive_matches_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        basic_tree(&src);
        fifo(&src.join("fifo"));
        let long_target = long_tree(&src);
        set_mtime(
            &src.join("empty"),
            UNIX_EPOCH - Duration::new(100, 750_000_000),
        );
        set_mtime(
            &src.join("block"),
            UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789),
        );
        let tar = gnu_tar(&src, &["--format=pax"]);
        let idx = index_ok(&tar);
        assert_eq!(idx.format, "tar (pax)");
        let want = Expect {
            nsec: true,
            ..OWNED
        };
        assert_matches_tree(&idx, &tar, &src, &want);
        let empty = node(&idx, b"empty");
        assert_eq!(
            (empty.meta.mtime, empty.meta.mtime_nsec),
            (-101, 250_000_000)
        );
        assert_eq!(node(&idx, b"block").meta.mtime_nsec, 123_456_789);
        assert_eq!(node(&idx, b"longlink").target, long_target);
        assert!(idx.stats.warnings.is_empty(), "{:?}", idx.stats.warnings);
    }

    // -- sparse members --------------------------------------------------------

    /// Sparse files: many scattered runs (more than fit the old GNU header
    /// and its first extension block), data at the very end, all holes.
    fn sparse_tree(root: &Path) {
        fs::create_dir_all(root).unwrap();
        let many = File::create(root.join("many")).unwrap();
        many.set_len(10 << 20).unwrap();
        for k in 0..50u64 {
            many.write_all_at(&pattern(3 + k as usize, k as u8), k * 196_608 + 100)
                .unwrap();
        }
        let tail = File::create(root.join("tail")).unwrap();
        tail.set_len(1 << 20).unwrap();
        tail.write_all_at(b"the end", (1 << 20) - 7).unwrap();
        File::create(root.join("holes"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        write(&root.join("dense"), &pattern(8192, 9), 0o644);
    }

    fn assert_sparse(idx: &ArchiveIndex, tar: &[u8], src: &Path, want: &Expect) {
        assert_matches_tree(idx, tar, src, want);
        for name in ["many", "tail", "holes"] {
            let n = node(idx, name.as_bytes());
            assert!(
                matches!(n.data, Data::Sparse { .. }),
                "{name} is sparse: {:?}",
                n.data
            );
        }
        if let Data::Sparse { segments } = &node(idx, b"many").data {
            assert!(segments.len() >= 50, "{} runs", segments.len());
        }
    }

    #[test]
    fn gnu_old_sparse_with_extension_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        sparse_tree(&src);
        let tar = gnu_tar(&src, &["--format=gnu", "--sparse"]);
        assert!(tar.len() < 1 << 20, "the archive stores the runs only");
        let idx = index_ok(&tar);
        assert_sparse(&idx, &tar, &src, &OWNED);
    }

    #[test]
    fn pax_sparse_all_versions() {
        for version in ["0.0", "0.1", "1.0"] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            sparse_tree(&src);
            let v = format!("--sparse-version={version}");
            let tar = gnu_tar(&src, &["--format=pax", "--sparse", &v]);
            let idx = index_ok(&tar);
            let want = Expect {
                nsec: true,
                ..OWNED
            };
            assert_sparse(&idx, &tar, &src, &want);
            assert!(
                idx.stats.warnings.is_empty(),
                "{version}: {:?}",
                idx.stats.warnings
            );
        }
    }

    // -- pax specifics -------------------------------------------------------------

    #[test]
    fn pax_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        write(&src.join("f"), b"data", 0o644);
        let set = |p: &Path, name: &str, value: &[u8]| {
            let p = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            let n = std::ffi::CString::new(name).unwrap();
            let rc = unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            rc == 0
        };
        if !set(&src.join("f"), "user.x", b"y") {
            eprintln!(
                "skipping: the filesystem refuses user xattrs ({})",
                io::Error::last_os_error()
            );
            return;
        }
        assert!(set(&src.join("f"), "user.tricky", b"a=b\nc"));
        assert!(set(&src.join("f"), "user.empty", b""));
        assert!(set(&src.join("d"), "user.dir", b"1"));
        let tar = gnu_tar(&src, &["--format=pax", "--xattrs"]);
        let idx = index_ok(&tar);
        let mut x = node(&idx, b"f").xattrs.clone();
        x.sort();
        assert_eq!(
            x,
            vec![
                (b"user.empty".to_vec(), b"".to_vec()),
                (b"user.tricky".to_vec(), b"a=b\nc".to_vec()),
                (b"user.x".to_vec(), b"y".to_vec()),
            ]
        );
        assert_eq!(
            node(&idx, b"d").xattrs,
            vec![(b"user.dir".to_vec(), b"1".to_vec())]
        );
        assert_eq!(contents(&tar, node(&idx, b"f")), b"data");
    }

    #[test]
    fn pax_global_header_applies_until_overridden() {
        let mut tar = Vec::new();
        push_pax(
            &mut tar,
            b'g',
            &[record("uid", b"500"), record("mtime", b"42.5")].concat(),
        );
        push_file(&mut tar, "a", b"A");
        push_pax(
            &mut tar,
            b'x',
            &[record("uid", b"600"), record("gid", b"")].concat(),
        );
        push_file(&mut tar, "b", b"B");
        push_pax(&mut tar, b'g', &record("uid", b""));
        push_file(&mut tar, "c", b"C");
        end(&mut tar);
        let idx = index_ok(&tar);
        let a = node(&idx, b"a");
        assert_eq!(
            (a.meta.uid, a.meta.gid, a.meta.mtime, a.meta.mtime_nsec),
            (500, 2, 42, 500_000_000)
        );
        let b = node(&idx, b"b");
        assert_eq!(
            (b.meta.uid, b.meta.gid, b.meta.mtime),
            (600, 2, 42),
            "local over global"
        );
        let c = node(&idx, b"c");
        assert_eq!(
            (c.meta.uid, c.meta.mtime),
            (1, 42),
            "an empty global value deletes the key"
        );
        assert_eq!(contents(&tar, c), b"C");
    }

    #[test]
    fn pax_global_xattrs_are_capped_and_do_not_drop_pending_names() {
        let mut tar = Vec::new();
        let name = "n".repeat(120);
        push(
            &mut tar,
            &header("././@LongLink", b'L', 120),
            name.as_bytes(),
        );
        push_pax(&mut tar, b'g', &record("SCHILY.xattr.user.small", b"v"));
        push_file(&mut tar, "short", b"1");
        push_pax(
            &mut tar,
            b'g',
            &record("SCHILY.xattr.user.big", &[b'v'; 5000]),
        );
        push_file(&mut tar, "plain", b"2");
        end(&mut tar);
        let idx = index_ok(&tar);
        let first = node(&idx, name.as_bytes());
        assert_eq!(first.xattrs, vec![(b"user.small".to_vec(), b"v".to_vec())]);
        assert!(node(&idx, b"plain").xattrs.is_empty());
        assert!(idx.stats.warnings.iter().any(|w| w.contains("offset 3072")));
    }

    #[test]
    fn chained_extension_headers_are_capped() {
        let mut tar = Vec::new();
        let big = record("comment", &[b'c'; 1 << 20]);
        for _ in 0..9 {
            push_pax(&mut tar, b'x', &big);
        }
        push_file(&mut tar, "f", b"");
        end(&mut tar);
        let (off, why) = corrupt(index(&tar));
        let each = 512 + big.len().div_ceil(512) as u64 * 512;
        // Each is a little over 1 MiB: the eighth brings the sum over 8 MiB.
        assert_eq!(off, 7 * each, "the eighth header");
        assert!(why.contains("add up to more than"), "{why}");
    }

    #[test]
    fn pax_path_size_and_linkpath_override_the_header() {
        let mut tar = Vec::new();
        let long = format!("dir/{}", "z".repeat(250));
        push_pax(
            &mut tar,
            b'x',
            &[record("path", long.as_bytes()), record("size", b"5")].concat(),
        );
        push(&mut tar, &header("short", b'0', 0), b"12345");
        push_pax(&mut tar, b'x', &record("linkpath", b"target/of/link"));
        push(&mut tar, &header("sym", b'2', 0), b"");
        end(&mut tar);
        let idx = index_ok(&tar);
        assert_eq!(contents(&tar, node(&idx, long.as_bytes())), b"12345");
        assert_eq!(node(&idx, b"sym").target, b"target/of/link");
        assert!(!index_paths(&idx).contains_key(&b"short"[..]));
    }

    // -- hand-made members -----------------------------------------------------

    #[test]
    fn devices_fifos_and_odd_type_flags() {
        let mut tar = Vec::new();
        let mut chr = header("dev/null", b'3', 0);
        chr.set_device_major(1).unwrap();
        chr.set_device_minor(3).unwrap();
        chr.set_cksum();
        push(&mut tar, &chr, b"");
        let mut blk = header("dev/sda", b'4', 0);
        blk.set_device_major(8).unwrap();
        blk.set_device_minor(300).unwrap();
        blk.set_cksum();
        push(&mut tar, &blk, b"");
        push(&mut tar, &header("p", b'6', 0), b"");
        push(&mut tar, &header("label", b'V', 0), b"");
        push(&mut tar, &header("cont", b'M', 3), b"abc");
        push(&mut tar, &header("dump", b'D', 4), b"Ya\0\0");
        push(&mut tar, &header("weird", b'Q', 2), b"qq");
        push(&mut tar, &header("contig", b'7', 2), b"cc");
        push(&mut tar, &header("olddir/", b'\0', 3), b"xyz");
        push(&mut tar, &header("nowhere", b'2', 0), b"");
        let mut dir_with_size = header("sized", b'5', 0);
        dir_with_size.as_mut_bytes()[124..136].copy_from_slice(b"00000001000\0");
        fix_checksum(dir_with_size.as_mut_bytes());
        push(&mut tar, &dir_with_size, b"");
        push_file(&mut tar, "after", b"still found");
        end(&mut tar);
        let idx = index_ok(&tar);
        let null = node(&idx, b"dev/null");
        assert_eq!(
            (null.kind, null.rdev),
            (NodeKind::CharDev, libc::makedev(1, 3))
        );
        let sda = node(&idx, b"dev/sda");
        assert_eq!(
            (sda.kind, sda.rdev),
            (NodeKind::BlockDev, libc::makedev(8, 300))
        );
        assert_eq!(node(&idx, b"p").kind, NodeKind::Fifo);
        assert!(
            !index_paths(&idx).contains_key(&b"label"[..]),
            "volume labels are not members"
        );
        assert!(
            !index_paths(&idx).contains_key(&b"cont"[..]),
            "continuations are skipped"
        );
        assert_eq!(idx.stats.skipped, 2);
        assert_eq!(node(&idx, b"dump").kind, NodeKind::Dir);
        assert_eq!(contents(&tar, node(&idx, b"weird")), b"qq");
        assert_eq!(contents(&tar, node(&idx, b"contig")), b"cc");
        assert_eq!(node(&idx, b"olddir").kind, NodeKind::Dir);
        assert!(
            !index_paths(&idx).contains_key(&b"nowhere"[..]),
            "empty symlink target"
        );
        assert_eq!(node(&idx, b"sized").kind, NodeKind::Dir);
        assert_eq!(contents(&tar, node(&idx, b"after")), b"still found");
        let warnings = idx.stats.warnings.join("\n");
        assert!(warnings.contains("unknown type flag \"Q\""), "{warnings}");
        assert!(warnings.contains("multi-volume"), "{warnings}");
        assert!(warnings.contains("declares 512 bytes"), "{warnings}");
    }

    #[test]
    fn gnu_long_names_by_hand() {
        let mut tar = Vec::new();
        let name = format!("{}/file", "L".repeat(300));
        let mut l = header("././@LongLink", b'L', 0);
        l.set_size(name.len() as u64 + 1);
        l.set_cksum();
        push(&mut tar, &l, format!("{name}\0").as_bytes());
        push_file(&mut tar, "truncated-name", b"x");
        let link = "K".repeat(150);
        push(
            &mut tar,
            &header("././@LongLink", b'K', link.len() as u64),
            link.as_bytes(),
        );
        push(&mut tar, &header("sym", b'2', 0), b"");
        end(&mut tar);
        let idx = index_ok(&tar);
        // A component over 255 bytes cannot exist: the builder skips it, so
        // use the parent's name to check the long name arrived whole.
        assert!(
            idx.stats
                .warnings
                .iter()
                .any(|w| w.contains(&"L".repeat(300)))
        );
        assert_eq!(node(&idx, b"sym").target, link.as_bytes());
    }

    #[test]
    fn base256_numbers_and_negative_mtime() {
        let mut tar = Vec::new();
        let mut h = header("neg", b'0', 0);
        let b = h.as_mut_bytes();
        b[136..148].fill(0xff); // mtime -1
        b[136] = 0xff;
        b[108..116].copy_from_slice(&[0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]); // uid 2^31-1
        b[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]); // size 3
        fix_checksum(b);
        push(&mut tar, &h, b"abc");
        end(&mut tar);
        let idx = index_ok(&tar);
        let n = node(&idx, b"neg");
        assert_eq!((n.meta.mtime, n.meta.uid, n.size), (-1, 0x7fff_ffff, 3));
        assert_eq!(contents(&tar, n), b"abc");
    }

    /// A medium of a few real bytes followed by (virtual) zeros, so that a
    /// member of 9 GiB costs no memory.
    struct Virtual {
        head: Vec<u8>,
        size: u64,
    }

    impl ReadAt for Virtual {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = buf.len().min(self.size.saturating_sub(offset) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = self.head.get(offset as usize + i).copied().unwrap_or(0);
            }
            Ok(n)
        }
        fn size(&self) -> u64 {
            self.size
        }
    }

    const NINE_GIB: u64 = 9 << 30;

    #[test]
    fn member_over_8_gib_in_base256() {
        let mut h = tar::Header::new_gnu();
        h.set_path("huge").unwrap();
        h.set_size(NINE_GIB);
        h.set_mode(0o644);
        h.set_cksum();
        assert_eq!(h.as_bytes()[124] & 0x80, 0x80, "the size is base-256");
        let medium = Virtual {
            head: h.as_bytes().to_vec(),
            size: 512 + NINE_GIB + 1024,
        };
        let idx = index_ok(&medium);
        let n = node(&idx, b"huge");
        assert_eq!((n.size, &n.data), (NINE_GIB, &Data::Stored { offset: 512 }));
        let short = Virtual {
            size: 512 + NINE_GIB - 1,
            ..medium
        };
        let (off, why) = corrupt(index(&short));
        assert_eq!(off, 0);
        assert!(
            why.contains(&format!("needs {NINE_GIB} bytes of data at offset 512")),
            "{why}"
        );
    }

    #[test]
    fn member_over_8_gib_in_pax() {
        let mut head = Vec::new();
        push_pax(
            &mut head,
            b'x',
            &record("size", NINE_GIB.to_string().as_bytes()),
        );
        push(&mut head, &header("huge", b'0', 0), b"");
        let medium = Virtual {
            head,
            size: 1536 + NINE_GIB + 1024,
        };
        let idx = index_ok(&medium);
        let n = node(&idx, b"huge");
        assert_eq!(
            (n.size, &n.data),
            (NINE_GIB, &Data::Stored { offset: 1536 })
        );
    }

    // -- the end of the archive ---------------------------------------------------

    fn three_files() -> Vec<u8> {
        let mut tar = Vec::new();
        push_file(&mut tar, "a", &pattern(100, 1));
        push_file(&mut tar, "b", &pattern(100, 2));
        push_file(&mut tar, "c", &pattern(100, 3));
        tar
    }

    #[test]
    fn end_of_archive_variants() {
        let body = three_files();
        let warned = |tar: &Vec<u8>, what: &str| {
            let idx = index_ok(tar);
            assert_eq!(idx.stats.files, 3);
            idx.stats.warnings.iter().any(|w| w.contains(what))
        };
        let mut two = body.clone();
        end(&mut two);
        assert!(index_ok(&two).stats.warnings.is_empty());
        let mut one = body.clone();
        one.extend_from_slice(&[0; 512]);
        assert!(
            index_ok(&one).stats.warnings.is_empty(),
            "one zero block then EOF"
        );
        assert!(warned(&body, "no end-of-archive marker"));
        let mut garbage = two.clone();
        garbage.extend_from_slice(b"trailing garbage that is not a header");
        assert!(index_ok(&garbage).stats.warnings.is_empty());
        let mut lone = one.clone();
        push_file(&mut lone, "hidden", b"x");
        assert!(warned(&lone, "lone zero block at offset 3072"));
        let empty = vec![0u8; 10240];
        let idx = index_ok(&empty);
        assert_eq!((idx.nodes.len(), idx.format.as_str()), (1, "tar"));
    }

    #[test]
    fn progress_is_reported_in_steps() {
        let mut tar = Vec::new();
        for i in 0..5 {
            push_file(&mut tar, &format!("f{i}"), &pattern(700_000, i));
        }
        end(&mut tar);
        let mut seen = Vec::new();
        index_tar(&tar, "test.tar", implicit(), &mut |n| seen.push(n)).unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(seen.len() >= 3 && seen.len() <= 5, "{seen:?}");
        assert_eq!(*seen.last().unwrap(), tar.len() as u64);
    }

    // -- corrupt and hostile input --------------------------------------------------

    #[test]
    fn empty_and_short_media_are_not_tar() {
        let (off, why) = corrupt(index(&Vec::new()));
        assert_eq!(off, 0);
        assert!(why.contains("not a tar archive"), "{why}");
        let (off, why) = corrupt(index(&vec![b'a'; 300]));
        assert_eq!(off, 0);
        assert!(why.contains("truncated header"), "{why}");
        let (off, why) = corrupt(index(&vec![b'a'; 4096]));
        assert_eq!(off, 0);
        assert!(why.contains("not a tar archive"), "{why}");
    }

    #[test]
    fn truncated_in_member_data() {
        let mut tar = three_files();
        tar.truncate(2560 + 50);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 2048, "the header of c");
        assert_eq!(
            why,
            "truncated: member \"c\" needs 100 bytes of data at offset 2560 but the medium ends at 2610"
        );
    }

    #[test]
    fn truncated_header() {
        let mut tar = three_files();
        tar.truncate(2048 + 100);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 2048);
        assert!(why.contains("truncated header"), "{why}");
        let mut tar = three_files();
        tar.truncate(2560 + 300); // inside the padding of c
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 3072);
        assert!(why.contains("truncated"), "{why}");
    }

    #[test]
    fn bad_checksum_in_third_header() {
        let mut tar = three_files();
        end(&mut tar);
        tar[2048 + 5] ^= 1;
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 2048);
        assert!(
            why.starts_with("header checksum mismatch (stored 0o"),
            "{why}"
        );
    }

    #[test]
    fn bad_octal_digits() {
        let mut tar = three_files();
        end(&mut tar);
        tar[1024 + 124..1024 + 136].copy_from_slice(b"0000001x44\0\0");
        fix_checksum(&mut tar[1024..1536]);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 1024);
        assert!(
            why.contains("size field of \"b\"") && why.contains("not an octal number"),
            "{why}"
        );
    }

    #[test]
    fn pax_records_with_wrong_lengths() {
        for (records, at, what) in [
            (b"31 path=abc\n".to_vec(), 512, "runs past the end"),
            (b"11 path=abc\n".to_vec(), 512, "does not end in a newline"),
            (
                [record("path", b"abc"), b"5 x=y\n".to_vec()].concat(),
                512 + 12,
                "newline",
            ),
            (b"x2 path=abc\n".to_vec(), 512, "not a decimal number"),
            (b"7 =abc\n".to_vec(), 512, "no KEY=VALUE"),
        ] {
            let mut tar = Vec::new();
            push_pax(&mut tar, b'x', &records);
            push_file(&mut tar, "f", b"x");
            end(&mut tar);
            let (off, why) = corrupt(index(&tar));
            assert_eq!(off, at, "{why}");
            assert!(why.contains(what), "{why}");
        }
    }

    #[test]
    fn pax_size_absurdly_large() {
        let mut tar = Vec::new();
        push_pax(&mut tar, b'x', &record("size", b"99999999999999999999999"));
        push_file(&mut tar, "f", b"");
        end(&mut tar);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 512, "the record");
        assert!(why.contains("does not fit in 64 bits"), "{why}");

        let mut tar = Vec::new();
        push_pax(&mut tar, b'x', &record("size", b"18446744073709551615"));
        push_file(&mut tar, "f", b"");
        end(&mut tar);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 1024, "the member header");
        assert!(
            why.contains("needs 18446744073709551615 bytes of data at offset 1536"),
            "{why}"
        );

        let mut tar = Vec::new();
        let mut x = header("PaxHeaders/x", b'x', 0);
        x.set_size(1 << 40);
        x.set_cksum();
        push(&mut tar, &x, b"");
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 0);
        assert!(why.contains("larger than the limit"), "{why}");
    }

    #[test]
    fn long_name_of_100_mb() {
        let mut tar = Vec::new();
        push(
            &mut tar,
            &header("././@LongLink", b'L', 100_000_000),
            b"name",
        );
        end(&mut tar);
        let (off, why) = corrupt(index(&tar));
        assert_eq!(off, 0);
        assert!(
            why.contains("GNU long name of 100000000 bytes is larger than the limit"),
            "{why}"
        );
    }

    /// A pax 0.1 sparse member with the given map, real size and data.
    fn sparse_01(map: &str, realsize: u64, data: &[u8]) -> Vec<u8> {
        let mut tar = Vec::new();
        let records = [
            record("GNU.sparse.size", realsize.to_string().as_bytes()),
            record("GNU.sparse.map", map.as_bytes()),
        ];
        push_pax(&mut tar, b'x', &records.concat());
        push_file(&mut tar, "s", data);
        end(&mut tar);
        tar
    }

    #[test]
    fn sparse_maps_are_validated() {
        let ok = sparse_01("0,5,90,10", 100, b"01234abcdefghij");
        let idx = index_ok(&ok);
        let mut want = vec![0u8; 100];
        want[..5].copy_from_slice(b"01234");
        want[90..].copy_from_slice(b"abcdefghij");
        assert_eq!(contents(&ok, node(&idx, b"s")), want);
        for (map, realsize, len, what) in [
            ("0,50,90,20", 100, 70, "ends beyond the real size 100"),
            ("50,10,0,10", 100, 20, "before the end"),
            ("0,50,40,10", 100, 60, "before the end"),
            (
                "0,10",
                100,
                11,
                "accounts for 10 stored bytes but the member stores 11",
            ),
            ("0,10,5", 100, 10, "odd number"),
            ("5,18446744073709551615", u64::MAX, 0, "ends beyond"),
            ("0,18446744073709551615", u64::MAX, 0, "sizes overflow"),
        ] {
            let tar = sparse_01(map, realsize, &pattern(len, 0));
            let (off, why) = corrupt(index(&tar));
            let map_record = 512 + record("GNU.sparse.size", b"100").len() as u64;
            let at = if what == "odd number" {
                map_record
            } else {
                1024
            };
            assert_eq!(off, at, "{map}: {why}");
            assert!(why.contains(what), "{map}: {why}");
        }
    }

    #[test]
    fn sparse_1_0_maps_are_validated() {
        let v1 = |map: &[u8], data: &[u8], padded: bool| {
            let mut tar = Vec::new();
            let records = [
                record("GNU.sparse.major", b"1"),
                record("GNU.sparse.minor", b"0"),
                record("GNU.sparse.name", b"real"),
                record("GNU.sparse.realsize", b"1000"),
            ];
            push_pax(&mut tar, b'x', &records.concat());
            let mut area = map.to_vec();
            if padded {
                pad(&mut area);
            }
            area.extend_from_slice(data);
            push_file(&mut tar, "GNUSparseFile.1/real", &area);
            end(&mut tar);
            tar
        };
        let tar = v1(b"2\n0\n3\n997\n3\n", b"abcxyz", true);
        let idx = index_ok(&tar);
        let got = contents(&tar, node(&idx, b"real"));
        assert_eq!((&got[..3], &got[997..]), (&b"abc"[..], &b"xyz"[..]));
        let (off, why) = corrupt(index(&v1(b"2000000\n", b"", true)));
        assert_eq!(off, 1536);
        assert!(why.contains("more than 1000000"), "{why}");
        let (off, why) = corrupt(index(&v1(b"1\n0\nx\n", b"", true)));
        assert_eq!(off, 1536 + 4);
        assert!(why.contains("unexpected byte"), "{why}");
        let (off, why) = corrupt(index(&v1(b"3\n0\n3\n", b"", true)));
        assert_eq!(off, 1536 + 6, "the padding after the last line");
        assert!(why.contains("unexpected byte \"\\x00\""), "{why}");
        let (off, why) = corrupt(index(&v1(b"3\n0\n3\n", b"", false)));
        assert_eq!(off, 1536 + 6);
        assert!(
            why.contains("runs past the end of the member's data"),
            "{why}"
        );
        let (off, why) = corrupt(index(&v1(b"1\n0\n3\n", b"abc", false)));
        assert_eq!(off, 1536);
        assert!(why.contains("larger than the member's data"), "{why}");
    }

    #[test]
    fn number_parsing() {
        assert_eq!(parse_number(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_number(b"   644 \0"), Ok(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Ok(0));
        assert_eq!(parse_number(b"        "), Ok(0));
        assert!(parse_number(b"0008\0").is_err());
        assert!(parse_number(b"12 34\0").is_err());
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Ok(256)
        );
        assert_eq!(parse_number(&[0xff; 12]), Ok(-1));
        assert_eq!(parse_number(&[0xff, 0xff, 0xff, 0xfe]), Ok(-2));
        assert_eq!(
            pax_time(b"1795466339.532727149"),
            Ok((1_795_466_339, 532_727_149))
        );
        assert_eq!(pax_time(b"-1.25"), Ok((-2, 750_000_000)));
        assert_eq!(pax_time(b"-7"), Ok((-7, 0)));
        assert_eq!(pax_time(b"5.1234567891"), Ok((5, 123_456_789)));
        assert!(pax_time(b"5.x").is_err());
        assert!(pax_time(b"").is_err());
        assert!(pax_time(b"-").is_err());
        assert_eq!(decimal(b"18446744073709551615"), Ok(u64::MAX));
        assert!(decimal(b"18446744073709551616").is_err());
    }

    #[test]
    fn tar_detection() {
        let tar = three_files();
        assert!(looks_like_tar(&tar[..512]));
        assert!(looks_like_tar(&tar));
        assert!(!looks_like_tar(&tar[..511]));
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(&[b'P'; 512]));
        // A signed checksum, as some old writers computed it.
        let mut h = header("caf\u{e9}", b'0', 0).as_bytes().to_vec();
        h[148..156].fill(b' ');
        let signed: i64 = h.iter().map(|&b| i64::from(b as i8)).sum();
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(looks_like_tar(&h));
        h[0] ^= 0x40;
        assert!(!looks_like_tar(&h));
    }

    // -- no input panics --------------------------------------------------------------

    /// The shared test generator, in `usize`.
    struct Rng(crate::util::TestRng);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.next()
        }
        fn below(&mut self, n: usize) -> usize {
            self.0.below(n as u64) as usize
        }
    }

    /// Small archives that use every feature, to be damaged at random.
    fn fuzz_seeds() -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        write(&src.join("d/f"), &pattern(1500, 1), 0o644);
        std::os::unix::fs::symlink("x".repeat(120), src.join("d/l")).unwrap();
        fs::hard_link(src.join("d/f"), src.join("h".repeat(130))).unwrap();
        let sp = File::create(src.join("sp")).unwrap();
        sp.set_len(40_000).unwrap();
        for k in 0..6u64 {
            sp.write_all_at(b"data", k * 6000).unwrap();
        }
        let mut seeds = vec![
            gnu_tar(&src, &["--format=gnu", "--sparse"]),
            gnu_tar(&src, &["--format=pax", "--sparse", "--sparse-version=1.0"]),
            gnu_tar(&src, &["--format=pax", "--sparse", "--sparse-version=0.0"]),
            sparse_01("0,5,90,10", 100, b"01234abcdefghij"),
        ];
        let mut hand = Vec::new();
        push_pax(&mut hand, b'g', &record("SCHILY.xattr.user.a", b"b"));
        push_pax(&mut hand, b'x', &record("mtime", b"-3.5"));
        push_file(&mut hand, "f", b"abc");
        end(&mut hand);
        seeds.push(hand);
        seeds
    }

    #[test]
    fn random_damage_never_panics() {
        let mut rng = Rng(crate::util::TestRng(0x9e37_79b9_7f4a_7c15));
        for seed in fuzz_seeds() {
            let headers: Vec<usize> = (0..seed.len() / 512)
                .filter(|&i| looks_like_tar(&seed[i * 512..]))
                .collect();
            assert!(index(&seed).is_ok());
            for _ in 0..1500 {
                let mut tar = seed.clone();
                for _ in 0..1 + rng.below(8) {
                    // Mostly hit headers and the blocks after them (pax data,
                    // sparse maps), where decoding happens.
                    let at = if rng.below(4) > 0 {
                        (headers[rng.below(headers.len())] + rng.below(2)) * 512 + rng.below(512)
                    } else {
                        rng.below(tar.len())
                    };
                    if let Some(b) = tar.get_mut(at) {
                        *b = match rng.below(3) {
                            0 => rng.next() as u8,
                            1 => *b ^ (1 << rng.below(8)),
                            _ => b"0123456789 \n=\0\xff\x80"[rng.below(16)],
                        };
                    }
                }
                if rng.below(4) > 0 {
                    for &h in &headers {
                        fix_checksum(&mut tar[h * 512..]);
                    }
                }
                if rng.below(10) == 0 {
                    tar.truncate(rng.below(tar.len() + 1));
                }
                let _ = index(&tar);
            }
        }
    }

    // -- speed (run by hand) ---------------------------------------------------

    /// Times indexing of 20,000 files of 4 KiB through `pread`:
    /// `cargo test --release --lib volume::archive::tar::tests::index_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn index_speed() {
        use crate::medium::MediumFile;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for d in 0..20 {
            fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
            for f in 0..1000 {
                fs::write(src.join(format!("d{d}/f{f}")), pattern(4096, f as u8)).unwrap();
            }
        }
        for format in ["gnu", "pax"] {
            gnu_tar(&src, &[&format!("--format={format}")]);
            let file = File::open(src.with_extension("tar")).unwrap();
            let size = file.metadata().unwrap().len();
            let medium = MediumFile { file, size };
            let mut best = Duration::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let idx = index(&medium).unwrap();
                best = best.min(t.elapsed());
                assert_eq!(idx.stats.files, 20_000);
            }
            eprintln!(
                "{format}: {size} bytes, 20000 x 4 KiB files indexed in {best:?} (best of 5)"
            );
        }
    }
}
