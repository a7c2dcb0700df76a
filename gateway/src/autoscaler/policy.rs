//! The scaling decision as a pure function: observed concurrency and a
//! model's knobs in, a desired instance count out (Knative's KPA, with a
//! separate 1 → 0 timer). No clock is read here; every time is an argument.

use std::time::{Duration, Instant};

use crate::config::Scaling;

/// Guards `ceil` against float noise: 16.000000000000004 / 8 is 2 pods.
const EPSILON: f64 = 1e-9;

/// What the policy sees at one tick (built by [`super::Recorder::observe`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// The time of this tick.
    pub now: Instant,
    /// Mean concurrency over the stable window.
    pub stable_avg: f64,
    /// Mean concurrency over the panic window.
    pub panic_avg: f64,
    /// The latest sample (in-flight + queued right now).
    pub latest: f64,
    /// Instances ready to serve.
    pub ready: u32,
    /// The count the previous decision asked for (ready or starting).
    pub current: u32,
    /// Panic mode as the previous decision left it.
    pub panic: Option<Panic>,
    /// The last sample with demand (or when the recorder started).
    pub last_demand: Instant,
    /// Highest wish recorded within `scale_down_delay` before `now`
    /// (0 when none).
    pub recent_max: u32,
}

/// Panic mode: a burst seen in the panic window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panic {
    /// When this panic episode began.
    pub since: Instant,
    /// The latest tick that was over the panic threshold; the episode ends
    /// a stable window after it.
    pub last_trigger: Instant,
}

/// The policy's answer for one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Instances wanted, clamped to `[min_instances, max_instances]`.
    pub instances: u32,
    /// The wish before the scale-down delay, the 1 → 0 timer and the clamp;
    /// the recorder keeps these for the scale-down delay window.
    pub wanted: u32,
    /// Panic mode after this tick.
    pub panic: Option<Panic>,
}

impl Decision {
    /// A calm decision for `instances` (an initial value for a channel).
    pub fn steady(instances: u32) -> Self {
        Decision {
            instances,
            wanted: instances,
            panic: None,
        }
    }

    /// Whether the autoscaler is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic.is_some()
    }
}

/// Instances needed to serve `concurrency` at `target` per instance:
/// `ceil(concurrency / target)`, and at least 1 for any demand.
pub fn instances_for(concurrency: f64, target: u32) -> u32 {
    if concurrency.is_nan() || concurrency <= 0.0 {
        return 0;
    }
    let per = f64::from(target.max(1));
    let pods = (concurrency / per - EPSILON).ceil().max(1.0);
    // `as` saturates at u32::MAX, which the clamp brings down to the cap.
    pods as u32
}

/// Whether the panic window shows a burst: its desired count reaches
/// `threshold` × ready instances, counting at least one ready (Knative's
/// KPA does the same): a burst arriving at zero panics, a lone request
/// that wakes a model does not, so its `scale_to_zero_after` is not held
/// off for a whole stable window.
pub fn is_burst(panic_avg: f64, target: u32, ready: u32, threshold: f64) -> bool {
    if panic_avg.is_nan() || panic_avg <= 0.0 {
        return false;
    }
    let wanted = panic_avg / f64::from(target.max(1));
    wanted >= threshold * f64::from(ready.max(1))
}

/// Panic mode after a tick: a burst (re)triggers it; it ends once a whole
/// stable window has passed since the last trigger.
fn next_panic(prev: Option<Panic>, burst: bool, now: Instant, stable: Duration) -> Option<Panic> {
    if burst {
        let since = prev.map_or(now, |p| p.since);
        return Some(Panic {
            since,
            last_trigger: now,
        });
    }
    prev.filter(|p| now.saturating_duration_since(p.last_trigger) < stable)
}

/// The desired instance count for one tick.
///
/// - stable mode: `ceil(stable_avg / target_concurrency)`;
/// - panic mode (see [`is_burst`]): never lower than the current count nor
///   the stable wish: `max(panic wish, stable wish, current)`;
/// - scale-down: the highest wish within `scale_down_delay` wins, so a
///   lower count is used only once it has held that long;
/// - 1 → 0: only when no sample has shown demand for `scale_to_zero_after`
///   (its own timer); until then the last instance stays;
/// - any demand right now means at least 1;
/// - always within `[min_instances, max_instances]`.
pub fn desired(o: &Observed, k: &Scaling) -> Decision {
    let target = k.target_concurrency;
    let stable = instances_for(o.stable_avg, target);
    let burst = is_burst(o.panic_avg, target, o.ready, k.panic_threshold);
    let panic = next_panic(o.panic, burst, o.now, k.stable_window);
    let wanted = match panic {
        Some(_) => instances_for(o.panic_avg, target)
            .max(stable)
            .max(o.current),
        None => stable,
    };
    let held = if k.scale_down_delay.is_zero() {
        wanted
    } else {
        wanted.max(o.recent_max)
    };
    let idle = o.now.saturating_duration_since(o.last_demand) >= k.scale_to_zero_after;
    let demand_now = o.latest > 0.0;
    let mut n = held;
    if panic.is_none() && n <= 1 && idle && !demand_now {
        n = 0;
    } else if n == 0 && o.current > 0 && !idle {
        n = 1;
    }
    if demand_now {
        n = n.max(1);
    }
    Decision {
        instances: clamp(n, k.min_instances, k.max_instances),
        wanted,
        panic,
    }
}

/// `n` within `[min, max]`; the cap wins should the two ever cross.
fn clamp(n: u32, min: u32, max: u32) -> u32 {
    n.max(min).min(max)
}
