//! `tokenctl`: the client of fsd's control socket. Argument parsing and
//! output formatting only; the protocol lives in `fsd::control`.

mod offload;
mod output;

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fsd::config;
use fsd::control::calls;
use fsd::control::client::Client;
use fsd::error::Error;
use fsd::error::ErrorKind;
use fsd::volume::manager::FormatChoice;

#[derive(Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Control fsd: attach and detach volumes, inspect them, copy with offload tokens",
    after_help = fsd::error::exit_help()
)]
struct Cli {
    /// State directory of the daemon to talk to (the same default as fsd).
    #[arg(long, global = true, env = "FSD_STATE")]
    state: Option<PathBuf>,
    /// Path of the control socket (overrides --state).
    #[arg(long, global = true, env = "FSD_SOCKET")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum RodArg {
    /// The token keeps a point-in-time image; later changes to the source
    /// do not affect it.
    Persistent,
    /// The token is revoked by any overlapping write, truncate or punch.
    ChangeVulnerable,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// List tokens (yours; every token for root). Never shows keys.
    List,
    /// Decode a token file (its key stays hidden) and show its state.
    Inspect { token: PathBuf },
    /// Revoke a token: it stops working and its snapshot is released.
    Revoke { token: PathBuf },
    /// The provider's limits, after ODX's DEVICE_COPY_OFFLOAD_DESCRIPTOR.
    Limits,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Tar,
    Zip,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach an archive (tar or zip) as a read-only volume; prints its ID.
    ///
    /// Attaching the same file again returns the same ID. The index is built
    /// once and kept in the catalog, so later attaches are instant.
    Attach {
        /// The archive file.
        path: PathBuf,
        /// A name for the volume (default: the file name, if unused).
        #[arg(long)]
        name: Option<String>,
        /// The archive format; auto detects it from the content.
        #[arg(long, value_enum, default_value = "auto")]
        format: FormatArg,
    },
    /// List volumes: ID, name, kind, state, size and number of files.
    Volumes,
    /// Show the daemon's status, or one volume's (by ID or name).
    Status { volume: Option<String> },
    /// Remove a volume from the mount; it stays in the catalog as detached.
    Detach {
        /// Volume ID or name.
        volume: String,
        /// Detach even with open files (they keep working until closed).
        #[arg(long)]
        force: bool,
    },
    /// Create an empty native (writable) volume; prints its ID.
    Create {
        /// The volume's name; MOUNT/volumes/NAME links to it.
        name: String,
    },
    /// Delete a volume. A native volume's files are deleted and their
    /// chunks released; an archive's catalog entry is dropped (the archive
    /// file is untouched). Refused while files of it are open.
    Destroy {
        /// Volume ID or name.
        volume: String,
    },
    /// Check native volumes: catalog against chunk store, and every chunk's
    /// content against its name. Reports each problem; repairs only with
    /// --repair. Exits 8 if problems remain.
    Fsck {
        /// One volume (default: every native volume and the whole store,
        /// which needs root).
        volume: Option<String>,
        /// Fix what can be fixed without inventing data.
        #[arg(long)]
        repair: bool,
        /// Check the catalog database instead (full PRAGMA integrity_check
        /// and its store identity); root. With no daemon running, checks
        /// STATE/catalog.db directly. Exits 8, with the recovery steps, if
        /// it is damaged.
        #[arg(long, conflicts_with_all = ["volume", "repair"])]
        catalog: bool,
    },
    /// Offload read (ODX FSCTL_OFFLOAD_READ, T10 POPULATE TOKEN): get a token
    /// for a file's bytes, written to TOKENFILE as 512-byte subtokens.
    /// Prints the length the token represents, which may be less than asked
    /// (loop). Offsets and lengths are multiples of 512, except a length
    /// that ends at the end of the file. Sizes take K, M, G, T suffixes.
    OffloadRead {
        file: PathBuf,
        #[arg(long, value_parser = offload::parse_size)]
        offset: Option<u64>,
        #[arg(long, value_parser = offload::parse_size)]
        length: Option<u64>,
        /// A range OFF:LEN; repeat for several (in order).
        #[arg(long = "range", value_parser = offload::parse_range)]
        ranges: Vec<fsd::token::format::Range>,
        /// Lifetime in seconds (see `tokenctl token limits`).
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long = "type", value_enum, default_value = "persistent")]
        rod: RodArg,
        /// Fail (exit 23, saying how many are needed) if the token needs
        /// more subtokens than this.
        #[arg(long)]
        max_subtokens: Option<usize>,
        /// Where to write the token file (mode 0600: a token is a secret).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Offload write (ODX FSCTL_OFFLOAD_WRITE, T10 WRITE USING TOKEN): write
    /// the bytes a token represents into DEST (created if missing). Prints
    /// the bytes written, which may be short. A token can be written many
    /// times until it expires or is revoked. The zero token writes zeros.
    OffloadWrite {
        token: PathBuf,
        dest: PathBuf,
        /// Where in DEST to write.
        #[arg(long, value_parser = offload::parse_size, default_value = "0")]
        offset: u64,
        /// Where in the token's bytes to start.
        #[arg(long, value_parser = offload::parse_size, default_value = "0")]
        token_offset: u64,
        /// How much to write (default: the rest of the token).
        #[arg(long, value_parser = offload::parse_size)]
        length: Option<u64>,
        /// Revoke the token after this write.
        #[arg(long)]
        delete_token: bool,
    },
    /// Copy SRC to DST with offload read and write, looping until done;
    /// the data never passes through tokenctl. Aligned copies between native
    /// volumes share chunks and copy no data.
    Copy {
        src: PathBuf,
        dst: PathBuf,
        /// If the offload path is unavailable, copy through tokenctl.
        #[arg(long)]
        fallback: bool,
    },
    /// Offload tokens: list, inspect, revoke, limits.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let state = cli.state.clone().unwrap_or_else(config::default_state_dir);
    config::socket_path(&state)
}

