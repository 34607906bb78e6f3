//! The offload commands of tokenctl: offload-read, offload-write, copy and
//! token list|inspect|revoke|limits.
//!
//! tokenctl never reads or writes the files' data here: it passes paths and
//! token files to the daemon, which moves the bytes.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use fsd::control::calls;
use fsd::control::client::Client;
use fsd::error::{Error, ErrorKind};
use fsd::token::engine::{ReadRequest, Rod, WriteRequest};
use fsd::token::format::{Range, Token, rod_name};
use fsd::token::subtoken::{self, Recombined};
use fsd::util::human_bytes;

use crate::output::{Progress, to_json};

/// Parses sizes like `4096`, `64K`, `1M`, `8G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s}: unknown unit {c}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s}: not a size"))
}

/// Parses `OFF:LEN`.
pub fn parse_range(s: &str) -> Result<Range, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s}: expected OFF:LEN"))?;
    Ok(Range {
        offset: parse_size(a)?,
        length: parse_size(b)?,
    })
}

/// The real path of an existing file, as the daemon names it.
fn real(p: &Path) -> Result<String, Error> {
    std::fs::canonicalize(p)
        .map(|c| c.to_string_lossy().into_owned())
        .map_err(|e| Error::io(format!("{}", p.display()), e))
}

/// The real path of a destination, creating it (empty) if it is missing.
fn real_dest(p: &Path, truncate: bool) -> Result<String, Error> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true);
    if truncate {
        o.truncate(true);
    }
    o.open(p)
        .map_err(|e| Error::io(format!("{}", p.display()), e))?;
    real(p)
}

pub struct ReadArgs {
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub ranges: Vec<Range>,
    pub ttl: Option<u64>,
    pub rod: Rod,
    pub max_subtokens: Option<usize>,
    pub output: PathBuf,
}

pub fn offload_read(c: &mut Client, a: &ReadArgs, json: bool) -> Result<(), Error> {
    let mut ranges = a.ranges.clone();
    if a.offset.is_some() || a.length.is_some() {
        let off = a.offset.unwrap_or(0);
        let len = match a.length {
            Some(l) => l,
            None => std::fs::metadata(&a.file)
                .map_err(|e| Error::io(format!("{}", a.file.display()), e))?
                .len()
                .saturating_sub(off),
        };
        ranges.insert(
            0,
            Range {
                offset: off,
                length: len,
            },
        );
    }
    let req = calls::OffloadRead {
        req: ReadRequest {
            path: real(&a.file)?,
            ranges,
            ttl_secs: a.ttl,
            rod: a.rod,
            max_subtokens: a.max_subtokens,
        },
    };
    let r = c.call(&req, &mut |_, _| {})?;
    let bytes =
        hex::decode(&r.token).map_err(|_| Error::new(ErrorKind::Protocol, "bad token from fsd"))?;
    write_token_file(&a.output, &bytes)?;
    if json {
        let v = serde_json::json!({
            "length": r.length, "requested": r.requested, "subtokens": r.subtokens,
            "rod": r.rod, "expires": r.expires, "token_file": a.output,
        });
        println!("{v}");
    } else {
        println!("{}", r.length);
        eprintln!(
            "{}: {} of {} asked, {} subtokens, {}, expires {}",
            a.output.display(),
            human_bytes(r.length),
            human_bytes(r.requested),
            r.subtokens,
            r.rod,
            r.expires
        );
    }
    Ok(())
}

/// Writes a token file private to its owner (a token is a bearer secret).
fn write_token_file(p: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| Error::io(format!("{}", p.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(format!("{}", p.display()), e))
}

fn read_token_file(p: &Path) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(16 << 20).read_to_end(&mut v))
        .map_err(|e| Error::io(format!("{}", p.display()), e))?;
    Ok(v)
}

pub struct WriteArgs {
    pub token: PathBuf,
    pub dest: PathBuf,
    pub offset: u64,
    pub token_offset: u64,
    pub length: Option<u64>,
    pub delete_token: bool,
}

pub fn offload_write(c: &mut Client, a: &WriteArgs, json: bool) -> Result<(), Error> {
    let token = hex::encode(read_token_file(&a.token)?);
    let req = calls::OffloadWrite {
        req: WriteRequest {
            token,
            path: real_dest(&a.dest, false)?,
            offset: a.offset,
            token_offset: a.token_offset,
            length: a.length,
            delete_token: a.delete_token,
        },
    };
    let r = c.call(&req, &mut |_, _| {})?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!("{}", r.written);
        eprintln!(
            "{}: wrote {} ({} by sharing chunks), {} of the token left",
            a.dest.display(),
            human_bytes(r.written),
            human_bytes(r.shared),
            human_bytes(r.remaining)
        );
    }
    Ok(())
}

