//! The admin listener (loopback by default, never the public port):
//! `/healthz`, `/metrics` (Prometheus text) and `/admin/status` (JSON).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::models::Models;

/// The admin app.
pub struct Admin {
    /// The models.
    pub models: Arc<Models>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

type Response = http::Response<Vec<u8>>;

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    let mut r = http::Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    let len = r.body().len();
    r.headers_mut().insert("content-length", len.into());
    r
}

fn json_response(status: u16, body: &Value) -> Response {
    response(status, "application/json", body.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => response(200, "text/plain", b"ok\n".to_vec()),
            ("GET", "/metrics") => {
                self.refresh_gauges();
                response(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            ("GET", "/admin/status") => json_response(200, &self.status()),
            _ => json_response(
                404,
                &json!({"error": format!("no route for {method} {path}")}),
            ),
        }
    }
}

impl Admin {
    /// Mirrors live state into the gauges before a scrape.
    fn refresh_gauges(&self) {
        for m in self.models.all() {
            let name = m.config.name.as_str();
            let stats = m.admission.stats();
            self.metrics
                .queue_depth
                .with_label_values(&[name])
                .set(stats.queue_depth as i64);
            let instances = m.pool.instances();
            let draining = instances.iter().filter(|i| i.state == "draining").count();
            let gauges = [
                ("ready", instances.len() - draining),
                ("draining", draining),
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
    }

    /// `/admin/status`: every model with its instances and queue.
    pub fn status(&self) -> Value {
        let models: Vec<Value> = self
            .models
            .all()
            .iter()
            .map(|m| {
                let stats = m.admission.stats();
                let decision = *m.decision.borrow();
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
                        })
                    })
                    .collect();
                json!({
                    "name": m.config.name,
                    "kind": m.kind,
                    "ready_instances": stats.ready_instances,
                    "starting_instances": m.pool.starting(),
                    "desired_instances": decision.instances,
                    "panic": decision.in_panic(),
                    "queue_depth": stats.queue_depth,
                    "in_flight": stats.in_flight,
                    "min_instances": m.config.scaling.min_instances,
                    "max_instances": m.config.scaling.max_instances,
                    "instances": instances,
                    "tier": m.pool.tier(),
                    "template": m.pool.template_info().map(|t| json!({
                        "tier": "template", "pid": t.pid,
                        "startup_ms": t.startup_ms, "age_s": t.age_s,
                    })),
                })
            })
            .collect();
        json!({"models": models})
    }
}
