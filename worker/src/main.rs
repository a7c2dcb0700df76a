//! `thaw-worker`: serves one model over OpenAI and KServe v2 APIs.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use thaw_snapshot::ModelKind;
use thaw_worker::api::Limits;
use thaw_worker::hibernate;
use thaw_worker::models::parse_device;
use thaw_worker::serve::{self, ListenAddr, WorkerOptions};
use thaw_worker::standby::{self, StandbyOptions};
use thaw_worker::template::{self, TemplateOptions};
use thaw_worker::{BatchConfig, LoadOptions};

/// Serves one model from a model directory.
#[derive(Debug, Parser)]
#[command(name = "thaw-worker", version)]
struct Args {
    /// The model directory (safetensors + configs, a tabular manifest, or a GGUF).
    #[arg(long, required_unless_present_any = ["gpu_info", "upload_bench", "standby", "hibernate", "resume"])]
    model: Option<PathBuf>,
    /// HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: ListenAddr,
    /// The name clients use; defaults to the directory's name.
    #[arg(long)]
    name: Option<String>,
    /// embedding, tabular or chat; detected from the directory when absent.
    #[arg(long)]
    kind: Option<ModelKind>,
    /// The device to run on.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Most inputs in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// How long a non-full batch waits for more inputs, in milliseconds.
    #[arg(long, default_value_t = 0)]
    max_wait_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = 2048)]
    max_inputs: usize,
    /// Run as a template instead: build and warm the model once, then fork
    /// a worker for each request on this control socket (`unix:PATH`).
    /// `--listen` is then ignored: each fork request names its socket.
    #[arg(long, value_name = "unix:PATH")]
    template: Option<ListenAddr>,
    /// Run as a standby process instead: make the device ready (on a GPU,
    /// create its context), then wait for one activation line (JSON: model,
    /// name, kind, listen) on stdin and serve that model.
    #[arg(long, conflicts_with_all = ["model", "template"])]
    standby: bool,
    /// With --standby: map this weights file and register it with the GPU's
    /// driver while waiting, so that its model, if activated here, uploads
    /// at the host-to-device ceiling (repeatable).
    #[arg(long, value_name = "FILE", requires = "standby")]
    preregister: Vec<PathBuf>,
    /// Stdin is a pipe whose write end the supervisor holds: stop when it
    /// closes (the supervisor has gone).
    #[arg(long)]
    lifeline: bool,
    /// Print the GPUs this build can see (JSON) and exit.
    #[arg(long)]
    gpu_info: bool,
    /// Upload this file to GPU 0 from its mapping, print the bandwidth
    /// (JSON) and exit (the GPU suite).
    #[arg(long, value_name = "FILE")]
    upload_bench: Option<PathBuf>,
    /// Hibernate the GPU worker with this pid (lock its CUDA calls, move
    /// its device memory to host memory), print the timings (JSON), exit.
    #[arg(long, value_name = "PID")]
    hibernate: Option<u32>,
    /// Resume a hibernated GPU worker (restore its device memory, unlock).
    #[arg(long, value_name = "PID", conflicts_with = "hibernate")]
    resume: Option<u32>,
    /// How long `--hibernate` waits for the worker's CUDA calls in flight.
    #[arg(long, default_value_t = 5000)]
    lock_timeout_ms: u32,
}

/// When a supervisor started this worker (`THAW_PARENT_PID` set), ask the
/// kernel to kill it when the parent dies, so no worker outlives its
/// gateway; if the parent is already gone, exit now. SIGKILL, not SIGTERM:
/// with the gateway gone nothing in flight can be answered, so there is
/// nothing to finish, and SIGKILL also ends a worker that cannot act on a
/// signal (one stopped, or hibernated with its CUDA calls locked by the
/// driver's checkpoint). The graceful stop is the lifeline's (stdin) and
/// the supervisor's SIGTERM.
fn die_with_parent() -> anyhow::Result<()> {
    let Some(parent) = std::env::var_os("THAW_PARENT_PID") else {
        return Ok(());
    };
    let parent: i32 = parent
        .to_str()
        .and_then(|p| p.parse().ok())
        .context("THAW_PARENT_PID is not a pid")?;
    nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
        .context("setting the parent-death signal")?;
    if nix::unistd::getppid().as_raw() != parent {
        anyhow::bail!("the parent process {parent} has already exited");
    }
    Ok(())
}

/// Prints a one-shot command's JSON; an `error` in it is the exit status.
fn report(result: serde_json::Value) -> anyhow::Result<()> {
    println!("{result}");
    match result["error"].as_str() {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(()),
    }
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
    let args = Args::parse();
    if args.gpu_info {
        println!("{}", thaw_worker::gpu::inventory());
        return Ok(());
    }
    if let Some(pid) = args.hibernate {
        return report(hibernate::hibernate(pid, args.lock_timeout_ms));
    }
    if let Some(pid) = args.resume {
        return report(hibernate::resume(pid));
    }
    if let Some(file) = &args.upload_bench {
        println!("{}", thaw_worker::gpu::upload_bench(file, 0));
        return Ok(());
    }
    let result = serve(args);
    if let Err(e) = &result {
        // The gateway reads stdout for this process's events: the reason
        // it did not become ready, for its 503s, status and reloads.
        let line = serde_json::json!({"event": "error", "message": format!("{e:#}")});
        println!("{line}");
    }
    result
}

/// The serving modes: a worker, a template, a standby process.
fn serve(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.max_batch_size >= 1,
        "--max-batch-size must be at least 1"
    );
    anyhow::ensure!(args.max_inputs >= 1, "--max-inputs must be at least 1");
    anyhow::ensure!(
        args.max_body_bytes >= 1,
        "--max-body-bytes must be at least 1"
    );
    anyhow::ensure!(
        args.max_wait_ms <= 10_000,
        "--max-wait-ms must be at most 10000 (a batch waits milliseconds, not longer)"
    );
    die_with_parent()?;
    let batch = BatchConfig {
        max_batch_size: args.max_batch_size,
        max_wait: Duration::from_millis(args.max_wait_ms),
    };
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_inputs: args.max_inputs,
    };
    if args.standby {
        return standby::run(StandbyOptions {
            device: args.device,
            batch,
            limits,
            lifeline: args.lifeline,
            preregister: args.preregister,
        });
    }
    let model = args.model.context("--model is required")?;
    let name = match args.name {
        Some(name) => name,
        None => model
            .canonicalize()
            .with_context(|| format!("model directory {}", model.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the model directory has no name; pass --name")?,
    };
    let options = WorkerOptions {
        model: LoadOptions {
            dir: model,
            kind: args.kind,
            device: parse_device(&args.device)?,
        },
        name,
        listen: args.listen,
        batch,
        limits,
        lifeline: args.lifeline,
    };
    if let Some(control) = args.template {
        let ListenAddr::Unix(control) = control else {
            anyhow::bail!("--template needs a unix:PATH control socket");
        };
        return template::run(TemplateOptions {
            worker: options,
            control,
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("thaw-worker-io")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve::run(options))?;
    Ok(())
}
