//! Configuration: embedded defaults, optionally overlaid by a TOML file.
//!
//! A bare `fsd mount /mnt/x` must work on a fresh machine, so every setting
//! has a default compiled into the binary (`src/default-config.toml`, which is
//! also the documentation of every key). `--config FILE` is merged on top key
//! by key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The embedded defaults, verbatim.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mount: MountConfig,
    pub native: NativeConfig,
    pub cache: CacheConfig,
    pub archive: ArchiveConfig,
    pub tokens: TokenConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub control: ControlConfig,
    pub catalog: CatalogConfig,
}

/// `[catalog]`: backups of the catalog and what start-up does with chunk
/// files the catalog does not reference (see `store::guard`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub backup_interval_secs: u64,
    pub backup_keep: usize,
    pub quarantine_days: u64,
    pub startup_check_secs: u64,
}

/// The control socket's bounds (see `control::server`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub max_connections: usize,
    pub max_per_uid: usize,
    pub root_connections: usize,
    pub idle_secs: u64,
    pub request_secs: u64,
    pub max_request_kb: u32,
}

/// What one non-root user may make the daemon spend (issue 17): each key
/// bounds memory, catalog space or hot-tier space that a caller could
/// otherwise grow without end. Root is exempt from the per-user counts and
/// from the volume quota; `xattr_bytes_per_inode` is a filesystem rule and
/// applies to everyone. 0 means "no limit" for every key but that one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub attached_volumes: u64,
    pub members_per_attach: u64,
    pub members_per_uid: u64,
    pub native_volumes: u64,
    pub native_volume_mb: u64,
    pub xattr_bytes_per_inode: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Config::embedded().limits
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub inactivity_secs: u32,
}

/// `[cache]`: the budget for decompressed archive data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub budget_mb: u64,
    pub checkpoint_mb: u64,
}

/// `[archive]`: what attach accepts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub max_ratio: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NativeConfig {
    pub seal_threads: usize,
    pub dirty_limit_mb: u64,
    pub ttl_secs: u64,
    pub direct_io: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub threads: usize,
    pub allow_other: bool,
    pub read_ahead_kb: u32,
    pub archive_ttl_secs: u64,
    pub poll_us: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    /// `fsd.log` (with `--daemon`) is rotated before it grows past this.
    pub max_size_mb: u64,
    /// Rotated files kept: `fsd.log.1` (newest) to `fsd.log.<keep>`.
    pub keep: u32,
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The embedded defaults: the values of [`DEFAULT_TOML`], which stays
    /// the documentation of every key (`fsd config` prints it). They are
    /// written out here rather than parsed, because parsing the file cost
    /// every `fsd mount` 0.1 ms before the mount could start; a unit test
    /// checks that the two agree.
    pub fn embedded() -> Self {
        Config {
            mount: MountConfig {
                threads: 8,
                allow_other: true,
                read_ahead_kb: 1024,
                archive_ttl_secs: 86400,
                poll_us: 50,
            },
            native: NativeConfig {
                seal_threads: 6,
                dirty_limit_mb: 256,
                ttl_secs: 60,
                direct_io: true,
            },
            cache: CacheConfig {
                budget_mb: 256,
                checkpoint_mb: 4,
            },
            archive: ArchiveConfig { max_ratio: 1000 },
            tokens: TokenConfig {
                default_ttl_secs: 3600,
                max_ttl_secs: 86400,
                inactivity_secs: 600,
            },
            log: LogConfig {
                level: "info".into(),
                max_size_mb: 32,
                keep: 3,
            },
            limits: LimitsConfig {
                attached_volumes: 64,
                members_per_attach: 1_000_000,
                members_per_uid: 2_000_000,
                native_volumes: 16,
                native_volume_mb: 1 << 20,
                xattr_bytes_per_inode: 128 << 10,
            },
            control: ControlConfig {
                max_connections: 64,
                max_per_uid: 8,
                root_connections: 16,
                idle_secs: 60,
                request_secs: 10,
                max_request_kb: 2048,
            },
            catalog: CatalogConfig {
                backup_interval_secs: 3600,
                backup_keep: 8,
                quarantine_days: 7,
                startup_check_secs: 30,
            },
        }
    }

    /// Defaults overlaid with `path`, if given.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::embedded());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                format!("{}: cannot read the config file", path.display()),
                e,
            )
        })?;
        Self::from_overlay(&text)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("{}: {e}", path.display())))
    }

    /// Defaults overlaid with the TOML text `overlay`.
    pub fn from_overlay(overlay: &str) -> std::result::Result<Self, String> {
        let mut base: toml::Table = DEFAULT_TOML.parse().map_err(|e| format!("{e}"))?;
        let over: toml::Table = overlay.parse().map_err(|e| format!("{e}"))?;
        merge(&mut base, over);
        let cfg: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.mount.threads == 0 || self.mount.threads > 256 {
            return Err("mount.threads must be between 1 and 256".into());
        }
        if self.native.seal_threads == 0 || self.native.seal_threads > 64 {
            return Err("native.seal_threads must be between 1 and 64".into());
        }
        let t = &self.tokens;
        if t.default_ttl_secs == 0 || t.default_ttl_secs > t.max_ttl_secs || t.inactivity_secs == 0
        {
            return Err(
                "tokens: need 0 < default_ttl_secs <= max_ttl_secs and inactivity_secs > 0".into(),
            );
        }
        if self.native.dirty_limit_mb < 4 {
            return Err("native.dirty_limit_mb must be at least 4".into());
        }
        if self.mount.read_ahead_kb > 1 << 20 {
            return Err("mount.read_ahead_kb must be at most 1048576".into());
        }
        if self.log.max_size_mb == 0 || self.log.max_size_mb > 1 << 20 {
            return Err("log.max_size_mb must be between 1 and 1048576".into());
        }
        if self.log.keep > 100 {
            return Err("log.keep must be at most 100".into());
        }
        if self.catalog.backup_keep == 0 || self.catalog.backup_keep > 1000 {
            return Err("catalog.backup_keep must be between 1 and 1000".into());
        }
        if self.catalog.startup_check_secs == 0 {
            return Err("catalog.startup_check_secs must be at least 1".into());
        }
        if self.cache.budget_mb == 0 || self.cache.budget_mb > 1 << 20 {
            return Err("cache.budget_mb must be between 1 and 1048576".into());
        }
        if self.cache.checkpoint_mb == 0 || self.cache.checkpoint_mb > 1024 {
            return Err("cache.checkpoint_mb must be between 1 and 1024".into());
        }
        if self.mount.poll_us > 10_000 {
            return Err("mount.poll_us must be at most 10000".into());
        }
        let x = self.limits.xattr_bytes_per_inode;
        if !(4096..=1 << 30).contains(&x) {
            return Err("limits.xattr_bytes_per_inode must be between 4096 and 2^30".into());
        }
        if self.limits.native_volume_mb > 1 << 32 {
            return Err("limits.native_volume_mb must be at most 2^32".into());
        }
        let c = &self.control;
        if c.max_connections == 0 || c.max_per_uid == 0 || c.root_connections == 0 {
            return Err(
                "control: max_connections, max_per_uid and root_connections must be at least 1"
                    .into(),
            );
        }
        if c.idle_secs == 0 || c.request_secs == 0 {
            return Err("control: idle_secs and request_secs must be at least 1".into());
        }
        // The largest real request (an offload write of a 1024-subtoken
        // token, hex-encoded) is just over 1 MiB.
        if !(1100..=16384).contains(&c.max_request_kb) {
            return Err("control.max_request_kb must be between 1100 and 16384".into());
        }
        Ok(())
    }
}

