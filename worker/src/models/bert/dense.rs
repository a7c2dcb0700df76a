//! The encoder's dense layers and their products: an f32 matrix through
//! candle's matmul (gemm), or q8_0 blocks from a snapshot. The q8_0 blocks
//! are copied once from the mapping into candle's block storage as stored
//! (`[out, in]`; fused layers' rows stacked) — nothing is dequantized at
//! load. A product over few rows runs candle's quantized matmul, which
//! quantizes each activation row to q8_0 too (GGML's q8_0 × q8_0 dot
//! product) and reads a quarter of f32's bytes; over many rows, where
//! candle's kernel is several times slower than gemm, the matrix is
//! dequantized for that product alone, into a [`Scratch`] that every
//! product reuses, and multiplied by gemm.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Module, Storage, Tensor};
use candle_nn::VarBuilder;
use thaw_snapshot::manifest::{Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use thaw_snapshot::mmap::{QuantizedView, QuantizedWeights};

use super::{kernels, msg, vector};

/// From this many rows (tokens) up, a q8_0 product dequantizes its matrix
/// and runs gemm. On MiniLM's shapes (2-core AMD EPYC, AVX-512), candle's
/// quantized matmul is ahead of gemm below ~32 rows and 2–5× behind it
/// from 128; dequantizing one matrix costs 0.03–0.13 ms, so a whole
/// forward pays ~2 ms for it, which decides the middle (measured: 37
/// tokens ran faster quantized, 77 dequantized).
const DEQUANTIZE_ROWS: usize = 64;

/// A dense layer: `y = x W + b`.
pub(super) struct Dense {
    weight: Weight,
    /// Added by the caller, fused into what follows the product.
    pub(super) bias: Vec<f32>,
}

/// A dense layer's matrix, in the form its product runs on.
enum Weight {
    /// f32, stored `[in, out]` for gemm.
    F32(Tensor),
    /// q8_0 blocks, `[out, in]` as in the snapshot: candle's quantized
    /// matmul over them, and the same blocks to dequantize for gemm.
    Q8_0 {
        matmul: QMatMul,
        blocks: Arc<QTensor>,
    },
}

/// The dense layers of `vbs` (each `[outputs, inputs]`), fused along their
/// outputs; their weights are either all quantized or all float.
pub(super) fn dense(
    vbs: &[VarBuilder],
    quantized: &QuantizedWeights,
    inputs: usize,
    outputs: usize,
) -> candle_core::Result<Dense> {
    let mut bias = Vec::with_capacity(vbs.len() * outputs);
    let mut blocks = Vec::new();
    for vb in vbs {
        bias.extend(vector(vb, outputs, "bias")?);
        let name = format!("{}.weight", vb.prefix());
        if let Some(view) = quantized.get(&name).map_err(|e| msg(e.to_string()))? {
            blocks.push((name, view));
        }
    }
    let weight = if blocks.is_empty() {
        let weights = vbs
            .iter()
            .map(|vb| vb.get((outputs, inputs), "weight"))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Weight::F32(Tensor::cat(&weights, 0)?.t()?.contiguous()?)
    } else if blocks.len() == vbs.len() {
        let blocks = Arc::new(q8_0_matrix(&blocks, inputs, outputs)?);
        Weight::Q8_0 {
            matmul: QMatMul::from_arc(blocks.clone())?,
            blocks,
        }
    } else {
        return Err(msg(format!(
            "{} and its fused neighbours are not all quantized",
            blocks[0].0
        )));
    };
    Ok(Dense { weight, bias })
}

/// Stacks the q8_0 rows of `parts` (each `[outputs, inputs]`) into one
/// quantized matrix: the blocks are copied as they are, once.
fn q8_0_matrix(
    parts: &[(String, QuantizedView)],
    inputs: usize,
    outputs: usize,
) -> candle_core::Result<QTensor> {
    let part_bytes = outputs * inputs / Q8_0_BLOCK * Q8_0_BLOCK_BYTES;
    for (name, view) in parts {
        let fits = view.dtype == "q8_0"
            && view.shape == [outputs, inputs]
            && inputs % Q8_0_BLOCK == 0
            && view.bytes.len() == part_bytes;
        if !fits {
            return Err(msg(format!(
                "{name}: {} {:?} in {} bytes, expected q8_0 [{outputs}, {inputs}]",
                view.dtype,
                view.shape,
                view.bytes.len()
            )));
        }
    }
    let views: Vec<&[u8]> = parts.iter().map(|(_, view)| view.bytes).collect();
    let mut buffer = Vec::new();
    let bytes = stacked(&views, &mut buffer);
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, GgmlDType::Q8_0)?;
    QTensor::new(storage, (parts.len() * outputs, inputs))
}

