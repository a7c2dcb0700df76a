//! Table tests of the pure policy: one observation in, one decision out.

use std::time::{Duration, Instant};

use super::*;
use crate::config::Scaling;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// target 8, instances 0..=10, stable 60s, panic 6s, threshold 2,
/// scale-down delay 30s, to zero after 300s.
fn knobs() -> Scaling {
    Scaling {
        max_instances: 10,
        ..Scaling::default()
    }
}

/// One row: a change to a calm observation and to the knobs, and the
/// expected count and panic mode.
struct Row {
    name: &'static str,
    obs: fn(&mut Observed, Instant),
    knobs: fn(&mut Scaling),
    instances: u32,
    panic: bool,
}

fn none(_: &mut Scaling) {}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "no demand, no instances",
            obs: |_, _| {},
            knobs: none,
            instances: 0,
            panic: false,
        },
        Row {
            name: "steady load at target",
            obs: |o, _| set_load(o, 16.0, 16.0, 2),
            knobs: none,
            instances: 2,
            panic: false,
        },
        Row {
            name: "ceil of a fraction",
            obs: |o, _| set_load(o, 17.0, 17.0, 3),
            knobs: none,
            instances: 3,
            panic: false,
        },
        Row {
            name: "exact multiple is not rounded up",
            obs: |o, _| set_load(o, 24.000000000000004, 24.0, 3),
            knobs: none,
            instances: 3,
            panic: false,
        },
        Row {
            name: "burst over the threshold panics",
            obs: |o, _| {
                set_load(o, 8.0, 32.0, 1);
                o.panic_avg = 40.0;
            },
            knobs: none,
            instances: 5,
            panic: true,
        },
        Row {
            name: "just under the threshold stays calm",
            obs: |o, _| {
                set_load(o, 16.0, 31.0, 2);
            },
            knobs: none,
            instances: 2,
            panic: false,
        },
        Row {
            name: "exactly at the threshold panics",
            obs: |o, _| {
                set_load(o, 8.0, 32.0, 2);
            },
            knobs: none,
            instances: 4,
            panic: true,
        },
        Row {
            name: "a lone request at zero ready wakes one instance, no panic",
            obs: |o, _| set_load(o, 0.1, 0.5, 0),
            knobs: none,
            instances: 1,
            panic: false,
        },
        Row {
            name: "a burst at zero ready panics",
            obs: |o, _| set_load(o, 1.0, 20.0, 0),
            knobs: none,
            instances: 3,
            panic: true,
        },
        Row {
            name: "in panic, no scale-down below current",
            obs: |o, base| {
                set_load(o, 8.0, 8.0, 5);
                o.panic = Some(panic_at(base, 10));
            },
            knobs: none,
            instances: 5,
            panic: true,
        },
        Row {
            name: "panic ends a stable window after its last trigger",
            obs: |o, base| {
                set_load(o, 8.0, 8.0, 5);
                o.panic = Some(panic_at(base, 60));
            },
            knobs: none,
            instances: 1,
            panic: false,
        },
        Row {
            name: "scale-down waits for the delay window's max",
            obs: |o, _| {
                set_load(o, 8.0, 8.0, 4);
                o.recent_max = 4;
            },
            knobs: none,
            instances: 4,
            panic: false,
        },
        Row {
            name: "no delay: the lower wish at once",
            obs: |o, _| {
                set_load(o, 8.0, 8.0, 4);
                o.recent_max = 4;
            },
            knobs: |k| k.scale_down_delay = Duration::ZERO,
            instances: 1,
            panic: false,
        },
        Row {
            name: "last instance held before scale_to_zero_after",
            obs: |o, base| {
                set_load(o, 0.0, 0.0, 1);
                o.last_demand = at(base, 299);
            },
            knobs: none,
            instances: 1,
            panic: false,
        },
        Row {
            name: "to zero once idle for scale_to_zero_after",
            obs: |o, base| {
                set_load(o, 0.0, 0.0, 1);
                o.last_demand = at(base, 300);
            },
            knobs: none,
            instances: 0,
            panic: false,
        },
        Row {
            name: "to-zero timer is its own: stale stable wish of 1",
            obs: |o, base| {
                set_load(o, 2.0, 0.0, 1);
                o.recent_max = 1;
                o.last_demand = at(base, 20);
            },
            knobs: |k| k.scale_to_zero_after = secs(20),
            instances: 0,
            panic: false,
        },
        Row {
            name: "to-zero timer does not skip the scale-down delay",
            obs: |o, base| {
                set_load(o, 0.0, 0.0, 3);
                o.recent_max = 3;
                o.last_demand = at(base, 20);
            },
            knobs: |k| k.scale_to_zero_after = secs(20),
            instances: 3,
            panic: false,
        },
        Row {
            name: "no scale to zero in panic",
            obs: |o, base| {
                set_load(o, 0.0, 0.0, 2);
                o.panic = Some(panic_at(base, 30));
                o.last_demand = at(base, 400);
            },
            knobs: none,
            instances: 2,
            panic: true,
        },
        Row {
            name: "demand now at zero instances: at least 1",
            obs: |o, _| {
                set_load(o, 0.0, 0.0, 0);
                o.latest = 1.0;
            },
            knobs: none,
            instances: 1,
            panic: false,
        },
        Row {
            name: "min_instances is a floor when idle",
            obs: |o, base| {
                set_load(o, 0.0, 0.0, 2);
                o.last_demand = at(base, 1000);
            },
            knobs: |k| k.min_instances = 2,
            instances: 2,
            panic: false,
        },
        Row {
            name: "max_instances caps a stable wish",
            obs: |o, _| set_load(o, 800.0, 100.0, 10),
            knobs: none,
            instances: 10,
            panic: false,
        },
        Row {
            name: "max_instances caps a panic wish",
            obs: |o, _| set_load(o, 80.0, 800.0, 2),
            knobs: |k| k.max_instances = 3,
            instances: 3,
            panic: true,
        },
        Row {
            name: "a halved target wants twice as many, as a burst",
            obs: |o, _| set_load(o, 16.0, 16.0, 2),
            knobs: |k| k.target_concurrency = 4,
            instances: 4,
            panic: true,
        },
        Row {
            name: "a higher target wants fewer",
            obs: |o, _| set_load(o, 16.0, 16.0, 2),
            knobs: |k| k.target_concurrency = 16,
            instances: 1,
            panic: false,
        },
    ]
}

