//! `thaw`: the gateway's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy allocates per request (headers, bodies, tasks) on
/// several threads; glibc malloc was ~8 % of the gateway's CPU under load, and
/// mimalloc gave 4-6 % more requests/s (wrk, 16 connections, credit-score).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    },
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
        /// The weights' dtype: f32, f16, bf16 (q8_0 is refused for now).
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

fn main() -> anyhow::Result<()> {
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
        } => serve::run(ServeOptions {
            config,
            listen,
            admin_listen,
            worker_bin,
        }),
    }
}
