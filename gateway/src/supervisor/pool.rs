//! One model's pool of workers, reconciled toward the autoscaler's decision.
//! Effects only: which count is wanted is the autoscaler's business; how a
//! worker starts and stops is `process`'s and `template`'s.
//!
//! Tiers: a new worker is forked from the model's template when there is one
//! (tier `template`); else a template is started from the snapshot first
//! (`snapshot`); else the snapshot is built from the source first
//! (`source`). Demotion: the autoscaler takes the workers away after
//! `scale_to_zero_after`; the template stays `keep_template` longer, then
//! exits too. A template that dies unasked is restarted while the model
//! should have one (workers, or within `keep_template` of the last), and
//! lazily otherwise. Without a template (it cannot start), a
//! worker is exec'd on the snapshot.
//!
//! GPU models (`device = "cuda"` or `"cuda:N"`): each instance is placed on
//! a GPU first (`crate::gpus`; no room is a start failure, which the queued
//! requests get as a 503 with Retry-After) and exec'd with that GPU as its
//! `--device`; no template, since a CUDA context does not survive fork():
//! a standby process on that GPU (`super::standby`), its context made
//! ahead, is activated instead when one is ready.
//! The instance holds its GPU memory lease until its process has exited.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::process::{self, SpawnError, WorkerProcess, WorkerSpec};
use super::standby::StandbyPool;
use super::template::{self, TemplateProcess};
use crate::admission::{Admission, InstanceId};
use crate::autoscaler::Decision;
use crate::gpus::{self, Gpus, Lease};
use crate::placement::DeviceRequest;

/// What the pool reports to metrics.
pub trait PoolEvents: Send + Sync {
    /// A worker became ready after `startup`.
    fn started(&self, model: &str, tier: &str, startup: Duration);
    /// A snapshot was built from the model's source in `took`.
    fn snapshot_built(&self, model: &str, took: Duration);
    /// A worker failed to start.
    fn start_failed(&self, model: &str, error: &str);
    /// A worker exited without being asked to.
    fn crashed(&self, model: &str);
    /// One phase of a cold start took `took` (snapshot_open, model_build,
    /// fork, child_init, worker_load).
    fn phase(&self, model: &str, phase: &str, took: Duration);
    /// A template started, exited after `keep_template` (demoted), or died.
    fn template(&self, model: &str, event: &str);
}

/// How soon to look again at a template slot that was held for a moment.
const TEMPLATE_BUSY_RETRY: Duration = Duration::from_millis(50);

/// The longest a `thaw-worker --hibernate` or `--resume` may take (the
/// driver moves the worker's device memory: seconds for tens of GB).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a pool's workers come from and put their files.
#[derive(Debug, Clone)]
pub struct PoolPaths {
    /// The `thaw-worker` binary.
    pub worker_bin: PathBuf,
    /// Private directory for worker sockets.
    pub sockets: PathBuf,
    /// Where snapshots built from sources live.
    pub snapshots: PathBuf,
}

/// What every pool shares: where workers come from, the instance ids
/// (unique in the gateway), the event sink and the GPUs.
#[derive(Clone)]
pub struct PoolEnv {
    /// Binary, sockets and snapshots.
    pub paths: PoolPaths,
    /// Instance ids, shared by every pool.
    pub ids: Arc<AtomicU64>,
    /// Metrics.
    pub events: Arc<dyn PoolEvents>,
    /// The GPUs and the memory promised on them.
    pub gpus: Arc<Gpus>,
    /// Standby processes per GPU, which GPU instances start from.
    pub standby: Arc<StandbyPool>,
}

/// A worker as `/admin/status` shows it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// Its id in the admission.
    pub id: InstanceId,
    /// Its pid.
    pub pid: u32,
    /// `ready` or `draining`.
    pub state: &'static str,
    /// The tier it was started from: `template`, `snapshot`, `source`, or
    /// `exec` (no template could start).
    pub started_from: &'static str,
    /// Spawn to ready, milliseconds.
    pub startup_ms: f64,
    /// Seconds since it became ready.
    pub age_s: f64,
    /// The GPU it was placed on, and the bytes promised there.
    pub gpu: Option<(u32, u64)>,
}

struct Instance {
    process: WorkerProcess,
    ready_at: Instant,
    draining: bool,
    started_from: &'static str,
    /// Released when the instance leaves the map, after its exit.
    gpu: Option<Lease>,
}

