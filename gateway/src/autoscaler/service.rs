//! The autoscaler's loop for one model: sample the admission's concurrency
//! each tick (and at once when requests queue with no instance ready),
//! decide, publish the decision. The supervisor applies it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::policy::Decision;
use super::recorder::Autoscaler;
use crate::admission::Admission;
use crate::config::Scaling;

/// Runs until the knobs' sender or every receiver of `decisions` is gone.
///
/// Each tick of `tick` records `stats().observed_concurrency`, decides with
/// the ready instance count, and publishes the decision when its instance
/// count or panic mode changed. A request queued while no instance is
/// ready triggers a tick at once, and so do new knobs.
pub async fn run(
    admission: Admission,
    mut knobs: watch::Receiver<Scaling>,
    decisions: watch::Sender<Decision>,
    tick: Duration,
) {
    let mut wants = admission.wants_capacity();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let current = decisions.borrow().instances;
    let knobs_now = knobs.borrow_and_update().clone();
    let mut scaler = Autoscaler::new(Instant::now().into_std(), knobs_now, current);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = wants.changed() => {
                // The sender lives in `admission`, held here: never closed.
                if changed.is_err() {
                    return;
                }
                if !*wants.borrow_and_update() {
                    continue;
                }
            }
            changed = knobs.changed() => {
                if changed.is_err() {
                    return;
                }
                // New knobs (a reload, an operator's override) decide at
                // once rather than at the next tick.
                scaler.set_knobs(knobs.borrow_and_update().clone());
            }
            () = decisions.closed() => return,
        }
        let stats = admission.stats();
        let ready = u32::try_from(stats.ready_instances).unwrap_or(u32::MAX);
        let now = Instant::now().into_std();
        let decision = scaler.tick(now, stats.observed_concurrency as f64, ready);
        decisions.send_if_modified(|old| {
            let changed =
                old.instances != decision.instances || old.in_panic() != decision.in_panic();
            *old = decision;
            changed
        });
    }
}
