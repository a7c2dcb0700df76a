//! The closed-loop generator: a fixed number of clients, each sending its
//! next request when the last one is answered. It finds a server's
//! capacity (its throughput at saturation), not its behaviour under
//! overload: the offered load adapts to the server.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::http::{Conn, Target};
use crate::stats::{Outcome, Tally};

/// A closed-loop run.
pub struct ClosedLoop {
    /// Where to send.
    pub target: Target,
    /// The rendered request.
    pub request: Vec<u8>,
    /// Clients, each with its own connection.
    pub concurrency: usize,
    /// How long to send for.
    pub duration: Duration,
}

impl ClosedLoop {
    /// Runs the clients and reports as JSON.
    pub async fn run(self) -> Result<Value> {
        let start = Instant::now();
        let end = start + self.duration;
        let request: std::sync::Arc<[u8]> = self.request.into();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            let (target, request) = (self.target.clone(), request.clone());
            clients.spawn(async move { client(&target, &request, end).await });
        }
        let mut tally = Tally::default();
        while let Some(t) = clients.join_next().await {
            let t = t?;
            for (outcome, latency) in t {
                tally.record(&outcome, latency);
            }
        }
        let elapsed = start.elapsed();
        let (statuses, errors) = tally.report(elapsed);
        Ok(json!({
            "mode": "closed-loop",
            "url": format!("http://{}{}", self.target.authority, self.target.path),
            "connect": self.target.addr.to_string(),
            "concurrency": self.concurrency,
            "duration_s": elapsed.as_secs_f64(),
            "requests": tally.total(),
            "statuses": statuses,
            "errors": errors,
        }))
    }
}

/// One client: request after request until `end`; reconnects when the
/// server closes or the connection fails.
async fn client(target: &Target, request: &[u8], end: Instant) -> Vec<(Outcome, Duration)> {
    let mut out = Vec::new();
    let mut conn: Option<Conn> = None;
    while Instant::now() < end {
        let t0 = Instant::now();
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(&target.addr).await {
                Ok(c) => c,
                Err(e) => {
                    out.push((Outcome::Error(format!("{e:#}")), t0.elapsed()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut c = c;
        match c.send(request).await {
            Ok(r) => {
                out.push((Outcome::Status(r.status), t0.elapsed()));
                if !r.close {
                    conn = Some(c);
                }
            }
            Err(e) => out.push((Outcome::Error(format!("{e:#}")), t0.elapsed())),
        }
    }
    out
}