/// A hibernated GPU worker: out of the admission, its GPU memory no longer
/// promised; its process keeps its id, socket and model.
struct Hibernated {
    id: InstanceId,
    process: WorkerProcess,
    /// The GPU it was on (a resume goes back there) and what it needs.
    gpu: u32,
    need: u64,
    since: Instant,
}

/// A model's template as `/admin/status` shows it.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    /// Its pid.
    pub pid: u32,
    /// Spawn to ready, milliseconds.
    pub startup_ms: f64,
    /// Seconds since it became ready.
    pub age_s: f64,
}

/// Numbers pools, so that the template sockets of two pools of one model
/// (the old and the new during a reload's rolling replacement) differ.
static POOLS: AtomicU64 = AtomicU64::new(1);

/// One model's workers.
pub struct Pool {
    spec: WorkerSpec,
    serial: u64,
    admission: Admission,
    bin: PathBuf,
    sockets: PathBuf,
    ids: Arc<AtomicU64>,
    instances: Mutex<HashMap<InstanceId, Instance>>,
    starting: AtomicUsize,
    changed: Notify,
    snapshots: PathBuf,
    prepared: tokio::sync::OnceCell<PathBuf>,
    gpus: Arc<Gpus>,
    standby: Arc<StandbyPool>,
    /// GPU workers hibernated by a scale-down (device memory moved to host
    /// memory, GPU memory released), resumed before anything new starts.
    hibernated: Mutex<Vec<Hibernated>>,
    /// A GPU instance's memory need, from the prepared snapshot.
    gpu_need: tokio::sync::OnceCell<u64>,
    template: tokio::sync::Mutex<Option<Arc<TemplateProcess>>>,
    restart_template: std::sync::atomic::AtomicBool,
    idle_since: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<String>>,
    events: Arc<dyn PoolEvents>,
    /// Whether workers are forked from a template (else exec'd).
    pub use_templates: bool,
    keep_template_ms: AtomicU64,
    /// How long a worker may take to become ready.
    pub start_timeout: Duration,
    /// How long a stopping worker may drain before SIGKILL.
    pub grace: Duration,
    /// How often each worker's liveness is probed (also each probe's
    /// limit), and after how many failures in a row it is killed.
    health: Mutex<(Duration, u32)>,
}

impl Pool {
    /// A pool for `spec` in `env`.
    pub fn new(spec: WorkerSpec, admission: Admission, env: PoolEnv) -> Arc<Self> {
        let PoolEnv {
            paths,
            ids,
            events,
            gpus,
            standby,
        } = env;
        Arc::new(Pool {
            spec,
            serial: POOLS.fetch_add(1, Ordering::Relaxed),
            admission,
            bin: paths.worker_bin,
            sockets: paths.sockets,
            ids,
            instances: Mutex::new(HashMap::new()),
            starting: AtomicUsize::new(0),
            changed: Notify::new(),
            snapshots: paths.snapshots,
            prepared: tokio::sync::OnceCell::new(),
            gpus,
            standby,
            hibernated: Mutex::new(Vec::new()),
            gpu_need: tokio::sync::OnceCell::new(),
            template: tokio::sync::Mutex::new(None),
            restart_template: std::sync::atomic::AtomicBool::new(false),
            idle_since: Mutex::new(None),
            last_failure: Mutex::new(None),
            events,
            use_templates: true,
            keep_template_ms: AtomicU64::new(1_800_000),
            start_timeout: Duration::from_secs(120),
            grace: Duration::from_secs(30),
            health: Mutex::new((Duration::from_secs(5), 3)),
        })
    }

    /// How long a template outlives the model's last worker.
    pub fn keep_template(&self) -> Duration {
        Duration::from_millis(self.keep_template_ms.load(Ordering::Acquire))
    }

    /// Changes `keep_template` (takes effect at the next reconcile).
    pub fn set_keep_template(&self, keep: Duration) {
        let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        self.keep_template_ms.store(ms, Ordering::Release);
        self.changed.notify_one();
    }

