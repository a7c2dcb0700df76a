//! KServe Open Inference Protocol v2 (REST): server and model metadata,
//! health, and `infer` — BYTES texts for an embedding model, an FP32
//! `[N, width]` feature tensor for a tabular model.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::openai::{tokenize, type_name};
use super::{parse_json, read_encoded_body, ApiError, AppState, Backend, V2Error};

/// The one version of the model (`versions`, `model_version`, and the
/// `/versions/{v}` paths).
pub const MODEL_VERSION: &str = "1";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(
                |state: State<Arc<AppState>>, Path((model, version)): Versioned| async move {
                    check_version(&state, &model, &version)?;
                    model_metadata(state, Path(model)).await
                },
            ),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(
                |state: State<Arc<AppState>>, Path((model, version)): Versioned| async move {
                    check_version(&state, &model, &version)?;
                    model_ready(state, Path(model)).await
                },
            ),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(
                |state: State<Arc<AppState>>,
                 Path((model, version)): Versioned,
                 request: Request| async move {
                    check_version(&state, &model, &version)?;
                    infer(state, Path(model), request).await
                },
            ),
        )
}

/// A `/v2/models/{model}/versions/{version}` path's parameters.
type Versioned = Path<(String, String)>;

/// 404 unless `model` is this worker's and `version` its version.
fn check_version(state: &AppState, model: &str, version: &str) -> Result<(), V2Error> {
    state.check_model(model)?;
    if version != MODEL_VERSION {
        return Err(ApiError::UnknownVersion {
            model: model.to_string(),
            version: version.to_string(),
        }
        .into());
    }
    Ok(())
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "thaw-worker",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

fn readiness(ready: bool, body: Value) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    readiness(state.is_ready(), json!({"ready": state.is_ready()}))
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, V2Error> {
    state.check_model(&model)?;
    let r = state.is_ready();
    Ok(readiness(r, json!({"name": model, "ready": r})))
}

/// A tensor's description in metadata.
fn tensor(name: &str, datatype: &str, shape: &[i64]) -> Value {
    json!({"name": name, "datatype": datatype, "shape": shape})
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, V2Error> {
    state.check_model(&model)?;
    let (inputs, outputs) = match state.backend()? {
        Backend::Embedding { dimensions, .. } => (
            vec![tensor(EMBEDDING_INPUT, "BYTES", &[-1])],
            vec![tensor(EMBEDDING_OUTPUT, "FP32", &[-1, *dimensions as i64])],
        ),
        Backend::Tabular { manifest, .. } => (
            vec![tensor(
                &manifest.input.name,
                "FP32",
                &[-1, manifest.input.features.len() as i64],
            )],
            vec![tensor(&manifest.output.name, "FP32", &[-1, 1])],
        ),
        // Generated through the OpenAI routes only: no tensors to infer
        // with (the gateway, which answers this without waking the model,
        // says the same).
        Backend::Chat { .. } => (Vec::new(), Vec::new()),
    };
    let mut meta = json!({
        "name": state.name,
        "versions": [MODEL_VERSION],
        "platform": "thaw-candle",
        "inputs": inputs,
        "outputs": outputs,
    });
    if let Backend::Tabular { manifest, .. } = state.backend()? {
        meta["parameters"] = json!({"features": manifest.input.features});
    }
    Ok(Json(meta))
}

const EMBEDDING_INPUT: &str = "text";
const EMBEDDING_OUTPUT: &str = "embedding";

/// The header of the binary tensor data extension: the length of the JSON
/// that begins the body; the inputs' binary data follow it.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Option<Vec<InferInput>>,
    outputs: Option<Vec<RequestedOutput>>,
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Option<Value>,
    parameters: Option<Map<String, Value>>,
    /// Its binary data (the extension), cut from the body after the JSON.
    #[serde(skip)]
    binary: Option<Bytes>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    parameters: Option<Map<String, Value>>,
}

/// A boolean parameter, if given; another type is a 400.
fn flag(parameters: &Option<Map<String, Value>>, key: &str) -> Result<Option<bool>, ApiError> {
    match parameters.as_ref().and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "parameter {key:?} must be a boolean, got {}",
            type_name(other)
        ))),
    }
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Response, V2Error> {
    state.check_model(&model)?;
    // Refused after the body is read (see `read_body`).
    let header_length = match request.headers().get(HEADER_LENGTH) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v.as_bytes())
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest("Inference-Header-Content-Length must be a byte count".into())
            }),
    };
    let body = read_encoded_body(request, state.limits.max_body_bytes).await?;
    let req = parse_request(body, header_length?)?;
    let backend = state.backend()?;
    let (input_name, output_name) = match backend {
        Backend::Embedding { .. } => (EMBEDDING_INPUT, EMBEDDING_OUTPUT),
        Backend::Tabular { manifest, .. } => {
            (manifest.input.name.as_str(), manifest.output.name.as_str())
        }
        Backend::Chat { .. } => {
            return Err(ApiError::WrongKind(format!(
                "model {:?} generates text: use POST /v1/chat/completions or /v1/completions",
                state.name
            ))
            .into())
        }
    };
    // Settled before the model runs: a request it would refuse costs none.
    let binary_output = binary_output(&req, output_name)?;
    let input = single_input(req.inputs, input_name)?;
    let (shape, data) = match backend {
        Backend::Embedding {
            batcher,
            tokenizer,
            dimensions,
        } => {
            let texts = texts_of(&input, state.limits.max_inputs)?;
            let tokens = tokenize(tokenizer, &texts)?;
            let vectors = batcher.submit(tokens).await?;
            let shape = [vectors.len(), *dimensions];
            (shape, vectors.into_iter().flatten().collect())
        }
        Backend::Tabular { batcher, manifest } => {
            let width = manifest.input.features.len();
            let rows = rows_of(&input, input_name, width, state.limits.max_inputs)?;
            let scores = batcher.submit(rows).await?;
            if let Some(row) = scores.iter().position(|p| !p.is_finite()) {
                return Err(ApiError::BadRequest(format!(
                    "row {row} of {input_name:?} overflows the model's FP32 arithmetic: \
                     its values are too large"
                ))
                .into());
            }
            ([scores.len(), 1], scores)
        }
        Backend::Chat { .. } => unreachable!("refused above"),
    };
    let mut response = json!({
        "model_name": state.name,
        "model_version": MODEL_VERSION,
    });
    if let Some(id) = req.id {
        response["id"] = json!(id);
    }
    if !binary_output {
        response["outputs"] = json!([out_tensor(output_name, &shape, json!(data))]);
        return Ok(Json(response).into_response());
    }
    // The binary extension's response: the JSON, then the tensor's bytes;
    // its header says where the JSON ends.
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    response["outputs"] = json!([{
        "name": output_name, "datatype": "FP32", "shape": shape,
        "parameters": {"binary_data_size": bytes.len()},
    }]);
    let mut body = serde_json::to_vec(&response).map_err(|e| ApiError::Internal(e.to_string()))?;
    let json_length = body.len();
    body.extend_from_slice(&bytes);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                json_length.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The request from its body: all JSON, or (the binary tensor data
/// extension) `header_length` bytes of JSON followed by the binary data of
/// the inputs that give a `binary_data_size`, in their order.
fn parse_request(body: Bytes, header_length: Option<usize>) -> Result<InferRequest, ApiError> {
    let json_length = header_length.unwrap_or(body.len());
    if json_length > body.len() {
        return Err(ApiError::BadRequest(format!(
            "Inference-Header-Content-Length is {json_length} but the body has {} bytes",
            body.len()
        )));
    }
    match body[..json_length]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
    {
        None if header_length.is_some() => {
            return Err(ApiError::BadRequest(
                "Inference-Header-Content-Length leaves no JSON before the binary data".into(),
            ))
        }
        None => return Err(ApiError::BadRequest("the request body is empty".into())),
        // A struct also reads from a JSON array: refuse one here.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ))
        }
    }
    let mut req: InferRequest = parse_json(&body[..json_length]).map_err(|e| {
        if header_length.is_none() && json_then_more(&body) {
            ApiError::BadRequest(
                "the body goes on after its JSON: binary tensor data needs the \
                 Inference-Header-Content-Length header (the JSON's length)"
                    .into(),
            )
        } else {
            e
        }
    })?;
    let mut at = json_length;
    for input in req.inputs.iter_mut().flatten() {
        let size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None | Some(Value::Null) => continue,
            Some(size) => size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "input {:?}: binary_data_size must be a byte count",
                        input.name
                    ))
                })?,
        };
        if header_length.is_none() {
            return Err(ApiError::BadRequest(format!(
                "input {:?} has a binary_data_size but the request has no \
                 Inference-Header-Content-Length header",
                input.name
            )));
        }
        if input.data.is_some() {
            return Err(ApiError::BadRequest(format!(
                "input {:?} has both 'data' and a binary_data_size",
                input.name
            )));
        }
        if size > body.len() - at {
            return Err(ApiError::BadRequest(format!(
                "input {:?} has a binary_data_size of {size} but only {} bytes of \
                 binary data are left",
                input.name,
                body.len() - at
            )));
        }
        input.binary = Some(body.slice(at..at + size));
        at += size;
    }
    if at != body.len() {
        return Err(ApiError::BadRequest(format!(
            "{} bytes follow the JSON that no input's binary_data_size accounts for",
            body.len() - at
        )));
    }
    Ok(req)
}

