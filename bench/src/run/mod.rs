//! `thaw-bench run SCENARIO`: starts what the scenario needs (a gateway on
//! the operator's config, baselines), drives load, and writes
//! `report.json` (every figure, with the machine, versions and config),
//! `report.md` (a table per scenario with its baseline and the ratio) and
//! SVG plots into the output directory.

mod gateway;
mod plot;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub use scenarios::Scenario;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// The scenario.
    pub scenario: Scenario,
    /// Where `thaw` and `thaw-worker` are.
    pub bin_dir: PathBuf,
    /// The operator's config (the model under test is taken from it).
    pub config: PathBuf,
    /// The model under test; the config's first model when absent.
    pub model: Option<String>,
    /// The output directory.
    pub out: PathBuf,
    /// Each scenario in under a minute (CI smoke tests).
    pub quick: bool,
    /// A Python with sentence-transformers (the cold scenario's baseline).
    pub python: Option<PathBuf>,
    /// A trace CSV (Azure Functions 2019 shape) for `trace` and `cost`.
    pub trace: PathBuf,
    /// Price of an always-on instance, per hour.
    pub price_always_on: f64,
    /// Price of a serverless instance, per hour of instance time.
    pub price_serverless: f64,
}

impl RunArgs {
    /// A phase's length: `full` normally, `quick` with `--quick`.
    fn length(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }
}

/// One scenario's results.
pub struct Report {
    /// Every figure.
    pub figures: Value,
    /// Markdown: the scenario's tables.
    pub markdown: String,
    /// The plots written, relative to the output directory.
    pub plots: Vec<String>,
}

/// Runs the scenario and writes the report; returns `report.json`'s content.
pub fn run(args: &RunArgs) -> Result<Value> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = std::time::SystemTime::now();
    let report = scenarios::run(args)?;
    let json = json!({
        "scenario": args.scenario.name(),
        "quick": args.quick,
        "started_unix_s": started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": machine(),
        "versions": {"thaw_bench": env!("CARGO_PKG_VERSION"), "git": git_commit(&args.config)},
        "config": args.config,
        "model": args.model,
        "figures": report.figures,
        "plots": report.plots,
    });
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    let mut md = format!(
        "# thaw-bench run {}{}\n\n{}\n\n",
        args.scenario.name(),
        if args.quick { " --quick" } else { "" },
        machine_line(&json["machine"])
    );
    md.push_str(&report.markdown);
    for p in &report.plots {
        md.push_str(&format!("\n![{p}]({p})\n"));
    }
    std::fs::write(args.out.join("report.md"), md)?;
    Ok(json)
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (memory_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

fn machine_line(m: &Value) -> String {
    format!(
        "Machine: {} cores of {}, {} GiB, Linux {}; load average at the start: {}.",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg"].as_str().unwrap_or("?")
    )
}

fn git_commit(near: &Path) -> Value {
    let dir = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(Value::Null, |o| {
            json!(String::from_utf8_lossy(&o.stdout).trim())
        })
}
