//! Worker processes: spawn `thaw-worker` on a unix socket, wait for its
//! `ready` message on stdout (never a polled file or a sleep), learn of its
//! exit at once (tokio reaps children on SIGCHLD; a worker forked by a
//! template is watched through a pidfd), and stop it with a grace period
//! (SIGTERM, drain, SIGKILL). A worker outlives no gateway: an exec'd worker
//! gets the gateway's pid and sets a parent-death signal itself, a forked one
//! watches the gateway's lifeline (see `template`), and both are killed when
//! their handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thaw_snapshot::zygote::Pidfd;
use thaw_snapshot::ModelKind;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
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
    /// The device: `cpu`, or the config's `cuda`/`cuda:N`, which the pool
    /// replaces with the GPU each instance is placed on.
    pub device: String,
    /// The per-instance memory budget (`memory_limit`): on a GPU, what
    /// placement reserves for each instance.
    pub memory_limit: Option<u64>,
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
    /// A template's control socket could not be reached: the template died
    /// (its exit not seen yet) or lost the socket.
    #[error("the template for {model} cannot be reached: {reason}")]
    TemplateGone {
        /// The model.
        model: String,
        /// The connection's error.
        reason: String,
    },
    /// A template refused or failed a fork.
    #[error("the template for {model} could not fork a worker: {reason}")]
    Fork {
        /// The model.
        model: String,
        /// What the template said.
        reason: String,
    },
}

/// A worker process that reported ready. Dropping it kills the process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    /// The unix socket it serves on.
    pub socket: PathBuf,
    /// Spawn to ready; for a pool's worker, the whole start (a snapshot
    /// built or a template started on the way included).
    pub startup: Duration,
    /// The worker's own load time, from its ready message (for a forked
    /// worker: fork to ready).
    pub load_ms: f64,
    /// Its ready message (timings of each phase).
    pub ready: serde_json::Value,
    pub(crate) handle: ProcessHandle,
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
            self.handle.kill();
        }
    }
}

/// Signals and awaits a worker process.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    pid: u32,
    /// Set for processes that are not this one's children: signals go
    /// through it, so they can never reach a recycled pid.
    pidfd: Option<Arc<Pidfd>>,
    exit: watch::Receiver<Option<String>>,
}

impl ProcessHandle {
    /// A handle to this process's child `pid`, whose exit is published on
    /// `exit` (by [`reap`]).
    pub(crate) fn child(pid: u32, exit: watch::Receiver<Option<String>>) -> Self {
        ProcessHandle {
            pid,
            pidfd: None,
            exit,
        }
    }

    /// Resolves when the process has exited, with how.
    pub async fn exited(&self) -> Option<String> {
        let mut rx = self.exit.clone();
        let status = rx.wait_for(Option::is_some).await.ok()?;
        status.clone()
    }

    /// Whether it has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// SIGKILL now.
    pub fn kill(&self) {
        self.send(Signal::SIGKILL);
    }

