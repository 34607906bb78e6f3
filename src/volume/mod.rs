//! Volume kinds: archive (tar, zip) and native (writable, chunk store).

pub mod archive;
pub mod manager;
pub mod native;
