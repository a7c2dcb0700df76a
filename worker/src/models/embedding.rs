//! Sentence embeddings from a BERT-family encoder in the sentence-transformers
//! layout, or a snapshot of one (f32, f16, bf16 or q8_0):
//! `model.safetensors` (mapped), `config.json`, `tokenizer.json`, and
//! the sentence-transformers files that decide what users compare against —
//! `sentence_bert_config.json` (maximum sequence length), `1_Pooling/` (mean
//! or CLS pooling) and `modules.json` (whether a `Normalize` module follows).
//!
//! The tokenizer.json of such a directory often carries its own truncation
//! and fixed padding (all-MiniLM-L6-v2's: truncate at 128, pad to 128);
//! sentence-transformers overrides both, truncating at `max_seq_length` and
//! padding per batch to the longest input, and so does this module.

use std::path::Path;

use candle_core::{DType, Device};
use thaw_snapshot::mmap::QuantizedWeights;
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::device::DeviceBert;
use super::bert::{BertConfig, BertEncoder};
use super::{read_json, ModelError};
use crate::batcher::BatchModel;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sequence's tokens (padding excluded).
    Mean,
    /// The first token's vector.
    Cls,
}

/// The encoder of a device: packed on the CPU, padded tensors elsewhere.
enum Encoder {
    Packed(BertEncoder),
    Tensors(DeviceBert),
}

impl Encoder {
    fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        match self {
            Encoder::Packed(e) => e.forward(sequences),
            Encoder::Tensors(e) => e.forward(sequences),
        }
    }
}

/// A loaded embedding model; `encode` runs on the batching thread.
pub struct EmbeddingModel {
    bert: Encoder,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_seq_length: usize,
    dimensions: usize,
}

/// A text after tokenization: what the batcher queues.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Token ids, special tokens included, truncated to the maximum length.
    pub ids: Vec<u32>,
}

impl EmbeddingModel {
    /// Loads the model in `dir`, weights mapped from `model.safetensors`:
    /// on the CPU into the packed encoder, on another device (a GPU) into
    /// the tensor encoder there.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(dir, device, device.is_cpu())
    }

    /// [`load`](Self::load), choosing the encoder: `packed` (CPU only) or
    /// the tensor encoder on `device` (the CPU included: the tests compare
    /// the two there).
    pub fn load_with(dir: &Path, device: &Device, packed: bool) -> Result<Self, ModelError> {
        let config: BertConfig = serde_json::from_value(read_json(&dir.join("config.json"))?)
            .map_err(|e| ModelError::Load(format!("config.json: {e}")))?;
        let max_positions = config.max_position_embeddings;
        let max_seq_length = sentence_max_length(dir)?
            .unwrap_or(max_positions)
            .min(max_positions);
        let pooling = pooling(dir)?;
        let normalize = has_normalize(dir)?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Load(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Load(format!("tokenizer truncation: {e}")))?;

        let weights = dir.join("model.safetensors");
        // A q8_0 snapshot's dense matrices are read as blocks; the rest, and
        // every tensor of any other weights file, through the VarBuilder.
        // On a GPU the weights come the fastest way at hand (registered
        // ahead by a standby process, else staged through pinned buffers,
        // else registered now: `gpu::gpu_weights`); anywhere else, or if
        // all of those fail, candle copies from plain pages.
        #[cfg(feature = "cuda")]
        let on_gpu = if device.is_cuda() && !packed {
            crate::gpu::gpu_weights(&weights, device)
        } else {
            None
        };
        #[cfg(not(feature = "cuda"))]
        let on_gpu: Option<(candle_nn::VarBuilder<'static>, Option<()>)> = None;
        let (vb, _registration) = match on_gpu {
            Some((vb, guard)) => (vb, guard),
            None => (
                thaw_snapshot::map_safetensors(std::slice::from_ref(&weights), DType::F32, device)
                    .map_err(ModelError::load)?,
                None,
            ),
        };
        let bert = if packed {
            let quantized = QuantizedWeights::open(&weights).map_err(ModelError::load)?;
            Encoder::Packed(BertEncoder::load(vb, &quantized, &config).map_err(ModelError::load)?)
        } else {
            Encoder::Tensors(DeviceBert::load(vb, &config).map_err(ModelError::load)?)
        };
        let model = EmbeddingModel {
            bert,
            tokenizer,
            pooling,
            normalize,
            max_seq_length,
            dimensions: config.hidden_size,
        };
        model.warm_up()?;
        Ok(model)
    }

    fn warm_up(&self) -> Result<(), ModelError> {
        let texts = ["warm-up".to_string(), "a second warm-up text".to_string()];
        let tokens = tokenize(&self.tokenizer, &texts)
            .map_err(|e| ModelError::Load(format!("tokenizing the warm-up: {e}")))?;
        self.encode(&tokens).map(|_| ())
    }

    /// The length of each output vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The longest input in tokens; longer inputs are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The tokenizer, for request handlers that tokenize before queueing.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// One forward pass over a batch, its inputs packed end to end (no
    /// padding), then pooled and, if the model says so, normalized.
    pub fn encode(&self, batch: &[Tokens]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let sequences: Vec<&[u32]> = batch.iter().map(|t| t.ids.as_slice()).collect();
        let hidden = self.bert.forward(&sequences)?;
        let mut rest = hidden.as_slice();
        Ok(sequences
            .iter()
            .map(|seq| {
                let (rows, after) = rest.split_at(seq.len() * self.dimensions);
                rest = after;
                let mut vector = pool(self.pooling, rows, self.dimensions);
                if self.normalize {
                    normalize(&mut vector);
                }
                vector
            })
            .collect())
    }
}

