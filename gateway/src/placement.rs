//! Where a GPU instance goes: a pure function from the GPUs' inventory, the
//! memory already promised to thaw's instances, the model's device request
//! and its memory need, to a GPU — or the reason there is none (the gateway
//! answers that with a 503 and Retry-After). `crate::gpus` keeps the
//! promises and calls this for every GPU instance the supervisor starts.

use thaw_snapshot::ModelKind;

/// One GPU as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The CUDA ordinal.
    pub index: u32,
    /// The device's UUID.
    pub uuid: String,
    /// Total memory, bytes.
    pub total_bytes: u64,
    /// Free memory now, bytes.
    pub free_bytes: u64,
}

/// What a model's `device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// `cpu`.
    Cpu,
    /// `cuda`: the placer chooses.
    AnyGpu,
    /// `cuda:N`: pinned.
    Gpu(u32),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::AnyGpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Gpu)
                .ok_or_else(|| format!("device {s:?} is not cpu, cuda or cuda:N")),
        }
    }
}

/// How instances share GPUs (`[gateway] gpu_placement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// The GPU with the most room: instances of a model spread out.
    #[default]
    Spread,
    /// The fullest GPU that still fits: GPUs left whole for big models.
    Pack,
}

impl Policy {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Pack => "pack",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            _ => Err(format!("{s:?} is not a placement policy (spread, pack)")),
        }
    }
}

/// Why no GPU was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPlace {
    /// A CPU model is not placed on a GPU.
    #[error("the model runs on the CPU")]
    Cpu,
    /// There are no GPUs.
    #[error("this machine has no GPU")]
    NoGpus,
    /// `cuda:N` names a GPU that does not exist.
    #[error("cuda:{0} does not exist ({1} GPUs)")]
    NoSuchGpu(u32, usize),
    /// No GPU (or not the pinned one) has the room now.
    #[error("no GPU has {need} bytes free (the most free: {most_free})")]
    NoRoom {
        /// Bytes needed.
        need: u64,
        /// The most any eligible GPU has after what is promised.
        most_free: u64,
    },
}

/// Memory an instance of a model needs on its GPU: its weights (the
/// snapshot's size), a per-kind working margin (activations; a chat model's
/// KV cache for its sequences) and the CUDA context.
pub fn memory_need(weights_bytes: u64, kind: ModelKind) -> u64 {
    const MIB: u64 = 1 << 20;
    let margin = match kind {
        ModelKind::Tabular => 64 * MIB,
        ModelKind::Embedding => 256 * MIB + weights_bytes / 10,
        // 8 sequences of an 8k context of a small model, and the rest.
        ModelKind::Chat => 1024 * MIB + weights_bytes / 5,
    };
    weights_bytes + margin + CUDA_CONTEXT_BYTES
}

/// What a CUDA context with cuBLAS holds on its GPU: part of every GPU
/// instance's need, and all that a standby process holds while it waits.
pub const CUDA_CONTEXT_BYTES: u64 = 512 << 20;

