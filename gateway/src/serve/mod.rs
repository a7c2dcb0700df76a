//! `thaw serve`: loads and validates the config, starts the control runtime
//! (autoscaler, supervisor and reload loops), and runs pingora with the
//! public proxy and the admin listener until SIGTERM or SIGINT (drain, then
//! exit) or SIGQUIT (hand the sockets to `thaw serve --upgrade`, drain,
//! exit); then stops every worker and template before exiting.
//!
//! The listeners are bound here, before pingora runs, and handed to it bound:
//! with port 0 the port the kernel picked is the one announced and served,
//! with no window in which another process could take it. In an upgrade
//! they come from the old process instead.

mod listeners;
mod signals;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service as Listening;
use serde_json::json;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{self, Secret};
use crate::gpus::Gpus;
use crate::metrics::Metrics;
use crate::models::{Models, Runtime};
use crate::proxy::Gateway;
use crate::reload::{self, Live, Reloader};
use crate::supervisor::standby::StandbyPool;
use crate::supervisor::PoolPaths;
pub use listeners::bind;
use listeners::{Prebound, SharedFds, Socket, Tracked, Tracker};
use signals::Signals;

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
    /// Take the listening sockets over from a running gateway (which is
    /// then sent SIGQUIT) instead of binding them.
    pub upgrade: bool,
}

/// The env variable that sets (and overrides) the admin token.
pub const ADMIN_TOKEN_ENV: &str = "THAW_ADMIN_TOKEN";

fn private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", path.display()))
}

