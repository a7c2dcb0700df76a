//! `thaw-bench cold-start`: what a cold start costs from each warmth tier,
//! for one embedding model, in one run (bench/cold-start.sh drives it):
//!
//! - exec: a plain `thaw-worker` on the source directory, and on the
//!   snapshot (no template): process start to the first response;
//! - template start: `thaw-worker --template` on the snapshot to its
//!   `template_ready` (the snapshot tier's extra cost), with its phases;
//! - fork: a worker forked from a warm template to its first response, with
//!   its phases; `--forks` workers forked at once to all ready; the memory
//!   (PSS) of those workers and their template against one exec'd worker;
//! - through the gateway: warm latency, and the first response after scale
//!   to zero from the template tier and from the snapshot tier
//!   (`keep_template = "0s"`), with the gateway's phase histograms;
//! - the seed's approach: a fresh Python process with sentence-transformers
//!   (`--python`), start to its answer, and its peak memory.
//!
//! Every figure is measured here, in this run; a baseline that cannot run is
//! reported as skipped with the reason.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(120);

/// The benchmark's inputs.
#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Where `thaw` and `thaw-worker` are.
    pub bin_dir: PathBuf,
    /// The embedding model's source directory.
    pub source: PathBuf,
    /// Repetitions of each cold start.
    pub reps: usize,
    /// Workers forked at once for the fan-out.
    pub forks: usize,
    /// A Python with sentence-transformers, for the baseline.
    pub python: Option<PathBuf>,
    /// The baseline's script.
    pub python_script: PathBuf,
    /// Scratch directory.
    pub work: PathBuf,
}

const BODY: &str = r#"{"model":"minilm","input":"A short sentence to embed."}"#;

/// A process with its stdout messages on a channel.
pub(crate) struct Spawned {
    child: Child,
    lines: Receiver<Value>,
}

impl Spawned {
    pub(crate) fn start(mut cmd: Command) -> Result<Spawned> {
        // As the gateway starts its workers and templates.
        cmd.env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(Spawned { child, lines })
    }

    /// The first message whose `event` is `event` (or a plain line starting
    /// with it).
    pub(crate) fn wait(&self, event: &str) -> Result<Value> {
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no {event:?} from the process"))?;
            if m["event"] == event || m.as_str().is_some_and(|s| s.starts_with(event)) {
                return Ok(m);
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`connection: close`) to `HOST:PORT` or `unix:PATH`.
pub(crate) fn post(address: &str, path: &str, body: &str) -> Result<(u16, Vec<(String, String)>)> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    get_or_post(address, request.as_bytes())
}

pub(crate) fn get(address: &str, path: &str) -> Result<Vec<u8>> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let mut s = std::net::TcpStream::connect(address)?;
    s.write_all(request.as_bytes())?;
    s.read_to_end(&mut buf)?;
    let start = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    Ok(buf.split_off(start))
}

