//! Chat models (GGUF, generative): the llama decoder (on the CPU, thaw's
//! own on the mapped file; on a GPU, candle's tensor operations), the
//! tokenizer and the prompt template built from the GGUF's own metadata,
//! and the generation loop that runs several sequences together.

mod attention;
pub mod device;
pub mod engine;
pub mod json;
pub mod llama;
pub mod quant;
pub mod schema;
pub mod template;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use engine::{Engine, Event, Finish, Fork, Format, Generation, Logprobs, Sampling};
pub use schema::Schema;
pub use template::{ChatMessage, ChatTemplate, Prompt, TemplateError};
pub use tokenizer::{ChatTokenizer, GgufVocab, StreamDecoder};

use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use thaw_snapshot::mmap::MappedFile;

use crate::models::ModelError;
use device::{DeviceCache, DeviceLlama, Products};
use llama::{KvCache, Llama, LlamaConfig, Logits, Step};

/// The decoder a chat model runs.
pub enum Decoder {
    /// thaw's own, on the CPU: the mapped blocks read in place.
    Cpu(Llama),
    /// candle's tensor operations, the weights on a device (a GPU; the CPU
    /// too, where tests compare the two).
    Device(DeviceLlama),
}

/// One sequence's keys and values, for the decoder that made it (cloned
/// where several generations go on from one prompt).
#[derive(Clone)]
pub enum Cache {
    /// For [`Decoder::Cpu`].
    Cpu(KvCache),
    /// For [`Decoder::Device`].
    Device(DeviceCache),
}

impl Cache {
    /// Positions held.
    pub fn len(&self) -> usize {
        match self {
            Cache::Cpu(c) => c.len(),
            Cache::Device(c) => c.len(),
        }
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Decoder {
    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        match self {
            Decoder::Cpu(m) => m.config(),
            Decoder::Device(m) => m.config(),
        }
    }

    /// An empty cache for one sequence.
    pub fn new_cache(&self) -> Cache {
        match self {
            Decoder::Cpu(m) => Cache::Cpu(KvCache::new(m)),
            Decoder::Device(m) => Cache::Device(DeviceCache::new(m)),
        }
    }

    /// Runs `steps` through the model (see [`Llama::forward`]); every cache
    /// must come from this decoder's [`Decoder::new_cache`]. `parallel`
    /// applies to the CPU decoder.
    pub fn forward(
        &self,
        steps: &mut [Step<'_, Cache>],
        parallel: bool,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            Decoder::Cpu(m) => m.forward(
                &mut own(steps, |c| match c {
                    Cache::Cpu(c) => Some(c),
                    Cache::Device(_) => None,
                })?,
                parallel,
            ),
            Decoder::Device(m) => m.forward(&mut own(steps, |c| match c {
                Cache::Device(c) => Some(c),
                Cache::Cpu(_) => None,
            })?),
        }
    }
}

/// `steps` with each cache as the decoder's own type (`pick`), or an error
/// for a cache of the other decoder.
fn own<'s, C>(
    steps: &'s mut [Step<'_, Cache>],
    pick: impl Fn(&'s mut Cache) -> Option<&'s mut C>,
) -> Result<Vec<Step<'s, C>>, ModelError> {
    steps
        .iter_mut()
        .map(|s| {
            let cache = pick(&mut *s.cache)
                .ok_or_else(|| ModelError::Inference("a cache from another decoder".into()))?;
            Ok(Step {
                cache,
                tokens: s.tokens,
                logits: s.logits,
            })
        })
        .collect()
}

/// A chat model: decoder, tokenizer, template.
pub struct ChatModel {
    /// The decoder.
    pub decoder: Decoder,
    /// The tokenizer.
    pub tokenizer: ChatTokenizer,
    /// The chat template.
    pub template: ChatTemplate,
}

impl ChatModel {
    /// Loads the one `.gguf` file in `dir` (a source model directory or a
    /// chat snapshot) for `device`: thaw's own decoder on the CPU, the
    /// tensor decoder elsewhere.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let path = gguf_in(dir)?;
        if device.is_cpu() {
            let (llama, content) = Llama::load(&path)?;
            Self::assemble(Decoder::Cpu(llama), &content)
        } else {
            Self::load_on_device(&path, device, Products::Quantized)
        }
    }

    /// Loads the GGUF at `path` with the tensor decoder on `device`, the
    /// CPU included (tests compare it with thaw's own there).
    pub fn load_on_device(
        path: &Path,
        device: &Device,
        products: Products,
    ) -> Result<Self, ModelError> {
        // On a GPU, the file a standby process registered ahead: candle
        // copies each tensor from registered pages, at the copy ceiling.
        #[cfg(feature = "cuda")]
        let ahead = crate::gpu::take_ahead_file(path).filter(|_| device.is_cuda());
        #[cfg(feature = "cuda")]
        let mapped = ahead.as_ref().map(crate::gpu::RegisteredFile::mapped);
        #[cfg(not(feature = "cuda"))]
        let mapped: Option<&MappedFile> = None;
        let owned;
        let file = match mapped {
            Some(file) => file,
            None => {
                owned = MappedFile::open(path).map_err(ModelError::load)?;
                &owned
            }
        };
        let content = Content::read(&mut std::io::Cursor::new(file.bytes()))
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        let decoder = DeviceLlama::load(file, &content, device, products)?;
        Self::assemble(Decoder::Device(decoder), &content)
    }

    fn assemble(decoder: Decoder, content: &Content) -> Result<Self, ModelError> {
        let tokenizer = ChatTokenizer::from_gguf(content)?;
        if tokenizer.vocab_size() != decoder.config().vocab {
            return Err(ModelError::Load(format!(
                "the tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                decoder.config().vocab
            )));
        }
        let template = ChatTemplate::from_gguf(content, &tokenizer)?;
        Ok(ChatModel {
            decoder,
            tokenizer,
            template,
        })
    }

    /// The longest sequence (prompt and generation) served.
    pub fn context(&self) -> usize {
        self.decoder.config().context
    }

    /// Runs each input as a user message through the model on this thread
    /// (a template warms up single-threaded), touching every weight page.
    pub fn warm_up(&self, inputs: &[String]) -> Result<(), ModelError> {
        for input in inputs {
            let messages = [ChatMessage::new("user", input.as_str())];
            let prompt = self.template.render_prompt(&messages, true)?;
            let ids = self.tokenizer.encode_prompt(&prompt, &messages)?;
            let mut cache = self.decoder.new_cache();
            let mut steps = [Step {
                cache: &mut cache,
                tokens: &ids,
                logits: Logits::Last,
            }];
            self.decoder.forward(&mut steps, false)?;
        }
        Ok(())
    }
}

fn gguf_in(dir: &Path) -> Result<PathBuf, ModelError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Load(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ModelError::Load(format!(
            "no .gguf file in {}",
            dir.display()
        ))),
        n => Err(ModelError::Load(format!(
            "{n} .gguf files in {}; expected one",
            dir.display()
        ))),
    }
}
