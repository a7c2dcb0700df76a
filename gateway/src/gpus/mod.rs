//! The gateway's GPUs: the inventory (read once, when the first model asks
//! for `cuda`), the memory promised to each GPU instance thaw runs, and the
//! placement of a new instance (`crate::placement`'s pure choice, under one
//! lock with the promises). A promise is a [`Lease`] that lives as long as
//! the instance: dropping it (the worker exited, failed to start, or was
//! scaled away) gives the memory back.
//!
//! The inventory's free memory is read once, so the promises count every
//! instance thaw placed since, resident or not; memory that other
//! processes take later is not seen (a worker that then cannot allocate
//! fails to start, and its start failure is reported like any other).

pub mod check;
pub mod inventory;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

pub use check::{check, weights_bytes};
pub use inventory::{Inventory, FAKE_GPUS_ENV};

use crate::config::{Config, ConfigError, ModelConfig};
use crate::placement::{self, DeviceRequest, NoPlace, Policy};

/// The GPUs and what is promised on them.
#[derive(Debug, Default)]
pub struct Gpus {
    inventory: OnceLock<Inventory>,
    loading: tokio::sync::Mutex<()>,
    state: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    policy: Policy,
    next: u64,
    /// Lease id → (GPU index, bytes).
    leases: HashMap<u64, (u32, u64)>,
}

/// Memory promised on one GPU to one instance; dropping it releases it.
#[derive(Debug)]
pub struct Lease {
    gpus: Arc<Gpus>,
    id: u64,
    /// The GPU's CUDA ordinal.
    pub gpu: u32,
    /// Bytes promised.
    pub bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.gpus.ledger().leases.remove(&self.id);
    }
}

impl Gpus {
    /// No inventory yet (read on first need), placing by `policy`.
    pub fn new(policy: Policy) -> Arc<Gpus> {
        let gpus = Gpus::default();
        gpus.ledger().policy = policy;
        Arc::new(gpus)
    }

