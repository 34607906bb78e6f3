//! `fsd`: the daemon. Parses arguments, sets up logging, optionally detaches,
//! and hands over to `fsd::daemon::run`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fsd::config::{self, Config};
use fsd::daemon::{self, Fatal, MountOptions, exit};

#[derive(Parser)]
#[command(
    name = "fsd",
    version,
    about = "Mount archives, drives and native volumes as files; copy with offload tokens",
    after_help = "Exit codes: 0 clean unmount, 1 runtime failure, 2 usage or config error, \
                  3 mountpoint unusable, 4 state directory unusable, 5 state directory in use, \
                  6 mount failed, 7 an --attach archive could not be attached."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount fsd at MOUNTPOINT and serve until unmounted or signalled.
    Mount {
        /// An existing, empty-or-not directory that nothing is mounted on.
        mountpoint: PathBuf,
        /// State directory (catalog, chunk store, control socket). Default:
        /// /var/lib/fsd as root, $XDG_DATA_HOME/fsd otherwise.
        #[arg(long, env = "FSD_STATE")]
        state: Option<PathBuf>,
        /// TOML file overriding the embedded defaults (see `fsd config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Detach from the terminal once mounted; logs go to STATE/fsd.log.
        #[arg(long)]
        daemon: bool,
        /// Attach this archive during start-up (repeatable), as
        /// `tokenctl attach PATH` would: its volume is at
        /// MOUNTPOINT/volumes/<file name> from the first answered request,
        /// and when `fsd mount --daemon` returns. Already attached media are
        /// reused; one that cannot be attached stops fsd and removes the
        /// mount (exit code 7).
        #[arg(long, value_name = "PATH")]
        attach: Vec<PathBuf>,
    },
    /// Print the embedded default configuration, documented key by key.
    Config,
    /// Put a backup of the catalog back (fsd must be stopped). Checks the
    /// backup (integrity and store identity), moves the current catalog
    /// aside as catalog.db.damaged-<time>, and copies the backup into
    /// place. Chunk files written after the backup are not deleted: the
    /// next start moves them to STATE/chunks/.quarantine.
    RestoreCatalog {
        /// State directory. Default as for `fsd mount`.
        #[arg(long, env = "FSD_STATE")]
        state: Option<PathBuf>,
        /// The backup to restore (default: the newest in STATE/backup/).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
}

/// Starts logging (see `fsd::daemon::log`): to stderr in the foreground,
/// to `STATE/fsd.log` (0600, rotated at `[log] max_size_mb`) with `--daemon`.
fn init_logging(opts: &MountOptions, file: bool) {
    let log = &opts.config.log;
    let target = if file {
        daemon::log::Target::File {
            path: opts.state_dir.join("fsd.log"),
            max_bytes: log.max_size_mb.saturating_mul(1 << 20),
            keep: log.keep,
            redirect_stdio: true,
        }
    } else {
        daemon::log::Target::Stderr
    };
    daemon::log::init(&log.level, target);
}

fn fail(f: &Fatal) -> ExitCode {
    // Not eprintln!, which panics when stderr cannot be written.
    let _ = writeln!(std::io::stderr(), "fsd: {f}");
    ExitCode::from(f.code as u8)
}

/// Pins glibc's mmap threshold at 8 MiB. Each FUSE worker allocates a
/// zeroed 16 MiB request buffer. With glibc's dynamic threshold, freeing the
/// first such buffer (the INIT handshake's) raises the threshold above
/// 16 MiB. Every later worker's buffer then comes from a malloc arena, where
/// `calloc` must write zeros over memory it reuses: up to 16 MiB of resident
/// memory per worker for a buffer that mostly carries small requests. With
/// the threshold fixed, those buffers are always fresh mmaps, which the
/// kernel zeroes lazily, page by page. Chunk-sized buffers (1 MiB) and the
/// 4 MiB pieces of the decompressed cache stay on the heap, where their
/// memory is reused without new page faults.
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

