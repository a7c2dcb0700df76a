//! Sentence embeddings from a BERT-family encoder in the sentence-transformers
//! layout: `model.safetensors` (mapped), `config.json`, `tokenizer.json`, and
//! the sentence-transformers files that decide what users compare against —
//! `sentence_bert_config.json` (maximum sequence length), `1_Pooling/` (mean
//! or CLS pooling) and `modules.json` (whether a `Normalize` module follows).
//!
//! The tokenizer.json of such a directory often carries its own truncation
//! and fixed padding (all-MiniLM-L6-v2's: truncate at 128, pad to 128);
//! sentence-transformers overrides both, truncating at `max_seq_length` and
//! padding per batch to the longest input, and so does this module.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

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

/// A loaded embedding model; `encode` runs on the batching thread.
pub struct EmbeddingModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
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
    /// Loads the model in `dir`, weights mapped from `model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let config_json = read_json(&dir.join("config.json"))?;
        let config: Config =
            serde_json::from_value(config_json.clone()).map_err(ModelError::load)?;
        let max_positions = config_json["max_position_embeddings"]
            .as_u64()
            .unwrap_or(512) as usize;
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
        let vb = thaw_snapshot::map_safetensors(&[weights], DType::F32, device)
            .map_err(ModelError::load)?;
        let bert = BertModel::load(vb, &config).map_err(ModelError::load)?;
        let model = EmbeddingModel {
            bert,
            tokenizer,
            device: device.clone(),
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

    /// One forward pass over a batch, padded to its longest input.
    pub fn encode(&self, batch: &[Tokens]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let longest = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for t in batch {
            ids.extend_from_slice(&t.ids);
            ids.resize(ids.len() + longest - t.ids.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, t.ids.len()));
            mask.resize(mask.len() + longest - t.ids.len(), 0);
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                sum.broadcast_div(&m.sum(1)?)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            pooled.broadcast_div(&norm.clamp(1e-12, f32::MAX)?)?
        } else {
            pooled
        };
        Ok(pooled.to_vec2::<f32>()?)
    }
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
