//! The gateway's listening sockets and what wraps pingora's services on
//! them: a socket is bound here before pingora runs (or, in an upgrade,
//! inherited from the old process), handed to pingora through its table of
//! listening sockets, and stops accepting when the gateway starts draining
//! (before pingora's own shutdown, so that requests finish first).
//! Connections are counted, so that a drain knows when they are done.

use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{Fds, ListenFds, RuntimeOpts, ShutdownWatch};
use pingora::services::listening::Service as Listening;
use pingora::services::Service;
use tokio::sync::{watch, Notify};

/// Binds `addr` now and keeps the socket for pingora: with port 0 the
/// kernel picks a free port, and it stays this process's from here on.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    // pingora adopts the socket into tokio, which needs it non-blocking.
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listener)
}

/// Where a listener's socket comes from.
pub enum Socket {
    /// Bound by this process (`bind`).
    Bound(TcpListener),
    /// Handed over by the old process in a graceful upgrade, filed in
    /// pingora's table under this address.
    Inherited(String),
}

/// pingora's table of listening sockets, once a service has seen it: a
/// graceful upgrade sends it to the new process.
pub type SharedFds = Arc<OnceLock<ListenFds>>;

/// A pingora listening service served on a socket bound beforehand (or
/// inherited), which stops accepting when `drain` turns true.
///
/// pingora binds an endpoint itself unless its table of inherited listening
/// sockets (`ListenFds`, filled by a graceful upgrade) already holds one
/// under the endpoint's address; the table reaches every service as it
/// starts. So this files its socket there under the bound address just
/// before the service builds its endpoints, and pingora adopts the socket
/// (connections already queued on it included) instead of binding again.
pub struct Prebound<A> {
    service: Listening<A>,
    address: String,
    listener: Option<TcpListener>,
    drain: watch::Receiver<bool>,
    table: SharedFds,
    tracker: Option<Arc<Tracker>>,
}

impl<A> Prebound<A> {
    /// `service`, served on `socket` and nothing else.
    pub fn new(
        mut service: Listening<A>,
        socket: Socket,
        drain: watch::Receiver<bool>,
        table: SharedFds,
    ) -> std::io::Result<Self> {
        let (address, listener) = match socket {
            Socket::Bound(listener) => (listener.local_addr()?.to_string(), Some(listener)),
            Socket::Inherited(address) => (address, None),
        };
        service.add_tcp(&address);
        Ok(Prebound {
            service,
            address,
            listener,
            drain,
            table,
            tracker: None,
        })
    }

    /// Tells `tracker` when this service has stopped accepting.
    pub fn tracked_by(mut self, tracker: Arc<Tracker>) -> Self {
        self.tracker = Some(tracker);
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for Prebound<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // pingora passes its own table on unix; a fresh one works alike.
        let fds = fds.unwrap_or_else(|| Arc::new(Fds::new().into()));
        let _ = self.table.set(fds.clone());
        match self.listener.take() {
            // Ownership moves to the endpoint pingora builds from the table.
            Some(listener) => fds.lock().add(self.address.clone(), listener.into_raw_fd()),
            None if fds.lock().get(&self.address).is_none() => tracing::error!(
                address = %self.address,
                "the old process did not hand this socket over: binding it anew"
            ),
            None => {}
        }
        let stop = crate::stop::either(shutdown, self.drain.clone());
        Service::start_service(&mut self.service, Some(fds), stop, listeners_per_fd).await;
        if let Some(tracker) = &self.tracker {
            tracker.accepting.send_replace(false);
        }
    }

    fn name(&self) -> &str {
        Service::name(&self.service)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.service)
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        Service::runtime_opts_override(&self.service, global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Service::listen_addresses(&self.service)
    }
}

/// Open connections of a listener, and whether it still accepts.
#[derive(Debug)]
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
    accepting: watch::Sender<bool>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            accepting: watch::channel(true).0,
        }
    }
}

/// How long connections accepted last get to reach the app once the
/// listener stopped accepting: pingora spawns a task per accepted
/// connection with no hook to count it before the task first runs.
const SETTLE: Duration = Duration::from_millis(100);

impl Tracker {
    /// Resolves once the listener has stopped accepting and every
    /// connection it accepted is closed, or after `limit`; true in the
    /// first case.
    pub async fn drained_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut accepting = self.accepting.subscribe();
        let stopped = accepting.wait_for(|a| !*a);
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            return false;
        }
        tokio::time::sleep(SETTLE.min(limit)).await;
        self.closed_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when no connection is open, or after `limit`; true when
    /// none is.
    pub async fn closed_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.open() == 0 {
                return true;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => return self.open() == 0,
            }
        }
    }
}

/// Counts a connection while it lives.
struct Open(Arc<Tracker>);

impl Open {
    fn new(tracker: &Arc<Tracker>) -> Self {
        tracker.open.fetch_add(1, Ordering::AcqRel);
        Open(tracker.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How long a new connection may stay silent before it is handed to the
/// app anyway (see [`Tracked`]).
const FIRST_BYTE: Duration = Duration::from_secs(5);

/// An app whose connections are counted in a [`Tracker`], each handed to
/// the app once its first bytes arrived: pingora drops a connection that
/// has no request buffered when shutdown begins, and a connection accepted
/// just before a drain has usually not been read yet.
pub struct Tracked<A> {
    inner: Arc<A>,
    tracker: Arc<Tracker>,
}

impl<A> Tracked<A> {
    /// `inner`, counted in `tracker`.
    pub fn new(inner: A, tracker: Arc<Tracker>) -> Self {
        Tracked {
            inner: Arc::new(inner),
            tracker,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Tracked<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = Open::new(&self.tracker);
        let mut first = [0u8; 1];
        // Peeked (the byte is put back for the app), unsupported, or silent
        // for too long: hand it over. Closed before sending anything: done.
        let peeked = tokio::time::timeout(FIRST_BYTE, stream.try_peek(&mut first)).await;
        if let Ok(Err(_)) = peeked {
            return None;
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
