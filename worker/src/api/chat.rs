//! OpenAI's text generation routes: `POST /v1/chat/completions` and
//! `POST /v1/completions`, whole or streamed as server-sent events.
//!
//! The handler checks the request, renders and tokenizes the prompt, and
//! hands it to the generation thread; a task turns the token events into
//! text (holding back what could be the start of a stop sequence) and the
//! response's chunks. A client that goes away drops the body, which drops
//! the events' receiver, which ends the generation at the next step.

use std::collections::VecDeque;
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
    ChatMessage, ChatModel, Event, Finish, Fork, Format, Generation, Logprobs, Sampling, Schema,
    StreamDecoder,
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
    /// The prompts (one on the chat API; the legacy completions take
    /// several, each with its `n` choices).
    prompts: Vec<Input>,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<usize>,
    /// The field `max_tokens` came from (`max_completion_tokens` wins).
    max_key: &'static str,
    sampling: Sampling,
    stop: Vec<String>,
    /// How many choices to generate for each prompt (OpenAI's `n`).
    n: usize,
    /// Whether each choice begins with its prompt (the legacy
    /// completions' `echo`).
    echo: bool,
}

/// One prompt: its ids, and its text as it is echoed (as written, or the
/// ids decoded).
#[derive(Debug)]
struct Input {
    ids: Vec<u32>,
    text: Option<String>,
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
    let context = model.context();
    let many = checked.prompts.len() > 1;
    let name = |k: usize| {
        if many {
            format!("prompt {k}")
        } else {
            "the prompt".to_string()
        }
    };
    for (k, input) in checked.prompts.iter().enumerate() {
        let len = input.ids.len();
        if len == 0 {
            return Err(bad(format!("{} is empty", name(k))).into());
        }
        if len >= context {
            let leaves = if len == context {
                ", which leaves no room to generate"
            } else {
                ""
            };
            return Err(ApiError::ContextLength(format!(
                "{} is {len} tokens{leaves}; this model's context is {context} tokens",
                name(k)
            ))
            .into());
        }
    }
    // The longest prompt leaves the least room.
    let (longest, len) = checked
        .prompts
        .iter()
        .map(|p| p.ids.len())
        .enumerate()
        .max_by_key(|&(k, len)| (len, std::cmp::Reverse(k)))
        .expect("at least one prompt");
    let room = context - len;
    let max_tokens = match checked.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::ContextLength(format!(
                "{} is {n}, but {}'s {} leave {room} of the context of {context}",
                checked.max_key,
                name(longest),
                count(len, "token")
            ))
            .into());
        }
        Some(n) => n,
        // OpenAI's (and vLLM's) default for the legacy completions: a
        // prompt without a turn to end would otherwise run to the end of
        // the context.
        None if api == Api::Completions => COMPLETIONS_MAX_TOKENS.min(room),
        None => room,
    };
    if checked.sampling.min_tokens > max_tokens {
        return Err(bad(format!(
            "'min_tokens' is {}, more than the {} tokens this request may generate",
            checked.sampling.min_tokens, max_tokens
        ))
        .into());
    }
    let prompt_tokens = checked.prompts.iter().map(|p| p.ids.len()).sum();
    let n = checked.n;
    let mut choices = Vec::with_capacity(checked.prompts.len() * n);
    let mut echoes = Vec::new();
    for input in checked.prompts {
        if checked.echo {
            let text = input
                .text
                .unwrap_or_else(|| decode_prompt(model, &input.ids));
            echoes.push(Echo::new(text, &input.ids, model));
        }
        // One generation per choice, all from the prompt read once; the
        // engine runs them side by side. A given seed gives each choice its
        // own (the seed, then the next ones).
        let (events, texts): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (sender, receiver) = mpsc::unbounded_channel();
                let stop = checked.stop.clone();
                let text = Text::new(model.clone(), stop, checked.sampling.min_tokens, receiver);
                (sender, text)
            })
            .unzip();
        choices.extend(texts);
        let mut events = events.into_iter();
        let first = events.next().expect("n is at least 1");
        let forks = events
            .zip(1u64..)
            .map(|(events, index)| {
                let mut sampling = checked.sampling.clone();
                sampling.seed = sampling.seed.wrapping_add(index);
                Fork { sampling, events }
            })
            .collect();
        engine.submit(Generation {
            prompt: input.ids,
            max_tokens,
            sampling: checked.sampling.clone(),
            events: first,
            forks,
            echo: checked.echo,
        })?;
    }
    let total = choices.len();
    let reply = Reply {
        id: response_id(api),
        created: now(),
        model: state.name.clone(),
        chat: model.clone(),
        api,
        prompt_tokens,
        usage_chunks: checked.stream && checked.include_usage,
        logprobs: checked.sampling.logprobs.is_some(),
        n,
        echoes,
    };
    let pieces = merge(choices);
    if checked.stream {
        Ok(stream(reply, total, pieces))
    } else {
        whole(reply, total, pieces).await
    }
}

