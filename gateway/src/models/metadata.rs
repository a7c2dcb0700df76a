//! KServe v2 metadata of a model, derived from its files without starting
//! it: what the worker would say, without waking it.

use serde_json::{json, Value};

use crate::config::ModelConfig;

/// KServe v2 metadata from the model's files: what the worker would say,
/// without waking it.
pub fn metadata(m: &ModelConfig) -> Value {
    let kind = m
        .kind
        .or_else(|| thaw_snapshot::detect_kind(&m.source).ok());
    let read = |file: &str| -> Value {
        std::fs::read_to_string(m.source.join(file))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let tensor = |name: &Value, dt: &str, shape: Value| json!({"name": name, "datatype": dt, "shape": shape});
    let (inputs, outputs, parameters) = match kind {
        Some(thaw_snapshot::ModelKind::Embedding) => {
            let dims = read("config.json")["hidden_size"].clone();
            (
                vec![tensor(&json!("text"), "BYTES", json!([-1]))],
                vec![tensor(&json!("embedding"), "FP32", json!([-1, dims]))],
                Value::Null,
            )
        }
        Some(thaw_snapshot::ModelKind::Tabular) => {
            let manifest = read(thaw_snapshot::kind::TABULAR_MANIFEST);
            let features = manifest["input"]["features"].clone();
            let width = features.as_array().map_or(0, Vec::len);
            (
                vec![tensor(
                    &manifest["input"]["name"],
                    "FP32",
                    json!([-1, width]),
                )],
                vec![tensor(&manifest["output"]["name"], "FP32", json!([-1, 1]))],
                json!({"features": features}),
            )
        }
        _ => (Vec::new(), Vec::new(), Value::Null),
    };
    let mut meta = json!({
        "name": m.name,
        "versions": [crate::proxy::route::MODEL_VERSION],
        "platform": "thaw-candle",
        "inputs": inputs,
        "outputs": outputs,
    });
    if !parameters.is_null() {
        meta["parameters"] = parameters;
    }
    meta
}
