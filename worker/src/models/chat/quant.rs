//! GGUF's block formats and the chat model's matrix products, computed on the
//! blocks where they lie in the mapped file.
//!
//! A product takes several activation rows at once (one per sequence in a
//! decode step, or a prompt's tokens) and reads each weight block once for
//! all of them: decode is bound by reading the weights, so four sequences
//! cost little more than one. Activations are quantized to 8 bits per block
//! of 32 (scale and sum kept), as llama.cpp and candle do, so a block's dot
//! product is integer arithmetic.
//!
//! The AVX2 kernels run where the CPU has AVX2 and FMA; the portable ones
//! compute the same sums and are what the tests compare them with.

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

/// Values per block in every format here.
pub const BLOCK: usize = 32;

/// How a weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `d: f16, qs: [u8; 16]`, value = d × (nibble − 8).
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`, value = d × nibble + m.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`, value = d × q.
    Q8_0,
}

impl Format {
    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

/// Why a matrix cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

/// A quantized matrix of `rows` outputs by `cols` inputs, row-major blocks,
/// borrowed from the mapping.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    format: Format,
    rows: usize,
    cols: usize,
    bytes: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// A view of `bytes` as a `rows × cols` matrix in `format`; checks the
    /// size and that `cols` is whole blocks.
    pub fn new(
        format: Format,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, FormatError> {
        if cols % BLOCK != 0 || cols == 0 {
            return Err(FormatError(format!(
                "a {rows}x{cols} matrix: columns are not whole blocks of {BLOCK}"
            )));
        }
        let expected = rows * cols / BLOCK * format.block_bytes();
        if bytes.len() != expected {
            return Err(FormatError(format!(
                "a {rows}x{cols} {format:?} matrix needs {expected} bytes, has {}",
                bytes.len()
            )));
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            bytes,
        })
    }

    /// Outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.bytes[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        for (block, out) in bytes
            .chunks_exact(self.format.block_bytes())
            .zip(out.chunks_exact_mut(BLOCK))
        {
            match self.format {
                Format::Q8_0 => {
                    let d = half_at(block, 0);
                    for (o, &q) in out.iter_mut().zip(&block[2..]) {
                        *o = d * f32::from(q as i8);
                    }
                }
                Format::Q4_0 | Format::Q4_1 => {
                    let (d, m, qs) = nibble_block(self.format, block);
                    for (i, &q) in qs.iter().enumerate() {
                        out[i] = d * f32::from(q & 0x0f) + m;
                        out[i + 16] = d * f32::from(q >> 4) + m;
                    }
                }
            }
        }
    }

    /// `out[r][j] = Σ_c x[r][c] · self[j][c]`: `x` is `m × cols` quantized
    /// rows, `out` is `m × rows`. Parallel over output columns.
    pub fn product(&self, x: &Q8Rows, out: &mut [f32], parallel: bool) {
        assert_eq!(x.cols, self.cols, "product: input width");
        let m = x.rows;
        assert_eq!(out.len(), m * self.rows, "product: output size");
        if m == 0 {
            return;
        }
        // Computed output-major (`rows × m`) so that each task owns a
        // contiguous range; for one row that is `out` itself, for more it is
        // transposed into `out` afterwards.
        if m == 1 {
            self.product_output_major(x, out, parallel);
            return;
        }
        let mut transposed = vec![0.0f32; self.rows * m];
        self.product_output_major(x, &mut transposed, parallel);
        transpose(&transposed, self.rows, m, out);
    }

    /// The product into `dst` as `rows × m` (output-major), in tasks of
    /// [`COLUMNS_PER_TASK`] outputs.
    fn product_output_major(&self, x: &Q8Rows, dst: &mut [f32], parallel: bool) {
        let m = x.rows;
        let chunk = COLUMNS_PER_TASK;
        let task = |(t, dst): (usize, &mut [f32])| {
            let start = t * chunk;
            self.product_columns(x, start..start + dst.len() / m, dst);
        };
        if parallel && self.rows > chunk {
            dst.par_chunks_mut(chunk * m).enumerate().for_each(task);
        } else {
            dst.chunks_mut(chunk * m).enumerate().for_each(task);
        }
    }

    /// Output columns `columns` for every row of `x`, into `dst`
    /// (`columns.len() × m`, output-major). Rows in tiles so that a tile of
    /// activations stays in L1 while the columns' blocks are read.
    fn product_columns(&self, x: &Q8Rows, columns: Range<usize>, dst: &mut [f32]) {
        let m = x.rows;
        let row_bytes = self.row_bytes();
        let kernel = kernel(self.format);
        for tile in (0..m).step_by(ROW_TILE) {
            let tile_end = (tile + ROW_TILE).min(m);
            for (i, j) in columns.clone().enumerate() {
                let w = &self.bytes[j * row_bytes..(j + 1) * row_bytes];
                let mut r = tile;
                while r < tile_end {
                    let n = (tile_end - r).min(ROWS);
                    let mut sums = [0.0f32; ROWS];
                    kernel(self.format, w, x, r, n, &mut sums);
                    dst[i * m + r..i * m + r + n].copy_from_slice(&sums[..n]);
                    r += n;
                }
            }
        }
    }
}

