//! [`Admission`], the async shell around a model's [`State`]: `acquire`
//! admits, queues or sheds; queued waiters are handed slots over oneshot
//! channels; the supervisor adds and removes instances; the activator and
//! autoscaler watch for demand that no instance can serve.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::permit::{Permit, Waiting};
use super::state::{Admit, Grant, Slot, State};
use super::{AdmissionStats, InstanceId, Rejection};
use crate::config::QueuePolicy;

/// What a queued waiter is: the sending end of its slot.
pub(super) type Tx = oneshot::Sender<Slot>;

/// A model's admission; cheap to clone (all clones share one state).
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State<Tx>>,
    wants: watch::Sender<bool>,
    activity: watch::Sender<Activity>,
}

/// What a reload or a drain waits for: instances becoming ready, the queue
/// emptying. Changes only on those transitions, so watching it costs the
/// request path nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Instances taking new requests.
    pub ready: usize,
    /// Whether no request waits in the queue.
    pub queue_empty: bool,
}

impl Admission {
    /// No instances yet; `max_concurrency` is the hard per-instance cap.
    pub fn new(policy: QueuePolicy, max_concurrency: u32) -> Self {
        let (wants, _) = watch::channel(false);
        let (activity, _) = watch::channel(Activity {
            ready: 0,
            queue_empty: true,
        });
        Admission {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(policy, max_concurrency)),
                wants,
                activity,
            }),
        }
    }

    /// A permit on the least-loaded ready instance, at once when one has a
    /// free slot and nobody is queued; else waits in FIFO order for a slot,
    /// at most `deadline` (capped by the queue timeout). Sheds when the
    /// queue is full or the expected wait exceeds the deadline. Dropping
    /// the future leaves the queue at once.
    pub async fn acquire(&self, deadline: Duration) -> Result<Permit, Rejection> {
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        let admitted = self.shared.apply(|s| (s.admit(deadline, tx), Vec::new()));
        match admitted {
            Admit::Granted(slot) => Ok(Permit::new(self.shared.clone(), slot, Duration::ZERO)),
            Admit::Rejected(rejection) => Err(rejection),
            Admit::Queued { id, wait_limit } => {
                Waiting::new(self.shared.clone(), id, rx)
                    .wait(start, start + wait_limit)
                    .await
            }
        }
    }

    /// A permit at once when an instance has a free slot and nobody is
    /// queued; `None` otherwise (then `acquire` queues or sheds).
    pub fn try_acquire(&self) -> Option<Permit> {
        let slot = self.shared.apply(|s| (s.try_grant(), Vec::new()))?;
        Some(Permit::new(self.shared.clone(), slot, Duration::ZERO))
    }

    /// Adds a ready instance serving at `address`; queued waiters drain
    /// into it at once.
    pub fn add_instance(&self, id: InstanceId, address: impl AsRef<str>) {
        self.shared
            .apply(|s| ((), s.add_instance(id, address.as_ref())));
    }

    /// Stops routing new requests to `id`; its permits stay valid until
    /// dropped. False when it was not ready.
    pub fn remove_instance(&self, id: InstanceId) -> bool {
        self.shared.apply(|s| (s.remove_instance(id), Vec::new()))
    }

    /// Applies a reloaded queue policy and per-instance cap.
    pub fn set_policy(&self, policy: QueuePolicy, max_concurrency: u32) {
        self.shared
            .apply(|s| ((), s.set_policy(policy, max_concurrency)));
    }

    /// Refuses new requests ([`Rejection::Closed`]) and tells every queued
    /// one so; permits already held stay valid.
    pub fn close(&self) {
        let waiters = self.shared.apply(|s| (s.close(), Vec::new()));
        // Dropping the senders wakes the waiters with `Closed`.
        drop(waiters);
    }

    /// Refuses new requests ([`Rejection::Closed`]) but serves the ones
    /// already queued as slots free up: a removed or drained model finishes
    /// what it accepted.
    pub fn retire(&self) {
        self.shared.apply(|s| {
            s.retire();
            ((), Vec::new())
        });
    }

    /// Admits again after `retire` or `close`.
    pub fn reopen(&self) {
        self.shared.apply(|s| {
            s.reopen();
            ((), Vec::new())
        });
    }

    /// Whether new requests are refused (`close` or `retire`).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().is_closed()
    }

    /// Ready instances and whether the queue is empty, as they change.
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.shared.activity.subscribe()
    }

    /// Wakes every queued request with [`Rejection::Closed`] without
    /// closing: used when the model cannot get capacity (its workers fail
    /// to start), so they get a prompt 503 rather than a late 504.
    pub fn fail_waiting(&self) {
        let waiters = self.shared.apply(|s| (s.fail_waiting(), Vec::new()));
        drop(waiters);
    }

    /// True while requests are queued and no instance is ready; changes are
    /// seen at once by `changed()`, so the activator can ask for an
    /// instance without waiting for the autoscaler's next tick.
    pub fn wants_capacity(&self) -> watch::Receiver<bool> {
        self.shared.wants.subscribe()
    }

    /// Ready instances now (cheap: no snapshot of the whole state).
    pub fn ready_instances(&self) -> usize {
        self.shared.lock().ready_count()
    }

    /// Queue depth, in-flight counts, instances and shed counts now.
    pub fn stats(&self) -> AdmissionStats {
        self.shared.lock().stats()
    }
}

impl Shared {
    /// The state, even after a panic elsewhere while it was held: every
    /// update leaves it consistent before anything can panic.
    pub(super) fn lock(&self) -> MutexGuard<'_, State<Tx>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, delivers the grants it returns and refreshes
    /// the `wants_capacity` signal, all under one lock.
    pub(super) fn apply<R>(&self, f: impl FnOnce(&mut State<Tx>) -> (R, Vec<Grant<Tx>>)) -> R {
        let mut state = self.lock();
        let (result, grants) = f(&mut state);
        deliver(&mut state, grants);
        let wants = state.wants_capacity();
        self.wants
            .send_if_modified(|w| std::mem::replace(w, wants) != wants);
        let activity = Activity {
            ready: state.ready_count(),
            queue_empty: state.queue_len() == 0,
        };
        self.activity
            .send_if_modified(|a| std::mem::replace(a, activity) != activity);
        result
    }
}

/// Sends each slot to its waiter; a waiter that is gone gives its slot
/// straight back, which may grant it to the next one.
fn deliver(state: &mut State<Tx>, grants: Vec<Grant<Tx>>) {
    let mut pending = grants;
    while !pending.is_empty() {
        let mut next = Vec::new();
        for grant in pending {
            if let Err(slot) = grant.waiter.send(grant.slot) {
                next.extend(state.release(&slot, None));
            }
        }
        pending = next;
    }
}
