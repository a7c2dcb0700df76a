//! Scenario tests: the autoscaler driven one tick per second through load
//! patterns, with instances becoming ready as soon as they are asked for.
//! Also the loop: a request queued at zero wakes it before its next tick.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;
use crate::admission::{Admission, InstanceId};
use crate::config::{QueuePolicy, Scaling};

/// target 8, instances 0..=10, stable 60s, panic 6s, threshold 2,
/// scale-down delay 30s, to zero after 300s.
fn knobs() -> Scaling {
    Scaling {
        max_instances: 10,
        ..Scaling::default()
    }
}

/// A simulated model: one tick per second, ready = the last decision.
struct Sim {
    scaler: Autoscaler,
    start: Instant,
    t: u64,
    ready: u32,
}

impl Sim {
    fn new(knobs: Scaling, instances: u32) -> Self {
        let start = Instant::now();
        Sim {
            scaler: Autoscaler::new(start, knobs, instances),
            start,
            t: 0,
            ready: instances,
        }
    }

    /// Runs `seconds` ticks at `load`; returns `(second, decision)` each.
    fn run(&mut self, seconds: u64, load: f64) -> Vec<(u64, Decision)> {
        (0..seconds)
            .map(|_| {
                self.t += 1;
                let now = self.start + Duration::from_secs(self.t);
                let d = self.scaler.tick(now, load, self.ready);
                self.ready = d.instances;
                (self.t, d)
            })
            .collect()
    }
}

fn counts(trace: &[(u64, Decision)]) -> Vec<u32> {
    trace.iter().map(|(_, d)| d.instances).collect()
}

#[test]
fn steady_load_holds_its_count() {
    let mut sim = Sim::new(knobs(), 2);
    let trace = sim.run(300, 16.0);
    assert!(
        counts(&trace).iter().all(|&n| n == 2),
        "{:?}",
        counts(&trace)
    );
    assert!(trace.iter().all(|(_, d)| !d.in_panic()));
}

#[test]
fn cold_start_from_zero_is_immediate_and_settles() {
    let mut sim = Sim::new(knobs(), 0);
    let trace = sim.run(200, 16.0);
    assert_eq!(trace[0].1.instances, 2, "first tick with demand at zero");
    assert!(trace[0].1.in_panic(), "demand at zero ready is a burst");
    assert!(counts(&trace).iter().all(|&n| n == 2));
    let calm_from = trace
        .iter()
        .position(|(_, d)| !d.in_panic())
        .expect("panic ends");
    assert_eq!(trace[calm_from].0, 61, "a stable window after the trigger");
}

#[test]
fn burst_enters_panic_within_the_panic_window() {
    let mut sim = Sim::new(knobs(), 1);
    sim.run(120, 8.0);
    let burst = sim.run(6, 80.0);
    let first_panic = burst
        .iter()
        .find(|(_, d)| d.in_panic())
        .expect("a 10x burst panics");
    assert!(first_panic.0 - 120 <= 2, "panicked at {}", first_panic.0);
    assert_eq!(burst.last().map(|(_, d)| d.instances), Some(10));
    // Stable mode alone would still want far fewer after six seconds.
    let stable = instances_for(
        sim.scaler.recorder().average(
            sim.start + Duration::from_secs(sim.t),
            Duration::from_secs(60),
        ),
        8,
    );
    assert!(stable < 5, "stable wish {stable}");
}

#[test]
fn no_scale_down_while_panicking() {
    let mut sim = Sim::new(knobs(), 1);
    sim.run(120, 8.0);
    sim.run(10, 80.0);
    let peak = sim.ready;
    let after = sim.run(120, 4.0);
    let in_panic: Vec<_> = after.iter().filter(|(_, d)| d.in_panic()).collect();
    assert!(!in_panic.is_empty());
    assert!(in_panic.iter().all(|(_, d)| d.instances >= peak));
    let last_trigger = in_panic
        .last()
        .and_then(|(_, d)| d.panic)
        .map(|p| p.last_trigger)
        .expect("panic state");
    let calm = after
        .iter()
        .find(|(_, d)| !d.in_panic())
        .expect("panic ends");
    assert_eq!(
        sim.start + Duration::from_secs(calm.0),
        last_trigger + Duration::from_secs(60)
    );
}

#[test]
fn decay_respects_the_scale_down_delay() {
    let mut sim = Sim::new(knobs(), 4);
    sim.run(120, 32.0);
    assert_eq!(sim.ready, 4);
    let trace = sim.run(400, 8.0);
    // Each lower count may appear only after the wish has been at or
    // below it for the whole delay (30s).
    let wishes: Vec<u32> = trace.iter().map(|(_, d)| d.wanted).collect();
    for (i, (t, d)) in trace.iter().enumerate() {
        let window = &wishes[i.saturating_sub(30)..=i];
        let max = window.iter().copied().max().unwrap_or(0);
        if i >= 30 {
            assert_eq!(d.instances, max, "at {t}s");
        } else {
            assert!(d.instances >= max, "at {t}s");
        }
    }
    let first_drop = trace
        .iter()
        .position(|(_, d)| d.instances < 4)
        .expect("decays");
    let first_low_wish = wishes.iter().position(|&w| w < 4).expect("wish falls");
    assert_eq!(first_drop, first_low_wish + 30, "held the whole delay");
    assert_eq!(sim.ready, 1);
}

