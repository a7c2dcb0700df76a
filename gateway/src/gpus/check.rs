//! Whether a config's GPU models can ever be placed, checked against the
//! inventory when the gateway starts and on every reload: a `cuda` model on
//! a machine (or a worker build) without GPUs, a `cuda:N` that does not
//! exist, or an instance bigger than the biggest eligible GPU is refused
//! with the model, the field and the reason, before anything starts. What
//! only fails for now (no room left while other instances run) is a 503
//! with Retry-After at request time instead.

use std::path::Path;

use thaw_snapshot::ModelKind;

use super::Inventory;
use crate::config::{line_of, Config, ConfigError, ModelConfig};
use crate::placement::{self, DeviceRequest};

/// Bytes of a model directory's weights: its top-level `.safetensors` and
/// `.gguf` files (a source may hold other formats beside them, which no
/// worker loads).
pub fn weights_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".safetensors") || name.ends_with(".gguf")
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Memory an instance needs on its GPU, for weights of `weights_bytes`:
/// the model's `memory_limit` when the config sets one (the operator's
/// placement budget), else the weights plus the kind's margin.
pub fn need(memory_limit: Option<u64>, kind: Option<ModelKind>, weights_bytes: u64) -> u64 {
    memory_limit.unwrap_or_else(|| {
        // An unknown kind gets the biggest margin.
        placement::memory_need(weights_bytes, kind.unwrap_or(ModelKind::Chat))
    })
}

