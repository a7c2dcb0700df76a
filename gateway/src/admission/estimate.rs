//! The expected wait of a queued request, from the measured service time
//! (an EWMA of permit hold times), and the `Retry-After` derived from it.

use std::time::Duration;

/// Weight of a new hold time in the moving average.
const ALPHA: f64 = 0.2;

/// An exponentially weighted moving average of permit hold times.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceTime {
    mean_secs: Option<f64>,
}

impl ServiceTime {
    /// Folds one hold time in; the first one is taken as it is.
    pub fn record(&mut self, hold: Duration) {
        let x = hold.as_secs_f64();
        self.mean_secs = Some(match self.mean_secs {
            None => x,
            Some(m) => m + ALPHA * (x - m),
        });
    }

    /// The mean hold time, once one has been measured.
    pub fn mean(&self) -> Option<Duration> {
        self.mean_secs.map(secs)
    }
}

/// How long a request with `ahead` waiters before it should wait for a
/// slot: it needs `ahead + 1` releases, and `capacity` slots release one
/// every `mean / capacity` on average. `None` without capacity.
pub fn expected_wait(mean: Duration, ahead: usize, capacity: usize) -> Option<Duration> {
    if capacity == 0 {
        return None;
    }
    let releases = ahead.saturating_add(1) as f64;
    Some(secs(mean.as_secs_f64() * releases / capacity as f64))
}

/// Seconds as a duration, saturating instead of panicking.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(if s > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// `Retry-After` for an expected `wait`: whole seconds rounded up, at
/// least 1, and at most the queue timeout `cap` (by then every request
/// queued now has been served or timed out).
pub fn retry_after(wait: Duration, cap: Duration) -> Duration {
    let ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let most = ceil(cap).max(1);
    Duration::from_secs(ceil(wait).clamp(1, most))
}
