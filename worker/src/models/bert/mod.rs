//! A BERT encoder for the CPU over packed tokens: the sequences of a batch
//! lie one after another in a `[total_tokens, hidden]` matrix, without
//! padding, so every dense layer runs once over real tokens only and
//! attention runs per sequence (no mask needed).
//!
//! Weights come from the mapped safetensors through a `VarBuilder`, each
//! matrix transposed once at load to `[in, out]` and query, key and value
//! fused into one. The matrix products go to candle's matmul (gemm); the rest
//! (embeddings, attention, bias + GELU, residual + LayerNorm) are the plain
//! f32 kernels of [`kernels`], each one pass over its rows.
//!
//! From a q8_0 snapshot the dense matrices are GGML q8_0 blocks instead
//! ([`QuantizedWeights`]): candle's quantized matmul over few tokens, or
//! dequantized for one product and run by gemm over many (see `dense.rs`);
//! everything else stays f32.

mod dense;
pub mod device;
pub mod kernels;

use std::sync::Mutex;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use thaw_snapshot::mmap::QuantizedWeights;

use dense::{dense, with_product, Dense, Scratch};

/// The `config.json` fields the encoder reads.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of every token vector.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; `hidden_size` must divide by it.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation; only `gelu` (the erf form) is supported.
    pub hidden_act: String,
    /// The longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// LayerNorm's epsilon.
    pub layer_norm_eps: f64,
    /// Only `absolute` position embeddings are supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    up: Dense,
    down: Dense,
    output_norm: LayerNorm,
}

/// A loaded encoder.
pub struct BertEncoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    /// Where q8_0 matrices are dequantized for products over many rows.
    scratch: Scratch,
}

fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

fn vector(vb: &VarBuilder, len: usize, name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(len, name)?.to_vec1::<f32>()
}

fn layer_norm(vb: &VarBuilder, len: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        gamma: vector(vb, len, "weight")?,
        beta: vector(vb, len, "bias")?,
        eps: eps as f32,
    })
}

/// What both encoders support: GELU (erf), absolute positions, heads that
/// divide the width.
fn check_config(config: &BertConfig) -> candle_core::Result<()> {
    if config.hidden_act != "gelu" {
        return Err(msg(format!(
            "activation {:?} is not supported",
            config.hidden_act
        )));
    }
    if let Some(kind) = config
        .position_embedding_type
        .as_deref()
        .filter(|k| *k != "absolute")
    {
        return Err(msg(format!(
            "position embeddings {kind:?} are not supported"
        )));
    }
    let h = config.hidden_size;
    if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
        return Err(msg(format!(
            "{} heads do not divide {h}",
            config.num_attention_heads
        )));
    }
    Ok(())
}

/// What both encoders accept: 1 to `max_positions` tokens a sequence,
/// every id inside the vocabulary.
fn check_sequences(
    sequences: &[&[u32]],
    max_positions: usize,
    vocab: usize,
) -> candle_core::Result<()> {
    for seq in sequences {
        if seq.is_empty() || seq.len() > max_positions {
            return Err(msg(format!(
                "a sequence of {} tokens (1 to {max_positions} are supported)",
                seq.len()
            )));
        }
        if let Some(id) = seq.iter().find(|&&id| id as usize >= vocab) {
            return Err(msg(format!("token id {id} is outside the vocabulary")));
        }
    }
    Ok(())
}

