//! `thaw-bench`: load generators for thaw's benchmark scripts
//! (`bench/*.sh`). Each prints one JSON object on stdout.
#![forbid(unsafe_code)]

mod closed_loop;
mod cold_start;
mod http;
mod open_loop;
mod run;
mod schedule;
mod stats;
mod ttft;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use closed_loop::ClosedLoop;
use http::Target;
use open_loop::OpenLoop;

/// thaw's load generators.
#[derive(Debug, Parser)]
#[command(name = "thaw-bench", version)]
struct Cli {
    /// Runtime threads (default: the number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Requests on a fixed schedule, whatever the server answers.
    OpenLoop {
        #[command(flatten)]
        request: RequestArgs,
        /// Requests per second (the base rate of step and burst).
        #[arg(long)]
        rate: f64,
        #[command(flatten)]
        arrivals: ArrivalArgs,
        /// Most connections open at once.
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// How long to wait for the last responses (e.g. `30s`).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain: Duration,
    },
    /// A fixed number of clients, each waiting for its last answer.
    ClosedLoop {
        #[command(flatten)]
        request: RequestArgs,
        /// Clients, each with its own connection.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// A scenario end to end: starts a gateway on the config (and the
    /// baselines), drives load, writes report.json, report.md and SVG plots.
    Run {
        /// warm, cold, overload, scale-out, trace or cost.
        #[arg(value_enum)]
        scenario: run::Scenario,
        /// The operator's config; the model under test is taken from it.
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// The model under test (default: the config's first; cold needs
        /// an embedding model).
        #[arg(long)]
        model: Option<String>,
        /// Where the report goes.
        #[arg(long, default_value = "bench-report")]
        out: PathBuf,
        /// Every scenario in under a minute (CI smoke tests).
        #[arg(long)]
        quick: bool,
        /// Where `thaw` and `thaw-worker` are (default: next to thaw-bench).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// A Python with sentence-transformers (the cold baseline).
        #[arg(long, env = "THAW_ST_PYTHON")]
        python: Option<PathBuf>,
        /// Per-minute invocation counts, Azure Functions 2019 trace shape.
        #[arg(long, default_value = "bench/traces/synthetic-day.csv")]
        trace: PathBuf,
        /// Price of an always-on instance per hour (cost).
        #[arg(long, default_value_t = 0.10)]
        price_always_on: f64,
        /// Price of serverless instance time per hour (cost).
        #[arg(long, default_value_t = 0.25)]
        price_serverless: f64,
    },
    /// Time to first token of a streamed generation, one request at a time
    /// (bench/chat.sh: direct and through the gateway).
    Ttft {
        /// `HOST:PORT` of the server.
        #[arg(long)]
        address: String,
        /// The path (`/v1/completions` or `/v1/chat/completions`).
        #[arg(long, default_value = "/v1/completions")]
        path: String,
        /// The JSON body, with `"stream": true`.
        #[arg(long)]
        body_file: PathBuf,
        /// Measured requests.
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
    /// Prints a free TCP port on 127.0.0.1 (for servers that cannot report
    /// the port they bound).
    FreePort,
    /// Cold starts of an embedding model from each warmth tier, against a
    /// plain exec and a fresh Python process (bench/cold-start.sh).
    ColdStart {
        /// Where `thaw` and `thaw-worker` are.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The model's source directory.
        #[arg(long)]
        source: PathBuf,
        /// Repetitions of each cold start.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Workers forked at once for the fan-out and memory figures.
        #[arg(long, default_value_t = 8)]
        forks: usize,
        /// A Python with sentence-transformers (the seed's cold start).
        #[arg(long, env = "THAW_ST_PYTHON")]
        python: Option<PathBuf>,
        /// The baseline's script.
        #[arg(long, default_value = "bench/baselines/st_cold_start.py")]
        python_script: PathBuf,
        /// Scratch directory (sockets, the snapshot, the gateway's state).
        #[arg(long)]
        work: PathBuf,
    },
}

/// The arrival process of an open loop.
#[derive(Debug, Args)]
struct ArrivalArgs {
    /// constant, poisson, step, burst or trace.
    #[arg(long, default_value = "constant")]
    arrivals: String,
    /// step: the rate after `--step-at`.
    #[arg(long)]
    step_to: Option<f64>,
    /// step: when the rate changes (e.g. `5s`).
    #[arg(long, value_parser = parse_duration)]
    step_at: Option<Duration>,
    /// burst: the rate during a burst.
    #[arg(long)]
    burst_rate: Option<f64>,
    /// burst: how often a burst starts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    burst_every: Duration,
    /// burst: how long a burst lasts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    burst_length: Duration,
    /// trace: per-minute counts (Azure Functions 2019 trace shape).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// trace: how long one minute of the trace lasts here.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    trace_minute: Duration,
}

impl ArrivalArgs {
    fn schedule(&self, rate: f64) -> Result<schedule::Schedule> {
        use schedule::Schedule;
        Ok(match self.arrivals.as_str() {
            "constant" => Schedule::Constant { rate },
            "poisson" => Schedule::Poisson { rate, seed: 1 },
            "step" => Schedule::Step {
                from: rate,
                to: self.step_to.context("--arrivals step needs --step-to")?,
                at: self.step_at.context("--arrivals step needs --step-at")?,
            },
            "burst" => Schedule::Burst {
                base: rate,
                burst: self
                    .burst_rate
                    .context("--arrivals burst needs --burst-rate")?,
                every: self.burst_every,
                length: self.burst_length,
            },
            "trace" => Schedule::Trace {
                per_minute: schedule::read_trace(
                    self.trace
                        .as_deref()
                        .context("--arrivals trace needs --trace FILE")?,
                )?,
                minute: self.trace_minute,
                seed: 1,
            },
            other => bail!("unknown --arrivals {other:?} (constant, poisson, step, burst, trace)"),
        })
    }
}

/// What to send, and for how long.
#[derive(Debug, Args)]
struct RequestArgs {
    /// `http://HOST:PORT/PATH`.
    #[arg(long)]
    url: String,
    /// Connect to this unix socket instead of the URL's host (which then
    /// only names the Host header).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// The POST body (a GET without it).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// An extra header, `NAME: VALUE`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// How long to send for (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

impl RequestArgs {
    async fn render(&self) -> Result<(Target, Vec<u8>)> {
        let target = Target::parse(&self.url, self.unix.clone()).await?;
        let body = match &self.body_file {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let headers = self
            .headers
            .iter()
            .map(|h| match h.split_once(':') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => bail!("header {h:?} is not NAME: VALUE"),
            })
            .collect::<Result<Vec<_>>>()?;
        let request = target.render(body.as_deref(), &headers);
        Ok((target, request))
    }
}

/// `250ms`, `10s`, `2m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("starting the runtime")?;
    let report = rt.block_on(run(cli.command))?;
    println!("{report}");
    Ok(())
}

async fn run(command: Command) -> Result<serde_json::Value> {
    match command {
        Command::OpenLoop {
            request,
            rate,
            arrivals,
            connections,
            drain,
        } => {
            if !rate.is_finite() || rate <= 0.0 {
                bail!("--rate must be positive");
            }
            let (target, req) = request.render().await?;
            OpenLoop {
                target,
                request: req,
                schedule: arrivals.schedule(rate)?.offsets(request.duration),
                duration: request.duration,
                connections: connections.max(1),
                drain,
            }
            .run()
            .await
        }
        Command::ClosedLoop {
            request,
            concurrency,
        } => {
            let (target, req) = request.render().await?;
            ClosedLoop {
                target,
                request: req,
                concurrency: concurrency.max(1),
                duration: request.duration,
            }
            .run()
            .await
        }
        Command::ColdStart {
            bin_dir,
            source,
            reps,
            forks,
            python,
            python_script,
            work,
        } => {
            let bench = cold_start::ColdStart {
                bin_dir,
                source,
                reps: reps.max(1),
                forks: forks.max(1),
                python,
                python_script,
                work,
            };
            tokio::task::spawn_blocking(move || bench.run()).await?
        }
        Command::Run {
            scenario,
            config,
            model,
            out,
            quick,
            bin_dir,
            python,
            trace,
            price_always_on,
            price_serverless,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("thaw-bench has no directory")?
                    .to_path_buf(),
            };
            let args = run::RunArgs {
                scenario,
                bin_dir,
                config,
                model,
                out,
                quick,
                python,
                trace,
                price_always_on,
                price_serverless,
            };
            let report = tokio::task::spawn_blocking(move || run::run(&args)).await??;
            Ok(serde_json::json!({
                "scenario": report["scenario"],
                "figures": "report.json, report.md and plots in the output directory",
            }))
        }
        Command::Ttft {
            address,
            path,
            body_file,
            reps,
        } => {
            let body = std::fs::read(&body_file)
                .with_context(|| format!("reading {}", body_file.display()))?;
            let bench = ttft::Ttft {
                address,
                path,
                body,
                reps: reps.max(1),
            };
            tokio::task::spawn_blocking(move || bench.run()).await?
        }
        Command::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
            Ok(serde_json::json!(l
                .local_addr()
                .context("local address")?
                .port()))
        }
    }
}
