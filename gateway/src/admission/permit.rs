//! [`Permit`], a slot on one instance that lives as long as the request's
//! work, and the guard of a queued waiter that leaves the queue (and gives
//! back a slot it was just handed) when its future is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::Shared;
use super::state::{Leave, Slot, WaiterId};
use super::{InstanceId, Rejection};

/// A slot on one ready instance. Dropping it releases the slot, records how
/// long it was held into the service-time estimate, and hands the slot to
/// the next queued waiter.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    slot: Slot,
    acquired: Instant,
    waited: Duration,
}

impl Permit {
    pub(super) fn new(shared: Arc<Shared>, slot: Slot, waited: Duration) -> Self {
        Permit {
            shared,
            slot,
            acquired: Instant::now(),
            waited,
        }
    }

    /// The instance to send the request to.
    pub fn instance(&self) -> InstanceId {
        self.slot.instance
    }

    /// Its worker's address (unix socket path).
    pub fn address(&self) -> &str {
        &self.slot.address
    }

    /// How long the request waited in the queue (zero when admitted at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Time since the slot was handed to this request.
    pub fn held(&self) -> Duration {
        self.acquired.elapsed()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let hold = self.acquired.elapsed();
        let slot = &self.slot;
        self.shared.apply(|s| ((), s.release(slot, Some(hold))));
    }
}

/// A queued waiter. Dropped before it has finished (the client hung up),
/// it leaves the queue, or gives back the slot it was handed meanwhile.
pub(super) struct Waiting {
    shared: Arc<Shared>,
    id: WaiterId,
    rx: oneshot::Receiver<Slot>,
    finished: bool,
}

impl Waiting {
    pub(super) fn new(shared: Arc<Shared>, id: WaiterId, rx: oneshot::Receiver<Slot>) -> Self {
        Waiting {
            shared,
            id,
            rx,
            finished: false,
        }
    }

    /// Waits for a slot until `until`; `start` is when the request came.
    pub(super) async fn wait(
        mut self,
        start: Instant,
        until: Instant,
    ) -> Result<Permit, Rejection> {
        let outcome = tokio::time::timeout_at(until, &mut self.rx).await;
        self.finished = true;
        let slot = match outcome {
            Ok(Ok(slot)) => slot,
            // The sender went without a slot: the model was closed.
            Ok(Err(_)) => return Err(Rejection::Closed),
            Err(_elapsed) => self.time_out()?,
        };
        Ok(Permit::new(self.shared.clone(), slot, start.elapsed()))
    }

    /// The deadline passed: leave the queue, unless a slot came just now.
    fn time_out(&mut self) -> Result<Slot, Rejection> {
        let (id, rx) = (self.id, &mut self.rx);
        self.shared.apply(|s| {
            let result = if s.leave(id, Leave::TimedOut) {
                Err(Rejection::Timeout)
            } else {
                rx.try_recv().map_err(|_| Rejection::Closed)
            };
            (result, Vec::new())
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (id, rx) = (self.id, &mut self.rx);
        self.shared.apply(|s| {
            if s.leave(id, Leave::HungUp) {
                return ((), Vec::new());
            }
            // Granted while the client went away: pass the slot on.
            rx.close();
            match rx.try_recv() {
                Ok(slot) => ((), s.release(&slot, None)),
                Err(_) => ((), Vec::new()),
            }
        });
    }
}
