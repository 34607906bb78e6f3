//! The registry of volume kinds: the [`VolumeKind`] trait each kind
//! implements, and [`KINDS`], the table of kinds and the formats they
//! detect on a medium (in the style of ratarmount's `ARCHIVE_BACKENDS`).
//!
//! The [`Manager`](super::manager::Manager) keeps the registry of mounted
//! volumes, the locking, the owner checks, the lifecycle transitions and the
//! catalog records; everything that depends on what a volume *is* (how a
//! medium is indexed, how a volume is mounted, recovered, checked, counted
//! and destroyed) is asked of the volume's kind through this trait. Adding a
//! kind means one new module implementing [`VolumeKind`] and one row in
//! [`KINDS`] (and, if its volumes are detected on a medium, a detection
//! function in that row).

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::archive::index::IndexStats;
use super::native::file::Env;
use super::native::fsck;
use crate::error::{Error, ErrorKind, Result};
use crate::fs::ops::VolumeFs;
use crate::fs::perm::Caller;
use crate::fs::{Core, MediaEntry};
use crate::lifecycle::Kind;
use crate::medium::identity::MediumId;
use crate::medium::{MediumFile, ReadAt, SharedMedium};
use crate::store::catalog::{Catalog, VolumeRecord};
use crate::store::chunks::Orphans;

/// The format a caller asks for when attaching a medium: detected from its
/// content (`auto`), or one of [`KINDS`]' format names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    #[default]
    Auto,
    Tar,
    Zip,
}

impl FormatChoice {
    /// The [`Row::name`] asked for; `None` for `auto`.
    pub fn row_name(self) -> Option<&'static str> {
        match self {
            FormatChoice::Auto => None,
            FormatChoice::Tar => Some("tar"),
            FormatChoice::Zip => Some("zip"),
        }
    }
}

/// What every kind may use: shared by all kinds, read-only.
pub struct Context {
    pub core: Arc<Core>,
    pub catalog: Arc<Catalog>,
    /// The chunk environment (store, chunk access, sealer, budget) and the
    /// `[limits]` of the configuration.
    pub env: Arc<Env>,
    /// Where archive volumes keep their per-volume caches.
    pub cache_dir: PathBuf,
    /// Attribute and entry lifetimes (`mount.archive_ttl_secs`,
    /// `native.ttl_secs`).
    pub archive_ttl: Duration,
    pub native_ttl: Duration,
}

/// How many entries indexing a medium may take, and which limit says so
/// (named in the refusal).
pub struct Budget {
    pub max: u64,
    pub limit: &'static str,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        max: u64::MAX,
        limit: "",
    };
}

/// A medium being attached, as the kind reads it.
pub struct Source<'a> {
    pub file: &'a MediumFile,
    pub meta: &'a std::fs::Metadata,
    /// Names the medium in messages (its canonical path).
    pub label: &'a str,
}

/// What a kind made of a medium (indexed now, or loaded from the catalog):
/// the record's fields, and the kind's own state that [`VolumeKind::mount`]
/// takes.
pub struct Prepared {
    /// The catalog's `format` for the volume.
    pub format: Option<String>,
    /// The number of files, for the record.
    pub files: u64,
    /// Data the catalog keeps with the record (the archive index), as
    /// (version, bytes), when it was built now; `None` when it was loaded.
    pub record_data: Option<(u32, Vec<u8>)>,
    /// The kind's own state, handed back to its `mount`.
    pub state: Box<dyn Any + Send>,
}

/// A medium's volume ready to mount: what the kind prepared, and the medium
/// (with its owner and mode, see [`crate::medium::file::Owned`]).
pub struct Attaching {
    pub prepared: Prepared,
    pub medium: SharedMedium,
}

/// A volume's filesystem and what it shows, which the manager puts in the
/// mount.
pub struct Mount {
    pub fs: Arc<dyn VolumeFs>,
    /// The files shown under `/media`, whole medium first.
    pub media: Vec<MediaEntry>,
    /// Attribute/entry lifetime of its inodes.
    pub ttl: Duration,
}

