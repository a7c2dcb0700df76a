//! Standby processes: per device, a few `thaw-worker --standby` processes
//! started ahead of demand, each with its device made ready (on a GPU, its
//! CUDA context created, which does not survive `fork`, so GPU models have
//! no template tier). A scale-up on that device takes one and activates it
//! with the model's snapshot (one JSON line on its stdin, which then stays
//! its lifeline), and the pool starts a replacement in the background.
//!
//! Each process also registers ahead, with its GPU's driver, the snapshot
//! weights of the GPU models that may be activated on its device (passed
//! as `--preregister` at its start, or as a line on its stdin when a
//! snapshot is prepared later), so that the model it is activated with
//! uploads at the host-to-device ceiling ([`StandbyPool::preregister`]).
//!
//! What the pool should start is a pure function of its target and what it
//! holds ([`to_start`]); the processes themselves are [`StandbyProcess`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{watch, Notify};

use super::process::{self, ProcessHandle, SpawnError, WorkerProcess, WorkerSpec};
use crate::gpus::{Gpus, Lease};
use crate::placement::{DeviceRequest, CUDA_CONTEXT_BYTES};

/// How many standby processes to start for a device that wants `target`,
/// holds `ready` and is already starting `starting`.
pub fn to_start(target: usize, ready: usize, starting: usize) -> usize {
    target.saturating_sub(ready + starting)
}

/// A standby process that announced itself: its device is ready and it
/// waits for an activation.
#[derive(Debug)]
pub struct StandbyProcess {
    /// Its pid.
    pub pid: u32,
    /// The device it made ready.
    pub device: String,
    /// Spawn to its `standby` message.
    pub startup: Duration,
    /// The process's own time to make the device ready.
    pub context_ms: f64,
    ready_at: Instant,
    /// Its context's memory, promised on its GPU while it waits (dropped
    /// when activated: the instance's own lease covers the context then).
    lease: Option<Lease>,
    /// The weights files it was asked to register ahead.
    preregistered: Vec<PathBuf>,
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl StandbyProcess {
    /// Starts `bin --standby` on `device`, registering `preregister` ahead,
    /// and waits for its `standby` message; kills it after `timeout`.
    pub async fn start(
        bin: &Path,
        device: &str,
        preregister: &[PathBuf],
        timeout: Duration,
    ) -> Result<Self, SpawnError> {
        let what = format!("standby process on {device}");
        let start = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.args(["--standby", "--lifeline", "--device", device])
            .arg("--max-body-bytes")
            .arg(process::unlimited_body());
        for file in preregister {
            cmd.arg("--preregister").arg(file);
        }
        cmd.env("THAW_PARENT_PID", std::process::id().to_string())
            .env("GLIBC_TUNABLES", process::glibc_tunables())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            bin: bin.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SpawnError::Died {
                model: what,
                status: "no stdin or stdout".into(),
            });
        };
        let mut lines = BufReader::new(stdout).lines();
        let waiting = process::wait_event(&mut lines, "standby");
        let message = tokio::select! {
            m = tokio::time::timeout(timeout, waiting) => m,
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(SpawnError::Died { model: what, status });
            }
        };
        let message = match message {
            Ok(Ok(message)) => message,
            Ok(Err(reason)) => {
                let _ = child.kill().await;
                return Err(SpawnError::Died {
                    model: what,
                    status: reason,
                });
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(SpawnError::Timeout {
                    model: what,
                    timeout,
                });
            }
        };
        Ok(StandbyProcess {
            pid,
            device: device.to_string(),
            startup: start.elapsed(),
            context_ms: message["context_ms"].as_f64().unwrap_or_default(),
            ready_at: Instant::now(),
            lease: None,
            preregistered: preregister.to_vec(),
            child,
            stdin,
            lines,
        })
    }

    /// Whether it is still waiting (it has not exited).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How long it has waited.
    pub fn idle(&self) -> Duration {
        self.ready_at.elapsed()
    }

    /// Asks it to register the files of `wanted` it was not given yet (one
    /// `{"preregister": FILE}` line each; it answers on stdout, read with
    /// the rest at activation). Each line is one write of under `PIPE_BUF`
    /// bytes to a pipe the process drains while it waits: whole, at once,
    /// so this runs under the pool's lock.
    fn preregister(&mut self, wanted: &[PathBuf]) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        for file in wanted {
            if self.preregistered.contains(file) {
                continue;
            }
            let line = format!("{}\n", json!({ "preregister": file }));
            if line.len() > 4096 {
                return Err(std::io::Error::other(format!(
                    "{}: the path is too long for one line",
                    file.display()
                )));
            }
            let written = nix::unistd::write(self.stdin.as_fd(), line.as_bytes())?;
            if written != line.len() {
                return Err(std::io::Error::other("a short write on the standby pipe"));
            }
            self.preregistered.push(file.clone());
        }
        Ok(())
    }

    /// Hands it `spec`'s model (a snapshot or source directory) to serve on
    /// `socket`; returns the worker once it is ready, or fails (killing it)
    /// after `timeout`.
    pub async fn activate(
        mut self,
        spec: &WorkerSpec,
        socket: &Path,
        timeout: Duration,
    ) -> Result<WorkerProcess, SpawnError> {
        let start = Instant::now();
        let activation = json!({
            "model": spec.source,
            "name": spec.model,
            "kind": spec.kind.map(|k| k.as_str()),
            "listen": format!("unix:{}", socket.display()),
        });
        let died = |status: String| SpawnError::Died {
            model: spec.model.clone(),
            status,
        };
        let line = format!("{activation}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(died(format!("the standby process took no activation: {e}")));
        }
        if let Err(e) = self.stdin.flush().await {
            return Err(died(format!("the standby process took no activation: {e}")));
        }
        let waiting = process::wait_event(&mut self.lines, "ready");
        let ready = tokio::select! {
            r = tokio::time::timeout(timeout, waiting) => r,
            status = self.child.wait() => {
                return Err(died(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())));
            }
        };
        let message = match ready {
            Ok(Ok(message)) => message,
            Ok(Err(reason)) => {
                let _ = self.child.kill().await;
                return Err(died(reason));
            }
            Err(_) => {
                let _ = self.child.kill().await;
                return Err(SpawnError::Timeout {
                    model: spec.model.clone(),
                    timeout,
                });
            }
        };
        let StandbyProcess {
            pid,
            child,
            stdin,
            lines,
            lease,
            ..
        } = self;
        // The instance's own lease covers the context from here on.
        drop(lease);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            // The write end of its lifeline lives as long as it does.
            let _lifeline = stdin;
            process::reap(child, lines, exit_tx).await;
        });
        Ok(WorkerProcess {
            pid,
            socket: socket.to_path_buf(),
            startup: start.elapsed(),
            load_ms: message["load_ms"].as_f64().unwrap_or_default(),
            ready: message,
            handle: ProcessHandle::child(pid, exit_rx),
        })
    }
}

