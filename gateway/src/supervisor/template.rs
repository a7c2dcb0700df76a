//! Templates: one `thaw-worker --template` per model, holding the model
//! built and warmed from its snapshot, and forking a worker on request (see
//! `thaw_snapshot::zygote`). A fork is one connection to the template's
//! control socket: the request goes in, and the child reports on the same
//! connection (its ready message with the timings of each phase), then keeps
//! it open for its lifetime.
//!
//! Lifeline: every template's stdin is the read end of one pipe whose write
//! end only this process holds (close-on-exec, so no other child inherits
//! it). Templates and their forked workers stop when it reads end-of-file,
//! that is when the gateway is gone, however it went; a forked worker's
//! parent is its template, so a parent-death signal would tie it to the
//! template instead.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use thaw_snapshot::zygote::Request;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::process::{self, ProcessHandle, SpawnError, WorkerProcess, WorkerSpec};

/// The read end of the gateway's lifeline (the write end is held, never
/// closed, until this process exits).
fn lifeline() -> std::io::Result<OwnedFd> {
    static LIFELINE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    if LIFELINE.get().is_none() {
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let _ = LIFELINE.set(pipe);
    }
    match LIFELINE.get() {
        Some((read, _write)) => read.try_clone(),
        None => Err(std::io::Error::other("no lifeline")),
    }
}

/// A running template.
#[derive(Debug)]
pub struct TemplateProcess {
    /// Its pid.
    pub pid: u32,
    /// Its control socket.
    pub control: PathBuf,
    /// Spawn to ready.
    pub startup: Duration,
    /// Opening the snapshot, as the template measured it.
    pub open: Duration,
    /// Building the model.
    pub build: Duration,
    /// Running the snapshot's warm-up inputs.
    pub warm_up: Duration,
    /// When it became ready.
    pub ready_at: Instant,
    model: String,
    handle: ProcessHandle,
}

fn millis(value: &serde_json::Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().unwrap_or_default().max(0.0) / 1e3)
}

/// Starts a template for `spec` (whose source is a snapshot) with its
/// control socket at `control`; returns once it is ready to fork.
pub async fn start(
    bin: &Path,
    spec: &WorkerSpec,
    control: &Path,
    timeout: Duration,
) -> Result<TemplateProcess, SpawnError> {
    let lifeline = lifeline().map_err(|source| SpawnError::Exec {
        bin: bin.display().to_string(),
        source,
    })?;
    // Workers whose template dies are adopted here (and reaped through
    // their pidfds), not by init.
    if let Err(e) = thaw_snapshot::zygote::become_subreaper() {
        tracing::warn!("cannot become a subreaper: {e}");
    }
    let mut cmd = process::command(bin, spec);
    cmd.arg("--template")
        .arg(format!("unix:{}", control.display()))
        .arg("--lifeline")
        .stdin(std::process::Stdio::from(lifeline));
    let launched = process::launch(cmd, &spec.model, "template_ready", timeout).await?;
    Ok(TemplateProcess {
        pid: launched.pid,
        control: control.to_path_buf(),
        startup: launched.startup,
        open: millis(&launched.message["open_ms"]),
        build: millis(&launched.message["build_ms"]),
        warm_up: millis(&launched.message["warmup_ms"]),
        ready_at: Instant::now(),
        model: spec.model.clone(),
        handle: launched.handle,
    })
}

/// How long a template may take to answer a fork request with the child's
/// pid (it forks at once; the child's start to ready has the start's own
/// timeout).
const FORK_ANSWER: Duration = Duration::from_secs(5);

impl TemplateProcess {
    /// A handle to await or stop the template.
    pub fn handle(&self) -> ProcessHandle {
        self.handle.clone()
    }

    /// Whether it is still running.
    pub fn alive(&self) -> bool {
        !self.handle.has_exited()
    }

    /// Forks a worker listening on `socket`; returns once it is ready.
    pub async fn fork(
        &self,
        id: u64,
        socket: &Path,
        timeout: Duration,
    ) -> Result<WorkerProcess, SpawnError> {
        let start = Instant::now();
        let fail = |reason: String| SpawnError::Fork {
            model: self.model.clone(),
            reason,
        };
        let request = Request::Fork {
            id,
            socket: socket.to_path_buf(),
        };
        let mut line = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
        line.push('\n');
        let gone = |e: std::io::Error| SpawnError::TemplateGone {
            model: self.model.clone(),
            reason: format!("control socket {}: {e}", self.control.display()),
        };
        let mut conn = UnixStream::connect(&self.control).await.map_err(gone)?;
        conn.write_all(line.as_bytes()).await.map_err(gone)?;
        let mut lines = BufReader::new(conn).lines();
        // A template forks at once (it does nothing else): one that does
        // not answer is hung (stopped, say), and is replaced. The template's
        // `forked` and the child's `ready` share the connection, and the
        // child may be quicker.
        let first = process::wait_any(&mut lines, &["forked", "ready"]);
        let (child, ready) = match tokio::time::timeout(FORK_ANSWER, first).await {
            Ok(Ok(msg)) => {
                let pid = msg["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                (pid, (msg["event"] == "ready").then_some(msg))
            }
            Ok(Err(reason)) => return Err(fail(reason)),
            Err(_) => {
                return Err(SpawnError::TemplateGone {
                    model: self.model.clone(),
                    reason: format!("no answer to a fork request within {FORK_ANSWER:?}"),
                })
            }
        };
        let waited = async {
            match ready {
                Some(ready) => Ok(ready),
                None => process::wait_event(&mut lines, "ready").await,
            }
        };
        let ready = match tokio::time::timeout(timeout, waited).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(reason)) => return Err(fail(reason)),
            Err(_) => {
                // Not left to serve nobody: nothing would route to it.
                if let Some(pid) = child {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(SpawnError::Timeout {
                    model: self.model.clone(),
                    timeout,
                });
            }
        };
        let pid = ready["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| fail(format!("a ready message without a pid: {ready}")))?;
        let handle = process::adopt(pid, lines).map_err(|e| SpawnError::Died {
            model: self.model.clone(),
            status: format!("gone right after ready ({e})"),
        })?;
        Ok(WorkerProcess {
            pid,
            socket: socket.to_path_buf(),
            startup: start.elapsed(),
            load_ms: ready["load_ms"].as_f64().unwrap_or_default(),
            ready,
            handle,
        })
    }
}

impl Drop for TemplateProcess {
    fn drop(&mut self) {
        if self.alive() {
            self.handle.kill();
        }
    }
}