/// `out = srcᵀ`, `src` being `rows × cols`: in square tiles, so that the
/// writes, strided by `rows`, stay within a few cache lines at a time (an
/// untiled transpose of a long prompt's product took 7 % of its time).
fn transpose(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    for j0 in (0..rows).step_by(TILE) {
        for r0 in (0..cols).step_by(TILE) {
            for j in j0..(j0 + TILE).min(rows) {
                for r in r0..(r0 + TILE).min(cols) {
                    out[r * rows + j] = src[j * cols + r];
                }
            }
        }
    }
}

/// Most activation rows one pass over a weight row serves (registers: one
/// accumulator each).
pub const ROWS: usize = 8;

/// Output columns per parallel task.
const COLUMNS_PER_TASK: usize = 64;
/// Activation rows kept hot while a task's columns are read.
const ROW_TILE: usize = 32;

/// Activation rows quantized to 8 bits per block of 32: `d` the scale, `s`
/// the scale times the sum of the quantized values (for formats with an
/// offset), `q` the values.
#[derive(Debug, Clone, Default)]
pub struct Q8Rows {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
}

impl Q8Rows {
    /// Quantizes `x` (`rows × cols`, `cols` whole blocks), reusing this
    /// buffer's memory.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        assert!(cols % BLOCK == 0 && x.len() % cols == 0, "Q8Rows: shape");
        let blocks = x.len() / BLOCK;
        self.rows = x.len() / cols;
        self.cols = cols;
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.q.resize(x.len(), 0);
        for (b, (values, q)) in x
            .chunks_exact(BLOCK)
            .zip(self.q.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let amax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(values) {
                let v = (v * id).round() as i8;
                *q = v;
                sum += i32::from(v);
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }
}

/// Sums of one weight row against `n ≤ ROWS` activation rows from `first`.
type Kernel = fn(Format, &[u8], &Q8Rows, usize, usize, &mut [f32; ROWS]);

fn kernel(format: Format) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return match format {
            Format::Q8_0 => avx2::q8_0,
            Format::Q4_0 | Format::Q4_1 => avx2::nibbles,
        };
    }
    match format {
        Format::Q8_0 => portable::q8_0,
        Format::Q4_0 | Format::Q4_1 => portable::nibbles,
    }
}

#[inline(always)]
fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// A 4-bit block's scale, offset and packed nibbles (Q4_0's offset is −8d).
#[inline(always)]
fn nibble_block(format: Format, block: &[u8]) -> (f32, f32, &[u8]) {
    let d = half_at(block, 0);
    match format {
        Format::Q4_1 => (d, half_at(block, 2), &block[4..20]),
        _ => (d, -8.0 * d, &block[2..18]),
    }
}

/// The kernels in plain Rust: the reference for the AVX2 ones, and what
/// runs on CPUs without AVX2.
mod portable {
    use super::{half_at, nibble_block, Format, Q8Rows, BLOCK, ROWS};

