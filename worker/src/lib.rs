//! thaw-worker: serves one model. Model work runs on a batching executor's
//! own threads; the HTTP API (OpenAI and KServe v2) runs on tokio and talks to
//! the executor over a channel.
// No unsafe code; the CUDA build allows it in `gpu` only (driver calls).
#![cfg_attr(not(feature = "cuda"), forbid(unsafe_code))]

pub mod api;
pub mod batcher;
pub mod gpu;
pub mod hibernate;
pub mod models;
pub mod serve;
pub mod standby;
pub mod template;

pub use batcher::{BatchConfig, Batcher};
pub use models::{LoadOptions, LoadedModel, ModelError};
