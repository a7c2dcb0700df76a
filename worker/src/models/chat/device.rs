//! The llama decoder in candle's tensor operations, for a GPU: candle's
//! quantized kernels for the products (the GGUF's blocks uploaded as they
//! are), candle's kernels for the norms, RoPE and attention. The CPU keeps
//! thaw's own decoder in `super::llama`, which reads the mapped blocks in
//! place and is faster there.
//!
//! Same forward pass, same batching: one call takes any mix of sequences
//! (prompt chunks and single decode tokens); all their rows go through each
//! matrix together, attention is per sequence against its own
//! [`DeviceCache`]. On the CPU the two decoders agree with llama.cpp (the
//! tests run both against the same fixture).

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{ggml_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use thaw_snapshot::mmap::MappedFile;

use super::llama::{LayerCache, LlamaConfig, Step};
use crate::models::ModelError;

struct Layer {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// How the decoder multiplies by its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// On the GGUF's quantized blocks, the activations quantized to 8 bits
    /// (candle's kernels, as llama.cpp does): what a worker runs.
    Quantized,
    /// On the weights dequantized to f32 once at load: exact arithmetic on
    /// the same weights, four to eight times their memory (tests use it to
    /// check the decoder's logic apart from activation rounding).
    Dequantized,
}

/// A llama decoder whose weights live on one device.
pub struct DeviceLlama {
    config: LlamaConfig,
    device: Device,
    /// The token embeddings, dequantized (rows are picked by id).
    embed: Tensor,
    output: QMatMul,
    output_norm: Tensor,
    layers: Vec<Layer>,
}

/// One sequence's keys and values on the device, per layer:
/// `[kv_heads, positions, head_dim]`.
pub type DeviceCache = LayerCache<Option<Tensor>>;

impl DeviceCache {
    /// An empty cache for `model`.
    pub fn new(model: &DeviceLlama) -> Self {
        Self::empty(model.config.layers)
    }
}

/// Appends `new` (`[kv_heads, n, head_dim]`) to a layer's cache and returns
/// the whole of it.
fn append(slot: &mut Option<Tensor>, new: Tensor) -> candle_core::Result<Tensor> {
    let all = match slot.take() {
        None => new,
        Some(old) => Tensor::cat(&[&old, &new], 1)?,
    };
    *slot = Some(all.clone());
    Ok(all)
}

impl DeviceLlama {
    /// Reads the model in the GGUF mapped as `file` (whose header is
    /// `content`) onto `device`.
    pub fn load(
        file: &MappedFile,
        content: &Content,
        device: &Device,
        products: Products,
    ) -> Result<Self, ModelError> {
        let data = usize::try_from(content.tensor_data_offset).map_err(ModelError::load)?;
        let bytes = file.bytes();
        let tensor = |name: &str| -> Result<QTensor, ModelError> {
            let info = content
                .tensor_infos
                .get(name)
                .ok_or_else(|| ModelError::Load(format!("GGUF has no tensor {name}")))?;
            let dtype = info.ggml_dtype;
            let len = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
            let start = data + info.offset as usize;
            let raw = bytes
                .get(start..start + len)
                .ok_or_else(|| ModelError::Load(format!("{name} does not fit in the file")))?;
            ggml_file::qtensor_from_ggml(dtype, raw, info.shape.dims().to_vec(), device)
                .map_err(|e| ModelError::Load(format!("{name}: {e}")))
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatMul, ModelError> {
            let t = tensor(name)?;
            if t.shape().dims() != [rows, cols] {
                return Err(ModelError::Load(format!(
                    "{name} is {:?}, expected {rows}x{cols}",
                    t.shape().dims()
                )));
            }
            if matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                return Err(ModelError::Load(format!(
                    "{name} is {:?}; expected a quantized matrix",
                    t.dtype()
                )));
            }
            Ok(match products {
                Products::Quantized => QMatMul::from_qtensor(t)?,
                Products::Dequantized => QMatMul::Tensor(t.dequantize(device)?),
            })
        };
        let vector = |name: &str, len: usize| -> Result<Tensor, ModelError> {
            let t = tensor(name)?;
            if t.dtype() != GgmlDType::F32 || t.shape().elem_count() != len {
                return Err(ModelError::Load(format!(
                    "{name} should be {len} f32 values, is {:?} {:?}",
                    t.dtype(),
                    t.shape().dims()
                )));
            }
            Ok(t.dequantize(device)?.reshape(len)?)
        };

        let embed = tensor("token_embd.weight")?;
        let &[vocab, _] = embed.shape().dims() else {
            return Err(ModelError::Load("token_embd.weight is not a matrix".into()));
        };
        let config = LlamaConfig::from_metadata(&content.metadata, vocab)?;
        let c = &config;
        if embed.shape().dims() != [c.vocab, c.hidden] {
            return Err(ModelError::Load(format!(
                "token_embd.weight is {:?}, expected {}x{}",
                embed.shape().dims(),
                c.vocab,
                c.hidden
            )));
        }
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => matrix("output.weight", c.vocab, c.hidden)?,
            false => matrix("token_embd.weight", c.vocab, c.hidden)?, // tied
        };
        let embed = embed.dequantize(device)?;
        let layers = (0..c.layers)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}.weight");
                let kv = c.kv_dim();
                Ok(Layer {
                    attn_norm: vector(&name("attn_norm"), c.hidden)?,
                    q: matrix(&name("attn_q"), c.hidden, c.hidden)?,
                    k: matrix(&name("attn_k"), kv, c.hidden)?,
                    v: matrix(&name("attn_v"), kv, c.hidden)?,
                    o: matrix(&name("attn_output"), c.hidden, c.hidden)?,
                    ffn_norm: vector(&name("ffn_norm"), c.hidden)?,
                    gate: matrix(&name("ffn_gate"), c.ffn, c.hidden)?,
                    up: matrix(&name("ffn_up"), c.ffn, c.hidden)?,
                    down: matrix(&name("ffn_down"), c.hidden, c.ffn)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output_norm = vector("output_norm.weight", c.hidden)?;
        Ok(DeviceLlama {
            config,
            device: device.clone(),
            embed,
            output,
            output_norm,
            layers,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `steps` through the model, appending to each cache, and returns
    /// the logits each step asks for, one row each, in order (as
    /// `Llama::forward`).
    pub fn forward(
        &self,
        steps: &mut [Step<'_, DeviceCache>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let mut ids: Vec<u32> = Vec::new();
        let mut positions: Vec<usize> = Vec::new();
        for step in steps.iter() {
            let len = step.cache.len;
            if len + step.tokens.len() > c.context {
                return Err(ModelError::Inference(format!(
                    "{} positions exceed the context of {}",
                    len + step.tokens.len(),
                    c.context
                )));
            }
            if let Some(id) = step.tokens.iter().find(|&&id| id as usize >= c.vocab) {
                return Err(ModelError::Inference(format!(
                    "token id {id} is out of the vocabulary"
                )));
            }
            ids.extend_from_slice(step.tokens);
            positions.extend(len..len + step.tokens.len());
        }
        let t = ids.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let result = self.run(steps, &ids, &positions);
        // A failed pass leaves the caches as they were before it.
        let failed = result.is_err();
        for step in steps.iter_mut() {
            if failed {
                let len = step.cache.len;
                for slot in step
                    .cache
                    .keys
                    .iter_mut()
                    .chain(step.cache.values.iter_mut())
                {
                    *slot = slot
                        .take()
                        .filter(|_| len > 0)
                        .and_then(|s| s.narrow(1, 0, len).ok());
                }
            } else {
                step.cache.len += step.tokens.len();
            }
        }
        Ok(result?)
    }

    fn run(
        &self,
        steps: &mut [Step<'_, DeviceCache>],
        ids: &[u32],
        positions: &[usize],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (t, d, hd) = (ids.len(), c.hidden, c.head_dim);
        let dev = &self.device;
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();

        let mut x = self.embed.index_select(&Tensor::new(ids, dev)?, 0)?;
        let (cos, sin) = rope_tables(c, positions, dev)?;
        // `[t, heads·hd]` → `[heads, t, hd]`, rotated.
        let heads_first = |x: Tensor, heads: usize, rotate: bool| -> candle_core::Result<Tensor> {
            let x = x.reshape((t, heads, hd))?.transpose(0, 1)?.contiguous()?;
            if rotate {
                candle_nn::rotary_emb::rope_i(&x.unsqueeze(0)?, &cos, &sin)?.squeeze(0)
            } else {
                Ok(x)
            }
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.eps)?;
            let q = heads_first(layer.q.forward(&h)?, c.heads, true)?;
            let k = heads_first(layer.k.forward(&h)?, c.kv_heads, true)?;
            let v = heads_first(layer.v.forward(&h)?, c.kv_heads, false)?;
            let mut outs = Vec::with_capacity(steps.len());
            let mut first = 0;
            for step in steps.iter_mut() {
                let n = step.tokens.len();
                if n == 0 {
                    continue;
                }
                let keys = append(&mut step.cache.keys[l], k.narrow(1, first, n)?)?;
                let values = append(&mut step.cache.values[l], v.narrow(1, first, n)?)?;
                let total = step.cache.len + n;
                // The query heads that share a key/value head, side by side:
                // `[kv_heads, group·n, hd]`.
                let q = q
                    .narrow(1, first, n)?
                    .reshape((c.kv_heads, group * n, hd))?;
                let mut scores = (q.matmul(&keys.t()?)? * scale)?;
                if n > 1 {
                    let mask = causal_mask(step.cache.len, n, dev)?;
                    scores = scores
                        .reshape((c.kv_heads, group, n, total))?
                        .broadcast_add(&mask)?
                        .reshape((c.kv_heads, group * n, total))?;
                }
                let weights = candle_nn::ops::softmax_last_dim(&scores)?;
                let out = weights
                    .matmul(&values)?
                    .reshape((c.heads, n, hd))?
                    .transpose(0, 1)?
                    .reshape((n, d))?;
                outs.push(out);
                first += n;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.eps)?;
            let gate = layer.gate.forward(&h)?.silu()?;
            let up = layer.up.forward(&h)?;
            x = (&x + layer.down.forward(&(gate * up)?)?)?;
        }

        // The rows each step wants logits for: its last ones.
        let mut last = Vec::new();
        let mut end = 0u32;
        for step in steps.iter() {
            end += step.tokens.len() as u32;
            let rows = step.logits.rows(step.tokens.len()) as u32;
            last.extend(end - rows..end);
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let rows = x.index_select(&Tensor::new(last.as_slice(), dev)?, 0)?;
        let normed = candle_nn::ops::rms_norm(&rows, &self.output_norm, c.eps)?;
        self.output
            .forward(&normed)?
            .to_dtype(DType::F32)?
            .to_vec2()
    }
}

/// RoPE's cosines and sines for each row's position, `[t, head_dim / 2]`
/// each (adjacent pairs rotate together: llama.cpp's "normal" mode, which
/// GGUF llama weights are laid out for).
fn rope_tables(
    c: &LlamaConfig,
    positions: &[usize],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let (cos, sin) = super::llama::rope_angles(c, positions.iter().copied());
    let shape = (positions.len(), half);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// `[n, past + n]`: 0 where the new row at `past + i` may attend, -∞ where
/// the key comes after it.
fn causal_mask(past: usize, n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = past + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, total), device)
}

/// Runs one operation of each kind the decoder uses on `device` (a small
/// quantized product for one row and for a batch, RoPE, RMSNorm, SiLU), so
/// that a standby process has loaded those kernels before demand.
pub fn warm_kernels(device: &Device) -> candle_core::Result<f32> {
    let (rows, cols) = (32, 256);
    let weights = Tensor::ones((rows, cols), DType::F32, &Device::Cpu)?;
    let q = QTensor::quantize(&weights, GgmlDType::Q4_1)?;
    let q = ggml_file::qtensor_from_ggml(GgmlDType::Q4_1, &q.data()?, vec![rows, cols], device)?;
    let product = QMatMul::from_qtensor(q)?;
    let mut total = 0.0;
    for batch in [1, 16] {
        let x = (Tensor::ones((batch, cols), DType::F32, device)? * 0.01)?;
        let y = product.forward(&x)?;
        let y = candle_nn::ops::rms_norm(&y, &Tensor::ones(rows, DType::F32, device)?, 1e-5)?;
        let y = y.silu()?.reshape((1, 1, batch, rows))?.contiguous()?;
        let half = Tensor::ones((batch, rows / 2), DType::F32, device)?;
        let y = candle_nn::rotary_emb::rope_i(&y, &half, &half)?;
        total += y.sum_all()?.to_scalar::<f32>()?;
    }
    Ok(total)
}
