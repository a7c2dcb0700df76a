//! How `thaw serve` stops: SIGTERM and SIGINT drain (stop accepting, let
//! the requests in flight and queued finish within the grace period) and
//! then exit; SIGQUIT hands the listening sockets to a new process started
//! with `thaw serve --upgrade` and then drains the same way. pingora's own
//! handling stops accepting and waits a fixed time; this waits for the
//! connections instead, and only then lets pingora shut its runtimes down.
//! A second SIGTERM or SIGINT during the drain stops waiting.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::announce;
use super::listeners::{SharedFds, Tracker};
use crate::models::Models;
use crate::reload::Live;

/// The gateway's answer to stop signals (pingora's `RunArgs`).
pub struct Signals {
    /// Turns true to stop accepting on both listeners.
    pub drain: watch::Sender<bool>,
    /// The public listener's connections.
    pub tracker: Arc<Tracker>,
    /// pingora's listening sockets, for an upgrade.
    pub fds: SharedFds,
    /// Where a new process waits for them (`ServerConf::upgrade_sock`).
    pub upgrade_sock: String,
    /// The grace period, as reloaded.
    pub live: Arc<Live>,
    /// The models, whose queues are answered when the grace period ends.
    pub models: Arc<Models>,
}

/// How long the requests still queued when the grace period ends have for
/// their 503s to be written.
const LAST_ANSWERS: std::time::Duration = std::time::Duration::from_secs(1);

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Terminate(&'static str),
    Upgrade,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut signals = match Listen::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot handle stop signals: {e}");
                return std::future::pending().await;
            }
        };
        loop {
            match signals.next().await {
                Stop::Terminate(name) => {
                    tracing::info!("{name}: draining, then stopping");
                    break;
                }
                Stop::Upgrade => match self.hand_over().await {
                    Ok(()) => break,
                    // No new process took them: keep serving.
                    Err(e) => tracing::error!("SIGQUIT: the upgrade failed, still serving: {e}"),
                },
            }
        }
        let again = async {
            loop {
                if let Stop::Terminate(name) = signals.next().await {
                    return name;
                }
            }
        };
        self.drain(again).await;
        ShutdownSignal::GracefulTerminate
    }
}

impl Signals {
    /// Sends the listening sockets to the new process.
    async fn hand_over(&self) -> Result<(), String> {
        let fds = self
            .fds
            .get()
            .cloned()
            .ok_or("the listeners have not started")?;
        let path = self.upgrade_sock.clone();
        tracing::info!(socket = %path, "SIGQUIT: handing the listening sockets over");
        // Blocking, with pingora's retries while the new process gets ready.
        let sent = tokio::task::spawn_blocking(move || fds.lock().send_to_sock(path.as_str()))
            .await
            .map_err(|e| e.to_string())?;
        sent.map_err(|e| format!("sending to {}: {e}", self.upgrade_sock))?;
        announce(json!({"event": "upgraded"}));
        Ok(())
    }

    /// Stops accepting and waits for every open connection to finish, up
    /// to the grace period or until `again` (a second stop signal) comes.
    async fn drain(&self, again: impl std::future::Future<Output = &'static str>) {
        let grace = self.live.shutdown_grace();
        announce(json!({"event": "draining", "connections": self.tracker.open()}));
        self.drain.send_replace(true);
        let drained = tokio::select! {
            drained = self.tracker.drained_within(grace) => drained,
            name = again => {
                tracing::warn!("{name} again: not waiting for the requests left");
                false
            }
        };
        if drained {
            return;
        }
        // Requests still waiting for a slot will not get one: each is
        // answered 503 with Retry-After (another instance of the service
        // can take it) instead of a closed connection.
        let mut queued = 0;
        for model in self.models.all() {
            queued += model.admission.stats().queue_depth;
            model.admission.close();
        }
        tracing::warn!(
            open = self.tracker.open(),
            queued,
            "stopping before the queues emptied: queued requests are refused"
        );
        if !self.tracker.drained_within(LAST_ANSWERS).await {
            tracing::warn!(
                open = self.tracker.open(),
                "connections still open after the grace period: closing them"
            );
        }
    }
}

/// The stop signals, registered together.
struct Listen {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Listen {
    fn new() -> std::io::Result<Self> {
        Ok(Listen {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Terminate("SIGTERM"),
            _ = self.int.recv() => Stop::Terminate("SIGINT"),
            _ = self.quit.recv() => Stop::Upgrade,
        }
    }
}
