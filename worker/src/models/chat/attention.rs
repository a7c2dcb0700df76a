//! Causal attention on the CPU, for the decoder's rows of one step.
//!
//! A decode row (a step of one token) attends on its own, [`row`]: its
//! query against every cached key, with the head's width across the SIMD
//! lanes, its weighted values summed in eight registers in one pass over
//! the cache, and its heads in parallel when it is alone in the pass (at
//! a long context, a lone row's attention outweighs its products). A prompt's rows go in blocks of [`LANES`] consecutive positions,
//! [`block`], with the block's rows across the lanes: each key and value is
//! read once per block instead of once per row. (A long prompt's keys
//! outgrow the caches, and reading them again for every row made attention
//! memory-bound: a 2 048-token prompt spent 40 % of its time there.)
//!
//! The cache ([`Heads`]) holds f16, head-major (half the bytes a long
//! context reads for each token, and one stream per key/value head); both
//! paths widen each key and value to f32 exactly as they read it, and
//! compute in f32 from there.
//!
//! Both paths do the same arithmetic for each row, in the same order: a
//! score is eight partial sums over the head's width (fused multiply-adds,
//! elements `m, m + 8, …` in partial `m`), added in order; the exponentials
//! are [`exp`]'s; each weight is divided by its row's total; each output sums
//! its weighted values over positions in order. So a row's result is the
//! same bit for bit whichever path takes it and whatever rows share its
//! block: a prompt's logits do not depend on how it is chunked or on the
//! other sequences in the pass.

use std::ops::Range;

use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use super::llama::LlamaConfig;

/// Rows per block: the width of an f32 AVX2 register.
pub(super) const LANES: usize = 8;

/// Partial sums of a score: elements `m, m + PARTIALS, …` of the width go
/// to partial `m`.
const PARTIALS: usize = 8;

/// Outputs per pass of the weighted-values kernel: one register each.
const OUTPUTS: usize = 8;

/// Outputs per pass of a lone row's weighted values: eight registers.
const ROW_OUTPUTS: usize = 64;

/// A unit of attention work in a forward pass: rows `rows` of the pass,
/// all of step `step`, at positions from `first`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Task {
    step: usize,
    rows: Range<usize>,
    first: usize,
}

/// The pass's tasks, from each step's cached length and token count: a
/// step of one token is one row; a longer step is cut into blocks of
/// [`LANES`] from its first token.
pub(super) fn tasks(steps: impl IntoIterator<Item = (usize, usize)>) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut row = 0;
    for (step, (cached, tokens)) in steps.into_iter().enumerate() {
        for start in (0..tokens).step_by(LANES) {
            let n = (tokens - start).min(LANES);
            tasks.push(Task {
                step,
                rows: row + start..row + start + n,
                first: cached + start,
            });
        }
        row += tokens;
    }
    tasks
}

/// One layer's keys or values of one sequence, in f16, head-major: each
/// key/value head's positions lie one after another, so that attention
/// reads a head's cache as one stream.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    data: Vec<f16>,
    /// Positions each head has room for.
    capacity: usize,
    len: usize,
}

impl Heads {
    /// Appends `rows` (positions × `c`'s key/value width, as the
    /// projection makes them), rounded to f16.
    pub(super) fn append(&mut self, rows: &[f32], c: &LlamaConfig) {
        let (heads, width) = (c.kv_heads, c.head_dim);
        let n = rows.len() / (heads * width);
        if self.len + n > self.capacity {
            // Doubling (each position is moved O(1) times on average), up
            // to the model's context, which no sequence outgrows.
            let needed = self.len + n;
            let capacity = (2 * self.capacity).clamp(16, c.context.max(16)).max(needed);
            let mut data = vec![f16::ZERO; heads * capacity * width];
            for h in 0..heads {
                data[h * capacity * width..][..self.len * width]
                    .copy_from_slice(&self.data[h * self.capacity * width..][..self.len * width]);
            }
            (self.data, self.capacity) = (data, capacity);
        }
        for (t, row) in rows.chunks_exact(heads * width).enumerate() {
            for (h, row) in row.chunks_exact(width).enumerate() {
                let at = (h * self.capacity + self.len + t) * width;
                for (to, &x) in self.data[at..at + width].iter_mut().zip(row) {
                    *to = f16::from_f32(x);
                }
            }
        }
        self.len += n;
    }

