//! The models the gateway serves, each with its admission queue, worker
//! pool and autoscaler loop; looked up by name on every request through an
//! atomically swapped map. A reload builds the next map beside the current
//! one and swaps it once (see `crate::reload`); a model leaving the map
//! finishes what it accepted, then stops its workers and template.

mod metadata;
mod operator;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::autoscaler::{self, Decision};
use crate::config::{Config, HealthCheck, ModelConfig, Scaling};
use crate::gpus::Gpus;
use crate::metrics::Metrics;
use crate::supervisor::standby::StandbyPool;
use crate::supervisor::{Pool, PoolEnv, PoolPaths, WorkerSpec};
pub use operator::{OpError, Override};

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
    /// The source's fingerprint when the model started: a reload that finds
    /// another replaces the model.
    pub fingerprint: u64,
    control: Arc<Control>,
}

/// What the versions of one started model share (a reload that only
/// retunes a model builds a new `Model` around the same control).
struct Control {
    /// Unique per started model: a replacement gets a new one.
    generation: u64,
    /// When it started, in seconds since the Unix epoch (OpenAI's
    /// `created`).
    created: u64,
    /// The autoscaler's knobs (the config's, or an operator's override).
    knobs: watch::Sender<Scaling>,
    /// Turns true to stop the pool (after the model left the map).
    stop: watch::Sender<bool>,
    /// An operator's override, until the next reload.
    overrides: Mutex<Option<Override>>,
}

impl Drop for Control {
    /// The last version of a model is gone (removed, or a replacement that
    /// never made it into the map): its pool stops.
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
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
    /// The GPUs, and the memory promised on them.
    pub gpus: Arc<Gpus>,
    /// Standby processes per GPU.
    pub standby: Arc<StandbyPool>,
}

impl Runtime {
    /// When `config` has GPU models: standby processes on every GPU of the
    /// inventory, `gpu_standby` each, started in the background (a reload
    /// changes how many).
    pub fn fill_standby(&self, config: &Config) {
        self.standby.set_per_device(config.gateway.gpu_standby);
        self.standby
            .set_preregistering(config.gateway.gpu_preregister);
        let gpu_models = config
            .models
            .iter()
            .any(|m| m.device_request() != crate::placement::DeviceRequest::Cpu);
        let Some(inventory) = self.gpus.inventory() else {
            return;
        };
        if !gpu_models {
            return;
        }
        for gpu in &inventory.gpus {
            self.standby.fill_gpu(&self.gpus, gpu.index);
        }
    }
}

/// Every model, by name.
pub struct Models {
    map: ArcSwap<HashMap<String, Arc<Model>>>,
    pools: Mutex<Vec<JoinHandle<()>>>,
    rt: Runtime,
    generations: AtomicU64,
    /// The control runtime, where pools, autoscalers and drains run.
    handle: tokio::runtime::Handle,
}

impl Models {
    /// Builds each configured model and starts its autoscaler and pool
    /// loops on the current tokio runtime (which must be the control one:
    /// reloads and drains spawn there too).
    pub fn start(config: &Config, rt: &Runtime) -> Arc<Models> {
        let models = Arc::new(Models {
            map: ArcSwap::from_pointee(HashMap::new()),
            pools: Mutex::new(Vec::new()),
            rt: rt.clone(),
            generations: AtomicU64::new(1),
            handle: tokio::runtime::Handle::current(),
        });
        let map = config
            .models
            .iter()
            .map(|m| {
                let fingerprint = source_fingerprint(&m.source);
                let model = models.launch(m, &config.gateway.health, fingerprint);
                (m.name.clone(), model)
            })
            .collect();
        models.publish(map);
        models
    }

    /// Resolves once every pool has stopped its workers (after shutdown),
    /// those of models removed by reloads included.
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

    /// The routing map as it is now.
    pub fn current(&self) -> Arc<HashMap<String, Arc<Model>>> {
        self.map.load_full()
    }

    /// Replaces the routing map in one store: requests that looked a model
    /// up before keep the one they found.
    pub fn publish(&self, map: HashMap<String, Arc<Model>>) {
        self.map.store(Arc::new(map));
    }

