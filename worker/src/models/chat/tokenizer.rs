//! A chat model's tokenizer, built from its GGUF's own metadata (there is no
//! tokenizer.json): byte-level BPE from `tokenizer.ggml.tokens` and
//! `tokenizer.ggml.merges`, the pre-tokenizer that `tokenizer.ggml.pre`
//! names, and the control tokens (token type 3) as special tokens. Plus an
//! incremental decoder for streaming.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::json;
use super::template::{ChatMessage, Prompt};
use crate::models::ModelError;

/// GGUF's token type for control tokens (`<|im_start|>`, `<|endoftext|>`…).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// Control tokens that end a turn, besides the GGUF's `eos_token_id`.
const END_OF_TURN: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// The tokenizer fields of a GGUF's metadata, checked.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// Each token's text, in GPT-2's byte alphabet (a space is `Ġ`).
    pub tokens: Vec<String>,
    /// Whether each token is a control token.
    pub control: Vec<bool>,
    /// The merges, by rank.
    pub merges: Vec<(String, String)>,
    /// The end-of-sequence token.
    pub eos: u32,
    /// The beginning-of-sequence token, if the GGUF names one.
    pub bos: Option<u32>,
    /// The unknown token, if the GGUF names one.
    pub unk: Option<u32>,
}

impl GgufVocab {
    /// Reads and checks the tokenizer metadata: a `gpt2` (byte-level BPE)
    /// model with the `smollm` pre-tokenizer is what this build knows.
    pub fn from_metadata(metadata: &HashMap<String, Value>) -> Result<Self, ModelError> {
        let model = string(metadata, "tokenizer.ggml.model")?;
        let pre = string(metadata, "tokenizer.ggml.pre")?;
        if model != "gpt2" || pre != "smollm" {
            return Err(ModelError::Load(format!(
                "GGUF tokenizer {model:?} with pre-tokenizer {pre:?} is not supported \
                 (only \"gpt2\" with \"smollm\")"
            )));
        }
        let tokens = array(metadata, "tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned().map_err(ModelError::load))
            .collect::<Result<Vec<_>, _>>()?;
        let types = array(metadata, "tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(ModelError::Load(format!(
                "GGUF has {} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let control = types
            .iter()
            .map(|v| integer(v).map(|t| t == TOKEN_TYPE_CONTROL))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::load("tokenizer.ggml.token_type is not integers"))?;
        let merges = array(metadata, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let merge = v.to_string().map_err(ModelError::load)?;
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::Load(format!("merge {merge:?} is not \"a b\"")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = |key: &str| token_id(metadata, key, tokens.len());
        let eos = id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| ModelError::load("GGUF has no tokenizer.ggml.eos_token_id"))?;
        Ok(GgufVocab {
            bos: id("tokenizer.ggml.bos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            eos,
            tokens,
            control,
            merges,
        })
    }
}

/// A byte-level BPE tokenizer with the ids a generator needs.
pub struct ChatTokenizer {
    inner: Tokenizer,
    /// The same, with control tokens' names read as plain text (for the
    /// caller's text in a prompt).
    plain: Tokenizer,
    /// Each token's bytes as it decodes (a control token: its text).
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    eos: u32,
    bos: Option<u32>,
    stop: Vec<u32>,
    /// The plain tokens sorted for JSON mode, made on first use.
    json: OnceLock<json::Tokens>,
}

impl ChatTokenizer {
    /// Builds the tokenizer from a GGUF's metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, ModelError> {
        Self::from_vocab(GgufVocab::from_metadata(&content.metadata)?)
    }

    /// Builds the tokenizer: digits split one by one, then GPT-2's pattern
    /// and byte alphabet (no prefix space), BPE by merge rank, control tokens
    /// matched whole before anything else.
    pub fn from_vocab(vocab: GgufVocab) -> Result<Self, ModelError> {
        let mut ids = Vocab::with_capacity(vocab.tokens.len());
        for (id, token) in vocab.tokens.iter().enumerate() {
            if ids.insert(token.clone(), id as u32).is_some() {
                return Err(ModelError::Load(format!("token {token:?} appears twice")));
            }
        }
        let mut bpe = BPE::builder().vocab_and_merges(ids, vocab.merges);
        if let Some(unk) = vocab.unk {
            bpe = bpe.unk_token(vocab.tokens[unk as usize].clone());
        }
        let bpe = bpe
            .build()
            .map_err(|e| ModelError::Load(format!("building the BPE model: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        // The same type decodes: GPT-2's alphabet back to bytes, then UTF-8.
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        let special: Vec<AddedToken> = vocab
            .tokens
            .iter()
            .zip(&vocab.control)
            .filter(|(_, &control)| control)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);

        let alphabet = byte_alphabet();
        let bytes = vocab
            .tokens
            .iter()
            .zip(&vocab.control)
            .map(|(token, &control)| token_bytes(token, control, &alphabet))
            .collect();
        let mut stop = vec![vocab.eos];
        for name in END_OF_TURN {
            if let Some(id) = vocab.tokens.iter().position(|t| t == name) {
                if vocab.control[id] && !stop.contains(&(id as u32)) {
                    stop.push(id as u32);
                }
            }
        }
        Ok(ChatTokenizer {
            inner,
            plain,
            bytes,
            control: vocab.control,
            eos: vocab.eos,
            bos: vocab.bos,
            stop,
            json: OnceLock::new(),
        })
    }

    /// The ids of `text`. Control tokens written in the text (as a chat
    /// template writes them) become their single ids; nothing is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| ModelError::Inference(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of `text` read as plain text: a control token's name in it
    /// is tokenized like any other text.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .plain
            .encode_fast(text, false)
            .map_err(|e| ModelError::Inference(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of a rendered prompt: its messages' contents as plain text
    /// ([`Self::encode_text`]), the template's text around them with its
    /// control tokens ([`Self::encode`]). A prompt whose contents could not
    /// be located is refused if a content names a control token, which could
    /// otherwise forge a turn.
    pub fn encode_prompt(
        &self,
        prompt: &Prompt,
        messages: &[ChatMessage],
    ) -> Result<Vec<u32>, ModelError> {
        if !prompt.located {
            for (i, m) in messages.iter().enumerate() {
                if let Some(name) = self.control_name_in(&m.content) {
                    return Err(ModelError::Inference(format!(
                        "messages[{i}].content contains the control token {name:?}, which this \
                         model's chat template does not let thaw keep as text"
                    )));
                }
            }
        }
        let mut ids = Vec::new();
        let mut at = 0;
        for range in &prompt.contents {
            ids.extend(self.encode(&prompt.text[at..range.start])?);
            ids.extend(self.encode_text(&prompt.text[range.clone()])?);
            at = range.end;
        }
        ids.extend(self.encode(&prompt.text[at..])?);
        Ok(ids)
    }

    /// The first control token whose name `text` contains.
    fn control_name_in(&self, text: &str) -> Option<String> {
        (0..self.control.len())
            .filter(|&id| self.control[id])
            .filter_map(|id| self.inner.id_to_token(id as u32))
            .find(|name| text.contains(name.as_str()))
    }

    /// The text of `ids`; control tokens are left out when
    /// `skip_special_tokens`. Bytes that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Inference(format!("decoding: {e}")))
    }

    /// The number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// A token's bytes as it decodes (a control token's: its name).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The id of a token, given its text in the byte alphabet.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The end-of-sequence token (`<|im_end|>` for SmolLM2-Instruct).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The beginning-of-sequence token, if any. The chat template writes it
    /// where it belongs; `encode` never adds it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The tokens that end a generation: the eos token and the end-of-turn
    /// control tokens the vocabulary has.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// The plain tokens as JSON mode walks them.
    pub fn json_tokens(&self) -> &json::Tokens {
        self.json.get_or_init(|| json::Tokens::new(self))
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Turns generated ids into text deltas as they come, holding back the bytes
/// of a UTF-8 character until it is whole. The concatenated deltas, with
/// [`StreamDecoder::finish`], equal [`ChatTokenizer::decode`] of all ids.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    skip_special_tokens: bool,
}

impl StreamDecoder {
    /// A decoder for one sequence.
    pub fn new(skip_special_tokens: bool) -> Self {
        StreamDecoder {
            pending: Vec::new(),
            skip_special_tokens,
        }
    }

    /// Adds one token; returns the text it completes (often empty while a
    /// character is split across tokens).
    pub fn step(&mut self, tokenizer: &ChatTokenizer, id: u32) -> Result<String, ModelError> {
        let bytes = tokenizer
            .bytes
            .get(id as usize)
            .ok_or_else(|| ModelError::Inference(format!("token id {id} is out of range")))?;
        if !(self.skip_special_tokens && tokenizer.is_control(id)) {
            self.pending.extend_from_slice(bytes);
        }
        Ok(drain_utf8(&mut self.pending))
    }

    /// The text still held back at the end of the sequence: none but an
    /// unfinished character (the generation stopped inside it, at its
    /// length limit), which is left out rather than sent as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = drain_utf8(&mut self.pending);
        self.pending.clear();
        rest
    }
}

/// Takes the complete UTF-8 text from the front of `pending`, leaving an
/// unfinished character's bytes. Invalid bytes become U+FFFD, one per
/// maximal invalid sequence, as `String::from_utf8_lossy` does.
fn drain_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&pending[start..]) {
            Ok(text) => {
                out.push_str(text);
                start = pending.len();
                break;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                out.push_str(
                    std::str::from_utf8(&pending[start..valid])
                        .expect("from_utf8 vouched for the bytes up to valid_up_to"),
                );
                match e.error_len() {
                    // An unfinished character at the end: wait for more.
                    None => {
                        start = valid;
                        break;
                    }
                    Some(len) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid + len;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}

/// GPT-2's map from bytes to printable characters, inverted: printable
/// Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 on.
fn byte_alphabet() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
                next += 1;
                (c, b)
            }
        })
        .collect()
}

/// A token's decoded bytes: a control token is its text; a token with a
/// character outside the byte alphabet decodes to its own UTF-8, as the
/// byte-level decoder does.
fn token_bytes(token: &str, control: bool, alphabet: &HashMap<char, u8>) -> Vec<u8> {
    if control {
        return token.as_bytes().to_vec();
    }
    token
        .chars()
        .map(|c| alphabet.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

fn get<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, ModelError> {
    metadata
        .get(key)
        .ok_or_else(|| ModelError::Load(format!("GGUF metadata has no {key}")))
}

fn string<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, ModelError> {
    get(metadata, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|e| ModelError::Load(format!("{key}: {e}")))
}

fn array<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a [Value], ModelError> {
    get(metadata, key)?
        .to_vec()
        .map(Vec::as_slice)
        .map_err(|e| ModelError::Load(format!("{key}: {e}")))
}

/// An optional token id, checked against the vocabulary's size.
fn token_id(
    metadata: &HashMap<String, Value>,
    key: &str,
    vocab_size: usize,
) -> Result<Option<u32>, ModelError> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    match integer(value) {
        Some(id) if (0..vocab_size as i64).contains(&id) => Ok(Some(id as u32)),
        _ => Err(ModelError::Load(format!(
            "{key} is not a token id below {vocab_size}: {value:?}"
        ))),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet.len(), 256);
        assert_eq!(alphabet[&'Ġ'], b' ');
        assert_eq!(alphabet[&'Ċ'], b'\n');
        assert_eq!(alphabet[&'ĉ'], b'\t');
        assert_eq!(alphabet[&'A'], b'A');
        assert_eq!(alphabet[&'Ā'], 0);
    }

    #[test]
    fn drain_holds_back_an_unfinished_character() {
        let crab = "🦀".as_bytes();
        let mut pending = b"a".to_vec();
        pending.extend_from_slice(&crab[..2]);
        assert_eq!(drain_utf8(&mut pending), "a");
        assert_eq!(pending, &crab[..2]);
        pending.extend_from_slice(&crab[2..]);
        pending.push(b'b');
        assert_eq!(drain_utf8(&mut pending), "🦀b");
        assert!(pending.is_empty());
    }

    #[test]
    fn drain_replaces_invalid_bytes_like_from_utf8_lossy() {
        let bytes = [b'x', 0xFF, 0xE2, 0x82, b'y', 0xC0, 0x80, b'z'];
        let mut pending = bytes.to_vec();
        assert_eq!(drain_utf8(&mut pending), String::from_utf8_lossy(&bytes));
        assert!(pending.is_empty());
    }

    #[test]
    fn byte_by_byte_equals_lossy_whole() {
        let text = "é 日本 👍🏽 ok".as_bytes();
        let mut pending = Vec::new();
        let mut out = String::new();
        for &b in text {
            pending.push(b);
            out.push_str(&drain_utf8(&mut pending));
        }
        assert!(pending.is_empty());
        assert_eq!(out.as_bytes(), text);
    }
}
