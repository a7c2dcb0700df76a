//! The GPUs this machine has, as the worker binary sees them: the gateway
//! runs `thaw-worker --gpu-info` once (a CUDA context is the worker's
//! business, never the gateway's) and parses its JSON. A worker built
//! without CUDA, or a machine without a driver, reports no GPUs and why.
//!
//! Test hook: [`FAKE_GPUS_ENV`] holds an inventory in the same JSON shape,
//! used instead of asking the worker; placement and accounting then run as
//! on a GPU machine, and the workers run on the CPU (see `Inventory::fake`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::placement::Gpu;

/// The env variable holding a fake inventory (JSON, the shape of
/// `thaw-worker --gpu-info`), for tests on machines without a GPU.
pub const FAKE_GPUS_ENV: &str = "THAW_FAKE_GPUS";

/// How long `thaw-worker --gpu-info` may take (the driver's start-up
/// included).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The GPUs, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Each usable GPU, by CUDA ordinal.
    pub gpus: Vec<Gpu>,
    /// Their names, by the same order.
    pub names: Vec<String>,
    /// The driver's version, when there is a driver.
    pub driver_version: Option<String>,
    /// Why there are no GPUs, or why some were skipped.
    pub reason: Option<String>,
    /// From [`FAKE_GPUS_ENV`]: placement is real, workers run on the CPU.
    pub fake: bool,
    /// Whether the driver can hibernate GPU workers (its checkpoint API),
    /// and why not: `{"supported": …, "reason": …}` as the worker reports it.
    pub hibernation: Value,
}

impl Inventory {
    /// An inventory of no GPUs, with why.
    pub fn none(reason: String) -> Inventory {
        Inventory {
            gpus: Vec::new(),
            names: Vec::new(),
            driver_version: None,
            hibernation: serde_json::json!({"supported": false, "reason": reason}),
            reason: Some(reason),
            fake: false,
        }
    }

    /// Why this inventory has no GPU (its reason, or a generic one).
    pub fn why_none(&self) -> String {
        self.reason
            .clone()
            .unwrap_or_else(|| "the CUDA driver reports no GPU".into())
    }
}

/// Parses `thaw-worker --gpu-info`'s JSON. GPUs the worker could not open
/// (an `error` entry) are left out, and named in the reason.
pub fn parse(json: &Value, fake: bool) -> Result<Inventory, String> {
    let entries = json["gpus"]
        .as_array()
        .ok_or_else(|| format!("no \"gpus\" list in {json}"))?;
    let mut inventory = Inventory {
        gpus: Vec::new(),
        names: Vec::new(),
        driver_version: json["driver_version"].as_str().map(String::from),
        reason: json["reason"].as_str().map(String::from),
        fake,
        hibernation: match &json["hibernation"] {
            Value::Null => serde_json::json!({
                "supported": false,
                "reason": "the inventory does not say (a worker from before hibernation)",
            }),
            h => h.clone(),
        },
    };
    let mut skipped = Vec::new();
    for e in entries {
        let index = e["index"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| format!("a GPU without an index: {e}"))?;
        if let Some(error) = e["error"].as_str() {
            skipped.push(format!("cuda:{index}: {error}"));
            continue;
        }
        let bytes = |key: &str| {
            e[key]
                .as_u64()
                .ok_or_else(|| format!("cuda:{index} has no {key}: {e}"))
        };
        let (total_bytes, free_bytes) = (bytes("total_bytes")?, bytes("free_bytes")?);
        if free_bytes > total_bytes {
            return Err(format!("cuda:{index}: free_bytes exceeds total_bytes"));
        }
        if inventory.gpus.iter().any(|g| g.index == index) {
            return Err(format!("cuda:{index} is listed twice"));
        }
        inventory.gpus.push(Gpu {
            index,
            uuid: e["uuid"].as_str().unwrap_or_default().to_string(),
            total_bytes,
            free_bytes,
        });
        inventory
            .names
            .push(e["name"].as_str().unwrap_or_default().to_string());
    }
    if !skipped.is_empty() {
        let list = skipped.join("; ");
        inventory.reason = Some(match inventory.reason {
            Some(r) => format!("{r}; unusable: {list}"),
            None => format!("unusable: {list}"),
        });
    }
    Ok(inventory)
}

