//! A [`DurableTier`] wrapper for tests: it counts calls per operation and
//! injects failures, so recall, shelving and retry paths can be tested
//! against a tier that misbehaves in exactly the way a test asks (after
//! mountpoint-s3's `failure_client.rs`). Calls that are not made to fail
//! go to the wrapped tier unchanged.

use std::collections::HashMap;
use std::ops::Range;

use parking_lot::Mutex;

use super::{DurableTier, ObjectVersion, PutMode};
use crate::error::{Error, ErrorKind, Result};
use crate::store::chunks::hex;
use crate::store::treehash::Hash;

/// The operations of [`DurableTier`], for counting and for rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutChunk,
    GetChunk,
    HeadChunk,
    DeleteChunk,
    ListChunks,
    PutObject,
    GetObject,
    DeleteObject,
    ListObjects,
}

/// What a rule does to a call it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this kind, without reaching the inner tier.
    Fail(ErrorKind),
    /// The call succeeds but one byte of the data it returns is flipped
    /// (gets only).
    Corrupt,
    /// The call succeeds but returns only the first half of its data
    /// (gets only).
    Short,
}

/// Which calls a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum When {
    /// The `n`th call (1-based) of the operation.
    Nth(u64),
    /// Every call whose key (a chunk's hex name, an object's key, a list
    /// prefix) contains this string.
    Key(String),
    /// Every call.
    Always,
}

#[derive(Default)]
struct State {
    calls: HashMap<Op, u64>,
    rules: Vec<(Op, When, Fault)>,
}

/// Wraps a tier, counting and failing calls as told.
pub struct FailureTier<T> {
    inner: T,
    state: Mutex<State>,
}