/// The default state directory: `/var/lib/fsd` for root,
/// `$XDG_DATA_HOME/fsd` (or `~/.local/share/fsd`) for anyone else.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/fsd");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("fsd");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/fsd")
}

/// The control socket inside a state directory.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("fsd.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_the_documented_file() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("the embedded file parses");
        assert_eq!(parsed, Config::embedded());
        assert_eq!(Config::from_overlay("").unwrap(), Config::embedded());
        Config::embedded()
            .validate()
            .expect("the defaults are valid");
    }

    #[test]
    fn overlay_changes_only_given_keys() {
        let c = Config::from_overlay("[mount]\nthreads = 3\n").unwrap();
        assert_eq!(c.mount.threads, 3);
        assert_eq!(
            c.mount.read_ahead_kb,
            Config::embedded().mount.read_ahead_kb
        );
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(
            Config::from_overlay("[mount]\nthread = 3\n")
                .unwrap_err()
                .contains("thread")
        );
        assert!(Config::from_overlay("[mount]\nthreads = 0\n").is_err());
        assert!(
            Config::from_overlay("[mount]\npoll_us = 20000\n")
                .unwrap_err()
                .contains("poll_us")
        );
        assert_eq!(
            Config::from_overlay("[mount]\npoll_us = 0\n")
                .unwrap()
                .mount
                .poll_us,
            0
        );
        assert!(Config::from_overlay("[mount\n").is_err());
        assert!(
            Config::from_overlay("[limits]\nxattr_bytes_per_inode = 100\n")
                .unwrap_err()
                .contains("xattr_bytes_per_inode")
        );
        let c = Config::from_overlay("[limits]\nnative_volumes = 0\n").unwrap();
        assert_eq!(c.limits.native_volumes, 0, "0 turns a limit off");
        assert_eq!(c.limits.attached_volumes, 64);
    }
}
