//! Runs a worker: binds its listener (TCP or a unix socket), loads the model
//! on a blocking thread while `/v2/health/live` already answers, reports
//! readiness as a message on stdout, and shuts down gracefully on SIGTERM or
//! SIGINT (stop accepting, finish in-flight requests, exit).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};

use crate::api::{self, AppState, Backend, Limits};
use crate::batcher::{BatchConfig, Batcher};
use crate::models::{LoadOptions, LoadedModel, ModelError};

/// Where a worker listens: `HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address; port 0 picks a free port (reported in the messages).
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ListenAddr::Tcp(s.to_string()))
            }
            _ => Err(format!("{s:?} is neither HOST:PORT nor unix:PATH")),
        }
    }
}

/// Everything a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The model to load.
    pub model: LoadOptions,
    /// The name clients use.
    pub name: String,
    /// Where to listen.
    pub listen: ListenAddr,
    /// Batching knobs.
    pub batch: BatchConfig,
    /// Request limits.
    pub limits: Limits,
    /// Stdin is the supervisor's lifeline: end-of-file on it means the
    /// supervisor has gone, and the worker stops as on SIGTERM.
    pub lifeline: bool,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be bound.
    // The cause is in the message and not the error's source, so that a
    // report of the whole chain does not say it twice.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The model failed to load.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Another I/O failure (signals, the executor thread).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Prints one JSON message on stdout: how a supervisor learns of progress.
pub(crate) fn announce(message: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{message}");
    let _ = out.flush();
}

async fn bind(addr: &ListenAddr) -> Result<(Listener, String), ServeError> {
    let fail = |cause| ServeError::Bind {
        addr: match addr {
            ListenAddr::Tcp(a) => a.clone(),
            ListenAddr::Unix(path) => format!("unix:{}", path.display()),
        },
        cause,
    };
    match addr {
        ListenAddr::Tcp(a) => {
            let l = TcpListener::bind(a).await.map_err(fail)?;
            let local: SocketAddr = l.local_addr().map_err(fail)?;
            Ok((Listener::Tcp(l), local.to_string()))
        }
        ListenAddr::Unix(path) => {
            // A socket left by a process that is gone is replaced; anything
            // else there is not ours to remove.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(fail(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the path exists and is not a socket",
                    )));
                }
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(fail(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is listening on it",
                    )));
                }
                std::fs::remove_file(path).map_err(fail)?;
            }
            let l = UnixListener::bind(path).map_err(fail)?;
            Ok((Listener::Unix(l), format!("unix:{}", path.display())))
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives, or the lifeline (stdin) reads
/// end-of-file.
async fn shutdown_signal(lifeline: bool) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let closed = async {
        if !lifeline {
            return std::future::pending().await;
        }
        match lifeline_closed().await {
            Ok(()) => tracing::info!("the supervisor has gone (lifeline closed)"),
            Err(e) => tracing::warn!("watching the lifeline: {e}"),
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        () = closed => {},
    }
    Ok(())
}

/// Resolves when stdin (a pipe whose write end the supervisor holds) reads
/// end-of-file.
async fn lifeline_closed() -> std::io::Result<()> {
    use std::os::fd::AsFd;
    use tokio::io::AsyncReadExt;
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = [0u8; 64];
    while pipe.read(&mut buf).await? > 0 {}
    Ok(())
}

fn load(options: &WorkerOptions) -> Result<Backend, ServeError> {
    let loaded = LoadedModel::load(&options.model);
    // A standby process's registrations made ahead for other models: this
    // process serves one model from now on.
    crate::gpu::release_preregistered();
    Prepared::new(loaded?).start(options)
}

/// A loaded model with what the API needs beside it (the tokenizer, the
/// manifest), made ready to put behind a batcher: a template prepares it
/// once, and each forked child only starts the batcher's thread.
pub struct Prepared(Ready);

// Made once per process and moved into the batcher, like `LoadedModel`.
#[allow(clippy::large_enum_variant)]
enum Ready {
    Embedding {
        model: crate::models::EmbeddingModel,
        tokenizer: Arc<tokenizers::Tokenizer>,
        dimensions: usize,
    },
    Tabular {
        model: crate::models::TabularModel,
        manifest: crate::models::tabular::TabularManifest,
    },
    Chat(Arc<crate::models::chat::ChatModel>),
}

impl Prepared {
    /// Prepares `model` (no thread is started).
    pub fn new(model: LoadedModel) -> Self {
        Prepared(match model {
            LoadedModel::Embedding(model) => Ready::Embedding {
                tokenizer: Arc::new(model.tokenizer().clone()),
                dimensions: model.dimensions(),
                model,
            },
            LoadedModel::Tabular(model) => Ready::Tabular {
                manifest: model.manifest().clone(),
                model,
            },
            LoadedModel::Chat(model) => Ready::Chat(Arc::new(model)),
        })
    }

    /// The model's kind.
    pub fn kind(&self) -> thaw_snapshot::ModelKind {
        match &self.0 {
            Ready::Embedding { .. } => thaw_snapshot::ModelKind::Embedding,
            Ready::Tabular { .. } => thaw_snapshot::ModelKind::Tabular,
            Ready::Chat(_) => thaw_snapshot::ModelKind::Chat,
        }
    }