/// Checks every GPU model of `config` (read from `text`) against
/// `inventory`. `need_of` gives a model's memory need per instance as far
/// as it is known before a snapshot exists (a lower bound: a snapshot in
/// another dtype may be bigger, never smaller than its source's weights).
pub fn check(
    config: &Config,
    text: &str,
    path: &Path,
    inventory: &Inventory,
    need_of: impl Fn(&ModelConfig) -> u64,
) -> Result<(), ConfigError> {
    for (i, m) in config.models.iter().enumerate() {
        let request = m.device_request();
        if request == DeviceRequest::Cpu {
            continue;
        }
        let table = format!("models[{i}]");
        let fail = |field: &str, message: String| ConfigError {
            file: path.display().to_string(),
            line: line_of(text, &table, field),
            field: format!("{table}.{field}"),
            message: format!("model {:?}: {message}", m.name),
        };
        if inventory.gpus.is_empty() {
            return Err(fail(
                "device",
                format!(
                    "device {:?} but there is no GPU to place it on: {}",
                    m.device,
                    inventory.why_none()
                ),
            ));
        }
        let eligible: Vec<_> = match request {
            DeviceRequest::Gpu(n) => inventory.gpus.iter().filter(|g| g.index == n).collect(),
            _ => inventory.gpus.iter().collect(),
        };
        if eligible.is_empty() {
            let have: Vec<String> = inventory
                .gpus
                .iter()
                .map(|g| format!("cuda:{}", g.index))
                .collect();
            return Err(fail(
                "device",
                format!("{} does not exist (GPUs: {})", m.device, have.join(", ")),
            ));
        }
        let biggest = eligible.iter().map(|g| g.total_bytes).max().unwrap_or(0);
        let want = need_of(m);
        if want > biggest {
            let field = if m.memory_limit.is_some() {
                "memory_limit"
            } else {
                "device"
            };
            return Err(fail(
                field,
                format!(
                    "an instance needs {} (weights, working margin and CUDA context; \
                     memory_limit overrides) but the biggest GPU it may use has {}",
                    gib(want),
                    gib(biggest)
                ),
            ));
        }
    }
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Gpu;

    const GIB: u64 = 1 << 30;

    fn inventory(totals_gib: &[u64]) -> Inventory {
        Inventory {
            gpus: totals_gib
                .iter()
                .enumerate()
                .map(|(i, &t)| Gpu {
                    index: i as u32,
                    uuid: String::new(),
                    total_bytes: t * GIB,
                    free_bytes: t * GIB,
                })
                .collect(),
            names: vec![String::new(); totals_gib.len()],
            driver_version: None,
            reason: None,
            fake: true,
            hibernation: serde_json::Value::Null,
        }
    }

    fn config(models: &str) -> (Config, String) {
        let dir = env!("CARGO_MANIFEST_DIR");
        let text = format!(
            "[[models]]\nname = \"cpu-one\"\nsource = \"{dir}\"\n\n{}",
            models.replace("SRC", dir)
        );
        let config = crate::config::parse(&text, Path::new("thaw.toml")).expect("valid config");
        (config, text)
    }

    fn run(models: &str, inv: &Inventory, need: u64) -> Result<(), ConfigError> {
        let (config, text) = config(models);
        check(&config, &text, Path::new("thaw.toml"), inv, |_| need)
    }

    #[test]
    fn gpu_models_that_can_be_placed_pass() {
        let two = inventory(&[16, 16]);
        let models = "[[models]]\nname = \"g\"\nsource = \"SRC\"\ndevice = \"cuda\"\n\
                      [[models]]\nname = \"p\"\nsource = \"SRC\"\ndevice = \"cuda:1\"\n";
        assert_eq!(run(models, &two, 4 * GIB), Ok(()));
        // CPU models need no GPU at all.
        assert_eq!(run("", &Inventory::none("no driver".into()), GIB), Ok(()));
    }

    #[test]
    fn no_gpus_names_the_model_the_line_and_the_reason() {
        let e = run(
            "[[models]]\nname = \"g\"\nsource = \"SRC\"\ndevice = \"cuda\"\n",
            &Inventory::none("this worker is built without the cuda feature".into()),
            GIB,
        )
        .expect_err("refused");
        assert_eq!((e.field.as_str(), e.line), ("models[1].device", 8));
        assert!(e.message.starts_with("model \"g\": "), "{e}");
        assert!(e.message.contains("without the cuda feature"), "{e}");
    }

    #[test]
    fn a_pinned_gpu_must_exist() {
        let e = run(
            "[[models]]\nname = \"p\"\nsource = \"SRC\"\ndevice = \"cuda:2\"\n",
            &inventory(&[16, 16]),
            GIB,
        )
        .expect_err("refused");
        assert_eq!(e.field, "models[1].device");
        assert!(
            e.message
                .contains("cuda:2 does not exist (GPUs: cuda:0, cuda:1)"),
            "{e}"
        );
    }

    #[test]
    fn an_instance_bigger_than_every_gpu_is_refused() {
        let models = "[[models]]\nname = \"big\"\nsource = \"SRC\"\ndevice = \"cuda\"\n";
        let e = run(models, &inventory(&[16, 24]), 30 * GIB).expect_err("refused");
        assert_eq!(e.field, "models[1].device");
        assert!(e.message.contains("24.0 GiB"), "{e}");
        // Pinned to the small GPU: its size is what counts.
        let pinned = "[[models]]\nname = \"big\"\nsource = \"SRC\"\ndevice = \"cuda:0\"\n\
                      memory_limit = \"20GiB\"\n";
        let e = run(pinned, &inventory(&[16, 24]), 20 * GIB).expect_err("refused");
        assert_eq!((e.field.as_str(), e.line), ("models[1].memory_limit", 9));
    }

    #[test]
    fn the_need_is_the_memory_limit_or_the_weights_and_margin() {
        let (config, _) = config(
            "[[models]]\nname = \"m\"\nsource = \"SRC\"\ndevice = \"cuda\"\n\
             memory_limit = \"3GiB\"\n",
        );
        let limit = config.models[1].memory_limit;
        assert_eq!(limit, Some(3 * GIB));
        assert_eq!(need(limit, Some(ModelKind::Chat), 100 * GIB), 3 * GIB);
        let w = 2 * GIB;
        assert_eq!(
            need(None, Some(ModelKind::Embedding), w),
            placement::memory_need(w, ModelKind::Embedding)
        );
        assert_eq!(
            need(None, None, w),
            placement::memory_need(w, ModelKind::Chat)
        );
    }

    #[test]
    fn weights_are_the_safetensors_and_gguf_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("model.safetensors"), [0u8; 100]).expect("write");
        std::fs::write(dir.path().join("m.gguf"), [0u8; 20]).expect("write");
        std::fs::write(dir.path().join("pytorch_model.bin"), [0u8; 1000]).expect("write");
        std::fs::write(dir.path().join("config.json"), b"{}").expect("write");
        assert_eq!(weights_bytes(dir.path()), 120);
        assert_eq!(weights_bytes(&dir.path().join("missing")), 0);
    }
}
