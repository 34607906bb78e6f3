//! The `file://` durable tier: a directory, typically on another disk or a
//! network file system, holding chunks and named objects as plain files.
//!
//! Layout under the root:
//!
//! * `chunks/ab/<64 hex digits>`: the chunk's bytes, nothing else (so an
//!   operator can check one with `sha256sum`);
//! * `objects/<key>`: an 8-byte little-endian generation number, then the
//!   object's bytes;
//! * `tmp/`: files being written; anything here after a crash is garbage;
//! * `objects.lock`: the lock that serialises named-object writes.
//!
//! Every write goes to a temporary name in `tmp/`, is fsynced, then moved
//! into place and the directory fsynced, so a crash leaves either the old or
//! the new file, never a torn one.
//!
//! Preconditions on named objects: *create-only* links the temporary file to
//! the final name (`link(2)` fails with `EEXIST` atomically, even against a
//! writer in another process that does not take the lock); *compare-and-swap*
//! takes an exclusive `flock(2)` on `objects.lock`, reads the generation in
//! the object's header, compares it with the caller's version and renames
//! the new file (generation + 1) over it. The version string is that
//! generation in decimal. A generation rather than a content hash makes an
//! ABA write (same bytes written back) still visible as a change, as an S3
//! ETag of a new PUT would not be.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::{DurableTier, ObjectVersion, PutMode, check_key, parse_hash};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::chunks::hex;
use crate::store::treehash::{Hash, sha256};

/// Bytes of the generation header of a named object.
const GEN: usize = 8;

/// A durable tier in a local (or locally mounted) directory.
pub struct FileTier {
    root: PathBuf,
    /// Makes temporary names unique within this process (the pid makes them
    /// unique between processes).
    seq: AtomicU64,
}

