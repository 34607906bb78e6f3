//! Volume kinds: archive (tar, zip) today; native, drive and tape later.

pub mod archive;
pub mod manager;