fn get_or_post(address: &str, request: &[u8]) -> Result<(u16, Vec<(String, String)>)> {
    let mut buf = Vec::new();
    if let Some(path) = address.strip_prefix("unix:") {
        let mut s = UnixStream::connect(path).with_context(|| format!("connecting {path}"))?;
        s.write_all(request)?;
        s.read_to_end(&mut buf)?;
    } else {
        let mut s = std::net::TcpStream::connect(address)?;
        s.set_nodelay(true)?;
        s.write_all(request)?;
        s.read_to_end(&mut buf)?;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(&buf).context("parsing the response")?;
    let status = response.code.unwrap_or_default();
    let headers = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    if status != 200 {
        bail!("status {status} from {address}");
    }
    Ok((status, headers))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, min, max and mean of `samples` (milliseconds).
fn summary(samples: &[f64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    json!({"median_ms": median, "min_ms": s[0], "max_ms": s[s.len() - 1], "mean_ms": mean, "n": s.len()})
}

fn median(v: &Value) -> f64 {
    v["median_ms"].as_f64().unwrap_or(f64::NAN)
}

/// `Pss:` and `Rss:` of `/proc/PID/smaps_rollup`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_default()
    };
    Ok((field("Pss:"), field("Rss:")))
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

impl ColdStart {
    fn worker(&self) -> PathBuf {
        self.bin_dir.join("thaw-worker")
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.sock"))
    }

    /// Runs every measurement; returns the report.
    pub fn run(&self) -> Result<Value> {
        std::fs::create_dir_all(&self.work)?;
        let snapshot = self.work.join("snapshot");
        let t = Instant::now();
        let status = Command::new(self.bin_dir.join("thaw"))
            .args(["snapshot", "build"])
            .arg(&self.source)
            .arg("--out")
            .arg(&snapshot)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("thaw snapshot build failed: {status}");
        }
        let build_ms = ms(t.elapsed());
        eprintln!("snapshot build: {build_ms:.0} ms");

        let (exec_source, one_worker) = self.exec(&self.source, "exec-source")?;
        let (exec_snapshot, _) = self.exec(&snapshot, "exec-snapshot")?;
        let templates = self.templates(&snapshot, one_worker)?;
        let gateway = self.gateway()?;
        let python = self.python();

        let warm = median(&gateway["warm"]);
        let template = median(&gateway["template_tier"]);
        let snapshot_tier = median(&gateway["snapshot_tier"]);
        let ratios = json!({
            "template_tier_minus_warm_ms": template - warm,
            "snapshot_tier_minus_warm_ms": snapshot_tier - warm,
            "python_over_template_tier": median(&python["start_to_answer"]) / template,
            "python_over_snapshot_tier": median(&python["start_to_answer"]) / snapshot_tier,
            "exec_source_over_template_tier": median(&exec_source["start_to_first_response"]) / template,
        });
        Ok(json!({
            "model": self.source,
            "reps": self.reps,
            "snapshot_build_ms": build_ms,
            "exec_source": exec_source,
            "exec_snapshot": exec_snapshot,
            "template": templates,
            "gateway": gateway,
            "python_sentence_transformers": python,
            "derived": ratios,
        }))
    }

    /// `reps` plain execs of `thaw-worker` on `model`, each to its first
    /// response; returns the figures and the memory of one such worker
    /// after its first response.
    fn exec(&self, model: &Path, label: &str) -> Result<(Value, (u64, u64))> {
        let (mut total, mut load) = (Vec::new(), Vec::new());
        let mut memory_kib = (0, 0);
        for rep in 0..self.reps {
            let socket = self.socket(&format!("{label}-{rep}"));
            let t = Instant::now();
            let mut cmd = Command::new(self.worker());
            cmd.arg("--model")
                .arg(model)
                .args(["--name", "minilm", "--listen"])
                .arg(format!("unix:{}", socket.display()));
            let w = Spawned::start(cmd)?;
            let ready = w.wait("ready")?;
            post(
                &format!("unix:{}", socket.display()),
                "/v1/embeddings",
                BODY,
            )?;
            total.push(ms(t.elapsed()));
            load.push(ready["load_ms"].as_f64().unwrap_or_default());
            memory_kib = memory(w.pid())?;
        }
        eprintln!("{label}: {}", summary(&total));
        Ok((
            json!({
                "start_to_first_response": summary(&total),
                "worker_load": summary(&load),
                "one_worker_pss_kib": memory_kib.0,
                "one_worker_rss_kib": memory_kib.1,
            }),
            memory_kib,
        ))
    }

    fn start_template(&self, snapshot: &Path, name: &str) -> Result<(Spawned, Value, f64)> {
        let control = self.socket(name);
        let t = Instant::now();
        let mut cmd = Command::new(self.worker());
        cmd.arg("--model")
            .arg(snapshot)
            .args(["--name", "minilm", "--lifeline", "--template"])
            .arg(format!("unix:{}", control.display()));
        let template = Spawned::start(cmd)?;
        let ready = template.wait("template_ready")?;
        Ok((template, ready, ms(t.elapsed())))
    }

    /// Forks one worker from the template at `control`; returns its ready
    /// message and the open connection (the child's lifetime channel).
    fn fork(&self, control: &Path, id: u64) -> Result<(Value, UnixStream, String)> {
        let socket = self.socket(&format!("fork-{id}"));
        let mut conn = UnixStream::connect(control)?;
        conn.set_read_timeout(Some(READY))?;
        let request = json!({"op": "fork", "id": id, "socket": socket});
        writeln!(conn, "{request}")?;
        let mut reader = BufReader::new(conn.try_clone()?);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("the template closed the connection");
            }
            let m: Value = serde_json::from_str(&line).unwrap_or_default();
            match m["event"].as_str() {
                Some("ready") => return Ok((m, conn, format!("unix:{}", socket.display()))),
                Some("error") => bail!("fork refused: {m}"),
                _ => continue,
            }
        }
    }

    fn templates(&self, snapshot: &Path, one_worker: (u64, u64)) -> Result<Value> {
        // The snapshot tier's template start, `reps` times.
        let (mut start, mut open, mut build) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..self.reps {
            let (_t, ready, took) = self.start_template(snapshot, &format!("template-{rep}"))?;
            start.push(took);
            open.push(ready["open_ms"].as_f64().unwrap_or_default());
            build.push(ready["build_ms"].as_f64().unwrap_or_default());
        }
        eprintln!("template start: {}", summary(&start));

        let (template, _, _) = self.start_template(snapshot, "template")?;
        let control = self.socket("template");
        let template_pid = template.pid();
        let (mut total, mut fork, mut init, mut first) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..self.reps {
            let t = Instant::now();
            let (ready, _conn, address) = self.fork(&control, rep as u64)?;
            let forked = t.elapsed();
            post(&address, "/v1/embeddings", BODY)?;
            total.push(ms(t.elapsed()));
            first.push(ms(t.elapsed() - forked));
            fork.push(ready["fork_ms"].as_f64().unwrap_or_default());
            init.push(ready["load_ms"].as_f64().unwrap_or_default());
            kill(ready["pid"].as_u64().unwrap_or_default() as u32);
        }
        eprintln!("fork to first response: {}", summary(&total));

        // Fan-out: `forks` at once, to all ready.
        let t = Instant::now();
        let children: Vec<(Value, UnixStream, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.forks)
                .map(|i| {
                    s.spawn({
                        let control = &control;
                        move || self.fork(control, 1000 + i as u64)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("fork thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let fan_out_ms = ms(t.elapsed());
        eprintln!(
            "{} forks at once, all ready: {fan_out_ms:.1} ms",
            self.forks
        );
        for (_, _, address) in &children {
            post(address, "/v1/embeddings", BODY)?;
        }
        let (mut pss, mut rss) = (0u64, 0u64);
        for (ready, _, _) in &children {
            let (p, r) = memory(ready["pid"].as_u64().unwrap_or_default() as u32)?;
            pss += p;
            rss += r;
        }
        let (template_pss, template_rss) = memory(template_pid)?;
        for (ready, _, _) in &children {
            kill(ready["pid"].as_u64().unwrap_or_default() as u32);
        }
        let workers_and_template = pss + template_pss;
        eprintln!(
            "memory: {} forked workers PSS {pss} KiB + template {template_pss} KiB; one exec'd worker {} KiB",
            self.forks, one_worker.0
        );
        Ok(json!({
            "template_start": summary(&start),
            "template_snapshot_open": summary(&open),
            "template_model_build": summary(&build),
            "fork_to_first_response": summary(&total),
            "fork": summary(&fork),
            "child_init": summary(&init),
            "ready_to_first_response": summary(&first),
            "fan_out": {"workers": self.forks, "all_ready_ms": fan_out_ms},
            "memory": {
                "workers": self.forks,
                "workers_pss_kib": pss,
                "workers_rss_kib": rss,
                "template_pss_kib": template_pss,
                "template_rss_kib": template_rss,
                "one_exec_worker_pss_kib": one_worker.0,
                "workers_over_one_worker": pss as f64 / one_worker.0 as f64,
                "workers_and_template_over_one_worker": workers_and_template as f64 / one_worker.0 as f64,
            },
        }))
    }

    fn gateway(&self) -> Result<Value> {
        let config = format!(
            r#"[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "{state}"

[defaults.scaling]
stable_window = "2s"
panic_window = "1s"
scale_down_delay = "1s"
scale_to_zero_after = "1s"

[[models]]
name = "minilm"
source = "{source}"
[models.scaling]
keep_template = "1h"

[[models]]
name = "minilm-snapshot-tier"
source = "{source}"
[models.scaling]
keep_template = "0s"
"#,
            state = self.work.join("gateway-state").display(),
            source = self.source.display(),
        );
        let path = self.work.join("thaw.toml");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new(self.bin_dir.join("thaw"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--worker-bin")
            .arg(self.worker())
            .env("RUST_LOG", "warn");
        let g = Spawned::start(cmd)?;
        let ready = g.wait("ready")?;
        let public = ready["address"].as_str().context("address")?.to_string();
        let admin = ready["admin"].as_str().context("admin")?.to_string();

        let status = |model: &str| -> Result<Value> {
            let s: Value = serde_json::from_slice(&get(&admin, "/admin/status")?)?;
            s["models"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == model).cloned())
                .context("model in status")
        };
        let wait_idle = |model: &str, template: bool| -> Result<()> {
            let deadline = Instant::now() + READY;
            loop {
                let s = status(model)?;
                let idle = s["instances"].as_array().is_some_and(Vec::is_empty)
                    && s["starting_instances"] == 0
                    && (s["template"].is_null() != template);
                if idle {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("{model} never went idle: {s}");
                }
                // The gateway scales down on its own timers.
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let body = |model: &str| BODY.replace("minilm", model);

        // Warm: the first request wakes it; then sequential requests.
        post(&public, "/v1/embeddings", &body("minilm"))?;
        let mut warm = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            post(&public, "/v1/embeddings", &body("minilm"))?;
            warm.push(ms(t.elapsed()));
        }
        eprintln!("gateway warm: {}", summary(&warm));

        let mut tiers = serde_json::Map::new();
        for (label, model, template) in [
            ("template_tier", "minilm", true),
            ("snapshot_tier", "minilm-snapshot-tier", false),
        ] {
            // The snapshot tier's snapshot is built by a first request.
            if model != "minilm" {
                post(&public, "/v1/embeddings", &body(model))?;
            }
            let (mut total, mut header) = (Vec::new(), Vec::new());
            for _ in 0..self.reps {
                wait_idle(model, template)?;
                let t = Instant::now();
                let (_, headers) = post(&public, "/v1/embeddings", &body(model))?;
                total.push(ms(t.elapsed()));
                if let Some((_, v)) = headers.iter().find(|(k, _)| k == "x-thaw-cold-start-ms") {
                    header.push(v.parse::<f64>().unwrap_or(f64::NAN));
                }
                let s = status(model)?;
                let from = s["instances"][0]["started_from"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let expected = if template { "template" } else { "snapshot" };
                if from != expected {
                    bail!("{label}: a worker started from {from}, not {expected}");
                }
            }
            eprintln!("gateway {label}: {}", summary(&total));
            tiers.insert(label.into(), summary(&total));
            tiers.insert(format!("{label}_header_cold_start"), summary(&header));
        }

        // The gateway's own phase histograms (means).
        let metrics = String::from_utf8_lossy(&get(&admin, "/metrics")?).into_owned();
        let mut phases = serde_json::Map::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("thaw_cold_start_duration_seconds_sum{") else {
                continue;
            };
            let (labels, sum) = rest.split_once("} ").unwrap_or_default();
            let count_line = format!("thaw_cold_start_duration_seconds_count{{{labels}}} ");
            let count = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&count_line))
                .and_then(|c| c.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            let sum: f64 = sum.parse().unwrap_or(f64::NAN);
            phases.insert(
                labels.to_string(),
                json!({"mean_ms": sum / count * 1e3, "count": count}),
            );
        }
        let mut report = json!({"warm": summary(&warm), "phases": phases});
        if let Some(fields) = report.as_object_mut() {
            fields.extend(tiers);
        }
        Ok(report)
    }

    fn python(&self) -> Value {
        let Some(python) = &self.python else {
            return json!({"skipped": "no Python with sentence-transformers given (--python or THAW_ST_PYTHON)"});
        };
        let probe = Command::new(python)
            .args(["-c", "import sentence_transformers"])
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return json!({"skipped": format!("{} cannot import sentence_transformers", python.display())});
        }
        let (mut total, mut peak) = (Vec::new(), Vec::new());
        for _ in 0..self.reps.clamp(1, 5) {
            let t = Instant::now();
            let mut cmd = Command::new(python);
            cmd.arg(&self.python_script)
                .arg(&self.source)
                .env("HF_HUB_OFFLINE", "1");
            let p = match Spawned::start(cmd) {
                Ok(p) => p,
                Err(e) => return json!({"skipped": e.to_string()}),
            };
            let answer = match p.wait("answered") {
                Ok(a) => a,
                Err(e) => return json!({"skipped": format!("the baseline did not answer: {e}")}),
            };
            total.push(ms(t.elapsed()));
            let kib = answer
                .as_str()
                .and_then(|s| s.split("peak_rss_kib=").nth(1))
                .and_then(|n| n.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            peak.push(kib / 1024.0);
        }
        eprintln!("python sentence-transformers: {}", summary(&total));
        json!({
            "start_to_answer": summary(&total),
            "peak_rss_mib": peak,
        })
    }
}