/// The base instant, far enough from the start that subtracting works.
fn base() -> Instant {
    Instant::now() + secs(10_000)
}

/// `ago` seconds before `base`.
fn at(base: Instant, ago: u64) -> Instant {
    base - secs(ago)
}

fn panic_at(base: Instant, ago: u64) -> Panic {
    Panic {
        since: at(base, ago + 5),
        last_trigger: at(base, ago),
    }
}

/// Stable and panic averages, and `n` instances both ready and current.
fn set_load(o: &mut Observed, stable: f64, panic: f64, n: u32) {
    o.stable_avg = stable;
    o.panic_avg = panic;
    o.latest = panic;
    o.ready = n;
    o.current = n;
}

fn calm(now: Instant) -> Observed {
    Observed {
        now,
        stable_avg: 0.0,
        panic_avg: 0.0,
        latest: 0.0,
        ready: 0,
        current: 0,
        panic: None,
        last_demand: now,
        recent_max: 0,
    }
}

#[test]
fn decision_table() {
    let base = base();
    let mut failures = Vec::new();
    for row in rows() {
        let mut o = calm(base);
        (row.obs)(&mut o, base);
        let mut k = knobs();
        (row.knobs)(&mut k);
        let d = desired(&o, &k);
        if d.instances != row.instances || d.in_panic() != row.panic {
            failures.push(format!(
                "{}: got {} (panic {}), want {} (panic {})",
                row.name,
                d.instances,
                d.in_panic(),
                row.instances,
                row.panic
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn panic_keeps_its_start_and_moves_its_trigger() {
    let base = base();
    let mut o = calm(base);
    set_load(&mut o, 8.0, 64.0, 1);
    o.panic = Some(panic_at(base, 3));
    let d = desired(&o, &knobs());
    let p = d.panic.expect("a re-trigger keeps panic mode");
    assert_eq!(p.since, at(base, 8));
    assert_eq!(p.last_trigger, base);
}

#[test]
fn instances_for_table() {
    for (concurrency, target, want) in [
        (0.0, 8, 0),
        (-1.0, 8, 0),
        (f64::NAN, 8, 0),
        (0.01, 8, 1),
        (8.0, 8, 1),
        (8.5, 8, 2),
        (64.0, 8, 8),
        (5.0, 0, 5),
        (1e30, 1, u32::MAX),
    ] {
        assert_eq!(
            instances_for(concurrency, target),
            want,
            "{concurrency} at target {target}"
        );
    }
}
