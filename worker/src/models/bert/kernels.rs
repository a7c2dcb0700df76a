//! The encoder's f32 kernels besides matmul, on row-major slices. Loops are
//! written so the compiler vectorizes them: sums run over eight lanes, and
//! `exp` and `erf` are branch-free polynomials rather than libm calls. Also
//! the q8_0 dequantizer, for products over many rows.
const LANES: usize = 8;

/// `a * b + c`, fused where the target has FMA (x86-64-v3 has).
#[inline(always)]
fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// The sum of a slice, in eight lanes.
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The dot product of two slices of one length, in eight lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l = mul_add(*x, *y, *l);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` within 2 ulp over the normal range; underflows to 2^-126 and
/// saturates at `e^88`, both far outside what softmax and GELU meet.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = mul_add(x, std::f32::consts::LOG2_E, 0.5).floor();
    let r = mul_add(n, -LN2_LO, mul_add(n, -LN2_HI, x));
    // e^r on |r| ≤ ln2/2: Taylor to degree 6, relative error < 2e-7.
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = mul_add(p, r, c);
    }
    // 2^n without a float-to-int cast (which would not vectorize): adding
    // 2^23 puts the biased exponent n + 127 in the low mantissa bits.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error
/// below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / mul_add(0.327_591_1, a, 1.0);
    let mut p = 1.061_405_4;
    for c in [-1.453_152, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        p = mul_add(p, t, c);
    }
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// GELU in its exact (erf) form, as BERT's `gelu`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out = y + bias`, the bias repeated on every row.
pub fn add_bias(out: &mut [f32], y: &[f32], bias: &[f32]) {
    for (o, y) in out
        .chunks_exact_mut(bias.len())
        .zip(y.chunks_exact(bias.len()))
    {
        for ((o, y), b) in o.iter_mut().zip(y).zip(bias) {
            *o = y + b;
        }
    }
}

/// `out = gelu(y + bias)`, the bias repeated on every row.
pub fn bias_gelu(out: &mut [f32], y: &[f32], bias: &[f32]) {
    for (o, y) in out
        .chunks_exact_mut(bias.len())
        .zip(y.chunks_exact(bias.len()))
    {
        for ((o, y), b) in o.iter_mut().zip(y).zip(bias) {
            *o = gelu(y + b);
        }
    }
}

/// LayerNorm of one row in place.
#[inline]
pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    for v in row.iter_mut() {
        *v -= mean;
    }
    let inv = 1.0 / (dot(row, row) / n + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = mul_add(*v * inv, *g, *b);
    }
}

/// `hidden = LayerNorm(hidden + y + bias)`, row by row: a dense layer's
/// output joining the residual stream.
pub fn residual_layer_norm(
    hidden: &mut [f32],
    y: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let width = gamma.len();
    for (h, y) in hidden.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
        for ((h, y), b) in h.iter_mut().zip(y).zip(bias) {
            *h += y + b;
        }
        layer_norm(h, gamma, beta, eps);
    }
}

/// Softmax of one row in place.
#[inline]
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// An IEEE half (binary16), given as its bits, as f32.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        // Zero and subnormals: mantissa × 2^-24.
        0 => sign * mantissa as f32 * (1.0 / 16_777_216.0),
        31 if mantissa == 0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => f32::from_bits(
            (u32::from(bits & 0x8000) << 16) | ((exponent + 112) << 23) | (mantissa << 13),
        ),
    }
}

