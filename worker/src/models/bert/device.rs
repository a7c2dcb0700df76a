//! A BERT encoder in candle's tensor operations, for devices other than
//! the CPU (a GPU: cuBLAS for the products, candle's CUDA kernels for the
//! rest). The CPU keeps the packed encoder of `super`, which skips padding
//! and is faster there; on a GPU the batch is padded to its longest
//! sequence and masked instead, which suits batched kernels.
//!
//! Same weights (a `BertModel` in safetensors, `bert.` prefix or not), same
//! output layout: the real tokens' vectors packed one sequence after
//! another, so pooling is shared. On the CPU the two encoders agree (the
//! tests compare them).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, LayerNormConfig, Linear, VarBuilder};

use super::{msg, BertConfig};

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

/// An encoder whose weights live on one device.
pub struct DeviceBert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    device: Device,
}

impl DeviceBert {
    /// Reads the weights of a `BertModel` for `config` onto `vb`'s device.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Self> {
        super::check_config(config)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let norm = |vb: VarBuilder| {
            let config = LayerNormConfig {
                eps: config.layer_norm_eps,
                ..Default::default()
            };
            layer_norm(h, config, vb)
        };
        let emb = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("encoder.layer.{n}"));
                let attn = l.pp("attention");
                Ok(Layer {
                    query: linear(h, h, attn.pp("self.query"))?,
                    key: linear(h, h, attn.pp("self.key"))?,
                    value: linear(h, h, attn.pp("self.value"))?,
                    attention_out: linear(h, h, attn.pp("output.dense"))?,
                    attention_norm: norm(attn.pp("output.LayerNorm"))?,
                    up: linear(h, i, l.pp("intermediate.dense"))?,
                    down: linear(i, h, l.pp("output.dense"))?,
                    output_norm: norm(l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Only type 0 is used: thaw encodes single segments.
        let token_type = emb.get_unchecked("token_type_embeddings.weight")?.get(0)?;
        if token_type.dims() != [h] {
            return Err(msg(format!(
                "token type embeddings of shape {:?}, not [{h}]",
                token_type.dims()
            )));
        }
        Ok(DeviceBert {
            word: emb.get((config.vocab_size, h), "word_embeddings.weight")?,
            position: emb.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type,
            embedding_norm: norm(emb.pp("LayerNorm"))?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            device: vb.device().clone(),
        })
    }

    /// The last layer's vectors of every real token of `sequences`, packed
    /// `[total_tokens, hidden]` as the CPU encoder returns them.
    pub fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        let (h, heads) = (self.hidden, self.heads);
        let batch = sequences.len();
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        super::check_sequences(sequences, self.max_positions, self.vocab)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        // Padded ids and the mask's additive bias (0 on tokens, a large
        // negative on padding), built on the host and sent once.
        let mut ids = vec![0u32; batch * longest];
        let mut bias = vec![-1e9f32; batch * longest];
        for (b, seq) in sequences.iter().enumerate() {
            ids[b * longest..][..seq.len()].copy_from_slice(seq);
            bias[b * longest..][..seq.len()].fill(0.0);
        }
        let ids = Tensor::from_vec(ids, batch * longest, &self.device)?;
        let bias = Tensor::from_vec(bias, (batch, 1, 1, longest), &self.device)?;

        let words = self
            .word
            .index_select(&ids, 0)?
            .reshape((batch, longest, h))?;
        let positions = self.position.narrow(0, 0, longest)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;

        let head = h / heads;
        let scale = 1.0 / (head as f64).sqrt();
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, longest, heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        for layer in &self.layers {
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, longest, h))?;
            let attended = layer.attention_out.forward(&context)?;
            x = layer.attention_norm.forward(&(attended + &x)?)?;
            let inner = layer.up.forward(&x)?.gelu_erf()?;
            let out = layer.down.forward(&inner)?;
            x = layer.output_norm.forward(&(out + &x)?)?;
        }

        // Back to the host, real tokens only, packed.
        let all = x.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let mut packed = Vec::with_capacity(sequences.iter().map(|s| s.len()).sum::<usize>() * h);
        for (rows, seq) in all.iter().zip(sequences) {
            for row in &rows[..seq.len()] {
                packed.extend_from_slice(row);
            }
        }
        Ok(packed)
    }
}
