//! Chat models (GGUF, generative): the llama decoder on the mapped file, the
//! tokenizer and the prompt template built from the GGUF's own metadata,
//! and the generation loop that runs several sequences together.

pub mod engine;
pub mod llama;
pub mod quant;
pub mod template;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use engine::{Engine, Event, Finish, Generation, Sampling};
pub use template::{ChatMessage, ChatTemplate, TemplateError};
pub use tokenizer::{ChatTokenizer, GgufVocab, StreamDecoder};

use crate::models::ModelError;
use llama::{KvCache, Llama, Step};

/// A chat model: decoder, tokenizer, template.
pub struct ChatModel {
    /// The decoder.
    pub llama: Llama,
    /// The tokenizer.
    pub tokenizer: ChatTokenizer,
    /// The chat template.
    pub template: ChatTemplate,
}

impl ChatModel {
    /// Loads the one `.gguf` file in `dir` (a source model directory or a
    /// chat snapshot).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = gguf_in(dir)?;
        let (llama, content) = Llama::load(&path)?;
        let tokenizer = ChatTokenizer::from_gguf(&content)?;
        if tokenizer.vocab_size() != llama.config().vocab {
            return Err(ModelError::Load(format!(
                "the tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                llama.config().vocab
            )));
        }
        let template = ChatTemplate::from_gguf(&content, &tokenizer)?;
        Ok(ChatModel {
            llama,
            tokenizer,
            template,
        })
    }

    /// The longest sequence (prompt and generation) served.
    pub fn context(&self) -> usize {
        self.llama.config().context
    }

    /// Runs each input as a user message through the model on this thread
    /// (a template warms up single-threaded), touching every weight page.
    pub fn warm_up(&self, inputs: &[String]) -> Result<(), ModelError> {
        for input in inputs {
            let prompt = self
                .template
                .render(&[ChatMessage::new("user", input.as_str())], true)?;
            let ids = self.tokenizer.encode(&prompt)?;
            let mut cache = KvCache::new(&self.llama);
            let mut steps = [Step {
                cache: &mut cache,
                tokens: &ids,
                logits: true,
            }];
            self.llama.forward(&mut steps, false)?;
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