/// Room for one dequantized matrix, reused by every product over many rows
/// of an encoder: a fresh f32 matrix per product would be megabytes
/// allocated, page-faulted in and returned to the system each time (with
/// glibc's malloc, that doubled the time of a batch of 32 sentences).
/// Grown to the largest matrix on first use; held for one product at a time.
#[derive(Default)]
pub(super) struct Scratch(Mutex<Option<Tensor>>);

impl Scratch {
    /// `x` times the q8_0 matrix `blocks` (`[out, in]`), dequantized here.
    /// A matrix wider than tall (MiniLM's 1536-wide down projection) is
    /// transposed while dequantized, into the f32 path's `[in, out]`: gemm
    /// reads the transposed view of long rows about twice as slowly. The
    /// others are dequantized as stored (4× cheaper) and read through a
    /// transposed view, which costs gemm a few percent at 384 wide.
    fn product(&self, x: &Tensor, blocks: &QTensor) -> candle_core::Result<Tensor> {
        let (rows, columns) = blocks.shape().dims2()?;
        let mut held = self
            .0
            .lock()
            .map_err(|_| msg("a product panicked holding the scratch".into()))?;
        let scratch = match held.as_ref() {
            Some(t) if t.elem_count() >= rows * columns => t.clone(),
            _ => held
                .insert(Tensor::zeros(rows * columns, DType::F32, &Device::Cpu)?)
                .clone(),
        };
        let data = blocks.data()?;
        let transposed = columns > rows;
        scratch.inplace_op1(&Dequantize {
            blocks: &data,
            rows,
            transposed,
        })?;
        let weight = scratch.narrow(0, 0, rows * columns)?;
        if transposed {
            x.matmul(&weight.reshape((columns, rows))?)
        } else {
            x.matmul(&weight.reshape((rows, columns))?.t()?)
        }
    }
}

/// Dequantizes q8_0 blocks of `rows` rows, as stored or transposed, into
/// the start of an f32 tensor (the scratch), in place.
struct Dequantize<'a> {
    blocks: &'a [u8],
    rows: usize,
    transposed: bool,
}

impl InplaceOp1 for Dequantize<'_> {
    fn name(&self) -> &'static str {
        "dequantize-q8_0"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let len = self.blocks.len() / Q8_0_BLOCK_BYTES * Q8_0_BLOCK;
        let start = layout.start_offset();
        let CpuStorage::F32(values) = storage else {
            return Err(msg("the dequantization scratch is not f32".into()));
        };
        let Some(out) = values.get_mut(start..start + len) else {
            return Err(msg("the dequantization scratch is too small".into()));
        };
        if self.transposed {
            kernels::dequantize_q8_0_transposed(self.blocks, self.rows, out);
        } else {
            kernels::dequantize_q8_0(self.blocks, out);
        }
        Ok(())
    }
}

