//! thaw-gateway: the edge of thaw — config, routing, admission, autoscaling
//! and supervision of workers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod autoscaler;
pub mod config;
pub mod metrics;
pub mod models;
pub mod proxy;
pub mod serve;
pub mod supervisor;
