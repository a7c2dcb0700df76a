//! `thaw serve`: loads and validates the config, starts the control runtime
//! (autoscaler and supervisor loops), and runs pingora with the public proxy
//! and the admin listener until SIGTERM (graceful) or SIGINT; then stops
//! every worker before exiting.
//!
//! The listeners are bound here, before pingora runs, and handed to it bound:
//! with port 0 the port the kernel picked is the one announced and served,
//! with no window in which another process could take it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds, RunArgs, RuntimeOpts, Server, ShutdownWatch};
use pingora::services::listening::Service as Listening;
use pingora::services::Service;
use serde_json::json;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config;
use crate::metrics::Metrics;
use crate::models::{Models, Runtime};
use crate::proxy::Gateway;
use crate::supervisor::PoolPaths;

/// `thaw serve`'s options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The config file.
    pub config: PathBuf,
    /// Overrides `gateway.listen`.
    pub listen: Option<String>,
    /// Overrides `gateway.admin_listen`.
    pub admin_listen: Option<String>,
    /// The `thaw-worker` binary (default: next to this one).
    pub worker_bin: Option<PathBuf>,
}

/// Binds `addr` now and keeps the socket for pingora: with port 0 the
/// kernel picks a free port, and it stays this process's from here on.
fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    // pingora adopts the socket into tokio, which needs it non-blocking.
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listener)
}

/// A pingora listening service served on a socket bound beforehand.
///
/// pingora binds an endpoint itself unless its table of inherited listening
/// sockets (`ListenFds`, filled by a graceful upgrade) already holds one
/// under the endpoint's address; the table reaches every service as it
/// starts. So this files its socket there under the bound address just
/// before the service builds its endpoints, and pingora adopts the socket
/// (connections already queued on it included) instead of binding again.
struct Prebound<A> {
    service: Listening<A>,
    address: String,
    listener: Option<TcpListener>,
}

impl<A> Prebound<A> {
    /// `service`, served on `listener` (bound by `bind`) and nothing else.
    fn new(mut service: Listening<A>, listener: TcpListener) -> std::io::Result<Self> {
        let address = listener.local_addr()?.to_string();
        service.add_tcp(&address);
        Ok(Prebound {
            service,
            address,
            listener: Some(listener),
        })
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
        if let Some(listener) = self.listener.take() {
            // Ownership moves to the endpoint pingora builds from the table.
            fds.lock().add(self.address.clone(), listener.into_raw_fd());
        }
        Service::start_service(&mut self.service, Some(fds), shutdown, listeners_per_fd).await;
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

fn private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", path.display()))
}

fn announce(message: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{message}");
    let _ = out.flush();
}

/// Runs the gateway until it is told to stop.
pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    let mut cfg = config::load(&options.config)?;
    if let Some(l) = options.listen {
        cfg.gateway.listen = l;
    }
    if let Some(l) = options.admin_listen {
        cfg.gateway.admin_listen = l;
    }
    let public = bind(&cfg.gateway.listen)?;
    let admin = bind(&cfg.gateway.admin_listen)?;
    let addresses = (public.local_addr()?, admin.local_addr()?);
    let sockets = cfg
        .gateway
        .state_dir
        .join(format!("run-{}", std::process::id()));
    private_dir(&cfg.gateway.state_dir)?;
    private_dir(&sockets)?;
    let worker_bin = match options.worker_bin {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .context("the thaw binary has no directory")?
            .join("thaw-worker"),
    };
    anyhow::ensure!(
        worker_bin.is_file(),
        "worker binary {} not found",
        worker_bin.display()
    );

    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("thaw-control")
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new()?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let rt = Runtime {
        paths: PoolPaths {
            worker_bin,
            sockets: sockets.clone(),
            snapshots: cfg.gateway.state_dir.join("snapshots"),
        },
        ids: Arc::new(AtomicU64::new(1)),
        metrics: metrics.clone(),
        shutdown: shutdown_rx,
        tick: Duration::from_secs(1),
    };
    let models = {
        let _enter = control.enter();
        Models::start(&cfg, &rt)
    };

    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(30),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let gateway = Gateway {
        models: models.clone(),
        metrics: metrics.clone(),
        max_body_bytes: cfg.gateway.max_body_bytes,
        connector: pingora::connectors::http::Connector::new(None),
    };
    let proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    server.add_service(Prebound::new(proxy, public)?);
    let admin_service = Listening::new(
        "thaw admin".to_string(),
        Admin {
            models: models.clone(),
            metrics,
        },
    );
    server.add_service(Prebound::new(admin_service, admin)?);

    let started = Instant::now();
    std::thread::spawn(move || announce_when_serving(addresses, started));
    server.run(RunArgs::default());

    tracing::info!("stopping workers");
    let _ = shutdown_tx.send(true);
    control.block_on(models.stopped());
    let _ = std::fs::remove_dir_all(&sockets);
    announce(json!({"event": "stopped"}));
    Ok(())
}

/// Prints the `ready` message once both listeners answer HTTP. Their
/// sockets take connections from the start (bound before pingora ran, the
/// kernel queues them), so only an answer shows that pingora serves them.
fn announce_when_serving((public, admin): (SocketAddr, SocketAddr), started: Instant) {
    for (addr, path) in [(public, "/v2/health/live"), (admin, "/healthz")] {
        while !answers(addr, path) {
            if started.elapsed() > Duration::from_secs(30) {
                tracing::error!(%addr, "listener is not served");
                return;
            }
            // Only after a failed probe: pause before the next try.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    announce(json!({"event": "ready", "address": public.to_string(), "admin": admin.to_string()}));
}

/// Whether `GET path` on `addr` gets an HTTP response within a second.
fn answers(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nhost: thaw\r\nconnection: close\r\n\r\n");
    let mut head = [0u8; 5];
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head == b"HTTP/"
}

#[cfg(test)]
mod tests {
    use super::*;

    use pingora::apps::http_app::ServeHttp;
    use pingora::protocols::http::ServerSession;

    /// Answers every request with 200 `hello`.
    struct Hello;

    #[async_trait]
    impl ServeHttp for Hello {
        async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
            let mut r = http::Response::new(b"hello".to_vec());
            r.headers_mut().insert("content-length", 5.into());
            r
        }
    }

    #[test]
    fn a_port_in_use_is_refused_with_its_address() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("address").to_string();
        let e = bind(&addr).expect_err("bound a port in use");
        assert!(e.to_string().contains(&addr), "{e:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pingora_serves_the_socket_bound_before_it_started() {
        let listener = bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        assert_ne!(addr.port(), 0);
        assert!(
            TcpListener::bind(addr).is_err(),
            "{addr} is not held between the bind and pingora"
        );
        // Sent before pingora runs: queued on the socket, so answered only
        // if pingora serves this very socket rather than a new one.
        let mut early = TcpStream::connect(addr).expect("connect");
        early
            .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .expect("send");
        early
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");

        let mut service =
            Prebound::new(Listening::new("test".into(), Hello), listener).expect("prebound");
        let fds: ListenFds = Arc::new(Fds::new().into());
        let (stop, shutdown) = watch::channel(false);
        let table = fds.clone();
        tokio::spawn(async move {
            Service::start_service(&mut service, Some(table), shutdown, 1).await;
        });

        let reply = tokio::task::spawn_blocking(move || {
            let mut reply = String::new();
            early.read_to_string(&mut reply).map(|_| reply)
        })
        .await
        .expect("reader")
        .expect("the early request is answered");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");
        // In pingora's table, a graceful upgrade passes the socket on.
        assert!(fds.lock().get(&addr.to_string()).is_some());
        let _ = stop.send(true);
    }
}