    pub(super) fn nibbles(
        format: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        n: usize,
        sums: &mut [f32; ROWS],
    ) {
        let per_row = x.blocks_per_row();
        for (b, block) in w.chunks_exact(format.block_bytes()).enumerate() {
            let (d, m, qs) = nibble_block(format, block);
            for (r, sum) in sums.iter_mut().enumerate().take(n) {
                let xb = (first + r) * per_row + b;
                let xq = &x.q[xb * BLOCK..(xb + 1) * BLOCK];
                let mut dot = 0i32;
                for (i, &q) in qs.iter().enumerate() {
                    dot += i32::from(q & 0x0f) * i32::from(xq[i]);
                    dot += i32::from(q >> 4) * i32::from(xq[i + 16]);
                }
                *sum += d * x.d[xb] * dot as f32 + m * x.s[xb];
            }
        }
    }

    pub(super) fn q8_0(
        _: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        n: usize,
        sums: &mut [f32; ROWS],
    ) {
        let per_row = x.blocks_per_row();
        for (b, block) in w.chunks_exact(Format::Q8_0.block_bytes()).enumerate() {
            let d = half_at(block, 0);
            for (r, sum) in sums.iter_mut().enumerate().take(n) {
                let xb = (first + r) * per_row + b;
                let xq = &x.q[xb * BLOCK..(xb + 1) * BLOCK];
                let dot: i32 = block[2..]
                    .iter()
                    .zip(xq)
                    .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                    .sum();
                *sum += d * x.d[xb] * dot as f32;
            }
        }
    }
}

