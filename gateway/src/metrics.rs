//! Prometheus metrics, all named `thaw_<what>_<unit>`, labels small and
//! bounded (model names come from the config, statuses and reasons from
//! short fixed lists). Gauges that mirror live state (queue depth,
//! instances) are set when `/metrics` is scraped.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::supervisor::PoolEvents;

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests by model and status.
    pub requests: IntCounterVec,
    /// Request duration by model.
    pub request_seconds: HistogramVec,
    /// Time in the admission queue by model.
    pub queue_wait_seconds: HistogramVec,
    /// Requests waiting, by model.
    pub queue_depth: IntGaugeVec,
    /// Requests shed (or timed out in the queue), by model and reason.
    pub shed: IntCounterVec,
    /// Instances by model and state (`ready`, `starting`, `draining`).
    pub instances: IntGaugeVec,
    /// Cold starts by model and tier.
    pub cold_starts: IntCounterVec,
    /// Cold-start duration by model and phase.
    pub cold_start_seconds: HistogramVec,
    /// Workers that exited without being asked to.
    pub worker_crashes: IntCounterVec,
    /// Requests sent again because their worker did not take them, by model.
    pub replayed: IntCounterVec,
    /// Workers that failed to start.
    pub worker_start_failures: IntCounterVec,
    /// Templates started, demoted and crashed, by model.
    pub template_events: IntCounterVec,
    /// Config reloads by result (`ok`, `unchanged`, `refused`, `failed`).
    pub config_reloads: IntCounterVec,
    /// Standby processes per device, ready or starting.
    pub standby_processes: IntGaugeVec,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
                let h = HistogramVec::new(opts, labels)?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let metrics = Metrics {
            requests: counter(
                "thaw_requests_total",
                "Requests answered, by model and status",
                &["model", "status"],
            )?,
            request_seconds: histogram(
                "thaw_request_duration_seconds",
                "Request duration at the gateway",
                &["model"],
            )?,
            queue_wait_seconds: histogram(
                "thaw_queue_wait_seconds",
                "Time spent in the admission queue",
                &["model"],
            )?,
            queue_depth: gauge(
                "thaw_queue_depth",
                "Requests waiting in the admission queue",
                &["model"],
            )?,
            shed: counter(
                "thaw_shed_total",
                "Requests shed or timed out before reaching a worker, by reason",
                &["model", "reason"],
            )?,
            instances: gauge(
                "thaw_instances",
                "Worker instances by state (ready, draining, hibernated, starting; template: 1 while the model has one)",
                &["model", "state"],
            )?,
            cold_starts: counter(
                "thaw_cold_starts_total",
                "Instances started, by tier",
                &["model", "tier"],
            )?,
            cold_start_seconds: histogram(
                "thaw_cold_start_duration_seconds",
                "Cold-start duration by phase",
                &["model", "phase"],
            )?,
            worker_crashes: counter(
                "thaw_worker_crashes_total",
                "Workers that exited without being asked to",
                &["model"],
            )?,
            replayed: counter(
                "thaw_requests_replayed_total",
                "Requests sent again because the worker's connection failed before the worker took the whole request",
                &["model"],
            )?,
            worker_start_failures: counter(
                "thaw_worker_start_failures_total",
                "Workers that failed to start",
                &["model"],
            )?,
            template_events: counter(
                "thaw_template_events_total",
                "Templates started, demoted (after keep_template) and crashed",
                &["model", "event"],
            )?,
            config_reloads: counter(
                "thaw_config_reloads_total",
                "Config reloads, by result (ok, unchanged, refused, failed)",
                &["result"],
            )?,
            standby_processes: gauge(
                "thaw_standby_processes",
                "Standby processes (device ready, no model yet) by device and state",
                &["device", "state"],
            )?,
            registry,
        };
        for result in ["ok", "unchanged", "refused", "failed"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// Gives `model`'s failure counters their series at zero, so that an
    /// alert on their rate (or on their absence) works before the first
    /// failure.
    pub fn model_added(&self, model: &str) {
        for counter in [
            &self.worker_crashes,
            &self.worker_start_failures,
            &self.replayed,
        ] {
            counter.with_label_values(&[model]);
        }
        for reason in ["queue_full", "would_miss_deadline", "timeout"] {
            self.shed.with_label_values(&[model, reason]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

impl PoolEvents for Metrics {
    fn started(&self, model: &str, tier: &str, startup: Duration) {
        self.cold_starts.with_label_values(&[model, tier]).inc();
        self.cold_start_seconds
            .with_label_values(&[model, "spawn_to_ready"])
            .observe(startup.as_secs_f64());
    }

    fn snapshot_built(&self, model: &str, took: Duration) {
        self.cold_start_seconds
            .with_label_values(&[model, "snapshot_build"])
            .observe(took.as_secs_f64());
    }

    fn start_failed(&self, model: &str, _error: &str) {
        self.worker_start_failures.with_label_values(&[model]).inc();
    }

    fn crashed(&self, model: &str) {
        self.worker_crashes.with_label_values(&[model]).inc();
    }

    fn phase(&self, model: &str, phase: &str, took: Duration) {
        self.cold_start_seconds
            .with_label_values(&[model, phase])
            .observe(took.as_secs_f64());
    }

    fn template(&self, model: &str, event: &str) {
        self.template_events
            .with_label_values(&[model, event])
            .inc();
    }
}
