//! The config file's shape as written: every table `deny_unknown_fields`,
//! every knob optional so that a model's table overrides `[defaults]` field
//! by field. Values that validation may refuse carry their span, so an
//! error can name the line.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[defaults.scaling]`, `[defaults.queue]`.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// `[[models]]`.
    #[serde(default)]
    pub models: Vec<Spanned<RawModel>>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Public listener, `HOST:PORT`.
    pub listen: Option<Spanned<String>>,
    /// Admin listener, `HOST:PORT`.
    pub admin_listen: Option<Spanned<String>>,
    /// Where relative model sources resolve (those starting with `./` or
    /// `../` resolve next to the config file).
    pub models_dir: Option<String>,
    /// Sockets and built snapshots.
    pub state_dir: Option<String>,
    /// Largest request body, read or streamed (413 beyond).
    pub max_body_bytes: Option<Spanned<String>>,
    /// How long a request body may pause between two reads (408 beyond).
    pub body_timeout: Option<Spanned<String>>,
    /// How often each worker's liveness is probed (also each probe's timeout).
    pub health_interval: Option<Spanned<String>>,
    /// Failed probes in a row after which a worker is killed and replaced.
    pub health_failures: Option<Spanned<u32>>,
    /// Bearer token every admin request must carry (env `THAW_ADMIN_TOKEN`
    /// overrides); required for an admin listener off loopback.
    pub admin_token: Option<Spanned<String>>,
    /// How long a shutdown (or an upgrade's old process) waits for requests
    /// in flight and queued to finish.
    pub shutdown_grace: Option<Spanned<String>>,
    /// How GPU instances share the GPUs: `spread` (most room first) or
    /// `pack` (fullest that fits first).
    pub gpu_placement: Option<Spanned<String>>,
    /// Standby processes kept per GPU (CUDA context ready) for GPU models.
    pub gpu_standby: Option<Spanned<u32>>,
    /// Whether standby processes register GPU models' snapshots ahead.
    pub gpu_preregister: Option<Spanned<bool>>,
    /// Browser origins allowed to call the public API (CORS); `["*"]` for
    /// any.
    pub cors_allow_origins: Option<Spanned<Vec<String>>>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Scaling knobs for every model.
    #[serde(default)]
    pub scaling: RawScaling,
    /// Queue knobs for every model.
    #[serde(default)]
    pub queue: RawQueue,
}

/// Scaling knobs; each overrides the one below it (model → defaults → built-in).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScaling {
    /// In-flight requests per instance the autoscaler aims at.
    pub target_concurrency: Option<Spanned<u32>>,
    /// Hard per-instance cap enforced by the gateway.
    pub max_concurrency: Option<Spanned<u32>>,
    /// Provisioned floor.
    pub min_instances: Option<Spanned<u32>>,
    /// Cap.
    pub max_instances: Option<Spanned<u32>>,
    /// Averaging window of stable mode.
    pub stable_window: Option<Spanned<String>>,
    /// Averaging window of panic mode.
    pub panic_window: Option<Spanned<String>>,
    /// Panic when the panic window wants this many times the ready instances.
    pub panic_threshold: Option<Spanned<f64>>,
    /// How long lower demand must last before N → N−1.
    pub scale_down_delay: Option<Spanned<String>>,
    /// How long without requests before 1 → 0.
    pub scale_to_zero_after: Option<Spanned<String>>,
    /// How long a template outlives its last worker.
    pub keep_template: Option<Spanned<String>>,
}

/// Queue knobs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Most requests waiting per model.
    pub max_depth: Option<Spanned<u64>>,
    /// Longest a request may wait in the queue.
    pub timeout: Option<Spanned<String>>,
    /// Longest a worker may send nothing of a request's response.
    pub response_timeout: Option<Spanned<String>>,
}

/// `[[models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The name clients send.
    pub name: Spanned<String>,
    /// A model directory, a directory holding one GGUF, or a snapshot.
    pub source: Spanned<String>,
    /// `embedding`, `tabular` or `chat`; detected when absent.
    pub kind: Option<Spanned<String>>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Option<Spanned<String>>,
    /// Per-instance memory cap.
    pub memory_limit: Option<Spanned<String>>,
    /// Overrides of `[defaults.scaling]`.
    #[serde(default)]
    pub scaling: RawScaling,
    /// Overrides of `[defaults.queue]`.
    #[serde(default)]
    pub queue: RawQueue,
}