/// One kind of volume. Methods a kind does not support keep their default,
/// which refuses with the message fsd has always given for it.
pub trait VolumeKind: Send + Sync {
    /// Which kind this is.
    fn kind(&self) -> Kind;

    /// Whether the volume's data stays on a medium fsd does not own
    /// (archive, drive), which the catalog remembers by path.
    fn by_reference(&self) -> bool {
        false
    }

    // -- Creating an empty volume ----------------------------------------

    /// Whether `tokenctl create` makes volumes of this kind.
    fn creates(&self) -> bool {
        false
    }

    /// Checks that `caller` may create one more volume of this kind
    /// (before its name is checked and anything is written).
    fn admit_create(&self, _ctx: &Context, _caller: &Caller) -> Result<()> {
        Err(self.not_created())
    }

    /// Sets up the data of a new volume whose record is committed (its
    /// slot is set). On error the manager deletes the record.
    fn create(&self, _ctx: &Context, _rec: &mut VolumeRecord, _caller: &Caller) -> Result<()> {
        Err(self.not_created())
    }

    /// The refusal of `create` for a kind that is attached, not created.
    fn not_created(&self) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} volumes are attached from a medium, not created",
                self.kind()
            ),
        )
    }

    // -- Attaching a medium ----------------------------------------------

    /// Checks the caller's limits for attaching the medium `label` as a
    /// new volume (`existing` is `None`) or as `existing` again, and says
    /// how much indexing it may take. The default refuses: a medium whose
    /// record is of a kind that is not attached.
    fn admit_attach(
        &self,
        _ctx: &Context,
        _caller: &Caller,
        existing: Option<&VolumeRecord>,
        label: &str,
    ) -> Result<Budget> {
        let (kind, id) = existing.map_or((self.kind().as_str(), ""), |r| (r.kind.as_str(), &r.id));
        Err(Error::new(
            ErrorKind::Exists,
            format!("{label} belongs to {kind} volume {id}"),
        ))
    }

    /// What the indexing of a remembered medium that changed may take, for
    /// its owner (start-up).
    fn reload_budget(&self, _ctx: &Context, _rec: &VolumeRecord) -> Budget {
        Budget::UNLIMITED
    }

    /// The stored state of `rec` if it is current for the medium whose
    /// identity is now `id`; `None` if the medium must be indexed again.
    fn stored(&self, _ctx: &Context, _rec: &VolumeRecord, _id: &MediumId) -> Option<Prepared> {
        None
    }

    /// Whether [`stored`](Self::stored) would find the stored state of
    /// `rec` current, without building it: an attach of a medium that is
    /// already attached and unchanged only needs the answer, and building
    /// the state (decoding a 20,000-member index) would be thrown away.
    fn unchanged(&self, ctx: &Context, rec: &VolumeRecord, id: &MediumId) -> bool {
        self.stored(ctx, rec, id).is_some()
    }

    /// Indexes a medium, as format `row` (`None`: detect it with
    /// [`detect`]), within `budget`.
    fn prepare(
        &self,
        _ctx: &Context,
        src: &Source,
        _row: Option<&'static Row>,
        _budget: &Budget,
        _progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Prepared> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{}: {} volumes are not attached from a medium",
                src.label,
                self.kind()
            ),
        ))
    }

    /// The files a volume of this kind shows under `/media` for its
    /// medium, whole medium first.
    fn media(&self, medium: &SharedMedium) -> Vec<MediaEntry> {
        vec![MediaEntry::whole(medium.clone())]
    }

    // -- Mounting, recovery, usage, destroy, fsck, shelving --------------

    /// The filesystem of the volume `rec`: from its record alone, or from
    /// the medium being attached.
    fn mount(
        &self,
        ctx: &Context,
        rec: &VolumeRecord,
        attaching: Option<Attaching>,
    ) -> Result<Mount>;

    /// Runs once at start-up, after a run that may have crashed, before
    /// any volume is mounted or request served.
    fn recover(&self, _ctx: &Context, _policy: Orphans) -> Result<()> {
        Ok(())
    }

    /// (files, bytes) of a mounted volume now, if they change while it is
    /// mounted; `None` keeps the record's numbers.
    fn usage(&self, _ctx: &Context, _slot: u32) -> Option<(u64, u64)> {
        None
    }

    /// The index statistics `tokenctl status VOLUME` shows.
    fn index_stats(&self, _ctx: &Context, _rec: &VolumeRecord) -> Result<Option<IndexStats>> {
        Ok(None)
    }

    /// Deletes the kind's own rows of the volume `rec`, inside the
    /// transaction that deletes its record.
    fn destroy(
        &self,
        _ctx: &Context,
        _tx: &rusqlite::Transaction,
        _rec: &VolumeRecord,
    ) -> Result<()> {
        Ok(())
    }

    /// After a destroy committed: releases what the volume held.
    fn destroyed(&self, _ctx: &Context) {}

    /// Whether `tokenctl fsck` checks volumes of this kind.
    fn checks(&self) -> bool {
        false
    }

    /// Checks `targets`, volumes of this kind; `whole` adds the checks of
    /// what they share (the chunk store). Called only if [`checks`](Self::checks).
    fn fsck(
        &self,
        _ctx: &Context,
        _targets: &[fsck::Target],
        _whole: bool,
        _repair: bool,
    ) -> Result<fsck::Report> {
        Ok(fsck::Report::default())
    }

    /// Whether the volume `rec` can be shelved (its data moved to the
    /// durable tier); the error says why not and what to do instead.
    fn shelvable(&self, rec: &VolumeRecord) -> Result<()>;
}

