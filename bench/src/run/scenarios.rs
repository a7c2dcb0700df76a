//! The scenarios: each starts its gateway (and baselines), drives load, and
//! returns its figures, tables and plots.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::gateway::{workload, BaseConfig, Gateway};
use super::plot::{self, Series};
use super::{Report, RunArgs};
use crate::closed_loop::ClosedLoop;
use crate::cold_start::ColdStart;
use crate::http::Target;
use crate::open_loop::OpenLoop;
use crate::schedule::{read_trace, Schedule};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Latency against offered load on one warm instance; throughput at
    /// saturation against the worker alone.
    Warm,
    /// Scale-from-zero latency per warmth tier, with phases, against a
    /// plain exec and a fresh Python process.
    Cold,
    /// 1× to 5× capacity: goodput, sheds, admitted p99 against the
    /// deadline, Retry-After honesty.
    Overload,
    /// 0 → N instances under a step load: time to N ready, latency during
    /// the ramp.
    ScaleOut,
    /// The same worker straight, through thaw, and through nginx: latency
    /// added and throughput.
    Overhead,
    /// Load while the config is rewritten again and again: failures (must
    /// be none).
    Reload,
    /// A chat model: time to first token straight to a worker and through
    /// thaw, tokens/s of 1 and 4 concurrent streams, against llama.cpp.
    Chat,
    /// A bursty day replayed: latency, instances over time,
    /// instance-seconds, cold starts.
    Trace,
    /// The trace's instance-seconds against an always-on deployment sized
    /// for its peak, and the break-even utilization.
    Cost,
}

impl Scenario {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Warm => "warm",
            Scenario::Cold => "cold",
            Scenario::Overload => "overload",
            Scenario::ScaleOut => "scale-out",
            Scenario::Overhead => "overhead",
            Scenario::Reload => "reload",
            Scenario::Chat => "chat",
            Scenario::Trace => "trace",
            Scenario::Cost => "cost",
        }
    }
}

pub(super) fn run(args: &RunArgs) -> Result<Report> {
    let base = BaseConfig::load(&args.config, args.model.as_deref())?;
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(Duration::from_millis(120));
    let result = match args.scenario {
        Scenario::Warm => warm(args, &base, &progress),
        Scenario::Cold => cold(args, &base, &progress),
        Scenario::Overload => overload(args, &base, &progress),
        Scenario::ScaleOut => scale_out(args, &base, &progress),
        Scenario::Overhead => overhead(args, &base, &progress),
        Scenario::Reload => reload(args, &base, &progress),
        Scenario::Chat => chat(args, &base, &progress),
        Scenario::Trace | Scenario::Cost => trace(args, &base, &progress),
    };
    progress.finish_and_clear();
    result
}

fn int(v: i64) -> toml::Value {
    toml::Value::Integer(v)
}

fn text(v: &str) -> toml::Value {
    toml::Value::String(v.to_string())
}

/// Blocks on an async load generator (scenarios run on a blocking thread).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

async fn target(address: &str, path: &str) -> Result<Target> {
    Target::parse(&format!("http://{address}{path}"), None).await
}

/// Requests per second at saturation: a closed loop of `clients`.
fn capacity(
    address: &str,
    path: &str,
    body: &str,
    clients: usize,
    length: Duration,
) -> Result<(f64, Value)> {
    let report = block_on(async {
        let t = target(address, path).await?;
        let request = t.render(
            Some(body.as_bytes()),
            &[("content-type".into(), "application/json".into())],
        );
        ClosedLoop {
            target: t,
            request,
            concurrency: clients,
            duration: length,
        }
        .run()
        .await
    })?;
    let ok = report["statuses"]["200"]["count"].as_f64().unwrap_or(0.0);
    let secs = report["duration_s"].as_f64().unwrap_or(1.0);
    Ok((ok / secs, report))
}

/// An open-loop run of `schedule` over `length`.
fn open_loop(
    address: &str,
    path: &str,
    body: &str,
    schedule: &Schedule,
    length: Duration,
    drain: Duration,
) -> Result<Value> {
    block_on(async {
        let t = target(address, path).await?;
        let request = t.render(
            Some(body.as_bytes()),
            &[("content-type".into(), "application/json".into())],
        );
        OpenLoop {
            target: t,
            request,
            schedule: schedule.offsets(length),
            duration: length,
            // Enough that the server, not the generator, bounds what is in
            // flight: 5× an instance's capacity for a 2 s deadline.
            connections: 4096,
            drain,
        }
        .run()
        .await
    })
}

fn us_to_ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN) / 1e3
}

fn count(report: &Value, status: &str) -> u64 {
    report["statuses"][status]["count"].as_u64().unwrap_or(0)
}

fn cdf_series(name: &str, report: &Value) -> Series {
    Series {
        name: name.to_string(),
        points: report["ok_latency_cdf_us"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[1].as_f64()? / 1e3, p[0].as_f64()?)))
            .collect(),
    }
}

fn exactly_once(report: &Value) -> bool {
    report["each_request_one_outcome"] == true
}

