//! Outcomes of requests, tallied per status into latency histograms, and
//! their JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Largest latency recorded, in microseconds (longer ones are clamped).
const MAX_US: u64 = 600_000_000;

/// What one request ended in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// An HTTP status.
    Status(u16),
    /// No response: connect or I/O failure, with the error's text.
    Error(String),
}

impl Outcome {
    /// The report's key: the status code, or `error`.
    fn key(&self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Error(_) => "error".into(),
        }
    }
}

/// A latency histogram in microseconds.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_max(MAX_US, 3).expect("3 significant digits are valid"))
    }
}

impl Latency {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        self.0.saturating_record(us);
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The distribution as `[quantile, µs]` points, for a CDF plot.
    pub fn cdf(&self) -> Value {
        if self.0.is_empty() {
            return json!([]);
        }
        let points: Vec<Value> = (0..=100)
            .map(|i| {
                let q = 1.0 - 0.5f64.powf(i as f64 / 10.0); // denser toward the tail
                json!([q, self.0.value_at_quantile(q)])
            })
            .chain(std::iter::once(json!([1.0, self.0.max()])))
            .collect();
        Value::Array(points)
    }

    /// Percentiles, mean and max in microseconds.
    pub fn summary(&self) -> Value {
        let h = &self.0;
        json!({
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
            "mean": h.mean().round() as u64,
        })
    }
}

/// Outcomes tallied per status.
#[derive(Default)]
pub struct Tally {
    by_status: BTreeMap<String, Latency>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Records one request's outcome and latency.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.by_status
            .entry(outcome.key())
            .or_default()
            .record(latency);
        if let Outcome::Error(e) = outcome {
            *self.errors.entry(e.clone()).or_default() += 1;
        }
    }

    /// How many outcomes were recorded.
    pub fn total(&self) -> u64 {
        self.by_status.values().map(Latency::count).sum()
    }

    /// `{status: {count, rate_per_s, latency_us}}` over `elapsed`, and the
    /// error texts with their counts.
    pub fn report(&self, elapsed: Duration) -> (Value, Value) {
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut statuses = Map::new();
        for (k, h) in &self.by_status {
            statuses.insert(
                k.clone(),
                json!({
                    "count": h.count(),
                    "rate_per_s": h.count() as f64 / secs,
                    "latency_us": h.summary(),
                }),
            );
        }
        let errors: Map<String, Value> = self
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        (Value::Object(statuses), Value::Object(errors))
    }
}
