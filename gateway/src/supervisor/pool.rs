//! One model's pool of workers, reconciled toward the autoscaler's decision.
//! Effects only: which count is wanted is the autoscaler's business; how a
//! worker starts and stops is `process`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::process::{self, WorkerProcess, WorkerSpec};
use crate::admission::{Admission, InstanceId};
use crate::autoscaler::Decision;

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
}

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

/// A worker as `/admin/status` shows it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// Its id in the admission.
    pub id: InstanceId,
    /// Its pid.
    pub pid: u32,
    /// `ready` or `draining`.
    pub state: &'static str,
    /// Spawn to ready, milliseconds.
    pub startup_ms: f64,
    /// Seconds since it became ready.
    pub age_s: f64,
}

struct Instance {
    process: WorkerProcess,
    ready_at: Instant,
    draining: bool,
}

/// One model's workers.
pub struct Pool {
    spec: WorkerSpec,
    admission: Admission,
    bin: PathBuf,
    sockets: PathBuf,
    ids: Arc<AtomicU64>,
    instances: Mutex<HashMap<InstanceId, Instance>>,
    starting: AtomicUsize,
    changed: Notify,
    snapshots: PathBuf,
    prepared: tokio::sync::OnceCell<PathBuf>,
    last_failure: Mutex<Option<String>>,
    events: Arc<dyn PoolEvents>,
    /// How long a worker may take to become ready.
    pub start_timeout: Duration,
    /// How long a stopping worker may drain before SIGKILL.
    pub grace: Duration,
    /// How often each worker's liveness is probed.
    pub health_interval: Duration,
    /// Consecutive failed probes after which a worker is killed.
    pub health_failures: u32,
}

impl Pool {
    /// A pool for `spec`, with ids from `ids` (shared by every pool, so
    /// ids are unique in the gateway).
    pub fn new(
        spec: WorkerSpec,
        admission: Admission,
        paths: PoolPaths,
        ids: Arc<AtomicU64>,
        events: Arc<dyn PoolEvents>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            spec,
            admission,
            bin: paths.worker_bin,
            sockets: paths.sockets,
            ids,
            instances: Mutex::new(HashMap::new()),
            starting: AtomicUsize::new(0),
            changed: Notify::new(),
            snapshots: paths.snapshots,
            prepared: tokio::sync::OnceCell::new(),
            last_failure: Mutex::new(None),
            events,
            start_timeout: Duration::from_secs(120),
            grace: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            health_failures: 3,
        })
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
                startup_ms: i.process.startup.as_secs_f64() * 1e3,
                age_s: now.duration_since(i.ready_at).as_secs_f64(),
            })
            .collect();
        list.sort_by_key(|i| i.id);
        list
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
            tokio::select! {
                r = decisions.changed() => if r.is_err() { break },
                () = self.changed.notified() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.stop_all().await;
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
                tokio::spawn(self.clone().drain_and_stop(id));
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

    async fn start_one(self: Arc<Self>) {
        let id = InstanceId(self.ids.fetch_add(1, Ordering::AcqRel));
        let socket = self
            .sockets
            .join(format!("{}-{}.sock", self.spec.model, id.0));
        let (spec, tier) = match self.snapshot().await {
            Ok((dir, tier)) => (
                WorkerSpec {
                    source: dir,
                    ..self.spec.clone()
                },
                tier,
            ),
            Err(e) => {
                tracing::error!(model = %self.spec.model, "cannot prepare a snapshot: {e}");
                self.start_failed(e);
                self.starting.fetch_sub(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.changed.notify_one();
                return;
            }
        };
        let result = process::spawn(&self.bin, &spec, &socket, self.start_timeout).await;
        match result {
            Ok(process) => {
                tracing::info!(
                    model = %self.spec.model, instance = %id, pid = process.pid,
                    startup_ms = process.startup.as_secs_f64() * 1e3, "worker ready"
                );
                self.events.started(&self.spec.model, tier, process.startup);
                self.admission
                    .add_instance(id, process.socket.to_string_lossy());
                self.lock().insert(
                    id,
                    Instance {
                        process,
                        ready_at: Instant::now(),
                        draining: false,
                    },
                );
                self.starting.fetch_sub(1, Ordering::AcqRel);
                tokio::spawn(self.clone().watch_exit(id));
                tokio::spawn(self.clone().watch_health(id));
            }
            Err(e) => {
                tracing::error!(model = %self.spec.model, "worker failed to start: {e}");
                self.start_failed(e.to_string());
                self.starting.fetch_sub(1, Ordering::AcqRel);
                // Back off before the reconcile loop tries again.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.changed.notify_one();
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
    /// `health_failures` failed probes in a row, so that it is replaced.
    async fn watch_health(self: Arc<Self>, id: InstanceId) {
        let mut failures = 0;
        let mut ticker = tokio::time::interval(self.health_interval);
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
            if super::health::live(&socket, self.health_interval).await {
                failures = 0;
                continue;
            }
            failures += 1;
            tracing::warn!(model = %self.spec.model, instance = %id, failures, "health check failed");
            if failures >= self.health_failures {
                tracing::error!(model = %self.spec.model, instance = %id, "worker unresponsive: killing it");
                handle.kill();
                return;
            }
        }
    }

    /// Stops routing to `id`, waits (up to the grace period) for its
    /// requests to finish, then stops the process.
    async fn drain_and_stop(self: Arc<Self>, id: InstanceId) {
        self.admission.remove_instance(id);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline && self.in_flight(id) > 0 {
            // In-flight counts have no change notification of their own.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    }
}