/// One sentence vector from its token vectors: `rows` holds at least one.
fn pool(pooling: Pooling, rows: &[f32], width: usize) -> Vec<f32> {
    let mut vector = rows[..width].to_vec();
    if pooling == Pooling::Mean {
        for row in rows.chunks_exact(width).skip(1) {
            for (v, x) in vector.iter_mut().zip(row) {
                *v += x;
            }
        }
        let inv = width as f32 / rows.len() as f32;
        vector.iter_mut().for_each(|v| *v *= inv);
    }
    vector
}

/// Scales to unit length, as sentence-transformers' `Normalize` does.
fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|v| *v /= norm);
}

/// Tokenizes texts with special tokens, truncated as the tokenizer is set.
pub fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> tokenizers::Result<Vec<Tokens>> {
    texts
        .iter()
        .map(|t| {
            let encoding = tokenizer.encode(t.as_str(), true)?;
            Ok(Tokens {
                ids: encoding.get_ids().to_vec(),
            })
        })
        .collect()
}

/// Token ids given by a client in place of texts (OpenAI's `input` may be
/// ids): each list is a text's tokens without special tokens, which are
/// added, and truncated, as `tokenize` does for a text; so a text and its
/// ids embed alike.
pub fn tokenize_ids(tokenizer: &Tokenizer, ids: &[Vec<u32>]) -> tokenizers::Result<Vec<Tokens>> {
    ids.iter()
        .map(|ids| {
            let tokens = ids
                .iter()
                .map(|&id| {
                    let value = tokenizer.id_to_token(id).unwrap_or_default();
                    tokenizers::Token::new(id, value, (0, 0))
                })
                .collect();
            let encoding = tokenizers::Encoding::from_tokens(tokens, 0);
            let encoding = tokenizer.post_process(encoding, None, true)?;
            Ok(Tokens {
                ids: encoding.get_ids().to_vec(),
            })
        })
        .collect()
}

impl BatchModel for EmbeddingModel {
    type Input = Tokens;
    type Output = Vec<f32>;

    fn forward(&mut self, batch: &[Tokens]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.encode(batch)
    }
}

fn sentence_max_length(dir: &Path) -> Result<Option<usize>, ModelError> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_json(&path)?["max_seq_length"]
        .as_u64()
        .map(|n| n as usize))
}

fn pooling(dir: &Path) -> Result<Pooling, ModelError> {
    let path = dir.join("1_Pooling/config.json");
    if !path.is_file() {
        return Ok(Pooling::Mean);
    }
    let config = read_json(&path)?;
    let on = |key: &str| config[key].as_bool().unwrap_or(false);
    match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        _ => Err(ModelError::Load(format!(
            "{}: only mean or CLS pooling alone is supported",
            path.display()
        ))),
    }
}

fn has_normalize(dir: &Path) -> Result<bool, ModelError> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(false);
    }
    let modules = read_json(&path)?;
    Ok(modules.as_array().is_some_and(|m| {
        m.iter().any(|module| {
            module["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("models.Normalize"))
        })
    }))
}