    /// Head `h`'s positions (`len × width`, `width` being `c.head_dim`
    /// of the config it was appended with).
    fn head(&self, h: usize, width: usize) -> &[f16] {
        &self.data[h * self.capacity * width..][..self.len * width]
    }
}

/// Every task's attention: `q` is the pass's queries (`rows ×
/// heads·head_dim`), `caches` each step's keys and values (f16, widened
/// exactly to f32 as they are read), `out` the results, in `q`'s layout.
/// `parallel`: tasks on rayon's current pool.
pub(super) fn attend(
    c: &LlamaConfig,
    q: &[f32],
    caches: &[(&Heads, &Heads)],
    tasks: &[Task],
    out: &mut [f32],
    parallel: bool,
) {
    let d = c.heads * c.head_dim;
    let mut work = Vec::with_capacity(tasks.len());
    let mut rest = out;
    for task in tasks {
        let (mine, later) = std::mem::take(&mut rest).split_at_mut(task.rows.len() * d);
        work.push((task, mine));
        rest = later;
    }
    // Too few tasks to keep the pool busy (one decoding sequence): a row's
    // heads go in parallel too.
    let spread = parallel && tasks.len() < rayon::current_num_threads();
    let run = |scratch: &mut Scratch, (task, out): (&Task, &mut [f32])| {
        let q = &q[task.rows.start * d..task.rows.end * d];
        let cache = caches[task.step];
        if task.rows.len() == 1 {
            row(c, q, cache, task.first, out, scratch, spread);
        } else {
            block(c, q, cache, task.first, out, scratch);
        }
    };
    if parallel && work.len() > 1 {
        work.into_par_iter().for_each_init(Scratch::default, run);
    } else {
        let mut scratch = Scratch::default();
        for item in work {
            run(&mut scratch, item);
        }
    }
}

/// Scratch memory a task reuses from one call to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// A block's queries for one head, transposed: `head_dim × LANES`.
    queries: Vec<[f32; LANES]>,
    /// A block's scores, then weights, per position: `positions × LANES`.
    scores: Vec<[f32; LANES]>,
    /// A row's scores, then weights, per position.
    row: Vec<f32>,
}

/// One row's attention over its sequence's positions `0..=pos`, all heads:
/// `q` is the row's queries (`heads × head_dim`), `cache` its sequence's
/// keys and values, `out` the row's result. `parallel`: the
/// heads on rayon's current pool (a lone decode row would otherwise keep
/// one thread busy while the others wait, and at long contexts its
/// attention outweighs its products).
pub(super) fn row(
    c: &LlamaConfig,
    q: &[f32],
    cache: (&Heads, &Heads),
    pos: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
    parallel: bool,
) {
    let hd = c.head_dim;
    if parallel {
        out.par_chunks_exact_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (h, out)| {
                head(c, h, &q[h * hd..(h + 1) * hd], cache, pos, out, scores);
            });
    } else {
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            head(
                c,
                h,
                &q[h * hd..(h + 1) * hd],
                cache,
                pos,
                out,
                &mut scratch.row,
            );
        }
    }
}