/// Recognises a medium: `head` is its first bytes (up to [`HEAD`]), and the
/// medium itself is there for formats whose signature is elsewhere (a zip's
/// is at its end).
pub type Detect = fn(head: &[u8], medium: &dyn ReadAt) -> bool;

/// Builds a kind's implementation (once per kind, when the manager starts).
pub type Construct = fn() -> Box<dyn VolumeKind>;

/// How many first bytes of a medium detection reads.
pub const HEAD: usize = 512;

/// One row of [`KINDS`]: a kind, or one format of a kind.
pub struct Row {
    /// The name `--format` and the catalog's `format` use.
    pub name: &'static str,
    pub kind: Kind,
    /// The catalog `format` values this row serves.
    pub formats: &'static [&'static str],
    /// Recognises this row's media; `None` for a kind that is not found on
    /// a medium (native volumes are created).
    pub detect: Option<Detect>,
    pub new: Construct,
}

/// The kinds, and the formats they detect. Detection tries the rows in
/// order and takes the first that recognises the medium: tar before zip,
/// because a tar may well contain a zip near its end, which the zip probe
/// (it also finds self-extracting zips) would mistake for a zip.
pub const KINDS: &[Row] = &[
    Row {
        name: "tar",
        kind: Kind::Archive,
        formats: &["tar"],
        detect: Some(super::archive::kind::is_tar),
        new: super::archive::kind::new,
    },
    Row {
        name: "zip",
        kind: Kind::Archive,
        formats: &["zip"],
        detect: Some(super::archive::kind::is_zip),
        new: super::archive::kind::new,
    },
    Row {
        name: "native",
        kind: Kind::Native,
        formats: &[],
        detect: None,
        new: super::native::kind::new,
    },
];

/// Magic numbers of compressed streams no row serves yet, to give a precise
/// refusal.
const COMPRESSED: &[(&[u8], &str)] = &[
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
];

/// The row whose name is `name` (a `--format`).
pub fn row(name: &str) -> Option<&'static Row> {
    KINDS.iter().find(|r| r.name == name)
}

/// The row serving the catalog `format` value `format`.
pub fn serving(format: &str) -> Option<&'static Row> {
    KINDS.iter().find(|r| r.formats.contains(&format))
}

/// Decides what a medium is from its content: the first row of [`KINDS`]
/// that recognises it, or a refusal naming `label`.
pub fn detect(medium: &dyn ReadAt, label: &str) -> Result<&'static Row> {
    let mut head = [0u8; HEAD];
    let n = medium
        .read_at(&mut head, 0)
        .map_err(|e| Error::io(format!("{label}: reading the first block"), e))?;
    detect_head(&head[..n], medium, label)
}

