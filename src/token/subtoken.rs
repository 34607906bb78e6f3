//! 512-byte subtokens: splitting a logical token and recombining it.
//!
//! T10 and ODX fix a token at 512 bytes; fsd's logical token is larger, so it
//! travels as N subtokens of exactly 512 bytes. A token file is the
//! subtokens concatenated, the shape of ddpt's `rtf=` files. Layout of one
//! subtoken (integers big-endian):
//!
//! ```text
//! offset size field
//!      0    4 ROD type (as in a T10 ROD token)
//!      4    2 zero
//!      6    2 0x01F8: the bytes that follow (504), as T10's ROD token length
//!      8    4 magic "FSDS"
//!     12    1 subtoken format version (1)
//!     13    1 zero
//!     14    8 provider ID P
//!     22    8 group ID T, shared by the N subtokens of one token
//!     30    2 sequence S, 1..=N
//!     32    2 count N
//!     34    2 fragment length (at most 464)
//!     36    4 CRC-32C of the 512 bytes with this field zeroed
//!     40    8 zero
//!     48  464 fragment of the logical token, zero-padded
//! ```
//!
//! Recombination accepts subtokens in any order and rejects, with a distinct
//! error each and before anything is written: a bad length, header or CRC
//! (corrupt), an unknown provider, a subtoken of another group (foreign), an
//! inconsistent count, a sequence of 0 or above N, two different subtokens
//! with the same sequence, and a missing subtoken. Byte-identical duplicates
//! are accepted (a retransmitted subtoken changes nothing).

use std::collections::HashMap;

use super::format::{P_LEN, ROD_ZERO};
use crate::error::{Error, ErrorKind, Result};

pub const SUBTOKEN: usize = 512;
pub const HEADER: usize = 48;
/// Bytes of the logical token each subtoken carries.
pub const FRAGMENT: usize = SUBTOKEN - HEADER;
const MAGIC: &[u8; 4] = b"FSDS";
const VERSION: u8 = 1;
const LENGTH_FIELD: u16 = 0x01F8;
/// The most subtokens one token may have (bounds memory and work for
/// hostile token files).
pub const MAX_SUBTOKENS: usize = 1024;

/// How many subtokens a logical token of `len` bytes needs.
pub fn count_for(len: usize) -> usize {
    len.div_ceil(FRAGMENT).max(1)
}

fn crc(sub: &[u8; SUBTOKEN]) -> u32 {
    let mut copy = *sub;
    copy[36..40].fill(0);
    crate::store::crc::crc32c(&copy)
}

