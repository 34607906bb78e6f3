//! Sparse write buffers for chunks that already hold sealed data.
//!
//! A write into the middle of a sealed 1 MiB chunk used to load the whole
//! chunk into a 1 MiB buffer at once. Random 4 KiB writes across a large
//! file then cost 1 MiB of reading and 1 MiB of write budget each, and the
//! budget ran out after a few hundred writes, forcing a seal (hash and
//! rewrite of 1 MiB) per write. A [`Patch`] instead keeps only the 4 KiB
//! pages written, and the chunk is read and merged once, when it is sealed
//! (or when so many pages are written that a full buffer is cheaper).

use std::collections::BTreeMap;

/// The page size of a patch (the chunk store's CRC block).
pub const PAGE: usize = crate::store::chunks::BLOCK;

/// Pages past this count turn a patch into a full chunk buffer: by then the
/// pages hold a quarter of a chunk, and a writer touching that many pages is
/// likely to touch the rest.
pub const MAX_PAGES: usize = 64;

/// Pages written into one chunk since it was last sealed.
pub struct Patch {
    /// The chunk's length with the writes applied (at least the sealed
    /// chunk's length).
    len: usize,
    pages: BTreeMap<u32, Box<[u8; PAGE]>>,
}

impl Patch {
    /// An empty patch over a sealed chunk of `base_len` bytes.
    pub fn new(base_len: usize) -> Self {
        Patch {
            len: base_len,
            pages: BTreeMap::new(),
        }
    }

    pub fn chunk_len(&self) -> usize {
        self.len
    }

    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Bytes of memory held (for the write budget).
    pub fn bytes(&self) -> u64 {
        (self.pages.len() * PAGE) as u64
    }

    /// The pages that a write of `n` bytes at `a` would have to create and
    /// does not cover completely (at most its first and last page).
    fn partial_new_pages(&self, a: usize, n: usize) -> Vec<u32> {
        if n == 0 {
            return Vec::new();
        }
        let mut v: Vec<u32> = Vec::new();
        for p in [a / PAGE, (a + n - 1) / PAGE] {
            let ps = p * PAGE;
            let covered = a <= ps && a + n >= ps + PAGE;
            if !covered && !self.pages.contains_key(&(p as u32)) && !v.contains(&(p as u32)) {
                v.push(p as u32);
            }
        }
        v
    }

    /// Writes `data` at chunk offset `a`. `old(page, buf)` fills `buf` with
    /// the sealed bytes of a new page the write only partly covers; it is
    /// not called for pages written whole. All such reads happen before
    /// anything changes, so an error leaves the patch as it was. Returns the
    /// bytes of new pages (for the write budget).
    pub fn write<E>(
        &mut self,
        a: usize,
        data: &[u8],
        mut old: impl FnMut(u32, &mut [u8; PAGE]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut filled = Vec::new();
        for p in self.partial_new_pages(a, data.len()) {
            let mut page = Box::new([0u8; PAGE]);
            old(p, &mut page)?;
            filled.push((p, page));
        }
        let before = self.pages.len();
        self.pages.extend(filled);
        let end = a + data.len();
        let mut pos = a;
        while pos < end {
            let p = pos / PAGE;
            let ps = p * PAGE;
            let to = end.min(ps + PAGE);
            let page = self
                .pages
                .entry(p as u32)
                .or_insert_with(|| Box::new([0u8; PAGE]));
            page[pos - ps..to - ps].copy_from_slice(&data[pos - a..to - a]);
            pos = to;
        }
        self.len = self.len.max(end);
        Ok(((self.pages.len() - before) * PAGE) as u64)
    }

    /// Lays the written pages over `out`, which holds chunk bytes
    /// `[a, a + out.len())` as sealed (zeros past the sealed length).
    pub fn overlay(&self, a: usize, out: &mut [u8]) {
        if out.is_empty() {
            return;
        }
        let end = a + out.len();
        let first = (a / PAGE) as u32;
        let last = ((end - 1) / PAGE) as u32;
        for (&p, page) in self.pages.range(first..=last) {
            let ps = p as usize * PAGE;
            let from = a.max(ps);
            let to = end.min(ps + PAGE);
            out[from - a..to - a].copy_from_slice(&page[from - ps..to - ps]);
        }
    }

    /// Applies the patch to the sealed chunk's bytes in `buf`, giving the
    /// chunk's new content (`len` bytes; the caller has sized `buf`).
    pub fn apply(&self, buf: &mut [u8]) {
        let n = buf.len().min(self.len);
        self.overlay(0, &mut buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patch over `base` gives the same bytes as writing into a copy.
    #[test]
    fn matches_a_plain_buffer() {
        let mut rng = crate::util::TestRng(7);
        for _ in 0..200 {
            let base_len = (rng.next() % (64 * 1024)) as usize;
            let base: Vec<u8> = (0..base_len).map(|i| (i * 7 + 1) as u8).collect();
            let mut model = base.clone();
            let mut p = Patch::new(base_len);
            let mut budget = 0;
            for _ in 0..(rng.next() % 8) {
                let a = (rng.next() % (80 * 1024)) as usize;
                let n = (rng.next() % 9000) as usize + 1;
                let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                budget += p
                    .write(a, &data, |pg, buf| {
                        let ps = pg as usize * PAGE;
                        if ps < base.len() {
                            let m = (base.len() - ps).min(PAGE);
                            buf[..m].copy_from_slice(&base[ps..ps + m]);
                        }
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                if model.len() < a + n {
                    model.resize(a + n, 0);
                }
                model[a..a + n].copy_from_slice(&data);
            }
            assert_eq!(p.chunk_len(), model.len());
            assert_eq!(budget, p.bytes());
            let mut merged = base.clone();
            merged.resize(p.chunk_len(), 0);
            p.apply(&mut merged);
            assert_eq!(merged, model);
            // A read of any range: the sealed bytes (zeros past them) with
            // the pages laid over.
            for _ in 0..10 {
                let a = (rng.next() as usize) % (model.len() + 1);
                let b = a + (rng.next() as usize) % (model.len() - a + 1);
                let mut out: Vec<u8> = (a..b).map(|i| base.get(i).copied().unwrap_or(0)).collect();
                p.overlay(a, &mut out);
                assert_eq!(out, model[a..b]);
            }
        }
    }

    #[test]
    fn whole_pages_need_no_old_bytes() {
        let mut p = Patch::new(1 << 20);
        let mut asked = Vec::new();
        let data = vec![1u8; 2 * PAGE];
        p.write(PAGE, &data, |pg, _| {
            asked.push(pg);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(asked.is_empty());
        p.write(100, &[2u8; 10], |pg, _| {
            asked.push(pg);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(asked, vec![0]);
        assert_eq!(p.pages(), 3);
        assert_eq!(p.partial_new_pages(PAGE * 5 + 1, 10), vec![5]);
        assert_eq!(p.partial_new_pages(PAGE, 10), Vec::<u32>::new());
        assert_eq!(p.partial_new_pages(PAGE * 6 + 1, PAGE * 2), vec![6, 8]);
    }

    #[test]
    fn a_failing_old_read_leaves_the_patch_unchanged() {
        let mut p = Patch::new(PAGE * 4);
        // The write's first page needs no old bytes, its last page does.
        let r = p.write(0, &[1u8; PAGE + 10], |pg, _| {
            if pg == 1 { Err("eio") } else { Ok(()) }
        });
        assert_eq!(r, Err("eio"));
        assert_eq!(p.pages(), 0);
        assert_eq!(p.chunk_len(), PAGE * 4);
    }
}
