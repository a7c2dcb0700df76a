//! Chat models (GGUF, generative): the tokenizer and the prompt template,
//! both built from the GGUF's own metadata.

pub mod llama;
pub mod quant;
pub mod template;
pub mod tokenizer;

pub use template::{ChatMessage, ChatTemplate, TemplateError};
pub use tokenizer::{ChatTokenizer, GgufVocab, StreamDecoder};
