//! OpenAI's text generation routes: `POST /v1/chat/completions` and
//! `POST /v1/completions`, whole or streamed as server-sent events.
//!
//! The handler checks the request, renders and tokenizes the prompt, and
//! hands it to the generation thread; a task turns the token events into
//! text (holding back what could be the start of a stop sequence) and the
//! response's chunks. A client that goes away drops the body, which drops
//! the events' receiver, which ends the generation at the next step.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http_body::Frame;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::openai::type_name;
use super::{parse_json, read_body, ApiError, AppState, Backend, OpenAiError};
use crate::models::chat::{
    ChatMessage, ChatModel, Event, Finish, Generation, Sampling, StreamDecoder,
};
use crate::models::ModelError;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
}

/// Which of the two APIs a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

/// A checked generation request.
#[derive(Debug)]
struct Checked {
    /// The prompt's ids.
    prompt: Vec<u32>,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<usize>,
    /// The field `max_tokens` came from (`max_completion_tokens` wins).
    max_key: &'static str,
    sampling: Sampling,
    stop: Vec<String>,
}

async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    generate(state, request, Api::Chat)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    generate(state, request, Api::Completions)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn generate(
    state: Arc<AppState>,
    request: Request,
    api: Api,
) -> Result<Response, OpenAiError> {
    let body = read_body(request, state.limits.max_body_bytes).await?;
    let fields: Value = parse_json(&body)?;
    let Value::Object(fields) = fields else {
        return Err(bad(format!(
            "the body must be a JSON object, got {}",
            type_name(&fields)
        ))
        .into());
    };
    let model_name = match fields.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => {
            return Err(bad("missing required parameter: 'model'".into()).into())
        }
        Some(other) => {
            return Err(bad(format!(
                "'model' must be a string, got {}",
                type_name(other)
            ))
            .into())
        }
    };
    state.check_model(&model_name)?;
    let Backend::Chat { engine, model } = state.backend()? else {
        return Err(ApiError::WrongKind(format!(
            "model {:?} does not generate text: its kind is {}",
            state.name, state.kind
        ))
        .into());
    };
    let checked = check(&fields, api, model)?;
    let prompt = checked.prompt;
    let context = model.context();
    if prompt.is_empty() {
        return Err(bad("the prompt is empty".into()).into());
    }
    if prompt.len() >= context {
        let leaves = if prompt.len() == context {
            ", which leaves no room to generate"
        } else {
            ""
        };
        return Err(ApiError::ContextLength(format!(
            "the prompt is {} tokens{leaves}; this model's context is {context} tokens",
            prompt.len()
        ))
        .into());
    }
    let room = context - prompt.len();
    let max_tokens = match checked.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::ContextLength(format!(
                "{} is {n}, but the prompt's {} leave {room} of the context of {context}",
                checked.max_key,
                count(prompt.len(), "token")
            ))
            .into())
        }
        Some(n) => n,
        // OpenAI's (and vLLM's) default for the legacy completions: a
        // prompt without a turn to end would otherwise run to the end of
        // the context.
        None if api == Api::Completions => COMPLETIONS_MAX_TOKENS.min(room),
        None => room,
    };
    let (events, receiver) = mpsc::unbounded_channel();
    let prompt_tokens = prompt.len();
    engine.submit(Generation {
        prompt,
        max_tokens,
        sampling: checked.sampling,
        events,
    })?;
    let reply = Reply {
        id: response_id(api),
        created: now(),
        model: state.name.clone(),
        api,
        prompt_tokens,
        usage_chunks: checked.stream && checked.include_usage,
    };
    let text = Text::new(model.clone(), checked.stop, receiver);
    if checked.stream {
        Ok(stream(reply, text))
    } else {
        whole(reply, text).await
    }
}

/// A prompt given as token ids: each a whole number below `vocabulary`.
fn prompt_ids(items: &[Value], vocabulary: usize) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(k, v)| {
            v.as_u64()
                .filter(|&id| id < vocabulary as u64)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    bad(format!(
                        "'prompt' item {k} must be a token id below this model's vocabulary \
                         of {vocabulary}, got {v}"
                    ))
                })
        })
        .collect()
}

