//! The system under test: a `thaw serve` on a config derived from the
//! operator's (ports 0, state in the run's directory, the scenario's knobs
//! for the model under test), and what the scenarios ask of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cold_start::{get, Spawned};

/// A running gateway.
pub struct Gateway {
    _process: Spawned,
    /// The public listener, `HOST:PORT`.
    pub public: String,
    /// The admin listener, `HOST:PORT`.
    pub admin: String,
}

/// The model under test, as the config has it.
#[derive(Debug, Clone)]
pub struct ModelUnderTest {
    /// Its name.
    pub name: String,
    /// `embedding`, `tabular` or `chat`.
    pub kind: String,
    /// Its source directory, resolved.
    pub source: PathBuf,
    /// Its `device` (`cpu` when the config names none).
    pub device: String,
}

/// The operator's config, parsed, with the model under test found in it.
pub struct BaseConfig {
    doc: toml::Table,
    /// The model under test.
    pub model: ModelUnderTest,
}

impl BaseConfig {
    /// Reads `path` and finds `model` in it (the first model when `None`).
    pub fn load(path: &Path, model: Option<&str>) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?;
        let models = doc
            .get("models")
            .and_then(|m| m.as_array())
            .context("the config has no [[models]]")?;
        let entry = match model {
            Some(name) => models
                .iter()
                .find(|m| m.get("name").and_then(|n| n.as_str()) == Some(name))
                .with_context(|| format!("no model {name:?} in {}", path.display()))?,
            None => models.first().context("the config has no [[models]]")?,
        };
        let name = entry
            .get("name")
            .and_then(|n| n.as_str())
            .context("a model without a name")?
            .to_string();
        let source = entry
            .get("source")
            .and_then(|s| s.as_str())
            .context("a model without a source")?
            .to_string();
        let device = entry
            .get("device")
            .and_then(|d| d.as_str())
            .unwrap_or("cpu")
            .to_string();
        let kind_given = entry
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_string);
        let source = source.as_str();
        let models_dir = doc
            .get("gateway")
            .and_then(|g| g.get("models_dir"))
            .and_then(|d| d.as_str())
            .map(expand_home)
            .unwrap_or_else(|| expand_home("~/.cache/thaw/models"));
        let models_dir = std::env::var_os("THAW_MODELS")
            .map(PathBuf::from)
            .unwrap_or(models_dir);
        let path = &path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let source = if source.starts_with("./") || source.starts_with("../") {
            base.join(source)
        } else if Path::new(source).is_absolute() {
            PathBuf::from(source)
        } else {
            models_dir.join(source)
        };
        let kind = match kind_given {
            Some(k) => k,
            None if source.join("thaw-model.json").is_file() => "tabular".into(),
            None if source.join("config.json").is_file() => "embedding".into(),
            None => "chat".into(),
        };
        // Relative sources resolve from the original file, not the copy.
        let mut doc = doc;
        if let Some(models) = doc.get_mut("models").and_then(|m| m.as_array_mut()) {
            for m in models.iter_mut() {
                if let Some(table) = m.as_table_mut() {
                    if let Some(s) = table.get("source").and_then(|s| s.as_str()) {
                        if s.starts_with("./") || s.starts_with("../") {
                            let resolved = base.join(s).display().to_string();
                            table.insert("source".into(), toml::Value::String(resolved));
                        }
                    }
                }
            }
        }
        Ok(BaseConfig {
            doc,
            model: ModelUnderTest {
                name,
                kind,
                source,
                device,
            },
        })
    }

    /// The config to run: only the model under test, with `scaling` and
    /// `queue` overriding its knobs, listeners on port 0, state in `state`.
    pub fn render(
        &self,
        state: &Path,
        scaling: &[(&str, toml::Value)],
        queue: &[(&str, toml::Value)],
    ) -> String {
        let mut doc = self.doc.clone();
        let gateway = doc
            .entry("gateway")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(g) = gateway.as_table_mut() {
            g.insert("listen".into(), "127.0.0.1:0".into());
            g.insert("admin_listen".into(), "127.0.0.1:0".into());
            g.insert("state_dir".into(), state.display().to_string().into());
        }
        if let Some(models) = doc.get_mut("models").and_then(|m| m.as_array_mut()) {
            models.retain(|m| {
                m.get("name").and_then(|n| n.as_str()) == Some(self.model.name.as_str())
            });
            if let Some(table) = models.first_mut().and_then(|m| m.as_table_mut()) {
                for (section, knobs) in [("scaling", scaling), ("queue", queue)] {
                    let t = table
                        .entry(section)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let Some(t) = t.as_table_mut() {
                        for (k, v) in knobs {
                            t.insert((*k).to_string(), v.clone());
                        }
                    }
                }
            }
        }
        toml::to_string(&doc).unwrap_or_default()
    }
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(p), |h| PathBuf::from(h).join(rest)),
        None => PathBuf::from(p),
    }
}

impl Gateway {
    /// Writes `config` to `dir/thaw.toml` and serves it until `ready`.
    pub fn start(bin_dir: &Path, dir: &Path, config: &str) -> Result<Gateway> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("thaw.toml");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new(bin_dir.join("thaw"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--worker-bin")
            .arg(bin_dir.join("thaw-worker"))
            .env("RUST_LOG", "warn");
        let process = Spawned::start(cmd)?;
        let ready = process.wait("ready")?;
        let field = |k: &str| {
            ready[k]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no {k} in {ready}"))
        };
        Ok(Gateway {
            public: field("address")?,
            admin: field("admin")?,
            _process: process,
        })
    }

    /// [`Gateway::start`], then waits until `model` has a ready instance.
    pub fn start_ready(bin_dir: &Path, dir: &Path, config: &str, model: &str) -> Result<Gateway> {
        let g = Gateway::start(bin_dir, dir, config)?;
        g.wait_for(model, "a ready instance", |s| {
            s["ready_instances"].as_u64() >= Some(1)
        })?;
        Ok(g)
    }

    /// `/admin/status`'s entry for `model`.
    pub fn status(&self, model: &str) -> Result<Value> {
        let body = get(&self.admin, "/admin/status")?;
        let status: Value = serde_json::from_slice(&body).context("/admin/status is not JSON")?;
        status["models"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == model))
            .cloned()
            .with_context(|| format!("no {model} in /admin/status"))
    }

    /// Waits until `pred` holds on the model's status.
    pub fn wait_for(
        &self,
        model: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.status(model)?;
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{model} never reached {what}: {s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of a Prometheus counter's series for `model` (all labels;
    /// every series when `model` is empty).
    pub fn counter(&self, name: &str, model: &str) -> Result<f64> {
        let text =
            String::from_utf8(get(&self.admin, "/metrics")?).context("metrics are not UTF-8")?;
        let label = if model.is_empty() {
            String::new()
        } else {
            format!("model=\"{model}\"")
        };
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

/// What to send for a model of `kind`: the path and the JSON body.
pub fn workload(model: &ModelUnderTest) -> (String, String) {
    match model.kind.as_str() {
        "tabular" => (
            format!("/v2/models/{}/infer", model.name),
            r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,10],"data":[60,0.3,10,8,0,0.3,20,48,6,1]}]}"#.into(),
        ),
        "embedding" => (
            "/v1/embeddings".into(),
            format!(r#"{{"model":"{}","input":["A man is eating food."]}}"#, model.name),
        ),
        _ => (
            "/v1/completions".into(),
            format!(r#"{{"model":"{}","prompt":"Hello","max_tokens":8,"temperature":0}}"#, model.name),
        ),
    }
}