/// Whether `body` is a JSON value followed by more than whitespace (binary
/// data sent without the extension's header).
fn json_then_more(body: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<IgnoredAny>();
    matches!(values.next(), Some(Ok(_)))
        && body[values.byte_offset()..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
}

/// Whether the output goes back as binary data: its own `binary_data`
/// parameter, else the request's `binary_data_output` (tritonclient sets
/// it when no output is named). An unknown output name is a 400.
fn binary_output(req: &InferRequest, output_name: &str) -> Result<bool, ApiError> {
    let all = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let Some(wanted) = &req.outputs else {
        return Ok(all);
    };
    let output = match wanted.as_slice() {
        [] => return Ok(all),
        [output] => output,
        [_, ..] => {
            return Err(ApiError::BadRequest(format!(
                "'outputs' names {} outputs; this model has one, {output_name:?}",
                wanted.len()
            )))
        }
    };
    if output.name != output_name {
        return Err(ApiError::BadRequest(format!(
            "unknown output {:?}; this model has {output_name:?}",
            output.name
        )));
    }
    // Triton's classification extension would change what the output is:
    // refused rather than ignored, unless its neutral 0 (no classes).
    let classes = output
        .parameters
        .as_ref()
        .and_then(|p| p.get("classification"));
    if classes.is_some_and(|c| !c.is_null() && c.as_u64() != Some(0)) {
        return Err(ApiError::BadRequest(
            "the 'classification' parameter (Triton's classification extension) is not \
             supported: ask for the output as it is"
                .into(),
        ));
    }
    Ok(flag(&output.parameters, "binary_data")?.unwrap_or(all))
}

fn out_tensor(name: &str, shape: &[usize], data: Value) -> Value {
    json!({"name": name, "datatype": "FP32", "shape": shape, "data": data})
}

/// The model's one input, named `expected`.
fn single_input(inputs: Option<Vec<InferInput>>, expected: &str) -> Result<InferInput, ApiError> {
    let mut inputs =
        inputs.ok_or_else(|| ApiError::BadRequest("missing required field 'inputs'".into()))?;
    if inputs.len() > 1 {
        let named = inputs.iter().filter(|i| i.name == expected).count();
        return Err(ApiError::BadRequest(
            match inputs.iter().find(|i| i.name != expected) {
                Some(other) => format!(
                    "unexpected input {:?}; this model takes one input, {expected:?}",
                    other.name
                ),
                None => format!("input {expected:?} is given {named} times"),
            },
        ));
    }
    let input = inputs
        .pop()
        .ok_or_else(|| ApiError::BadRequest("'inputs' is empty".into()))?;
    if input.name != expected {
        return Err(ApiError::BadRequest(format!(
            "unknown input {:?}; this model takes {expected:?}",
            input.name
        )));
    }
    if input.data.is_none() && input.binary.is_none() {
        return Err(ApiError::BadRequest(format!(
            "input {expected:?} has neither 'data' nor a binary_data_size parameter"
        )));
    }
    Ok(input)
}

/// The element count a shape declares, refusing negative dimensions.
fn element_count(shape: &[i64]) -> Result<usize, ApiError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| ApiError::BadRequest(format!("invalid shape {shape:?}")))
    })
}

