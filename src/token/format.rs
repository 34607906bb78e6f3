//! The logical offload token: its binary layout, encoding and decoding.
//!
//! A token is a bearer capability for an immutable image of some bytes. Its
//! layout (all integers big-endian, as in T10):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "FSDTOKEN"
//!      8     2  format version (1)
//!     10     2  header length (64)
//!     12     4  ROD type (T10: 0x00800002 change-vulnerable,
//!                          0x00800003 persistent)
//!     16     8  creation time, ns since the epoch
//!     24     8  expiry time, ns since the epoch
//!     32     4  inactivity timeout, seconds
//!     36     4  total token length in bytes
//!     40     8  provider ID P (per state directory, persistent)
//!     48    16  reserved (zero)
//!     64    32  R: random key from the OS CSPRNG
//!     96     …  vendor data V (below)
//!      …   384  reserved X (zero)
//! ```
//!
//! Vendor data V: provider address (u16 length + UTF-8: the control socket
//! path), source volume ID (20 bytes), source inode (u64) and generation
//! (u64), snapshot ID (u64), represented length (u64), range count (u32),
//! then `count` × (offset u64, length u64).
//!
//! The token grows with the number of ranges (16 bytes each); with one range
//! and no address it is already 554 bytes, so every token is larger than
//! 512 bytes and travels as at least two subtokens.

use crate::error::{Error, ErrorKind, Result};

pub const MAGIC: &[u8; 8] = b"FSDTOKEN";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
pub const KEY_LEN: usize = 32;
pub const RESERVED_LEN: usize = 384;
/// Provider ID length.
pub const P_LEN: usize = 8;
/// Most ranges one token may describe.
pub const MAX_RANGES: usize = 4096;

/// T10 ROD types (SPC-4 table "ROD type").
pub const ROD_CHANGE_VULNERABLE: u32 = 0x0080_0002;
pub const ROD_PERSISTENT: u32 = 0x0080_0003;
/// ODX STORAGE_OFFLOAD_TOKEN_TYPE_ZERO_DATA (T10 "block device zero ROD").
pub const ROD_ZERO: u32 = 0xFFFF_0001;

/// One range of the source file that the token represents, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub offset: u64,
    pub length: u64,
}

/// A decoded logical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub rod_type: u32,
    pub created_ns: i64,
    pub expires_ns: i64,
    pub inactivity_secs: u32,
    pub provider: [u8; P_LEN],
    pub key: [u8; KEY_LEN],
    pub address: String,
    pub volume: String,
    pub inode: u64,
    pub generation: u64,
    pub snapshot: u64,
    pub length: u64,
    pub ranges: Vec<Range>,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::TokenCorrupt, msg.into())
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| corrupt(format!("token ends inside a field at byte {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
}

impl Token {
    /// Encodes the token.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
        v.extend_from_slice(&self.rod_type.to_be_bytes());
        v.extend_from_slice(&self.created_ns.to_be_bytes());
        v.extend_from_slice(&self.expires_ns.to_be_bytes());
        v.extend_from_slice(&self.inactivity_secs.to_be_bytes());
        v.extend_from_slice(&(self.encoded_len() as u32).to_be_bytes());
        v.extend_from_slice(&self.provider);
        v.extend_from_slice(&[0u8; 16]);
        v.extend_from_slice(&self.key);
        let addr = self.address.as_bytes();
        let addr = &addr[..addr.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        v.extend_from_slice(addr);
        let mut vol = [0u8; 20];
        let vb = self.volume.as_bytes();
        vol[..vb.len().min(20)].copy_from_slice(&vb[..vb.len().min(20)]);
        v.extend_from_slice(&vol);
        v.extend_from_slice(&self.inode.to_be_bytes());
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.snapshot.to_be_bytes());
        v.extend_from_slice(&self.length.to_be_bytes());
        v.extend_from_slice(&(self.ranges.len() as u32).to_be_bytes());
        for r in &self.ranges {
            v.extend_from_slice(&r.offset.to_be_bytes());
            v.extend_from_slice(&r.length.to_be_bytes());
        }
        v.extend_from_slice(&[0u8; RESERVED_LEN]);
        v
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + KEY_LEN
            + 2
            + self.address.len().min(u16::MAX as usize)
            + 20
            + 8 * 4
            + 4
            + 16 * self.ranges.len()
            + RESERVED_LEN
    }

    /// Decodes and checks the structure of a token (not its validity: that
    /// takes the token store).
    pub fn decode(b: &[u8]) -> Result<Token> {
        let mut r = Reader { b, pos: 0 };
        if r.take(8)? != MAGIC {
            return Err(corrupt("not an fsd token (bad magic)"));
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::TokenUnsupported,
                format!("token format version {version} is not supported"),
            ));
        }
        if r.u16()? as usize != HEADER_LEN {
            return Err(corrupt("bad header length"));
        }
        let rod_type = r.u32()?;
        let created_ns = r.u64()? as i64;
        let expires_ns = r.u64()? as i64;
        let inactivity_secs = r.u32()?;
        let total = r.u32()? as usize;
        if total != b.len() {
            return Err(Error::new(
                ErrorKind::TokenInvalidLength,
                format!("token says {total} bytes, has {}", b.len()),
            ));
        }
        let mut provider = [0u8; P_LEN];
        provider.copy_from_slice(r.take(P_LEN)?);
        if r.take(16)?.iter().any(|&x| x != 0) {
            return Err(corrupt("reserved header bytes are not zero"));
        }
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(r.take(KEY_LEN)?);
        let alen = r.u16()? as usize;
        let address = String::from_utf8(r.take(alen)?.to_vec())
            .map_err(|_| corrupt("provider address is not UTF-8"))?;
        let vol = r.take(20)?;
        let name_len = vol.iter().position(|&c| c == 0).unwrap_or(vol.len());
        if vol[name_len..].iter().any(|&c| c != 0) {
            return Err(corrupt("volume ID field has bytes after its end"));
        }
        let volume = String::from_utf8(vol.iter().copied().take_while(|&c| c != 0).collect())
            .map_err(|_| corrupt("volume ID is not UTF-8"))?;
        let inode = r.u64()?;
        let generation = r.u64()?;
        let snapshot = r.u64()?;
        let length = r.u64()?;
        let count = r.u32()? as usize;
        if count > MAX_RANGES {
            return Err(corrupt(format!(
                "{count} ranges exceed the limit of {MAX_RANGES}"
            )));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut sum: u64 = 0;
        for _ in 0..count {
            let offset = r.u64()?;
            let length = r.u64()?;
            offset
                .checked_add(length)
                .ok_or_else(|| corrupt("range overflows"))?;
            sum = sum
                .checked_add(length)
                .ok_or_else(|| corrupt("ranges overflow"))?;
            ranges.push(Range { offset, length });
        }
        if sum != length {
            return Err(corrupt(format!(
                "ranges add up to {sum} bytes, the token says {length}"
            )));
        }
        if r.take(RESERVED_LEN)?.iter().any(|&x| x != 0) {
            return Err(corrupt("reserved bytes are not zero"));
        }
        if r.pos != b.len() {
            return Err(Error::new(
                ErrorKind::TokenInvalidLength,
                "bytes after the end of the token",
            ));
        }
        Ok(Token {
            rod_type,
            created_ns,
            expires_ns,
            inactivity_secs,
            provider,
            key,
            address,
            volume,
            inode,
            generation,
            snapshot,
            length,
            ranges,
        })
    }
}