/// `max_tokens` of a `/v1/completions` request that gives none.
const COMPLETIONS_MAX_TOKENS: usize = 16;

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// The ids of a completions prompt: raw text, whose control tokens' names
/// are those tokens (the caller writes its own template).
fn encode_raw(model: &ChatModel, prompt: &str) -> Result<Vec<u32>, ApiError> {
    model
        .tokenizer
        .encode(prompt)
        .map_err(|e| bad(format!("cannot tokenize the prompt: {e}")))
}

/// OpenAI parameters this server does not implement and that change what a
/// response means (log probabilities, tools, a JSON mode, an echoed prompt,
/// penalties…): refused with a 400 when given a value other than their
/// neutral one, never silently ignored. Other unknown fields are ignored,
/// as new clients send fields older servers do not know.
fn refuse_unsupported(fields: &Map<String, Value>) -> Result<(), ApiError> {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    let neutral = |key: &str, v: &Value| match key {
        // Completions' `logprobs: 0` still asks for the chosen tokens'.
        "logprobs" => v.is_null() || *v == false,
        "tool_choice" | "function_call" => empty(v) || v == "none",
        "response_format" => empty(v) || v.get("type").is_some_and(|t| t == "text"),
        "best_of" => empty(v) || v.as_u64() == Some(1),
        "modalities" => empty(v) || *v == serde_json::json!(["text"]),
        _ => empty(v),
    };
    const UNSUPPORTED: [&str; 14] = [
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "response_format",
        "echo",
        "best_of",
        "suffix",
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
        "modalities",
    ];
    for key in UNSUPPORTED {
        if let Some(v) = fields.get(key).filter(|v| !neutral(key, v)) {
            return Err(bad(format!(
                "'{key}' is {}; this server does not support it (leave it out)",
                abridged(v)
            )));
        }
    }
    Ok(())
}