/// The legacy completions' `prompt`: a string, token ids, or an array of
/// either (one prompt each).
fn completion_prompts(value: Option<&Value>, model: &ChatModel) -> Result<Vec<Input>, ApiError> {
    let vocabulary = model.tokenizer.vocab_size();
    let text = |p: &String| -> Result<Input, ApiError> {
        Ok(Input {
            ids: encode_raw(model, p)?,
            text: Some(p.clone()),
        })
    };
    let ids = |items: &[Value], field: &str| -> Result<Input, ApiError> {
        Ok(Input {
            ids: prompt_ids(items, vocabulary, field)?,
            text: None,
        })
    };
    match value {
        Some(Value::String(p)) => Ok(vec![text(p)?]),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => Err(bad("'prompt' is empty".into())),
            // Token ids (as OpenAI and vLLM take them): the prompt as is.
            [first, ..] if first.is_number() => Ok(vec![ids(items, "prompt")?]),
            // Several prompts, all strings or all token ids.
            prompts => prompts
                .iter()
                .enumerate()
                .map(|(k, p)| match (p, &prompts[0]) {
                    (Value::String(p), Value::String(_)) => text(p),
                    (Value::Array(items), Value::Array(_)) if !items.is_empty() => {
                        ids(items, &format!("prompt[{k}]"))
                    }
                    _ => Err(bad(format!(
                        "'prompt[{k}]' must be {} like 'prompt[0]', got {}",
                        if prompts[0].is_string() {
                            "a string"
                        } else {
                            "a non-empty array of token ids"
                        },
                        type_name(p)
                    ))),
                })
                .collect(),
        },
        None | Some(Value::Null) => Err(bad("missing required parameter: 'prompt'".into())),
        Some(other) => Err(bad(format!(
            "'prompt' must be a string, token ids, or an array of either, got {}",
            type_name(other)
        ))),
    }
}