/// Removes the sockets directories (`run-<pid>`) of gateways that are gone
/// without cleaning up (killed with SIGKILL): a live one's, an upgrade's
/// old process's say, is left alone.
fn remove_dead_runs(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Prints a JSON event line on stdout (`ready`, `draining`, `upgraded`,
/// `stopped`): what scripts and tests wait on.
pub(crate) fn announce(message: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{message}");
    let _ = out.flush();
}

/// The admin token (env first), refusing an admin listener off loopback
/// without one.
fn admin_token(gateway: &config::Gateway, admin: &str) -> anyhow::Result<Option<Secret>> {
    let token = match std::env::var(ADMIN_TOKEN_ENV) {
        // Trimmed, as the bearer token it is compared with is.
        Ok(t) if !t.trim().is_empty() => Some(Secret(t.trim().to_string())),
        _ => gateway.admin_token.clone(),
    };
    let addr: SocketAddr = admin
        .parse()
        .with_context(|| format!("admin address {admin:?} is not IP:PORT"))?;
    anyhow::ensure!(
        token.is_some() || addr.ip().is_loopback(),
        "the admin listener {admin} is not on loopback: set [gateway] admin_token \
         (or {ADMIN_TOKEN_ENV}) so that the admin API needs a bearer token"
    );
    Ok(token)
}

/// A listener's socket: bound now, or (upgrade) the old process's, which
/// pingora files under the address the old one was bound to.
fn socket(addr: &str, upgrade: bool) -> anyhow::Result<(Socket, SocketAddr)> {
    if !upgrade {
        let listener = bind(addr)?;
        let local = listener.local_addr()?;
        return Ok((Socket::Bound(listener), local));
    }
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not IP:PORT"))?;
    anyhow::ensure!(
        parsed.port() != 0,
        "--upgrade takes the running gateway's sockets: give their addresses \
         (--listen, --admin-listen) instead of port 0"
    );
    Ok((Socket::Inherited(parsed.to_string()), parsed))
}

/// Runs the gateway until it is told to stop.
pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&options.config)
        .with_context(|| format!("reading {}", options.config.display()))?;
    let file_config = config::parse(&text, &options.config)?;
    let mut cfg = file_config.clone();
    // The flags take what the config's fields take.
    for (flag, value) in [
        ("--listen", &options.listen),
        ("--admin-listen", &options.admin_listen),
    ] {
        if let Some(v) = value {
            if !config::is_listen_address(v) {
                anyhow::bail!("{flag} {v:?} is not an IP:PORT address");
            }
        }
    }
    if let Some(l) = options.listen {
        cfg.gateway.listen = l;
    }
    if let Some(l) = options.admin_listen {
        cfg.gateway.admin_listen = l;
    }
    if config::listeners_clash(&cfg.gateway.listen, &cfg.gateway.admin_listen) {
        anyhow::bail!(
            "the public and admin listeners would both be {} (--listen, --admin-listen)",
            cfg.gateway.listen
        );
    }
    let token = admin_token(&cfg.gateway, &cfg.gateway.admin_listen)?;
    let (public, public_addr) = socket(&cfg.gateway.listen, options.upgrade)?;
    let (admin, admin_addr) = socket(&cfg.gateway.admin_listen, options.upgrade)?;
    let sockets = cfg
        .gateway
        .state_dir
        .join(format!("run-{}", std::process::id()));
    private_dir(&cfg.gateway.state_dir)?;
    remove_dead_runs(&cfg.gateway.state_dir);
    if !options.upgrade {
        let configured: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        crate::supervisor::snapshots::prune_unconfigured(
            &cfg.gateway.state_dir.join("snapshots"),
            &configured,
        );
    }
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
    // GPU models: the inventory is read (once) and each must be placeable,
    // or the gateway does not start.
    let gpus = Gpus::new(cfg.gateway.gpu_placement);
    control.block_on(gpus.check_config(&cfg, &text, &options.config, &worker_bin))?;
    let metrics = Arc::new(Metrics::new()?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker_bin_for_standby = worker_bin.clone();
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
        standby: {
            let pool = StandbyPool::new(
                worker_bin_for_standby,
                cfg.gateway.gpu_standby,
                Duration::from_secs(120),
            );
            pool.set_preregistering(cfg.gateway.gpu_preregister);
            pool
        },
        gpus,
    };
    let live = Arc::new(Live::new(&cfg.gateway));
    let (models, reloader) = {
        let _enter = control.enter();
        let models = Models::start(&cfg, &rt);
        rt.fill_standby(&cfg);
        let reloader = Reloader::new(
            &options.config,
            &text,
            file_config,
            models.clone(),
            metrics.clone(),
            live.clone(),
        );
        reload::watch_sighup(reloader.clone()).context("handling SIGHUP")?;
        if let Err(e) = reload::watch_file(reloader.clone()) {
            tracing::warn!("not watching {} for changes: {e}", options.config.display());
        }
        (models, reloader)
    };

    let upgrade_sock = cfg.gateway.state_dir.join("upgrade.sock");
    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        // The drain has waited for the connections already (`signals`).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // In an upgrade, this waits for the old process's sockets.
    server.bootstrap();
    let (drain, draining) = watch::channel(false);
    let fds: SharedFds = Arc::default();
    let tracker = Arc::new(Tracker::default());
    let gateway = Gateway {
        models: models.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        connector: pingora::connectors::http::Connector::new(None),
    };
    let mut proxy = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    proxy.handle_init_modules();
    let proxy = Listening::new(
        "thaw proxy".to_string(),
        Tracked::new(proxy, tracker.clone()),
    );
    server.add_service(
        Prebound::new(proxy, public, draining.clone(), fds.clone())?.tracked_by(tracker.clone()),
    );
    let admin_app = Admin {
        models: models.clone(),
        metrics,
        reloader,
        token,
    };
    let admin_service = Listening::new("thaw admin".to_string(), admin_app);
    server.add_service(Prebound::new(admin_service, admin, draining, fds.clone())?);

    let started = Instant::now();
    std::thread::spawn(move || announce_when_serving((public_addr, admin_addr), started));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            drain,
            tracker,
            fds,
            upgrade_sock: upgrade_sock.display().to_string(),
            live,
            models: models.clone(),
        }),
    });

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
mod tests;
