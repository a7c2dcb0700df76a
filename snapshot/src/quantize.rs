//! q8_0 on build: GGML's block quantization of a model's linear layers,
//! stored in the snapshot's safetensors as `U8` blocks.

use candle_core::{DType, Tensor};

use crate::manifest::{Q8_0_BLOCK, Q8_0_BLOCK_BYTES};

/// Whether a q8_0 build quantizes this tensor: a linear layer's 2-D weight
/// whose rows are whole q8_0 blocks. Embedding tables stay f32 (rows are
/// looked up, never multiplied), and so do biases and LayerNorms (1-D).
pub fn is_quantized_linear(name: &str, dims: &[usize]) -> bool {
    let linear = name.ends_with(".weight") && !name.contains("embeddings");
    linear
        && matches!(dims, &[rows, columns] if rows > 0 && columns > 0 && columns % Q8_0_BLOCK == 0)
}

/// A `[rows, columns]` float tensor as q8_0 blocks: a `U8` tensor of
/// `[rows, columns / 32 * 34]`.
pub(crate) fn q8_0_tensor(t: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, columns) = t.dims2()?;
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes = quantize_q8_0(&values);
    let row_bytes = bytes.len() / rows.max(1);
    debug_assert_eq!(row_bytes, columns / Q8_0_BLOCK * Q8_0_BLOCK_BYTES);
    Tensor::from_vec(bytes, (rows, row_bytes), &candle_core::Device::Cpu)
}

/// GGML's q8_0 of `values` (a multiple of 32 long): per block of 32, the
/// scale `d = max|x| / 127` as a little-endian f16, then `round(x / d)` as
/// 32 i8. The division is by the f16-rounded scale, so that the stored
/// pair reproduces each value within half a step.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * Q8_0_BLOCK_BYTES);
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = half::f16::from_f32(max / 127.0);
        let inverse = if d.to_f32() > 0.0 {
            1.0 / d.to_f32()
        } else {
            0.0
        };
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(
            block
                .iter()
                .map(|x| (x * inverse).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}
