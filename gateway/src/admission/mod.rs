//! Admission: each model's bounded FIFO queue in front of its ready
//! instances, with load shedding and capacity as permits.
//!
//! [`State`] is the pure core (which instance, queue or shed, who gets the
//! next free slot); [`Admission`] is its async shell: `acquire` waits for a
//! [`Permit`], and dropping the permit hands its slot to the next waiter.
//! A request is shed (`429`) when the queue is full or when its predicted
//! wait exceeds its deadline; a queued request that outlives its deadline
//! gets [`Rejection::Timeout`] (`504`).

mod estimate;
mod handle;
mod permit;
mod state;

use std::fmt;
use std::time::Duration;

pub use estimate::{expected_wait, retry_after, ServiceTime};
pub use handle::{Activity, Admission};
pub use permit::Permit;
pub use state::{Admit, Grant, Leave, Slot, State, WaiterId};

/// One ready worker of a model, as the supervisor names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a request got no permit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The queue holds `max_depth` waiters already (shed, 429).
    #[error("the model's queue is full; retry after {}s", retry_after.as_secs())]
    QueueFull {
        /// Whole seconds, at least 1, from the expected wait.
        retry_after: Duration,
    },
    /// The predicted wait exceeds the request's deadline (shed, 429).
    #[error("the expected wait exceeds the deadline; retry after {}s", retry_after.as_secs())]
    WouldMissDeadline {
        /// Whole seconds, at least 1, from the expected wait.
        retry_after: Duration,
    },
    /// The request waited its whole deadline in the queue (504).
    #[error("no instance became free within the queue timeout")]
    Timeout,
    /// The model is being removed and admits nothing more (503).
    #[error("the model is shutting down")]
    Closed,
}

impl Rejection {
    /// The `Retry-After` to send, where the rejection has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::QueueFull { retry_after } | Rejection::WouldMissDeadline { retry_after } => {
                Some(*retry_after)
            }
            Rejection::Timeout | Rejection::Closed => None,
        }
    }

    /// A short label for metrics (`reason="queue_full"`).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::QueueFull { .. } => "queue_full",
            Rejection::WouldMissDeadline { .. } => "would_miss_deadline",
            Rejection::Timeout => "timeout",
            Rejection::Closed => "closed",
        }
    }
}

/// Requests turned away, by reason, since the model's admission started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShedCounts {
    /// Shed because the queue was full.
    pub queue_full: u64,
    /// Shed because the expected wait exceeded the deadline.
    pub would_miss_deadline: u64,
    /// Queued, then timed out.
    pub timeout: u64,
    /// Queued, then the client went away.
    pub cancelled: u64,
}

/// One instance's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    /// The instance.
    pub id: InstanceId,
    /// Its worker's address (unix socket path).
    pub address: String,
    /// Permits held on it.
    pub in_flight: u32,
    /// False once removed: it only finishes what it holds.
    pub ready: bool,
}

/// A snapshot of a model's admission, for the autoscaler and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionStats {
    /// Requests waiting in the queue.
    pub queue_depth: usize,
    /// Permits held, removed instances included.
    pub in_flight: usize,
    /// Instances taking new requests.
    pub ready_instances: usize,
    /// Slots of the ready instances (`ready × max_concurrency`).
    pub capacity: usize,
    /// Every instance that is ready or still holds permits.
    pub instances: Vec<InstanceStats>,
    /// `in_flight + queue_depth`: what the autoscaler samples.
    pub observed_concurrency: usize,
    /// The measured mean permit hold time, once there is one.
    pub service_time: Option<Duration>,
    /// Rejections by reason.
    pub shed: ShedCounts,
}

#[cfg(test)]
mod async_tests;
#[cfg(test)]
mod state_tests;
