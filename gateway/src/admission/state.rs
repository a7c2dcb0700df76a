//! The pure core of a model's admission: its instances with their in-flight
//! counts, the FIFO queue of waiters, the shedding rules and who gets the
//! next free slot. No clock, no channels: a waiter is any `W` (a oneshot
//! sender in [`super::Admission`], a tag in tests), and every operation that
//! frees capacity returns the [`Grant`]s its caller must deliver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::estimate::{expected_wait, retry_after, ServiceTime};
use super::{AdmissionStats, InstanceId, InstanceStats, Rejection, ShedCounts};
use crate::config::QueuePolicy;

/// A request is admitted only if its expected wait is within this share of
/// its deadline: the estimate is a mean, and waits spread around it, so
/// admitting right up to the deadline lets some admitted requests time out
/// (measured: 5-11 % of admitted requests got 504 at 3x overload without it).
pub const DEADLINE_HEADROOM: f64 = 0.8;

/// One slot on one instance: what a permit holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The instance.
    pub instance: InstanceId,
    /// Its worker's address.
    pub address: Arc<str>,
}

/// A queued waiter's place; ids grow, so their order is the queue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(u64);

/// The answer to a request for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// A slot, at once.
    Granted(Slot),
    /// Queued: wait at most `wait_limit` (the deadline, capped by the
    /// queue timeout) for a [`Grant`].
    Queued {
        /// The waiter's place.
        id: WaiterId,
        /// How long it may wait.
        wait_limit: Duration,
    },
    /// Shed or closed; nothing was taken.
    Rejected(Rejection),
}

/// A slot handed to a queued waiter, for the caller to deliver.
#[derive(Debug)]
pub struct Grant<W> {
    /// The waiter, as queued.
    pub waiter: W,
    /// Its slot (already counted as in flight).
    pub slot: Slot,
}

/// Why a waiter leaves the queue without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Its deadline passed.
    TimedOut,
    /// Its client went away.
    HungUp,
}

#[derive(Debug)]
struct Instance {
    id: InstanceId,
    address: Arc<str>,
    in_flight: u32,
    ready: bool,
}

/// A model's admission state.
#[derive(Debug)]
pub struct State<W> {
    /// In the order they were added; removed ones stay while they hold
    /// permits.
    instances: Vec<Instance>,
    queue: BTreeMap<WaiterId, W>,
    next_waiter: u64,
    policy: QueuePolicy,
    max_concurrency: u32,
    service: ServiceTime,
    counts: ShedCounts,
    closed: bool,
}

impl<W> State<W> {
    /// No instances, an empty queue.
    pub fn new(policy: QueuePolicy, max_concurrency: u32) -> Self {
        State {
            instances: Vec::new(),
            queue: BTreeMap::new(),
            next_waiter: 0,
            policy,
            max_concurrency,
            service: ServiceTime::default(),
            counts: ShedCounts::default(),
            closed: false,
        }
    }

    /// Admits a request that will wait at most `deadline`: a slot on the
    /// least-loaded ready instance when one is free and nobody is queued,
    /// else shed (queue full, or the expected wait exceeds the deadline) or
    /// queued. A shed takes no slot and touches no instance.
    pub fn admit(&mut self, deadline: Duration, waiter: W) -> Admit {
        if self.closed {
            return Admit::Rejected(Rejection::Closed);
        }
        if self.queue.is_empty() {
            if let Some(slot) = self.take_slot() {
                return Admit::Granted(slot);
            }
        }
        let timeout = self.policy.timeout;
        let wait_limit = deadline.min(timeout);
        let ahead = self.queue.len();
        if ahead >= self.policy.max_depth {
            self.counts.queue_full += 1;
            let wait = self.expected_wait(ahead).unwrap_or(timeout);
            return Admit::Rejected(Rejection::QueueFull {
                retry_after: retry_after(wait, timeout),
            });
        }
        if let Some(wait) = self.expected_wait(ahead) {
            if wait > wait_limit.mul_f64(DEADLINE_HEADROOM) {
                self.counts.would_miss_deadline += 1;
                return Admit::Rejected(Rejection::WouldMissDeadline {
                    retry_after: retry_after(wait, timeout),
                });
            }
        }
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        self.queue.insert(id, waiter);
        Admit::Queued { id, wait_limit }
    }

    /// A slot at once when one is free and nobody is queued; else `None`
    /// and nothing changes (the caller then queues through `admit`).
    pub fn try_grant(&mut self) -> Option<Slot> {
        if self.closed || !self.queue.is_empty() {
            return None;
        }
        self.take_slot()
    }

    /// The predicted wait behind `ahead` queued requests; `None` before the
    /// first measurement or with no ready instance (a cold start: queue,
    /// never shed on a guess).
    pub fn expected_wait(&self, ahead: usize) -> Option<Duration> {
        expected_wait(self.service.mean()?, ahead, self.capacity())
    }

    /// Takes waiter `id` out of the queue; false when it is no longer
    /// there (it was granted a slot, or left already).
    pub fn leave(&mut self, id: WaiterId, why: Leave) -> bool {
        if self.queue.remove(&id).is_none() {
            return false;
        }
        match why {
            Leave::TimedOut => self.counts.timeout += 1,
            Leave::HungUp => self.counts.cancelled += 1,
        }
        true
    }

