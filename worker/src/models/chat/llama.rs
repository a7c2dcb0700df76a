//! A llama-family decoder (SmolLM2) run on its GGUF's blocks in place: the
//! file is mapped, never copied, so a template's children share its pages.
//!
//! One forward pass takes any mix of sequences: a prompt's tokens, or one
//! new token of each sequence being decoded. All their rows go through each
//! weight matrix together ([`QMatrix::product`]), so the weights are read
//! once per step however many sequences decode; attention is per sequence,
//! against its own [`KvCache`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use thaw_snapshot::mmap::MappedFile;

use super::attention::{self, attend, Heads};
use super::quant::{Format, Q8Rows, QMatrix};
use crate::models::ModelError;

/// The shape of the model, from the GGUF's `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Decoder blocks.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// The context the model was trained for: the longest sequence served.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

impl LlamaConfig {
    pub(super) fn from_metadata(
        metadata: &HashMap<String, Value>,
        vocab: usize,
    ) -> Result<Self, ModelError> {
        let arch = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        if arch != Some("llama") {
            return Err(ModelError::Load(format!(
                "GGUF architecture {arch:?} is not supported (only \"llama\")"
            )));
        }
        let int = |key: &str| -> Result<usize, ModelError> {
            let v = metadata
                .get(&format!("llama.{key}"))
                .ok_or_else(|| ModelError::Load(format!("GGUF metadata has no llama.{key}")))?;
            v.to_u32()
                .map(|n| n as usize)
                .or_else(|_| v.to_u64().map(|n| n as usize))
                .map_err(|e| ModelError::Load(format!("llama.{key}: {e}")))
        };
        let float = |key: &str, default: f32| -> Result<f32, ModelError> {
            match metadata.get(&format!("llama.{key}")) {
                None => Ok(default),
                Some(v) => v
                    .to_f32()
                    .map_err(|e| ModelError::Load(format!("llama.{key}: {e}"))),
            }
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv")?;
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(ModelError::Load(format!(
                "{heads} heads, {kv_heads} key/value heads and width {hidden} do not fit"
            )));
        }
        let head_dim = hidden / heads;
        let rope_dim = int("rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim || head_dim % 2 != 0 {
            return Err(ModelError::Load(format!(
                "RoPE over {rope_dim} of a head's {head_dim} dimensions is not supported"
            )));
        }
        Ok(LlamaConfig {
            layers: int("block_count")?,
            hidden,
            ffn: int("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            rope_base: float("rope.freq_base", 10_000.0)?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
            context: int("context_length")?,
            vocab,
        })
    }

    pub(super) fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Where a quantized matrix lies in the mapped file.
#[derive(Debug, Clone)]
struct Weight {
    format: Format,
    rows: usize,
    cols: usize,
    bytes: Range<usize>,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// The model: its mapped GGUF, the positions of its matrices in it, and its
/// norms (small, copied).
pub struct Llama {
    file: MappedFile,
    config: LlamaConfig,
    embed: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
}

/// One sequence's keys and values, per layer, for the positions seen; `T`
/// is a layer's store in the decoder that made it.
#[derive(Debug, Clone)]
pub struct LayerCache<T> {
    pub(super) keys: Vec<T>,
    pub(super) values: Vec<T>,
    pub(super) len: usize,
}

/// The CPU decoder's cache: each layer's keys and values in host memory,
/// in f16 (as llama.cpp keeps them) and head-major: at a long context
/// decode reads the whole cache for every token, and that read is most of
/// its time.
pub type KvCache = LayerCache<Heads>;

impl<T: Clone + Default> LayerCache<T> {
    /// An empty cache of `layers` layers.
    pub(super) fn empty(layers: usize) -> Self {
        LayerCache {
            keys: vec![T::default(); layers],
            values: vec![T::default(); layers],
            len: 0,
        }
    }
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Llama) -> Self {
        Self::empty(model.config.layers)
    }
}

impl<T> LayerCache<T> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part of a forward pass: its next tokens, appended to its
/// cache (a [`KvCache`] here, a `DeviceCache` for the device decoder).
pub struct Step<'a, C = KvCache> {
    /// The sequence's cache.
    pub cache: &'a mut C,
    /// The tokens to run (a prompt, a chunk of one, or one decoded token).
    pub tokens: &'a [u32],
    /// Which logits the caller wants.
    pub logits: Logits,
}

/// Which rows of a [`Step`] the caller wants logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a chunk of a prompt).
    None,
    /// After the last token: what comes next.
    Last,
    /// After every token, in order (a prompt's log-probabilities).
    Every,
}

impl Logits {
    /// How many rows of a step of `tokens` tokens are wanted.
    pub fn rows(self, tokens: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => tokens.min(1),
            Logits::Every => tokens,
        }
    }
}