/// A value as JSON for a message, cut short when long (a tool's whole
/// schema is not worth echoing).
fn abridged(v: &Value) -> String {
    const MAX: usize = 80;
    let text = v.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Checks every field this API reads; renders and tokenizes the prompt.
fn check(fields: &Map<String, Value>, api: Api, model: &ChatModel) -> Result<Checked, ApiError> {
    refuse_unsupported(fields)?;
    let prompt = match api {
        Api::Chat => {
            let messages = messages(fields.get("messages"))?;
            let prompt = model
                .template
                .render_prompt(&messages, true)
                .map_err(|e| bad(e.to_string()))?;
            model
                .tokenizer
                .encode_prompt(&prompt, &messages)
                .map_err(|e| match e {
                    ModelError::Inference(why) => bad(why),
                    other => bad(other.to_string()),
                })?
        }
        Api::Completions => match fields.get("prompt") {
            Some(Value::String(p)) => encode_raw(model, p)?,
            Some(Value::Array(items)) => match items.as_slice() {
                [] => return Err(bad("'prompt' is empty".into())),
                [Value::String(p)] => encode_raw(model, p)?,
                // Token ids (as OpenAI and vLLM take them): the prompt as
                // is, given flat or as an array of one.
                [first, ..] if first.is_number() => {
                    prompt_ids(items, model.tokenizer.vocab_size())?
                }
                [Value::Array(ids)] if !ids.is_empty() => {
                    prompt_ids(ids, model.tokenizer.vocab_size())?
                }
                _ => {
                    return Err(bad(
                        "'prompt' must be a string or token ids (or an array of one of \
                         those): one prompt per request"
                            .into(),
                    ))
                }
            },
            None | Some(Value::Null) => {
                return Err(bad("missing required parameter: 'prompt'".into()))
            }
            Some(other) => {
                return Err(bad(format!(
                    "'prompt' must be a string, got {}",
                    type_name(other)
                )))
            }
        },
    };
    let boolean = |key: &str| match fields.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!(
            "'{key}' must be a boolean, got {}",
            type_name(other)
        ))),
    };
    let number = |key: &str, default: f64, range: (f64, f64)| match fields.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v >= range.0 && v <= range.1 {
                Ok(v)
            } else {
                Err(bad(format!(
                    "'{key}' is {v}; it must be between {} and {}",
                    range.0, range.1
                )))
            }
        }
        Some(other) => Err(bad(format!(
            "'{key}' must be a number, got {}",
            type_name(other)
        ))),
    };
    let stream = boolean("stream")?;
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(format!(
                    "'stream_options.include_usage' must be a boolean, got {}",
                    type_name(other)
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "'stream_options' must be an object, got {}",
                type_name(other)
            )))
        }
    };
    if include_usage && !stream {
        return Err(bad(
            "'stream_options' is only allowed when 'stream' is true".into(),
        ));
    }
    let max_key = if fields
        .get("max_completion_tokens")
        .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match fields.get(max_key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 1 => Some(v as usize),
            _ => {
                return Err(bad(format!(
                    "'{max_key}' is {n}; it must be a whole number of at least 1"
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "'{max_key}' must be an integer, got {}",
                type_name(other)
            )))
        }
    };
    let temperature = number("temperature", 1.0, (0.0, 2.0))? as f32;
    // 0 keeps only the likeliest token: greedy, as OpenAI allows.
    let top_p = number("top_p", 1.0, (0.0, 1.0))? as f32;
    let seed = match fields.get("seed") {
        None | Some(Value::Null) => random_seed(),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => v as u64,
            None => {
                return Err(bad(format!(
                    "'seed' is {n}; it must be an integer in the int64 range"
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "'seed' must be an integer, got {}",
                type_name(other)
            )))
        }
    };
    match fields.get("n") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(other) => {
            return Err(bad(format!(
                "'n' is {other}; this server generates one choice (n = 1)"
            )))
        }
    }
    let stop = match fields.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > 4 {
                return Err(bad(format!(
                    "'stop' has {} sequences; at most 4 are allowed",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!(
                        "'stop[{i}]' must be a string, got {}",
                        type_name(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(bad(format!(
                "'stop' must be a string or an array of strings, got {}",
                type_name(other)
            )))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(bad("'stop' sequences must not be empty".into()));
    }
    Ok(Checked {
        prompt,
        stream,
        include_usage,
        max_tokens,
        max_key,
        sampling: Sampling {
            temperature,
            top_p,
            seed,
        },
        stop,
    })
}

/// The conversation: at least one message, each with a known role and text
/// content (a string, or an array of text parts).
fn messages(value: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => {
            return Err(bad("missing required parameter: 'messages'".into()))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(format!(
                "'messages' must be an array, got {}",
                type_name(other)
            )))
        }
    };
    if items.is_empty() {
        return Err(bad("'messages' must have at least one message".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(bad(format!("'messages[{i}]' must be an object, got {}", type_name(m))));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) => r.as_str(),
                None => return Err(bad(format!("'messages[{i}].role' is missing"))),
                Some(other) => {
                    return Err(bad(format!("'messages[{i}].role' must be a string, got {}", type_name(other))))
                }
            };
            if !matches!(role, "system" | "developer" | "user" | "assistant") {
                return Err(bad(format!(
                    "'messages[{i}].role' is {role:?}; expected system, developer, user or assistant"
                )));
            }
            // The template knows `system`; OpenAI's `developer` is the same.
            let role = if role == "developer" { "system" } else { role };
            let content = match m.get("content") {
                Some(Value::String(c)) => c.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                        _ => Err(bad(format!(
                            "'messages[{i}].content[{j}]' must be a text part {{\"type\": \"text\", \"text\": ...}}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    // One line each, as vLLM joins them ("Hello" and
                    // "World" are not "HelloWorld").
                    .join("\n"),
                // An assistant's turn may have no text (OpenAI's, when it
                // called tools): it is an empty turn here.
                None | Some(Value::Null) if role == "assistant" => String::new(),
                None | Some(Value::Null) => return Err(bad(format!("'messages[{i}].content' is missing"))),
                Some(other) => {
                    return Err(bad(format!(
                        "'messages[{i}].content' must be a string or an array of text parts, got {}",
                        type_name(other)
                    )))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// What every response of one request shares.
struct Reply {
    id: String,
    created: u64,
    model: String,
    api: Api,
    prompt_tokens: usize,
    /// A stream that ends with a usage chunk: the chunks before it carry
    /// `"usage": null` (OpenAI's `stream_options.include_usage`).
    usage_chunks: bool,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// One streamed chunk with `delta` text (or the role, or nothing) and a
    /// finish reason.
    fn chunk(&self, delta: Option<&str>, role: bool, finish: Option<Finish>) -> Value {
        let finish = finish.map(Finish::as_str);
        let mut chunk = match self.api {
            Api::Chat => {
                let mut d = Map::new();
                if role {
                    d.insert("role".into(), json!("assistant"));
                    d.insert("content".into(), json!(""));
                }
                if let Some(text) = delta {
                    d.insert("content".into(), json!(text));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}],
                })
            }
            Api::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}],
            }),
        };
        if self.usage_chunks {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn usage_chunk(&self, completion_tokens: usize) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": self.usage(completion_tokens),
        })
    }
}

/// Generated text as it comes: tokens decoded, stop sequences cut.
struct Text {
    model: Arc<ChatModel>,
    decoder: StreamDecoder,
    stop: Vec<String>,
    receiver: mpsc::UnboundedReceiver<Event>,
    /// Decoded but not yet released: could be the start of a stop sequence.
    held: String,
    /// Tokens generated so far.
    tokens: usize,
    /// The end, once known, returned after the last text.
    end: Option<Finish>,
}

/// The next piece of a generation.
enum Piece {
    Text(String),
    End(Finish),
    Failed(String),
}

impl Text {
    fn new(
        model: Arc<ChatModel>,
        stop: Vec<String>,
        receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        Text {
            model,
            decoder: StreamDecoder::new(true),
            stop,
            receiver,
            held: String::new(),
            tokens: 0,
            end: None,
        }
    }

    async fn next(&mut self) -> Piece {
        loop {
            if let Some(finish) = self.end {
                return Piece::End(finish);
            }
            match self.receiver.recv().await {
                Some(Event::Token(id)) => {
                    self.tokens += 1;
                    match self.decoder.step(&self.model.tokenizer, id) {
                        Ok(piece) => self.held.push_str(&piece),
                        Err(e) => return Piece::Failed(e.to_string()),
                    }
                    let found = self
                        .stop
                        .iter()
                        .filter_map(|s| self.held.find(s.as_str()))
                        .min();
                    if let Some(at) = found {
                        // Closing the receiver ends the generation at the
                        // engine's next step.
                        self.receiver.close();
                        self.held.truncate(at);
                        self.end = Some(Finish::Stop);
                        if !self.held.is_empty() {
                            return Piece::Text(std::mem::take(&mut self.held));
                        }
                        continue;
                    }
                    let keep = self
                        .stop
                        .iter()
                        .map(|s| partial_suffix(&self.held, s))
                        .max()
                        .unwrap_or(0);
                    let release = self.held.len() - keep;
                    if release > 0 {
                        let text = self.held[..release].to_string();
                        self.held.drain(..release);
                        return Piece::Text(text);
                    }
                }
                Some(Event::Done(finish)) => {
                    self.end = Some(finish);
                    let rest = std::mem::take(&mut self.held) + &self.decoder.finish();
                    if !rest.is_empty() {
                        return Piece::Text(rest);
                    }
                }
                Some(Event::Failed(e)) => return Piece::Failed(e),
                None => return Piece::Failed("the generation stopped".into()),
            }
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// `stop` (on a character boundary).
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            let at = text.len() - n;
            text.is_char_boundary(at) && stop.as_bytes().starts_with(&text.as_bytes()[at..])
        })
        .unwrap_or(0)
}

/// A whole response, once the generation ends.
async fn whole(reply: Reply, mut text: Text) -> Result<Response, OpenAiError> {
    let mut out = String::new();
    let finish = loop {
        match text.next().await {
            Piece::Text(t) => out.push_str(&t),
            Piece::End(finish) => break finish,
            Piece::Failed(e) => {
                return Err(ApiError::Internal(format!("generation failed: {e}")).into())
            }
        }
    };
    let usage = reply.usage(text.tokens);
    let body = match reply.api {
        Api::Chat => json!({
            "id": reply.id, "object": "chat.completion", "created": reply.created,
            "model": reply.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }],
            "usage": usage,
        }),
        Api::Completions => json!({
            "id": reply.id, "object": "text_completion", "created": reply.created,
            "model": reply.model,
            "choices": [{"index": 0, "text": out, "logprobs": null, "finish_reason": finish.as_str()}],
            "usage": usage,
        }),
    };
    Ok(Json(body).into_response())
}