/// The inventory: [`FAKE_GPUS_ENV`]'s when set, else `worker_bin
/// --gpu-info`'s. Never fails: a failure is an inventory of no GPUs with
/// the reason, which the config check reports for each GPU model.
pub async fn read(worker_bin: &Path) -> Inventory {
    if let Some(fake) = std::env::var_os(FAKE_GPUS_ENV) {
        let text = fake.to_string_lossy();
        let parsed = serde_json::from_str(&text)
            .map_err(|e| e.to_string())
            .and_then(|json| parse(&json, true));
        return parsed.unwrap_or_else(|e| Inventory::none(format!("{FAKE_GPUS_ENV}: {e}")));
    }
    let bin = worker_bin.display();
    let run = tokio::process::Command::new(worker_bin)
        .arg("--gpu-info")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(READ_TIMEOUT, run).await {
        Err(_) => return Inventory::none(format!("{bin} --gpu-info took over {READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Inventory::none(format!("cannot run {bin} --gpu-info: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Inventory::none(format!(
            "{bin} --gpu-info failed ({}): {}",
            output.status,
            stderr.trim()
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| e.to_string())
        .and_then(|json| parse(&json, false))
        .unwrap_or_else(|e| Inventory::none(format!("{bin} --gpu-info: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_workers_inventory() {
        let json = json!({"cuda": true, "driver_version": "13.0", "gpus": [
            {"index": 0, "name": "H200", "uuid": "GPU-a", "total_bytes": 100, "free_bytes": 90,
             "compute_capability": [9, 0]},
            {"index": 1, "error": "CUDA_ERROR_ECC_UNCORRECTABLE"},
            {"index": 2, "name": "H200", "uuid": "GPU-c", "total_bytes": 100, "free_bytes": 10},
        ], "hibernation": {"supported": true}});
        let inv = parse(&json, false).expect("parses");
        assert_eq!(inv.hibernation["supported"], true);
        assert_eq!(
            inv.gpus
                .iter()
                .map(|g| (g.index, g.free_bytes))
                .collect::<Vec<_>>(),
            [(0, 90), (2, 10)]
        );
        assert_eq!(inv.gpus[1].uuid, "GPU-c");
        assert_eq!(inv.names, ["H200", "H200"]);
        assert_eq!(inv.driver_version.as_deref(), Some("13.0"));
        assert!(inv
            .reason
            .is_some_and(|r| r.contains("cuda:1: CUDA_ERROR_ECC")));
        assert!(!inv.fake);
    }

    #[test]
    fn a_build_without_cuda_has_no_gpus_and_says_why() {
        let json = json!({"cuda": false, "gpus": [], "reason": "built without the cuda feature"});
        let inv = parse(&json, false).expect("parses");
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.why_none(), "built without the cuda feature");
        // A worker that says nothing of hibernation: not supported, and why.
        assert_eq!(inv.hibernation["supported"], false);
        assert!(inv.hibernation["reason"].is_string());
    }

    #[test]
    fn malformed_inventories_are_refused() {
        for bad in [
            json!({}),
            json!({"gpus": [{"name": "no index"}]}),
            json!({"gpus": [{"index": 0, "total_bytes": 10}]}),
            json!({"gpus": [{"index": 0, "total_bytes": 10, "free_bytes": 20}]}),
            json!({"gpus": [{"index": 0, "total_bytes": 10, "free_bytes": 1},
                            {"index": 0, "total_bytes": 10, "free_bytes": 1}]}),
        ] {
            assert!(parse(&bad, true).is_err(), "{bad}");
        }
    }
}
