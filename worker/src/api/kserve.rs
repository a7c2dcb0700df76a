//! KServe Open Inference Protocol v2 (REST): server and model metadata,
//! health, and `infer` — BYTES texts for an embedding model, an FP32
//! `[N, width]` feature tensor for a tabular model.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::{tokenize, type_name};
use super::{parse_json, read_body, ApiError, AppState, Backend, V2Error};

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
        "extensions": [],
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

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Option<Vec<InferInput>>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Json<Value>, V2Error> {
    state.check_model(&model)?;
    if request
        .headers()
        .contains_key("inference-header-content-length")
    {
        return Err(ApiError::BadRequest(
            "the binary tensor data extension is not supported; send JSON data".into(),
        )
        .into());
    }
    let body = read_body(request, state.limits.max_body_bytes).await?;
    let req: InferRequest = parse_json(&body)?;
    let input = single_input(req.inputs)?;
    let backend = state.backend()?;
    let (output_name, output) = match backend {
        Backend::Embedding {
            batcher,
            tokenizer,
            dimensions,
        } => {
            let texts = texts_of(&input, state.limits.max_inputs)?;
            let tokens = tokenize(tokenizer, &texts)?;
            let vectors = batcher.submit(tokens).await?;
            let shape = [vectors.len(), *dimensions];
            let data: Vec<f32> = vectors.into_iter().flatten().collect();
            (
                EMBEDDING_OUTPUT.to_string(),
                out_tensor(EMBEDDING_OUTPUT, &shape, data),
            )
        }
        Backend::Tabular { batcher, manifest } => {
            let width = manifest.input.features.len();
            let rows = rows_of(&input, &manifest.input.name, width, state.limits.max_inputs)?;
            let scores = batcher.submit(rows).await?;
            let shape = [scores.len(), 1];
            let name = manifest.output.name.clone();
            let t = out_tensor(&name, &shape, scores);
            (name, t)
        }
        Backend::Chat { .. } => {
            return Err(ApiError::WrongKind(format!(
                "model {:?} generates text: use POST /v1/chat/completions or /v1/completions",
                state.name
            ))
            .into())
        }
    };
    if let Some(wanted) = req.outputs {
        if let Some(unknown) = wanted.iter().find(|o| o.name != output_name) {
            return Err(ApiError::BadRequest(format!(
                "unknown output {:?}; this model has {output_name:?}",
                unknown.name
            ))
            .into());
        }
    }
    let mut response = json!({
        "model_name": state.name,
        "model_version": MODEL_VERSION,
        "outputs": [output],
    });
    if let Some(id) = req.id {
        response["id"] = json!(id);
    }
    Ok(Json(response))
}

fn out_tensor(name: &str, shape: &[usize], data: Vec<f32>) -> Value {
    json!({"name": name, "datatype": "FP32", "shape": shape, "data": data})
}

fn single_input(inputs: Option<Vec<InferInput>>) -> Result<InferInput, ApiError> {
    let mut inputs =
        inputs.ok_or_else(|| ApiError::BadRequest("missing required field 'inputs'".into()))?;
    match inputs.len() {
        1 => Ok(inputs.remove(0)),
        0 => Err(ApiError::BadRequest("'inputs' is empty".into())),
        n => Err(ApiError::BadRequest(format!(
            "'inputs' has {n} tensors; this model takes one"
        ))),
    }
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
fn leaves(input: &InferInput) -> Result<Vec<Value>, ApiError> {
    let declared = element_count(&input.shape)?;
    let out = match &input.data {
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
    if out.len() != declared {
        return Err(ApiError::BadRequest(format!(
            "input {:?} has shape {:?} ({declared} elements) but {} data elements",
            input.name,
            input.shape,
            out.len()
        )));
    }
    Ok(out)
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

fn texts_of(input: &InferInput, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    if input.name != EMBEDDING_INPUT {
        return Err(ApiError::BadRequest(format!(
            "unknown input {:?}; this model takes {EMBEDDING_INPUT:?}",
            input.name
        )));
    }
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
    let values = leaves(input)?;
    check_batch(values.len(), max_inputs)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() => Ok(s),
            Value::String(_) => Err(ApiError::BadRequest(format!("text {i} is empty"))),
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
    if input.name != name {
        return Err(ApiError::BadRequest(format!(
            "unknown input {:?}; this model takes {name:?}",
            input.name
        )));
    }
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
    let values = leaves(input)?;
    let numbers = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "element {i} of {name:?} must be a finite FP32 number, got {}",
                        if v.is_number() {
                            "an out-of-range number"
                        } else {
                            type_name(v)
                        }
                    ))
                })
        })
        .collect::<Result<Vec<f32>, _>>()?;
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
            data,
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
            input("x", "FP32", &[1, 2], json!([1, 2])),
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
        assert!(texts_of(&input("text", "BYTES", &[1], json!([""])), 4).is_err());
        assert!(texts_of(
            &input("text", "BYTES", &[2, 2], json!(["a", "b", "c", "d"])),
            4
        )
        .is_err());
        assert!(texts_of(&input("text", "BYTES", &[5], json!(vec!["a"; 5])), 4).is_err());
        assert!(texts_of(&input("text", "BYTES", &[2], json!([["a", "b"]])), 4).is_err());
    }
}