    /// Puts the model behind its batcher (a thread of its own).
    fn start(self, options: &WorkerOptions) -> Result<Backend, ServeError> {
        let batch = options.batch;
        let thread = format!("model-{}", options.name);
        Ok(match self.0 {
            Ready::Embedding {
                model,
                tokenizer,
                dimensions,
            } => Backend::Embedding {
                batcher: Batcher::spawn(model, batch, &thread)?,
                tokenizer,
                dimensions,
            },
            Ready::Tabular { model, manifest } => Backend::Tabular {
                batcher: Batcher::spawn(model, batch, &thread)?,
                manifest,
            },
            // The most sequences generated together: the batch size.
            Ready::Chat(model) => Backend::Chat {
                engine: crate::models::chat::Engine::spawn(
                    model.clone(),
                    batch.max_batch_size,
                    &thread,
                )?,
                model,
            },
        })
    }
}

/// Runs the worker until a shutdown signal; returns once in-flight requests
/// have finished.
pub async fn run(options: WorkerOptions) -> Result<(), ServeError> {
    serve(options, None, serde_json::Map::new(), Instant::now()).await
}

/// Runs a worker that loads its model now, with `timings` joining its
/// ready message and `load_ms` counted from `started` (a standby process
/// activated at that instant).
pub async fn run_with_timings(
    options: WorkerOptions,
    timings: serde_json::Map<String, serde_json::Value>,
    started: Instant,
) -> Result<(), ServeError> {
    serve(options, None, timings, started).await
}

/// Runs a worker for a model that is already built (a child forked from a
/// template): ready as soon as it listens. `timings` join its ready message,
/// whose `load_ms` counts from `started`.
pub async fn run_prebuilt(
    options: WorkerOptions,
    model: Prepared,
    timings: serde_json::Map<String, serde_json::Value>,
    started: Instant,
) -> Result<(), ServeError> {
    serve(options, Some(model), timings, started).await
}

async fn serve(
    options: WorkerOptions,
    prebuilt: Option<Prepared>,
    timings: serde_json::Map<String, serde_json::Value>,
    start: Instant,
) -> Result<(), ServeError> {
    let kind = match options.model.kind {
        Some(kind) => kind,
        None => thaw_snapshot::detect_kind(&options.model.dir).map_err(ModelError::load)?,
    };
    let mut options = options;
    options.model.kind = Some(kind);
    let state = AppState::new(options.name.clone(), kind, options.limits);
    let app = api::router(state.clone());
    let (listener, address) = bind(&options.listen).await?;
    announce(json!({"event": "listening", "address": address, "model": options.name}));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let graceful = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let server = match listener {
        Listener::Tcp(l) => {
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(graceful).await })
        }
        Listener::Unix(l) => {
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(graceful).await })
        }
    };

    let loading = match prebuilt {
        // Built already: only the batcher's thread to start.
        Some(model) => {
            let started = model.start(&options);
            tokio::spawn(async move { started })
        }
        None => {
            let options = options.clone();
            tokio::task::spawn_blocking(move || load(&options))
        }
    };
    let signal = shutdown_signal(options.lifeline);
    tokio::pin!(signal);
    tokio::select! {
        loaded = loading => {
            let backend = loaded.map_err(|e| ServeError::Io(std::io::Error::other(e)))??;
            state.set_ready(backend);
            let mut ready = json!({
                "event": "ready",
                "address": address,
                "model": options.name,
                "kind": kind,
                "pid": std::process::id(),
                "load_ms": start.elapsed().as_secs_f64() * 1e3,
            });
            if let Some(fields) = ready.as_object_mut() {
                fields.extend(timings);
            }
            announce(ready);
            tracing::info!(model = %options.name, %address, "ready");
            signal.await?;
        }
        s = &mut signal => s?,
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    match server.await {
        Ok(result) => result?,
        Err(e) => return Err(ServeError::Io(std::io::Error::other(e))),
    }
    if let ListenAddr::Unix(path) = &options.listen {
        let _ = std::fs::remove_file(path);
    }
    announce(json!({"event": "stopped", "model": options.name}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "127.0.0.1:0".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:0".into()))
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/x.sock".into()))
        );
        for bad in ["", "unix:", "8080", "host:port", ":80"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_unix_path_is_taken_only_from_a_socket_nobody_listens_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("data");
        std::fs::write(&file, "keep me").expect("write");
        let err = bind(&ListenAddr::Unix(file.clone()))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("intact"), "keep me");

        let path = dir.path().join("w.sock");
        let (first, _) = bind(&ListenAddr::Unix(path.clone())).await.expect("binds");
        let err = bind(&ListenAddr::Unix(path.clone()))
            .await
            .err()
            .expect("in use");
        assert!(err.to_string().contains("listening"), "{err}");
        drop(first);
        // Left behind by a listener that is gone: replaced.
        bind(&ListenAddr::Unix(path))
            .await
            .expect("a stale socket is replaced");
    }
}
