//! Time to first token of a streamed generation: for each repetition a new
//! connection, the request sent, the clock read when the first event with
//! generated text arrives and when `data: [DONE]` does. Requests run one
//! after another, so each sees an idle server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

/// One measurement run.
pub struct Ttft {
    /// `HOST:PORT`.
    pub address: String,
    /// The request path.
    pub path: String,
    /// The JSON body (with `"stream": true`).
    pub body: Vec<u8>,
    /// Measured requests (after one unmeasured).
    pub reps: usize,
}

impl Ttft {
    /// Runs the requests; a JSON report of first-token and whole times.
    pub fn run(&self) -> Result<serde_json::Value> {
        self.once().context("warm-up request")?;
        let mut first = Vec::new();
        let mut whole = Vec::new();
        let mut tokens = 0;
        for _ in 0..self.reps {
            let (f, w, n) = self.once()?;
            first.push(f);
            whole.push(w);
            tokens = n;
        }
        let ms = |v: &mut Vec<Duration>| {
            v.sort();
            let mean = v.iter().sum::<Duration>().as_secs_f64() / v.len() as f64;
            json!({
                "p50_ms": v[v.len() / 2].as_secs_f64() * 1e3,
                "min_ms": v[0].as_secs_f64() * 1e3,
                "max_ms": v[v.len() - 1].as_secs_f64() * 1e3,
                "mean_ms": mean * 1e3,
            })
        };
        Ok(json!({
            "address": self.address,
            "path": self.path,
            "reps": self.reps,
            "events_per_stream": tokens,
            "first_token": ms(&mut first),
            "whole_stream": ms(&mut whole),
        }))
    }

    /// One request: time to the first text event, to `[DONE]`, and the
    /// number of text events.
    pub fn once(&self) -> Result<(Duration, Duration, usize)> {
        let mut stream = TcpStream::connect(&self.address)
            .with_context(|| format!("connecting to {}", self.address))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.path,
            self.body.len()
        )
        .into_bytes();
        request.extend_from_slice(&self.body);
        let start = Instant::now();
        stream.write_all(&request)?;
        let mut seen = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 16384];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                bail!(
                    "the stream ended without data: [DONE]: {}",
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.extend_from_slice(&buf[..n]);
            if first.is_none() && has_text(&seen) {
                first = Some(start.elapsed());
            }
            if seen.windows(12).any(|w| w == b"data: [DONE]") {
                let whole = start.elapsed();
                let events = String::from_utf8_lossy(&seen).matches("data: {").count();
                return Ok((first.unwrap_or(whole), whole, events));
            }
        }
    }
}

/// Whether an event with generated text has arrived: a completion's
/// non-empty `"text"` or a chat chunk's non-empty `"content"`.
fn has_text(seen: &[u8]) -> bool {
    let s = String::from_utf8_lossy(seen);
    ["\"text\":\"", "\"content\":\""].iter().any(|key| {
        s.match_indices(key)
            .any(|(i, _)| !s[i + key.len()..].starts_with('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_events_are_recognised() {
        assert!(!has_text(
            b"data: {\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}"
        ));
        assert!(has_text(b"data: {\"delta\":{\"content\":\"Hi\"}}"));
        assert!(has_text(b"data: {\"choices\":[{\"text\":\" a\"}]}"));
    }
}