/// The data's elements in row-major order: given flat, or nested exactly
/// as the shape is (every level as long as its dimension, leaves at the
/// last); anything else is refused, so that ragged rows cannot shift
/// values into other columns.
fn leaves(input: &InferInput, data: &Value) -> Result<Vec<Value>, ApiError> {
    let declared = element_count(&input.shape)?;
    let out = match data {
        Value::Array(items) if items.iter().all(|v| !v.is_array()) => items.clone(),
        nested => {
            let mut out = Vec::with_capacity(declared);
            if !unnest(nested, &input.shape, &mut out) {
                return Err(ApiError::BadRequest(format!(
                    "input {:?} nests its data unlike its shape {:?}: give the data \
                     flat in row-major order, or nested exactly as the shape",
                    input.name, input.shape
                )));
            }
            out
        }
    };
    check_count(input, out.len())?;
    Ok(out)
}

/// 400 unless `count` elements are what the input's shape declares.
fn check_count(input: &InferInput, count: usize) -> Result<(), ApiError> {
    let declared = element_count(&input.shape)?;
    if count != declared {
        return Err(ApiError::BadRequest(format!(
            "input {:?} has shape {:?} ({declared} elements) but {count} data elements",
            input.name, input.shape,
        )));
    }
    Ok(())
}