fn main() -> ExitCode {
    fix_mmap_threshold();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Config => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::RestoreCatalog { state, from } => {
            let state = state.unwrap_or_else(config::default_state_dir);
            match fsd::store::guard::restore(&state, from.as_deref()) {
                Ok(r) => {
                    eprintln!(
                        "fsd: restored {} from {} (store {})",
                        state.join("catalog.db").display(),
                        r.from.display(),
                        r.store_id.as_deref().unwrap_or("-")
                    );
                    for k in &r.kept {
                        eprintln!("fsd: the replaced catalog is kept as {}", k.display());
                    }
                    eprintln!(
                        "fsd: changes made after the backup are lost; chunk files written \
                         after it are not deleted: the next `fsd mount` moves those the \
                         backup does not reference to {}/chunks/.quarantine",
                        state.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fsd: restore-catalog: {e}");
                    let code = match e.kind() {
                        fsd::error::ErrorKind::Busy => exit::STATE_BUSY,
                        _ => exit::STATE_DIR,
                    };
                    ExitCode::from(code as u8)
                }
            }
        }
        Cmd::Mount {
            mountpoint,
            state,
            config: config_path,
            daemon: detach,
            attach,
        } => {
            let config = match Config::load(config_path.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fsd: {e}");
                    return ExitCode::from(exit::USAGE as u8);
                }
            };
            let state_dir = state.unwrap_or_else(config::default_state_dir);
            let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
            if let Err(f) = daemon::prepare_state_dir(&state_dir) {
                return fail(&f);
            }
            let opts = MountOptions {
                mountpoint,
                state_dir,
                config,
                attach: attach
                    .into_iter()
                    .map(|p| std::path::absolute(&p).unwrap_or(p))
                    .collect(),
            };
            let code = if detach {
                run_detached(&opts)
            } else {
                init_logging(&opts, false);
                match daemon::run(&opts, |_| {}) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(f) => fail(&f),
                }
            };
            // The last lines ("fsd stopped") are still in the log queue.
            daemon::log::flush(std::time::Duration::from_secs(2));
            code
        }
    }
}

/// Forks; the child becomes the daemon and reports over a pipe whether the
/// mount came up, so the parent's exit status tells the truth.
fn run_detached(opts: &MountOptions) -> ExitCode {
    let (r, w): (OwnedFd, OwnedFd) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fsd: pipe: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    // SAFETY: no other threads exist yet (logging and the daemon start after
    // the fork), so the child may continue normally.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("fsd: fork: {e}");
            ExitCode::from(exit::FAILED as u8)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(r).read_to_end(&mut msg);
            match msg.split_first() {
                Some((0, attached)) => {
                    eprintln!(
                        "fsd: mounted at {} (pid {child}, log {})",
                        opts.mountpoint.display(),
                        opts.state_dir.join("fsd.log").display()
                    );
                    for line in String::from_utf8_lossy(attached).lines() {
                        eprintln!("fsd: {line}");
                    }
                    ExitCode::SUCCESS
                }
                Some((code, text)) => {
                    eprintln!("fsd: {}", String::from_utf8_lossy(text));
                    ExitCode::from(*code)
                }
                None => {
                    eprintln!(
                        "fsd: the daemon exited before mounting; see {}",
                        opts.state_dir.join("fsd.log").display()
                    );
                    ExitCode::from(exit::FAILED as u8)
                }
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let _ = nix::unistd::setsid();
            // The terminal is the parent's: nothing goes there. The log
            // (when it can be opened) takes stdout and stderr over.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            init_logging(opts, true);
            // Dropping the pipe closes it, which ends the parent's wait. A
            // Mutex, not a RefCell: `ready` runs on the catalog thread.
            let pipe = std::sync::Mutex::new(Some(std::fs::File::from(w)));
            let take = || pipe.lock().unwrap_or_else(|p| p.into_inner()).take();
            let result = daemon::run(opts, |attached| {
                if let Some(mut p) = take() {
                    let mut m = vec![0];
                    m.extend_from_slice(attached.as_bytes());
                    let _ = p.write_all(&m);
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => {
                    if let Some(mut p) = take() {
                        let mut m = vec![f.code as u8];
                        m.extend_from_slice(f.to_string().as_bytes());
                        let _ = p.write_all(&m);
                    }
                    tracing::error!("{f}");
                    ExitCode::from(f.code as u8)
                }
            }
        }
    }
}
