//! The open-loop generator: requests leave on a fixed schedule whatever the
//! server does, so an overloaded server meets the load it would meet from
//! independent clients. Latency is measured from each request's scheduled
//! time, so a late send (all connections busy) counts against the server,
//! not for it (no coordinated omission); `latency_from_send_us` is the same
//! without the send lag (the timer's resolution is a millisecond), which is
//! what to read for the server's own time to answer, e.g. to shed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::http::{Conn, Target};
use crate::stats::{Latency, Outcome, Tally};

/// An open-loop run.
pub struct OpenLoop {
    /// Where to send.
    pub target: Target,
    /// The rendered request.
    pub request: Vec<u8>,
    /// When each request leaves, from the start (in order).
    pub schedule: Vec<Duration>,
    /// The run's length (the schedule's window; rates are over it).
    pub duration: Duration,
    /// Most connections open at once.
    pub connections: usize,
    /// How long to wait for the last responses after the sending stops.
    pub drain: Duration,
}

/// Connections shared by the requests in flight.
struct Pool {
    target: Target,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
}

/// One request's record.
struct Record {
    id: u64,
    outcome: Outcome,
    /// From the scheduled send to the end of the response.
    latency: Duration,
    /// From the scheduled send to the actual one.
    lag: Duration,
    /// When the response ended, from the start of the run.
    done: Duration,
}

impl OpenLoop {
    /// Runs the schedule and reports as JSON.
    pub async fn run(self) -> Result<Value> {
        let total = self.schedule.len() as u64;
        let schedule = self.schedule;
        let pool = Arc::new(Pool {
            target: self.target.clone(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(self.connections),
        });
        let request: Arc<[u8]> = self.request.into();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let now = Instant::now();
            while sent < total {
                let at = start + schedule[sent as usize];
                if at > now {
                    break;
                }
                let (pool, request, tx) = (pool.clone(), request.clone(), tx.clone());
                tokio::spawn(async move {
                    let record = one(&pool, &request, sent, at, start).await;
                    // The collector outlives every sender unless it gave up.
                    let _ = tx.send(record);
                });
                sent += 1;
            }
            if sent < total {
                tokio::time::sleep_until(start + schedule[sent as usize]).await;
            }
        }
        let send_time = start.elapsed();
        drop(tx);
        let give_up = Instant::now() + self.drain;
        let mut seen = vec![0u8; total as usize];
        let mut tally = Tally::default();
        let mut from_send = Tally::default();
        let mut lag = Latency::default();
        let mut ok_in_window = 0u64;
        let mut timeline = Timeline::default();
        let mut ok_latency = Latency::default();
        while let Ok(Some(r)) = tokio::time::timeout_at(give_up, rx.recv()).await {
            timeline.record(&r);
            if matches!(r.outcome, Outcome::Status(200..=299)) {
                ok_latency.record(r.latency);
            }
            if let Some(s) = seen.get_mut(r.id as usize) {
                *s = s.saturating_add(1);
            }
            tally.record(&r.outcome, r.latency);
            from_send.record(&r.outcome, r.latency.saturating_sub(r.lag));
            lag.record(r.lag);
            if matches!(r.outcome, Outcome::Status(200..=299)) && r.done <= self.duration {
                ok_in_window += 1;
            }
        }
        let unanswered = seen.iter().filter(|&&n| n == 0).count();
        let duplicated = seen.iter().filter(|&&n| n > 1).count();
        let secs = self.duration.as_secs_f64();
        let (mut statuses, errors) = tally.report(self.duration);
        let (sent_statuses, _) = from_send.report(self.duration);
        for (k, v) in statuses.as_object_mut().into_iter().flatten() {
            v["latency_from_send_us"] = sent_statuses[k]["latency_us"].clone();
        }
        Ok(json!({
            "mode": "open-loop",
            "url": format!("http://{}{}", self.target.authority, self.target.path),
            "connect": self.target.addr.to_string(),
            "rate_per_s": total as f64 / self.duration.as_secs_f64().max(f64::MIN_POSITIVE),
            "duration_s": secs,
            "send_time_s": send_time.as_secs_f64(),
            "connections": self.connections,
            "sent": sent,
            "outcomes": tally.total(),
            "unanswered": unanswered,
            "duplicated": duplicated,
            "each_request_one_outcome": unanswered == 0 && duplicated == 0
                && tally.total() == sent,
            "goodput_per_s": ok_in_window as f64 / secs,
            "send_lag_us": lag.summary(),
            "statuses": statuses,
            "errors": errors,
            "ok_latency_cdf_us": ok_latency.cdf(),
            "timeline": timeline.report(),
        }))
    }
}

/// Per-second counts by when each request ended, for plots over time.
#[derive(Default)]
struct Timeline {
    seconds: Vec<[u64; 4]>,
}

impl Timeline {
    /// Slots: 2xx, 429, other statuses, errors.
    fn record(&mut self, r: &Record) {
        let second = r.done.as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, [0; 4]);
        }
        let slot = match r.outcome {
            Outcome::Status(200..=299) => 0,
            Outcome::Status(429) => 1,
            Outcome::Status(_) => 2,
            Outcome::Error(_) => 3,
        };
        self.seconds[second][slot] += 1;
    }

    fn report(&self) -> Value {
        Value::Array(
            self.seconds
                .iter()
                .enumerate()
                .map(|(t, c)| json!({"t": t, "ok": c[0], "shed": c[1], "other": c[2], "errors": c[3]}))
                .collect(),
        )
    }
}

/// Sends one request scheduled at `at` on an idle connection or a new one.
async fn one(pool: &Pool, request: &[u8], id: u64, at: Instant, start: Instant) -> Record {
    let (outcome, lag) = match pool.slots.acquire().await {
        Ok(_slot) => {
            let lag = at.elapsed();
            (exchange(pool, request).await, lag)
        }
        Err(_) => (
            Outcome::Error("connection pool closed".into()),
            at.elapsed(),
        ),
    };
    Record {
        id,
        outcome,
        latency: at.elapsed(),
        lag,
        done: start.elapsed(),
    }
}

/// One request and response; the connection goes back to the pool when
/// the server keeps it open. A reused connection that fails is retried
/// once on a fresh one: the server may have closed it while it was idle.
async fn exchange(pool: &Pool, request: &[u8]) -> Outcome {
    let idle = pool.idle.lock().ok().and_then(|mut v| v.pop());
    if let Some(conn) = idle {
        if let Ok(outcome) = exchange_on(pool, conn, request).await {
            return outcome;
        }
    }
    match Conn::connect(&pool.target.addr).await {
        Ok(conn) => exchange_on(pool, conn, request)
            .await
            .unwrap_or_else(|e| Outcome::Error(format!("{e:#}"))),
        Err(e) => Outcome::Error(format!("{e:#}")),
    }
}

/// One request and response on `conn`.
async fn exchange_on(pool: &Pool, mut conn: Conn, request: &[u8]) -> Result<Outcome> {
    let r = conn.send(request).await?;
    if !r.close {
        if let Ok(mut v) = pool.idle.lock() {
            v.push(conn);
        }
    }
    Ok(Outcome::Status(r.status))
}