fn detect_head(head: &[u8], medium: &dyn ReadAt, label: &str) -> Result<&'static Row> {
    if let Some(r) = KINDS
        .iter()
        .find(|r| r.detect.is_some_and(|d| d(head, medium)))
    {
        return Ok(r);
    }
    for (magic, name) in COMPRESSED {
        if head.starts_with(magic) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{label}: a {name}-compressed stream; attach the decompressed archive \
                     (compressed archives are not supported yet)"
                ),
            ));
        }
    }
    Err(Error::corrupt(
        label,
        0,
        "not a tar or zip archive (no valid tar header and no zip signature)",
    ))
}

/// The kinds' implementations, one per kind, built from [`KINDS`].
pub struct Kinds {
    kinds: Vec<Box<dyn VolumeKind>>,
}

impl Default for Kinds {
    fn default() -> Self {
        Self::new()
    }
}

impl Kinds {
    pub fn new() -> Self {
        let mut kinds: Vec<Box<dyn VolumeKind>> = Vec::new();
        for r in KINDS {
            if !kinds.iter().any(|k| k.kind() == r.kind) {
                kinds.push((r.new)());
            }
        }
        Kinds { kinds }
    }

    /// The implementation of `kind`.
    pub fn get(&self, kind: Kind) -> Result<&dyn VolumeKind> {
        self.kinds
            .iter()
            .find(|k| k.kind() == kind)
            .map(|k| k.as_ref())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("{kind} volumes are not supported by this fsd"),
                )
            })
    }

    /// Every kind, in table order.
    pub fn all(&self) -> impl Iterator<Item = &dyn VolumeKind> {
        self.kinds.iter().map(|k| k.as_ref())
    }

    /// The kind `tokenctl create` makes.
    pub fn creator(&self) -> Result<&dyn VolumeKind> {
        self.all()
            .find(|k| k.creates())
            .ok_or_else(|| Error::new(ErrorKind::Unsupported, "no kind of volume is created"))
    }

    /// The kind of a new medium, and its format: the one `format` names,
    /// or the one detection finds.
    ///
    /// A medium nothing recognises goes, without a format, to the first
    /// kind that detects media, whose [`VolumeKind::prepare`] runs
    /// [`detect`] again and refuses it. So the caller's limits
    /// ([`VolumeKind::admit_attach`]) are still checked first, as they
    /// always were, and the refusal is the table's.
    pub fn for_medium(
        &self,
        format: FormatChoice,
        medium: &dyn ReadAt,
        label: &str,
    ) -> Result<(&dyn VolumeKind, Option<&'static Row>)> {
        let found = match format.row_name().and_then(row) {
            Some(r) => Some(r),
            None => detect(medium, label).ok(),
        };
        let kind = found
            .or_else(|| KINDS.iter().find(|r| r.detect.is_some()))
            .map(|r| r.kind)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("{label}: no kind of volume is attached from a medium"),
                )
            })?;
        Ok((self.get(kind)?, found))
    }

    /// The refusal of `tokenctl fsck VOLUME` for a volume of a kind that
    /// has nothing to check.
    pub fn fsck_refusal(&self, rec: &VolumeRecord) -> Error {
        let checked: Vec<&str> = self
            .all()
            .filter(|k| k.checks())
            .map(|k| k.kind().as_str())
            .collect();
        Error::new(
            ErrorKind::Invalid,
            format!(
                "{}: fsck checks {} volumes; this one is {}",
                rec.id,
                checked.join(" and "),
                rec.kind
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a.txt", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    /// An empty zip: just the end of central directory record.
    fn zip_bytes() -> Vec<u8> {
        let mut z = b"PK\x05\x06".to_vec();
        z.resize(22, 0);
        z
    }

    #[test]
    fn detection_picks_the_row() {
        assert_eq!(detect(&tar_bytes(), "t").unwrap().name, "tar");
        assert_eq!(detect(&zip_bytes(), "z").unwrap().name, "zip");
        // A tar whose last member is a zip is a tar.
        let mut b = ::tar::Builder::new(Vec::new());
        let z = zip_bytes();
        let mut h = ::tar::Header::new_ustar();
        h.set_size(z.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "inner.zip", &z[..]).unwrap();
        let mut t = b.into_inner().unwrap();
        t.extend_from_slice(&z);
        assert_eq!(detect(&t, "t").unwrap().name, "tar");
    }

    #[test]
    fn unknown_data_is_refused_with_the_message() {
        let e = detect(&vec![0u8; 1024], "x").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("not a tar or zip archive"), "{e}");
        let e = detect(&b"short".to_vec(), "x").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let e = detect(&b"\x1f\x8b\x08rest".to_vec(), "x").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("gzip-compressed"), "{e}");
    }

    #[test]
    fn every_kind_has_a_row_and_one_implementation() {
        let kinds = Kinds::new();
        for &k in Kind::ALL {
            assert_eq!(kinds.get(k).unwrap().kind(), k);
            assert!(KINDS.iter().any(|r| r.kind == k));
        }
        assert_eq!(kinds.all().count(), Kind::ALL.len());
        assert_eq!(kinds.creator().unwrap().kind(), Kind::Native);
    }

    #[test]
    fn formats_and_choices_name_rows() {
        for c in [FormatChoice::Tar, FormatChoice::Zip] {
            let r = row(c.row_name().unwrap()).unwrap();
            assert_eq!(r.kind, Kind::Archive);
            assert_eq!(serving(r.name).unwrap().name, r.name);
        }
        assert!(FormatChoice::Auto.row_name().is_none());
        assert!(serving("native").is_none());
        assert!(row("gzip").is_none());
    }

    fn rec(kind: Kind) -> VolumeRecord {
        VolumeRecord {
            slot: 1,
            id: "vol-1".into(),
            name: None,
            kind,
            state: crate::lifecycle::Attachment::Attached,
            residency: crate::lifecycle::Residency::Hot,
            format: None,
            medium_path: Some("/srv/a.tar".into()),
            medium_size: None,
            medium_mtime_ns: None,
            medium_sample: None,
            size: 0,
            files: 0,
            owner_uid: 0,
            created_ns: 0,
            root_ino: None,
        }
    }

    #[test]
    fn a_new_medium_goes_to_the_kind_of_its_row() {
        let kinds = Kinds::new();
        let (k, r) = kinds
            .for_medium(FormatChoice::Auto, &zip_bytes(), "z")
            .unwrap();
        assert_eq!((k.kind(), r.unwrap().name), (Kind::Archive, "zip"));
        // Forced: no detection.
        let (k, r) = kinds
            .for_medium(FormatChoice::Tar, &zip_bytes(), "z")
            .unwrap();
        assert_eq!((k.kind(), r.unwrap().name), (Kind::Archive, "tar"));
        // Unknown: the first detecting kind, which refuses it when indexing.
        let (k, r) = kinds
            .for_medium(FormatChoice::Auto, &vec![0u8; 1024], "x")
            .unwrap();
        assert_eq!(k.kind(), Kind::Archive);
        assert!(r.is_none());
    }

    #[test]
    fn fsck_refusal_names_the_kinds_that_check() {
        assert_eq!(
            Kinds::new().fsck_refusal(&rec(Kind::Archive)).to_string(),
            "vol-1: fsck checks native volumes; this one is archive"
        );
    }

    #[test]
    fn only_what_fsd_owns_can_be_shelved() {
        let kinds = Kinds::new();
        assert!(
            kinds
                .get(Kind::Native)
                .unwrap()
                .shelvable(&rec(Kind::Native))
                .is_ok()
        );
        let archive = kinds.get(Kind::Archive).unwrap();
        assert!(archive.by_reference());
        let e = archive.shelvable(&rec(Kind::Archive)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("tokenctl import"), "{e}");
        assert!(e.to_string().contains("/srv/a.tar"), "{e}");
    }
}