/// Splits `token` into subtokens of group `group`.
pub fn split(
    token: &[u8],
    rod_type: u32,
    provider: &[u8; P_LEN],
    group: u64,
) -> Result<Vec<[u8; SUBTOKEN]>> {
    let n = count_for(token.len());
    if n > MAX_SUBTOKENS {
        return Err(Error::new(
            ErrorKind::TokenTooManySubtokens,
            format!(
                "a token of {} bytes needs {n} subtokens, more than {MAX_SUBTOKENS}",
                token.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    let frags: Vec<&[u8]> = if token.is_empty() {
        vec![&[]]
    } else {
        token.chunks(FRAGMENT).collect()
    };
    for (i, frag) in frags.into_iter().enumerate() {
        let mut s = [0u8; SUBTOKEN];
        s[0..4].copy_from_slice(&rod_type.to_be_bytes());
        s[6..8].copy_from_slice(&LENGTH_FIELD.to_be_bytes());
        s[8..12].copy_from_slice(MAGIC);
        s[12] = VERSION;
        s[14..22].copy_from_slice(provider);
        s[22..30].copy_from_slice(&group.to_be_bytes());
        s[30..32].copy_from_slice(&((i + 1) as u16).to_be_bytes());
        s[32..34].copy_from_slice(&(n as u16).to_be_bytes());
        s[34..36].copy_from_slice(&(frag.len() as u16).to_be_bytes());
        s[HEADER..HEADER + frag.len()].copy_from_slice(frag);
        let c = crc(&s);
        s[36..40].copy_from_slice(&c.to_be_bytes());
        out.push(s);
    }
    Ok(out)
}

/// A parsed subtoken.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sub {
    rod_type: u32,
    provider: [u8; P_LEN],
    group: u64,
    seq: u16,
    count: u16,
    fragment: Vec<u8>,
    raw: [u8; SUBTOKEN],
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn parse(raw: &[u8; SUBTOKEN], index: usize) -> Result<Sub> {
    let bad = |what: &str| {
        Error::new(
            ErrorKind::TokenCorrupt,
            format!(
                "subtoken {} (bytes {}..{}): {what}",
                index + 1,
                index * SUBTOKEN,
                (index + 1) * SUBTOKEN
            ),
        )
    };
    let stored = u32::from_be_bytes([raw[36], raw[37], raw[38], raw[39]]);
    if crc(raw) != stored {
        return Err(bad("CRC-32C mismatch"));
    }
    if raw[4..6] != [0, 0] || be16(&raw[6..8]) != LENGTH_FIELD {
        return Err(bad("bad T10 header (length field is not 0x01F8)"));
    }
    if &raw[8..12] != MAGIC {
        return Err(bad("bad magic"));
    }
    if raw[12] != VERSION {
        return Err(Error::new(
            ErrorKind::TokenUnsupported,
            format!(
                "subtoken {}: format version {} is not supported",
                index + 1,
                raw[12]
            ),
        ));
    }
    if raw[13] != 0 || raw[40..48].iter().any(|&b| b != 0) {
        return Err(bad("reserved bytes are not zero"));
    }
    let flen = be16(&raw[34..36]) as usize;
    if flen > FRAGMENT {
        return Err(bad(&format!("fragment length {flen} exceeds {FRAGMENT}")));
    }
    if raw[HEADER + flen..].iter().any(|&b| b != 0) {
        return Err(bad("padding after the fragment is not zero"));
    }
    let mut provider = [0u8; P_LEN];
    provider.copy_from_slice(&raw[14..22]);
    let mut g = [0u8; 8];
    g.copy_from_slice(&raw[22..30]);
    Ok(Sub {
        rod_type: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
        provider,
        group: u64::from_be_bytes(g),
        seq: be16(&raw[30..32]),
        count: be16(&raw[32..34]),
        fragment: raw[HEADER..HEADER + flen].to_vec(),
        raw: *raw,
    })
}

/// The result of recombining a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recombined {
    /// The well-known zero token: write zeros.
    Zero,
    /// A logical token, with the group it came in.
    Token {
        bytes: Vec<u8>,
        rod_type: u32,
        group: u64,
    },
}

/// True if `file` is the ODX zero token (and nothing else).
fn zero_token(file: &[u8]) -> Result<bool> {
    if file.len() != SUBTOKEN || file[0..4] != ROD_ZERO.to_be_bytes() {
        return Ok(false);
    }
    let ok = file[4..6] == [0, 0]
        && be16(&file[6..8]) == LENGTH_FIELD
        && file[8..].iter().all(|&b| b == 0);
    if !ok {
        return Err(Error::new(
            ErrorKind::TokenInvalid,
            "a zero token (type 0xFFFF0001) must have every byte zero except its type and length",
        ));
    }
    Ok(true)
}

/// Recombines a token file (subtokens concatenated, any order) into the
/// logical token. `provider` is this daemon's provider ID.
pub fn recombine(file: &[u8], provider: &[u8; P_LEN]) -> Result<Recombined> {
    if file.is_empty() || !file.len().is_multiple_of(SUBTOKEN) {
        return Err(Error::new(
            ErrorKind::TokenInvalidLength,
            format!(
                "a token file is a multiple of {SUBTOKEN} bytes; this one has {}",
                file.len()
            ),
        ));
    }
    if zero_token(file)? {
        return Ok(Recombined::Zero);
    }
    if file.len() / SUBTOKEN > MAX_SUBTOKENS {
        return Err(Error::new(
            ErrorKind::TokenTooManySubtokens,
            format!(
                "{} subtokens exceed the limit of {MAX_SUBTOKENS}",
                file.len() / SUBTOKEN
            ),
        ));
    }
    let mut subs = Vec::with_capacity(file.len() / SUBTOKEN);
    for (i, raw) in file.chunks_exact(SUBTOKEN).enumerate() {
        let mut a = [0u8; SUBTOKEN];
        a.copy_from_slice(raw);
        subs.push(parse(&a, i)?);
    }
    if let Some(s) = subs.iter().find(|s| s.provider != *provider) {
        return Err(Error::new(
            ErrorKind::TokenUnknownProvider,
            format!(
                "subtoken {} comes from provider {}, not this one",
                s.seq,
                hex::encode(s.provider)
            ),
        ));
    }
    // The group is the one most subtokens belong to; any other is foreign.
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for s in &subs {
        *votes.entry(s.group).or_default() += 1;
    }
    let group = subs
        .iter()
        .map(|s| s.group)
        .max_by_key(|g| {
            (
                votes[g],
                std::cmp::Reverse(subs.iter().position(|s| s.group == *g)),
            )
        })
        .unwrap_or(0);
    if let Some(s) = subs.iter().find(|s| s.group != group) {
        return Err(Error::new(
            ErrorKind::TokenForeignSubtoken,
            format!(
                "a subtoken of group {:016x} is mixed into group {group:016x}",
                s.group
            ),
        ));
    }
    let count = subs[0].count;
    if subs.iter().any(|s| s.count != count) || subs.iter().any(|s| s.rod_type != subs[0].rod_type)
    {
        return Err(Error::new(
            ErrorKind::TokenInconsistentCount,
            "the subtokens disagree on how many there are (or on the ROD type)",
        ));
    }
    if count == 0 || count as usize > MAX_SUBTOKENS {
        return Err(Error::new(
            ErrorKind::TokenInconsistentCount,
            format!("a count of {count} is impossible"),
        ));
    }
    if let Some(s) = subs.iter().find(|s| s.seq == 0 || s.seq > count) {
        return Err(Error::new(
            ErrorKind::TokenBadSequence,
            format!("sequence number {} is outside 1..={count}", s.seq),
        ));
    }
    let mut slots: Vec<Option<&Sub>> = vec![None; count as usize];
    for s in &subs {
        let slot = &mut slots[s.seq as usize - 1];
        match slot {
            Some(prev) if prev.raw != s.raw => {
                return Err(Error::new(
                    ErrorKind::TokenConflictingDuplicate,
                    format!("two different subtokens claim sequence {}", s.seq),
                ));
            }
            _ => *slot = Some(s),
        }
    }
    let missing: Vec<String> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::TokenMissingSubtoken,
            format!("missing subtoken {} of {count}", missing.join(", ")),
        ));
    }
    let mut bytes = Vec::new();
    for s in slots.into_iter().flatten() {
        bytes.extend_from_slice(&s.fragment);
    }
    Ok(Recombined::Token {
        bytes,
        rod_type: subs[0].rod_type,
        group,
    })
}