/// GGML q8_0 blocks (a little-endian f16 scale, then 32 i8) into `out`,
/// 32 values per block.
pub fn dequantize_q8_0(blocks: &[u8], out: &mut [f32]) {
    for (block, out) in blocks.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let (scale, values) = block.split_at(2);
        let d = f16_to_f32(u16::from_le_bytes([scale[0], scale[1]]));
        for (o, &q) in out.iter_mut().zip(values) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// The q8_0 blocks of a `[rows, columns]` matrix, dequantized into `out`
/// transposed: `[columns, rows]`, the layout gemm takes fastest. Sixteen
/// rows go at a time through a small tile, so each write is a run of
/// sixteen values rather than one value per row.
pub fn dequantize_q8_0_transposed(blocks: &[u8], rows: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    let row_bytes = blocks.len() / rows.max(1);
    let mut tile = [[0f32; 32]; TILE];
    for first in (0..rows).step_by(TILE) {
        let height = TILE.min(rows - first);
        let band = &blocks[first * row_bytes..(first + height) * row_bytes];
        for block in 0..row_bytes / 34 {
            for (row, values) in band.chunks_exact(row_bytes).zip(&mut tile) {
                dequantize_q8_0(&row[block * 34..][..34], values);
            }
            for j in 0..32 {
                let column = &mut out[(block * 32 + j) * rows + first..][..height];
                for (o, values) in column.iter_mut().zip(&tile) {
                    *o = values[j];
                }
            }
        }
    }
}

/// Self-attention over packed sequences. `qkv` rows are
/// `[query | key | value]`, each `heads` heads wide; sequence `s` is rows
/// `bounds[s]..bounds[s + 1]`. Writes each token's heads, side by side,
/// to its row of `context`, which holds rows `bounds[0]..` only.
pub fn attention(qkv: &[f32], bounds: &[usize], heads: usize, context: &mut [f32]) {
    let first = bounds[0];
    let width = context.len() / (bounds[bounds.len() - 1] - first).max(1);
    let dim = width / heads;
    let scale = 1.0 / (dim as f32).sqrt();
    let longest = bounds.windows(2).map(|b| b[1] - b[0]).max().unwrap_or(0);
    let mut scores = vec![0f32; longest];
    let row = |t: usize| &qkv[t * 3 * width..][..3 * width];
    for span in bounds.windows(2) {
        let (start, end) = (span[0], span[1]);
        let scores = &mut scores[..end - start];
        for head in 0..heads {
            let (q, k, v) = (head * dim, width + head * dim, 2 * width + head * dim);
            for i in start..end {
                let query = &row(i)[q..q + dim];
                for (s, j) in scores.iter_mut().zip(start..end) {
                    *s = dot(query, &row(j)[k..k + dim]) * scale;
                }
                softmax(scores);
                let out = &mut context[(i - first) * width + head * dim..][..dim];
                out.fill(0.0);
                for (p, j) in scores.iter().zip(start..end) {
                    for (o, v) in out.iter_mut().zip(&row(j)[v..v + dim]) {
                        *o = mul_add(*p, *v, *o);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn f16_bits_decode() {
        for (bits, want) in [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x8000, 0.0),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
        ] {
            assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn q8_0_blocks_dequantize() {
        let mut blocks = vec![0u8; 68];
        blocks[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // 0.5
        blocks[2] = (-127i8) as u8;
        blocks[33] = 4;
        blocks[34..36].copy_from_slice(&0x4000u16.to_le_bytes()); // 2.0
        blocks[36] = 3;
        let mut out = vec![9.0; 64];
        dequantize_q8_0(&blocks, &mut out);
        assert_eq!((out[0], out[1], out[31]), (-63.5, 0.0, 2.0));
        assert_eq!((out[32], out[33]), (6.0, 0.0));
    }

    #[test]
    fn transposed_dequantization_is_the_transpose() {
        // 37 rows (two tiles and a part), 64 columns (two blocks).
        let (rows, columns) = (37, 64);
        let blocks: Vec<u8> = (0..rows * columns / 32 * 34)
            .map(|i| {
                if i % 34 == 1 {
                    0x3c
                } else {
                    (i * 37 % 251) as u8
                }
            })
            .collect();
        let mut plain = vec![0.0; rows * columns];
        let mut transposed = vec![0.0; rows * columns];
        dequantize_q8_0(&blocks, &mut plain);
        dequantize_q8_0_transposed(&blocks, rows, &mut transposed);
        for r in 0..rows {
            for c in 0..columns {
                assert_eq!(transposed[c * rows + r], plain[r * columns + c], "{r}, {c}");
            }
        }
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}) = {got}, not {want}"
            );
        }
    }

    #[test]
    fn gelu_matches_the_erf_form() {
        // The reference erf: its Maclaurin series in f64, exact to 1e-12
        // on |x| ≤ 3, and 1 beyond 6 (erfc(6) < 3e-17).
        fn erf64(x: f64) -> f64 {
            if x.abs() > 6.0 {
                return x.signum();
            }
            let (mut term, mut total, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        }
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let want = 0.5 * x as f64 * (1.0 + erf64(x as f64 / 2f64.sqrt()));
            let got = gelu(x) as f64;
            assert!((got - want).abs() < 1e-6, "gelu({x}) = {got}, not {want}");
        }
    }

    #[test]
    fn sums_and_dots_match_plain_loops() {
        for n in [0, 1, 7, 8, 9, 32, 384, 1000] {
            let (a, b) = (data(n, 1), data(n, 2));
            let plain_sum: f32 = a.iter().sum();
            let plain_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(close(sum(&a), plain_sum, 1e-5), "sum of {n}");
            assert!(close(dot(&a, &b), plain_dot, 1e-5), "dot of {n}");
        }
    }

    #[test]
    fn residual_layer_norm_matches_a_plain_layer_norm() {
        let (rows, width) = (3, 384);
        let (h0, y, bias) = (data(rows * width, 3), data(rows * width, 4), data(width, 5));
        let (gamma, beta) = (data(width, 6), data(width, 7));
        let mut h = h0.clone();
        residual_layer_norm(&mut h, &y, &bias, &gamma, &beta, 1e-12);
        for r in 0..rows {
            let x: Vec<f64> = (0..width)
                .map(|c| (h0[r * width + c] + y[r * width + c] + bias[c]) as f64)
                .collect();
            let mean = x.iter().sum::<f64>() / width as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            for c in 0..width {
                let want = (x[c] - mean) / (var + 1e-12).sqrt() * gamma[c] as f64 + beta[c] as f64;
                let got = h[r * width + c];
                assert!(
                    close(got, want as f32, 1e-5),
                    "row {r} col {c}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn bias_gelu_and_add_bias_repeat_the_bias_per_row() {
        let (y, bias) = (data(2 * 5, 8), data(5, 9));
        let (mut plus, mut activated) = (vec![0.0; 10], vec![0.0; 10]);
        add_bias(&mut plus, &y, &bias);
        bias_gelu(&mut activated, &y, &bias);
        for i in 0..10 {
            assert_eq!(plus[i], y[i] + bias[i % 5]);
            assert_eq!(activated[i], gelu(y[i] + bias[i % 5]));
        }
    }

    #[test]
    fn attention_matches_a_plain_per_head_softmax() {
        let (heads, dim) = (3, 4);
        let width = heads * dim;
        let bounds = [0, 2, 7, 8];
        let tokens = bounds[3];
        let qkv = data(tokens * 3 * width, 10);
        let mut context = vec![0.0; tokens * width];
        attention(&qkv, &bounds, heads, &mut context);
        let at = |t: usize, part: usize, h: usize, d: usize| {
            qkv[t * 3 * width + part * width + h * dim + d] as f64
        };
        for s in bounds.windows(2) {
            for h in 0..heads {
                for i in s[0]..s[1] {
                    let logits: Vec<f64> = (s[0]..s[1])
                        .map(|j| {
                            (0..dim)
                                .map(|d| at(i, 0, h, d) * at(j, 1, h, d))
                                .sum::<f64>()
                                / (dim as f64).sqrt()
                        })
                        .collect();
                    let max = logits.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in 0..dim {
                        let want: f64 = (s[0]..s[1])
                            .zip(&e)
                            .map(|(j, w)| w / total * at(j, 2, h, d))
                            .sum();
                        let got = context[i * width + h * dim + d];
                        assert!(
                            close(got, want as f32, 1e-5),
                            "token {i} head {h}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
