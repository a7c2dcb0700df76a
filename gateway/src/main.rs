//! `thaw`: the gateway's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
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
