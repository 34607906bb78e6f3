//! fsd: a FUSE daemon that mounts archive containers, shipped drives and
//! native volumes, and copies between them with offload tokens.
//!
//! The library holds everything that can be tested without a mount; the
//! `fsd` and `tokenctl` binaries only parse arguments and call into it. See
//! DESIGN.md §8 for the layout.

pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod lifecycle;
pub mod medium;
pub mod store;
pub mod tier;
pub mod token;
pub mod util;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