/// Chooses a GPU for an instance needing `need` bytes. `promised` is the
/// memory of thaw's instances placed since the inventory was read, per GPU
/// index (the inventory's free memory does not show them).
pub fn place(
    gpus: &[Gpu],
    promised: &[(u32, u64)],
    request: DeviceRequest,
    need: u64,
    policy: Policy,
) -> Result<u32, NoPlace> {
    let room = |g: &Gpu| {
        let held: u64 = promised
            .iter()
            .filter(|p| p.0 == g.index)
            .map(|p| p.1)
            .sum();
        g.free_bytes.saturating_sub(held)
    };
    let eligible: Vec<&Gpu> = match request {
        DeviceRequest::Cpu => return Err(NoPlace::Cpu),
        _ if gpus.is_empty() => return Err(NoPlace::NoGpus),
        DeviceRequest::AnyGpu => gpus.iter().collect(),
        DeviceRequest::Gpu(n) => match gpus.iter().find(|g| g.index == n) {
            Some(g) => vec![g],
            None => return Err(NoPlace::NoSuchGpu(n, gpus.len())),
        },
    };
    let fitting = eligible.iter().filter(|g| room(g) >= need);
    // Ties go to the lower index, so placement is deterministic.
    let chosen = match policy {
        Policy::Spread => fitting.max_by(|a, b| room(a).cmp(&room(b)).then(b.index.cmp(&a.index))),
        Policy::Pack => fitting.min_by(|a, b| room(a).cmp(&room(b)).then(a.index.cmp(&b.index))),
    };
    chosen.map(|g| g.index).ok_or_else(|| NoPlace::NoRoom {
        need,
        most_free: eligible.iter().map(|g| room(g)).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpus(free: &[u64]) -> Vec<Gpu> {
        free.iter()
            .enumerate()
            .map(|(i, &f)| Gpu {
                index: i as u32,
                uuid: format!("GPU-{i}"),
                total_bytes: 80 * GIB,
                free_bytes: f * GIB,
            })
            .collect()
    }

    #[test]
    fn device_requests_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::AnyGpu));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Gpu(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA"] {
            assert!(bad.parse::<DeviceRequest>().is_err(), "{bad:?}");
        }
        assert_eq!("pack".parse(), Ok(Policy::Pack));
        assert_eq!("spread".parse::<Policy>().map(Policy::as_str), Ok("spread"));
        assert!("balanced".parse::<Policy>().is_err());
    }

    /// name, inventory, promised, request, need, policy, expected.
    type Case = (
        &'static str,
        Vec<Gpu>,
        Vec<(u32, u64)>,
        DeviceRequest,
        u64,
        Policy,
        Result<u32, NoPlace>,
    );

    #[test]
    fn placement_table() {
        use DeviceRequest::{AnyGpu, Cpu, Gpu as Pinned};
        use Policy::*;
        let cases: [Case; 10] = [
            (
                "spread: most room",
                gpus(&[10, 40, 20]),
                vec![],
                AnyGpu,
                5 * GIB,
                Spread,
                Ok(1),
            ),
            (
                "pack: fullest that fits",
                gpus(&[10, 40, 20]),
                vec![],
                AnyGpu,
                5 * GIB,
                Pack,
                Ok(0),
            ),
            (
                "pack skips what does not fit",
                gpus(&[4, 40, 20]),
                vec![],
                AnyGpu,
                5 * GIB,
                Pack,
                Ok(2),
            ),
            (
                "promised memory counts",
                gpus(&[30, 40]),
                vec![(1, 20 * GIB)],
                AnyGpu,
                5 * GIB,
                Spread,
                Ok(0),
            ),
            (
                "ties go to the lower index",
                gpus(&[40, 40]),
                vec![],
                AnyGpu,
                GIB,
                Spread,
                Ok(0),
            ),
            (
                "pinned",
                gpus(&[10, 40]),
                vec![],
                Pinned(0),
                5 * GIB,
                Spread,
                Ok(0),
            ),
            (
                "pinned and full",
                gpus(&[10, 40]),
                vec![(0, 8 * GIB)],
                Pinned(0),
                5 * GIB,
                Spread,
                Err(NoPlace::NoRoom {
                    need: 5 * GIB,
                    most_free: 2 * GIB,
                }),
            ),
            (
                "no such GPU",
                gpus(&[10]),
                vec![],
                Pinned(2),
                GIB,
                Spread,
                Err(NoPlace::NoSuchGpu(2, 1)),
            ),
            (
                "no GPUs",
                vec![],
                vec![],
                AnyGpu,
                GIB,
                Spread,
                Err(NoPlace::NoGpus),
            ),
            (
                "nowhere has room",
                gpus(&[3, 4]),
                vec![],
                AnyGpu,
                5 * GIB,
                Pack,
                Err(NoPlace::NoRoom {
                    need: 5 * GIB,
                    most_free: 4 * GIB,
                }),
            ),
        ];
        for (name, inventory, promised, request, need, policy, want) in cases {
            assert_eq!(
                place(&inventory, &promised, request, need, policy),
                want,
                "{name}"
            );
        }
        assert_eq!(
            place(&gpus(&[40]), &[], Cpu, GIB, Spread),
            Err(NoPlace::Cpu)
        );
    }

    #[test]
    fn instances_of_a_model_spread_across_gpus_and_pack_onto_one() {
        // Four 10 GiB instances placed one after another on three 40 GiB GPUs.
        let inventory = gpus(&[40, 40, 40]);
        let run = |policy| {
            let mut promised = Vec::new();
            (0..4)
                .map(|_| {
                    let g = place(
                        &inventory,
                        &promised,
                        DeviceRequest::AnyGpu,
                        10 * GIB,
                        policy,
                    )
                    .expect("room");
                    promised.push((g, 10 * GIB));
                    g
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(Policy::Spread), [0, 1, 2, 0]);
        assert_eq!(run(Policy::Pack), [0, 0, 0, 0]);
    }

    #[test]
    fn memory_needs_grow_with_the_weights_and_the_kind() {
        let w = 100 << 20;
        assert!(memory_need(w, ModelKind::Chat) > memory_need(w, ModelKind::Embedding));
        assert!(memory_need(w, ModelKind::Embedding) > memory_need(w, ModelKind::Tabular));
        assert!(
            memory_need(2 * w, ModelKind::Embedding) > memory_need(w, ModelKind::Embedding) + w
        );
    }
}
