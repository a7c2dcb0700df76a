//! When open-loop requests leave: constant rate, Poisson arrivals, a step,
//! periodic bursts, or a replayed trace of per-minute invocation counts in
//! the shape of the Azure Functions 2019 trace, time-compressed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// An arrival process.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Evenly spaced, `rate` per second.
    Constant { rate: f64 },
    /// Exponential gaps with mean `1 / rate` (independent clients).
    Poisson { rate: f64, seed: u64 },
    /// `from` per second, then `to` per second after `at`.
    Step { from: f64, to: f64, at: Duration },
    /// `base` per second, and `burst` per second for `length` every `every`.
    Burst {
        base: f64,
        burst: f64,
        every: Duration,
        length: Duration,
    },
    /// Per-minute counts, each minute replayed in `minute` of real time,
    /// its requests at Poisson times within it.
    Trace {
        per_minute: Vec<u64>,
        minute: Duration,
        seed: u64,
    },
}

impl Schedule {
    /// The send times, from the start, up to `duration` (a trace: its whole
    /// length, or `duration` if shorter).
    pub fn offsets(&self, duration: Duration) -> Vec<Duration> {
        let end = duration.as_secs_f64();
        let mut out = Vec::new();
        match self {
            Schedule::Constant { rate } => even(0.0, end, *rate, &mut out),
            Schedule::Poisson { rate, seed } => {
                poisson(0.0, end, *rate, &mut Rng(*seed | 1), &mut out)
            }
            Schedule::Step { from, to, at } => {
                let at = at.as_secs_f64().min(end);
                even(0.0, at, *from, &mut out);
                even(at, end, *to, &mut out);
            }
            Schedule::Burst {
                base,
                burst,
                every,
                length,
            } => {
                let (every, length) = (
                    every.as_secs_f64(),
                    length.as_secs_f64().min(every.as_secs_f64()),
                );
                let mut t = 0.0;
                while t < end {
                    even(t, (t + length).min(end), *burst, &mut out);
                    even((t + length).min(end), (t + every).min(end), *base, &mut out);
                    t += every;
                }
            }
            Schedule::Trace {
                per_minute,
                minute,
                seed,
            } => {
                let minute = minute.as_secs_f64();
                let mut rng = Rng(*seed | 1);
                for (i, &n) in per_minute.iter().enumerate() {
                    let start = i as f64 * minute;
                    if start >= end {
                        break;
                    }
                    let mut times: Vec<f64> =
                        (0..n).map(|_| start + rng.next_f64() * minute).collect();
                    times.retain(|&t| t < end);
                    times.sort_by(f64::total_cmp);
                    out.extend(times.into_iter().map(Duration::from_secs_f64));
                }
            }
        }
        out
    }
}

fn even(from: f64, to: f64, rate: f64, out: &mut Vec<Duration>) {
    if rate <= 0.0 || to <= from {
        return;
    }
    let n = ((to - from) * rate).round() as u64;
    out.extend((0..n).map(|i| Duration::from_secs_f64(from + i as f64 / rate)));
}

fn poisson(from: f64, to: f64, rate: f64, rng: &mut Rng, out: &mut Vec<Duration>) {
    if rate <= 0.0 {
        return;
    }
    let mut t = from;
    loop {
        t += -(1.0 - rng.next_f64()).ln() / rate;
        if t >= to {
            return;
        }
        out.push(Duration::from_secs_f64(t));
    }
}

/// Reads per-minute invocation counts from a CSV in the Azure Functions
/// 2019 trace's shape (`HashOwner,HashApp,HashFunction,Trigger,1,2,…,1440`):
/// the columns named by numbers, summed over every row (function).
pub fn read_trace(path: &Path) -> Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("the trace is empty")?
        .split(',')
        .collect();
    let minutes: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.trim().parse::<u32>().is_ok())
        .map(|(i, _)| i)
        .collect();
    if minutes.is_empty() {
        bail!(
            "{}: no per-minute columns (named 1, 2, …) in the header",
            path.display()
        );
    }
    let mut counts = vec![0u64; minutes.len()];
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        for (slot, &col) in counts.iter_mut().zip(&minutes) {
            let cell = cells.get(col).map_or("", |c| c.trim());
            let v: u64 = cell.parse().with_context(|| {
                format!("{}: row {}: {cell:?} is not a count", path.display(), n + 2)
            })?;
            *slot += v;
        }
    }
    Ok(counts)
}

/// xorshift64*: repeatable arrivals for a given seed.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn counts_and_order() {
        let ten = secs(10.0);
        let cases = [
            (Schedule::Constant { rate: 5.0 }, 50),
            (
                Schedule::Step {
                    from: 1.0,
                    to: 10.0,
                    at: secs(5.0),
                },
                55,
            ),
            (
                Schedule::Burst {
                    base: 1.0,
                    burst: 20.0,
                    every: secs(5.0),
                    length: secs(1.0),
                },
                2 * (20 + 4),
            ),
            (
                Schedule::Trace {
                    per_minute: vec![3, 0, 7],
                    minute: secs(2.0),
                    seed: 1,
                },
                10,
            ),
        ];
        for (schedule, n) in cases {
            let offsets = schedule.offsets(ten);
            assert_eq!(offsets.len(), n, "{schedule:?}");
            assert!(
                offsets.windows(2).all(|w| w[0] <= w[1]),
                "{schedule:?} not in order"
            );
            assert!(
                offsets.iter().all(|&t| t < ten),
                "{schedule:?} past the end"
            );
        }
    }

    #[test]
    fn a_trace_minute_stays_in_its_window() {
        let s = Schedule::Trace {
            per_minute: vec![0, 50, 0],
            minute: secs(1.0),
            seed: 9,
        };
        assert!(s
            .offsets(secs(3.0))
            .iter()
            .all(|t| (1.0..2.0).contains(&t.as_secs_f64())));
    }

    #[test]
    fn poisson_has_its_rate_and_its_seed() {
        let s = Schedule::Poisson {
            rate: 100.0,
            seed: 7,
        };
        let a = s.offsets(secs(100.0));
        assert!((a.len() as f64 - 10_000.0).abs() < 400.0, "{}", a.len());
        assert_eq!(a, s.offsets(secs(100.0)));
        // Exponential gaps: about 37 % are longer than the mean gap.
        let long = a
            .windows(2)
            .filter(|w| (w[1] - w[0]).as_secs_f64() > 0.01)
            .count();
        let share = long as f64 / a.len() as f64;
        assert!((share - (-1.0f64).exp()).abs() < 0.03, "{share}");
    }

    #[test]
    fn traces_in_the_azure_shape_sum_their_functions() {
        let dir = std::env::temp_dir().join(format!("thaw-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.csv");
        std::fs::write(
            &path,
            "HashOwner,HashApp,HashFunction,Trigger,1,2,3\na,b,c,http,1,0,2\na,b,d,timer,4,5,6\n",
        )
        .expect("write");
        assert_eq!(read_trace(&path).expect("parses"), vec![5, 5, 8]);
        std::fs::write(&path, "HashOwner,1,2\na,1,x\n").expect("write");
        assert!(read_trace(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