    /// The control runtime.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Where workers come from, and the GPUs.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Starts `m` (its pool at `min_instances`, its autoscaler) without
    /// publishing it: the caller puts it in the next map.
    pub fn launch(&self, m: &ModelConfig, health: &HealthCheck, fingerprint: u64) -> Arc<Model> {
        let _enter = self.handle.enter();
        let rt = &self.rt;
        let admission = Admission::new(m.queue.clone(), m.scaling.max_concurrency);
        let spec = WorkerSpec {
            model: m.name.clone(),
            source: m.source.clone(),
            kind: m.kind,
            device: m.device.clone(),
            memory_limit: m.memory_limit,
        };
        let env = PoolEnv {
            paths: rt.paths.clone(),
            ids: rt.ids.clone(),
            events: rt.metrics.clone(),
            gpus: rt.gpus.clone(),
            standby: rt.standby.clone(),
        };
        rt.metrics.model_added(&m.name);
        let pool = Pool::new(spec, admission.clone(), env);
        pool.set_health(health.interval, health.failures);
        pool.set_keep_template(m.scaling.keep_template);
        let initial = Decision::steady(m.scaling.min_instances);
        let (decisions_tx, decisions_rx) = watch::channel(initial);
        let (knobs, knobs_rx) = watch::channel(m.scaling.clone());
        // Ends when the model's control is gone (its last version dropped)
        // or the pool stops listening for decisions.
        tokio::spawn(autoscaler::run(
            admission.clone(),
            knobs_rx,
            decisions_tx,
            rt.tick,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let stopping = crate::stop::either(stop_rx, rt.shutdown.clone());
        let running = tokio::spawn(pool.clone().run(decisions_rx.clone(), stopping));
        {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|p| !p.is_finished());
            pools.push(running);
        }
        Arc::new(Model {
            config: m.clone(),
            admission,
            pool,
            decision: decisions_rx,
            kind: m
                .kind
                .or_else(|| thaw_snapshot::detect_kind(&m.source).ok()),
            metadata: metadata::metadata(m),
            fingerprint,
            control: Arc::new(Control {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                knobs,
                stop,
                overrides: Mutex::new(None),
            }),
        })
    }

    /// Removes `model`'s snapshot directories other than `keep`, in the
    /// background.
    pub fn prune_snapshots(&self, model: &str, keep: Option<&std::path::Path>) {
        let snapshots = self.rt.paths.snapshots.clone();
        let (model, keep) = (model.to_string(), keep.map(std::path::Path::to_path_buf));
        self.handle.spawn_blocking(move || {
            crate::supervisor::snapshots::prune(&snapshots, &model, keep.as_deref());
        });
    }

    /// Takes a model that left the map out of service: `Replaced` turns
    /// its queued requests back to the router (they find the successor),
    /// `Removed` serves them first; either way requests in flight finish on
    /// its workers, which then stop with its template.
    pub fn retire(&self, old: Arc<Model>, how: Retire) {
        match how {
            Retire::Replaced => {
                old.admission.close();
                old.stop();
            }
            Retire::Removed => {
                old.admission.retire();
                self.handle.spawn(async move {
                    let mut activity = old.admission.activity();
                    // Queued requests leave by being served or by timing out.
                    let limit = old.config.queue.timeout + Duration::from_secs(1);
                    let drained = activity.wait_for(|a| a.queue_empty);
                    if tokio::time::timeout(limit, drained).await.is_err() {
                        tracing::warn!(model = %old.config.name, "queue not empty after its timeout");
                    }
                    old.stop();
                });
            }
        }
    }
}

/// How a model leaves the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// A new version of it took its place.
    Replaced,
    /// It is no longer configured.
    Removed,
}

impl Model {
    /// Unique per started model; a model retuned by a reload keeps it, a
    /// replaced one's successor gets a new one.
    pub fn generation(&self) -> u64 {
        self.control.generation
    }

    /// When the model started (seconds since the Unix epoch); a retuned
    /// model keeps it.
    pub fn created(&self) -> u64 {
        self.control.created
    }

    /// The scaling knobs in force (the config's, or the override's).
    pub fn scaling(&self) -> Scaling {
        self.control.knobs.borrow().clone()
    }

    /// The operator's override, if any.
    pub fn override_state(&self) -> Option<Override> {
        *self
            .control
            .overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// This model under a reloaded `config` whose instances stay as they
    /// are: queue and scaling knobs apply at once, any override ends.
    pub fn retuned(&self, config: ModelConfig, health: &HealthCheck) -> Arc<Model> {
        self.admission
            .set_policy(config.queue.clone(), config.scaling.max_concurrency);
        self.pool.set_keep_template(config.scaling.keep_template);
        self.pool.set_health(health.interval, health.failures);
        {
            let mut overrides = self
                .control
                .overrides
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if overrides.take() == Some(Override::Drained) {
                self.admission.reopen();
            }
            self.control.knobs.send_replace(config.scaling.clone());
        }
        Arc::new(Model {
            config,
            admission: self.admission.clone(),
            pool: self.pool.clone(),
            decision: self.decision.clone(),
            kind: self.kind,
            metadata: self.metadata.clone(),
            fingerprint: self.fingerprint,
            control: self.control.clone(),
        })
    }

    /// Holds at least `floor` instances (a reload proving that a new
    /// version starts, whatever its own floor), or, with `None`, the
    /// config's floor again.
    pub fn hold_floor(&self, floor: Option<u32>) {
        let scaling = self.config.scaling.clone();
        self.control.knobs.send_modify(|k| {
            *k = scaling;
            if let Some(floor) = floor {
                k.min_instances = k.min_instances.max(floor);
                k.max_instances = k.max_instances.max(k.min_instances);
            }
        });
    }

    /// Stops the pool: it drains its instances and stops them and the
    /// template.
    fn stop(&self) {
        self.control.stop.send_replace(true);
    }
}

/// A cheap fingerprint of a model's source: every file's relative path,
/// size and modification time. A reload replaces a model whose source
/// directory changed even where its path did not.
pub fn source_fingerprint(root: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .unwrap_or_default();
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                entries.push((rel, meta.len(), modified));
            }
        }
    }
    entries.sort();
    entries.hash(&mut hasher);
    hasher.finish()
}
