//! Offload tokens: the token format, 512-byte subtokens, the token store and
//! the offload engine (ODX / T10 POPULATE TOKEN and WRITE USING TOKEN).

pub mod engine;
pub mod format;
pub mod store;
pub mod subtoken;
