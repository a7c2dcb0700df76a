//! `/admin/status` (every model with its tier, instances (and their GPUs),
//! queue, in-flight count, cold starts, override and why it cannot start;
//! the config's version and hash; the last reload; the GPUs with the
//! memory promised on each) and the gauges mirrored into `/metrics` before
//! a scrape.

use serde_json::{json, Value};

use super::Admin;
use crate::models::Model;

impl Admin {
    /// Mirrors live state into the gauges before a scrape.
    pub(super) fn refresh_gauges(&self) {
        // Only the models configured now: a removed model's series go.
        self.metrics.queue_depth.reset();
        self.metrics.instances.reset();
        for m in self.models.all() {
            let name = m.config.name.as_str();
            let stats = m.admission.stats();
            self.metrics
                .queue_depth
                .with_label_values(&[name])
                .set(stats.queue_depth as i64);
            let instances = m.pool.instances();
            let count = |state: &str| instances.iter().filter(|i| i.state == state).count();
            let gauges = [
                ("ready", count("ready")),
                ("draining", count("draining")),
                ("hibernated", count("hibernated")),
                ("starting", m.pool.starting()),
                ("template", usize::from(m.pool.template_info().is_some())),
            ];
            for (state, n) in gauges {
                self.metrics
                    .instances
                    .with_label_values(&[name, state])
                    .set(n as i64);
            }
        }
        let standby = self.models.runtime().standby.status();
        if let Some(devices) = standby["devices"].as_object() {
            for (device, d) in devices {
                let ready = d["ready"].as_array().map_or(0, Vec::len);
                let starting = d["starting"].as_u64().unwrap_or(0);
                let gauge = &self.metrics.standby_processes;
                gauge
                    .with_label_values(&[device.as_str(), "ready"])
                    .set(ready as i64);
                gauge
                    .with_label_values(&[device.as_str(), "starting"])
                    .set(starting as i64);
            }
        }
    }

    /// `/admin/status`.
    pub fn status(&self) -> Value {
        let models: Vec<Value> = self.models.all().iter().map(|m| self.model(m)).collect();
        let (config, last_reload) = self.reloader.status_json();
        let rt = self.models.runtime();
        let mut gpus = rt.gpus.status();
        if let Some(fields) = gpus.as_object_mut() {
            fields.insert("standby".into(), rt.standby.status());
        }
        json!({"config": config, "last_reload": last_reload, "models": models, "gpus": gpus})
    }

    fn model(&self, m: &Model) -> Value {
        let stats = m.admission.stats();
        let decision = *m.decision.borrow();
        let scaling = m.scaling();
        let name = m.config.name.as_str();
        let instances: Vec<Value> = m
            .pool
            .instances()
            .iter()
            .map(|i| {
                let in_flight = stats
                    .instances
                    .iter()
                    .find(|s| s.id == i.id)
                    .map_or(0, |s| s.in_flight);
                json!({
                    "id": i.id.0, "pid": i.pid, "state": i.state, "tier": "hot",
                    "started_from": i.started_from, "in_flight": in_flight,
                    "startup_ms": i.startup_ms, "age_s": i.age_s,
                    "gpu": i.gpu.map(|g| g.0), "gpu_memory_bytes": i.gpu.map(|g| g.1),
                })
            })
            .collect();
        let cold_starts: u64 = ["template", "snapshot", "source", "exec"]
            .iter()
            .map(|tier| {
                self.metrics
                    .cold_starts
                    .with_label_values(&[name, tier])
                    .get()
            })
            .sum();
        json!({
            "name": name,
            "kind": m.kind,
            "device": m.config.device,
            "source": m.config.source.display().to_string(),
            "ready_instances": stats.ready_instances,
            "starting_instances": m.pool.starting(),
            "desired_instances": decision.instances,
            "panic": decision.in_panic(),
            "queue_depth": stats.queue_depth,
            "in_flight": stats.in_flight,
            "cold_starts": cold_starts,
            "min_instances": scaling.min_instances,
            "max_instances": scaling.max_instances,
            "override": m.override_state(),
            "accepting": !m.admission.is_closed(),
            "instances": instances,
            "failure": m.pool.failure(),
            "tier": m.pool.tier(),
            "template": m.pool.template_info().map(|t| json!({
                "tier": "template", "pid": t.pid,
                "startup_ms": t.startup_ms, "age_s": t.age_s,
            })),
        })
    }
}