/// A prompt given as token ids (the field `field`): each a whole number
/// below `vocabulary`.
fn prompt_ids(items: &[Value], vocabulary: usize, field: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(k, v)| {
            v.as_u64()
                .filter(|&id| id < vocabulary as u64)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    bad(format!(
                        "'{field}' item {k} must be a token id below this model's \
                         vocabulary of {vocabulary}, got {v}"
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
/// response means (tools, a grammar, an echoed prompt…): refused with a 400 when given a value other than their
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
        "tool_choice" | "function_call" => empty(v) || v == "none",
        "best_of" => empty(v) || v.as_u64() == Some(1),
        "modalities" => empty(v) || *v == serde_json::json!(["text"]),
        _ => empty(v),
    };
    const UNSUPPORTED: [&str; 12] = [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "best_of",
        "suffix",
        "modalities",
        // vLLM's structured outputs, other than OpenAI's response_format.
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "structured_outputs",
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
    let echo = boolean(fields, "echo")?;
    if echo && api == Api::Chat {
        return Err(bad(
            "'echo' is true; it is the legacy completions' (POST /v1/completions), \
             not the chat API's"
                .into(),
        ));
    }
    let prompts = match api {
        Api::Chat => {
            let messages = messages(fields.get("messages"))?;
            let prompt = model
                .template
                .render_prompt(&messages, true)
                .map_err(|e| bad(e.to_string()))?;
            let ids = model
                .tokenizer
                .encode_prompt(&prompt, &messages)
                .map_err(|e| match e {
                    ModelError::Inference(why) => bad(why),
                    other => bad(other.to_string()),
                })?;
            vec![Input { ids, text: None }]
        }
        Api::Completions => completion_prompts(fields.get("prompt"), model)?,
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
    let stream = boolean(fields, "stream")?;
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
            // Only the prompt scored: OpenAI's legacy `echo` with
            // `max_tokens: 0`, as lm-evaluation-harness sends it.
            Some(0) if echo => Some(0),
            _ => {
                return Err(bad(format!(
                    "'{max_key}' is {n}; it must be a whole number of at least 1 (0 with \
                     'echo')"
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
    let n = match fields.get("n") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v @ 1..=MAX_CHOICES) => v as usize,
            _ => {
                return Err(bad(format!(
                    "'n' is {n}; it must be a whole number from 1 to {MAX_CHOICES}"
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "'n' must be an integer, got {}",
                type_name(other)
            )))
        }
    };
    let presence_penalty = number("presence_penalty", 0.0, (-2.0, 2.0))? as f32;
    let frequency_penalty = number("frequency_penalty", 0.0, (-2.0, 2.0))? as f32;
    let logit_bias = logit_bias(fields.get("logit_bias"), model.tokenizer.vocab_size())?;
    let logprobs = logprobs(fields, api)?;
    // vLLM's and TGI's sampling extras (OpenAI's clients send them in
    // `extra_body`): ignored, they would change the sampling silently.
    let whole_number = |key: &str| match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            Ok(Some(n.as_i64().ok_or_else(|| {
                bad(format!("'{key}' is {n}; it must be a whole number"))
            })?))
        }
        Some(other) => Err(bad(format!(
            "'{key}' must be an integer, got {}",
            type_name(other)
        ))),
    };
    let top_k = match whole_number("top_k")? {
        None | Some(-1 | 0) => 0,
        Some(k) if k >= 1 => k as usize,
        Some(k) => {
            return Err(bad(format!(
                "'top_k' is {k}; it must be -1 (every token) or at least 1"
            )))
        }
    };
    let min_tokens = match whole_number("min_tokens")? {
        None => 0,
        Some(m) if m >= 0 => m as usize,
        Some(m) => return Err(bad(format!("'min_tokens' is {m}; it must be at least 0"))),
    };
    let min_p = number("min_p", 0.0, (0.0, 1.0))? as f32;
    let repetition_penalty = number("repetition_penalty", 1.0, (0.01, 100.0))? as f32;
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
    if prompts.len() * n > MAX_CHOICES as usize {
        return Err(bad(format!(
            "'prompt' has {} prompts and 'n' is {n}: at most {MAX_CHOICES} choices a request",
            prompts.len()
        )));
    }
    Ok(Checked {
        prompts,
        stream,
        include_usage,
        max_tokens,
        max_key,
        sampling: Sampling {
            temperature,
            top_p,
            seed,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
            top_k,
            min_p,
            repetition_penalty,
            min_tokens,
            ignore_eos: boolean(fields, "ignore_eos")?,
            format: response_format(fields.get("response_format"))?,
        },
        stop,
        n,
        echo,
    })
}

/// A prompt given as token ids, as text (control tokens by their names).
fn decode_prompt(model: &ChatModel, ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&id| {
            model
                .tokenizer
                .token_bytes(id)
                .unwrap_or_default()
                .iter()
                .copied()
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// OpenAI's `response_format`: text, JSON mode (any object), or
/// structured outputs (an object a JSON Schema admits).
fn response_format(value: Option<&Value>) -> Result<Format, ApiError> {
    let format = match value {
        None | Some(Value::Null) => return Ok(Format::Text),
        Some(Value::Object(format)) => format,
        Some(other) => {
            return Err(bad(format!(
                "'response_format' must be an object such as {{\"type\": \"json_object\"}}, \
                 got {}",
                type_name(other)
            )))
        }
    };
    match format.get("type") {
        // `{}`: nothing asked.
        None if format.is_empty() => Ok(Format::Text),
        Some(Value::String(t)) if t == "text" => Ok(Format::Text),
        Some(Value::String(t)) if t == "json_object" => {
            Ok(Format::Json(Arc::new(Schema::any_object())))
        }
        Some(Value::String(t)) if t == "json_schema" => json_schema(format.get("json_schema")),
        None | Some(Value::Null) => Err(bad(
            "missing required parameter: 'response_format.type'".into()
        )),
        Some(other) => Err(bad(format!(
            "'response_format.type' is {other}; it must be \"text\", \"json_object\" or \
             \"json_schema\""
        ))),
    }
}

/// `response_format.json_schema`: a `name` (OpenAI requires one) and the
/// `schema`, compiled; without a schema, any object.
fn json_schema(value: Option<&Value>) -> Result<Format, ApiError> {
    let spec = match value {
        Some(Value::Object(spec)) => spec,
        None | Some(Value::Null) => {
            return Err(bad(
                "missing required parameter: 'response_format.json_schema'".into(),
            ))
        }
        Some(other) => {
            return Err(bad(format!(
                "'response_format.json_schema' must be an object with a 'name' and a \
                 'schema', got {}",
                type_name(other)
            )))
        }
    };
    match spec.get("name") {
        Some(Value::String(name))
            if (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
        None | Some(Value::Null) => {
            return Err(bad(
                "missing required parameter: 'response_format.json_schema.name'".into(),
            ))
        }
        Some(other) => {
            return Err(bad(format!(
                "'response_format.json_schema.name' is {}; it must be 1 to 64 letters, \
                 digits, '_' or '-'",
                abridged(other)
            )))
        }
    }
    match spec.get("strict") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(other) => {
            return Err(bad(format!(
                "'response_format.json_schema.strict' must be a boolean, got {}",
                type_name(other)
            )))
        }
    }
    let schema = match spec.get("schema") {
        None | Some(Value::Null) => Schema::any_object(),
        Some(schema) => Schema::compile(schema).map_err(|why| {
            bad(format!(
                "'response_format.json_schema.schema' cannot be held to: {why}"
            ))
        })?,
    };
    Ok(Format::Json(Arc::new(schema)))
}

/// A field that is a boolean, false when absent.
fn boolean(fields: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!(
            "'{key}' must be a boolean, got {}",
            type_name(other)
        ))),
    }
}

/// Most choices one request may ask for (OpenAI's limit).
const MAX_CHOICES: u64 = 128;

/// Most likeliest tokens reported beside each generated one (OpenAI's
/// `top_logprobs` limit; vLLM takes as many for the legacy `logprobs`).
const MAX_TOP_LOGPROBS: u64 = 20;

/// OpenAI's `logit_bias`: token ids (as strings) to numbers from -100
/// (banned) to 100 (chosen).
fn logit_bias(value: Option<&Value>, vocabulary: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let biases = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(biases)) => biases,
        Some(other) => {
            return Err(bad(format!(
                "'logit_bias' must be an object of token ids to numbers, got {}",
                type_name(other)
            )))
        }
    };
    biases
        .iter()
        .map(|(key, v)| {
            let id = key
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < vocabulary)
                .ok_or_else(|| {
                    bad(format!(
                        "'logit_bias' key {} must be a token id below this model's vocabulary \
                         of {vocabulary}",
                        abridged(&Value::String(key.clone()))
                    ))
                })?;
            let bias = v
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    bad(format!(
                        "'logit_bias' of token {id} is {}; it must be a number from -100 to 100",
                        abridged(v)
                    ))
                })?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// How many likeliest tokens to report beside each generated one, if
/// log-probabilities are asked for: chat's `logprobs: true` with
/// `top_logprobs: N`, or the legacy completions' `logprobs: N`.
fn logprobs(fields: &Map<String, Value>, api: Api) -> Result<Option<usize>, ApiError> {
    let count = |key: &str| match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= MAX_TOP_LOGPROBS => Ok(Some(v as usize)),
            _ => Err(bad(format!(
                "'{key}' is {n}; it must be a whole number from 0 to {MAX_TOP_LOGPROBS}"
            ))),
        },
        Some(other) => Err(bad(format!(
            "'{key}' must be an integer, got {}",
            type_name(other)
        ))),
    };
    match api {
        Api::Chat => match (boolean(fields, "logprobs")?, count("top_logprobs")?) {
            (true, top) => Ok(Some(top.unwrap_or(0))),
            (false, None | Some(0)) => Ok(None),
            (false, Some(_)) => Err(bad("'top_logprobs' needs 'logprobs' to be true".into())),
        },
        Api::Completions => {
            if fields.get("top_logprobs").is_some_and(|v| !v.is_null()) {
                return Err(bad(
                    "'top_logprobs' is the chat API's; here 'logprobs' is the number of \
                     likeliest tokens to report"
                        .into(),
                ));
            }
            match fields.get("logprobs") {
                Some(Value::Bool(false)) => Ok(None),
                _ => count("logprobs"),
            }
        }
    }
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
    /// The model, for its tokens' text.
    chat: Arc<ChatModel>,
    api: Api,
    prompt_tokens: usize,
    /// A stream that ends with a usage chunk: the chunks before it carry
    /// `"usage": null` (OpenAI's `stream_options.include_usage`).
    usage_chunks: bool,
    /// Whether log-probabilities were asked for.
    logprobs: bool,
    /// Choices per prompt: choice `i` is prompt `i / n`'s.
    n: usize,
    /// Each prompt, when echoed.
    echoes: Vec<Echo>,
}