/// Human name of a ROD type.
pub fn rod_name(t: u32) -> &'static str {
    match t {
        ROD_PERSISTENT => "persistent",
        ROD_CHANGE_VULNERABLE => "change-vulnerable",
        ROD_ZERO => "zero",
        _ => "unknown",
    }
}

#[cfg(test)]
pub(crate) fn sample(ranges: usize) -> Token {
    Token {
        rod_type: ROD_PERSISTENT,
        created_ns: 1_700_000_000_000_000_000,
        expires_ns: 1_700_000_360_000_000_000,
        inactivity_secs: 300,
        provider: [7; P_LEN],
        key: [9; KEY_LEN],
        address: "/var/lib/fsd/fsd.sock".into(),
        volume: "vol-0123456789abcdef".into(),
        inode: 42,
        generation: 3,
        snapshot: 17,
        length: (0..ranges as u64).map(|i| 512 * (i + 1)).sum(),
        ranges: (0..ranges as u64)
            .map(|i| Range {
                offset: i << 20,
                length: 512 * (i + 1),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_growth() {
        let t = sample(1);
        let b = t.encode();
        assert_eq!(b.len(), t.encoded_len());
        assert!(b.len() > 512, "even one range needs two subtokens");
        assert_eq!(Token::decode(&b).unwrap(), t);
        let t3 = sample(3);
        assert_eq!(t3.encode().len(), b.len() + 32);
    }

    #[test]
    fn damage_is_refused() {
        let b = sample(2).encode();
        let kind = |b: &[u8]| Token::decode(b).unwrap_err().kind();
        let mut x = b.clone();
        x[0] ^= 1;
        assert_eq!(kind(&x), ErrorKind::TokenCorrupt);
        let mut x = b.clone();
        x[9] = 2;
        assert_eq!(kind(&x), ErrorKind::TokenUnsupported);
        assert_eq!(kind(&b[..b.len() - 1]), ErrorKind::TokenInvalidLength);
        let mut x = b.clone();
        x.push(0);
        assert_eq!(kind(&x), ErrorKind::TokenInvalidLength);
        let mut x = b.clone();
        let n = x.len();
        x[n - 1] = 1;
        assert_eq!(kind(&x), ErrorKind::TokenCorrupt, "reserved bytes");
        for cut in 0..b.len() {
            assert!(Token::decode(&b[..cut]).is_err());
        }
    }
}
