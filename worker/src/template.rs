//! A template (zygote): opens the model once, builds and warms it on its one
//! thread, then forks a worker per request on its control socket (see
//! `thaw_snapshot::zygote`). Each child inherits the built model
//! copy-on-write, so its weights are the template's pages, and only starts
//! what a worker needs of its own: a runtime, its batcher thread, its
//! listener.
//!
//! Single-threaded until the fork: the template runs with
//! `RAYON_NUM_THREADS=1`, which candle's matmul and the BERT encoder read to
//! stay on the calling thread, so the warm-up starts no pool; the child
//! restores the variable before anything starts one.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use thaw_snapshot::zygote::{self, ForkServer, Role};

use crate::models::LoadedModel;
use crate::serve::{self, announce, ListenAddr, Prepared, WorkerOptions};

/// What a template serves and where it is asked.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// The workers' options (their listen address comes with each fork).
    pub worker: WorkerOptions,
    /// The control socket.
    pub control: PathBuf,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Runs a template until its lifeline closes or it is asked to exit. In a
/// forked child this returns only when the child's worker has stopped.
pub fn run(options: TemplateOptions) -> anyhow::Result<()> {
    let start = Instant::now();
    let threads = std::env::var_os("RAYON_NUM_THREADS");
    // Before any thread exists (the template has none besides this one).
    std::env::set_var("RAYON_NUM_THREADS", "1");

    let mut worker = options.worker;
    let opened = Instant::now();
    let (kind, warmup) = if thaw_snapshot::is_snapshot(&worker.model.dir) {
        let manifest = thaw_snapshot::open(&worker.model.dir, worker.model.kind)?;
        (manifest.kind, manifest.warmup)
    } else {
        let kind = match worker.model.kind {
            Some(kind) => kind,
            None => thaw_snapshot::detect_kind(&worker.model.dir)?,
        };
        (kind, Vec::new())
    };
    let open_ms = ms(opened);
    worker.model.kind = Some(kind);
    let built = Instant::now();
    let model = LoadedModel::load(&worker.model)?;
    let build_ms = ms(built);
    let warmed = Instant::now();
    model.warm_up(&warmup)?;
    let warmup_ms = ms(warmed);
    let model = Prepared::new(model);
    let threads_now = zygote::thread_count()?;
    anyhow::ensure!(
        threads_now == 1,
        "the template has {threads_now} threads after building the model; it cannot fork safely"
    );
    let server = ForkServer::bind(&options.control)
        .with_context(|| format!("control socket {}", options.control.display()))?;
    announce(json!({
        "event": "template_ready",
        "pid": std::process::id(),
        "model": worker.name,
        "kind": kind,
        "control": options.control,
        "open_ms": open_ms,
        "build_ms": build_ms,
        "warmup_ms": warmup_ms,
        "warmup_inputs": warmup.len(),
        "total_ms": ms(start),
    }));
    tracing::info!(model = %worker.name, pid = std::process::id(), "template ready");

    let stdin = std::io::stdin();
    let lifeline = worker.lifeline.then(|| stdin.as_fd());
    let child = match server.serve(lifeline)? {
        Role::Exit(reason) => {
            tracing::info!(model = %worker.name, ?reason, "template exiting");
            return Ok(());
        }
        Role::Child(child) => child,
    };

    // The child: a worker of its own from here on.
    let fork_ms = child.forked_at.elapsed().as_secs_f64() * 1e3;
    let request_ms = child.requested_at.elapsed().as_secs_f64() * 1e3;
    let init = Instant::now();
    child.report_on_control()?;
    restore_threads(threads);
    worker.listen = ListenAddr::Unix(child.socket.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("thaw-worker-io")
        .build()
        .context("starting the runtime")?;
    let mut timings = serde_json::Map::new();
    timings.insert("tier".into(), json!("template"));
    timings.insert("id".into(), json!(child.id));
    timings.insert("fork_ms".into(), json!(fork_ms));
    timings.insert("since_request_ms".into(), json!(request_ms));
    runtime.block_on(serve::run_prebuilt(worker, model, timings, init))?;
    runtime.shutdown_background();
    Ok(())
}

/// `RAYON_NUM_THREADS` as it was before the template set it.
fn restore_threads(previous: Option<OsString>) {
    match previous {
        Some(value) => std::env::set_var("RAYON_NUM_THREADS", value),
        None => std::env::remove_var("RAYON_NUM_THREADS"),
    }
}