/// `tokenctl copy`: offload read and write in a loop until the whole file
/// is copied. Only with `--fallback` does it copy through tokenctl when the
/// offload path is unavailable (a file outside the mount, a kind of file
/// fsd cannot offload).
pub fn copy(
    c: &mut Client,
    src: &Path,
    dst: &Path,
    fallback: bool,
    json: bool,
) -> Result<(), Error> {
    let started = Instant::now();
    match offload_copy(c, src, dst, json) {
        Ok((bytes, shared)) => {
            report(json, bytes, shared, started, false);
            Ok(())
        }
        Err(e)
            if fallback
                && matches!(
                    e.kind(),
                    ErrorKind::Invalid | ErrorKind::Unsupported | ErrorKind::ReadOnly
                ) =>
        {
            eprintln!(
                "tokenctl: offload not possible ({e}); copying through tokenctl (--fallback)"
            );
            let mut from =
                std::fs::File::open(src).map_err(|e| Error::io(format!("{}", src.display()), e))?;
            let mut to = std::fs::File::create(dst)
                .map_err(|e| Error::io(format!("{}", dst.display()), e))?;
            let n = std::io::copy(&mut from, &mut to).map_err(|e| Error::io("copying", e))?;
            to.sync_all()
                .map_err(|e| Error::io(format!("{}", dst.display()), e))?;
            report(json, n, 0, started, true);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn report(json: bool, bytes: u64, shared: u64, started: Instant, fallback: bool) {
    let secs = started.elapsed().as_secs_f64();
    if json {
        let v = serde_json::json!({"bytes": bytes, "shared": shared, "seconds": secs, "fallback": fallback});
        println!("{v}");
    } else {
        println!("{bytes}");
        eprintln!(
            "copied {} in {secs:.3} s ({} by sharing chunks{})",
            human_bytes(bytes),
            human_bytes(shared),
            if fallback { ", through tokenctl" } else { "" }
        );
    }
}

fn offload_copy(c: &mut Client, src: &Path, dst: &Path, json: bool) -> Result<(u64, u64), Error> {
    let size = std::fs::metadata(src)
        .map_err(|e| Error::io(format!("{}", src.display()), e))?
        .len();
    let src_path = real(src)?;
    let dst_path = real_dest(dst, true)?;
    let mut bar = Progress::new(!json && std::io::stderr().is_terminal(), "copying");
    let (mut offset, mut shared) = (0u64, 0u64);
    while offset < size {
        let read = calls::OffloadRead {
            req: ReadRequest {
                path: src_path.clone(),
                ranges: vec![Range {
                    offset,
                    length: size - offset,
                }],
                ttl_secs: None,
                rod: Rod::Persistent,
                max_subtokens: None,
            },
        };
        let r = c.call(&read, &mut |_, _| {})?;
        let mut token_offset = 0u64;
        while token_offset < r.length {
            let last = token_offset > 0;
            let w = calls::OffloadWrite {
                req: WriteRequest {
                    token: r.token.clone(),
                    path: dst_path.clone(),
                    offset: offset + token_offset,
                    token_offset,
                    length: None,
                    delete_token: false,
                },
            };
            let wr = c.call(&w, &mut |_, _| {})?;
            if wr.written == 0 && last {
                return Err(Error::new(
                    ErrorKind::Io,
                    "the offload write made no progress",
                ));
            }
            token_offset += wr.written;
            shared += wr.shared;
            bar.update(offset + token_offset, size);
        }
        // Done with this token: release its snapshot now.
        let _ = c.call(
            &calls::TokenRevoke {
                token: r.token.clone(),
            },
            &mut |_, _| {},
        );
        offset += r.length;
    }
    bar.finish();
    Ok((offset, shared))
}

pub fn list(c: &mut Client, json: bool) -> Result<(), Error> {
    let tokens = c.call(&calls::TokenList, &mut |_, _| {})?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&tokens)).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:>6}  {:<8}  {:<17}  {:>10}  {:<20}  SOURCE",
        "ID", "STATE", "TYPE", "LENGTH", "EXPIRES"
    );
    for t in tokens {
        println!(
            "{:>6}  {:<8}  {:<17}  {:>10}  {:<20}  {}",
            t.id,
            t.state,
            t.rod,
            human_bytes(t.length),
            t.expires,
            t.source
        );
    }
    Ok(())
}