impl Llama {
    /// Maps the GGUF at `path` and checks every tensor the model needs.
    pub fn load(path: &Path) -> Result<(Self, Content), ModelError> {
        let file = MappedFile::open(path).map_err(ModelError::load)?;
        let content = Content::read(&mut std::io::Cursor::new(file.bytes()))
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        let model = Self::from_content(file, &content)?;
        Ok((model, content))
    }

    fn from_content(file: MappedFile, content: &Content) -> Result<Self, ModelError> {
        let data = usize::try_from(content.tensor_data_offset).map_err(ModelError::load)?;
        let size = file.bytes().len();
        let info = |name: &str| -> Result<&TensorInfo, ModelError> {
            content
                .tensor_infos
                .get(name)
                .ok_or_else(|| ModelError::Load(format!("GGUF has no tensor {name}")))
        };
        let matrix = |name: &str| -> Result<Weight, ModelError> {
            let info = info(name)?;
            let format = match info.ggml_dtype {
                GgmlDType::Q4_0 => Format::Q4_0,
                GgmlDType::Q4_1 => Format::Q4_1,
                GgmlDType::Q8_0 => Format::Q8_0,
                other => {
                    return Err(ModelError::Load(format!(
                        "{name} is {other:?}; this build runs Q4_0, Q4_1 and Q8_0 matrices"
                    )))
                }
            };
            let &[rows, cols] = info.shape.dims() else {
                return Err(ModelError::Load(format!("{name} is not a matrix")));
            };
            let start = data + info.offset as usize;
            let len = rows * cols / super::quant::BLOCK * format.block_bytes();
            if cols % super::quant::BLOCK != 0 || start + len > size {
                return Err(ModelError::Load(format!(
                    "{name} ({rows}x{cols}) does not fit in the file"
                )));
            }
            Ok(Weight {
                format,
                rows,
                cols,
                bytes: start..start + len,
            })
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let info = info(name)?;
            if info.ggml_dtype != GgmlDType::F32 || info.shape.elem_count() != len {
                return Err(ModelError::Load(format!(
                    "{name} should be {len} f32 values, is {:?} {:?}",
                    info.ggml_dtype,
                    info.shape.dims()
                )));
            }
            let start = data + info.offset as usize;
            let bytes = file
                .bytes()
                .get(start..start + 4 * len)
                .ok_or_else(|| ModelError::Load(format!("{name} does not fit in the file")))?;
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };

        let embed = matrix("token_embd.weight")?;
        let config = LlamaConfig::from_metadata(&content.metadata, embed.rows)?;
        let c = &config;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => matrix("output.weight")?,
            false => embed.clone(), // tied embeddings
        };
        let expect = |w: &Weight, name: &str, rows: usize, cols: usize| {
            if (w.rows, w.cols) == (rows, cols) {
                Ok(())
            } else {
                Err(ModelError::Load(format!(
                    "{name} is {}x{}, expected {rows}x{cols}",
                    w.rows, w.cols
                )))
            }
        };
        expect(&embed, "token_embd.weight", c.vocab, c.hidden)?;
        expect(&output, "output.weight", c.vocab, c.hidden)?;
        let layers = (0..c.layers)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}.weight");
                let get = |t: &str, rows: usize, cols: usize| {
                    let w = matrix(&name(t))?;
                    expect(&w, &name(t), rows, cols)?;
                    Ok::<_, ModelError>(w)
                };
                Ok(Layer {
                    attn_norm: vector(&name("attn_norm"), c.hidden)?,
                    q: get("attn_q", c.hidden, c.hidden)?,
                    k: get("attn_k", c.kv_dim(), c.hidden)?,
                    v: get("attn_v", c.kv_dim(), c.hidden)?,
                    o: get("attn_output", c.hidden, c.hidden)?,
                    ffn_norm: vector(&name("ffn_norm"), c.hidden)?,
                    gate: get("ffn_gate", c.ffn, c.hidden)?,
                    up: get("ffn_up", c.ffn, c.hidden)?,
                    down: get("ffn_down", c.hidden, c.ffn)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output_norm = vector("output_norm.weight", c.hidden)?;
        Ok(Llama {
            file,
            config,
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

    fn matrix(&self, w: &Weight) -> QMatrix<'_> {
        // Sizes were checked when the model was loaded.
        QMatrix::new(
            w.format,
            w.rows,
            w.cols,
            &self.file.bytes()[w.bytes.clone()],
        )
        .expect("weight sizes checked at load")
    }

    /// Runs `steps` through the model, appending to each cache, and returns
    /// the logits each step asks for ([`Logits`]), one row each, in
    /// order. `parallel`: split the work on rayon's current pool (call it
    /// inside `ThreadPool::install`, so the caller is one of the workers).
    pub fn forward(
        &self,
        steps: &mut [Step<'_>],
        parallel: bool,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        // Which sequence and position each row is.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, step) in steps.iter().enumerate() {
            if step.cache.len + step.tokens.len() > c.context {
                return Err(ModelError::Inference(format!(
                    "{} positions exceed the context of {}",
                    step.cache.len + step.tokens.len(),
                    c.context
                )));
            }
            rows.extend((0..step.tokens.len()).map(|i| (s, step.cache.len + i)));
        }
        let t = rows.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let (d, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);

        let embed = self.matrix(&self.embed);
        let mut x = vec![0.0f32; t * d];
        for (row, &id) in x
            .chunks_exact_mut(d)
            .zip(steps.iter().flat_map(|s| s.tokens))
        {
            if id as usize >= c.vocab {
                return Err(ModelError::Inference(format!(
                    "token id {id} is out of the vocabulary"
                )));
            }
            embed.dequantize_row(id as usize, row);
        }
        let rope = Rope::new(c, rows.iter().map(|&(_, p)| p));
        let work = attention::tasks(steps.iter().map(|s| (s.cache.len, s.tokens.len())));

        let mut h = vec![0.0f32; t * d];
        let mut q8 = Q8Rows::default();
        let mut q = vec![0.0f32; t * d];
        let mut k = vec![0.0f32; t * kv_dim];
        let mut v = vec![0.0f32; t * kv_dim];
        let mut attn = vec![0.0f32; t * d];
        let mut gate = vec![0.0f32; t * c.ffn];
        let mut up = vec![0.0f32; t * c.ffn];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, &mut h);
            q8.quantize(&h, d);
            self.matrix(&layer.q).product(&q8, &mut q, parallel);
            self.matrix(&layer.k).product(&q8, &mut k, parallel);
            self.matrix(&layer.v).product(&q8, &mut v, parallel);
            rope.apply(&mut q, c.heads, hd);
            rope.apply(&mut k, c.kv_heads, hd);
            let mut first = 0;
            for step in steps.iter_mut() {
                let n = step.tokens.len();
                let rows = first * kv_dim..(first + n) * kv_dim;
                step.cache.keys[l].append(&k[rows.clone()], c);
                step.cache.values[l].append(&v[rows], c);
                first += n;
            }
            let caches: Vec<(&Heads, &Heads)> = steps
                .iter()
                .map(|s| (&s.cache.keys[l], &s.cache.values[l]))
                .collect();
            attend(c, &q, &caches, &work, &mut attn, parallel);
            q8.quantize(&attn, d);
            self.matrix(&layer.o).product(&q8, &mut h, parallel);
            add(&mut x, &h);

            rms_norm(&x, &layer.ffn_norm, c.eps, &mut h);
            q8.quantize(&h, d);
            self.matrix(&layer.gate).product(&q8, &mut gate, parallel);
            self.matrix(&layer.up).product(&q8, &mut up, parallel);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            q8.quantize(&gate, c.ffn);
            self.matrix(&layer.down).product(&q8, &mut h, parallel);
            add(&mut x, &h);
        }
        for step in steps.iter_mut() {
            step.cache.len += step.tokens.len();
        }

        // The rows each step wants logits for: its last ones.
        let mut last = Vec::new();
        let mut end = 0;
        for step in steps.iter() {
            end += step.tokens.len();
            let rows = step.logits.rows(step.tokens.len());
            last.extend_from_slice(&x[(end - rows) * d..end * d]);
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let mut normed = vec![0.0f32; last.len()];
        rms_norm(&last, &self.output_norm, c.eps, &mut normed);
        q8.quantize(&normed, d);
        let mut logits = vec![0.0f32; q8.rows() * c.vocab];
        self.matrix(&self.output)
            .product(&q8, &mut logits, parallel);
        Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
    }
}

/// `out = x / rms(x) * weight`, row by row.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// RoPE's rotations for each row's position: llama.cpp's "normal" mode,
/// which rotates adjacent pairs (GGUF llama weights are laid out for it).
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

/// The cosines and sines of RoPE's angles for each position, `head_dim / 2`
/// per position, one after another.
pub(super) fn rope_angles(
    c: &LlamaConfig,
    positions: impl Iterator<Item = usize>,
) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = (0..c.head_dim / 2)
        .map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in positions {
        for f in &inv {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

impl Rope {
    fn new(c: &LlamaConfig, positions: impl Iterator<Item = usize>) -> Self {
        let (cos, sin) = rope_angles(c, positions);
        Rope {
            cos,
            sin,
            half: c.head_dim / 2,
        }
    }

    /// Rotates every head of every row of `x` (`rows × heads·head_dim`).
    fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize) {
        for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let cos = &self.cos[r * self.half..(r + 1) * self.half];
            let sin = &self.sin[r * self.half..(r + 1) * self.half];
            for head in row.chunks_exact_mut(head_dim) {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos[i] - b * sin[i];
                    pair[1] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}