/// Head `h` of a row: `qh` its query, `out` its result.
fn head(
    c: &LlamaConfig,
    h: usize,
    qh: &[f32],
    (keys, values): (&Heads, &Heads),
    pos: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = c.head_dim;
    let kv = h / (c.heads / c.kv_heads);
    let (keys, values) = (keys.head(kv, hd), values.head(kv, hd));
    let scale = 1.0 / (hd as f32).sqrt();
    scores.resize(pos + 1, 0.0);
    let mut max = f32::NEG_INFINITY;
    for (t, score) in scores.iter_mut().enumerate() {
        let key = &keys[t * hd..(t + 1) * hd];
        *score = dot(qh, key) * scale;
        max = max.max(*score);
    }
    for chunk in scores.chunks_mut(LANES) {
        let mut x = [f32::NEG_INFINITY; LANES];
        for (x, s) in x.iter_mut().zip(chunk.iter()) {
            *x = s - max;
        }
        let e = exp(x);
        chunk.copy_from_slice(&e[..chunk.len()]);
    }
    let mut total = 0.0;
    for &e in scores.iter() {
        total += e;
    }
    for e in scores.iter_mut() {
        *e /= total;
    }
    // Each output sums over positions in order, OUTPUTS of them at a time
    // in registers.
    let mut i = 0;
    while i < hd {
        let values = &values[i..];
        if hd - i >= ROW_OUTPUTS {
            // Eight registers: eight independent chains of multiply-adds,
            // and each position's values read once.
            let sums = weighted_row::<ROW_OUTPUTS>(scores, values, hd);
            out[i..i + ROW_OUTPUTS].copy_from_slice(&sums);
            i += ROW_OUTPUTS;
        } else if hd - i >= OUTPUTS {
            let sums = weighted_row::<OUTPUTS>(scores, values, hd);
            out[i..i + OUTPUTS].copy_from_slice(&sums);
            i += OUTPUTS;
        } else {
            out[i] = weighted_row::<1>(scores, values, hd)[0];
            i += 1;
        }
    }
}

/// `K` consecutive outputs of one row: each the sum over positions, in
/// order, of the position's weight times its value (`values[t * stride..]`
/// starts at position t's).
#[inline(always)]
fn weighted_row<const K: usize>(weights: &[f32], values: &[f16], stride: usize) -> [f32; K] {
    let mut acc = [0.0f32; K];
    for (t, &w) in weights.iter().enumerate() {
        let Some(v) = values[t * stride..].first_chunk::<K>() else {
            unreachable!("the cache holds every position's values");
        };
        let v = widen(v);
        acc = std::array::from_fn(|j| v[j].mul_add(w, acc[j]));
    }
    acc
}

/// `K` cached values as f32 (exact; eight at a time by F16C's conversion
/// where the build has it).
#[inline(always)]
fn widen<const K: usize>(h: &[f16; K]) -> [f32; K] {
    let mut out = [0.0f32; K];
    h.convert_to_f32_slice(&mut out);
    out
}

/// A score's dot product of query `a` and key `b`: [`PARTIALS`] partial
/// sums, added in order, then the elements past the last whole group.
fn dot(a: &[f32], b: &[f16]) -> f32 {
    let mut partial = [0.0f32; PARTIALS];
    for (a, b) in a.chunks_exact(PARTIALS).zip(b.chunks_exact(PARTIALS)) {
        let b = widen::<PARTIALS>(b.try_into().expect("a whole group"));
        for m in 0..PARTIALS {
            partial[m] = a[m].mul_add(b[m], partial[m]);
        }
    }
    let mut sum = partial[0];
    for p in &partial[1..] {
        sum += p;
    }
    let whole = a.len() / PARTIALS * PARTIALS;
    for (a, b) in a[whole..].iter().zip(&b[whole..]) {
        sum = a.mul_add(b.to_f32(), sum);
    }
    sum
}

