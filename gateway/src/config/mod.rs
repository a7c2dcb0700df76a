//! The gateway's config: one TOML file, parsed strictly, each model's knobs
//! resolved (model table → `[defaults]` → built-in), then validated. Every
//! error names the file, the line and the field.

mod locate;
pub mod schema;
pub mod units;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thaw_snapshot::ModelKind;
use toml::Spanned;

use crate::placement::{DeviceRequest, Policy};
use crate::proxy::cors::Origins;

pub use locate::line_of;
use schema::{RawConfig, RawModel, RawQueue, RawScaling};
pub use units::{parse_duration, parse_size};

/// A config that parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The gateway's own settings.
    pub gateway: Gateway,
    /// The models, in file order.
    pub models: Vec<ModelConfig>,
}

/// `[gateway]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Public listener.
    pub listen: String,
    /// Admin listener.
    pub admin_listen: String,
    /// Where relative sources resolve.
    pub models_dir: PathBuf,
    /// Sockets and built snapshots (private, 0700).
    pub state_dir: PathBuf,
    /// Largest request body, read here or streamed to a worker (413 beyond).
    pub max_body_bytes: u64,
    /// How long a request body may pause before its next bytes (408
    /// beyond; nginx's `client_body_timeout`).
    pub body_timeout: Duration,
    /// How workers' liveness is checked.
    pub health: HealthCheck,
    /// Bearer token for the admin API (the env's `THAW_ADMIN_TOKEN` is
    /// applied by `thaw serve`, not here).
    pub admin_token: Option<Secret>,
    /// How long a shutdown waits for requests in flight and queued.
    pub shutdown_grace: Duration,
    /// How GPU instances share the GPUs: `spread` or `pack`.
    pub gpu_placement: Policy,
    /// Standby processes kept ready on each GPU that GPU models use.
    pub gpu_standby: usize,
    /// Whether standby processes register GPU models' snapshot weights with
    /// the driver ahead (pinning those pages in host memory).
    pub gpu_preregister: bool,
    /// Browser origins allowed to call the public API (CORS; none: off).
    pub cors_allow_origins: Origins,
}

/// A value kept out of logs and `Debug` output (the admin token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[gateway]`'s liveness-probe knobs, resolved: a worker that stops
/// answering (hung, not dead) is killed and replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// How often each worker is probed; also each probe's timeout.
    pub interval: Duration,
    /// Failed probes in a row after which the worker is killed.
    pub failures: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Duration::from_secs(5),
            failures: 3,
        }
    }
}

/// A model's scaling knobs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// In-flight requests per instance the autoscaler aims at.
    pub target_concurrency: u32,
    /// Hard per-instance cap.
    pub max_concurrency: u32,
    /// Provisioned floor.
    pub min_instances: u32,
    /// Cap.
    pub max_instances: u32,
    /// Stable-mode averaging window.
    pub stable_window: Duration,
    /// Panic-mode averaging window.
    pub panic_window: Duration,
    /// Panic when desired/ready reaches this.
    pub panic_threshold: f64,
    /// Demand must stay lower this long before N → N−1.
    pub scale_down_delay: Duration,
    /// No requests this long before 1 → 0.
    pub scale_to_zero_after: Duration,
    /// A template outlives its last worker this long.
    pub keep_template: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            target_concurrency: 8,
            max_concurrency: 32,
            min_instances: 0,
            max_instances: 4,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            scale_down_delay: Duration::from_secs(30),
            scale_to_zero_after: Duration::from_secs(300),
            keep_template: Duration::from_secs(1800),
        }
    }
}

/// A model's queue knobs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Most requests waiting (deep by default: a burst at zero waits for the
    /// wake-up instead of being shed).
    pub max_depth: usize,
    /// Longest wait in the queue, separate from execution time.
    pub timeout: Duration,
    /// Longest a worker may send nothing of a request's response (its
    /// head, or the next part of a stream): then 504, or the stream ends.
    pub response_timeout: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            max_depth: 10_000,
            timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(300),
        }
    }
}

/// One `[[models]]` entry, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name clients send.
    pub name: String,
    /// The source directory, resolved against `models_dir`.
    pub source: PathBuf,
    /// The kind, when the config names it.
    pub kind: Option<ModelKind>,
    /// `cpu`, `cuda`, `cuda:N` (whether the GPUs exist is checked against
    /// the inventory when the gateway starts or reloads: `crate::gpus`).
    pub device: String,
    /// Per-instance memory cap, bytes; on a GPU, the memory placement
    /// reserves for each instance.
    pub memory_limit: Option<u64>,
    /// Scaling knobs.
    pub scaling: Scaling,
    /// Queue knobs.
    pub queue: QueuePolicy,
}

