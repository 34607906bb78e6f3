//! The AWS Glacier SHA-256 tree hash.
//!
//! Leaves are the SHA-256 of each 1 MiB piece of the data (the last may be
//! shorter). Adjacent hashes are paired left to right and each pair hashed as
//! `SHA-256(left || right)`; an odd hash at the end of a level is carried up
//! unchanged. The root of a single leaf is that leaf, so data of 1 MiB or less
//! hashes to its plain SHA-256.
//!
//! Native files store exactly these leaves (a chunk is 1 MiB at a fixed
//! offset, named by its SHA-256), so their tree hash needs no data at all.

use sha2::{Digest, Sha256};

/// The size of a leaf: 1 MiB, the same as a chunk.
pub const LEAF: usize = 1 << 20;

pub type Hash = [u8; 32];

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// The tree hash root of `leaves` (in order). No leaves is the hash of the
/// empty input, as Glacier defines it for an empty archive.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return sha256(b"");
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [a, b] => {
                    let mut h = Sha256::new();
                    h.update(a);
                    h.update(b);
                    next.push(h.finalize().into());
                }
                [a] => next.push(*a),
                _ => {}
            }
        }
        level = next;
    }
    level[0]
}

/// The SHA-256 of `len` zero bytes, for holes; the full-leaf value is cached.
pub fn zero_leaf(len: usize) -> Hash {
    static FULL: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    if len == LEAF {
        return *FULL.get_or_init(|| sha256(&vec![0u8; LEAF]));
    }
    sha256(&vec![0u8; len])
}

/// Computes a tree hash over a stream, one leaf at a time, in constant
/// memory apart from the list of leaf hashes.
#[derive(Default)]
pub struct TreeHasher {
    leaves: Vec<Hash>,
    current: Sha256,
    filled: usize,
}

impl TreeHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (LEAF - self.filled).min(data.len());
            self.current.update(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == LEAF {
                let done = std::mem::take(&mut self.current);
                self.leaves.push(done.finalize().into());
                self.filled = 0;
            }
        }
    }

    pub fn finish(mut self) -> Hash {
        if self.filled > 0 || self.leaves.is_empty() {
            self.leaves.push(self.current.finalize().into());
        }
        root(&self.leaves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(mib: usize) -> String {
        let mut h = TreeHasher::new();
        let buf = vec![0u8; 64 * 1024];
        for _ in 0..mib * 16 {
            h.update(&buf);
        }
        hex::encode(h.finish())
    }

    #[test]
    fn glacier_vectors() {
        assert_eq!(
            zeros(1),
            "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"
        );
        assert_eq!(
            zeros(3),
            "ca6cc129a4514ec765de86a4e7a49adf44842c9cac213c383ebe4071271bdf21"
        );
        assert_eq!(
            zeros(7),
            "091961d52b7a7681230b75c5652a1750690133b6762b02f012513265e80dde30"
        );
        let mut h = TreeHasher::new();
        h.update(b"abc");
        assert_eq!(hex::encode(h.finish()), hex::encode(sha256(b"abc")));
    }

    #[test]
    fn leaves_and_stream_agree() {
        let data: Vec<u8> = (0..(5 * LEAF + 12345)).map(|i| (i % 253) as u8).collect();
        let leaves: Vec<Hash> = data.chunks(LEAF).map(sha256).collect();
        let mut h = TreeHasher::new();
        for piece in data.chunks(77_777) {
            h.update(piece);
        }
        assert_eq!(h.finish(), root(&leaves));
        assert_eq!(zero_leaf(LEAF), sha256(&vec![0; LEAF]));
        assert_eq!(root(&[]), sha256(b""));
    }
}
