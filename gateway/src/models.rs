//! The models the gateway serves, each with its admission queue, worker
//! pool and autoscaler loop; looked up by name on every request through an
//! atomically swapped map.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::admission::Admission;
use crate::autoscaler::{self, Decision};
use crate::config::{Config, HealthCheck, ModelConfig};
use crate::metrics::Metrics;
use crate::supervisor::{Pool, PoolPaths, WorkerSpec};

/// One served model.
pub struct Model {
    /// Its config.
    pub config: ModelConfig,
    /// Its queue and instances' capacity.
    pub admission: Admission,
    /// Its workers.
    pub pool: Arc<Pool>,
    /// The autoscaler's latest decision.
    pub decision: watch::Receiver<Decision>,
    /// Its kind: from the config, else detected from the source's files.
    pub kind: Option<thaw_snapshot::ModelKind>,
    /// KServe v2 metadata, derived from the source's files without starting it.
    pub metadata: Value,
}

/// Where workers come from and go.
#[derive(Clone)]
pub struct Runtime {
    /// Binary, sockets and snapshots directories.
    pub paths: PoolPaths,
    /// Instance ids, unique across models.
    pub ids: Arc<AtomicU64>,
    /// Metrics (also the pools' event sink).
    pub metrics: Arc<Metrics>,
    /// Turns true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Autoscaler tick.
    pub tick: Duration,
}

/// Every model, by name.
pub struct Models {
    map: ArcSwap<HashMap<String, Arc<Model>>>,
    pools: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Models {
    /// Builds each configured model and starts its autoscaler and pool
    /// loops on the current tokio runtime.
    pub fn start(config: &Config, rt: &Runtime) -> Arc<Models> {
        let mut pools = Vec::new();
        let map = config
            .models
            .iter()
            .map(|m| {
                let (model, pool) = start_model(m, &config.gateway.health, rt);
                pools.push(pool);
                (m.name.clone(), Arc::new(model))
            })
            .collect();
        Arc::new(Models {
            map: ArcSwap::from_pointee(map),
            pools: std::sync::Mutex::new(pools),
        })
    }

    /// Resolves once every pool has stopped its workers (after shutdown).
    pub async fn stopped(&self) {
        let pools: Vec<_> =
            std::mem::take(&mut *self.pools.lock().unwrap_or_else(|p| p.into_inner()));
        for pool in pools {
            let _ = pool.await;
        }
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.map.load().get(name).cloned()
    }

    /// Every model, sorted by name.
    pub fn all(&self) -> Vec<Arc<Model>> {
        let mut v: Vec<Arc<Model>> = self.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        v
    }
}

fn start_model(
    m: &ModelConfig,
    health: &HealthCheck,
    rt: &Runtime,
) -> (Model, tokio::task::JoinHandle<()>) {
    let admission = Admission::new(m.queue.clone(), m.scaling.max_concurrency);
    let spec = WorkerSpec {
        model: m.name.clone(),
        source: m.source.clone(),
        kind: m.kind,
        device: m.device.clone(),
    };
    let pool = Pool::new(
        spec,
        admission.clone(),
        rt.paths.clone(),
        rt.ids.clone(),
        rt.metrics.clone(),
    );
    pool.set_health(health.interval, health.failures);
    pool.set_keep_template(m.scaling.keep_template);
    let initial = Decision::steady(m.scaling.min_instances);
    let (decisions_tx, decisions_rx) = watch::channel(initial);
    let (knobs_tx, knobs_rx) = watch::channel(m.scaling.clone());
    tokio::spawn({
        let admission = admission.clone();
        let tick = rt.tick;
        async move {
            // The knobs' sender lives as long as this task: the loop ends
            // when the pool stops listening for decisions.
            let _knobs = knobs_tx;
            autoscaler::run(admission, knobs_rx, decisions_tx, tick).await;
        }
    });
    let running = tokio::spawn(pool.clone().run(decisions_rx.clone(), rt.shutdown.clone()));
    let model = Model {
        config: m.clone(),
        admission,
        pool,
        decision: decisions_rx,
        kind: m
            .kind
            .or_else(|| thaw_snapshot::detect_kind(&m.source).ok()),
        metadata: metadata(m),
    };
    (model, running)
}

/// KServe v2 metadata from the model's files: what the worker would say,
/// without waking it.
fn metadata(m: &ModelConfig) -> Value {
    let kind = m
        .kind
        .or_else(|| thaw_snapshot::detect_kind(&m.source).ok());
    let read = |file: &str| -> Value {
        std::fs::read_to_string(m.source.join(file))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let tensor = |name: &Value, dt: &str, shape: Value| json!({"name": name, "datatype": dt, "shape": shape});
    let (inputs, outputs, parameters) = match kind {
        Some(thaw_snapshot::ModelKind::Embedding) => {
            let dims = read("config.json")["hidden_size"].clone();
            (
                vec![tensor(&json!("text"), "BYTES", json!([-1]))],
                vec![tensor(&json!("embedding"), "FP32", json!([-1, dims]))],
                Value::Null,
            )
        }
        Some(thaw_snapshot::ModelKind::Tabular) => {
            let manifest = read(thaw_snapshot::kind::TABULAR_MANIFEST);
            let features = manifest["input"]["features"].clone();
            let width = features.as_array().map_or(0, Vec::len);
            (
                vec![tensor(
                    &manifest["input"]["name"],
                    "FP32",
                    json!([-1, width]),
                )],
                vec![tensor(&manifest["output"]["name"], "FP32", json!([-1, 1]))],
                json!({"features": features}),
            )
        }
        _ => (Vec::new(), Vec::new(), Value::Null),
    };
    let mut meta = json!({
        "name": m.name,
        "versions": ["1"],
        "platform": "thaw-candle",
        "inputs": inputs,
        "outputs": outputs,
    });
    if !parameters.is_null() {
        meta["parameters"] = parameters;
    }
    meta
}
