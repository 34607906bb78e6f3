//! Small helpers shared across modules.

use rand::TryRng;

use crate::error::{Error, ErrorKind, Result};

/// Fills `buf` from the operating system's CSPRNG (getrandom(2)). Token keys
/// and volume IDs come from here, never from a user-space PRNG.
pub fn os_random(buf: &mut [u8]) -> Result<()> {
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|e| Error::new(ErrorKind::Io, format!("OS random number generator: {e}")))
}

/// A new volume ID: `vol-` and 16 lowercase hex digits.
pub fn new_volume_id() -> Result<String> {
    let mut b = [0u8; 8];
    os_random(&mut b)?;
    Ok(format!("vol-{}", hex::encode(b)))
}

/// True for strings shaped like a volume ID.
pub fn is_volume_id(s: &str) -> bool {
    s.len() == 20
        && s.starts_with("vol-")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC, e.g.
/// `2026-11-23T20:02:00Z`.
pub fn fmt_utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000) as libc::time_t;
    // SAFETY: gmtime_r writes only into `tm`, which outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::gmtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{secs}");
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Formats a byte count for people: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A seeded xorshift generator for unit tests that damage inputs at
/// random: reproducible from its seed, unlike the OS generator.
#[cfg(test)]
pub struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    #[allow(clippy::should_implement_trait)] // an infinite stream; `next` reads as in the xorshift papers
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Nanoseconds since the epoch by the wall clock, negative before it and
/// saturating: the timestamps the catalog and the store keep. The same value
/// as `fs::types::Timespec::now().as_nanos()`, here so that `store` need
/// not import `fs`.
pub fn now_ns() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Capacity figures for `statfs`, of a volume or of the hot tier's
/// filesystem. Shared by `fs` (which answers statfs(2) with it) and `store`
/// (which measures the tier), so it lives in neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = new_volume_id().unwrap();
        assert!(is_volume_id(&a), "{a}");
        assert_ne!(a, new_volume_id().unwrap());
        assert!(!is_volume_id("vol-0123456789ABCDEF"));
        assert!(!is_volume_id("vol-0123"));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