    /// With `inventory` already known (tests).
    pub fn with_inventory(inventory: Inventory, policy: Policy) -> Arc<Gpus> {
        let gpus = Gpus::new(policy);
        let _ = gpus.inventory.set(inventory);
        gpus
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Each update leaves the map whole: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inventory, if it has been read.
    pub fn inventory(&self) -> Option<&Inventory> {
        self.inventory.get()
    }

    /// The inventory, read now through `worker_bin` (or the fake one) if
    /// it has not been yet.
    pub async fn load(&self, worker_bin: &Path) -> &Inventory {
        let _one_at_a_time = self.loading.lock().await;
        if let Some(inventory) = self.inventory.get() {
            return inventory;
        }
        let read = inventory::read(worker_bin).await;
        tracing::info!(
            gpus = read.gpus.len(),
            fake = read.fake,
            reason = read.reason.as_deref(),
            "GPU inventory"
        );
        self.inventory.get_or_init(|| read)
    }

    /// Checks `config`'s GPU models (`check`) against the inventory, which
    /// is read through `worker_bin` now if this is the first config that
    /// has one; a config without GPU models needs no inventory.
    pub async fn check_config(
        &self,
        config: &Config,
        text: &str,
        path: &Path,
        worker_bin: &Path,
    ) -> Result<(), ConfigError> {
        let on_gpus: Vec<ModelConfig> = config
            .models
            .iter()
            .filter(|m| m.device_request() != DeviceRequest::Cpu)
            .cloned()
            .collect();
        if on_gpus.is_empty() {
            return Ok(());
        }
        // Stats the sources' files: off the async threads. A failure here
        // only loses the size check (a need of 0 always fits).
        let needs: HashMap<String, u64> = tokio::task::spawn_blocking(move || {
            on_gpus
                .iter()
                .map(|m| {
                    let kind = m
                        .kind
                        .or_else(|| thaw_snapshot::detect_kind(&m.source).ok());
                    let need = check::need(m.memory_limit, kind, weights_bytes(&m.source));
                    (m.name.clone(), need)
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        let inventory = self.load(worker_bin).await;
        check(config, text, path, inventory, |m| {
            needs.get(&m.name).copied().unwrap_or(0)
        })
    }

    /// Places by `policy` from now on.
    pub fn set_policy(&self, policy: Policy) {
        self.ledger().policy = policy;
    }

    /// The promises now, per GPU index.
    pub fn promised(&self) -> Vec<(u32, u64)> {
        let mut by_gpu: HashMap<u32, u64> = HashMap::new();
        for (gpu, bytes) in self.ledger().leases.values() {
            *by_gpu.entry(*gpu).or_default() += bytes;
        }
        let mut list: Vec<(u32, u64)> = by_gpu.into_iter().collect();
        list.sort_unstable();
        list
    }

    /// Chooses a GPU for an instance that needs `need` bytes and promises
    /// them on it until the lease is dropped.
    pub fn place(self: &Arc<Self>, request: DeviceRequest, need: u64) -> Result<Lease, NoPlace> {
        let Some(inventory) = self.inventory.get() else {
            return Err(NoPlace::NoGpus);
        };
        let mut ledger = self.ledger();
        let promised: Vec<(u32, u64)> = ledger.leases.values().copied().collect();
        let gpu = placement::place(&inventory.gpus, &promised, request, need, ledger.policy)?;
        ledger.next += 1;
        let id = ledger.next;
        ledger.leases.insert(id, (gpu, need));
        Ok(Lease {
            gpus: self.clone(),
            id,
            gpu,
            bytes: need,
        })
    }

    /// The `--device` a worker placed on `gpu` is started with: `cuda:N`,
    /// or `cpu` under a fake inventory (its GPUs do not exist; the worker
    /// stays honest about what it runs on).
    pub fn worker_device(&self, gpu: u32) -> String {
        match self.inventory.get() {
            Some(inventory) if inventory.fake => "cpu".into(),
            _ => format!("cuda:{gpu}"),
        }
    }

    /// `/admin/status`'s `gpus`: null until the inventory is read.
    pub fn status(&self) -> Value {
        let Some(inventory) = self.inventory.get() else {
            return Value::Null;
        };
        let promised = self.promised();
        let gpus: Vec<Value> = inventory
            .gpus
            .iter()
            .zip(&inventory.names)
            .map(|(g, name)| {
                let held = promised.iter().find(|p| p.0 == g.index).map_or(0, |p| p.1);
                json!({
                    "index": g.index, "name": name, "uuid": g.uuid,
                    "total_bytes": g.total_bytes, "free_bytes": g.free_bytes,
                    "promised_bytes": held,
                })
            })
            .collect();
        json!({
            "fake": inventory.fake,
            "driver_version": inventory.driver_version,
            "reason": inventory.reason,
            "policy": self.ledger().policy.as_str(),
            "hibernation": inventory.hibernation,
            "gpus": gpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Gpu;

    const GIB: u64 = 1 << 30;

    fn two_gpus(free_gib: u64, fake: bool) -> Inventory {
        Inventory {
            gpus: (0..2)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    total_bytes: 80 * GIB,
                    free_bytes: free_gib * GIB,
                })
                .collect(),
            names: vec!["fake".into(); 2],
            driver_version: None,
            reason: None,
            fake,
            hibernation: serde_json::Value::Null,
        }
    }

    #[test]
    fn promises_are_kept_until_the_lease_is_dropped() {
        let gpus = Gpus::with_inventory(two_gpus(40, false), Policy::Spread);
        let a = gpus.place(DeviceRequest::Gpu(1), 10 * GIB).expect("room");
        let b = gpus.place(DeviceRequest::Gpu(1), 5 * GIB).expect("room");
        assert_eq!((a.gpu, b.gpu), (1, 1));
        assert_eq!(gpus.promised(), [(1, 15 * GIB)]);
        drop(a);
        assert_eq!(gpus.promised(), [(1, 5 * GIB)]);
        drop(b);
        assert_eq!(gpus.promised(), []);
    }

    #[test]
    fn spread_scales_out_across_gpus_and_pack_fills_one() {
        let spread = Gpus::with_inventory(two_gpus(40, false), Policy::Spread);
        let leases: Vec<Lease> = (0..4)
            .map(|_| spread.place(DeviceRequest::AnyGpu, 10 * GIB).expect("room"))
            .collect();
        assert_eq!(
            leases.iter().map(|l| l.gpu).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );

        let pack = Gpus::with_inventory(two_gpus(40, false), Policy::Pack);
        let leases: Vec<Lease> = (0..4)
            .map(|_| pack.place(DeviceRequest::AnyGpu, 10 * GIB).expect("room"))
            .collect();
        assert_eq!(
            leases.iter().map(|l| l.gpu).collect::<Vec<_>>(),
            [0, 0, 0, 0]
        );
        // The fifth does not fit on GPU 0 any more: GPU 1 takes it.
        let fifth = pack.place(DeviceRequest::AnyGpu, 10 * GIB).expect("room");
        assert_eq!(fifth.gpu, 1);
    }

    #[test]
    fn none_left_is_an_error_until_an_instance_goes() {
        let gpus = Gpus::with_inventory(two_gpus(10, false), Policy::Spread);
        let first = gpus.place(DeviceRequest::AnyGpu, 8 * GIB).expect("room");
        let _second = gpus.place(DeviceRequest::AnyGpu, 8 * GIB).expect("room");
        assert_eq!(
            gpus.place(DeviceRequest::AnyGpu, 8 * GIB).map(|l| l.gpu),
            Err(NoPlace::NoRoom {
                need: 8 * GIB,
                most_free: 2 * GIB
            })
        );
        drop(first);
        let again = gpus
            .place(DeviceRequest::AnyGpu, 8 * GIB)
            .expect("room again");
        assert_eq!(again.gpu, 0, "the GPU the first instance left");
    }

    #[test]
    fn a_policy_change_applies_to_the_next_placement() {
        let gpus = Gpus::with_inventory(two_gpus(40, false), Policy::Pack);
        let _a = gpus.place(DeviceRequest::AnyGpu, GIB).expect("room");
        gpus.set_policy(Policy::Spread);
        let b = gpus.place(DeviceRequest::AnyGpu, GIB).expect("room");
        assert_eq!(b.gpu, 1);
        assert_eq!(gpus.status()["policy"], "spread");
    }

    #[test]
    fn without_an_inventory_nothing_is_placed() {
        let gpus = Gpus::new(Policy::Spread);
        assert_eq!(
            gpus.place(DeviceRequest::AnyGpu, 1).map(|l| l.gpu),
            Err(NoPlace::NoGpus)
        );
        assert!(gpus.status().is_null());
    }

    #[test]
    fn workers_of_a_fake_inventory_run_on_the_cpu() {
        let real = Gpus::with_inventory(two_gpus(40, false), Policy::Spread);
        assert_eq!(real.worker_device(1), "cuda:1");
        let fake = Gpus::with_inventory(two_gpus(40, true), Policy::Spread);
        assert_eq!(fake.worker_device(1), "cpu");
        let _lease = fake.place(DeviceRequest::AnyGpu, 3 * GIB).expect("room");
        let status = fake.status();
        assert_eq!(status["fake"], true);
        assert_eq!(status["gpus"][0]["promised_bytes"], 3 * GIB);
        assert_eq!(status["gpus"][1]["promised_bytes"], 0);
    }
}