/// `parts` one after another, at an address candle may read as q8_0 blocks
/// (their f16 scale wants 2-byte alignment, which candle asserts): a lone
/// part is used in place (a snapshot's tensors are 64-byte aligned in a
/// page-aligned mapping); several are copied into `buffer`.
fn stacked<'a>(parts: &[&'a [u8]], buffer: &'a mut Vec<u8>) -> &'a [u8] {
    const ALIGN: usize = std::mem::align_of::<u16>();
    if let [one] = parts {
        if (one.as_ptr() as usize) % ALIGN == 0 {
            return one;
        }
    }
    let len: usize = parts.iter().map(|p| p.len()).sum();
    *buffer = vec![0u8; len + ALIGN];
    let skip = (ALIGN - (buffer.as_ptr() as usize) % ALIGN) % ALIGN;
    let mut at = skip;
    for part in parts {
        buffer[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    &buffer[skip..skip + len]
}

/// `x W` for `x` of `rows` rows (without the bias), handed to `then` as a
/// row-major slice.
pub(super) fn with_product(
    x: &[f32],
    rows: usize,
    dense: &Dense,
    scratch: &Scratch,
    then: impl FnOnce(&[f32]),
) -> candle_core::Result<()> {
    let inputs = x.len() / rows;
    let x = Tensor::from_slice(x, (rows, inputs), &Device::Cpu)?;
    let y = match &dense.weight {
        Weight::F32(w) => x.matmul(w)?,
        Weight::Q8_0 { matmul, .. } if rows < DEQUANTIZE_ROWS => matmul.forward(&x)?,
        Weight::Q8_0 { blocks, .. } => scratch.product(&x, blocks)?,
    };
    let (storage, layout) = y.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(msg("a CPU matmul returned non-CPU storage".into()));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(msg("a matmul returned a non-contiguous result".into()));
    };
    then(&cpu.as_slice::<f32>()?[start..end]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 3) as f32)
            .collect()
    }

    #[test]
    fn q8_0_product_matches_the_f32_product() {
        let (rows, inputs, outputs) = (5, 64, 32);
        let parts = [data(outputs * inputs, 1), data(outputs * inputs, 2)];
        let blocks: Vec<Vec<u8>> = parts
            .iter()
            .map(|w| thaw_snapshot::quantize::quantize_q8_0(w))
            .collect();
        let views: Vec<(String, QuantizedView)> = blocks
            .iter()
            .map(|bytes| {
                let view = QuantizedView {
                    dtype: "q8_0",
                    shape: [outputs, inputs],
                    bytes,
                };
                ("w".to_string(), view)
            })
            .collect();
        let blocks = Arc::new(q8_0_matrix(&views, inputs, outputs).expect("builds"));
        let dense = Dense {
            weight: Weight::Q8_0 {
                matmul: QMatMul::from_arc(blocks.clone()).expect("a matmul"),
                blocks,
            },
            bias: vec![0.0; 2 * outputs],
        };
        // Few rows (candle's quantized matmul) and many (dequantized, gemm).
        for rows in [rows, DEQUANTIZE_ROWS + 3] {
            check_product(&dense, &parts, rows, inputs);
        }
    }

    fn check_product(dense: &Dense, parts: &[Vec<f32>], rows: usize, inputs: usize) {
        let outputs = dense.bias.len();
        let x = data(rows * inputs, 3);
        let mut got = Vec::new();
        let scratch = Scratch::default();
        for _ in 0..2 {
            with_product(&x, rows, dense, &scratch, |y| got = y.to_vec()).expect("multiplies");
        }
        // The reference: x times the stacked parts, transposed, in f64.
        let weight: Vec<&f32> = parts.iter().flatten().collect();
        let want: Vec<f64> = (0..rows * outputs)
            .map(|i| {
                let (r, o) = (i / outputs, i % outputs);
                (0..inputs)
                    .map(|k| x[r * inputs + k] as f64 * *weight[o * inputs + k] as f64)
                    .sum()
            })
            .collect();
        let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let error = (*g as f64 - w).abs() / scale;
            assert!(
                error < 0.02,
                "{rows} rows: y[{i}] = {g}, want {w} ({error:.4})"
            );
        }
        assert_eq!(got.len(), want.len());
    }

    #[test]
    fn q8_0_parts_of_the_wrong_shape_are_refused() {
        let bytes = thaw_snapshot::quantize::quantize_q8_0(&data(32 * 64, 1));
        let view = QuantizedView {
            dtype: "q8_0",
            shape: [32, 64],
            bytes: &bytes,
        };
        let e = q8_0_matrix(&[("w".into(), view)], 32, 64).expect_err("transposed");
        assert!(e.to_string().contains("expected q8_0 [64, 32]"), "{e}");
    }

    #[test]
    fn stacked_parts_are_in_order_and_block_aligned() {
        let backing: Vec<u8> = (0..11).collect();
        let mut buffer = Vec::new();
        let bytes = stacked(&[&backing[1..4], &backing[6..8]], &mut buffer);
        assert_eq!(bytes, [1, 2, 3, 6, 7]);
        assert_eq!(bytes.as_ptr() as usize % 2, 0);
        // A lone part is used in place when aligned, copied when not.
        for lone in [&backing[..5], &backing[1..6]] {
            let mut buffer = Vec::new();
            let bytes = stacked(&[lone], &mut buffer);
            assert_eq!(bytes, lone);
            assert_eq!(bytes.as_ptr() as usize % 2, 0);
            assert_eq!(buffer.is_empty(), lone.as_ptr() as usize % 2 == 0);
        }
    }
}