/// `warm`: one instance kept ready; capacity at saturation through the
/// gateway and straight to a worker; then Poisson load at fractions of the
/// capacity, latency at each.
fn warm(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("warm");
    let config = base.render(
        &dir.join("state"),
        &[("min_instances", int(1)), ("max_instances", int(1))],
        &[],
    );
    progress.set_message(format!("warm: starting the gateway ({})", model.name));
    let g = Gateway::start_ready(&args.bin_dir, &dir, &config, &model.name)?;
    let (path, body) = workload(model);
    let sat = args.length(10.0, 3.0);
    let clients = 16;

    progress.set_message("warm: saturation through the gateway");
    let (thaw_capacity, thaw_sat) = capacity(&g.public, &path, &body, clients, sat)?;

    progress.set_message("warm: saturation straight to a worker (baseline)");
    let (worker, direct) = direct_worker(args, model)?;
    let (direct_capacity, direct_sat) = capacity(&direct, &path, &body, clients, sat)?;
    drop(worker);

    let fractions = if args.quick {
        vec![0.25, 0.75]
    } else {
        vec![0.25, 0.5, 0.75, 0.9]
    };
    let step = args.length(10.0, 3.0);
    let mut levels = Vec::new();
    let mut rows = String::new();
    let mut cdfs = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for f in &fractions {
        let rate = (thaw_capacity * f).max(1.0);
        progress.set_message(format!(
            "warm: {:.0} % of capacity ({rate:.0} req/s)",
            f * 100.0
        ));
        let r = open_loop(
            &g.public,
            &path,
            &body,
            &Schedule::Poisson { rate, seed: 42 },
            step,
            Duration::from_secs(10),
        )?;
        let lat = &r["statuses"]["200"]["latency_us"];
        rows.push_str(&format!(
            "| {:.0} % | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            f * 100.0,
            us_to_ms(&lat["p50"]),
            us_to_ms(&lat["p90"]),
            us_to_ms(&lat["p99"]),
            us_to_ms(&lat["p999"]),
            us_to_ms(&r["send_lag_us"]["p99"]),
            if exactly_once(&r) { "yes" } else { "**no**" }
        ));
        p50.push((rate, us_to_ms(&lat["p50"])));
        p99.push((rate, us_to_ms(&lat["p99"])));
        cdfs.push(cdf_series(&format!("{:.0} % load", f * 100.0), &r));
        levels.push(json!({"fraction": f, "rate_per_s": rate, "open_loop": r}));
    }
    let ratio = thaw_capacity / direct_capacity.max(f64::MIN_POSITIVE);
    let markdown = format!(
        "## warm: {name} ({kind})\n\n\
         Saturation, closed loop of {clients} clients for {sat:?}:\n\n\
         | figure | thaw | worker alone (baseline) | ratio |\n|---|---|---|---|\n\
         | requests/s | {thaw_capacity:.0} | {direct_capacity:.0} | {ratio:.2}× |\n\n\
         Poisson arrivals at fractions of thaw's capacity, {step:?} each (latency of 200s, ms):\n\n\
         | load | req/s | p50 | p90 | p99 | p99.9 | send lag p99 | one outcome each |\n|---|---|---|---|---|---|---|---|\n{rows}\n\
         A send lag far above a millisecond means the load generator, on the same machine, could not keep the schedule: \
         the latencies at that load are the generator's as much as thaw's.\n",
        name = model.name,
        kind = model.kind,
    );
    let mut plots = Vec::new();
    plot::lines(
        &args.out.join("warm-latency-cdf.svg"),
        "warm: latency CDF",
        "latency (ms)",
        "quantile",
        &cdfs,
        true,
    )?;
    plots.push("warm-latency-cdf.svg".to_string());
    plot::lines(
        &args.out.join("warm-latency-vs-load.svg"),
        "warm: latency against offered load",
        "offered load (req/s)",
        "latency (ms)",
        &[
            Series {
                name: "p50".into(),
                points: p50,
            },
            Series {
                name: "p99".into(),
                points: p99,
            },
        ],
        false,
    )?;
    plots.push("warm-latency-vs-load.svg".to_string());
    Ok(Report {
        figures: json!({
            "model": model.name,
            "capacity_per_s": thaw_capacity,
            "direct_capacity_per_s": direct_capacity,
            "capacity_vs_direct": ratio,
            "saturation": {"thaw": thaw_sat, "direct": direct_sat},
            "levels": levels,
        }),
        markdown,
        plots,
    })
}

/// A `thaw-worker` of the model on its own (the baseline without the
/// gateway), on a TCP port: the process and its address.
fn direct_worker(
    args: &RunArgs,
    model: &super::gateway::ModelUnderTest,
) -> Result<(crate::cold_start::Spawned, String)> {
    let mut cmd = std::process::Command::new(args.bin_dir.join("thaw-worker"));
    cmd.arg("--model").arg(&model.source).args([
        "--name",
        &model.name,
        "--kind",
        &model.kind,
        "--listen",
        "127.0.0.1:0",
    ]);
    let worker = crate::cold_start::Spawned::start(cmd)?;
    let address = worker.wait("ready")?["address"]
        .as_str()
        .context("worker address")?
        .to_string();
    Ok((worker, address))
}