/// Collects the leaves of `data` nested as `shape`; false where it is not.
fn unnest(data: &Value, shape: &[i64], out: &mut Vec<Value>) -> bool {
    match (data, shape.split_first()) {
        (Value::Array(items), Some((&dim, rest))) if i64::try_from(items.len()) == Ok(dim) => {
            items.iter().all(|item| unnest(item, rest, out))
        }
        (Value::Array(_), _) | (_, Some(_)) => false,
        (leaf, None) => {
            out.push(leaf.clone());
            true
        }
    }
}

fn check_batch(n: usize, max_inputs: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::BadRequest("the input holds no elements".into()));
    }
    if n > max_inputs {
        return Err(ApiError::BadRequest(format!(
            "the input has {n} rows; at most {max_inputs} are allowed"
        )));
    }
    Ok(())
}

/// The elements of a binary BYTES tensor: each a 4-byte little-endian
/// length, then that many bytes.
fn binary_strings<'a>(name: &str, mut bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, ApiError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let cut = |what: &str| {
            ApiError::BadRequest(format!(
                "input {name:?}'s binary data ends inside element {}'s {what}",
                out.len()
            ))
        };
        let (length, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| cut("length"))?;
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(cut("bytes"));
        }
        let (element, rest) = rest.split_at(length);
        out.push(element);
        bytes = rest;
    }
    Ok(out)
}

fn texts_of(input: &InferInput, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    if input.datatype != "BYTES" {
        return Err(ApiError::BadRequest(format!(
            "input {EMBEDDING_INPUT:?} must be BYTES, got {}",
            input.datatype
        )));
    }
    let shape_ok = matches!(input.shape.as_slice(), [_] | [_, 1]);
    if !shape_ok {
        return Err(ApiError::BadRequest(format!(
            "input {EMBEDDING_INPUT:?} must have shape [N] or [N, 1], got {:?}",
            input.shape
        )));
    }
    // An empty text is embedded, as sentence-transformers does (KServe's
    // BYTES elements may be empty; OpenAI's route refuses them, as OpenAI).
    if let Some(bytes) = &input.binary {
        let elements = binary_strings(EMBEDDING_INPUT, bytes)?;
        check_count(input, elements.len())?;
        check_batch(elements.len(), max_inputs)?;
        return elements
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                String::from_utf8(e.to_vec())
                    .map_err(|_| ApiError::BadRequest(format!("text {i} is not UTF-8")))
            })
            .collect();
    }
    let values = leaves(input, input.data.as_ref().unwrap_or(&Value::Null))?;
    check_batch(values.len(), max_inputs)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            other => Err(ApiError::BadRequest(format!(
                "text {i} must be a string, got {}",
                type_name(&other)
            ))),
        })
        .collect()
}

