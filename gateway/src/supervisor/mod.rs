//! The supervisor: per model, a pool of worker processes kept at the count
//! the autoscaler decides. It starts workers (waiting for their ready
//! message), adds them to the model's admission when ready, replaces those
//! that die, and drains then stops those no longer wanted. Workers are
//! forked from a per-model template that holds the model built and warm.

pub mod health;
pub mod pool;
pub mod process;
pub mod snapshots;
pub mod standby;
pub mod template;

pub use pool::{InstanceInfo, Pool, PoolEnv, PoolEvents, PoolPaths, TemplateInfo};
pub use process::{spawn, ProcessHandle, SpawnError, WorkerProcess, WorkerSpec};