/// Resolves and opens the medium of `attach` with this user's own rights.
/// The descriptor goes to the daemon with the request, so what may be
/// attached is exactly what this user may open(2) for reading; the daemon
/// checks that it is the canonical path sent alongside.
fn open_medium(path: &std::path::Path) -> Result<(PathBuf, std::fs::File), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let refused = |what: &str, e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NotFound, format!("{shown}: no such file"))
        }
        std::io::ErrorKind::PermissionDenied => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{shown}: permission denied (uid {} cannot {what} it)",
                nix::unistd::getuid()
            ),
        ),
        _ => Error::io(format!("{shown}: cannot {what} it"), e),
    };
    let abs = std::fs::canonicalize(path).map_err(|e| refused("resolve", e))?;
    // O_NONBLOCK so a FIFO cannot hang the open; the daemon refuses
    // anything but a regular file or a block device.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&abs)
        .map_err(|e| refused("open", e))?;
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    Ok((abs, file))
}

/// Runs the command; returns the exit status for outcomes that are not
/// errors of the call itself (fsck finding problems).
fn run(cli: &Cli) -> Result<u8, Error> {
    // `token inspect` works on its own; it only adds the state if a daemon
    // answers.
    if let Cmd::Token {
        cmd: TokenCmd::Inspect { token },
    } = &cli.cmd
    {
        let mut c = Client::connect(&socket_path(cli)).ok();
        offload::inspect(c.as_mut(), token, cli.json)?;
        return Ok(0);
    }
    let out = output::Output { json: cli.json };
    // The catalog can be checked with no daemon (one that refused to start,
    // or is stopped for a restore).
    if let Cmd::Fsck { catalog: true, .. } = &cli.cmd {
        let report = match Client::connect(&socket_path(cli)) {
            Ok(mut c) => c.call(&calls::FsckCatalog, &mut |_, _| {})?,
            Err(_) => {
                let state = cli.state.clone().unwrap_or_else(config::default_state_dir);
                fsd::store::guard::check_offline(&state)?
            }
        };
        return out.fsck_catalog(&report);
    }
    let mut client = Client::connect(&socket_path(cli))?;
    match &cli.cmd {
        Cmd::Attach { path, name, format } => {
            let (abs, medium) = open_medium(path)?;
            let req = calls::Attach {
                path: abs.to_string_lossy().into_owned(),
                name: name.clone(),
                format: match format {
                    FormatArg::Auto => FormatChoice::Auto,
                    FormatArg::Tar => FormatChoice::Tar,
                    FormatArg::Zip => FormatChoice::Zip,
                },
            };
            let mut bar =
                output::Progress::new(!cli.json && std::io::stderr().is_terminal(), "indexing");
            let started = std::time::Instant::now();
            let v = client.call_passing(&req, Some(medium.as_fd()), &mut |done, total| {
                bar.update(done, total)
            });
            bar.finish();
            out.attached(&v?, started.elapsed())?;
        }
        Cmd::Volumes => out.volumes(&client.call(&calls::Volumes, &mut |_, _| {})?)?,
        Cmd::Status { volume: None } => {
            out.status(&client.call(&calls::Status, &mut |_, _| {})?)?
        }
        Cmd::Status {
            volume: Some(volume),
        } => {
            let v = client.call(
                &calls::VolumeStatusOf {
                    volume: volume.clone(),
                },
                &mut |_, _| {},
            )?;
            out.volume_status(&v)?;
        }
        Cmd::Detach { volume, force } => {
            let v = client.call(
                &calls::Detach {
                    volume: volume.clone(),
                    force: *force,
                },
                &mut |_, _| {},
            )?;
            out.detached(&v)?;
        }
        Cmd::Create { name } => {
            let v = client.call(&calls::Create { name: name.clone() }, &mut |_, _| {})?;
            out.created(&v)?;
        }
        Cmd::Destroy { volume } => {
            let v = client.call(
                &calls::Destroy {
                    volume: volume.clone(),
                },
                &mut |_, _| {},
            )?;
            out.destroyed(&v)?;
        }
        Cmd::Fsck { volume, repair, .. } => {
            let v = client.call(
                &calls::Fsck {
                    volume: volume.clone(),
                    repair: *repair,
                },
                &mut |_, _| {},
            )?;
            return out.fsck(&v);
        }
        Cmd::OffloadRead {
            file,
            offset,
            length,
            ranges,
            ttl,
            rod,
            max_subtokens,
            output,
        } => offload::offload_read(
            &mut client,
            &offload::ReadArgs {
                file: file.clone(),
                offset: *offset,
                length: *length,
                ranges: ranges.clone(),
                ttl: *ttl,
                rod: match rod {
                    RodArg::Persistent => fsd::token::engine::Rod::Persistent,
                    RodArg::ChangeVulnerable => fsd::token::engine::Rod::ChangeVulnerable,
                },
                max_subtokens: *max_subtokens,
                output: output.clone(),
            },
            cli.json,
        )?,
        Cmd::OffloadWrite {
            token,
            dest,
            offset,
            token_offset,
            length,
            delete_token,
        } => offload::offload_write(
            &mut client,
            &offload::WriteArgs {
                token: token.clone(),
                dest: dest.clone(),
                offset: *offset,
                token_offset: *token_offset,
                length: *length,
                delete_token: *delete_token,
            },
            cli.json,
        )?,
        Cmd::Copy { src, dst, fallback } => {
            offload::copy(&mut client, src, dst, *fallback, cli.json)?
        }
        Cmd::Token { cmd } => match cmd {
            TokenCmd::List => offload::list(&mut client, cli.json)?,
            TokenCmd::Revoke { token } => offload::revoke(&mut client, token, cli.json)?,
            TokenCmd::Limits => offload::limits(&mut client, cli.json)?,
            TokenCmd::Inspect { .. } => {}
        },
    }
    Ok(0)
}

/// Restores SIGPIPE's default, as C programs have it: Rust ignores it, so
/// `tokenctl status | head -1` would get EPIPE from `println!` and panic.
/// Now the closed pipe ends tokenctl quietly, like coreutils. The control
/// socket is written with MSG_NOSIGNAL, so a daemon that hangs up is still
/// reported as an error rather than killing tokenctl.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL
    // installs no Rust handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if cli.json {
                let v = serde_json::json!({"error": {"code": e.kind().code(), "message": e.to_string()}});
                println!("{v}");
            } else {
                eprintln!("tokenctl: {e}");
            }
            let code = e.exit_code();
            ExitCode::from(if code == 0 { 1 } else { code as u8 })
        }
    }
}