/// The standby processes of every device, `per_device` each.
#[derive(Debug)]
pub struct StandbyPool {
    bin: PathBuf,
    per_device: AtomicUsize,
    timeout: Duration,
    devices: Mutex<HashMap<String, Slots>>,
    /// Weights files to register ahead, and the GPUs whose standby
    /// processes register each.
    preregister: Mutex<Vec<(DeviceRequest, PathBuf)>>,
    /// Whether to register ahead at all (`gateway.gpu_preregister`).
    preregistering: std::sync::atomic::AtomicBool,
    /// Notified whenever a start finishes, well or not.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Slots {
    ready: Vec<StandbyProcess>,
    starting: usize,
    /// The GPU the device is, when filled through `fill_gpu`: each process
    /// started for it holds a lease on its context's memory there.
    gpu: Option<(Arc<Gpus>, u32)>,
    /// The last start's failure, so a device that cannot start one is not
    /// retried in a tight loop (cleared by a success).
    failed_at: Option<Instant>,
}

/// How long a device whose standby process failed to start waits before
/// the pool tries again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

impl StandbyPool {
    /// A pool that keeps `per_device` standby processes of `bin` on each
    /// device it is asked to fill.
    pub fn new(bin: PathBuf, per_device: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(StandbyPool {
            bin,
            per_device: AtomicUsize::new(per_device),
            timeout,
            devices: Mutex::new(HashMap::new()),
            preregister: Mutex::new(Vec::new()),
            preregistering: std::sync::atomic::AtomicBool::new(true),
            changed: Notify::new(),
        })
    }