/// `cold`: the cold-start benchmark (`thaw-bench cold-start`) on the model
/// under test, which must be an embedding model (the seed's baseline is
/// sentence-transformers).
fn cold(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    if model.kind != "embedding" {
        bail!(
            "the cold scenario measures an embedding model (its baseline is sentence-transformers); {} is {}: pass --model minilm",
            model.name,
            model.kind
        );
    }
    progress.set_message(format!(
        "cold: exec, template, fork and gateway tiers of {}",
        model.name
    ));
    let script = args.bin_dir.join("../../bench/baselines/st_cold_start.py");
    let bench = ColdStart {
        bin_dir: args.bin_dir.clone(),
        source: model.source.clone(),
        reps: if args.quick { 3 } else { 10 },
        forks: 8,
        python: args.python.clone(),
        python_script: if script.is_file() {
            script
        } else {
            "bench/baselines/st_cold_start.py".into()
        },
        work: args.out.join("cold"),
    };
    let r = bench.run()?;
    let median = |v: &Value| v["median_ms"].as_f64().unwrap_or(f64::NAN);
    let g = &r["gateway"];
    let warm = median(&g["warm"]);
    let tiers = [
        ("warm (no cold start)", median(&g["warm"])),
        ("template tier", median(&g["template_tier"])),
        ("snapshot tier", median(&g["snapshot_tier"])),
        (
            "plain exec of the worker",
            median(&r["exec_source"]["start_to_first_response"]),
        ),
    ];
    let python = &r["python_sentence_transformers"];
    let mut rows = String::new();
    for (name, ms) in tiers {
        rows.push_str(&format!("| {name} | {ms:.1} | {:+.1} |\n", ms - warm));
    }
    let baseline = if python["skipped"].is_string() {
        format!(
            "| Python + sentence-transformers (baseline) | skipped: {} | |\n",
            python["skipped"].as_str().unwrap_or("")
        )
    } else {
        let p = median(&python["start_to_answer"]);
        format!(
            "| Python + sentence-transformers (baseline) | {p:.1} | {:+.1} ({:.0}× the template tier) |\n",
            p - warm,
            p / median(&g["template_tier"])
        )
    };
    // Series are labelled `model="…",phase="…"`: this model's, by phase.
    let own = format!("model=\"{}\",phase=\"", model.name);
    let mut phase_rows = String::new();
    let mut bars = Vec::new();
    for (k, v) in g["phases"].as_object().into_iter().flatten() {
        let Some(phase) = k.strip_prefix(&own).map(|p| p.trim_end_matches('"')) else {
            continue;
        };
        let mean = v["mean_ms"].as_f64().unwrap_or(f64::NAN);
        phase_rows.push_str(&format!("| {phase} | {mean:.2} | {} |\n", v["count"]));
        bars.push((phase.to_string(), mean));
    }
    let markdown = format!(
        "## cold: {name}, {reps} repetitions (medians)\n\n\
         | first response | ms | over warm |\n|---|---|---|\n{rows}{baseline}\n\
         8 workers forked at once, all ready: {fan:.1} ms; their memory with the template: {mem:.2}× one exec'd worker (PSS).\n\n\
         Phases of the gateway's cold starts (means, ms):\n\n| phase | mean | count |\n|---|---|---|\n{phase_rows}",
        name = model.name,
        reps = bench.reps,
        fan = r["template"]["fan_out"]["all_ready_ms"].as_f64().unwrap_or(f64::NAN),
        mem = r["template"]["memory"]["workers_and_template_over_one_worker"].as_f64().unwrap_or(f64::NAN),
    );
    let mut plots = Vec::new();
    let tier_bars: Vec<(String, f64)> = tiers
        .iter()
        .map(|(n, v)| (n.split(' ').next().unwrap_or(n).to_string(), *v))
        .collect();
    plot::bars(
        &args.out.join("cold-tiers.svg"),
        "cold: first response by tier (ms)",
        "ms",
        &tier_bars,
    )?;
    plots.push("cold-tiers.svg".into());
    plot::bars(
        &args.out.join("cold-phases.svg"),
        "cold: gateway phases (mean ms)",
        "ms",
        &bars,
    )?;
    plots.push("cold-phases.svg".into());
    Ok(Report {
        figures: r,
        markdown,
        plots,
    })
}

/// `overload`: capacity of one instance, then Poisson load at 1× to 5× of
/// it with a 2 s queue deadline; polite clients that honour Retry-After
/// run beside the 3× load.
fn overload(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("overload");
    let deadline_ms = 2000.0;
    let config = base.render(
        &dir.join("state"),
        &[("min_instances", int(1)), ("max_instances", int(1))],
        &[("timeout", text("2s"))],
    );
    progress.set_message("overload: starting the gateway");
    let g = Gateway::start_ready(&args.bin_dir, &dir, &config, &model.name)?;
    // A heavier request where the model allows (eight sentences), so that
    // 5× the capacity is a rate the load generator can keep beside thaw.
    let (path, body) = heavy_workload(model);
    progress.set_message("overload: capacity");
    let (cap, _) = capacity(&g.public, &path, &body, 16, args.length(8.0, 2.0))?;
    let step = args.length(15.0, 3.0);
    let multiples: Vec<f64> = if args.quick {
        vec![1.0, 3.0]
    } else {
        vec![1.0, 2.0, 3.0, 4.0, 5.0]
    };
    let mut rows = String::new();
    let mut levels = Vec::new();
    let mut polite = Value::Null;
    let mut goodput_points = Vec::new();
    for m in &multiples {
        let rate = cap * m;
        progress.set_message(format!("overload: {m}× capacity ({rate:.0} req/s)"));
        let politeness = (*m == 3.0).then(|| {
            let (public, path, body) = (g.public.clone(), path.clone(), body.clone());
            std::thread::spawn(move || polite_clients(&public, &path, &body, 8))
        });
        let r = open_loop(
            &g.public,
            &path,
            &body,
            &Schedule::Poisson { rate, seed: 7 },
            step,
            Duration::from_secs(30),
        )?;
        if let Some(h) = politeness {
            polite = h
                .join()
                .map_err(|_| anyhow::anyhow!("polite clients panicked"))??;
        }
        let sent = r["sent"].as_f64().unwrap_or(1.0).max(1.0);
        let goodput = r["goodput_per_s"].as_f64().unwrap_or(0.0);
        let p99 = us_to_ms(&r["statuses"]["200"]["latency_us"]["p99"]);
        rows.push_str(&format!(
            "| {m}× | {rate:.0} | {goodput:.0} | {:.2} | {:.1} % | {} | {p99:.0} | {:.1} | {} |\n",
            goodput / cap,
            count(&r, "429") as f64 / sent * 100.0,
            count(&r, "504"),
            us_to_ms(&r["send_lag_us"]["p99"]),
            if exactly_once(&r) { "yes" } else { "**no**" }
        ));
        goodput_points.push((rate, goodput));
        levels.push(json!({"multiple": m, "rate_per_s": rate, "open_loop": r}));
    }
    let markdown = format!(
        "## overload: {name}, one instance, queue deadline {deadline_ms:.0} ms\n\n\
         Capacity (closed loop, 16 clients): {cap:.0} req/s. Poisson load at multiples of it, {step:?} each:\n\n\
         | load | req/s | goodput/s | goodput ÷ capacity | shed (429) | 504 | admitted p99 (ms) | send lag p99 (ms) | one outcome each |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n\
         A send lag far above a millisecond means the load generator, on the same machine, could not keep the \
         schedule (a model this fast needs a bigger machine for the generator than for thaw).\n\n\
         Retry-After honesty, 8 clients beside the 3× load that wait Retry-After after a 429 (up to 5 tries): \
         {ok} of {n} succeeded, {tries:.2} tries on average, {honest}.\n",
        name = model.name,
        ok = polite["succeeded"],
        n = polite["clients"],
        tries = polite["mean_tries"].as_f64().unwrap_or(f64::NAN),
        honest = if polite["succeeded"] == polite["clients"] { "every one" } else { "**not every one**" },
    );
    plot::lines(
        &args.out.join("overload-goodput.svg"),
        "overload: goodput against offered load",
        "offered (req/s)",
        "goodput (req/s)",
        &[Series {
            name: "goodput".into(),
            points: goodput_points,
        }],
        false,
    )?;
    Ok(Report {
        figures: json!({"model": model.name, "capacity_per_s": cap, "deadline_ms": deadline_ms, "levels": levels, "retry_after_clients": polite}),
        markdown,
        plots: vec!["overload-goodput.svg".into()],
    })
}

