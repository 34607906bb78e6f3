//! Invariants every index must keep, whatever the input: data locations
//! inside the medium, references in bounds, and a lossless round trip
//! through the catalog encoding.

use fsd::volume::archive::index::{ArchiveIndex, Data, Meta};

pub fn meta() -> Meta {
    Meta {
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
    }
}

pub fn check(idx: &ArchiveIndex, medium_len: u64) {
    for n in &idx.nodes {
        match &n.data {
            Data::None => {}
            Data::Stored { offset } => {
                assert!(offset.checked_add(n.size).is_some_and(|e| e <= medium_len));
            }
            Data::Sparse { segments } => {
                let mut end = 0;
                for s in segments {
                    assert!(s.logical >= end, "segments overlap");
                    end = s.logical + s.len;
                    assert!(end <= n.size, "segment past the size");
                    assert!(s.offset.checked_add(s.len).is_some_and(|e| e <= medium_len));
                }
            }
            Data::Deflate { offset, csize, .. } => {
                assert!(offset.checked_add(*csize).is_some_and(|e| e <= medium_len));
            }
        }
    }
    for e in &idx.dirents {
        assert!((e.node as usize) < idx.nodes.len());
        assert!(!e.name.is_empty() && e.name != b"." && e.name != b"..");
        assert!(!e.name.contains(&b'/') && !e.name.contains(&0));
    }
    let back = ArchiveIndex::from_bytes(&idx.to_bytes()).expect("round trip");
    assert!(back == *idx);
}
