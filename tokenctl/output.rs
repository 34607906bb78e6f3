//! Human and JSON output of tokenctl.
//!
//! Human output goes to stdout when it is the answer (an ID, a table) and to
//! stderr when it is commentary, so `ID=$(tokenctl attach x.tar)` works.
//! `--json` prints the daemon's reply unchanged on stdout.

use std::time::Duration;

use fsd::control::DaemonStatus;
use fsd::error::{Error, ErrorKind};
use fsd::fs::VolumeInfo;
use fsd::util::human_bytes;
use fsd::volume::manager::{Attached, VolumeStatus};
use fsd::volume::native::fsck::Report;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub struct Output {
    pub json: bool,
}

/// The JSON of a typed reply, as the daemon sent it. Going through
/// `serde_json::Value` keeps `--json` output byte for byte what it was when
/// replies were untyped (the same key order).
pub fn to_json(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl Output {
    fn json(&self, v: &impl Serialize) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&to_json(v)).unwrap_or_default()
            );
        }
        self.json
    }

    pub fn attached(&self, a: &Attached, took: Duration) -> Result<(), Error> {
        if self.json(a) {
            return Ok(());
        }
        println!("{}", a.volume.id);
        let what = if a.already_attached {
            "already attached"
        } else if a.indexed {
            "indexed and attached"
        } else {
            "attached (index reused)"
        };
        eprintln!(
            "{}: {what}{}, {} files, {} in {:.2} s",
            a.volume.medium.as_deref().unwrap_or(""),
            a.volume
                .name
                .as_deref()
                .map(|n| format!(" as {n:?}"))
                .unwrap_or_default(),
            a.volume.files,
            human_bytes(a.volume.size),
            took.as_secs_f64()
        );
        Ok(())
    }

    pub fn volumes(&self, vols: &[VolumeInfo]) -> Result<(), Error> {
        if self.json(&vols) {
            return Ok(());
        }
        let name_w = vols
            .iter()
            .map(|v| v.name.as_deref().unwrap_or("-").len())
            .max()
            .unwrap_or(4)
            .max(4);
        println!(
            "{:<20}  {:<name_w$}  {:<8}  {:<9}  {:>10}  {:>8}",
            "ID", "NAME", "KIND", "STATE", "SIZE", "FILES"
        );
        for v in vols {
            println!(
                "{:<20}  {:<name_w$}  {:<8}  {:<9}  {:>10}  {:>8}",
                v.id,
                v.name.as_deref().unwrap_or("-"),
                v.kind,
                v.state,
                human_bytes(v.size),
                v.files
            );
        }
        Ok(())
    }

    pub fn volume_status(&self, s: &VolumeStatus) -> Result<(), Error> {
        if self.json(s) {
            return Ok(());
        }
        let i = &s.info;
        println!("id:          {}", i.id);
        println!("name:        {}", i.name.as_deref().unwrap_or("-"));
        println!("kind:        {}", i.kind);
        println!("state:       {}", i.state);
        if let Some(f) = &i.format {
            println!("format:      {f}");
        }
        if let Some(m) = &i.medium {
            println!("medium:      {m}");
        }
        println!("size:        {} ({} bytes)", human_bytes(i.size), i.size);
        println!("files:       {}", i.files);
        println!("open files:  {}", s.open_files);
        println!("created:     {}", s.created);
        if let Some(ix) = &s.index {
            println!(
                "index:       {} members, {} dirs, {} symlinks, {} hard links",
                ix.members, ix.dirs, ix.symlinks, ix.hardlinks
            );
            println!(
                "names:       {} sanitised, {} replaced by later members, {} skipped",
                ix.sanitized, ix.replaced, ix.skipped
            );
            for w in &ix.warnings {
                println!("warning:     {w}");
            }
        }
        Ok(())
    }

    pub fn status(&self, s: &DaemonStatus) -> Result<(), Error> {
        if self.json(s) {
            return Ok(());
        }
        println!("fsd {} (pid {})", s.version, s.pid);
        println!("mountpoint:  {}", s.mountpoint);
        println!("state:       {}", s.state_dir);
        println!("started:     {} ({} s ago)", s.started, s.uptime_secs);
        println!("volumes:     {} ({} attached)", s.volumes, s.attached);
        println!("open files:  {}", s.open_files);
        println!(
            "hot tier:    {} in {} chunks; {} free of {}",
            human_bytes(s.hot_bytes),
            s.hot_chunks,
            human_bytes(s.hot_free),
            human_bytes(s.hot_total)
        );
        println!(
            "buffered:    {} now, {} at most (limit {})",
            human_bytes(s.buffered),
            human_bytes(s.buffered_peak),
            human_bytes(s.buffered_limit)
        );
        println!(
            "memory:      {} resident, {} at peak",
            human_bytes(s.rss),
            human_bytes(s.rss_peak)
        );
        println!(
            "quarantine:  {} chunk files, {} (deleted after {} days)",
            s.quarantined_chunks,
            human_bytes(s.quarantined_bytes),
            s.quarantine_days
        );
        println!("log dropped: {} lines", s.log_dropped);
        Ok(())
    }

    pub fn created(&self, i: &VolumeInfo) -> Result<(), Error> {
        if self.json(i) {
            return Ok(());
        }
        println!("{}", i.id);
        Ok(())
    }

    pub fn destroyed(&self, i: &VolumeInfo) -> Result<(), Error> {
        if self.json(i) {
            return Ok(());
        }
        eprintln!("destroyed {}", i.id);
        Ok(())
    }

    /// Prints the report; returns the exit code (8 if problems remain).
    pub fn fsck(&self, r: &Report) -> Result<u8, Error> {
        if !self.json(r) {
            for p in &r.problems {
                let tag = if p.repaired { "repaired" } else { "PROBLEM" };
                println!("{tag}: {}: {}", p.kind, p.detail);
            }
            println!(
                "checked {} volumes, {} inodes, {} chunks ({} verified): {} problems, {} unrepaired",
                r.volumes.len(),
                r.inodes,
                r.chunks,
                human_bytes(r.bytes_verified),
                r.problems.len(),
                r.unrepaired()
            );
        }
        if r.unrepaired() > 0 {
            if !self.json {
                eprintln!("tokenctl: fsck: {} problems remain", r.unrepaired());
            }
            return Ok(ErrorKind::Integrity.exit_code() as u8);
        }
        Ok(0)
    }

    /// Prints a catalog check; returns the exit code (8 if it is damaged
    /// or belongs to another store), with the recovery steps on stderr.
    pub fn fsck_catalog(&self, r: &fsd::store::guard::CatalogReport) -> Result<u8, Error> {
        if self.json {
            let v = serde_json::to_value(r)
                .map_err(|e| Error::new(ErrorKind::Protocol, e.to_string()))?;
            println!("{v}");
        } else {
            for p in &r.problems {
                println!("PROBLEM: catalog: {p}");
            }
            println!(
                "checked {} (store {}): {}",
                r.catalog,
                r.store_id.as_deref().unwrap_or("-"),
                if r.ok { "ok" } else { "damaged" }
            );
        }
        if r.ok {
            return Ok(0);
        }
        if !self.json {
            eprintln!(
                "tokenctl: fsck: the catalog is damaged; {}",
                r.recovery.as_deref().unwrap_or("")
            );
        }
        Ok(ErrorKind::Corrupt.exit_code() as u8)
    }

    pub fn detached(&self, i: &VolumeInfo) -> Result<(), Error> {
        if self.json(i) {
            return Ok(());
        }
        eprintln!("detached {}", i.id);
        Ok(())
    }
}

/// A progress bar on a terminal; nothing otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(enabled: bool, what: &str) -> Self {
        let bar = enabled.then(|| {
            let b = ProgressBar::hidden();
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress { bar }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            if b.is_hidden() {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            b.set_length(total);
            b.set_position(done);
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
