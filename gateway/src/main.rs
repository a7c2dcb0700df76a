//! `thaw`: the gateway's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy allocates per request (headers, bodies, tasks) on
/// several threads; glibc malloc was ~8 % of the gateway's CPU under load, and
/// mimalloc gave 4-6 % more requests/s (wrk, 16 connections, credit-score).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use thaw_gateway::ctl;
use thaw_gateway::serve::{self, ServeOptions};

/// thaw: serverless inference.
#[derive(Debug, Parser)]
#[command(name = "thaw", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build or verify snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Serve the models of a config.
    Serve {
        /// The config file.
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Public listener (overrides the config).
        #[arg(long)]
        listen: Option<String>,
        /// Admin listener (overrides the config).
        #[arg(long)]
        admin_listen: Option<String>,
        /// The thaw-worker binary (default: next to this one).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Take over the listening sockets of the gateway running on the
        /// same addresses and state_dir instead of binding them: a binary
        /// upgrade without a dropped connection. Send the old process
        /// SIGQUIT within 5 seconds of starting this one (pingora waits that
        /// long for the sockets); with port 0 in the config, give the
        /// running addresses with --listen and --admin-listen.
        #[arg(long)]
        upgrade: bool,
    },
    /// Operate a running gateway through its admin API. Exit codes: 0 done,
    /// 1 refused or failed by the gateway, 2 usage error or admin API
    /// unreachable. The bearer token, if the gateway wants one, comes from
    /// THAW_ADMIN_TOKEN.
    Ctl {
        /// The admin API.
        #[arg(long, env = "THAW_ADMIN", default_value = "http://127.0.0.1:9090")]
        admin: String,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Models, the tier of each instance, queue depth, in-flight requests,
    /// cold starts, overrides; the config's version and the last reload.
    Status {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reload the config file (exit 1, with file:line: field, if refused).
    Reload,
    /// Set a model's running floor (and cap) until the next reload.
    Scale {
        /// The model.
        model: String,
        /// The floor.
        #[arg(long)]
        min: u32,
        /// The cap (default: the config's).
        #[arg(long)]
        max: Option<u32>,
    },
    /// Stop a model's workers after they finish what they accepted, and
    /// hold it at zero (new requests get 503) until a reload or a scale.
    Drain {
        /// The model.
        model: String,
    },
}

impl CtlCommand {
    fn into_ctl(self) -> ctl::Command {
        match self {
            CtlCommand::Status { json } => ctl::Command::Status { json },
            CtlCommand::Reload => ctl::Command::Reload,
            CtlCommand::Scale { model, min, max } => ctl::Command::Scale { model, min, max },
            CtlCommand::Drain { model } => ctl::Command::Drain { model },
        }
    }
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Turn a model directory into a snapshot.
    Build {
        /// The model directory (safetensors + configs, a tabular manifest, or a GGUF).
        source: PathBuf,
        /// The snapshot directory to write (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        /// The weights' dtype: f32, f16, bf16, or q8_0 (embedding models only).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Check a snapshot's manifest and every file's hash.
    Verify {
        /// The snapshot directory.
        dir: PathBuf,
    },
}

fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Build { source, out, dtype } => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let manifest = thaw_snapshot::build(&thaw_snapshot::BuildOptions {
                source,
                out: out.clone(),
                dtype: dtype.parse()?,
                progress: Some(&report),
            })?;
            bar.finish_and_clear();
            println!(
                "built {}: {} {} ({}), {} files, {} weight bytes",
                out.display(),
                manifest.kind,
                manifest.architecture,
                manifest.dtype,
                manifest.files.len(),
                manifest.sizes.weight_bytes
            );
        }
        SnapshotCommand::Verify { dir } => {
            let manifest = thaw_snapshot::verify(&dir)?;
            println!(
                "ok: {} {} ({}), {} files verified",
                manifest.kind,
                manifest.architecture,
                manifest.dtype,
                manifest.files.len()
            );
        }
    }
    Ok(())
}

/// Errors end the process as one line, `Error: what: why: …`, with exit
/// code 1 (not anyhow's "Caused by:" list, nor a backtrace where
/// RUST_BACKTRACE happens to be set).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Snapshot(command) => snapshot(command),
        Command::Serve {
            config,
            listen,
            admin_listen,
            worker_bin,
            upgrade,
        } => serve::run(ServeOptions {
            config,
            listen,
            admin_listen,
            worker_bin,
            upgrade,
        }),
        Command::Ctl { admin, command } => {
            let token = std::env::var(serve::ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty());
            std::process::exit(ctl::run(&admin, token.as_deref(), &command.into_ctl()))
        }
    }
}