    /// Gives `slot` back; `hold` (how long it was used) feeds the service
    /// time, `None` for a slot that never served. The freed slot goes to
    /// the queue's head.
    pub fn release(&mut self, slot: &Slot, hold: Option<Duration>) -> Vec<Grant<W>> {
        if let Some(hold) = hold {
            self.service.record(hold);
        }
        if let Some(pos) = self.instances.iter().position(|i| i.id == slot.instance) {
            let inst = &mut self.instances[pos];
            inst.in_flight = inst.in_flight.saturating_sub(1);
            if !inst.ready && inst.in_flight == 0 {
                self.instances.remove(pos);
            }
        }
        self.grants()
    }

    /// Adds a ready instance (or revives a removed one with the same id);
    /// queued waiters drain into it at once.
    pub fn add_instance(&mut self, id: InstanceId, address: &str) -> Vec<Grant<W>> {
        match self.instances.iter_mut().find(|i| i.id == id) {
            Some(inst) => {
                inst.ready = true;
                inst.address = Arc::from(address);
            }
            None => self.instances.push(Instance {
                id,
                address: Arc::from(address),
                in_flight: 0,
                ready: true,
            }),
        }
        self.grants()
    }

    /// Stops routing to instance `id`; its permits stay valid until they
    /// are dropped. False when it was not ready.
    pub fn remove_instance(&mut self, id: InstanceId) -> bool {
        let Some(pos) = self.instances.iter().position(|i| i.id == id) else {
            return false;
        };
        let was_ready = std::mem::replace(&mut self.instances[pos].ready, false);
        if self.instances[pos].in_flight == 0 {
            self.instances.remove(pos);
        }
        was_ready
    }

    /// New queue policy and per-instance cap (live reload). Waiters already
    /// queued stay even if the new queue is shorter; a higher cap drains
    /// the queue into the new slots.
    pub fn set_policy(&mut self, policy: QueuePolicy, max_concurrency: u32) -> Vec<Grant<W>> {
        self.policy = policy;
        self.max_concurrency = max_concurrency;
        self.grants()
    }

    /// Admits nothing more; returns the queued waiters, to be told so.
    pub fn close(&mut self) -> Vec<W> {
        self.closed = true;
        std::mem::take(&mut self.queue).into_values().collect()
    }

    /// Admits nothing more (new requests get [`Rejection::Closed`]) but
    /// keeps the queue: its waiters are still served as slots free up. A
    /// removed or drained model finishes what it accepted this way.
    pub fn retire(&mut self) {
        self.closed = true;
    }

    /// Admits again after [`State::retire`] or [`State::close`].
    pub fn reopen(&mut self) {
        self.closed = false;
    }

    /// Whether new requests are refused.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests waiting now.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Takes every queued waiter out (without closing): the model cannot
    /// get capacity now, and they are better told so than left to time out.
    pub fn fail_waiting(&mut self) -> Vec<W> {
        std::mem::take(&mut self.queue).into_values().collect()
    }

    /// True while requests wait and no instance is ready: the activator's
    /// cue to ask for one now.
    pub fn wants_capacity(&self) -> bool {
        !self.queue.is_empty() && self.ready_count() == 0
    }

    /// The queue policy in force.
    pub fn policy(&self) -> &QueuePolicy {
        &self.policy
    }

    /// A snapshot of the counts.
    pub fn stats(&self) -> AdmissionStats {
        let in_flight: usize = self.instances.iter().map(|i| i.in_flight as usize).sum();
        let queue_depth = self.queue.len();
        AdmissionStats {
            queue_depth,
            in_flight,
            ready_instances: self.ready_count(),
            capacity: self.capacity(),
            instances: self
                .instances
                .iter()
                .map(|i| InstanceStats {
                    id: i.id,
                    address: i.address.to_string(),
                    in_flight: i.in_flight,
                    ready: i.ready,
                })
                .collect(),
            observed_concurrency: in_flight + queue_depth,
            service_time: self.service.mean(),
            shed: self.counts,
        }
    }

    /// Hands free slots to the queue's head, in order, while both last.
    fn grants(&mut self) -> Vec<Grant<W>> {
        let mut out = Vec::new();
        while !self.queue.is_empty() {
            let Some(slot) = self.take_slot() else { break };
            match self.queue.pop_first() {
                Some((_, waiter)) => out.push(Grant { waiter, slot }),
                None => break,
            }
        }
        out
    }

    /// A slot on the least-loaded ready instance with room (the earliest
    /// added on a tie), counted as in flight.
    fn take_slot(&mut self) -> Option<Slot> {
        let cap = self.max_concurrency;
        let inst = self
            .instances
            .iter_mut()
            .filter(|i| i.ready && i.in_flight < cap)
            .min_by_key(|i| i.in_flight)?;
        inst.in_flight += 1;
        Some(Slot {
            instance: inst.id,
            address: inst.address.clone(),
        })
    }

    /// Instances taking new requests.
    pub(super) fn ready_count(&self) -> usize {
        self.instances.iter().filter(|i| i.ready).count()
    }

    fn capacity(&self) -> usize {
        self.ready_count() * self.max_concurrency as usize
    }
}
