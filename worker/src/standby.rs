//! A standby worker: a process started ahead of demand with its device made
//! ready — on a GPU its CUDA context created and its first kernel run — that
//! waits for the model it is to serve. GPU models cannot use templates (a
//! CUDA context does not survive `fork`), so the supervisor keeps standby
//! processes per GPU instead and activates one on a scale-up: the context's
//! cost (hundreds of milliseconds on a GPU) is paid before any request
//! waits for it.
//!
//! The protocol is stdin, the same pipe that is the worker's lifeline: the
//! process prints `{"event":"standby",...}` once ready, then reads one JSON
//! line, an [`Activation`]; from then on it is a worker like any other and
//! prints the usual `listening` and `ready` lines (`"tier":"standby"`, with
//! `context_ms` and `standby_ms` beside `load_ms`). End-of-file before an
//! activation means the supervisor has gone: the process exits quietly.
//!
//! With `--preregister FILE` (the weights of the models that may be
//! activated on this GPU), the process also maps each file and registers it
//! with the driver while it waits, as a pinned host copy of the snapshot
//! (the page cache's own pages, locked; shared by every process that maps
//! them): the model it is activated with then uploads at the host-to-device
//! ceiling, and the others are released. The `standby` line reports each.
//! Lines `{"preregister": FILE}` before the activation add files the same
//! way (a snapshot prepared after the process started), each answered by a
//! `preregistered` line.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::json;
use thaw_snapshot::ModelKind;

use crate::api::Limits;
use crate::models::{parse_device, LoadOptions};
use crate::serve::{self, announce, ListenAddr, WorkerOptions};
use crate::BatchConfig;

/// A standby process's settings: everything but the model.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// The device to make ready (`cpu`, `cuda:N`).
    pub device: String,
    /// Batching knobs of the worker it becomes.
    pub batch: BatchConfig,
    /// Request limits of the worker it becomes.
    pub limits: Limits,
    /// Stdin is also the lifeline once activated.
    pub lifeline: bool,
    /// Weights files to map and register with the GPU's driver while
    /// waiting (the snapshots of the models that may be activated here):
    /// the one activated then copies at the host-to-device ceiling.
    pub preregister: Vec<PathBuf>,
}

/// What the supervisor sends to activate a standby process: one line of
/// JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// The model directory or snapshot to serve.
    pub model: PathBuf,
    /// The name clients use.
    pub name: String,
    /// The kind, when the supervisor knows it.
    #[serde(default)]
    pub kind: Option<ModelKind>,
    /// Where to listen: `HOST:PORT` or `unix:PATH`.
    pub listen: String,
}

/// A line `{"preregister": PATH}`: a file to register ahead (see the
/// module's documentation); `None` for anything else (an activation).
pub fn preregister_line(line: &str) -> Option<PathBuf> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Preregister {
        preregister: PathBuf,
    }
    serde_json::from_str::<Preregister>(line.trim())
        .ok()
        .map(|p| p.preregister)
}

