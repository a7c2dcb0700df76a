//! thaw-gateway: the edge of thaw — config, routing, admission, autoscaling
//! and supervision of workers.
#![forbid(unsafe_code)]

pub mod admission;
pub mod autoscaler;
pub mod config;