    /// Probes each worker every `interval` (a probe may take as long) and
    /// kills it after `failures` failed probes in a row; for workers started
    /// from now on.
    pub fn set_health(&self, interval: Duration, failures: u32) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = (interval, failures.max(1));
    }

    /// Why the last start failed, while no worker is serving.
    pub fn failure(&self) -> Option<String> {
        if self.serving() > 0 {
            return None;
        }
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A start failed: remember why and, with no worker serving, fail the
    /// queued requests now (503) instead of letting them time out.
    fn start_failed(&self, error: String) {
        self.events.start_failed(&self.spec.model, &error);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        if self.serving() == 0 {
            self.admission.fail_waiting();
        }
    }

    /// A worker started: an earlier start's failure is no longer the
    /// model's state (a later scale to zero does not bring it back).
    fn started_ok(&self) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Workers starting now.
    pub fn starting(&self) -> usize {
        self.starting.load(Ordering::Acquire)
    }

    /// The live workers.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let now = Instant::now();
        let map = self.lock();
        let mut list: Vec<InstanceInfo> = map
            .iter()
            .map(|(id, i)| InstanceInfo {
                id: *id,
                pid: i.process.pid,
                state: if i.draining { "draining" } else { "ready" },
                started_from: i.started_from,
                startup_ms: i.process.startup.as_secs_f64() * 1e3,
                age_s: now.duration_since(i.ready_at).as_secs_f64(),
                gpu: i.gpu.as_ref().map(|l| (l.gpu, l.bytes)),
            })
            .collect();
        list.extend(self.hibernated_list().iter().map(|h| InstanceInfo {
            id: h.id,
            pid: h.process.pid,
            state: "hibernated",
            started_from: "hibernated",
            startup_ms: h.process.startup.as_secs_f64() * 1e3,
            age_s: now.duration_since(h.since).as_secs_f64(),
            gpu: None,
        }));
        list.sort_by_key(|i| i.id);
        list
    }

    fn hibernated_list(&self) -> std::sync::MutexGuard<'_, Vec<Hibernated>> {
        self.hibernated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model's template, while one runs.
    pub fn template_info(&self) -> Option<TemplateInfo> {
        let slot = self.template.try_lock().ok()?;
        let t = slot.as_ref().filter(|t| t.alive())?;
        Some(TemplateInfo {
            pid: t.pid,
            startup_ms: t.startup.as_secs_f64() * 1e3,
            age_s: t.ready_at.elapsed().as_secs_f64(),
        })
    }

    /// The model's warmest tier now: `hot` (a worker serves), `template`,
    /// `snapshot` (built, nothing running) or `source`.
    pub fn tier(&self) -> &'static str {
        if self.serving() > 0 {
            "hot"
        } else if !self.hibernated_list().is_empty() {
            "hibernated"
        } else if self.template_info().is_some() {
            "template"
        } else if self.prepared.initialized() {
            "snapshot"
        } else {
            "source"
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Instance>> {
        // A poisoned lock only means a panic elsewhere mid-update of a map
        // whose entries are each whole; keep serving.
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serving(&self) -> usize {
        self.lock().values().filter(|i| !i.draining).count()
    }

    /// Reconciles toward each decision until `shutdown` turns true, then
    /// drains and stops every worker.
    pub async fn run(
        self: Arc<Self>,
        mut decisions: watch::Receiver<Decision>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let want = decisions.borrow_and_update().instances as usize;
            self.reconcile(want);
            let demote_at = self.demotion_due();
            let demotion = async {
                match demote_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let expiry = self.hibernated_due();
            let expiring = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut demote = false;
            tokio::select! {
                r = decisions.changed() => if r.is_err() { break },
                () = self.changed.notified() => {}
                _ = shutdown.wait_for(|s| *s) => break,
                () = demotion => demote = true,
                () = expiring => self.expire_hibernated(),
            }
            if demote {
                self.demote().await;
            }
            if self.restart_template.swap(false, Ordering::AcqRel) {
                self.restart_template();
            }
        }
        self.stop_all().await;
    }

    /// When the template is due to go: `keep_template` after the pool last
    /// became idle (or after the template started, if later); `None` while
    /// workers run or start, or when there is no template.
    fn demotion_due(&self) -> Option<Instant> {
        let idle = self.lock().is_empty() && self.starting() == 0;
        let mut since = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if !idle {
            *since = None;
            return None;
        }
        let idle_at = *since.get_or_insert_with(Instant::now);
        let Ok(slot) = self.template.try_lock() else {
            // Held for a moment (a status read, a fork): look again soon,
            // or the demotion would wait for an unrelated event.
            return Some(Instant::now() + TEMPLATE_BUSY_RETRY);
        };
        let template = slot.as_ref()?;
        Some(idle_at.max(template.ready_at) + self.keep_template())
    }

    /// Stops the template (the model goes to the snapshot tier), unless a
    /// start is using it right now.
    async fn demote(self: &Arc<Self>) {
        let Ok(mut slot) = self.template.try_lock() else {
            // Busy: the loop computes the due time again after a pause.
            tokio::time::sleep(TEMPLATE_BUSY_RETRY).await;
            return;
        };
        if !(self.lock().is_empty() && self.starting() == 0) {
            return;
        }
        if let Some(template) = slot.take() {
            tracing::info!(model = %self.spec.model, pid = template.pid, "template demoted: the model is at the snapshot tier");
            self.events.template(&self.spec.model, "demoted");
            drop(slot);
            template.handle().stop(self.grace).await;
        }
    }

    /// The model's template, started from the snapshot `spec` names when
    /// there is none; `true` when it was started now.
    async fn template(
        self: &Arc<Self>,
        spec: &WorkerSpec,
    ) -> Result<(Arc<TemplateProcess>, bool), SpawnError> {
        let mut slot = self.template.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| t.alive()) {
            return Ok((t.clone(), false));
        }
        let control = self
            .sockets
            .join(format!("{}.{}.template.sock", self.spec.model, self.serial));
        let started = template::start(&self.bin, spec, &control, self.start_timeout).await?;
        tracing::info!(
            model = %self.spec.model, pid = started.pid,
            startup_ms = started.startup.as_secs_f64() * 1e3, "template ready"
        );
        self.events.template(&self.spec.model, "started");
        self.events
            .phase(&self.spec.model, "snapshot_open", started.open);
        self.events
            .phase(&self.spec.model, "model_build", started.build);
        self.events
            .phase(&self.spec.model, "warm_up", started.warm_up);
        let started = Arc::new(started);
        *slot = Some(started.clone());
        tokio::spawn(self.clone().watch_template(started.clone()));
        Ok((started, true))
    }

    /// Learns of the template's exit; one that was not asked to go is
    /// counted and restarted while the model should have one (it has
    /// workers, or is within `keep_template` of its last).
    async fn watch_template(self: Arc<Self>, template: Arc<TemplateProcess>) {
        let status = template.handle().exited().await;
        let unasked = {
            let mut slot = self.template.lock().await;
            let current = slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, &template));
            if current {
                *slot = None;
            }
            current
        };
        if !unasked {
            return;
        }
        tracing::warn!(model = %self.spec.model, pid = template.pid, ?status, "template died");
        self.events.template(&self.spec.model, "crashed");
        drop(template);
        if !self.wants_template() {
            return;
        }
        // Back off, so that a template that dies at once does not spin.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.restart_template.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Whether the model should have a template now: it has workers, or
    /// starts some, or its last worker went less than `keep_template` ago.
    fn wants_template(&self) -> bool {
        if self.serving() > 0 || self.starting() > 0 {
            return true;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        since.is_some_and(|at| at.elapsed() < self.keep_template())
    }

    /// Starts the template again in the background while the model should
    /// have one (a start then finds it ready).
    fn restart_template(self: &Arc<Self>) {
        let Some(dir) = self.prepared.get().cloned() else {
            return;
        };
        if !self.wants_template() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let spec = WorkerSpec {
                source: dir,
                ..pool.spec.clone()
            };
            if let Err(e) = pool.template(&spec).await {
                tracing::error!(model = %pool.spec.model, "restarting the template: {e}");
            }
        });
    }

    fn reconcile(self: &Arc<Self>, want: usize) {
        let live = self.serving() + self.starting();
        if live < want {
            for _ in live..want {
                self.starting.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(self.clone().start_one());
            }
        } else if self.starting() == 0 && live > want {
            let extra = self.pick_extra(live - want);
            for id in extra {
                tokio::spawn(self.clone().drain_and_retire(id));
            }
        }
    }

    /// The `n` serving instances with the fewest requests in flight.
    fn pick_extra(&self, n: usize) -> Vec<InstanceId> {
        let stats = self.admission.stats();
        let mut map = self.lock();
        let mut serving: Vec<(u32, InstanceId)> = map
            .iter()
            .filter(|(_, i)| !i.draining)
            .map(|(id, _)| {
                let load = stats
                    .instances
                    .iter()
                    .find(|s| s.id == *id)
                    .map_or(0, |s| s.in_flight);
                (load, *id)
            })
            .collect();
        serving.sort();
        let picked: Vec<InstanceId> = serving.into_iter().take(n).map(|(_, id)| id).collect();
        for id in &picked {
            if let Some(i) = map.get_mut(id) {
                i.draining = true;
            }
        }
        picked
    }

    /// The snapshot directory its workers start from, once prepared.
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        self.prepared.get().cloned()
    }

    /// The snapshot workers start from, built from the source on first use.
    async fn snapshot(self: &Arc<Self>) -> Result<(PathBuf, &'static str), String> {
        let mut tier = "snapshot";
        let dir = self
            .prepared
            .get_or_try_init(|| async {
                let (source, kind) = (self.spec.source.clone(), self.spec.kind);
                let (snaps, model) = (self.snapshots.clone(), self.spec.model.clone());
                let prepared = tokio::task::spawn_blocking(move || {
                    super::snapshots::prepare(&source, kind, &snaps, &model)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                if let Some(took) = prepared.built_in {
                    tier = "source";
                    self.events.snapshot_built(&self.spec.model, took);
                }
                Ok::<PathBuf, String>(prepared.dir)
            })
            .await?;
        Ok((dir.clone(), tier))
    }

    /// Gives up on a start: reports why, and backs off before the
    /// reconcile loop tries again.
    async fn not_started(self: &Arc<Self>, error: String) {
        self.start_failed(error);
        self.starting.fetch_sub(1, Ordering::AcqRel);
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.changed.notify_one();
    }

    /// A GPU for the next instance of a GPU model (`None` for a CPU
    /// model): its memory need from the snapshot at `dir` (or the config's
    /// `memory_limit`), promised on the GPU the placer chooses.
    async fn place(self: &Arc<Self>, dir: &std::path::Path) -> Result<Option<Lease>, String> {
        let request = self.spec.device.parse().unwrap_or(DeviceRequest::Cpu);
        if request == DeviceRequest::Cpu {
            return Ok(None);
        }
        let need = self
            .gpu_need
            .get_or_try_init(|| {
                let (dir, kind, limit) =
                    (dir.to_path_buf(), self.spec.kind, self.spec.memory_limit);
                let standby = self.standby.clone();
                async move {
                    let (need, weights) = tokio::task::spawn_blocking(move || {
                        let kind = kind.or_else(|| thaw_snapshot::detect_kind(&dir).ok());
                        let need = gpus::check::need(limit, kind, gpus::weights_bytes(&dir));
                        (need, weights_file(&dir))
                    })
                    .await
                    .map_err(|e| format!("sizing the snapshot: {e}"))?;
                    // Standby processes on its GPUs register its weights
                    // ahead, for the activations after this one.
                    if let Some(weights) = weights {
                        standby.preregister(request, weights);
                    }
                    Ok::<u64, String>(need)
                }
            })
            .await?;
        self.gpus
            .place(request, *need)
            .map(Some)
            .map_err(|e| format!("no GPU can take an instance now: {e}"))
    }

    async fn start_one(self: Arc<Self>) {
        if self.resume_one().await {
            self.starting.fetch_sub(1, Ordering::AcqRel);
            self.changed.notify_one();
            return;
        }
        let begun = Instant::now();
        let id = InstanceId(self.ids.fetch_add(1, Ordering::AcqRel));
        let socket = self
            .sockets
            .join(format!("{}-{}.sock", self.spec.model, id.0));
        let (dir, tier) = match self.snapshot().await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(model = %self.spec.model, "cannot prepare a snapshot: {e}");
                return self.not_started(e).await;
            }
        };
        let gpu = match self.place(&dir).await {
            Ok(gpu) => gpu,
            Err(e) => {
                tracing::warn!(model = %self.spec.model, "{e}");
                return self.not_started(e).await;
            }
        };
        let device = match &gpu {
            Some(lease) => self.gpus.worker_device(lease.gpu),
            None => self.spec.device.clone(),
        };
        let spec = WorkerSpec {
            source: dir,
            device,
            ..self.spec.clone()
        };
        let (result, started_from) = self.launch(id, &spec, &socket, tier, gpu.is_none()).await;
        match result {
            Ok(mut process) => {
                // The whole start as the gateway saw it: a snapshot built
                // or a template started on the way counts, not only the
                // fork (or exec) to ready.
                process.startup = begun.elapsed();
                tracing::info!(
                    model = %self.spec.model, instance = %id, pid = process.pid, tier = started_from,
                    gpu = gpu.as_ref().map(|l| l.gpu),
                    startup_ms = process.startup.as_secs_f64() * 1e3, "worker ready"
                );
                self.events
                    .started(&self.spec.model, started_from, process.startup);
                let phase = |name: &str, ms: &serde_json::Value| {
                    if let Some(ms) = ms.as_f64() {
                        let took = Duration::from_secs_f64(ms.max(0.0) / 1e3);
                        self.events.phase(&self.spec.model, name, took);
                    }
                };
                if started_from == "exec" || started_from == "standby" {
                    phase("worker_load", &process.ready["load_ms"]);
                } else {
                    phase("fork", &process.ready["fork_ms"]);
                    phase("child_init", &process.ready["load_ms"]);
                }
                // Listed before it is routed to, so a status read after
                // its first answer finds it.
                let socket = process.socket.to_string_lossy().into_owned();
                self.lock().insert(
                    id,
                    Instance {
                        process,
                        ready_at: Instant::now(),
                        draining: false,
                        started_from,
                        gpu,
                    },
                );
                self.admission.add_instance(id, socket);
                self.started_ok();
                self.starting.fetch_sub(1, Ordering::AcqRel);
                tokio::spawn(self.clone().watch_exit(id));
                tokio::spawn(self.clone().watch_health(id));
                self.changed.notify_one();
            }
            Err(e) => {
                tracing::error!(model = %self.spec.model, "worker failed to start: {e}");
                // The GPU's memory goes back before the next try.
                drop(gpu);
                self.not_started(e.to_string()).await;
            }
        }
    }

    /// Starts one worker for `spec` (a snapshot): forked from the template
    /// (started first if needed) when `forkable`; otherwise (a GPU
    /// instance) activated from a standby process on its device when one
    /// is ready; exec'd when neither can be had. Returns it with the tier
    /// it came from.
    async fn launch(
        self: &Arc<Self>,
        id: InstanceId,
        spec: &WorkerSpec,
        socket: &std::path::Path,
        tier: &'static str,
        forkable: bool,
    ) -> (Result<WorkerProcess, SpawnError>, &'static str) {
        if self.use_templates && forkable {
            match self.template(spec).await {
                // A fork that fails, even from a template that ran before
                // (it may have died an instant ago, its exit not seen yet),
                // does not fail the requests waiting for the worker: it is
                // started by exec instead. A template that cannot be
                // reached at all is replaced (its watcher restarts it).
                Ok((template, fresh)) => {
                    match template.fork(id.0, socket, self.start_timeout).await {
                        Ok(process) => return (Ok(process), if fresh { tier } else { "template" }),
                        Err(e) => {
                            tracing::warn!(
                                model = %self.spec.model, pid = template.pid,
                                "{e}: starting a worker by exec instead"
                            );
                            if matches!(e, SpawnError::TemplateGone { .. }) {
                                template.handle().kill();
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    model = %self.spec.model,
                    "no template ({e}): starting a worker by exec instead"
                ),
            }
        }
        if !forkable {
            // A GPU instance: a standby process on its GPU has the CUDA
            // context made already; the pool starts its replacement.
            if let Some(standby) = self.standby.take(&spec.device) {
                let pid = standby.pid;
                match standby.activate(spec, socket, self.start_timeout).await {
                    Ok(process) => return (Ok(process), "standby"),
                    Err(e) => tracing::warn!(
                        model = %self.spec.model, pid,
                        "a standby process failed to activate ({e}): starting a worker by exec instead"
                    ),
                }
            }
        }
        let process = process::spawn(&self.bin, spec, socket, self.start_timeout).await;
        (process, "exec")
    }

    /// A ready worker whose socket has no listener (a connection to it was
    /// refused): it died and its exit is not seen yet, or it lost its
    /// socket. Either way it takes no new request: it is counted as a
    /// crash, drained and stopped, and its replacement starts now rather
    /// than after its health checks fail.
    pub fn unreachable(self: &Arc<Self>, id: InstanceId) {
        let marked = self
            .lock()
            .get_mut(&id)
            .is_some_and(|i| !std::mem::replace(&mut i.draining, true));
        if marked {
            tracing::warn!(model = %self.spec.model, instance = %id, "no listener on its socket: replacing it");
            self.events.crashed(&self.spec.model);
            tokio::spawn(self.clone().drain_and_stop(id));
            self.changed.notify_one();
        }
    }

    /// Learns of a worker's exit: an unrequested one is a crash, counted
    /// and replaced by the next reconcile.
    async fn watch_exit(self: Arc<Self>, id: InstanceId) {
        let Some(handle) = self.lock().get(&id).map(|i| i.process.handle()) else {
            return;
        };
        let status = handle.exited().await;
        self.admission.remove_instance(id);
        let removed = self.lock().remove(&id);
        if let Some(instance) = removed {
            if !instance.draining {
                tracing::warn!(model = %self.spec.model, instance = %id, ?status, "worker died");
                self.events.crashed(&self.spec.model);
            }
        }
        self.changed.notify_one();
    }

    /// Probes the worker's liveness until it exits; kills it after
    /// the configured number of failed probes in a row, so that it is replaced.
    async fn watch_health(self: Arc<Self>, id: InstanceId) {
        let mut failures = 0;
        let (interval, limit) = *self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some((socket, handle, draining)) = self
                .lock()
                .get(&id)
                .map(|i| (i.process.socket.clone(), i.process.handle(), i.draining))
            else {
                return;
            };
            if draining || handle.has_exited() {
                return;
            }
            if super::health::live(&socket, interval).await {
                failures = 0;
                continue;
            }
            failures += 1;
            tracing::warn!(model = %self.spec.model, instance = %id, failures, "health check failed");
            if failures >= limit {
                tracing::error!(model = %self.spec.model, instance = %id, "worker unresponsive: killing it");
                handle.kill();
                return;
            }
        }
    }

    /// Whether a GPU instance leaving on a scale-down hibernates instead of
    /// stopping: the driver can (the inventory says so) and the model keeps
    /// a warm tier (`keep_template` above zero).
    fn hibernates(&self, instance: &Instance) -> bool {
        instance.gpu.is_some()
            && !self.keep_template().is_zero()
            && self
                .gpus
                .inventory()
                .is_some_and(|i| i.hibernation["supported"] == true)
    }

    /// A scale-down: drains `id`, then hibernates it where it can
    /// (`hibernates`), else stops it.
    async fn drain_and_retire(self: Arc<Self>, id: InstanceId) {
        let eligible = self.lock().get(&id).is_some_and(|i| self.hibernates(i));
        if !eligible {
            return self.drain_and_stop(id).await;
        }
        self.admission.remove_instance(id);
        self.wait_drained(id).await;
        // It stays in the map (draining) while the driver works, so that
        // the status shows it throughout.
        let Some(pid) = self.lock().get(&id).map(|i| i.process.pid) else {
            return;
        };
        match self.checkpoint("--hibernate", pid).await {
            Ok(report) => {
                tracing::info!(model = %self.spec.model, instance = %id, pid, %report, "worker hibernated");
                // Moved in one step under the map's lock (which the status
                // takes first too): never in neither list.
                let mut map = self.lock();
                if let Some(instance) = map.remove(&id) {
                    let Instance { process, gpu, .. } = instance;
                    let (gpu, need) = gpu.as_ref().map_or((0, 0), |l| (l.gpu, l.bytes));
                    self.hibernated_list().push(Hibernated {
                        id,
                        process,
                        gpu,
                        need,
                        since: Instant::now(),
                    });
                    // The lease went with `instance`: the GPU's memory is free.
                }
            }
            Err(e) => {
                tracing::warn!(model = %self.spec.model, instance = %id, pid, "cannot hibernate ({e}): stopping it");
                let handle = self.lock().get(&id).map(|i| i.process.handle());
                if let Some(handle) = handle {
                    handle.stop(self.grace).await;
                }
            }
        }
        self.changed.notify_one();
    }

    /// Resumes the most recently hibernated worker, if any: its memory
    /// promised on its GPU again, the driver's restore, then routed to.
    /// False when there is none, or it could not resume (it is killed).
    async fn resume_one(self: &Arc<Self>) -> bool {
        let Some(h) = self.hibernated_list().pop() else {
            return false;
        };
        let started = Instant::now();
        let lease = match self.gpus.place(DeviceRequest::Gpu(h.gpu), h.need) {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(model = %self.spec.model, instance = %h.id, "no room to resume on cuda:{}: {e}", h.gpu);
                h.process.handle().kill();
                return false;
            }
        };
        if let Err(e) = self.checkpoint("--resume", h.process.pid).await {
            tracing::warn!(model = %self.spec.model, instance = %h.id, "cannot resume ({e}): killing it");
            h.process.handle().kill();
            return false;
        }
        tracing::info!(model = %self.spec.model, instance = %h.id, pid = h.process.pid,
            resume_ms = started.elapsed().as_secs_f64() * 1e3, "worker resumed");
        self.events
            .started(&self.spec.model, "hibernated", started.elapsed());
        // Listed before it is routed to, so a status read after its first
        // answer finds it.
        let socket = h.process.socket.to_string_lossy().into_owned();
        self.lock().insert(
            h.id,
            Instance {
                process: h.process,
                ready_at: Instant::now(),
                draining: false,
                started_from: "hibernated",
                gpu: Some(lease),
            },
        );
        self.admission.add_instance(h.id, socket);
        self.started_ok();
        tokio::spawn(self.clone().watch_health(h.id));
        true
    }

    /// Runs `thaw-worker FLAG PID` (`--hibernate`, `--resume`): its JSON
    /// report, or why it failed.
    async fn checkpoint(&self, flag: &str, pid: u32) -> Result<String, String> {
        let run = tokio::process::Command::new(&self.bin)
            .arg(flag)
            .arg(pid.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(CHECKPOINT_TIMEOUT, run)
            .await
            .map_err(|_| format!("{flag} took longer than {CHECKPOINT_TIMEOUT:?}"))?
            .map_err(|e| format!("running {flag}: {e}"))?;
        let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let parsed: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
        match parsed["error"].as_str() {
            Some(e) => Err(e.to_string()),
            None if out.status.success() => Ok(report),
            None => Err(format!("{flag} exited with {}", out.status)),
        }
    }

    /// When the oldest hibernated worker is due to go (`keep_template`
    /// after it hibernated).
    fn hibernated_due(&self) -> Option<Instant> {
        let oldest = self.hibernated_list().iter().map(|h| h.since).min()?;
        Some(oldest + self.keep_template())
    }

    /// Stops the hibernated workers past `keep_template` (SIGKILL: a
    /// stopped or checkpointed process has nothing in flight to finish).
    fn expire_hibernated(&self) {
        let keep = self.keep_template();
        let mut list = self.hibernated_list();
        list.retain(|h| {
            let due = h.since.elapsed() >= keep;
            if due {
                tracing::info!(model = %self.spec.model, instance = %h.id, "hibernated worker expired");
                h.process.handle().kill();
            }
            !due
        });
    }

    /// Waits (up to the grace period) for `id`'s requests to finish.
    async fn wait_drained(&self, id: InstanceId) {
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline && self.in_flight(id) > 0 {
            // In-flight counts have no change notification of their own.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops routing to `id`, waits (up to the grace period) for its
    /// requests to finish, then stops the process.
    async fn drain_and_stop(self: Arc<Self>, id: InstanceId) {
        self.admission.remove_instance(id);
        self.wait_drained(id).await;
        let process = self.lock().get(&id).map(|i| i.process.handle());
        if let Some(handle) = process {
            handle.stop(self.grace).await;
        }
    }

    fn in_flight(&self, id: InstanceId) -> u32 {
        self.admission
            .stats()
            .instances
            .iter()
            .find(|s| s.id == id)
            .map_or(0, |s| s.in_flight)
    }

    async fn stop_all(self: &Arc<Self>) {
        for h in self.hibernated_list().drain(..) {
            h.process.handle().kill();
        }
        let ids: Vec<InstanceId> = {
            let mut map = self.lock();
            map.values_mut().for_each(|i| i.draining = true);
            map.keys().copied().collect()
        };
        let stops: Vec<_> = ids
            .into_iter()
            .map(|id| tokio::spawn(self.clone().drain_and_stop(id)))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        let template = self.template.lock().await.take();
        if let Some(template) = template {
            template.handle().stop(self.grace).await;
        }
    }
}

/// The weights file a GPU worker copies to its GPU from `dir` (a snapshot
/// or source): `model.safetensors`, else the one `.gguf` file.
fn weights_file(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        return Some(safetensors);
    }
    let mut ggufs = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file());
    let gguf = ggufs.next()?;
    ggufs.next().is_none().then_some(gguf)
}

#[cfg(test)]
mod tests {
    use super::weights_file;

    #[test]
    fn the_weights_file_is_the_safetensors_else_the_one_gguf() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(weights_file(dir.path()), None);
        std::fs::write(dir.path().join("a.gguf"), b"x").expect("written");
        assert_eq!(weights_file(dir.path()), Some(dir.path().join("a.gguf")));
        std::fs::write(dir.path().join("b.gguf"), b"x").expect("written");
        assert_eq!(
            weights_file(dir.path()),
            None,
            "two GGUFs: which is unknown"
        );
        std::fs::write(dir.path().join("model.safetensors"), b"x").expect("written");
        assert_eq!(
            weights_file(dir.path()),
            Some(dir.path().join("model.safetensors"))
        );
    }
}