impl Activation {
    /// Parses one activation line.
    pub fn parse(line: &str) -> anyhow::Result<Activation> {
        let activation: Activation =
            serde_json::from_str(line.trim()).context("the activation line is not valid")?;
        anyhow::ensure!(
            !activation.name.is_empty(),
            "the activation names no model (\"name\" is empty)"
        );
        Ok(activation)
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Makes `device` ready for the first model: on a GPU this creates the
/// context (in `parse_device`), then runs one operation of each kind a
/// model uses (gather, element-wise, matrix product, softmax, layer norm,
/// GELU, copies, sums; for chat models quantized products, RMSNorm, RoPE,
/// SiLU), so that the kernel modules are loaded (and, the
/// first time on a machine, compiled from PTX by the driver: seconds) and
/// the cuBLAS handle exists before a request needs them.
fn prepare(device: &Device) -> anyhow::Result<()> {
    let probe = Tensor::ones(16, DType::F32, device)?.sum_all()?;
    let sum = probe.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    anyhow::ensure!(sum == 16.0, "the device computed {sum} for 16 ones");
    let ids = Tensor::new(&[2u32, 0, 1], device)?;
    let table = Tensor::arange(0f32, 32.0, device)?.reshape((4, 8))?;
    let x = (table
        .index_select(&ids, 0)?
        .broadcast_add(&Tensor::ones(8, DType::F32, device)?)?
        * 0.01)?;
    let scores = x.matmul(&x.t()?.contiguous()?)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    let (gamma, beta) = (
        Tensor::ones(8, DType::F32, device)?,
        Tensor::zeros(8, DType::F32, device)?,
    );
    let normed = candle_nn::ops::layer_norm(&weights.matmul(&x)?, &gamma, &beta, 1e-12)?;
    let out = normed.gelu_erf()?.sum_all()?.to_scalar::<f32>()?;
    anyhow::ensure!(out.is_finite(), "the device computed {out} in its warm-up");
    // And what the chat decoder uses beyond those.
    let out = crate::models::chat::device::warm_kernels(device)?;
    anyhow::ensure!(
        out.is_finite(),
        "the device computed {out} in its chat warm-up"
    );
    Ok(())
}

/// Runs a standby process: prepares the device, announces it, waits for
/// an activation on stdin and serves that model until shutdown.
pub fn run(options: StandbyOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = parse_device(&options.device)?;
    prepare(&device).with_context(|| format!("preparing {}", options.device))?;
    let context_ms = ms(started);
    let preregistered: Vec<serde_json::Value> = options
        .preregister
        .iter()
        .map(|path| crate::gpu::preregister(path, &device))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("thaw-worker-io")
        .build()
        .context("starting the runtime")?;
    announce(json!({
        "event": "standby",
        "pid": std::process::id(),
        "device": options.device,
        "context_ms": context_ms,
        "preregistered": preregistered,
    }));
    tracing::info!(device = %options.device, context_ms, "standby");

    let waiting = Instant::now();
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    // Lines before the activation may name more files to register ahead.
    loop {
        line.clear();
        let read = stdin
            .read_line(&mut line)
            .context("reading the activation")?;
        if read == 0 {
            tracing::info!("the supervisor has gone before activating this standby process");
            return Ok(());
        }
        match preregister_line(&line) {
            Some(path) => {
                let mut report = crate::gpu::preregister(&path, &device);
                report["event"] = json!("preregistered");
                announce(report);
            }
            None => break,
        }
    }
    drop(stdin);
    let activated = Instant::now();
    let standby_ms = waiting.elapsed().as_secs_f64() * 1e3;
    let activation = Activation::parse(&line)?;
    let listen: ListenAddr = activation
        .listen
        .parse()
        .map_err(|e: String| anyhow::anyhow!("the activation's listen address: {e}"))?;
    let worker = WorkerOptions {
        model: LoadOptions {
            dir: activation.model,
            kind: activation.kind,
            device,
        },
        name: activation.name,
        listen,
        batch: options.batch,
        limits: options.limits,
        lifeline: options.lifeline,
    };
    let mut timings = serde_json::Map::new();
    timings.insert("tier".into(), json!("standby"));
    timings.insert("device".into(), json!(options.device));
    timings.insert("context_ms".into(), json!(context_ms));
    timings.insert("standby_ms".into(), json!(standby_ms));
    runtime.block_on(serve::run_with_timings(worker, timings, activated))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preregister_lines() {
        assert_eq!(
            preregister_line("{\"preregister\": \"/s/model.safetensors\"}\n"),
            Some(PathBuf::from("/s/model.safetensors"))
        );
        for other in [
            r#"{"model": "/m", "name": "x", "listen": "unix:/s"}"#,
            r#"{"preregister": "/a", "model": "/m"}"#,
            r#"{"preregister": 3}"#,
            "",
        ] {
            assert_eq!(preregister_line(other), None, "{other:?}");
        }
    }

    #[test]
    fn activation_lines() {
        let a = Activation::parse(
            r#"{"model": "/m", "name": "minilm", "kind": "embedding", "listen": "unix:/s"}"#,
        )
        .expect("valid");
        assert_eq!(a.model, PathBuf::from("/m"));
        assert_eq!(a.kind, Some(ModelKind::Embedding));
        let bare = Activation::parse("{\"model\":\"/m\",\"name\":\"x\",\"listen\":\"unix:/s\"}\n")
            .expect("kind is optional");
        assert_eq!(bare.kind, None);
        for bad in [
            "",
            "{",
            r#"{"model": "/m", "listen": "unix:/s"}"#,
            r#"{"model": "/m", "name": "", "listen": "unix:/s"}"#,
            r#"{"model": "/m", "name": "x", "listen": "unix:/s", "extra": 1}"#,
            r#"{"model": "/m", "name": "x", "kind": "vision", "listen": "unix:/s"}"#,
        ] {
            assert!(Activation::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_cpu_is_prepared() {
        prepare(&Device::Cpu).expect("a CPU computes 16 ones");
    }
}