impl ModelConfig {
    /// What `device` asks for (validated when the config was parsed).
    pub fn device_request(&self) -> DeviceRequest {
        self.device.parse().unwrap_or(DeviceRequest::Cpu)
    }
}

/// A config error: where and what (`file:line: field: message`, or
/// `file: message` when it is about the whole file, one that cannot be
/// read, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// The field's path, e.g. `models[1].scaling.min_instances`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ConfigError {
            file,
            line,
            field,
            message,
        } = self;
        match line {
            0 => write!(f, "{file}: {message}"),
            _ => write!(f, "{file}:{line}: {field}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        field: "-".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Whether `name` can name a model: letters, digits, '-', '_' and '.'
/// (it goes in URL paths and file names as it is).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Whether `value` is what `gateway.listen` and `gateway.admin_listen` take:
/// an `IP:PORT`.
pub fn is_listen_address(value: &str) -> bool {
    value.parse::<std::net::SocketAddr>().is_ok()
}

/// Whether the public and admin listeners would be one socket (the same
/// address, not an ephemeral port).
pub fn listeners_clash(listen: &str, admin_listen: &str) -> bool {
    listen == admin_listen && !listen.ends_with(":0")
}

/// Parses and validates config text; `path` names the file in errors and
/// anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let Some(span) = e.span() else {
            return ctx.error(0, "-", e.message().to_string());
        };
        let message = e.message().to_string();
        // A missing field is reported on its table: name the table's field.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        let field = match (missing, locate::locate(text, span.start)) {
            (Some(name), (table, _)) if !table.is_empty() => format!("{table}.{name}"),
            (Some(name), _) => name.to_string(),
            (None, _) => locate::field_at(text, span.start),
        };
        ctx.error(ctx.line(span.start), &field, message)
    })?;
    ctx.resolve(raw)
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error(&self, line: usize, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.path.display().to_string(),
            line,
            field: field.to_string(),
            message,
        }
    }

    fn at<T>(&self, span: Range<usize>, field: &str, message: String) -> Result<T, ConfigError> {
        Err(self.error(self.line(span.start), field, message))
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let g = raw.gateway;
        let listen = self.address(g.listen, "gateway.listen", "127.0.0.1:8080")?;
        let admin_span = g.admin_listen.as_ref().map(Spanned::span);
        let admin_listen =
            self.address(g.admin_listen, "gateway.admin_listen", "127.0.0.1:9090")?;
        if listeners_clash(&listen, &admin_listen) {
            return self.at(
                admin_span.unwrap_or_default(),
                "gateway.admin_listen",
                format!("{admin_listen} is also the public listener's address"),
            );
        }
        let models_dir = match std::env::var_os("THAW_MODELS") {
            Some(dir) => PathBuf::from(dir),
            None => expand_home(g.models_dir.as_deref().unwrap_or("~/.cache/thaw/models")),
        };
        let max_body_bytes = match g.max_body_bytes {
            Some(s) => self.size(&s, "gateway.max_body_bytes")?,
            None => 2 << 20,
        };
        let body_timeout = self.positive(
            g.body_timeout.as_ref(),
            "gateway.body_timeout",
            Duration::from_secs(60),
        )?;
        let health = self.health(g.health_interval.as_ref(), g.health_failures.as_ref())?;
        let admin_token = match g.admin_token {
            Some(t) if t.get_ref().trim().is_empty() => {
                return self.at(t.span(), "gateway.admin_token", "must not be empty".into())
            }
            // Compared as the bearer token arrives: trimmed (a secret file's
            // newline must not lock the admin API).
            Some(t) => Some(Secret(t.into_inner().trim().to_string())),
            None => None,
        };
        let shutdown_grace = match &g.shutdown_grace {
            Some(s) => self.duration(s, "gateway.shutdown_grace")?,
            None => Duration::from_secs(30),
        };
        let gpu_placement = match &g.gpu_placement {
            Some(p) => p
                .get_ref()
                .parse()
                .or_else(|e| self.at(p.span(), "gateway.gpu_placement", e))?,
            None => Policy::default(),
        };
        let gpu_standby = match &g.gpu_standby {
            Some(n) if *n.get_ref() > 16 => {
                return self.at(
                    n.span(),
                    "gateway.gpu_standby",
                    format!("{} standby processes per GPU is more than 16", n.get_ref()),
                )
            }
            Some(n) => *n.get_ref() as usize,
            None => 1,
        };
        let gpu_preregister = g.gpu_preregister.as_ref().is_none_or(|b| *b.get_ref());
        let cors_allow_origins = match &g.cors_allow_origins {
            Some(list) => Origins::parse(list.get_ref())
                .or_else(|e| self.at(list.span(), "gateway.cors_allow_origins", e))?,
            None => Origins::default(),
        };
        let gateway = Gateway {
            listen,
            admin_listen,
            models_dir,
            state_dir: expand_home(g.state_dir.as_deref().unwrap_or("/tmp/thaw")),
            max_body_bytes,
            body_timeout,
            health,
            admin_token,
            shutdown_grace,
            gpu_placement,
            gpu_standby,
            gpu_preregister,
            cors_allow_origins,
        };
        let defaults = self.scaling(
            &raw.defaults.scaling,
            &RawScaling::default(),
            "defaults.scaling",
        )?;
        self.check_scaling(&defaults, &raw.defaults.scaling, "defaults.scaling")?;
        self.queue(&raw.defaults.queue, &RawQueue::default(), "defaults.queue")?;
        let mut models: Vec<ModelConfig> = Vec::new();
        for (i, m) in raw.models.into_iter().enumerate() {
            let m = m.into_inner();
            let span = m.name.span();
            let model = self.model(m, &raw.defaults, &gateway, i)?;
            if models.iter().any(|other| other.name == model.name) {
                return self.at(
                    span,
                    &format!("models[{i}].name"),
                    format!("model name {:?} is used twice", model.name),
                );
            }
            models.push(model);
        }
        Ok(Config { gateway, models })
    }

    fn address(
        &self,
        value: Option<Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Result<String, ConfigError> {
        let Some(value) = value else {
            return Ok(default.to_string());
        };
        match is_listen_address(value.get_ref()) {
            true => Ok(value.into_inner()),
            false => self.at(
                value.span(),
                field,
                format!("{:?} is not an IP:PORT address", value.get_ref()),
            ),
        }
    }

    fn health(
        &self,
        interval: Option<&Spanned<String>>,
        failures: Option<&Spanned<u32>>,
    ) -> Result<HealthCheck, ConfigError> {
        let d = HealthCheck::default();
        let interval = self.positive(interval, "gateway.health_interval", d.interval)?;
        let failures = match failures {
            Some(n) if *n.get_ref() == 0 => {
                return self.at(
                    n.span(),
                    "gateway.health_failures",
                    "must be at least 1".into(),
                )
            }
            Some(n) => *n.get_ref(),
            None => d.failures,
        };
        Ok(HealthCheck { interval, failures })
    }

    /// A size, at least one byte (no field of the config means anything
    /// by zero).
    fn size(&self, s: &Spanned<String>, field: &str) -> Result<u64, ConfigError> {
        match parse_size(s.get_ref()) {
            Ok(0) => self.at(s.span(), field, "must be at least 1 byte".into()),
            Ok(n) => Ok(n),
            Err(m) => self.at(s.span(), field, m),
        }
    }

    fn duration(&self, s: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        parse_duration(s.get_ref()).or_else(|m| self.at(s.span(), field, m))
    }

    /// Resolves `over` on top of `base` on top of the built-in defaults.
    fn scaling(
        &self,
        over: &RawScaling,
        base: &RawScaling,
        prefix: &str,
    ) -> Result<Scaling, ConfigError> {
        let d = Scaling::default();
        let num = |o: &Option<Spanned<u32>>, b: &Option<Spanned<u32>>, dflt: u32| {
            o.as_ref()
                .or(b.as_ref())
                .map(|s| *s.get_ref())
                .unwrap_or(dflt)
        };
        let dur = |o: &Option<Spanned<String>>,
                   b: &Option<Spanned<String>>,
                   name: &str,
                   dflt: Duration| {
            match o.as_ref().or(b.as_ref()) {
                Some(s) => self.duration(s, &format!("{prefix}.{name}")),
                None => Ok(dflt),
            }
        };
        Ok(Scaling {
            target_concurrency: num(
                &over.target_concurrency,
                &base.target_concurrency,
                d.target_concurrency,
            ),
            max_concurrency: num(
                &over.max_concurrency,
                &base.max_concurrency,
                d.max_concurrency,
            ),
            min_instances: num(&over.min_instances, &base.min_instances, d.min_instances),
            max_instances: num(&over.max_instances, &base.max_instances, d.max_instances),
            stable_window: dur(
                &over.stable_window,
                &base.stable_window,
                "stable_window",
                d.stable_window,
            )?,
            panic_window: dur(
                &over.panic_window,
                &base.panic_window,
                "panic_window",
                d.panic_window,
            )?,
            panic_threshold: over
                .panic_threshold
                .as_ref()
                .or(base.panic_threshold.as_ref())
                .map(|s| *s.get_ref())
                .unwrap_or(d.panic_threshold),
            scale_down_delay: dur(
                &over.scale_down_delay,
                &base.scale_down_delay,
                "scale_down_delay",
                d.scale_down_delay,
            )?,
            scale_to_zero_after: dur(
                &over.scale_to_zero_after,
                &base.scale_to_zero_after,
                "scale_to_zero_after",
                d.scale_to_zero_after,
            )?,
            keep_template: dur(
                &over.keep_template,
                &base.keep_template,
                "keep_template",
                d.keep_template,
            )?,
        })
    }

    /// Range checks on resolved knobs; `raw` gives the line of the field
    /// that broke the rule (or of the table, when it was inherited).
    fn check_scaling(
        &self,
        s: &Scaling,
        raw: &RawScaling,
        prefix: &str,
    ) -> Result<(), ConfigError> {
        let line_of = |span: Option<Range<usize>>| span.map(|r| self.line(r.start)).unwrap_or(0);
        let fail = |field: &str, span: Option<Range<usize>>, message: String| {
            Err(self.error(line_of(span), &format!("{prefix}.{field}"), message))
        };
        let span_u = |o: &Option<Spanned<u32>>| o.as_ref().map(Spanned::span);
        let span_s = |o: &Option<Spanned<String>>| o.as_ref().map(Spanned::span);
        if s.target_concurrency == 0 {
            return fail(
                "target_concurrency",
                span_u(&raw.target_concurrency),
                "must be at least 1".into(),
            );
        }
        if s.max_concurrency == 0 {
            return fail(
                "max_concurrency",
                span_u(&raw.max_concurrency),
                "must be at least 1".into(),
            );
        }
        if s.target_concurrency > s.max_concurrency {
            return fail(
                "target_concurrency",
                span_u(&raw.target_concurrency).or(span_u(&raw.max_concurrency)),
                format!(
                    "target_concurrency {} exceeds max_concurrency {}",
                    s.target_concurrency, s.max_concurrency
                ),
            );
        }
        if s.max_instances == 0 {
            return fail(
                "max_instances",
                span_u(&raw.max_instances),
                "must be at least 1".into(),
            );
        }
        if s.min_instances > s.max_instances {
            return fail(
                "min_instances",
                span_u(&raw.min_instances).or(span_u(&raw.max_instances)),
                format!(
                    "min_instances {} exceeds max_instances {}",
                    s.min_instances, s.max_instances
                ),
            );
        }
        for (name, value, span) in [
            ("stable_window", s.stable_window, span_s(&raw.stable_window)),
            ("panic_window", s.panic_window, span_s(&raw.panic_window)),
            (
                "scale_to_zero_after",
                s.scale_to_zero_after,
                span_s(&raw.scale_to_zero_after),
            ),
        ] {
            if value.is_zero() {
                return fail(name, span, "must be longer than zero".into());
            }
        }
        if s.panic_window > s.stable_window {
            return fail(
                "panic_window",
                span_s(&raw.panic_window),
                "must not be longer than stable_window".into(),
            );
        }
        if !(s.panic_threshold > 1.0 && s.panic_threshold.is_finite()) {
            return fail(
                "panic_threshold",
                raw.panic_threshold.as_ref().map(Spanned::span),
                "must be a number greater than 1".into(),
            );
        }
        Ok(())
    }

    fn queue(
        &self,
        over: &RawQueue,
        base: &RawQueue,
        prefix: &str,
    ) -> Result<QueuePolicy, ConfigError> {
        let d = QueuePolicy::default();
        let depth = over.max_depth.as_ref().or(base.max_depth.as_ref());
        let max_depth = match depth {
            Some(s) if *s.get_ref() == 0 => {
                return self.at(
                    s.span(),
                    &format!("{prefix}.max_depth"),
                    "must be at least 1".into(),
                )
            }
            Some(s) => usize::try_from(*s.get_ref()).unwrap_or(usize::MAX),
            None => d.max_depth,
        };
        let timeout = over.timeout.as_ref().or(base.timeout.as_ref());
        let response_timeout = over
            .response_timeout
            .as_ref()
            .or(base.response_timeout.as_ref());
        Ok(QueuePolicy {
            max_depth,
            timeout: self.positive(timeout, &format!("{prefix}.timeout"), d.timeout)?,
            response_timeout: self.positive(
                response_timeout,
                &format!("{prefix}.response_timeout"),
                d.response_timeout,
            )?,
        })
    }

    /// A duration longer than zero, or `default` when absent.
    fn positive(
        &self,
        s: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = s else {
            return Ok(default);
        };
        let t = self.duration(s, field)?;
        if t.is_zero() {
            return self.at(s.span(), field, "must be longer than zero".into());
        }
        Ok(t)
    }

    fn model(
        &self,
        m: RawModel,
        defaults: &schema::RawDefaults,
        gateway: &Gateway,
        i: usize,
    ) -> Result<ModelConfig, ConfigError> {
        let field = |f: &str| format!("models[{i}].{f}");
        let name = m.name.get_ref().clone();
        if !valid_model_name(&name) {
            return self.at(
                m.name.span(),
                &field("name"),
                format!("{name:?}: use letters, digits, '-', '_' and '.'"),
            );
        }
        let source = self.source(&m.source, gateway, &field("source"))?;
        let kind = match &m.kind {
            Some(k) => Some(
                k.get_ref()
                    .parse::<ModelKind>()
                    .or_else(|e| self.at(k.span(), &field("kind"), e.to_string()))?,
            ),
            None => None,
        };
        // A kind the source's files contradict is refused here, at start as
        // at a reload, rather than at the model's first start.
        if let (Some(k), Some(span)) = (kind, m.kind.as_ref().map(Spanned::span)) {
            match thaw_snapshot::detect_kind(&source) {
                Ok(found) if found != k => {
                    return self.at(
                        span,
                        &field("kind"),
                        format!(
                            "{k}, but the files in {} are of kind {found}",
                            source.display()
                        ),
                    )
                }
                _ => {}
            }
        }
        let device = match &m.device {
            Some(d) => self.device(d, &field("device"))?,
            None => "cpu".into(),
        };
        let memory_limit = m
            .memory_limit
            .as_ref()
            .map(|s| self.size(s, &field("memory_limit")))
            .transpose()?;
        let prefix = field("scaling");
        let scaling = self.scaling(&m.scaling, &defaults.scaling, &prefix)?;
        let merged = merge_spans(&m.scaling, &defaults.scaling);
        self.check_scaling(&scaling, &merged, &prefix)?;
        let queue = self.queue(&m.queue, &defaults.queue, &field("queue"))?;
        Ok(ModelConfig {
            name,
            source,
            kind,
            device,
            memory_limit,
            scaling,
            queue,
        })
    }

    /// `cpu`, `cuda` or `cuda:N`. Whether the GPUs are there is the
    /// inventory's business, checked at start and reload (`crate::gpus`).
    fn device(&self, d: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        match d.get_ref().parse::<DeviceRequest>() {
            Ok(_) => Ok(d.get_ref().clone()),
            Err(e) => self.at(d.span(), field, e),
        }
    }

    fn source(
        &self,
        s: &Spanned<String>,
        gateway: &Gateway,
        field: &str,
    ) -> Result<PathBuf, ConfigError> {
        let raw = s.get_ref();
        let path = expand_home(raw);
        let resolved = if path.is_absolute() {
            path
        } else if raw.starts_with("./") || raw.starts_with("../") {
            // Next to the config file, like the repository's own models.
            self.path.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            gateway.models_dir.join(path)
        };
        if !resolved.exists() {
            let hint = if resolved.starts_with(&gateway.models_dir) {
                " (run scripts/fetch-models.sh to fetch the registry models)"
            } else {
                ""
            };
            return self.at(
                s.span(),
                field,
                format!("{} does not exist{hint}", resolved.display()),
            );
        }
        Ok(resolved)
    }
}

/// The model's own knobs where set, else the defaults' (for error lines).
fn merge_spans(over: &RawScaling, base: &RawScaling) -> RawScaling {
    let mut m = base.clone();
    macro_rules! take {
        ($($f:ident),*) => { $( if over.$f.is_some() { m.$f = over.$f.clone(); } )* };
    }
    take!(
        target_concurrency,
        max_concurrency,
        min_instances,
        max_instances,
        stable_window,
        panic_window,
        panic_threshold,
        scale_down_delay,
        scale_to_zero_after,
        keep_template
    );
    m
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests;
