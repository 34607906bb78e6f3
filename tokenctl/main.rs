//! `tokenctl`: the client of fsd's control socket. Argument parsing and
//! output formatting only; the protocol lives in `fsd::control`.

mod output;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fsd::config;
use fsd::control::Request;
use fsd::control::client::Client;
use fsd::error::Error;
#[cfg(test)]
use fsd::error::ErrorKind;
use fsd::volume::manager::FormatChoice;

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   I/O or internal error
  2   usage error
  3   fsd is not reachable (no daemon on the socket), or a protocol error
  4   no such volume, file or attribute
  5   already exists, or busy (open files, name in use)
  6   invalid argument
  7   permission denied, or read-only
  8   corrupt input (archive, index) or failed integrity check
  9   no space on the hot tier
  10-23  offload token errors (see the README)";

#[derive(Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Control fsd: attach and detach volumes, inspect them, copy with offload tokens",
    after_help = EXIT_CODES
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
    },
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let state = cli.state.clone().unwrap_or_else(config::default_state_dir);
    config::socket_path(&state)
}

/// Runs the command; returns the exit status for outcomes that are not
/// errors of the call itself (fsck finding problems).
fn run(cli: &Cli) -> Result<u8, Error> {
    let mut client = Client::connect(&socket_path(cli))?;
    let out = output::Output { json: cli.json };
    match &cli.cmd {
        Cmd::Attach { path, name, format } => {
            let abs = std::path::absolute(path)
                .map_err(|e| Error::io(format!("{}: cannot resolve", path.display()), e))?;
            let req = Request::Attach {
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
            let v = client.call(&req, &mut |done, total| bar.update(done, total));
            bar.finish();
            out.attached(&v?, started.elapsed())?;
        }
        Cmd::Volumes => out.volumes(&client.call(&Request::Volumes, &mut |_, _| {})?)?,
        Cmd::Status { volume } => {
            let v = client.call(
                &Request::Status {
                    volume: volume.clone(),
                },
                &mut |_, _| {},
            )?;
            out.status(&v, volume.is_some())?;
        }
        Cmd::Detach { volume, force } => {
            let v = client.call(
                &Request::Detach {
                    volume: volume.clone(),
                    force: *force,
                },
                &mut |_, _| {},
            )?;
            out.detached(&v)?;
        }
        Cmd::Create { name } => {
            let v = client.call(&Request::Create { name: name.clone() }, &mut |_, _| {})?;
            out.created(&v)?;
        }
        Cmd::Destroy { volume } => {
            let v = client.call(
                &Request::Destroy {
                    volume: volume.clone(),
                },
                &mut |_, _| {},
            )?;
            out.destroyed(&v)?;
        }
        Cmd::Fsck { volume, repair } => {
            let v = client.call(
                &Request::Fsck {
                    volume: volume.clone(),
                    repair: *repair,
                },
                &mut |_, _| {},
            )?;
            return out.fsck(&v);
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
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

/// Keeps the error kinds referenced so the exit-code table above stays in
/// step with the library's table (a unit test compares them).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_exit_codes_match_the_table() {
        for k in ErrorKind::all() {
            let c = k.exit_code();
            let documented = EXIT_CODES.contains(&format!("  {c}  ")) || (10..=23).contains(&c);
            assert!(
                documented,
                "{k:?} exits {c}, which the help does not document"
            );
        }
    }
}