#[test]
fn to_zero_only_after_its_own_timer() {
    let mut sim = Sim::new(knobs(), 1);
    sim.run(10, 8.0);
    let idle = sim.run(400, 0.0);
    let zero = idle
        .iter()
        .find(|(_, d)| d.instances == 0)
        .expect("reaches zero");
    assert_eq!(zero.0, 10 + 300, "300s after the last demand");
    assert!(idle
        .iter()
        .filter(|(t, _)| *t < 310)
        .all(|(_, d)| d.instances == 1));
    assert!(idle
        .iter()
        .filter(|(t, _)| *t >= 310)
        .all(|(_, d)| d.instances == 0));
}

#[test]
fn short_to_zero_timer_beats_the_stable_window() {
    let k = Scaling {
        scale_to_zero_after: Duration::from_secs(20),
        ..knobs()
    };
    let mut sim = Sim::new(k, 1);
    sim.run(10, 4.0);
    let idle = sim.run(60, 0.0);
    let zero = idle.iter().find(|(_, d)| d.instances == 0).expect("zero");
    assert_eq!(zero.0, 30);
}

/// A lone request that wakes a model from zero is no burst: the model is
/// back at zero `scale_to_zero_after` later, not a stable window later.
#[test]
fn one_request_from_zero_returns_to_zero_on_its_own_timer() {
    let k = Scaling {
        scale_to_zero_after: Duration::from_secs(20),
        ..knobs()
    };
    let mut sim = Sim::new(k, 0);
    let woken = sim.run(1, 1.0);
    assert_eq!(woken[0].1.instances, 1);
    assert!(!woken[0].1.in_panic());
    let idle = sim.run(60, 0.0);
    let zero = idle.iter().find(|(_, d)| d.instances == 0).expect("zero");
    assert_eq!(zero.0, 21, "20s after the request");
}

#[test]
fn floors_and_caps_hold_in_every_mode() {
    let k = Scaling {
        min_instances: 2,
        max_instances: 3,
        ..knobs()
    };
    let mut sim = Sim::new(k, 0);
    let trace = [sim.run(400, 0.0), sim.run(30, 500.0), sim.run(600, 0.0)].concat();
    assert!(counts(&trace).iter().all(|&n| (2..=3).contains(&n)));
    assert_eq!(trace[399].1.instances, 2, "floor while idle");
    assert_eq!(trace[429].1.instances, 3, "cap under a burst");
    assert_eq!(trace.last().map(|(_, d)| d.instances), Some(2));
}

#[test]
fn target_changes_apply_up_at_once_and_down_after_the_delay() {
    let mut sim = Sim::new(knobs(), 4);
    sim.run(120, 32.0);
    assert_eq!(sim.ready, 4);
    let mut k = knobs();
    k.target_concurrency = 16;
    sim.scaler.set_knobs(k.clone());
    let down = sim.run(60, 32.0);
    assert!(down.iter().take(30).all(|(_, d)| d.instances == 4));
    assert_eq!(down.last().map(|(_, d)| d.instances), Some(2));
    k.target_concurrency = 4;
    sim.scaler.set_knobs(k);
    let up = sim.run(1, 32.0);
    assert_eq!(up[0].1.instances, 8);
}

#[tokio::test(start_paused = true)]
async fn the_loop_wakes_at_once_for_a_request_queued_at_zero() {
    let admission = Admission::new(QueuePolicy::default(), 4);
    let (_knobs_tx, knobs_rx) = watch::channel(knobs());
    // Starting "at 5" with no demand, the loop's first tick publishes 1:
    // proof that it runs and watches the admission.
    let (tx, mut rx) = watch::channel(Decision::steady(5));
    let tick = Duration::from_secs(3600);
    tokio::spawn(run(admission.clone(), knobs_rx, tx, tick));
    rx.changed().await.expect("the loop publishes");
    assert_eq!(rx.borrow_and_update().instances, 1);
    assert!(!rx.borrow().in_panic());
    // Its next tick, an hour on, finds the model idle: to zero.
    rx.changed().await.expect("the loop publishes");
    assert_eq!(rx.borrow_and_update().instances, 0);
    let start = tokio::time::Instant::now();
    let waiter = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.acquire(Duration::from_secs(30)).await })
    };
    rx.changed().await.expect("the loop publishes");
    let woken = *rx.borrow_and_update();
    assert!(!woken.in_panic(), "a lone request at zero is no burst");
    assert!(woken.instances >= 1);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "woken, not ticked"
    );
    admission.add_instance(InstanceId(1), "w1.sock");
    let permit = waiter.await.expect("task").expect("a slot once ready");
    assert_eq!(permit.instance(), InstanceId(1));
}