/// The attention of `n ≤ LANES` consecutive rows of one sequence, at
/// positions `first..first + n`, all heads: `q` is their queries
/// (`n × heads·head_dim`), `keys` and `values` the sequence's cache (at
/// least `first + n` positions), `out` their results (`n × heads·head_dim`).
pub(super) fn block(
    c: &LlamaConfig,
    q: &[f32],
    (keys, values): (&Heads, &Heads),
    first: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let (hd, d) = (c.head_dim, c.heads * c.head_dim);
    let n = q.len() / d;
    assert!(
        (1..=LANES).contains(&n) && out.len() == q.len(),
        "attention block: shape"
    );
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // Every lane runs to the block's last position and masks its own later
    // ones (weight 0, which adds nothing). Padding lanes (from `n`) have
    // zero queries and are dropped at the end.
    let positions = first + n;
    let Scratch {
        queries, scores, ..
    } = scratch;
    queries.resize(hd, [0.0; LANES]);
    scores.resize(positions, [0.0; LANES]);
    for h in 0..c.heads {
        let kv = h / group;
        let (keys, values) = (keys.head(kv, hd), values.head(kv, hd));
        for (i, lanes) in queries.iter_mut().enumerate() {
            *lanes = std::array::from_fn(|r| if r < n { q[r * d + h * hd + i] } else { 0.0 });
        }

        let mut max = [f32::NEG_INFINITY; LANES];
        for (t, score) in scores.iter_mut().enumerate() {
            let key = &keys[t * hd..(t + 1) * hd];
            let mut sum = dot_lanes(queries, key);
            for r in 0..LANES {
                // Causal mask: lane r sees positions up to first + r.
                sum[r] = if t > first + r {
                    f32::NEG_INFINITY
                } else {
                    sum[r] * scale
                };
                max[r] = max[r].max(sum[r]);
            }
            *score = sum;
        }

        let mut total = [0.0f32; LANES];
        for lanes in scores.iter_mut() {
            let mut shifted = *lanes;
            for r in 0..LANES {
                shifted[r] -= max[r];
            }
            *lanes = exp(shifted);
            for r in 0..LANES {
                total[r] += lanes[r];
            }
        }
        for lanes in scores.iter_mut() {
            for r in 0..LANES {
                lanes[r] /= total[r];
            }
        }

        // Weighted values, OUTPUTS of the head's width at a time.
        let mut i = 0;
        while i < hd {
            let value = |t: usize| &values[t * hd + i..];
            let (width, sums) = if hd - i >= OUTPUTS {
                (OUTPUTS, weighted::<OUTPUTS>(scores, value))
            } else {
                let [one] = weighted::<1>(scores, value);
                let mut sums = [[0.0; LANES]; OUTPUTS];
                sums[0] = one;
                (1, sums)
            };
            for (r, row) in out.chunks_exact_mut(d).enumerate() {
                for (j, sum) in sums[..width].iter().enumerate() {
                    row[h * hd + i + j] = sum[r];
                }
            }
            i += width;
        }
    }
}

/// Each lane's [`dot`] of its query (`queries`: the head's width × lanes)
/// with `key`, in the same order.
#[inline(always)]
fn dot_lanes(queries: &[[f32; LANES]], key: &[f16]) -> [f32; LANES] {
    let key = &key[..queries.len()];
    let mut partial = [[0.0f32; LANES]; PARTIALS];
    for (q, k) in queries
        .chunks_exact(PARTIALS)
        .zip(key.chunks_exact(PARTIALS))
    {
        let k = widen::<PARTIALS>(k.try_into().expect("a whole group"));
        for m in 0..PARTIALS {
            for r in 0..LANES {
                partial[m][r] = k[m].mul_add(q[m][r], partial[m][r]);
            }
        }
    }
    let mut sum = partial[0];
    for p in &partial[1..] {
        for r in 0..LANES {
            sum[r] += p[r];
        }
    }
    let whole = key.len() / PARTIALS * PARTIALS;
    for (q, k) in queries[whole..].iter().zip(&key[whole..]) {
        let k = k.to_f32();
        for r in 0..LANES {
            sum[r] = k.mul_add(q[r], sum[r]);
        }
    }
    sum
}

/// Each lane's sum over positions, in order, of its weight times `K`
/// consecutive values of the position (`values(t)` starts at them).
#[inline(always)]
fn weighted<'v, const K: usize>(
    weights: &[[f32; LANES]],
    values: impl Fn(usize) -> &'v [f16],
) -> [[f32; LANES]; K] {
    let mut acc = [[0.0f32; LANES]; K];
    for (t, lanes) in weights.iter().enumerate() {
        let v = widen::<K>(values(t)[..K].try_into().expect("K values"));
        for j in 0..K {
            for r in 0..LANES {
                acc[j][r] = v[j].mul_add(lanes[r], acc[j][r]);
            }
        }
    }
    acc
}

