//! Worker processes: spawn `thaw-worker` on a unix socket, wait for its
//! `ready` message on stdout (never a polled file or a sleep), learn of its
//! exit at once (tokio reaps children on SIGCHLD), and stop it with a grace
//! period (SIGTERM, drain, SIGKILL). A worker outlives no gateway: it gets
//! the gateway's pid and sets a parent-death signal itself, and is killed
//! when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thaw_snapshot::ModelKind;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// The model's name (what clients send).
    pub model: String,
    /// Its source directory.
    pub source: PathBuf,
    /// Its kind, when the config names it.
    pub kind: Option<ModelKind>,
    /// The device.
    pub device: String,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The binary could not be executed.
    #[error("cannot start {bin}: {source}")]
    Exec {
        /// The worker binary.
        bin: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It exited before reporting ready.
    #[error("worker for {model} exited before it was ready ({status})")]
    Died {
        /// The model.
        model: String,
        /// How it exited.
        status: String,
    },
    /// It did not report ready in time (it has been killed).
    #[error("worker for {model} was not ready within {timeout:?}")]
    Timeout {
        /// The model.
        model: String,
        /// The limit.
        timeout: Duration,
    },
}

/// A worker process that reported ready. Dropping it kills the process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    /// The unix socket it serves on.
    pub socket: PathBuf,
    /// Spawn to ready.
    pub startup: Duration,
    /// The worker's own load time, from its ready message.
    pub load_ms: f64,
    handle: ProcessHandle,
}

impl WorkerProcess {
    /// A handle to signal and await the process without owning it.
    pub fn handle(&self) -> ProcessHandle {
        self.handle.clone()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if !self.handle.has_exited() {
            signal(self.pid, Signal::SIGKILL);
        }
    }
}

/// Signals and awaits a worker process.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl ProcessHandle {
    /// Resolves when the process has exited, with how.
    pub async fn exited(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        let status = rx.wait_for(Option::is_some).await.ok()?;
        *status
    }

    /// Whether it has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// SIGKILL now.
    pub fn kill(&self) {
        signal(self.pid, Signal::SIGKILL);
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        signal(self.pid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            tracing::warn!(
                pid = self.pid,
                "worker ignored SIGTERM for {grace:?}: killing it"
            );
            signal(self.pid, Signal::SIGKILL);
            let _ = self.exited().await;
        }
    }
}

fn signal(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(e) = kill(Pid::from_raw(raw), sig) {
        tracing::debug!(pid, ?sig, "signal not delivered: {e}");
    }
}

/// Starts `spec` with `bin` listening on `socket`; returns once the worker
/// says it is ready, or fails (killing it) after `timeout`.
pub async fn spawn(
    bin: &Path,
    spec: &WorkerSpec,
    socket: &Path,
    timeout: Duration,
) -> Result<WorkerProcess, SpawnError> {
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.arg("--model")
        .arg(&spec.source)
        .arg("--name")
        .arg(&spec.model)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--device")
        .arg(&spec.device)
        .env("THAW_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(kind) = spec.kind {
        cmd.arg("--kind").arg(kind.as_str());
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        bin: bin.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    let Some(stdout) = child.stdout.take() else {
        return Err(SpawnError::Died {
            model: spec.model.clone(),
            status: "no stdout".into(),
        });
    };
    let mut lines = BufReader::new(stdout).lines();
    let (exit_tx, exit_rx) = watch::channel(None);
    let waiting = wait_ready(&mut lines);
    let ready = tokio::select! {
        r = tokio::time::timeout(timeout, waiting) => r,
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(SpawnError::Died { model: spec.model.clone(), status });
        }
    };
    let load_ms = match ready {
        Ok(Some(load_ms)) => load_ms,
        Ok(None) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(SpawnError::Died {
                model: spec.model.clone(),
                status,
            });
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(SpawnError::Timeout {
                model: spec.model.clone(),
                timeout,
            });
        }
    };
    tokio::spawn(reap(child, lines, exit_tx));
    Ok(WorkerProcess {
        pid,
        socket: socket.to_path_buf(),
        startup: start.elapsed(),
        load_ms,
        handle: ProcessHandle { pid, exit: exit_rx },
    })
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Reads messages until `ready`; `None` if stdout closed first.
async fn wait_ready(lines: &mut Lines) -> Option<f64> {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["event"] == "ready" {
            return Some(msg["load_ms"].as_f64().unwrap_or_default());
        }
    }
    None
}

/// Owns the child after ready: drains its stdout and publishes its exit.
async fn reap(mut child: Child, mut lines: Lines, exit: watch::Sender<Option<ExitStatus>>) {
    let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let (status, ()) = tokio::join!(child.wait(), drain);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("waiting for a worker: {e}");
            return;
        }
    };
    let _ = exit.send(Some(status));
}
