//! The autoscaler: how many instances each model should have.
//!
//! [`desired`] is the policy, a pure function in the manner of Knative's
//! KPA (stable and panic windows, a scale-down delay) with a separate
//! timer for 1 → 0; [`Recorder`] keeps the samples and past decisions it
//! needs; [`Autoscaler`] ties the two for one tick; [`run`] is the loop
//! that samples a model's [`Admission`](crate::admission::Admission) and
//! publishes decisions for the supervisor.

mod policy;
mod recorder;
mod service;

pub use policy::{desired, instances_for, is_burst, Decision, Observed, Panic};
pub use recorder::{Autoscaler, Recorder};
pub use service::run;

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod scenario_tests;
