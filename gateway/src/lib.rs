//! thaw-gateway: the edge of thaw — config, routing, admission, autoscaling
//! and supervision of workers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod autoscaler;
pub mod config;
pub mod ctl;
pub mod gpus;
pub mod metrics;
pub mod models;
pub mod placement;
pub mod proxy;
pub mod reload;
pub mod serve;
pub mod stop;
pub mod supervisor;
