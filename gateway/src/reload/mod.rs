//! Live reload: one path, [`Reloader::reload`], for three triggers (SIGHUP,
//! a change of the config file, `POST /admin/reload`). Read, parse and
//! validate, refuse a change of a restart-only field, diff against the
//! running models, then apply: replacements start and become ready beside
//! the old versions, and one store of the routing map switches everything
//! at once. A refused file changes nothing; every outcome is logged,
//! counted (`thaw_config_reloads_total{result}`) and shown in
//! `/admin/status`.

mod apply;
pub mod diff;
mod triggers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use arc_swap::ArcSwap;

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::models::Models;
use crate::proxy::cors::Origins;
pub use diff::Changes;
pub use triggers::{watch_file, watch_sighup};

/// Gateway settings a reload changes in place (read per request or at
/// shutdown).
#[derive(Debug)]
pub struct Live {
    max_body_bytes: AtomicU64,
    body_timeout_ms: AtomicU64,
    shutdown_grace_ms: AtomicU64,
    cors: ArcSwap<Origins>,
}

impl Live {
    /// The settings of `gateway`.
    pub fn new(gateway: &config::Gateway) -> Self {
        let live = Live {
            max_body_bytes: AtomicU64::new(0),
            body_timeout_ms: AtomicU64::new(0),
            shutdown_grace_ms: AtomicU64::new(0),
            cors: ArcSwap::from_pointee(Origins::default()),
        };
        live.set(gateway);
        live
    }

    fn set(&self, gateway: &config::Gateway) {
        self.max_body_bytes
            .store(gateway.max_body_bytes, Ordering::Relaxed);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.body_timeout_ms
            .store(ms(gateway.body_timeout), Ordering::Relaxed);
        self.shutdown_grace_ms
            .store(ms(gateway.shutdown_grace), Ordering::Relaxed);
        self.cors
            .store(Arc::new(gateway.cors_allow_origins.clone()));
    }

    /// The origins allowed to call the public API from a browser.
    pub fn cors(&self) -> arc_swap::Guard<Arc<Origins>> {
        self.cors.load()
    }

    /// Largest body read to find a request's model.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes.load(Ordering::Relaxed)
    }

    /// How long a request body may pause between two reads.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms.load(Ordering::Relaxed))
    }

    /// How long a shutdown waits for requests to finish.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms.load(Ordering::Relaxed))
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The config file changed.
    File,
    /// `POST /admin/reload`.
    Admin,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied.
    Ok,
    /// The file did not change (a file event that wrote the same bytes).
    Unchanged,
    /// The file is invalid or changes a restart-only field: nothing changed.
    Refused,
    /// A new or replaced model could not start: nothing changed.
    Failed,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One reload's result, as the admin API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What asked for it.
    pub trigger: Trigger,
    /// How it ended.
    pub result: Outcome,
    /// Why it was refused or failed (`file:line: field: message`).
    pub error: Option<String>,
    /// The config version running after it.
    pub version: u64,
    /// The models it changed.
    pub changes: Changes,
    /// When it ended (Unix seconds).
    pub at_unix: u64,
}

/// The config in force and the last reload, for `/admin/status`.
#[derive(Debug, Clone)]
struct Status {
    version: u64,
    hash: String,
    loaded_at: SystemTime,
    last: Option<Report>,
}

/// Reloads the config file into the running gateway.
pub struct Reloader {
    path: PathBuf,
    models: Arc<Models>,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
    /// The running config as the file said it (before command-line
    /// overrides); held across a reload, so reloads run one at a time.
    running: tokio::sync::Mutex<Config>,
    status: Mutex<Status>,
}

/// How long a replacement may take to become ready before the reload
/// gives up on it (a snapshot build included).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

