//! The autoscaler's memory: one concurrency sample per tick, the windows'
//! averages, the last demand, panic mode and the recent wishes the
//! scale-down delay needs. Time is passed in, never read here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::policy::{desired, Decision, Observed, Panic};
use crate::config::Scaling;

/// Samples and past decisions of one model.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// `(time, concurrency)`, oldest first.
    samples: VecDeque<(Instant, f64)>,
    /// `(time, wish)` of past decisions, oldest first.
    wishes: VecDeque<(Instant, u32)>,
    last_demand: Instant,
    panic: Option<Panic>,
    current: u32,
}

impl Recorder {
    /// An empty recorder started at `start`, with `current` instances
    /// asked for so far. The 1 → 0 timer counts from `start`.
    pub fn new(start: Instant, current: u32) -> Self {
        Recorder {
            samples: VecDeque::new(),
            wishes: VecDeque::new(),
            last_demand: start,
            panic: None,
            current,
        }
    }

    /// Adds the sample of one tick: in-flight + queued requests at `now`.
    /// Negative or NaN values count as 0.
    pub fn record(&mut self, now: Instant, concurrency: f64) {
        let value = if concurrency > 0.0 { concurrency } else { 0.0 };
        if value > 0.0 {
            self.last_demand = self.last_demand.max(now);
        }
        self.samples.push_back((now, value));
    }

    /// Mean of the samples in `(now - window, now]`; 0 when there are none.
    pub fn average(&self, now: Instant, window: Duration) -> f64 {
        let (sum, count) = self
            .samples
            .iter()
            .rev()
            .filter(|(t, _)| *t <= now)
            .take_while(|(t, _)| now.saturating_duration_since(*t) < window)
            .fold((0.0, 0u32), |(s, c), (_, v)| (s + v, c + 1));
        if count == 0 {
            0.0
        } else {
            sum / f64::from(count)
        }
    }

    /// The latest sample's value (0 before the first).
    pub fn latest(&self) -> f64 {
        self.samples.back().map_or(0.0, |(_, v)| *v)
    }

    /// The last sample with demand, or the start when none has had any.
    pub fn last_demand(&self) -> Instant {
        self.last_demand
    }

    /// Panic mode as the last decision left it.
    pub fn panic(&self) -> Option<Panic> {
        self.panic
    }

    /// The count the last decision asked for.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// The highest wish recorded within `delay` before `now`, ends
    /// included (0 when none).
    pub fn recent_max(&self, now: Instant, delay: Duration) -> u32 {
        self.wishes
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= delay)
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(0)
    }

    /// Drops what no window of `knobs` can use any more, and gathers what
    /// the policy needs at `now` with `ready` instances serving.
    pub fn observe(&mut self, now: Instant, ready: u32, knobs: &Scaling) -> Observed {
        let keep = knobs.stable_window.max(knobs.panic_window);
        while let Some((t, _)) = self.samples.front() {
            if now.saturating_duration_since(*t) >= keep {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        while let Some((t, _)) = self.wishes.front() {
            if now.saturating_duration_since(*t) > knobs.scale_down_delay {
                self.wishes.pop_front();
            } else {
                break;
            }
        }
        Observed {
            now,
            stable_avg: self.average(now, knobs.stable_window),
            panic_avg: self.average(now, knobs.panic_window),
            latest: self.latest(),
            ready,
            current: self.current,
            panic: self.panic,
            last_demand: self.last_demand,
            recent_max: self.recent_max(now, knobs.scale_down_delay),
        }
    }

    /// Remembers the decision taken at `now`.
    pub fn note(&mut self, now: Instant, decision: &Decision) {
        self.wishes.push_back((now, decision.wanted));
        self.panic = decision.panic;
        self.current = decision.instances;
    }
}

/// A model's autoscaler state: its recorder and its current knobs. One
/// [`Autoscaler::tick`] per loop iteration records, decides and remembers.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    recorder: Recorder,
    knobs: Scaling,
}

impl Autoscaler {
    /// A fresh autoscaler started at `start` with `current` instances.
    pub fn new(start: Instant, knobs: Scaling, current: u32) -> Self {
        Autoscaler {
            recorder: Recorder::new(start, current),
            knobs,
        }
    }

    /// Replaces the knobs (live reload); history is kept.
    pub fn set_knobs(&mut self, knobs: Scaling) {
        self.knobs = knobs;
    }

    /// The knobs in use.
    pub fn knobs(&self) -> &Scaling {
        &self.knobs
    }

    /// The recorder, for inspection.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// One tick: records `concurrency`, decides with `ready` instances
    /// serving, and remembers the decision.
    pub fn tick(&mut self, now: Instant, concurrency: f64, ready: u32) -> Decision {
        self.recorder.record(now, concurrency);
        let observed = self.recorder.observe(now, ready, &self.knobs);
        let decision = desired(&observed, &self.knobs);
        self.recorder.note(now, &decision);
        decision
    }
}