    fn send(&self, sig: Signal) {
        match &self.pidfd {
            Some(fd) => {
                if let Err(e) = fd.signal(sig) {
                    tracing::debug!(pid = self.pid, ?sig, "signal not delivered: {e}");
                }
            }
            None => signal(self.pid, sig),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        self.send(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            tracing::warn!(
                pid = self.pid,
                "process ignored SIGTERM for {grace:?}: killing it"
            );
            self.send(Signal::SIGKILL);
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

/// glibc's malloc asked for transparent huge pages (where the kernel leaves
/// them to madvise): a model's weights then sit in 2 MiB pages, so a fork
/// copies a few hundred page-table entries instead of tens of thousands
/// (MiniLM: fork 4.5 → 1.0 ms), and inference misses the TLB less. Added to
/// whatever tunables the gateway was given.
pub(crate) fn glibc_tunables() -> String {
    const HUGE_PAGES: &str = "glibc.malloc.hugetlb=1";
    match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() && !t.contains("glibc.malloc.hugetlb") => {
            format!("{t}:{HUGE_PAGES}")
        }
        Ok(t) if !t.is_empty() => t,
        _ => HUGE_PAGES.to_string(),
    }
}

/// The body limit of the workers the gateway starts: none of their own.
/// The gateway holds every body to `gateway.max_body_bytes` (declared, read
/// or streamed), so a reload that raises it applies to running workers too,
/// and a body it admits is never refused behind it.
pub(crate) fn unlimited_body() -> String {
    usize::MAX.to_string()
}

/// The arguments every worker and template gets.
pub(crate) fn command(bin: &Path, spec: &WorkerSpec) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--model")
        .arg(&spec.source)
        .arg("--name")
        .arg(&spec.model)
        .arg("--device")
        .arg(&spec.device)
        .arg("--max-body-bytes")
        .arg(unlimited_body())
        .env("THAW_PARENT_PID", std::process::id().to_string())
        .env("GLIBC_TUNABLES", glibc_tunables())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(kind) = spec.kind {
        cmd.arg("--kind").arg(kind.as_str());
    }
    cmd
}

/// A child process that printed the message it was waited for.
pub(crate) struct Launched {
    pub pid: u32,
    pub message: serde_json::Value,
    pub handle: ProcessHandle,
    pub startup: Duration,
}

/// Runs `cmd` and waits for the stdout message whose `event` is `event`;
/// kills it after `timeout`. Its exit is published on the handle.
pub(crate) async fn launch(
    mut cmd: Command,
    model: &str,
    event: &str,
    timeout: Duration,
) -> Result<Launched, SpawnError> {
    let start = Instant::now();
    let bin = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd
        .spawn()
        .map_err(|source| SpawnError::Exec { bin, source })?;
    let pid = child.id().unwrap_or_default();
    let Some(stdout) = child.stdout.take() else {
        return Err(SpawnError::Died {
            model: model.to_string(),
            status: "no stdout".into(),
        });
    };
    let mut lines = BufReader::new(stdout).lines();
    let waiting = wait_event(&mut lines, event);
    let exited = tokio::select! {
        r = tokio::time::timeout(timeout, waiting) => Ok(r),
        status = child.wait() => Err(status),
    };
    let ready = match exited {
        Ok(ready) => ready,
        Err(status) => {
            // It exited: the reason it printed may still be unread.
            let mut status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            if let Err(why) = wait_event(&mut lines, event).await {
                if !why.starts_with(CLOSED) {
                    status = format!("{status}: {why}");
                }
            }
            return Err(SpawnError::Died {
                model: model.to_string(),
                status,
            });
        }
    };
    let message = match ready {
        Ok(Ok(message)) => message,
        Ok(Err(why)) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(SpawnError::Died {
                model: model.to_string(),
                status: format!("{status}: {why}"),
            });
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(SpawnError::Timeout {
                model: model.to_string(),
                timeout,
            });
        }
    };
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(reap(child, lines, exit_tx));
    Ok(Launched {
        pid,
        message,
        startup: start.elapsed(),
        handle: ProcessHandle {
            pid,
            pidfd: None,
            exit: exit_rx,
        },
    })
}

/// Starts `spec` with `bin` listening on `socket`; returns once the worker
/// says it is ready, or fails (killing it) after `timeout`.
pub async fn spawn(
    bin: &Path,
    spec: &WorkerSpec,
    socket: &Path,
    timeout: Duration,
) -> Result<WorkerProcess, SpawnError> {
    let mut cmd = command(bin, spec);
    cmd.arg("--listen")
        .arg(format!("unix:{}", socket.display()));
    let launched = launch(cmd, &spec.model, "ready", timeout).await?;
    Ok(WorkerProcess {
        pid: launched.pid,
        socket: socket.to_path_buf(),
        startup: launched.startup,
        load_ms: launched.message["load_ms"].as_f64().unwrap_or_default(),
        ready: launched.message,
        handle: launched.handle,
    })
}

/// Adopts a process that is not this one's child (a worker forked by a
/// template) by its pid: its exit is learnt from a pidfd, and `lines` (its
/// report channel) are drained meanwhile.
pub(crate) fn adopt<R: AsyncRead + Unpin + Send + 'static>(
    pid: u32,
    lines: tokio::io::Lines<BufReader<R>>,
) -> std::io::Result<ProcessHandle> {
    let pidfd = Arc::new(Pidfd::open(pid)?);
    let (exit_tx, exit_rx) = watch::channel(None);
    let watched = pidfd.clone();
    tokio::spawn(async move {
        let mut lines = lines;
        let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
        let (exited, ()) = tokio::join!(watched.clone().exited(), drain);
        if let Err(e) = exited {
            tracing::error!(pid, "watching a worker's pidfd: {e}");
        }
        // Reaped here when this process adopted it (its template died);
        // its template (which ignores SIGCHLD) reaps it otherwise.
        let status = match watched.try_reap() {
            Some(status) => format!("{status:?}"),
            None => "exited".to_string(),
        };
        let _ = exit_tx.send(Some(status));
    });
    Ok(ProcessHandle {
        pid,
        pidfd: Some(pidfd),
        exit: exit_rx,
    })
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Reads messages until one whose `event` is `event`; an error if the
/// stream closed first.
pub(crate) async fn wait_event<R: AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    event: &str,
) -> Result<serde_json::Value, String> {
    wait_any(lines, &[event]).await
}

/// Like [`wait_event`], for the first of several events (whichever comes).
pub(crate) async fn wait_any<R: AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    events: &[&str],
) -> Result<serde_json::Value, String> {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if events.iter().any(|e| msg["event"] == *e) {
            return Ok(msg);
        }
        if msg["event"] == "error" {
            return Err(msg["message"].as_str().unwrap_or("error").to_string());
        }
    }
    Err(CLOSED.into())
}

/// Why [`wait_event`] found no event: the output ended without one.
const CLOSED: &str = "closed before it was ready";

/// Owns the child after ready: drains its stdout and publishes its exit.
pub(crate) async fn reap(mut child: Child, mut lines: Lines, exit: watch::Sender<Option<String>>) {
    let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let (status, ()) = tokio::join!(child.wait(), drain);
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => {
            tracing::error!("waiting for a child: {e}");
            e.to_string()
        }
    };
    let _ = exit.send(Some(status));
}