/// An echoed prompt: its text, and each token's and where its text begins.
struct Echo {
    text: String,
    ids: Vec<u32>,
    /// Each token's start in `text`, in characters (`text_offset`).
    offsets: Vec<usize>,
    /// The text's length in characters: where the generated text's
    /// offsets begin.
    chars: usize,
}

impl Echo {
    fn new(text: String, ids: &[u32], model: &ChatModel) -> Self {
        // Characters before each byte (a token that begins inside a
        // character begins at that character's end, as generated ones do).
        let mut before = vec![0; text.len() + 1];
        let mut chars = 0;
        for (i, b) in text.bytes().enumerate() {
            before[i] = chars;
            chars += usize::from(!(0x80..0xc0).contains(&b));
        }
        before[text.len()] = chars;
        let mut at = 0;
        let offsets = ids
            .iter()
            .map(|&id| {
                let offset = before[at.min(text.len())];
                at += model.tokenizer.token_bytes(id).map_or(0, <[u8]>::len);
                offset
            })
            .collect();
        Echo {
            text,
            ids: ids.to_vec(),
            offsets,
            chars,
        }
    }
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// One streamed chunk of choice `index`, with `delta` text (or the
    /// role, or nothing), its tokens' log-probabilities and a finish reason.
    fn chunk(
        &self,
        index: usize,
        delta: Option<&str>,
        role: bool,
        scored: Option<&[Scored]>,
        finish: Option<Finish>,
    ) -> Value {
        let finish = finish.map(Finish::as_str);
        let logprobs = scored.map_or(Value::Null, |s| self.logprobs_json(s));
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
                    "choices": [{"index": index, "delta": d, "logprobs": logprobs, "finish_reason": finish}],
                })
            }
            Api::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": index, "text": delta.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}],
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

    /// A token's text and bytes (a control token's: its name). A token
    /// that is part of a character is written as OpenAI writes one,
    /// `bytes:\xe2\x80`, so that two such tokens are not both "\u{fffd}".
    fn token(&self, id: u32) -> (String, &[u8]) {
        let bytes = self.chat.tokenizer.token_bytes(id).unwrap_or_default();
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(_) => bytes.iter().fold("bytes:".to_string(), |mut out, b| {
                out.push_str(&format!("\\x{b:02x}"));
                out
            }),
        };
        (text, bytes)
    }

    /// The prompt choice `i` begins with, if echoed.
    fn echo(&self, i: usize) -> Option<&Echo> {
        self.echoes.get(i / self.n)
    }

    /// Choice `i`'s generated tokens, their offsets counted after its
    /// echoed prompt.
    fn after_echo<'s>(&self, i: usize, scored: &'s mut [Scored]) -> &'s [Scored] {
        if let Some(echo) = self.echo(i) {
            for s in scored.iter_mut() {
                s.offset += echo.chars;
            }
        }
        scored
    }

    /// The legacy `logprobs` of an echoed prompt: its first token has
    /// none (nothing comes before it), the others `scores`.
    fn echo_logprobs(&self, echo: &Echo, scores: &[Logprobs]) -> Value {
        let (first, rest) = echo.ids.split_first().expect("a prompt is not empty");
        let scored: Vec<Scored> = rest
            .iter()
            .zip(scores)
            .zip(&echo.offsets[1..])
            .map(|((&id, logprobs), &offset)| Scored {
                id,
                logprobs: logprobs.clone(),
                at: 0,
                offset,
            })
            .collect();
        let mut json = self.logprobs_json(&scored);
        let (token, _) = self.token(*first);
        for (key, value) in [
            ("tokens", json!(token)),
            ("token_logprobs", Value::Null),
            ("top_logprobs", Value::Null),
            ("text_offset", json!(0)),
        ] {
            if let Some(Value::Array(items)) = json.get_mut(key) {
                items.insert(0, value);
            }
        }
        json
    }

    /// The `logprobs` of a choice, or of a chunk of one: chat's `content`
    /// entries, or the legacy completions' four parallel arrays.
    fn logprobs_json(&self, scored: &[Scored]) -> Value {
        match self.api {
            Api::Chat => {
                let entry = |id: u32, logprob: f32| {
                    let (token, bytes) = self.token(id);
                    json!({"token": token, "logprob": logprob, "bytes": bytes})
                };
                let content: Vec<Value> = scored
                    .iter()
                    .map(|s| {
                        let mut e = entry(s.id, s.logprobs.logprob);
                        e["top_logprobs"] = s
                            .logprobs
                            .top
                            .iter()
                            .map(|&(id, lp)| entry(id, lp))
                            .collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Api::Completions => {
                let top: Vec<Value> = scored
                    .iter()
                    .map(|s| {
                        // The likeliest, and the generated token (as
                        // OpenAI and vLLM add it), likeliest first.
                        let mut alternatives = s.logprobs.top.clone();
                        if !alternatives.iter().any(|a| a.0 == s.id) {
                            alternatives.push((s.id, s.logprobs.logprob));
                            alternatives.sort_by(|a, b| b.1.total_cmp(&a.1));
                        }
                        let alternatives: Map<String, Value> = alternatives
                            .iter()
                            .map(|&(id, lp)| (self.token(id).0, json!(lp)))
                            .collect();
                        Value::Object(alternatives)
                    })
                    .collect();
                json!({
                    "tokens": scored.iter().map(|s| self.token(s.id).0).collect::<Vec<_>>(),
                    "token_logprobs": scored.iter().map(|s| s.logprobs.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": scored.iter().map(|s| s.offset).collect::<Vec<_>>(),
                })
            }
        }
    }
}

/// Two legacy `logprobs` objects as one: each array of `b` after `a`'s.
fn join(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        for (key, items) in b {
            if let (Some(Value::Array(first)), Value::Array(items)) = (a.get_mut(&key), items) {
                first.extend(items);
            }
        }
    }
    a
}

/// A generated token whose log-probabilities were asked for.
#[derive(Debug)]
struct Scored {
    id: u32,
    logprobs: Logprobs,
    /// Where its text begins in the choice's text, in bytes.
    at: usize,
    /// The same in characters (the legacy `text_offset`), set when the
    /// token goes out with its text.
    offset: usize,
}

/// Generated text as it comes: tokens decoded, stop sequences cut.
struct Text {
    model: Arc<ChatModel>,
    decoder: StreamDecoder,
    stop: Vec<String>,
    /// Stop sequences count from this many tokens on (`min_tokens`, as
    /// vLLM counts them).
    min_tokens: usize,
    receiver: mpsc::UnboundedReceiver<Event>,
    /// Decoded but not yet released: could be the start of a stop sequence.
    held: String,
    /// Bytes of text released so far, and their characters.
    released: usize,
    released_chars: usize,
    /// Tokens with log-probabilities whose text is not out yet.
    scored: VecDeque<Scored>,
    /// Tokens generated so far.
    tokens: usize,
    /// The end, once known, returned after the last text.
    end: Option<Finish>,
}

/// The next piece of a generation.
enum Piece {
    /// The prompt is read: its tokens' log-probabilities, if asked (an
    /// echo).
    Prompt(Option<Arc<[Logprobs]>>),
    /// Text, and the tokens (with log-probabilities) it begins.
    Text(String, Vec<Scored>),
    /// The end, and how many tokens the choice generated.
    End(Finish, usize),
    Failed(String),
}

impl Text {
    fn new(
        model: Arc<ChatModel>,
        stop: Vec<String>,
        min_tokens: usize,
        receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        Text {
            model,
            decoder: StreamDecoder::new(true),
            stop,
            min_tokens,
            receiver,
            held: String::new(),
            released: 0,
            released_chars: 0,
            scored: VecDeque::new(),
            tokens: 0,
            end: None,
        }
    }

    /// Releases `text` (what follows the text released so far) with the
    /// tokens whose text begins in it; `all` takes the rest of the tokens
    /// too (the end, where trailing tokens may have no text).
    fn release(&mut self, text: String, all: bool) -> Piece {
        let end = self.released + text.len();
        let mut scored = Vec::new();
        while let Some(s) = self.scored.front() {
            if s.at >= end && !all {
                break;
            }
            let mut s = self.scored.pop_front().expect("a front");
            let within = s.at.saturating_sub(self.released);
            s.offset =
                self.released_chars + text.char_indices().take_while(|&(i, _)| i < within).count();
            scored.push(s);
        }
        self.released = end;
        self.released_chars += text.chars().count();
        Piece::Text(text, scored)
    }

    async fn next(&mut self) -> Piece {
        loop {
            if let Some(finish) = self.end {
                return Piece::End(finish, self.tokens);
            }
            match self.receiver.recv().await {
                Some(Event::Token(id, logprobs)) => {
                    self.tokens += 1;
                    if let Some(logprobs) = logprobs {
                        self.scored.push_back(Scored {
                            id,
                            logprobs,
                            at: self.released + self.held.len(),
                            offset: 0,
                        });
                    }
                    match self.decoder.step(&self.model.tokenizer, id) {
                        Ok(piece) => self.held.push_str(&piece),
                        Err(e) => return Piece::Failed(e.to_string()),
                    }
                    let found = self
                        .stop
                        .iter()
                        .filter(|_| self.tokens >= self.min_tokens)
                        .filter_map(|s| self.held.find(s.as_str()))
                        .min();
                    if let Some(at) = found {
                        // Closing the receiver ends the generation at the
                        // engine's next step.
                        self.receiver.close();
                        self.held.truncate(at);
                        self.end = Some(Finish::Stop);
                        // Tokens of the stop sequence and after are not
                        // the text's.
                        let cut = self.released + at;
                        self.scored.retain(|s| s.at < cut);
                        let text = std::mem::take(&mut self.held);
                        if !text.is_empty() || !self.scored.is_empty() {
                            return self.release(text, true);
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
                        let text: String = self.held.drain(..release).collect();
                        return self.release(text, false);
                    }
                }
                Some(Event::Done(finish)) => {
                    self.end = Some(finish);
                    let rest = std::mem::take(&mut self.held) + &self.decoder.finish();
                    if !rest.is_empty() || !self.scored.is_empty() {
                        return self.release(rest, true);
                    }
                }
                Some(Event::Prompt(scores)) => return Piece::Prompt(scores),
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

/// The choices' pieces as they come, one task a choice. A choice's pieces
/// keep their order; dropping the receiver ends every generation (each
/// task's next send fails and drops its `Text`).
/// Each piece comes with its choice's index.
fn merge(choices: Vec<Text>) -> mpsc::Receiver<(usize, Piece)> {
    let (sender, receiver) = mpsc::channel(16);
    for (index, mut text) in choices.into_iter().enumerate() {
        let sender = sender.clone();
        tokio::spawn(async move {
            loop {
                // A choice still waiting for its first token notices at
                // once that the response is gone (and drops its `Text`,
                // which takes it out of the engine's queue).
                let piece = tokio::select! {
                    piece = text.next() => piece,
                    () = sender.closed() => return,
                };
                let last = matches!(piece, Piece::End(..) | Piece::Failed(..));
                if sender.send((index, piece)).await.is_err() || last {
                    return;
                }
            }
        });
    }
    receiver
}

/// A whole response, once every choice's generation ends.
async fn whole(
    reply: Reply,
    n: usize,
    mut pieces: mpsc::Receiver<(usize, Piece)>,
) -> Result<Response, OpenAiError> {
    let mut texts = vec![String::new(); n];
    let mut scored: Vec<Vec<Scored>> = (0..n).map(|_| Vec::new()).collect();
    let mut finishes: Vec<Option<Finish>> = vec![None; n];
    // Each choice's echoed prompt's log-probabilities.
    let mut prompts: Vec<Option<Arc<[Logprobs]>>> = vec![None; n];
    let mut tokens = 0;
    while finishes.iter().any(Option::is_none) {
        let Some((index, piece)) = pieces.recv().await else {
            return Err(ApiError::Internal("generation failed: it stopped".into()).into());
        };
        match piece {
            Piece::Prompt(scores) => prompts[index] = scores,
            Piece::Text(t, s) => {
                texts[index].push_str(&t);
                scored[index].extend(s);
            }
            Piece::End(finish, generated) => {
                finishes[index] = Some(finish);
                tokens += generated;
            }
            Piece::Failed(e) => {
                return Err(ApiError::Internal(format!("generation failed: {e}")).into())
            }
        }
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let mut logprobs = if reply.logprobs {
                reply.logprobs_json(reply.after_echo(i, &mut scored[i]))
            } else {
                Value::Null
            };
            if let Some(echo) = reply.echo(i) {
                texts[i].insert_str(0, &echo.text);
                if reply.logprobs {
                    let scores = prompts[i].as_deref().unwrap_or_default();
                    logprobs = join(reply.echo_logprobs(echo, scores), logprobs);
                }
            }
            let finish = finishes[i].map(Finish::as_str);
            match reply.api {
                Api::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
                Api::Completions => json!({
                    "index": i, "text": texts[i], "logprobs": logprobs, "finish_reason": finish,
                }),
            }
        })
        .collect();
    let object = match reply.api {
        Api::Chat => "chat.completion",
        Api::Completions => "text_completion",
    };
    let body = json!({
        "id": reply.id, "object": object, "created": reply.created,
        "model": reply.model, "choices": choices, "usage": reply.usage(tokens),
    });
    Ok(Json(body).into_response())
}

/// A streamed response: `data:` events as the text comes, each choice's
/// last chunk with its finish reason, the usage if asked, then
/// `data: [DONE]`. A failure after the stream has started is sent as an
/// `error` event before the end.
fn stream(reply: Reply, n: usize, mut pieces: mpsc::Receiver<(usize, Piece)>) -> Response {
    let (frames, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let send = |value: &Value| Bytes::from(format!("data: {value}\n\n"));
        if reply.api == Api::Chat {
            let roles: String = (0..n)
                .map(|i| format!("data: {}\n\n", reply.chunk(i, None, true, None, None)))
                .collect();
            if frames.send(Bytes::from(roles)).await.is_err() {
                return;
            }
        }
        let mut open = n;
        let mut tokens = 0;
        loop {
            let Some((index, piece)) = pieces.recv().await else {
                return;
            };
            let frame = match piece {
                Piece::Prompt(scores) => {
                    let Some(echo) = reply.echo(index) else {
                        continue;
                    };
                    let mut chunk = reply.chunk(index, Some(&echo.text), false, None, None);
                    if reply.logprobs {
                        let scores = scores.as_deref().unwrap_or_default();
                        chunk["choices"][0]["logprobs"] = reply.echo_logprobs(echo, scores);
                    }
                    send(&chunk)
                }
                Piece::Text(t, mut scored) => {
                    let scored = reply.after_echo(index, &mut scored);
                    let scored = reply.logprobs.then_some(scored);
                    send(&reply.chunk(index, Some(&t), false, scored, None))
                }
                Piece::End(finish, generated) => {
                    open -= 1;
                    tokens += generated;
                    let last = reply.chunk(index, None, false, None, Some(finish));
                    let mut out = format!("data: {last}\n\n");
                    if open == 0 {
                        if reply.usage_chunks {
                            out.push_str(&format!("data: {}\n\n", reply.usage_chunk(tokens)));
                        }
                        out.push_str("data: [DONE]\n\n");
                        let _ = frames.send(Bytes::from(out)).await;
                        return;
                    }
                    Bytes::from(out)
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
            // The client is gone: dropping `pieces` ends the generations.
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
            json!({"tools": [{"type": "function"}]}),
            json!({"tool_choice": "auto"}),
            json!({"guided_json": {"type": "object"}}),
            json!({"best_of": 2}),
            json!({"suffix": "x"}),
            json!({"modalities": ["audio"]}),
        ] {
            let e = refuse_unsupported(&fields(refused.clone())).expect_err("refused");
            assert!(format!("{e:?}").contains("does not support"), "{refused}");
        }
        for neutral in [
            json!({"tools": [], "tool_choice": "none",
                   "response_format": {"type": "text"}, "echo": false, "best_of": 1,
                   "suffix": "", "modalities": ["text"], "user": "u", "foo": 1}),
            json!({"tool_choice": null, "best_of": null, "response_format": {}}),
        ] {
            assert!(
                refuse_unsupported(&fields(neutral.clone())).is_ok(),
                "{neutral}"
            );
        }
    }

    #[test]
    fn a_response_format_is_text_json_mode_or_a_schema() {
        let format = |v: Value| {
            response_format(Some(&v)).map_err(|e| match e {
                ApiError::BadRequest(message) => message,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(response_format(None).ok(), Some(Format::Text));
        assert_eq!(format(json!(null)).ok(), Some(Format::Text));
        assert_eq!(format(json!({})).ok(), Some(Format::Text));
        assert_eq!(format(json!({"type": "text"})).ok(), Some(Format::Text));
        let json = |v: Value| matches!(format(v), Ok(Format::Json(_)));
        assert!(json(json!({"type": "json_object"})));
        assert!(json(
            json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true,
                   "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}})
        ));
        assert!(json(
            json!({"type": "json_schema", "json_schema": {"name": "any-1"}})
        ));
        for (refused, says) in [
            (json!("json_object"), "must be an object"),
            (
                json!({"type": "json_schema"}),
                "'response_format.json_schema'",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                "'response_format.json_schema.name'",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
                "1 to 64 letters",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "p", "strict": "yes"}}),
                "must be a boolean",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "p",
                       "schema": {"type": "object", "properties": {"a": {"format": "date"}}}}}),
                "cannot be held to: 'format' at #/properties/a is not supported",
            ),
            (json!({"type": "yaml"}), "\"yaml\"; it must be"),
            (json!({"type": 1}), "1; it must be"),
            (json!({"json_schema": {}}), "'response_format.type'"),
        ] {
            let e = format(refused.clone()).expect_err("refused");
            assert!(e.contains(says), "{refused}: {e}");
        }
    }

    #[test]
    fn log_probabilities_are_asked_for_in_each_api_own_way() {
        let ask = |api, v: Value| logprobs(v.as_object().expect("an object"), api);
        assert_eq!(ask(Api::Chat, json!({})).ok(), Some(None));
        assert_eq!(
            ask(Api::Chat, json!({"logprobs": true})).ok(),
            Some(Some(0))
        );
        assert_eq!(
            ask(Api::Chat, json!({"logprobs": true, "top_logprobs": 5})).ok(),
            Some(Some(5))
        );
        assert_eq!(
            ask(Api::Chat, json!({"logprobs": false, "top_logprobs": 0})).ok(),
            Some(None)
        );
        assert_eq!(
            ask(Api::Completions, json!({"logprobs": 0})).ok(),
            Some(Some(0))
        );
        assert_eq!(
            ask(Api::Completions, json!({"logprobs": 3})).ok(),
            Some(Some(3))
        );
        assert_eq!(
            ask(Api::Completions, json!({"logprobs": false})).ok(),
            Some(None)
        );
        for (api, refused, says) in [
            (Api::Chat, json!({"top_logprobs": 2}), "needs 'logprobs'"),
            (
                Api::Chat,
                json!({"logprobs": true, "top_logprobs": 21}),
                "from 0 to 20",
            ),
            (Api::Chat, json!({"logprobs": 1}), "must be a boolean"),
            (
                Api::Completions,
                json!({"logprobs": true}),
                "must be an integer",
            ),
            (Api::Completions, json!({"logprobs": -1}), "from 0 to 20"),
            (
                Api::Completions,
                json!({"top_logprobs": 2}),
                "the chat API's",
            ),
        ] {
            let e = ask(api, refused.clone()).expect_err("refused");
            assert!(format!("{e:?}").contains(says), "{refused}: {e:?}");
        }
    }

    #[test]
    fn logit_biases_are_token_ids_to_numbers_within_100() {
        assert_eq!(
            logit_bias(Some(&json!({"5": -100, "7": 2.5})), 10).ok(),
            Some(vec![(5, -100.0), (7, 2.5)])
        );
        assert_eq!(logit_bias(Some(&json!({})), 10).ok(), Some(vec![]));
        for (refused, says) in [
            (json!({"10": 1}), "below this model's vocabulary of 10"),
            (json!({"x": 1}), "below this model's vocabulary"),
            (json!({"1": 101}), "from -100 to 100"),
            (json!({"1": "up"}), "from -100 to 100"),
            (json!([1]), "must be an object"),
        ] {
            let e = logit_bias(Some(&refused), 10).expect_err("refused");
            assert!(format!("{e:?}").contains(says), "{refused}: {e:?}");
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