/// A streamed response: `data:` events as the text comes, a last chunk with
/// the finish reason, the usage if asked, then `data: [DONE]`. A failure
/// after the stream has started is sent as an `error` event before the end.
fn stream(reply: Reply, mut text: Text) -> Response {
    let (frames, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let send = |value: &Value| Bytes::from(format!("data: {value}\n\n"));
        if reply.api == Api::Chat
            && frames
                .send(send(&reply.chunk(None, true, None)))
                .await
                .is_err()
        {
            return;
        }
        loop {
            let frame = match text.next().await {
                Piece::Text(t) => send(&reply.chunk(Some(&t), false, None)),
                Piece::End(finish) => {
                    let last = reply.chunk(None, false, Some(finish));
                    let mut out = format!("data: {last}\n\n");
                    if reply.usage_chunks {
                        out.push_str(&format!("data: {}\n\n", reply.usage_chunk(text.tokens)));
                    }
                    out.push_str("data: [DONE]\n\n");
                    let _ = frames.send(Bytes::from(out)).await;
                    return;
                }
                Piece::Failed(e) => {
                    let error =
                        OpenAiError(ApiError::Internal(format!("generation failed: {e}"))).body();
                    let _ = frames
                        .send(Bytes::from(format!("data: {error}\n\ndata: [DONE]\n\n")))
                        .await;
                    return;
                }
            };
            // The client is gone: dropping `text` ends the generation.
            if frames.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut response = Body::new(EventBody(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A response body fed by a channel, one frame per message.
struct EventBody(mpsc::Receiver<Bytes>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

/// A response's id, unique across workers and their restarts (not a
/// per-process counter, which starts again at 0 in every worker).
fn response_id(api: Api) -> String {
    let prefix = match api {
        Api::Chat => "chatcmpl",
        Api::Completions => "cmpl",
    };
    format!("{prefix}-{:016x}", random_seed())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` things, in the singular when one.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A seed for a request that gives none, and the random part of a
/// response's id: the time, the process and a count, hashed with the
/// process's random SipHash keys, so all 64 bits vary.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("hello wor", "world"), 3);
        assert_eq!(partial_suffix("hello", "world"), 0);
        assert_eq!(partial_suffix("w", "world"), 1);
        // A whole match is found before this is asked; a proper prefix only.
        assert_eq!(partial_suffix("world", "world"), 0);
        assert_eq!(partial_suffix("caf\u{e9}", "\u{e9}x"), 2);
    }

    #[test]
    fn unsupported_parameters_are_refused_unless_neutral() {
        let fields = |v: Value| v.as_object().cloned().expect("an object");
        for refused in [
            json!({"logprobs": true}),
            json!({"top_logprobs": 2}),
            json!({"tools": [{"type": "function"}]}),
            json!({"tool_choice": "auto"}),
            json!({"response_format": {"type": "json_object"}}),
            json!({"echo": true}),
            json!({"best_of": 2}),
            json!({"suffix": "x"}),
            json!({"logit_bias": {"50256": -100}}),
            json!({"presence_penalty": 0.5}),
            json!({"frequency_penalty": -1}),
            json!({"logprobs": 0}),
        ] {
            let e = refuse_unsupported(&fields(refused.clone())).expect_err("refused");
            assert!(format!("{e:?}").contains("does not support"), "{refused}");
        }
        for neutral in [
            json!({"logprobs": false, "top_logprobs": null, "tools": [], "tool_choice": "none",
                   "response_format": {"type": "text"}, "echo": false, "best_of": 1,
                   "suffix": "", "logit_bias": {}, "presence_penalty": 0,
                   "frequency_penalty": 0.0, "modalities": ["text"], "user": "u", "foo": 1}),
            json!({"logprobs": null}),
        ] {
            assert!(
                refuse_unsupported(&fields(neutral.clone())).is_ok(),
                "{neutral}"
            );
        }
    }

    #[test]
    fn messages_are_checked() {
        assert!(messages(None).is_err());
        assert!(messages(Some(&json!([]))).is_err());
        assert!(messages(Some(&json!([{"role": "robot", "content": "x"}]))).is_err());
        assert!(messages(Some(&json!([{"role": "user"}]))).is_err());
        assert!(messages(Some(&json!([{"role": "user", "content": 3}]))).is_err());
        let parts = json!([{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
        assert_eq!(
            messages(Some(&parts)).ok(),
            Some(vec![ChatMessage::new("system", "a\nb")])
        );
    }
}