impl BertEncoder {
    /// Reads the weights of a `BertModel` (names with or without a `bert.`
    /// prefix) for `config`, on the CPU: the dense matrices from `quantized`
    /// where it has them (a q8_0 snapshot), everything else from `vb`.
    pub fn load(
        vb: VarBuilder,
        quantized: &QuantizedWeights,
        config: &BertConfig,
    ) -> candle_core::Result<Self> {
        if !matches!(vb.device(), Device::Cpu) || vb.dtype() != DType::F32 {
            return Err(msg("the packed BERT encoder runs in f32 on the CPU".into()));
        }
        check_config(config)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let emb = vb.pp("embeddings");
        let table = |name: &str, rows: usize| -> candle_core::Result<Vec<f32>> {
            emb.get((rows, h), name)?.flatten_all()?.to_vec1::<f32>()
        };
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("encoder.layer.{n}"));
                let attn = l.pp("attention");
                let qkv = ["query", "key", "value"].map(|p| attn.pp("self").pp(p));
                Ok(Layer {
                    qkv: dense(&qkv, quantized, h, h)?,
                    attention_out: dense(&[attn.pp("output.dense")], quantized, h, h)?,
                    attention_norm: layer_norm(
                        &attn.pp("output.LayerNorm"),
                        h,
                        config.layer_norm_eps,
                    )?,
                    up: dense(&[l.pp("intermediate.dense")], quantized, h, i)?,
                    down: dense(&[l.pp("output.dense")], quantized, i, h)?,
                    output_norm: layer_norm(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Only type 0 is used: thaw encodes single segments.
        let token_type = emb
            .get_unchecked("token_type_embeddings.weight")?
            .get(0)?
            .to_vec1::<f32>()?;
        if token_type.len() != h {
            return Err(msg(format!(
                "token type embeddings of width {}, not {h}",
                token_type.len()
            )));
        }
        Ok(BertEncoder {
            word: table("word_embeddings.weight", config.vocab_size)?,
            position: table("position_embeddings.weight", config.max_position_embeddings)?,
            token_type,
            embedding_norm: layer_norm(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            scratch: Scratch::default(),
        })
    }

    /// The width of each output token vector.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The last layer's token vectors of all `sequences`, packed:
    /// `[total_tokens, hidden]`, each sequence's rows after the previous one's.
    pub fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        let h = self.hidden;
        let mut bounds = Vec::with_capacity(sequences.len() + 1);
        bounds.push(0);
        check_sequences(sequences, self.max_positions, self.vocab)?;
        for seq in sequences {
            bounds.push(bounds[bounds.len() - 1] + seq.len());
        }
        let tokens = bounds[bounds.len() - 1];
        let mut hidden = vec![0f32; tokens * h];
        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut context = vec![0f32; tokens * h];
        let mut inner = Vec::new();
        self.embed(sequences, &mut hidden);
        for layer in &self.layers {
            with_product(&hidden, tokens, &layer.qkv, &self.scratch, |y| {
                kernels::add_bias(&mut qkv, y, &layer.qkv.bias)
            })?;
            attention(&qkv, &bounds, self.heads, &mut context);
            with_product(&context, tokens, &layer.attention_out, &self.scratch, |y| {
                residual_norm(
                    &mut hidden,
                    y,
                    &layer.attention_out.bias,
                    &layer.attention_norm,
                )
            })?;
            inner.resize(tokens * layer.up.bias.len(), 0.0);
            with_product(&hidden, tokens, &layer.up, &self.scratch, |y| {
                let bias = &layer.up.bias;
                let parts = row_parts(tokens, bias.len(), &mut inner, y);
                run_parts(parts, |(out, y)| kernels::bias_gelu(out, y, bias));
            })?;
            with_product(&inner, tokens, &layer.down, &self.scratch, |y| {
                residual_norm(&mut hidden, y, &layer.down.bias, &layer.output_norm)
            })?;
        }
        Ok(hidden)
    }

    fn embed(&self, sequences: &[&[u32]], out: &mut [f32]) {
        let h = self.hidden;
        let norm = &self.embedding_norm;
        let mut rows = out.chunks_exact_mut(h);
        for seq in sequences {
            for (position, (&id, row)) in seq.iter().zip(&mut rows).enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let pos = &self.position[position * h..][..h];
                for (((o, w), p), t) in row.iter_mut().zip(word).zip(pos).zip(&self.token_type) {
                    *o = w + p + t;
                }
                kernels::layer_norm(row, &norm.gamma, &norm.beta, norm.eps);
            }
        }
    }
}

/// Below this many tokens a layer's GELU and attention stay on the calling
/// thread: a thread's start costs more than it would save.
const PARALLEL_TOKENS: usize = 128;

fn threads_for(tokens: usize) -> usize {
    if tokens < PARALLEL_TOKENS {
        1
    } else {
        candle_core::utils::get_num_threads().max(1)
    }
}

/// `out` and `y` (`tokens` rows of `width`) cut at the same rows into one
/// part per thread.
fn row_parts<'a>(
    tokens: usize,
    width: usize,
    out: &'a mut [f32],
    y: &'a [f32],
) -> Vec<(&'a mut [f32], &'a [f32])> {
    let rows = tokens.div_ceil(threads_for(tokens)).max(1) * width;
    out.chunks_mut(rows).zip(y.chunks(rows)).collect()
}