impl<T: DurableTier> FailureTier<T> {
    pub fn new(inner: T) -> Self {
        FailureTier {
            inner,
            state: Mutex::default(),
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// How many calls of `op` were made (including failed ones).
    pub fn calls(&self, op: Op) -> u64 {
        self.state.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Applies `fault` to the `n`th call (1-based) of `op`.
    pub fn on_nth(&self, op: Op, n: u64, fault: Fault) {
        self.state.lock().rules.push((op, When::Nth(n), fault));
    }

    /// Applies `fault` to every call of `op` whose key contains `key`.
    pub fn on_key(&self, op: Op, key: &str, fault: Fault) {
        self.state
            .lock()
            .rules
            .push((op, When::Key(key.into()), fault));
    }

    /// Applies `fault` to every call of `op`.
    pub fn always(&self, op: Op, fault: Fault) {
        self.state.lock().rules.push((op, When::Always, fault));
    }

    /// Removes every rule (the counts stay).
    pub fn clear(&self) {
        self.state.lock().rules.clear();
    }

    /// Counts a call and returns the fault that applies to it, if any.
    fn enter(&self, op: Op, key: &str) -> Option<Fault> {
        let mut st = self.state.lock();
        let n = st.calls.entry(op).or_insert(0);
        *n += 1;
        let n = *n;
        st.rules.iter().find_map(|(o, w, f)| {
            let hit = *o == op
                && match w {
                    When::Nth(k) => *k == n,
                    When::Key(s) => key.contains(s.as_str()),
                    When::Always => true,
                };
            hit.then_some(*f)
        })
    }

    /// Runs `call` unless a `Fail` fault applies; applies `Corrupt`/`Short`
    /// to the bytes it returns.
    fn run<R>(
        &self,
        op: Op,
        key: &str,
        call: impl FnOnce() -> Result<R>,
        bytes: impl FnOnce(&mut R) -> Option<&mut Vec<u8>>,
    ) -> Result<R> {
        let fault = self.enter(op, key);
        if let Some(Fault::Fail(kind)) = fault {
            return Err(Error::new(
                kind,
                format!("injected failure of {op:?} on {key:?}"),
            ));
        }
        let mut r = call()?;
        if let Some(v) = bytes(&mut r) {
            match fault {
                Some(Fault::Corrupt) if !v.is_empty() => {
                    let i = v.len() / 2;
                    v[i] ^= 0x5a;
                }
                Some(Fault::Short) => v.truncate(v.len() / 2),
                _ => {}
            }
        }
        Ok(r)
    }
}

fn none<R>(_: &mut R) -> Option<&mut Vec<u8>> {
    None
}

impl<T: DurableTier> DurableTier for FailureTier<T> {
    fn describe(&self) -> String {
        format!("failure({})", self.inner.describe())
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<()> {
        self.run(
            Op::PutChunk,
            &hex(hash),
            || self.inner.put_chunk(hash, data),
            none,
        )
    }

    fn get_chunk(&self, hash: &Hash, range: Option<Range<u64>>) -> Result<Vec<u8>> {
        self.run(
            Op::GetChunk,
            &hex(hash),
            || self.inner.get_chunk(hash, range),
            |v| Some(v),
        )
    }

    fn head_chunk(&self, hash: &Hash) -> Result<Option<u64>> {
        self.run(
            Op::HeadChunk,
            &hex(hash),
            || self.inner.head_chunk(hash),
            none,
        )
    }

    fn delete_chunk(&self, hash: &Hash) -> Result<()> {
        self.run(
            Op::DeleteChunk,
            &hex(hash),
            || self.inner.delete_chunk(hash),
            none,
        )
    }

    fn list_chunks(&self, prefix: &str) -> Result<Vec<Hash>> {
        self.run(
            Op::ListChunks,
            prefix,
            || self.inner.list_chunks(prefix),
            none,
        )
    }

    fn put_object(&self, key: &str, data: &[u8], mode: PutMode) -> Result<ObjectVersion> {
        self.run(
            Op::PutObject,
            key,
            || self.inner.put_object(key, data, mode),
            none,
        )
    }

    fn get_object(&self, key: &str) -> Result<(Vec<u8>, ObjectVersion)> {
        self.run(
            Op::GetObject,
            key,
            || self.inner.get_object(key),
            |r| Some(&mut r.0),
        )
    }

    fn delete_object(&self, key: &str) -> Result<()> {
        self.run(
            Op::DeleteObject,
            key,
            || self.inner.delete_object(key),
            none,
        )
    }

    fn list_objects(&self, prefix: &str) -> Result<Vec<String>> {
        self.run(
            Op::ListObjects,
            prefix,
            || self.inner.list_objects(prefix),
            none,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::treehash::sha256;
    use crate::tier::FileTier;

    fn tier() -> (tempfile::TempDir, FailureTier<FileTier>) {
        let d = tempfile::tempdir().unwrap();
        let t = FailureTier::new(FileTier::open(d.path()).unwrap());
        (d, t)
    }

    #[test]
    fn counts_calls_and_fails_the_nth() {
        let (_d, t) = tier();
        let h = sha256(b"abc");
        t.on_nth(Op::PutChunk, 2, Fault::Fail(ErrorKind::Unavailable));
        t.put_chunk(&h, b"abc").unwrap();
        let e = t.put_chunk(&h, b"abc").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        t.put_chunk(&h, b"abc").unwrap();
        assert_eq!(t.calls(Op::PutChunk), 3);
        assert_eq!(t.calls(Op::GetChunk), 0);
        assert_eq!(t.get_chunk(&h, None).unwrap(), b"abc");
        assert_eq!(t.calls(Op::GetChunk), 1);
    }

    #[test]
    fn fails_by_key_and_damages_returned_bytes() {
        let (_d, t) = tier();
        let a = sha256(b"aaaa");
        let b = sha256(b"bbbb");
        t.put_chunk(&a, b"aaaa").unwrap();
        t.put_chunk(&b, b"bbbb").unwrap();
        t.on_key(Op::GetChunk, &hex(&a)[..16], Fault::Fail(ErrorKind::Io));
        assert_eq!(t.get_chunk(&a, None).unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(t.get_chunk(&b, None).unwrap(), b"bbbb");
        t.clear();
        t.on_nth(Op::GetChunk, 3, Fault::Corrupt);
        t.on_nth(Op::GetChunk, 4, Fault::Short);
        let bad = t.get_chunk(&a, None).unwrap();
        assert_ne!(bad, b"aaaa");
        assert_eq!(bad.len(), 4);
        assert_eq!(t.get_chunk(&a, None).unwrap(), b"aa");
        assert_eq!(t.get_chunk(&a, None).unwrap(), b"aaaa");
        t.put_object("m", b"manifest", PutMode::CreateOnly).unwrap();
        t.always(Op::GetObject, Fault::Short);
        assert_eq!(t.get_object("m").unwrap().0, b"mani");
        t.always(Op::PutObject, Fault::Fail(ErrorKind::Busy));
        assert_eq!(
            t.put_object("m", b"x", PutMode::Overwrite)
                .unwrap_err()
                .kind(),
            ErrorKind::Busy
        );
        assert_eq!(t.inner().get_object("m").unwrap().0, b"manifest");
    }
}
