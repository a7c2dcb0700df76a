//! OpenAI-compatible routes: `POST /v1/embeddings`, `GET /v1/models` and
//! `GET /v1/models/{model}`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, read_body, ApiError, AppState, Backend, OpenAiError};
use crate::models::embedding::{self, Tokens};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

async fn model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    state.check_model(&model)?;
    Ok(Json(model_object(&state)))
}

/// The model as OpenAI's model object (with thaw's `kind`).
fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.name,
        "object": "model",
        "created": state.created,
        "owned_by": "thaw",
        "kind": state.kind,
    })
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
}

/// How the vectors are written in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, OpenAiError> {
    let body = read_body(request, state.limits.max_body_bytes).await?;
    let req: EmbeddingsRequest = parse_json(&body)?;
    let model = req
        .model
        .ok_or_else(|| ApiError::BadRequest("missing required parameter: 'model'".into()))?;
    state.check_model(&model)?;
    let inputs = inputs(req.input, state.limits.max_inputs)?;
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "encoding_format {other:?} is not supported (float, base64)"
            ))
            .into())
        }
    };
    let Backend::Embedding {
        batcher,
        tokenizer,
        dimensions,
    } = state.backend()?
    else {
        return Err(ApiError::WrongKind(format!(
            "model {:?} does not produce embeddings: its kind is {}",
            state.name, state.kind
        ))
        .into());
    };
    if let Some(d) = req.dimensions {
        if d != *dimensions as i64 {
            return Err(ApiError::BadRequest(format!(
                "dimensions {d} is not supported: this model's vectors have {dimensions}"
            ))
            .into());
        }
    }
    let tokens = match &inputs {
        Inputs::Texts(texts) => tokenize(tokenizer, texts)?,
        Inputs::Ids(ids) => {
            let vocabulary = tokenizer.get_vocab_size(true);
            for (i, ids) in ids.iter().enumerate() {
                if let Some(id) = ids.iter().find(|&&id| id as usize >= vocabulary) {
                    return Err(ApiError::BadRequest(format!(
                        "'input[{i}]' has token id {id}, beyond this model's vocabulary of \
                         {vocabulary}"
                    ))
                    .into());
                }
            }
            embedding::tokenize_ids(tokenizer, ids)
                .map_err(|e| ApiError::BadRequest(format!("cannot use the token ids: {e}")))?
        }
    };
    let prompt_tokens: usize = tokens.iter().map(|t| t.ids.len()).sum();
    let vectors = batcher.submit(tokens).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(v)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": state.name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}

/// What `input` holds: texts, or (as OpenAI also takes) token ids.
#[derive(Debug, PartialEq, Eq)]
enum Inputs {
    /// A string or an array of strings.
    Texts(Vec<String>),
    /// An array of token ids (one input) or of such arrays: the model's
    /// own ids of a text, without special tokens.
    Ids(Vec<Vec<u32>>),
}

/// The inputs of an `input`: a string, an array of strings, an array of
/// token ids or an array of those; none empty, at most `max_inputs`.
fn inputs(input: Option<Value>, max_inputs: usize) -> Result<Inputs, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let items = match input {
        None | Some(Value::Null) => return Err(bad("missing required parameter: 'input'".into())),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(bad("'input' is an empty string".into()))
        }
        Some(Value::String(s)) => return Ok(Inputs::Texts(vec![s])),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad("'input' is an empty array".into()))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(format!(
                "'input' must be a string or an array of strings or token ids, got {}",
                type_name(&other)
            )))
        }
    };
    // One input's token ids: every item a number.
    if items[0].is_number() {
        return Ok(Inputs::Ids(vec![token_ids(&items, "'input'")?]));
    }
    if items.len() > max_inputs {
        return Err(bad(format!(
            "'input' has {} items; at most {max_inputs} are allowed",
            items.len()
        )));
    }
    if items[0].is_array() {
        let ids = items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Array(ids) => token_ids(ids, &format!("'input[{i}]'")),
                other => Err(bad(format!(
                    "'input[{i}]' must be an array of token ids, like the items before it, \
                     got {}",
                    type_name(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Inputs::Ids(ids));
    }
    let texts = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if s.is_empty() => {
                Err(bad(format!("'input[{i}]' is an empty string")))
            }
            Value::String(s) => Ok(s),
            other => Err(bad(format!(
                "'input[{i}]' must be a string, got {}",
                type_name(&other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inputs::Texts(texts))
}

/// An array of token ids, none negative or fractional, not empty.
fn token_ids(items: &[Value], what: &str) -> Result<Vec<u32>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::BadRequest(format!("{what} is an empty array")));
    }
    items
        .iter()
        .enumerate()
        .map(|(k, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{what} item {k} must be a token id (a whole number ≥ 0), got {v}"
                    ))
                })
        })
        .collect()
}

pub(crate) fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
) -> Result<Vec<Tokens>, ApiError> {
    embedding::tokenize(tokenizer, texts)
        .map_err(|e| ApiError::BadRequest(format!("cannot tokenize input: {e}")))
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A vector as OpenAI's base64 encoding: little-endian f32 bytes.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shapes() {
        assert_eq!(
            inputs(Some(json!("hi")), 4),
            Ok(Inputs::Texts(vec!["hi".to_string()]))
        );
        assert_eq!(
            inputs(Some(json!([5, 6, 7])), 4),
            Ok(Inputs::Ids(vec![vec![5, 6, 7]]))
        );
        assert_eq!(
            inputs(Some(json!([[5], [6, 7]])), 4),
            Ok(Inputs::Ids(vec![vec![5], vec![6, 7]]))
        );
        // One input's ids are not held to max_inputs (they are one input).
        assert!(inputs(Some(json!(vec![1; 10])), 4).is_ok());
        for bad in [
            json!([]),
            json!([""]),
            json!(["a", 1]),
            json!(vec!["a"; 5]),
            json!({"a": 1}),
            json!([1, "a"]),
            json!([1, -2]),
            json!([1.5]),
            json!([[1], []]),
            json!([[1], "a"]),
            json!([[1], [1u64 << 40]]),
            json!(vec![vec![1]; 5]),
        ] {
            assert!(inputs(Some(bad.clone()), 4).is_err(), "{bad}");
        }
        assert!(inputs(None, 4).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("valid base64");
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