/// Attention with the sequences split, at sequence boundaries, into one
/// group of about equal tokens per thread.
fn attention(qkv: &[f32], bounds: &[usize], heads: usize, context: &mut [f32]) {
    let tokens = bounds[bounds.len() - 1];
    let width = context.len() / tokens.max(1);
    let share = tokens.div_ceil(threads_for(tokens));
    let mut parts = Vec::new();
    let (mut rest, mut start) = (context, 0);
    while start + 1 < bounds.len() {
        let base = bounds[start];
        let end = (start + 1..bounds.len())
            .find(|&e| bounds[e] - base >= share)
            .unwrap_or(bounds.len() - 1);
        let (rows, after) = std::mem::take(&mut rest).split_at_mut((bounds[end] - base) * width);
        parts.push((&bounds[start..=end], rows));
        (rest, start) = (after, end);
    }
    run_parts(parts, |(bounds, rows)| {
        kernels::attention(qkv, bounds, heads, rows)
    });
}

/// Runs `work` on every part: the first on the calling thread, the others
/// on scoped threads, and the caller takes over any part that no thread has
/// started (a thread that could not start, or one that is slow to).
fn run_parts<T: Send>(parts: Vec<T>, work: impl Fn(T) + Sync) {
    if parts.len() <= 1 {
        parts.into_iter().for_each(work);
        return;
    }
    let slots: Vec<Mutex<Option<T>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let run = |slot: &Mutex<Option<T>>| {
        let part = slot.lock().ok().and_then(|mut p| p.take());
        if let Some(part) = part {
            work(part);
        }
    };
    std::thread::scope(|scope| {
        for slot in &slots[1..] {
            // Failing to start only leaves the part to the loop below.
            let _ = std::thread::Builder::new().spawn_scoped(scope, || run(slot));
        }
        slots.iter().for_each(run);
    });
}

fn residual_norm(hidden: &mut [f32], y: &[f32], bias: &[f32], norm: &LayerNorm) {
    kernels::residual_layer_norm(hidden, y, bias, &norm.gamma, &norm.beta, norm.eps)
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_attention_matches_one_pass() {
        let (heads, width) = (2, 8);
        let bounds = [0, 100, 101, 180, 300];
        let tokens = bounds[bounds.len() - 1];
        let qkv: Vec<f32> = (0..tokens * 3 * width)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let (mut whole, mut split) = (vec![0.0; tokens * width], vec![0.0; tokens * width]);
        super::kernels::attention(&qkv, &bounds, heads, &mut whole);
        super::attention(&qkv, &bounds, heads, &mut split);
        assert_eq!(whole, split);
    }

    #[test]
    fn row_parts_cover_every_row_once() {
        let (tokens, width) = (300, 4);
        let mut out = vec![0.0; tokens * width];
        let y: Vec<f32> = (0..tokens * width).map(|i| i as f32).collect();
        let parts = super::row_parts(tokens, width, &mut out, &y);
        super::run_parts(parts, |(o, y)| o.copy_from_slice(y));
        assert_eq!(out, y);
    }
}