/// The workload, with eight inputs per request for an embedding model.
fn heavy_workload(model: &super::gateway::ModelUnderTest) -> (String, String) {
    if model.kind == "embedding" {
        let sentences = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
            "A man is riding a horse.",
            "A woman is playing violin.",
            "Two men pushed carts through the woods.",
            "A man is riding a white horse on an enclosed ground.",
            "A monkey is playing drums.",
        ];
        return (
            "/v1/embeddings".into(),
            json!({"model": model.name, "input": sentences}).to_string(),
        );
    }
    workload(model)
}

/// Clients that send one request each and, on a 429, wait its Retry-After
/// and try again (5 tries at most).
fn polite_clients(address: &str, path: &str, body: &str, clients: usize) -> Result<Value> {
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (address, path, body) = (address.to_string(), path.to_string(), body.to_string());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200 * i as u64));
                for attempt in 1..=5u32 {
                    match request_with_retry_after(&address, &path, &body) {
                        Ok((200, _)) => return (true, attempt),
                        Ok((429 | 503, wait)) => {
                            std::thread::sleep(Duration::from_secs(wait.unwrap_or(1)))
                        }
                        _ => std::thread::sleep(Duration::from_secs(1)),
                    }
                }
                (false, 5)
            })
        })
        .collect();
    let results: Vec<(bool, u32)> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let ok = results.iter().filter(|r| r.0).count();
    let tries = results.iter().map(|r| r.1 as f64).sum::<f64>() / results.len().max(1) as f64;
    Ok(json!({"clients": clients, "succeeded": ok, "mean_tries": tries}))
}

fn request_with_retry_after(address: &str, path: &str, body: &str) -> Result<(u16, Option<u64>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(&buf)?;
    let retry = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    Ok((response.code.unwrap_or(0), retry))
}

