//! `/`: lists the top-level trees of the [`super::Namespace`].

use std::ops::Range;
use std::time::Duration;

use super::{Provider, ROOT_INO, SYNTHETIC_TTL};
use crate::error::{ErrorKind, Result, err};
use crate::fs::Core;
use crate::fs::types::Attr;

pub struct Root;

impl Provider for Root {
    fn name(&self) -> &'static [u8] {
        b""
    }

    fn dir(&self) -> u64 {
        ROOT_INO
    }

    fn reserved(&self) -> Range<u64> {
        0..0
    }

    fn getattr(&self, core: &Core, ino: u64) -> Result<(Attr, Duration)> {
        if ino != ROOT_INO {
            return err(ErrorKind::NotFound);
        }
        let subdirs = core.namespace().top().count() as u32;
        Ok((core.stamp().dir_attr(ROOT_INO, 2 + subdirs), SYNTHETIC_TTL))
    }

    fn lookup(&self, core: &Core, _parent: u64, name: &[u8]) -> Result<(Attr, Duration)> {
        match core.namespace().top().find(|p| p.name() == name) {
            Some(p) => core.getattr(p.dir()),
            None => err(ErrorKind::NotFound),
        }
    }

    fn entries(&self, core: &Core, _dir: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        Ok(core
            .namespace()
            .top()
            .map(|p| (p.name().to_vec(), p.dir()))
            .collect())
    }
}