impl FileTier {
    /// Opens (creating if needed) the tier at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for d in ["chunks", "objects", "tmp"] {
            fs::create_dir_all(root.join(d))
                .ctx(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(FileTier {
            root: root.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    /// Opens the tier named by a `file:///path` URL.
    pub fn from_url(url: &str) -> Result<Self> {
        match url.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => Self::open(Path::new(p)),
            _ => Err(Error::new(
                ErrorKind::Invalid,
                format!("tier URL {url:?}: expected file:///absolute/path"),
            )),
        }
    }

    fn chunk_path(&self, h: &Hash) -> PathBuf {
        let x = hex(h);
        self.root.join("chunks").join(&x[..2]).join(x)
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    /// Writes `parts` to a new file in `tmp/` and fsyncs it.
    fn write_tmp(&self, parts: &[&[u8]]) -> Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!(".tmp-{}-{n}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        let r = (|| {
            for p in parts {
                f.write_all(p)?;
            }
            f.sync_all()
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&path);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Ok(path)
    }

    /// Creates the parent directory of `path` (and makes that durable).
    fn make_parent(&self, path: &Path) -> Result<()> {
        let parent = path.parent().expect("tier paths have a parent");
        if !parent.is_dir() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            if let Some(pp) = parent.parent() {
                sync_dir(pp)?;
            }
        }
        Ok(())
    }

    /// The generation of object `key`, or `None` if absent.
    fn generation(&self, key: &str) -> Result<Option<u64>> {
        let path = self.object_path(key);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let mut g = [0u8; GEN];
        f.read_exact(&mut g)
            .map_err(|_| Error::corrupt(path.display().to_string(), 0, "no generation header"))?;
        Ok(Some(u64::from_le_bytes(g)))
    }

    fn lock_objects(&self) -> Result<Flock<File>> {
        let path = self.root.join("objects.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(format!("locking {}", path.display()), e.into()))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

fn not_found(what: String) -> Error {
    Error::new(ErrorKind::NotFound, format!("{what} is not in the tier"))
}

impl DurableTier for FileTier {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<()> {
        if sha256(data) != *hash {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "chunk {}: the {} bytes uploaded have another SHA-256; not stored in {}",
                    hex(hash),
                    data.len(),
                    self.describe()
                ),
            ));
        }
        let path = self.chunk_path(hash);
        if path.exists() {
            return Ok(());
        }
        self.make_parent(&path)?;
        let tmp = self.write_tmp(&[data])?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("renaming into {}", path.display()), e));
        }
        sync_dir(path.parent().expect("chunk paths have a parent"))
    }

    fn get_chunk(&self, hash: &Hash, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        let path = self.chunk_path(hash);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_found(format!("chunk {}", hex(hash))));
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let Some(r) = range else {
            let mut v = Vec::new();
            f.read_to_end(&mut v)
                .ctx(|| format!("reading {}", path.display()))?;
            return Ok(v);
        };
        let size = f
            .seek(SeekFrom::End(0))
            .ctx(|| format!("stat of {}", path.display()))?;
        let end = r.end.min(size);
        let start = r.start.min(end);
        let mut v = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut v, start)
            .ctx(|| format!("reading {} at {start}", path.display()))?;
        Ok(v)
    }

    fn head_chunk(&self, hash: &Hash) -> Result<Option<u64>> {
        let path = self.chunk_path(hash);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat of {}", path.display()), e)),
        }
    }

    fn delete_chunk(&self, hash: &Hash) -> Result<()> {
        let path = self.chunk_path(hash);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("chunk paths have a parent")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn list_chunks(&self, prefix: &str) -> Result<Vec<Hash>> {
        let prefix = prefix.to_ascii_lowercase();
        let dir = self.root.join("chunks");
        let mut out = Vec::new();
        for d in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let d = d.ctx(|| format!("listing {}", dir.display()))?;
            let name = d.file_name();
            let Some(name) = name.to_str() else { continue };
            let shared = prefix.len().min(2);
            if name.len() != 2 || name[..shared] != prefix[..shared] {
                continue;
            }
            let sub = d.path();
            for f in fs::read_dir(&sub).ctx(|| format!("listing {}", sub.display()))? {
                let f = f.ctx(|| format!("listing {}", sub.display()))?;
                if let Some(h) = f
                    .file_name()
                    .to_str()
                    .filter(|n| n.starts_with(&prefix))
                    .and_then(parse_hash)
                {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn put_object(&self, key: &str, data: &[u8], mode: PutMode) -> Result<ObjectVersion> {
        check_key(key)?;
        let path = self.object_path(key);
        self.make_parent(&path)?;
        let _lock = self.lock_objects()?;
        let current = self.generation(key)?;
        let next = match (&mode, current) {
            (PutMode::CreateOnly, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!("object {key} already exists in {}", self.describe()),
                ));
            }
            (PutMode::IfMatch(_), None) => return Err(not_found(format!("object {key}"))),
            (PutMode::IfMatch(v), Some(g)) if v.0 != g.to_string() => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "object {key} is at version {g}, not {}: someone else changed it",
                        v.0
                    ),
                ));
            }
            (_, g) => g.unwrap_or(0) + 1,
        };
        let tmp = self.write_tmp(&[&next.to_le_bytes(), data])?;
        let placed = if mode == PutMode::CreateOnly {
            // link(2) fails if the name exists, even against a writer that
            // does not hold our lock.
            fs::hard_link(&tmp, &path).map(|()| {
                let _ = fs::remove_file(&tmp);
            })
        } else {
            fs::rename(&tmp, &path)
        };
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::new(
                    ErrorKind::Exists,
                    format!("object {key} already exists in {}", self.describe()),
                ));
            }
            return Err(Error::io(format!("placing {}", path.display()), e));
        }
        sync_dir(path.parent().expect("object paths have a parent"))?;
        Ok(ObjectVersion(next.to_string()))
    }

    fn get_object(&self, key: &str) -> Result<(Vec<u8>, ObjectVersion)> {
        check_key(key)?;
        let path = self.object_path(key);
        let mut v = match fs::read(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_found(format!("object {key}")));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if v.len() < GEN {
            return Err(Error::corrupt(
                path.display().to_string(),
                0,
                "no generation header",
            ));
        }
        let g = u64::from_le_bytes(v[..GEN].try_into().expect("8 bytes"));
        v.drain(..GEN);
        Ok((v, ObjectVersion(g.to_string())))
    }

    fn delete_object(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let path = self.object_path(key);
        let _lock = self.lock_objects()?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("object paths have a parent")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn list_objects(&self, prefix: &str) -> Result<Vec<String>> {
        fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> Result<()> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for d in rd {
                let d = d.ctx(|| format!("listing {}", dir.display()))?;
                let Some(name) = d.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                // Only descend where the prefix can still match.
                let n = key.len().min(prefix.len());
                if key[..n] != prefix[..n] {
                    continue;
                }
                if d.file_type()
                    .ctx(|| format!("stat of {}", d.path().display()))?
                    .is_dir()
                {
                    walk(&d.path(), &key, prefix, out)?;
                } else if key.starts_with(prefix) {
                    out.push(key);
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.root.join("objects"), "", prefix, &mut out)?;
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> (tempfile::TempDir, FileTier) {
        let d = tempfile::tempdir().unwrap();
        let t = FileTier::from_url(&format!("file://{}", d.path().display())).unwrap();
        (d, t)
    }

    #[test]
    fn chunks_round_trip_whole_and_by_range() {
        let (_d, t) = tier();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let h = sha256(&data);
        assert_eq!(t.head_chunk(&h).unwrap(), None);
        t.put_chunk(&h, &data).unwrap();
        t.put_chunk(&h, &data).unwrap(); // idempotent
        assert_eq!(t.head_chunk(&h).unwrap(), Some(10_000));
        assert_eq!(t.get_chunk(&h, None).unwrap(), data);
        assert_eq!(t.get_chunk(&h, Some(100..200)).unwrap(), &data[100..200]);
        assert_eq!(
            t.get_chunk(&h, Some(9_990..20_000)).unwrap(),
            &data[9_990..]
        );
        assert!(t.get_chunk(&h, Some(20_000..30_000)).unwrap().is_empty());
        let x = hex(&h);
        assert!(
            t.chunk_path(&h)
                .ends_with(format!("chunks/{}/{x}", &x[..2]))
        );
        assert_eq!(t.list_chunks("").unwrap(), vec![h]);
        assert_eq!(t.list_chunks(&x[..5]).unwrap(), vec![h]);
        assert_eq!(t.list_chunks(&x[..1]).unwrap(), vec![h]);
        let other = if x.starts_with('0') { "1" } else { "0" };
        assert!(t.list_chunks(other).unwrap().is_empty());
        t.delete_chunk(&h).unwrap();
        t.delete_chunk(&h).unwrap();
        let e = t.get_chunk(&h, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(fs::read_dir(t.root.join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn a_chunk_whose_bytes_do_not_match_its_name_is_refused() {
        let (_d, t) = tier();
        let h = sha256(b"right");
        let e = t.put_chunk(&h, b"wrong").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert_eq!(t.head_chunk(&h).unwrap(), None);
    }

    #[test]
    fn objects_create_only_and_compare_and_swap() {
        let (_d, t) = tier();
        let v1 = t
            .put_object("vol/a/manifest", b"one", PutMode::CreateOnly)
            .unwrap();
        let e = t
            .put_object("vol/a/manifest", b"two", PutMode::CreateOnly)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists);
        assert_eq!(
            t.get_object("vol/a/manifest").unwrap(),
            (b"one".to_vec(), v1.clone())
        );
        let v2 = t
            .put_object("vol/a/manifest", b"two", PutMode::IfMatch(v1.clone()))
            .unwrap();
        assert_ne!(v1, v2);
        // A writer that still holds the old version loses, even writing back
        // the same bytes.
        let e = t
            .put_object("vol/a/manifest", b"one", PutMode::IfMatch(v1))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(t.get_object("vol/a/manifest").unwrap().0, b"two");
        let e = t
            .put_object("vol/b", b"x", PutMode::IfMatch(v2.clone()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        t.put_object("vol/b", b"x", PutMode::Overwrite).unwrap();
        t.put_object("other", b"y", PutMode::Overwrite).unwrap();
        assert_eq!(
            t.list_objects("vol/").unwrap(),
            vec!["vol/a/manifest", "vol/b"]
        );
        assert_eq!(t.list_objects("").unwrap().len(), 3);
        t.delete_object("vol/b").unwrap();
        t.delete_object("vol/b").unwrap();
        assert_eq!(
            t.get_object("vol/b").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        let (_d, t) = tier();
        for k in ["", "../x", "a//b", "a/./b", "/abs", "a/..", "a b", ".tmp-1"] {
            let e = t.put_object(k, b"x", PutMode::Overwrite).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{k:?}");
        }
        assert!(FileTier::from_url("s3://bucket").is_err());
        assert!(FileTier::from_url("file://relative").is_err());
    }

    #[test]
    fn concurrent_compare_and_swap_has_one_winner_per_version() {
        let (_d, t) = tier();
        let v = t.put_object("m", b"0", PutMode::CreateOnly).unwrap();
        let wins = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let (t, v, wins) = (&t, v.clone(), &wins);
                s.spawn(move || {
                    if t.put_object("m", &[i], PutMode::IfMatch(v)).is_ok() {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::Relaxed), 1);
    }
}
