//! Archive volumes: tar and zip media attached by reference and read in place.

pub mod index;
pub mod tar;
pub mod zip;