/// Recombines without knowing the provider (for `tokenctl token inspect`,
/// which may run where no daemon is reachable): the provider of the first
/// subtoken is taken, and every other check still applies.
pub fn recombine_any(file: &[u8]) -> Result<Recombined> {
    if file.len() >= SUBTOKEN && !zero_token(&file[..SUBTOKEN]).unwrap_or(true) {
        let mut p = [0u8; P_LEN];
        p.copy_from_slice(&file[14..22]);
        return recombine(file, &p);
    }
    recombine(file, &[0; P_LEN])
}

/// The ODX zero token.
pub fn zero() -> [u8; SUBTOKEN] {
    let mut z = [0u8; SUBTOKEN];
    z[0..4].copy_from_slice(&ROD_ZERO.to_be_bytes());
    z[6..8].copy_from_slice(&LENGTH_FIELD.to_be_bytes());
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [u8; P_LEN] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn file(subs: &[[u8; SUBTOKEN]]) -> Vec<u8> {
        subs.iter().flatten().copied().collect()
    }

    fn token(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 256) as u8).collect()
    }

    fn kind(f: &[u8]) -> ErrorKind {
        recombine(f, &P).unwrap_err().kind()
    }

    #[test]
    fn roundtrips_at_every_boundary() {
        for len in [1usize, 463, 464, 465, 995, 2000, 4096] {
            let t = token(len);
            let subs = split(&t, 0x0080_0003, &P, 77).unwrap();
            assert_eq!(subs.len(), count_for(len), "{len}");
            assert!(subs.iter().all(|s| s.len() == SUBTOKEN));
            let mut shuffled = subs.clone();
            shuffled.reverse();
            shuffled.rotate_left(subs.len() / 2);
            for f in [file(&subs), file(&shuffled)] {
                match recombine(&f, &P).unwrap() {
                    Recombined::Token {
                        bytes,
                        rod_type,
                        group,
                    } => {
                        assert_eq!(bytes, t, "{len}");
                        assert_eq!(rod_type, 0x0080_0003);
                        assert_eq!(group, 77);
                    }
                    Recombined::Zero => panic!("not a zero token"),
                }
            }
        }
        assert_eq!(count_for(463), 1);
        assert_eq!(count_for(464), 1);
        assert_eq!(count_for(465), 2);
    }

    #[test]
    fn every_rejection_is_distinct() {
        let subs = split(&token(2000), 0x0080_0003, &P, 5).unwrap();
        assert_eq!(subs.len(), 5);
        // Missing.
        assert_eq!(kind(&file(&subs[..4])), ErrorKind::TokenMissingSubtoken);
        // Foreign: a subtoken of another group added.
        let other = split(&token(900), 0x0080_0003, &P, 6).unwrap();
        let mut f = subs.to_vec();
        f.push(other[0]);
        assert_eq!(kind(&file(&f)), ErrorKind::TokenForeignSubtoken);
        // Inconsistent N.
        let short = split(&token(1500), 0x0080_0003, &P, 5).unwrap();
        let mut f = subs[..4].to_vec();
        f.push(short[3]);
        assert_eq!(kind(&file(&f)), ErrorKind::TokenInconsistentCount);
        // S = 0 and S > N, with a valid CRC.
        for s in [0u16, 9] {
            let mut f = subs.to_vec();
            f[2][30..32].copy_from_slice(&s.to_be_bytes());
            let c = crc(&f[2]);
            f[2][36..40].copy_from_slice(&c.to_be_bytes());
            assert_eq!(kind(&file(&f)), ErrorKind::TokenBadSequence);
        }
        // Two different subtokens with one S.
        let mut f = subs.to_vec();
        let mut dup = f[1];
        dup[30..32].copy_from_slice(&3u16.to_be_bytes());
        let c = crc(&dup);
        dup[36..40].copy_from_slice(&c.to_be_bytes());
        f.push(dup);
        assert_eq!(kind(&file(&f)), ErrorKind::TokenConflictingDuplicate);
        // A byte-identical duplicate is accepted.
        let mut f = subs.to_vec();
        f.push(subs[2]);
        assert!(recombine(&file(&f), &P).is_ok());
        // Unknown provider.
        assert_eq!(
            recombine(&file(&subs), &[9; P_LEN]).unwrap_err().kind(),
            ErrorKind::TokenUnknownProvider
        );
        // Bad length.
        let mut f = file(&subs);
        f.pop();
        assert_eq!(kind(&f), ErrorKind::TokenInvalidLength);
        assert_eq!(kind(&[]), ErrorKind::TokenInvalidLength);
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let subs = split(&token(995), 0x0080_0002, &P, 11).unwrap();
        let good = file(&subs);
        for byte in 0..good.len() {
            for bit in [0u8, 3, 7] {
                let mut f = good.clone();
                f[byte] ^= 1 << bit;
                assert!(
                    recombine(&f, &P).is_err(),
                    "flipping bit {bit} of byte {byte} was accepted"
                );
            }
        }
    }

    #[test]
    fn zero_token() {
        let z = zero();
        assert_eq!(recombine(&z, &P).unwrap(), Recombined::Zero);
        for i in 4..SUBTOKEN {
            if (6..8).contains(&i) {
                continue;
            }
            let mut bad = z;
            bad[i] = 1;
            assert_eq!(
                recombine(&bad, &P).unwrap_err().kind(),
                ErrorKind::TokenInvalid,
                "byte {i}"
            );
        }
    }
}