    /// Whether standby processes register snapshots ahead from now on (a
    /// reload): processes waiting keep what they registered until they are
    /// used or replaced.
    pub fn set_preregistering(&self, on: bool) {
        self.preregistering.store(on, Ordering::Relaxed);
    }

    /// The files standby processes for GPU `index` register ahead (none
    /// for a device that is no GPU of the inventory, or when registering
    /// ahead is off).
    fn files_for(&self, index: Option<u32>) -> Vec<PathBuf> {
        if !self.preregistering.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.preregister
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(request, _)| match (request, index) {
                (DeviceRequest::AnyGpu, Some(_)) => true,
                (DeviceRequest::Gpu(n), Some(i)) => *n == i,
                _ => false,
            })
            .map(|(_, file)| file.clone())
            .collect()
    }

    /// Has the standby processes of the GPUs `request` may land on register
    /// `file` (a GPU model's snapshot weights, once prepared) ahead: those
    /// started from now on at their start, those waiting now through a line
    /// on their stdin. Each file is asked for once.
    pub fn preregister(self: &Arc<Self>, request: DeviceRequest, file: PathBuf) {
        if request == DeviceRequest::Cpu {
            return;
        }
        {
            let mut files = self
                .preregister
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if files.iter().any(|(r, f)| *r == request && *f == file) {
                return;
            }
            files.push((request, file));
        }
        let mut short = Vec::new();
        {
            let mut devices = self.lock();
            for (device, slots) in devices.iter_mut() {
                let wanted = self.files_for(slots.gpu.as_ref().map(|(_, i)| *i));
                if wanted.is_empty() {
                    continue;
                }
                let before = slots.ready.len();
                slots
                    .ready
                    .retain_mut(|process| match process.preregister(&wanted) {
                        Ok(()) => true,
                        Err(e) => {
                            // Dropped (killed); replaced below.
                            tracing::warn!(
                                device,
                                pid = process.pid,
                                "a standby process took no file to register: {e}"
                            );
                            false
                        }
                    });
                if slots.ready.len() < before {
                    short.push(device.clone());
                }
            }
        }
        for device in short {
            self.fill(&device);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slots>> {
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A standby process on `device`, if one is ready; the pool refills in
    /// the background.
    pub fn take(self: &Arc<Self>, device: &str) -> Option<StandbyProcess> {
        let taken = {
            let mut devices = self.lock();
            let slots = devices.entry(device.to_string()).or_default();
            let mut taken = None;
            while let Some(mut candidate) = slots.ready.pop() {
                if candidate.is_alive() {
                    taken = Some(candidate);
                    break;
                }
                tracing::warn!(
                    device,
                    pid = candidate.pid,
                    "a standby process died while waiting"
                );
            }
            taken
        };
        self.fill(device);
        taken
    }

    /// Keeps `n` per device from now on (a reload): devices with more stop
    /// their surplus, devices with fewer start what they lack.
    pub fn set_per_device(self: &Arc<Self>, n: usize) {
        self.per_device.store(n, Ordering::Relaxed);
        let devices: Vec<String> = {
            let mut all = self.lock();
            for slots in all.values_mut() {
                // Dropping a process kills it (it never served anything).
                slots.ready.truncate(n);
            }
            all.keys().cloned().collect()
        };
        for device in devices {
            self.fill(&device);
        }
    }

    /// `/admin/status`'s view: per device, the standby processes ready
    /// (pid, context time, idle seconds) and starting, and the target.
    pub fn status(&self) -> serde_json::Value {
        let devices = self.lock();
        let mut out = serde_json::Map::new();
        for (device, slots) in devices.iter() {
            let ready: Vec<_> = slots
                .ready
                .iter()
                .map(|p| json!({"pid": p.pid, "context_ms": p.context_ms, "idle_s": p.idle().as_secs_f64(),
                                "preregistered": p.preregistered}))
                .collect();
            out.insert(
                device.clone(),
                json!({"ready": ready, "starting": slots.starting, "failing": slots.failed_at.is_some()}),
            );
        }
        json!({"per_device": self.per_device.load(Ordering::Relaxed), "devices": out})
    }

    /// Standby processes ready and starting on `device`.
    pub fn counts(&self, device: &str) -> (usize, usize) {
        self.lock()
            .get(device)
            .map_or((0, 0), |s| (s.ready.len(), s.starting))
    }

    /// Resolves once `device` has `n` standby processes ready, or with
    /// false when none is starting and fewer are ready (a start failed).
    pub async fn wait_ready(&self, device: &str, n: usize) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (ready, starting) = self.counts(device);
            if ready >= n {
                return true;
            }
            if starting == 0 {
                return false;
            }
            changed.await;
        }
    }

    /// Starts what GPU `index` of `gpus` lacks, each new process promised
    /// its context's memory there first (none starts on a GPU without room
    /// for it); refills of its device (after a `take`) do the same.
    pub fn fill_gpu(self: &Arc<Self>, gpus: &Arc<Gpus>, index: u32) {
        let device = gpus.worker_device(index);
        self.lock().entry(device.clone()).or_default().gpu = Some((gpus.clone(), index));
        self.fill(&device);
    }

    /// Starts what `device` lacks, in the background.
    pub fn fill(self: &Arc<Self>, device: &str) {
        let (n, gpu) = {
            let mut devices = self.lock();
            let slots = devices.entry(device.to_string()).or_default();
            if slots
                .failed_at
                .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
            {
                return;
            }
            let target = self.per_device.load(Ordering::Relaxed);
            let n = to_start(target, slots.ready.len(), slots.starting);
            slots.starting += n;
            (n, slots.gpu.clone())
        };
        let mut leases = Vec::with_capacity(n);
        for _ in 0..n {
            let Some((gpus, index)) = &gpu else {
                leases.push(None);
                continue;
            };
            match gpus.place(DeviceRequest::Gpu(*index), CUDA_CONTEXT_BYTES) {
                Ok(lease) => leases.push(Some(lease)),
                Err(e) => {
                    tracing::warn!(device, "no room for a standby process: {e}");
                    break;
                }
            }
        }
        if leases.len() < n {
            let mut devices = self.lock();
            let slots = devices.entry(device.to_string()).or_default();
            slots.starting -= n - leases.len();
        }
        let index = gpu.as_ref().map(|(_, i)| *i);
        for lease in leases {
            let pool = self.clone();
            let device = device.to_string();
            tokio::spawn(async move {
                let files = pool.files_for(index);
                let started = StandbyProcess::start(&pool.bin, &device, &files, pool.timeout)
                    .await
                    .map(|p| StandbyProcess { lease, ..p })
                    .and_then(|mut p| {
                        // Files asked for while it started.
                        p.preregister(&pool.files_for(index))
                            .map(|()| p)
                            .map_err(|e| SpawnError::Died {
                                model: format!("standby process on {device}"),
                                status: format!("it took no file to register: {e}"),
                            })
                    });
                let mut devices = pool.lock();
                let slots = devices.entry(device.clone()).or_default();
                slots.starting -= 1;
                match started {
                    Ok(process) => {
                        tracing::info!(
                            device,
                            pid = process.pid,
                            context_ms = process.context_ms,
                            "standby process ready"
                        );
                        slots.failed_at = None;
                        slots.ready.push(process);
                    }
                    Err(e) => {
                        tracing::error!(device, "a standby process failed to start: {e}");
                        slots.failed_at = Some(Instant::now());
                    }
                }
                drop(devices);
                pool.changed.notify_waiters();
            });
        }
        if n > 0 {
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_of_zero_starts_nothing() {
        let pool = StandbyPool::new(PathBuf::from("/nonexistent"), 0, Duration::from_secs(1));
        pool.fill("cuda:0");
        assert_eq!(pool.counts("cuda:0"), (0, 0));
        assert!(pool.take("cuda:0").is_none());
        assert!(!pool.wait_ready("cuda:0", 1).await);
    }

    #[test]
    fn the_pool_starts_what_it_lacks() {
        assert_eq!(to_start(2, 0, 0), 2);
        assert_eq!(to_start(2, 1, 0), 1);
        assert_eq!(to_start(2, 1, 1), 0);
        assert_eq!(to_start(2, 3, 0), 0, "never negative");
        assert_eq!(to_start(0, 0, 0), 0, "a pool of zero starts nothing");
    }
}