/// The kernels with AVX2 intrinsics, through pulp (as gemm uses it): its
/// `V3` token exists only on a CPU with AVX2 and FMA, and makes the
/// intrinsics safe to call; bytemuck reads the unaligned vectors.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m128i, __m256, __m256i};

    use pulp::x86::V3;

    use super::{half_at, nibble_block, Format, Q8Rows, BLOCK, ROWS};

    /// Whether the CPU has AVX2 and FMA.
    pub(super) fn available() -> bool {
        V3::try_new().is_some()
    }

    #[inline(always)]
    fn load256(bytes: &[u8]) -> __m256i {
        bytemuck::pod_read_unaligned(&bytes[..32])
    }

    #[inline(always)]
    fn load128(bytes: &[u8]) -> __m128i {
        bytemuck::pod_read_unaligned(&bytes[..16])
    }

    /// Calls the kernel monomorphized for `n` rows (1 to [`ROWS`]) with
    /// the CPU's features enabled.
    macro_rules! rows_of {
        ($n:expr, $simd:expr, $kernel:ident($($arg:expr),*)) => {
            match $n {
                1 => $simd.vectorize(|| $kernel::<1>($($arg),*)),
                2 => $simd.vectorize(|| $kernel::<2>($($arg),*)),
                3 => $simd.vectorize(|| $kernel::<3>($($arg),*)),
                4 => $simd.vectorize(|| $kernel::<4>($($arg),*)),
                5 => $simd.vectorize(|| $kernel::<5>($($arg),*)),
                6 => $simd.vectorize(|| $kernel::<6>($($arg),*)),
                7 => $simd.vectorize(|| $kernel::<7>($($arg),*)),
                _ => $simd.vectorize(|| $kernel::<8>($($arg),*)),
            }
        };
    }

    pub(super) fn nibbles(
        format: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        n: usize,
        sums: &mut [f32; ROWS],
    ) {
        let Some(simd) = V3::try_new() else {
            return super::portable::nibbles(format, w, x, first, n, sums);
        };
        match n {
            1 => simd.vectorize(|| nibbles_rows::<1>(simd, format, w, x, first, sums)),
            2 => simd.vectorize(|| nibbles_rows::<2>(simd, format, w, x, first, sums)),
            3 => simd.vectorize(|| nibbles_rows::<3>(simd, format, w, x, first, sums)),
            4 => simd.vectorize(|| nibbles_rows::<4>(simd, format, w, x, first, sums)),
            _ => nibbles_many(simd, format, w, x, first, n, sums),
        }
    }

    /// [`nibbles`] for five to eight rows, in a function of its own (inlined
    /// beside the small kernels, it changed how those compiled).
    #[inline(never)]
    fn nibbles_many(
        simd: V3,
        format: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        n: usize,
        sums: &mut [f32; ROWS],
    ) {
        match n {
            5 => simd.vectorize(|| nibbles_rows::<5>(simd, format, w, x, first, sums)),
            6 => simd.vectorize(|| nibbles_rows::<6>(simd, format, w, x, first, sums)),
            7 => simd.vectorize(|| nibbles_rows::<7>(simd, format, w, x, first, sums)),
            _ => simd.vectorize(|| nibbles_rows::<8>(simd, format, w, x, first, sums)),
        }
    }

    pub(super) fn q8_0(
        format: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        n: usize,
        sums: &mut [f32; ROWS],
    ) {
        let Some(simd) = V3::try_new() else {
            return super::portable::q8_0(format, w, x, first, n, sums);
        };
        rows_of!(n, simd, q8_0_rows(simd, w, x, first, sums))
    }

    /// `N` rows of activations: quantized values, scales, scaled sums.
    type Rows<'a, const N: usize> = ([&'a [i8]; N], [&'a [f32]; N], [&'a [f32]; N]);

    /// The activations of `N` rows from `first`.
    #[inline(always)]
    fn rows<const N: usize>(x: &Q8Rows, first: usize) -> Rows<'_, N> {
        let per_row = x.blocks_per_row();
        let q = std::array::from_fn(|r| {
            &x.q[(first + r) * per_row * BLOCK..(first + r + 1) * per_row * BLOCK]
        });
        let d = std::array::from_fn(|r| &x.d[(first + r) * per_row..(first + r + 1) * per_row]);
        let s = std::array::from_fn(|r| &x.s[(first + r) * per_row..(first + r + 1) * per_row]);
        (q, d, s)
    }

    #[inline(always)]
    fn nibbles_rows<const N: usize>(
        simd: V3,
        format: Format,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        sums: &mut [f32; ROWS],
    ) {
        let V3 {
            avx,
            avx2,
            fma,
            sse2,
            ..
        } = simd;
        let (xq, xd, xs) = rows::<N>(x, first);
        let low = avx._mm256_set1_epi8(0x0f);
        let ones = avx._mm256_set1_epi16(1);
        // Over four rows, the offsets' part goes in a pass of its own over
        // the (cached) blocks: eight scalar sums beside eight vector
        // accumulators spilled the accumulators to the stack. Apart, prompts
        // run 1.24x faster; for one row the extra pass would cost more than
        // it saves. Either way each sum adds the same terms in the same
        // order.
        let split = N > 4;
        let mut acc = [avx._mm256_setzero_ps(); N];
        let mut offsets = [0.0f32; N];
        for (b, block) in w.chunks_exact(format.block_bytes()).enumerate() {
            let (d, m, qs) = nibble_block(format, block);
            // Nibbles 0..16 in the low lane, 16..32 in the high lane.
            let packed = load128(qs);
            let both = avx._mm256_set_m128i(sse2._mm_srli_epi16::<4>(packed), packed);
            let weights = avx2._mm256_and_si256(both, low);
            for r in 0..N {
                let xv = load256(bytemuck::cast_slice(&xq[r][b * BLOCK..(b + 1) * BLOCK]));
                let pairs = avx2._mm256_maddubs_epi16(weights, xv);
                let dot = avx._mm256_cvtepi32_ps(avx2._mm256_madd_epi16(pairs, ones));
                acc[r] = fma._mm256_fmadd_ps(avx._mm256_set1_ps(d * xd[r][b]), dot, acc[r]);
                if !split {
                    offsets[r] += m * xs[r][b];
                }
            }
        }
        if split {
            for (b, block) in w.chunks_exact(format.block_bytes()).enumerate() {
                let (_, m, _) = nibble_block(format, block);
                for r in 0..N {
                    offsets[r] += m * xs[r][b];
                }
            }
        }
        for r in 0..N {
            sums[r] = horizontal_sum(simd, acc[r]) + offsets[r];
        }
    }

    #[inline(always)]
    fn q8_0_rows<const N: usize>(
        simd: V3,
        w: &[u8],
        x: &Q8Rows,
        first: usize,
        sums: &mut [f32; ROWS],
    ) {
        let V3 { avx, avx2, fma, .. } = simd;
        let (xq, xd, _) = rows::<N>(x, first);
        let ones = avx._mm256_set1_epi16(1);
        let mut acc = [avx._mm256_setzero_ps(); N];
        for (b, block) in w.chunks_exact(Format::Q8_0.block_bytes()).enumerate() {
            let d = half_at(block, 0);
            let weights = load256(&block[2..]);
            // maddubs multiplies unsigned by signed: |w| times x with w's sign.
            let magnitude = avx2._mm256_sign_epi8(weights, weights);
            for r in 0..N {
                let xv = load256(bytemuck::cast_slice(&xq[r][b * BLOCK..(b + 1) * BLOCK]));
                let pairs =
                    avx2._mm256_maddubs_epi16(magnitude, avx2._mm256_sign_epi8(xv, weights));
                let dot = avx._mm256_cvtepi32_ps(avx2._mm256_madd_epi16(pairs, ones));
                acc[r] = fma._mm256_fmadd_ps(avx._mm256_set1_ps(d * xd[r][b]), dot, acc[r]);
            }
        }
        for r in 0..N {
            sums[r] = horizontal_sum(simd, acc[r]);
        }
    }

    #[inline(always)]
    fn horizontal_sum(simd: V3, v: __m256) -> f32 {
        let V3 { avx, sse, .. } = simd;
        let quad = sse._mm_add_ps(
            avx._mm256_castps256_ps128(v),
            avx._mm256_extractf128_ps::<1>(v),
        );
        let pair = sse._mm_add_ps(quad, sse._mm_movehl_ps(quad, quad));
        sse._mm_cvtss_f32(sse._mm_add_ss(pair, sse._mm_shuffle_ps::<1>(pair, pair)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A deterministic spread of values in [-1, 1).
    pub(in crate::models::chat) fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Quantizes rows to `format` the way llama.cpp's reference quantizers do.
    fn quantize(format: Format, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for block in values.chunks_exact(BLOCK) {
            match format {
                Format::Q8_0 => {
                    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(block.iter().map(|v| ((v / d).round() as i8) as u8));
                }
                Format::Q4_1 => {
                    let min = block.iter().cloned().fold(f32::MAX, f32::min);
                    let max = block.iter().cloned().fold(f32::MIN, f32::max);
                    let d = (max - min) / 15.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(f16::from_f32(min).to_le_bytes());
                    let q = |v: f32| ((v - min) / d).round().clamp(0.0, 15.0) as u8;
                    out.extend((0..16).map(|i| q(block[i]) | q(block[i + 16]) << 4));
                }
                Format::Q4_0 => {
                    let max =
                        block
                            .iter()
                            .cloned()
                            .fold(0.0f32, |a, v| if v.abs() > a.abs() { v } else { a });
                    let d = max / -8.0;
                    out.extend(f16::from_f32(d).to_le_bytes());
                    let q = |v: f32| (v / d + 8.5).clamp(0.0, 15.0) as u8;
                    out.extend((0..16).map(|i| q(block[i]) | q(block[i + 16]) << 4));
                }
            }
        }
        out
    }

    /// The product against f32 activations and the dequantized weights.
    fn reference(w: &QMatrix, x: &[f32]) -> Vec<f32> {
        let mut row = vec![0.0; w.cols()];
        let mut out = vec![0.0; x.len() / w.cols() * w.rows()];
        for j in 0..w.rows() {
            w.dequantize_row(j, &mut row);
            for (r, xr) in x.chunks_exact(w.cols()).enumerate() {
                out[r * w.rows() + j] = xr.iter().zip(&row).map(|(a, b)| a * b).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_the_dequantized_product() {
        for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
            let (rows, cols) = (200, 96);
            let bytes = quantize(format, &data(rows * cols, 1));
            let w = QMatrix::new(format, rows, cols, &bytes).expect("matrix");
            for m in [1, 3, 4, 7, 40] {
                let x = data(m * cols, m as u64 + 7);
                let mut q = Q8Rows::default();
                q.quantize(&x, cols);
                let want = reference(&w, &x);
                for parallel in [false, true] {
                    let mut got = vec![0.0; m * rows];
                    w.product(&q, &mut got, parallel);
                    let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    for (g, e) in got.iter().zip(&want) {
                        // 8-bit activations: errors of a fraction of a percent
                        // of the largest output.
                        assert!(
                            (g - e).abs() <= 0.01 * scale,
                            "{format:?} m={m}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_avx2_kernels_sum_what_the_portable_ones_do() {
        for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
            let cols = 576;
            let bytes = quantize(format, &data(3 * cols, 3));
            let w = QMatrix::new(format, 3, cols, &bytes).expect("matrix");
            let mut q = Q8Rows::default();
            q.quantize(&data(ROWS * cols, 5), cols);
            let row = &bytes[..w.row_bytes()];
            let mut want = [0.0; ROWS];
            let portable = match format {
                Format::Q8_0 => portable::q8_0,
                _ => portable::nibbles,
            };
            portable(format, row, &q, 0, ROWS, &mut want);
            let mut got = [0.0; ROWS];
            kernel(format)(format, row, &q, 0, ROWS, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{format:?}: {g} vs {e}"
                );
            }
        }
    }

    /// A row's sum is the same bit for bit however many rows share the
    /// pass (each count has its own kernel: one row, up to four, more), so
    /// a sequence's logits do not depend on the batch it is in.
    #[test]
    fn a_rows_sum_does_not_depend_on_how_many_rows_share_the_pass() {
        for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
            // An even and an odd number of blocks.
            for cols in [576, 608] {
                let bytes = quantize(format, &data(cols, 7));
                let w = QMatrix::new(format, 1, cols, &bytes).expect("matrix");
                let mut q = Q8Rows::default();
                q.quantize(&data(ROWS * cols, 9), cols);
                let mut all = [0.0; ROWS];
                kernel(format)(format, &bytes, &q, 0, ROWS, &mut all);
                let mut portable = [0.0; ROWS];
                match format {
                    Format::Q8_0 => portable::q8_0(format, &bytes, &q, 0, ROWS, &mut portable),
                    _ => portable::nibbles(format, &bytes, &q, 0, ROWS, &mut portable),
                }
                for first in 0..ROWS {
                    for n in 1..=ROWS - first {
                        let mut some = [0.0; ROWS];
                        kernel(format)(format, &bytes, &q, first, n, &mut some);
                        assert_eq!(
                            some[..n],
                            all[first..first + n],
                            "{format:?}, {cols} columns: rows {first}..{}",
                            first + n
                        );
                    }
                }
                for (g, e) in all.iter().zip(&portable) {
                    assert!(
                        (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "{format:?}: {g} vs {e}"
                    );
                }
                assert_eq!(w.rows(), 1);
            }
        }
    }

    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (3, 40), (17, 16), (33, 5)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut out = vec![-1.0; rows * cols];
            transpose(&src, rows, cols, &mut out);
            for j in 0..rows {
                for r in 0..cols {
                    assert_eq!(out[r * rows + j], src[j * cols + r], "{rows}×{cols}");
                }
            }
        }
    }

    #[test]
    fn a_matrix_of_the_wrong_size_is_refused() {
        assert!(QMatrix::new(Format::Q4_1, 2, 32, &[0; 39]).is_err());
        assert!(QMatrix::new(Format::Q4_1, 2, 33, &[0; 40]).is_err());
        assert!(QMatrix::new(Format::Q4_1, 2, 32, &[0; 40]).is_ok());
    }
}