impl Reloader {
    /// A reloader for the config at `path`, which is running as `config`
    /// (read from `text`).
    pub fn new(
        path: &Path,
        text: &str,
        config: Config,
        models: Arc<Models>,
        metrics: Arc<Metrics>,
        live: Arc<Live>,
    ) -> Arc<Self> {
        Arc::new(Reloader {
            path: path.to_path_buf(),
            models,
            metrics,
            live,
            running: tokio::sync::Mutex::new(config),
            status: Mutex::new(Status {
                version: 1,
                hash: hash(text),
                loaded_at: SystemTime::now(),
                last: None,
            }),
        })
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The models.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Reads the file and applies it, or refuses it whole. Runs on the
    /// control runtime (new models' tasks are spawned there); one at a time.
    pub async fn reload(&self, trigger: Trigger) -> Report {
        let mut running = self.running.lock().await;
        let (result, error, changes) = match self.attempt(trigger, &mut running).await {
            Ok((outcome, changes)) => (outcome, None, changes),
            Err((outcome, e)) => (outcome, Some(e), Changes::default()),
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let report = Report {
            trigger,
            result,
            error,
            version: status.version,
            changes,
            at_unix: unix(SystemTime::now()),
        };
        match (&report.error, result) {
            (Some(e), _) => tracing::error!(?trigger, result = result.label(), "reload: {e}"),
            (None, Outcome::Unchanged) => {
                tracing::debug!(?trigger, "reload: the file did not change")
            }
            (None, _) => tracing::info!(
                ?trigger, version = report.version, changes = ?report.changes, "config reloaded"
            ),
        }
        self.metrics
            .config_reloads
            .with_label_values(&[result.label()])
            .inc();
        status.last = Some(report.clone());
        report
    }

    /// One reload under the lock: the new config replaces `running` only
    /// when it is applied.
    async fn attempt(
        &self,
        trigger: Trigger,
        running: &mut Config,
    ) -> Result<(Outcome, Changes), (Outcome, String)> {
        let refused = |e: ConfigError| (Outcome::Refused, e.to_string());
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            (
                Outcome::Refused,
                format!("{}: cannot read: {e}", self.path.display()),
            )
        })?;
        let digest = hash(&text);
        let same = self.status().hash == digest;
        if same && trigger == Trigger::File {
            return Ok((Outcome::Unchanged, Changes::default()));
        }
        let path = self.path.clone();
        let parsed = {
            let text = text.clone();
            tokio::task::spawn_blocking(move || config::parse(&text, &path).map(|c| (c, text)))
                .await
                .map_err(|e| (Outcome::Failed, format!("parsing the config: {e}")))?
        };
        let (new, text) = parsed.map_err(refused)?;
        let restart = diff::restart_only(&running.gateway, &new.gateway);
        if let Some(field) = restart.first() {
            return Err(refused(ConfigError {
                file: self.path.display().to_string(),
                line: config::line_of(&text, "gateway", field),
                field: format!("gateway.{field}"),
                message: "cannot change without a restart (restart thaw, or `thaw serve \
                          --upgrade`, to apply it); nothing was reloaded"
                    .into(),
            }));
        }
        let rt = self.models.runtime();
        rt.gpus
            .check_config(&new, &text, &self.path, &rt.paths.worker_bin)
            .await
            .map_err(refused)?;
        let changes = apply::apply(&self.models, &new, &self.live, READY_TIMEOUT)
            .await
            .map_err(|e| (Outcome::Failed, e))?;
        rt.gpus.set_policy(new.gateway.gpu_placement);
        rt.fill_standby(&new);
        *running = new;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.version += 1;
        status.hash = digest;
        status.loaded_at = SystemTime::now();
        Ok((Outcome::Ok, changes))
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `/admin/status`'s `config` and `last_reload`.
    pub fn status_json(&self) -> (Value, Value) {
        let s = self.status();
        let config = json!({
            "path": self.path.display().to_string(),
            "version": s.version,
            "hash": s.hash,
            "loaded_at_unix": unix(s.loaded_at),
        });
        let last = s.last.map_or(Value::Null, |r| {
            serde_json::to_value(r).unwrap_or(Value::Null)
        });
        (config, last)
    }
}

/// `sha256:<hex>` of the config text, so an operator can compare it with
/// `sha256sum` of the file.
fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