/// `scale-out`: the model at zero, then a step to a load that needs
/// `max_instances` instances: time to each instance count, latency while
/// they come.
fn scale_out(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("scale-out");
    let target_instances = 4u64;
    // The per-instance capacity first, on a separate gateway kept warm.
    let warm_config = base.render(
        &dir.join("warm-state"),
        &[("min_instances", int(1)), ("max_instances", int(1))],
        &[],
    );
    progress.set_message("scale-out: one instance's capacity");
    let per_instance = {
        let g = Gateway::start_ready(&args.bin_dir, &dir.join("warm"), &warm_config, &model.name)?;
        let (path, body) = workload(model);
        capacity(&g.public, &path, &body, 16, args.length(5.0, 2.0))?.0
    };
    let config = base.render(
        &dir.join("state"),
        &[
            ("min_instances", int(0)),
            ("max_instances", int(target_instances as i64)),
            ("target_concurrency", int(1)),
            ("max_concurrency", int(4)),
            ("panic_window", text("1s")),
            ("stable_window", text("4s")),
        ],
        &[("timeout", text("30s"))],
    );
    progress.set_message("scale-out: starting the gateway at zero");
    let g = Gateway::start(&args.bin_dir, &dir, &config)?;
    let (path, body) = workload(model);
    let length = args.length(20.0, 8.0);
    // 80 % of what one instance serves at saturation: its queue grows
    // until the autoscaler has added instances (target_concurrency 1).
    let rate = per_instance * 0.8;
    let watch = {
        let (admin, name) = (g.admin.clone(), model.name.clone());
        std::thread::spawn(move || watch_instances(&admin, &name, length + Duration::from_secs(2)))
    };
    progress.set_message(format!("scale-out: step 0 → {rate:.0} req/s"));
    let r = open_loop(
        &g.public,
        &path,
        &body,
        &Schedule::Constant { rate },
        length,
        Duration::from_secs(30),
    )?;
    let timeline = watch
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
    let time_to = |n: u64| {
        timeline
            .iter()
            .find(|p| p.1 >= n as f64)
            .map_or(Value::Null, |p| json!(p.0 * 1e3))
    };
    let mut rows = String::new();
    for n in 1..=target_instances {
        rows.push_str(&format!(
            "| {n} | {} |\n",
            time_to(n)
                .as_f64()
                .map_or("not reached".into(), |v| format!("{v:.0}"))
        ));
    }
    let lat = &r["statuses"]["200"]["latency_us"];
    let markdown = format!(
        "## scale-out: {name} from zero to {target_instances} instances\n\n\
         One instance's capacity: {per_instance:.0} req/s; step load {rate:.0} req/s for {length:?} \
         (target_concurrency 1, max_concurrency 4).\n\n| ready instances | ms after the step |\n|---|---|\n{rows}\n\
         Latency of 200s during the run (ms): p50 {:.1}, p99 {:.1}, max {:.1}; non-200: {}; one outcome each: {}.\n",
        us_to_ms(&lat["p50"]),
        us_to_ms(&lat["p99"]),
        us_to_ms(&lat["max"]),
        r["sent"].as_u64().unwrap_or(0).saturating_sub(count(&r, "200")),
        if exactly_once(&r) { "yes" } else { "**no**" },
        name = model.name,
    );
    let load: Vec<(f64, f64)> = r["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["t"].as_f64()?, p["ok"].as_f64()?)))
        .collect();
    plot::instances_and_load(
        &args.out.join("scale-out-instances.svg"),
        "scale-out: instances and load over time",
        &timeline,
        "200s per second",
        &load,
        target_instances as f64,
    )?;
    Ok(Report {
        figures: json!({
            "model": model.name, "per_instance_capacity_per_s": per_instance, "rate_per_s": rate,
            "time_to_instances_ms": (1..=target_instances).map(|n| json!({"instances": n, "ms": time_to(n)})).collect::<Vec<_>>(),
            "instances_over_time": timeline.iter().map(|p| json!([p.0, p.1])).collect::<Vec<_>>(),
            "open_loop": r,
        }),
        markdown,
        plots: vec!["scale-out-instances.svg".into()],
    })
}

/// `overhead`: closed loops of 1 and 16 clients straight to thaw's worker
/// (its unix socket), through thaw, and through nginx to the same socket.
fn overhead(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("overhead");
    let config = base.render(
        &dir.join("state"),
        &[
            ("min_instances", int(1)),
            ("max_instances", int(1)),
            ("target_concurrency", int(32)),
            ("max_concurrency", int(64)),
        ],
        &[],
    );
    progress.set_message("overhead: starting the gateway");
    let g = Gateway::start_ready(&args.bin_dir, &dir, &config, &model.name)?;
    let socket = find_socket(&dir.join("state"), &model.name)?;
    let (path, body) = workload(model);
    let nginx = Nginx::start(&dir.join("nginx"), &socket);
    let length = args.length(10.0, 3.0);
    let mut targets: Vec<(&str, Target)> = vec![
        (
            "worker (its socket)",
            block_on(Target::parse(
                &format!("http://worker{path}"),
                Some(socket.clone()),
            ))?,
        ),
        ("thaw", block_on(target(&g.public, &path))?),
    ];
    let nginx_note = match &nginx {
        Ok(n) => {
            targets.push(("nginx", block_on(target(&n.address, &path))?));
            String::new()
        }
        Err(e) => format!("nginx skipped: {e:#}.\n"),
    };
    let mut results = Vec::new();
    for clients in [1usize, 16] {
        for (name, t) in &targets {
            progress.set_message(format!("overhead: {name}, {clients} client(s)"));
            let request = t.render(
                Some(body.as_bytes()),
                &[("content-type".into(), "application/json".into())],
            );
            let r = block_on(
                ClosedLoop {
                    target: t.clone(),
                    request,
                    concurrency: clients,
                    duration: length,
                }
                .run(),
            )?;
            let rate = count(&r, "200") as f64 / r["duration_s"].as_f64().unwrap_or(1.0);
            results.push((clients, name.to_string(), rate, r));
        }
    }
    let find = |c: usize, n: &str| results.iter().find(|r| r.0 == c && r.1 == n);
    let mut rows = String::new();
    for (clients, name, rate, r) in &results {
        let lat = &r["statuses"]["200"]["latency_us"];
        let direct = find(*clients, "worker (its socket)").map_or(f64::NAN, |d| {
            us_to_ms(&d.3["statuses"]["200"]["latency_us"]["p50"])
        });
        let vs_nginx =
            find(*clients, "nginx").map_or("—".to_string(), |n| format!("{:.2}×", rate / n.2));
        rows.push_str(&format!(
            "| {clients} | {name} | {:.3} | {:.3} | {:+.0} | {rate:.0} | {vs_nginx} |\n",
            us_to_ms(&lat["p50"]),
            us_to_ms(&lat["p99"]),
            (us_to_ms(&lat["p50"]) - direct) * 1e3,
        ));
    }
    let markdown = format!(
        "## overhead: {name}, closed loops for {length:?}\n\n{nginx_note}\
         | clients | target | p50 (ms) | p99 (ms) | p50 added over the worker (µs) | req/s | req/s ÷ nginx |\n\
         |---|---|---|---|---|---|---|\n{rows}",
        name = model.name
    );
    let figures: Vec<Value> = results
        .iter()
        .map(|(c, n, rate, r)| json!({"clients": c, "target": n, "requests_per_s": rate, "closed_loop": r}))
        .collect();
    Ok(Report {
        figures: json!({"model": model.name, "runs": figures}),
        markdown,
        plots: Vec::new(),
    })
}

fn find_socket(state: &std::path::Path, model: &str) -> Result<std::path::PathBuf> {
    for run in std::fs::read_dir(state)?.flatten() {
        if !run.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        for f in std::fs::read_dir(run.path())?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{model}-")) && name.ends_with(".sock") {
                return Ok(f.path());
            }
        }
    }
    bail!("no worker socket of {model} under {}", state.display())
}

