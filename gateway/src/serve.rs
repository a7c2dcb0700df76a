//! `thaw serve`: loads and validates the config, starts the control runtime
//! (autoscaler and supervisor loops), and runs pingora with the public proxy
//! and the admin listener until SIGTERM (graceful) or SIGINT; then stops
//! every worker before exiting.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
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

/// Resolves port 0 to a free port, so the address can be announced.
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listener.local_addr()?)
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
    let public = resolve(&cfg.gateway.listen)?;
    let admin = resolve(&cfg.gateway.admin_listen)?;
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
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&public.to_string());
    let mut admin_service = Service::new(
        "thaw admin".to_string(),
        Admin {
            models: models.clone(),
            metrics,
        },
    );
    admin_service.add_tcp(&admin.to_string());
    server.add_service(proxy);
    server.add_service(admin_service);

    let started = Instant::now();
    std::thread::spawn(move || announce_when_listening(public, admin, started));
    server.run(RunArgs::default());

    tracing::info!("stopping workers");
    let _ = shutdown_tx.send(true);
    control.block_on(models.stopped());
    let _ = std::fs::remove_dir_all(&sockets);
    announce(json!({"event": "stopped"}));
    Ok(())
}

/// Prints the `ready` message once both listeners accept connections.
fn announce_when_listening(public: SocketAddr, admin: SocketAddr, started: Instant) {
    for addr in [public, admin] {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                tracing::error!(%addr, "listener did not come up");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    announce(json!({"event": "ready", "address": public.to_string(), "admin": admin.to_string()}));
}