fn rows_of(
    input: &InferInput,
    name: &str,
    width: usize,
    max_inputs: usize,
) -> Result<Vec<Vec<f32>>, ApiError> {
    if input.datatype != "FP32" {
        return Err(ApiError::BadRequest(format!(
            "input {name:?} must be FP32, got {}",
            input.datatype
        )));
    }
    let rows = match input.shape.as_slice() {
        [n, w] if *w == width as i64 && *n >= 0 => *n as usize,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "input {name:?} must have shape [N, {width}], got {:?}",
                input.shape
            )))
        }
    };
    check_batch(rows, max_inputs)?;
    let finite = |i: usize, x: Option<f32>, what: &str| {
        x.filter(|x| x.is_finite()).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "element {i} of {name:?} must be a finite FP32 number, got {what}"
            ))
        })
    };
    let numbers = match &input.binary {
        Some(bytes) => {
            if bytes.len() % 4 != 0 {
                return Err(ApiError::BadRequest(format!(
                    "input {name:?}'s binary data is {} bytes, not a whole number of FP32s",
                    bytes.len()
                )));
            }
            check_count(input, bytes.len() / 4)?;
            bytes
                .chunks_exact(4)
                .enumerate()
                .map(|(i, b)| {
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    finite(i, Some(x), &x.to_string())
                })
                .collect::<Result<Vec<f32>, _>>()?
        }
        None => leaves(input, input.data.as_ref().unwrap_or(&Value::Null))?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let what = if v.is_number() {
                    "an out-of-range number"
                } else {
                    type_name(v)
                };
                finite(i, v.as_f64().map(|x| x as f32), what)
            })
            .collect::<Result<Vec<f32>, _>>()?,
    };
    Ok(numbers.chunks(width).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64], data: Value) -> InferInput {
        InferInput {
            name: name.into(),
            shape: shape.to_vec(),
            datatype: datatype.into(),
            data: Some(data),
            parameters: None,
            binary: None,
        }
    }

    #[test]
    fn feature_rows_flat_or_nested() {
        let flat = input("features", "FP32", &[2, 2], json!([1, 2, 3, 4]));
        let nested = input("features", "FP32", &[2, 2], json!([[1, 2], [3, 4]]));
        for i in [flat, nested] {
            let rows = rows_of(&i, "features", 2, 10).expect("valid");
            assert_eq!(rows, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        }
    }

    #[test]
    fn feature_rows_refused() {
        let cases = [
            input("features", "INT32", &[1, 2], json!([1, 2])),
            input("features", "FP32", &[1, 3], json!([1, 2, 3])),
            input("features", "FP32", &[2, 2], json!([1, 2, 3])),
            input("features", "FP32", &[1, 2], json!([1, "2"])),
            input("features", "FP32", &[0, 2], json!([])),
            input("features", "FP32", &[11, 2], json!(vec![0; 22])),
            input("features", "FP32", &[-1, 2], json!([1, 2])),
            input("features", "FP32", &[1, 2], json!([1, 1e300])),
            // Ragged rows with the right total, and nesting unlike the shape.
            input("features", "FP32", &[2, 2], json!([[1, 2, 3], [4]])),
            input("features", "FP32", &[2, 2], json!([[1, 2], 3, 4])),
            input("features", "FP32", &[1, 2], json!([[[1, 2]]])),
            input("features", "FP32", &[2, 2], json!([[[1, 2], [3, 4]]])),
            input("features", "FP32", &[1, 2], json!(3)),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(rows_of(c, "features", 2, 10).is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn texts() {
        let ok = input("text", "BYTES", &[2], json!(["a", "b"]));
        assert_eq!(texts_of(&ok, 4).expect("valid"), vec!["a", "b"]);
        let column = input("text", "BYTES", &[1, 1], json!([["a"]]));
        assert!(texts_of(&column, 4).is_ok());
        assert!(texts_of(&input("text", "FP32", &[1], json!([1])), 4).is_err());
        // KServe's BYTES elements may be empty (OpenAI's route refuses them).
        assert_eq!(
            texts_of(&input("text", "BYTES", &[1], json!([""])), 4).expect("valid"),
            vec![""]
        );
        assert!(texts_of(
            &input("text", "BYTES", &[2, 2], json!(["a", "b", "c", "d"])),
            4
        )
        .is_err());
        assert!(texts_of(&input("text", "BYTES", &[5], json!(vec!["a"; 5])), 4).is_err());
        assert!(texts_of(&input("text", "BYTES", &[2], json!([["a", "b"]])), 4).is_err());
    }
}