/// Decodes a token file locally (no daemon needed) and, if the daemon is
/// reachable, adds its state. R is never shown.
pub fn inspect(c: Option<&mut Client>, path: &Path, json: bool) -> Result<(), Error> {
    let file = read_token_file(path)?;
    let subtokens = file.len() / subtoken::SUBTOKEN;
    let token = match subtoken::recombine_any(&file)? {
        Recombined::Zero => {
            if json {
                println!("{}", serde_json::json!({"type": "zero", "subtokens": 1}));
            } else {
                println!("zero token (0xFFFF0001): writes zeros; needs --length");
            }
            return Ok(());
        }
        Recombined::Token { bytes, .. } => Token::decode(&bytes)?,
    };
    let state = c.and_then(|c| {
        c.call(
            &calls::TokenStatus {
                token: hex::encode(&file),
            },
            &mut |_, _| {},
        )
        .ok()
    });
    if json {
        let v = serde_json::json!({
            "type": rod_name(token.rod_type),
            "rod_type": format!("0x{:08X}", token.rod_type),
            "subtokens": subtokens,
            "created": fsd::util::fmt_utc(token.created_ns),
            "expires": fsd::util::fmt_utc(token.expires_ns),
            "inactivity_secs": token.inactivity_secs,
            "provider": hex::encode(token.provider),
            "address": token.address,
            "volume": token.volume,
            "inode": token.inode,
            "snapshot": token.snapshot,
            "length": token.length,
            "ranges": token.ranges,
            "state": state.as_ref().map(|s| s.state.clone()),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "type:        {} (0x{:08X})",
            rod_name(token.rod_type),
            token.rod_type
        );
        println!("subtokens:   {subtokens}");
        println!("created:     {}", fsd::util::fmt_utc(token.created_ns));
        println!("expires:     {}", fsd::util::fmt_utc(token.expires_ns));
        println!("inactivity:  {} s", token.inactivity_secs);
        println!(
            "provider:    {} at {}",
            hex::encode(token.provider),
            token.address
        );
        println!("source:      {} inode {}", token.volume, token.inode);
        println!("snapshot:    {}", token.snapshot);
        println!(
            "length:      {} ({} bytes)",
            human_bytes(token.length),
            token.length
        );
        for r in &token.ranges {
            println!("range:       {}+{}", r.offset, r.length);
        }
        println!("key:         (32 bytes, not shown)");
        if let Some(s) = state {
            println!(
                "state:       {}{}",
                s.state,
                s.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn revoke(c: &mut Client, path: &Path, json: bool) -> Result<(), Error> {
    let token = hex::encode(read_token_file(path)?);
    let t = c.call(&calls::TokenRevoke { token }, &mut |_, _| {})?;
    if json {
        println!("{}", to_json(&t));
    } else {
        eprintln!("token {} revoked", t.id);
    }
    Ok(())
}

pub fn limits(c: &mut Client, json: bool) -> Result<(), Error> {
    let l = c.call(&calls::TokenLimits, &mut |_, _| {})?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&l)).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "MaximumTokenLifetime:                {} s",
        l.maximum_token_lifetime_secs
    );
    println!(
        "DefaultTokenLifetime:                {} s",
        l.default_token_lifetime_secs
    );
    println!(
        "DefaultInactivityTimeout:            {} s",
        l.default_inactivity_timeout_secs
    );
    println!(
        "MaximumDataDescriptors:              {}",
        l.maximum_data_descriptors
    );
    println!(
        "MaximumTransferSize:                 {}",
        human_bytes(l.maximum_transfer_size)
    );
    println!(
        "OptimalTransferCount:                {}",
        human_bytes(l.optimal_transfer_count)
    );
    println!(
        "MaximumTransferLengthPerDescriptor:  {}",
        human_bytes(l.maximum_transfer_length_per_descriptor)
    );
    println!(
        "OptimalTransferLengthPerDescriptor:  {}",
        human_bytes(l.optimal_transfer_length_per_descriptor)
    );
    println!(
        "OptimalTransferLengthGranularity:    {}",
        human_bytes(l.optimal_transfer_length_granularity)
    );
    println!(
        "BlockSize:                           {} bytes",
        l.block_size
    );
    println!(
        "Subtokens:                           {} bytes each, at most {}",
        l.subtoken_size, l.maximum_subtokens
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ranges() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("1Q").is_err());
        assert_eq!(
            parse_range("1M:512"),
            Ok(Range {
                offset: 1 << 20,
                length: 512
            })
        );
        assert!(parse_range("12").is_err());
    }
}