/// `e^x` lane by lane, within 1e-6 relative (Cephes' expf polynomial); 0
/// below -87.3 (where the true value is under f32's smallest normal), so
/// masked scores weigh nothing.
#[inline(always)]
fn exp(x: [f32; LANES]) -> [f32; LANES] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that x - n·ln 2 loses nothing to rounding.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let mut out = [0.0f32; LANES];
    for r in 0..LANES {
        let v = x[r].clamp(-87.3, 88.3);
        let n = v.mul_add(LOG2E, 0.5).floor();
        let f = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, v));
        let mut p = 1.987_569_1e-4f32;
        p = p.mul_add(f, 1.398_199_9e-3);
        p = p.mul_add(f, 8.333_452e-3);
        p = p.mul_add(f, 4.166_579_6e-2);
        p = p.mul_add(f, 1.666_666_5e-1);
        p = p.mul_add(f, 0.5);
        let y = p.mul_add(f * f, f) + 1.0;
        // 2^n: n + 127 (the biased exponent) lands in the low bits of a
        // float near 2^23, and moves to the exponent's place (bit
        // operations, which vectorize where a float-to-int conversion
        // does not).
        let two_n = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
        // Without a branch, so that the lanes vectorize.
        let keep = f32::from(u8::from(x[r] >= -87.3));
        out[r] = y * two_n * keep;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(heads: usize, kv_heads: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig {
            layers: 1,
            hidden: heads * head_dim,
            ffn: 1,
            heads,
            kv_heads,
            head_dim,
            rope_base: 10_000.0,
            eps: 1e-5,
            context: 4096,
            vocab: 1,
        }
    }

    /// Deterministic values in [-2, 2): the products' test data, doubled.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        super::super::quant::tests::data(n, seed)
            .into_iter()
            .map(|v| v * 2.0)
            .collect()
    }

    /// A cache of `positions` keys or values, appended `step` positions at
    /// a time (so that it grows), and its values as stored (rounded to
    /// f16), `positions × kv_dim`.
    fn cached(c: &LlamaConfig, positions: usize, step: usize, seed: u64) -> (Heads, Vec<f16>) {
        let rows = data(positions * c.kv_dim(), seed);
        let mut heads = Heads::default();
        for part in rows.chunks(step * c.kv_dim()) {
            heads.append(part, c);
        }
        (heads, rows.into_iter().map(f16::from_f32).collect())
    }

    /// Attention in f64, straight from its definition, on the cache's
    /// values as they are.
    fn reference(c: &LlamaConfig, q: &[f32], keys: &[f16], values: &[f16], pos: usize) -> Vec<f64> {
        let (hd, kv_dim) = (c.head_dim, c.kv_dim());
        let group = c.heads / c.kv_heads;
        let mut out = vec![0.0f64; c.heads * hd];
        for h in 0..c.heads {
            let kv = (h / group) * hd;
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    (0..hd)
                        .map(|i| f64::from(q[h * hd + i]) * f64::from(keys[t * kv_dim + kv + i]))
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (t, s) in scores.iter().enumerate() {
                let w = (s - max).exp() / total;
                for i in 0..hd {
                    out[h * hd + i] += w * f64::from(values[t * kv_dim + kv + i]);
                }
            }
        }
        out
    }

    #[test]
    fn rows_match_the_definition_and_blocks_match_rows_bit_for_bit() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        // SmolLM2's shape, and a head width that is not a multiple of 8.
        for (c, first, n) in [
            (config(9, 3, 64), 0, 8),
            (config(9, 3, 64), 37, 5),
            (config(9, 3, 64), 300, 1),
            (config(4, 2, 12), 3, 7),
        ] {
            let d = c.heads * c.head_dim;
            let positions = first + n;
            let (keys, stored_keys) = cached(&c, positions, 7, 1);
            let (values, stored_values) = cached(&c, positions, 7, 2);
            let q = data(n * d, 3);
            let mut blocked = vec![0.0f32; n * d];
            block(
                &c,
                &q,
                (&keys, &values),
                first,
                &mut blocked,
                &mut Scratch::default(),
            );
            for r in 0..n {
                let q_row = &q[r * d..(r + 1) * d];
                let want = reference(&c, q_row, &stored_keys, &stored_values, first + r);
                let q = &q[r * d..(r + 1) * d];
                let one_row = |parallel: bool| {
                    let mut out = vec![0.0f32; d];
                    let mut scratch = Scratch::default();
                    let cache = (&keys, &values);
                    row(&c, q, cache, first + r, &mut out, &mut scratch, parallel);
                    out
                };
                let alone = one_row(false);
                // The heads in parallel: the same.
                let spread = pool.install(|| one_row(true));
                assert_eq!(spread, alone, "first {first}, row {r}");
                for (i, want) in want.iter().enumerate() {
                    let got = alone[i];
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "first {first}, row {r}, {i}: {got} vs {want}"
                    );
                }
                // The same arithmetic in the same order on both paths.
                assert_eq!(alone, blocked[r * d..(r + 1) * d], "first {first}, row {r}");
            }
        }
    }

    #[test]
    fn the_cache_grows_to_the_context_and_keeps_each_heads_positions() {
        let c = LlamaConfig {
            context: 20,
            ..config(4, 2, 12)
        };
        let (heads, stored) = cached(&c, 7, 7, 8);
        assert_eq!(heads.capacity, 16);
        let mut heads = heads;
        let mut stored = stored;
        for (positions, seed) in [(7, 9), (6, 10)] {
            let rows = data(positions * c.kv_dim(), seed);
            heads.append(&rows, &c);
            stored.extend(rows.into_iter().map(f16::from_f32));
        }
        // Doubling would make 32: the context caps it.
        assert_eq!(heads.capacity, 20);
        for h in 0..c.kv_heads {
            let want: Vec<f16> = stored
                .chunks_exact(c.kv_dim())
                .flat_map(|row| row[h * c.head_dim..(h + 1) * c.head_dim].to_vec())
                .collect();
            assert_eq!(heads.head(h, c.head_dim), want, "head {h}");
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_its_neighbours() {
        let c = config(9, 3, 64);
        let d = c.heads * c.head_dim;
        let (first, n) = (20, 6);
        let (keys, _) = cached(&c, first + n, first + n, 4);
        let (values, _) = cached(&c, first + n, first + n, 5);
        let q = data(n * d, 6);
        let mut whole = vec![0.0f32; n * d];
        block(
            &c,
            &q,
            (&keys, &values),
            first,
            &mut whole,
            &mut Scratch::default(),
        );
        // The block's first three rows alone: other queries in the other
        // lanes, fewer positions.
        let mut part = vec![0.0f32; 3 * d];
        block(
            &c,
            &q[..3 * d],
            (&keys, &values),
            first,
            &mut part,
            &mut Scratch::default(),
        );
        assert_eq!(part, whole[..3 * d]);
    }

    #[test]
    fn exp_matches_the_standard_library() {
        let xs: Vec<f32> = (-8800..=0).map(|i| i as f32 / 100.0).collect();
        for chunk in xs.chunks_exact(LANES) {
            let got = exp(chunk.try_into().expect("eight"));
            for (x, e) in chunk.iter().zip(got) {
                let want = f64::from(*x).exp();
                let relative = ((f64::from(e) - want) / want).abs();
                assert!(
                    want < 1e-37 || relative < 1e-6,
                    "exp({x}) = {e}, want {want}"
                );
            }
        }
        assert_eq!(exp([f32::NEG_INFINITY; LANES]), [0.0; LANES]);
    }
}