/// nginx (Debian's package) proxying to a unix socket with keep-alive.
struct Nginx {
    child: std::process::Child,
    address: String,
}

impl Nginx {
    fn start(dir: &std::path::Path, socket: &std::path::Path) -> Result<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .context("nginx is not installed (apt-get install nginx)")?;
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let user = if nix_is_root() { "user root;" } else { "" };
        let d = dir.display();
        let conf = format!(
            "{user}\nworker_processes {cores};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             upstream worker {{ server unix:{sock}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;\n\
             location / {{ proxy_pass http://worker; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
            cores = std::thread::available_parallelism().map_or(1, |n| n.get()),
            sock = socket.display(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {address}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, address })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// `reload`: constant load while the config is rewritten every half
/// second (a scaling knob toggled); every request must succeed.
fn reload(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("reload");
    let render = |target: i64| {
        base.render(
            &dir.join("state"),
            &[
                ("min_instances", int(1)),
                ("max_instances", int(2)),
                ("target_concurrency", int(target)),
                ("max_concurrency", int(32)),
            ],
            &[],
        )
    };
    progress.set_message("reload: starting the gateway");
    let g = Gateway::start_ready(&args.bin_dir, &dir, &render(8), &model.name)?;
    let (path, body) = workload(model);
    let (cap, _) = capacity(&g.public, &path, &body, 8, args.length(4.0, 1.5))?;
    let rate = (cap * 0.5).max(1.0);
    let length = args.length(20.0, 5.0);
    let reloads_before = g.counter("thaw_config_reloads_total", "")?;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (config, texts) = (dir.join("thaw.toml"), [render(4), render(8)]);
        std::thread::spawn(move || -> Result<u64> {
            let mut n = 0u64;
            while stop_rx.recv_timeout(Duration::from_millis(500)).is_err() {
                let tmp = config.with_extension("toml.new");
                std::fs::write(&tmp, &texts[(n % 2) as usize])?;
                std::fs::rename(&tmp, &config)?;
                n += 1;
            }
            Ok(n)
        })
    };
    progress.set_message(format!(
        "reload: {rate:.0} req/s while the config is rewritten every 0.5 s"
    ));
    let r = open_loop(
        &g.public,
        &path,
        &body,
        &Schedule::Constant { rate },
        length,
        Duration::from_secs(30),
    );
    let _ = stop_tx.send(());
    let writes = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let r = r?;
    // Give the last write its reload.
    std::thread::sleep(Duration::from_millis(300));
    let reloads = g.counter("thaw_config_reloads_total", "")? - reloads_before;
    let failures = r["sent"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(count(&r, "200"));
    let markdown = format!(
        "## reload: {name}, {rate:.0} req/s for {length:?}\n\n\
         | figure | value |\n|---|---|\n| config rewrites | {writes} |\n| reloads counted by the gateway | {reloads:.0} |\n\
         | requests sent | {} |\n| failures (anything but 200) | {failures} (must be 0) |\n| every request one outcome | {} |\n",
        r["sent"],
        if exactly_once(&r) { "yes" } else { "**no**" },
        name = model.name,
    );
    Ok(Report {
        figures: json!({"model": model.name, "rate_per_s": rate, "rewrites": writes, "reloads": reloads, "failures": failures, "open_loop": r}),
        markdown,
        plots: Vec::new(),
    })
}

/// `chat`: time to first token of a streamed completion, one request at a
/// time, straight to a worker and through thaw; tokens/s of 1 and 4
/// streams at once through thaw; llama.cpp's decode on the same GGUF.
fn chat(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    if model.kind != "chat" {
        bail!(
            "the chat scenario needs a chat model; {} is {}: pass --model smollm2",
            model.name,
            model.kind
        );
    }
    let dir = args.out.join("chat");
    let config = base.render(
        &dir.join("state"),
        &[
            ("min_instances", int(1)),
            ("max_instances", int(1)),
            ("target_concurrency", int(4)),
            ("max_concurrency", int(8)),
        ],
        &[],
    );
    progress.set_message("chat: starting the gateway and a worker");
    let g = Gateway::start_ready(&args.bin_dir, &dir, &config, &model.name)?;
    let (worker, direct) = direct_worker(args, model)?;
    let reps = if args.quick { 5 } else { 20 };
    let tokens = if args.quick { 32 } else { 64 };
    let body = |max_tokens: usize| {
        json!({"model": model.name, "prompt": "The three primary colors are", "max_tokens": max_tokens,
               "temperature": 0, "stream": true})
        .to_string()
        .into_bytes()
    };
    let ttft = |address: &str| crate::ttft::Ttft {
        address: address.to_string(),
        path: "/v1/completions".into(),
        body: body(tokens),
        reps,
    };
    progress.set_message("chat: time to first token, straight to the worker");
    let ttft_direct = ttft(&direct).run()?;
    drop(worker);
    progress.set_message("chat: time to first token, through thaw");
    let ttft_gateway = ttft(&g.public).run()?;

    let mut streams = Vec::new();
    for n in [1usize, 4] {
        progress.set_message(format!("chat: {n} stream(s) at once through thaw"));
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let t = crate::ttft::Ttft {
                    address: g.public.clone(),
                    path: "/v1/completions".into(),
                    body: body(tokens * 2),
                    reps: 1,
                };
                std::thread::spawn(move || t.once())
            })
            .collect();
        let mut events = 0;
        let mut decode = Vec::new();
        for h in handles {
            let (first, whole, e) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a stream panicked"))??;
            events += e;
            decode.push(e.saturating_sub(1) as f64 / (whole - first).as_secs_f64().max(1e-9));
        }
        let wall = start.elapsed().as_secs_f64();
        streams.push(json!({"streams": n, "tokens": events, "wall_s": wall, "aggregate_tokens_per_s": events as f64 / wall,
                            "per_stream_decode_tokens_per_s": decode}));
    }
    let agg = |i: usize| {
        streams[i]["aggregate_tokens_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let one_decode = streams[0]["per_stream_decode_tokens_per_s"][0]
        .as_f64()
        .unwrap_or(f64::NAN);

    progress.set_message("chat: llama.cpp on the same GGUF");
    let llama = llama_cpp(args, &model.source);
    let p50 = |v: &Value| v["first_token"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let llama_row = match llama["decode_tokens_per_s"].as_f64() {
        Some(l) => format!("| decode, 1 stream (tokens/s) | {one_decode:.1} (over HTTP, through thaw) | llama.cpp {l:.1} | {:.2}× |\n", one_decode / l),
        None => format!("| decode, 1 stream (tokens/s) | {one_decode:.1} | llama.cpp skipped: {} | |\n", llama["skipped"].as_str().unwrap_or("?")),
    };
    let markdown = format!(
        "## chat: {name}, {tokens}-token streamed completions\n\n\
         | figure | thaw | baseline | ratio |\n|---|---|---|---|\n\
         | time to first token p50 (ms), {reps} requests one at a time | {:.2} through thaw | {:.2} straight to a worker | {:+.2} ms |\n\
         | aggregate tokens/s, 4 streams at once | {:.1} | 1 stream: {:.1} | {:.2}× |\n{llama_row}",
        p50(&ttft_gateway),
        p50(&ttft_direct),
        p50(&ttft_gateway) - p50(&ttft_direct),
        agg(1),
        agg(0),
        agg(1) / agg(0),
        name = model.name,
    );
    Ok(Report {
        figures: json!({"model": model.name, "ttft_direct": ttft_direct, "ttft_gateway": ttft_gateway, "streams": streams, "llama_cpp": llama}),
        markdown,
        plots: Vec::new(),
    })
}

/// llama.cpp's decode speed on the model's GGUF, through
/// `bench/baselines/llama_cpp_speed.py` and a Python with llama-cpp-python
/// (`THAW_LLAMA_CPP_PYTHON`); skipped with the reason otherwise.
fn llama_cpp(args: &RunArgs, source: &std::path::Path) -> Value {
    let Some(python) = std::env::var_os("THAW_LLAMA_CPP_PYTHON") else {
        return json!({"skipped": "no Python with llama-cpp-python given (THAW_LLAMA_CPP_PYTHON; bench/chat.sh builds one)"});
    };
    let gguf = std::fs::read_dir(source)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gguf"));
    let Some(gguf) = gguf else {
        return json!({"skipped": format!("no .gguf in {}", source.display())});
    };
    let script = args
        .bin_dir
        .join("../../bench/baselines/llama_cpp_speed.py");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    match std::process::Command::new(python)
        .arg(&script)
        .arg(&gguf)
        .arg(threads)
        .output()
    {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| json!({"skipped": format!("the baseline printed no JSON: {e}")})),
        Ok(o) => {
            json!({"skipped": format!("the baseline failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""))})
        }
        Err(e) => json!({"skipped": format!("cannot run the baseline: {e}")}),
    }
}

/// Polls the model's ready instances every 100 ms for `length`:
/// `(seconds, ready)` points.
fn watch_instances(admin: &str, model: &str, length: Duration) -> Result<Vec<(f64, f64)>> {
    let start = Instant::now();
    let mut points = Vec::new();
    while start.elapsed() < length {
        let body = crate::cold_start::get(admin, "/admin/status")?;
        let status: Value = serde_json::from_slice(&body)?;
        let ready = status["models"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == model))
            .and_then(|m| m["ready_instances"].as_f64())
            .unwrap_or(0.0);
        points.push((start.elapsed().as_secs_f64(), ready));
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(points)
}

/// `trace` and `cost`: a day of per-minute counts replayed time-compressed
/// (a minute in 0.2 s; `--quick`: in 1/40 s with the counts scaled to
/// keep the rate) with scaling timers compressed alike.
fn trace(args: &RunArgs, base: &BaseConfig, progress: &ProgressBar) -> Result<Report> {
    let model = &base.model;
    let dir = args.out.join("trace");
    let counts = read_trace(&args.trace)?;
    let minute = if args.quick { 1.0 / 40.0 } else { 0.2 };
    let scale = minute / 0.2;
    let per_minute: Vec<u64> = counts
        .iter()
        .map(|&n| (n as f64 * scale).round() as u64)
        .collect();
    let length = Duration::from_secs_f64(minute * per_minute.len() as f64);
    let compression = 60.0 / minute;
    // Timers compressed like the day: 5 min to zero → 5 s at 0.2 s a minute.
    let timer = |real_minutes: f64| {
        text(&format!(
            "{}ms",
            (real_minutes * minute * 1e3).round().max(200.0)
        ))
    };
    let config = base.render(
        &dir.join("state"),
        &[
            ("min_instances", int(0)),
            ("max_instances", int(4)),
            ("scale_to_zero_after", timer(5.0)),
            ("stable_window", timer(6.0)),
            ("panic_window", timer(1.0)),
            ("scale_down_delay", timer(3.0)),
        ],
        &[],
    );
    progress.set_message("trace: starting the gateway");
    let g = Gateway::start(&args.bin_dir, &dir, &config)?;
    let cold_before = g.counter("thaw_cold_starts_total", &model.name)?;
    let (path, body) = workload(model);
    let watch = {
        let (admin, name) = (g.admin.clone(), model.name.clone());
        std::thread::spawn(move || watch_instances(&admin, &name, length))
    };
    progress.set_message(format!(
        "trace: a day of {} requests in {length:.0?} ({compression:.0}× faster)",
        per_minute.iter().sum::<u64>()
    ));
    let schedule = Schedule::Trace {
        per_minute: per_minute.clone(),
        minute: Duration::from_secs_f64(minute),
        seed: 3,
    };
    let r = open_loop(
        &g.public,
        &path,
        &body,
        &schedule,
        length,
        Duration::from_secs(30),
    )?;
    let timeline = watch
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
    let cold_starts = g.counter("thaw_cold_starts_total", &model.name)? - cold_before;

    // Instance-seconds over the run, scaled back to the real day.
    let mut instance_seconds = 0.0;
    for w in timeline.windows(2) {
        instance_seconds += w[0].1 * (w[1].0 - w[0].0);
    }
    let day_instance_seconds = instance_seconds * compression;
    let peak = timeline.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0);
    let day = 86_400.0 * per_minute.len() as f64 / 1440.0;
    let always_on_instance_seconds = peak * day;
    let utilization = day_instance_seconds / always_on_instance_seconds;
    let cost_serverless = day_instance_seconds / 3600.0 * args.price_serverless;
    let cost_always_on = always_on_instance_seconds / 3600.0 * args.price_always_on;
    let break_even = args.price_always_on / args.price_serverless;
    // A GPU model's instance holds one GPU share: its instance-seconds are
    // the GPU-seconds billed.
    let on_gpu = model.device.starts_with("cuda");
    let gpu_seconds_day = if on_gpu { day_instance_seconds } else { 0.0 };
    let lat = &r["statuses"]["200"]["latency_us"];
    let markdown = format!(
        "## {scenario}: {name}, a day of {total} requests ({file}) replayed {compression:.0}× faster\n\n\
         | figure | value |\n|---|---|\n\
         | latency of 200s p50 / p99 / max (ms) | {:.1} / {:.1} / {:.1} |\n\
         | non-200 outcomes | {} |\n| every request one outcome | {} |\n\
         | cold starts | {cold_starts:.0} |\n| peak ready instances | {peak:.0} |\n\
         | instance-seconds (the real day) | {day_instance_seconds:.0} |\n\
         | GPU-seconds (the real day; device {device}) | {gpu_seconds_day:.0} |\n\n\
         ### cost against always-on sized for the peak\n\n\
         | | instance-hours | price per instance-hour | cost |\n|---|---|---|---|\n\
         | thaw (scale to zero) | {:.1} | {:.3} | {cost_serverless:.2} |\n\
         | always-on, {peak:.0} instance(s) all day (baseline) | {:.1} | {:.3} | {cost_always_on:.2} |\n\n\
         The gateway's autoscaler ticks once a second: {tick:.0} minutes of this compressed day, so \
         scale-to-zero here is that coarse.\n\n\
         Utilization of the always-on fleet this trace implies: {:.1} %. At these prices always-on becomes \
         cheaper above {:.1} % utilization (the break-even, price ratio {:.3} ÷ {:.3}); this trace is {}.\n",
        us_to_ms(&lat["p50"]),
        us_to_ms(&lat["p99"]),
        us_to_ms(&lat["max"]),
        r["sent"].as_u64().unwrap_or(0).saturating_sub(count(&r, "200")),
        if exactly_once(&r) { "yes" } else { "**no**" },
        day_instance_seconds / 3600.0,
        args.price_serverless,
        always_on_instance_seconds / 3600.0,
        args.price_always_on,
        utilization * 100.0,
        break_even * 100.0,
        args.price_always_on,
        args.price_serverless,
        if utilization < break_even { "cheaper on thaw" } else { "cheaper always-on" },
        scenario = args.scenario.name(),
        name = model.name,
        tick = 1.0 / minute,
        total = per_minute.iter().sum::<u64>(),
        file = args.trace.display(),
        device = model.device,
    );
    let load: Vec<(f64, f64)> = per_minute
        .iter()
        .enumerate()
        .map(|(i, &n)| (i as f64 * minute, n as f64 / minute))
        .collect();
    plot::instances_and_load(
        &args.out.join("trace-instances.svg"),
        "trace: ready instances and offered load over the compressed day",
        &timeline,
        "offered req/s",
        &load,
        peak,
    )?;
    plot::lines(
        &args.out.join("trace-latency-cdf.svg"),
        "trace: latency CDF (200s)",
        "latency (ms)",
        "quantile",
        &[cdf_series("trace", &r)],
        true,
    )?;
    Ok(Report {
        figures: json!({
            "model": model.name,
            "trace": args.trace,
            "minute_s": minute,
            "compression": compression,
            "requests": per_minute.iter().sum::<u64>(),
            "cold_starts": cold_starts,
            "peak_instances": peak,
            "instance_seconds_run": instance_seconds,
            "instance_seconds_day": day_instance_seconds,
            "always_on_instance_seconds_day": always_on_instance_seconds,
            "utilization": utilization,
            "device": model.device,
            "gpu_seconds_day": gpu_seconds_day,
            "always_on_gpu_seconds_day": if on_gpu { always_on_instance_seconds } else { 0.0 },
            "prices": {"always_on_per_hour": args.price_always_on, "serverless_per_hour": args.price_serverless},
            "cost": {"thaw": cost_serverless, "always_on": cost_always_on},
            "break_even_utilization": break_even,
            "instances_over_time": timeline.iter().map(|p| json!([p.0, p.1])).collect::<Vec<_>>(),
            "open_loop": r,
        }),
        markdown,
        plots: vec!["trace-instances.svg".into(), "trace-latency-cdf.svg".into()],
    })
}
