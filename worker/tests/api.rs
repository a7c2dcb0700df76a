//! The worker's public API, end to end: the real `thaw-worker` binary on an
//! ephemeral port or a unix socket, plain HTTP, the credit-score model (in the
//! repository) and MiniLM (fetched by `scripts/fetch-models.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use thaw_tests::{registry_model, repo_root, Client, Proc};

const START: Duration = Duration::from_secs(60);

struct Worker {
    proc: Proc,
    client: Client,
    _dir: Option<tempfile::TempDir>,
}

fn start(model: PathBuf, name: &str, extra: &[&str], unix: bool) -> Worker {
    let dir = unix.then(|| tempfile::tempdir().expect("temp dir"));
    let listen = match &dir {
        Some(d) => format!("unix:{}", d.path().join("w.sock").display()),
        None => "127.0.0.1:0".to_string(),
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thaw-worker"));
    cmd.arg("--model")
        .arg(model)
        .args(["--name", name, "--listen", &listen])
        .args(extra)
        .env("RUST_LOG", "info,thaw_worker::batcher=debug");
    let mut proc = Proc::spawn(cmd).expect("thaw-worker starts");
    let ready = proc.wait_event("ready", START);
    let address = ready["address"].as_str().expect("address").to_string();
    Worker {
        proc,
        client: Client::new(&address),
        _dir: dir,
    }
}

fn credit_score(extra: &[&str]) -> Worker {
    start(
        repo_root().join("configs/models/credit-score"),
        "credit-score",
        extra,
        true,
    )
}

fn minilm(extra: &[&str]) -> Worker {
    start(registry_model("all-MiniLM-L6-v2"), "minilm", extra, false)
}

fn features_request(rows: &[Vec<f64>]) -> Value {
    json!({"id": "req-1", "inputs": [{
        "name": "features", "datatype": "FP32", "shape": [rows.len(), 10], "data": rows,
    }]})
}

fn reference() -> (Vec<Vec<f64>>, Vec<f64>) {
    let path = repo_root().join("configs/models/credit-score/reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("reference"))
        .expect("reference is JSON");
    let inputs = serde_json::from_value(r["inputs"].clone()).expect("inputs");
    let outputs = serde_json::from_value(r["outputs"].clone()).expect("outputs");
    (inputs, outputs)
}

#[test]
fn credit_score_matches_its_reference_over_a_unix_socket() {
    let w = credit_score(&[]);
    let (inputs, expected) = reference();
    let r = w
        .client
        .post_json("/v2/models/credit-score/infer", &features_request(&inputs));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["id"], "req-1");
    assert_eq!(body["model_name"], "credit-score");
    let out = &body["outputs"][0];
    assert_eq!(out["name"], "probability");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([inputs.len(), 1]));
    let got: Vec<f64> = serde_json::from_value(out["data"].clone()).expect("data");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!((g - e).abs() < 1e-5, "row {i}: {g} vs reference {e}");
    }

    let meta = w.client.get("/v2/models/credit-score").json();
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "features", "datatype": "FP32", "shape": [-1, 10]})
    );
    assert_eq!(meta["outputs"][0]["name"], "probability");
    assert_eq!(w.client.get("/v2/health/ready").status, 200);
    assert_eq!(w.client.get("/v2/health/live").status, 200);
    assert_eq!(
        w.client.get("/v2/models/credit-score/ready").json()["ready"],
        true
    );
    assert_eq!(w.client.get("/v2").json()["name"], "thaw-worker");
    let models = w.client.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "credit-score");
    assert!(models["data"][0]["created"].is_u64(), "{models}");
    // OpenAI's retrieve-model route gives the list's entry.
    assert_eq!(
        w.client.get("/v1/models/credit-score").json(),
        models["data"][0]
    );

    // KServe's versioned paths, with the model's one version, are the
    // same routes.
    assert_eq!(meta["versions"], json!(["1"]));
    let versioned = w.client.post_json(
        "/v2/models/credit-score/versions/1/infer",
        &features_request(&inputs),
    );
    assert_eq!(versioned.status, 200);
    assert_eq!(versioned.json()["outputs"], body["outputs"]);
    assert_eq!(versioned.json()["model_version"], "1");
    assert_eq!(
        w.client.get("/v2/models/credit-score/versions/1").json(),
        meta
    );
    assert_eq!(
        w.client
            .get("/v2/models/credit-score/versions/1/ready")
            .json()["ready"],
        true
    );
}

/// A second worker on a socket another one serves refuses to start, and
/// says why once.
#[test]
fn a_socket_in_use_is_refused_with_its_reason_once() {
    let w = credit_score(&[]);
    let address = w.client.address().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_thaw-worker"))
        .arg("--model")
        .arg(repo_root().join("configs/models/credit-score"))
        .args(["--listen", &address])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = "another process is listening on it";
    assert!(
        stderr.contains(&format!("cannot listen on {address}: {reason}")),
        "{stderr}"
    );
    assert_eq!(stderr.matches(reason).count(), 1, "{stderr}");
    // The first one serves on.
    let (inputs, _) = reference();
    let r = w
        .client
        .post_json("/v2/models/credit-score/infer", &features_request(&inputs));
    assert_eq!(r.status, 200);
}

/// Asserts an OpenAI-shaped error.
fn openai_error(r: &thaw_tests::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error"]["code"], code, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    assert!(e["error"]["type"].is_string(), "{e}");
    // OpenAI's clients read `param` (null where no one field is at fault).
    assert!(e["error"].get("param").is_some(), "{e}");
}

/// Asserts a KServe-v2-shaped error.
fn v2_error(r: &thaw_tests::Response, status: u16) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
}

#[test]
fn credit_score_refuses_bad_input_and_keeps_serving() {
    let w = credit_score(&["--max-inputs", "4", "--max-body-bytes", "4096"]);
    let infer = "/v2/models/credit-score/infer";
    let row = vec![50.0; 10];
    let bad: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"inputs\": [".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("no inputs", json!({}).to_string().into_bytes(), 400),
        ("empty inputs", json!({"inputs": []}).to_string().into_bytes(), 400),
        ("wrong datatype", json!({"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, 10], "data": row}]}).to_string().into_bytes(), 400),
        ("wrong width", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 5], "data": row}]}).to_string().into_bytes(), 400),
        ("shape/data mismatch", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 10], "data": row}]}).to_string().into_bytes(), 400),
        ("a string feature", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1, "x"]}]}).to_string().into_bytes(), 400),
        ("wrong input name", json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 10], "data": row}]}).to_string().into_bytes(), 400),
        ("zero rows", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [0, 10], "data": []}]}).to_string().into_bytes(), 400),
        ("too many rows", features_request(&vec![row.clone(); 5]).to_string().into_bytes(), 400),
        ("unknown output", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10], "data": row}], "outputs": [{"name": "nope"}]}).to_string().into_bytes(), 400),
        ("an output asked for twice", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10], "data": row}], "outputs": [{"name": "probability"}, {"name": "probability"}]}).to_string().into_bytes(), 400),
        ("Triton's classification", json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10], "data": row}], "outputs": [{"name": "probability", "parameters": {"classification": 1}}]}).to_string().into_bytes(), 400),
        ("body over the limit", vec![b' '; 5000], 413),
    ];
    for (what, body, status) in bad {
        let r = w.client.request("POST", infer, Some(&body));
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        v2_error(&r, status);
    }
    // A chunked body over the limit (no Content-Length to refuse it by).
    let chunk = vec![b'x'; 3000];
    let mut raw = format!(
        "POST {infer} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..2 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = w.client.raw(&raw).expect("a response");
    v2_error(&r, 413);

    v2_error(
        &w.client.post_json(
            "/v2/models/other/infer",
            &features_request(std::slice::from_ref(&row)),
        ),
        404,
    );
    v2_error(&w.client.get("/v2/models/other"), 404);
    v2_error(&w.client.get("/v2/models/other/ready"), 404);
    for path in [
        "/v2/models/credit-score/versions/2",
        "/v2/models/credit-score/versions/2/ready",
    ] {
        let r = w.client.get(path);
        v2_error(&r, 404);
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("version \"2\"")),
            "{path}: {}",
            r.json()
        );
    }
    v2_error(
        &w.client.post_json(
            "/v2/models/credit-score/versions/2/infer",
            &features_request(std::slice::from_ref(&row)),
        ),
        404,
    );
    openai_error(&w.client.get("/v1/models/other"), 404, "model_not_found");
    v2_error(&w.client.get("/v3/nothing"), 404);
    openai_error(
        &w.client.post_json(
            "/v1/embeddings",
            &json!({"model": "credit-score", "input": "hi"}),
        ),
        404,
        "unsupported_model_kind",
    );
    openai_error(
        &w.client.request("DELETE", "/v1/models", None),
        405,
        "method_not_allowed",
    );

    // Still serving, with the right answer; classification's neutral 0
    // (no classes) is no refusal.
    let mut neutral = features_request(&[row]);
    neutral["outputs"] = json!([{"name": "probability", "parameters": {"classification": 0}}]);
    let r = w.client.post_json(infer, &neutral);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn embed(client: &Client, body: Value) -> Value {
    let r = client.post_json("/v1/embeddings", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn vector(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

#[test]
fn minilm_embeddings_openai_and_kserve() {
    let w = minilm(&[]);
    let one = embed(
        &w.client,
        json!({"model": "minilm", "input": "A man is eating food."}),
    );
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], "minilm");
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    let v0 = vector(&one["data"][0]["embedding"]);
    assert_eq!(v0.len(), 384);
    assert_eq!(one["usage"]["prompt_tokens"], 8);
    assert_eq!(one["usage"]["total_tokens"], 8);

    let texts = ["A man is eating food.", "thaw", "Zürich café 🚀"];
    let many = embed(&w.client, json!({"model": "minilm", "input": texts}));
    let data = many["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
    }
    let first = vector(&data[0]["embedding"]);
    let same = first.iter().zip(&v0).all(|(a, b)| (a - b).abs() < 1e-5);
    assert!(same, "batched and single vectors differ");

    let b64 = embed(
        &w.client,
        json!({"model": "minilm", "input": texts, "encoding_format": "base64"}),
    );
    for (d, f) in b64["data"].as_array().expect("data").iter().zip(data) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().expect("a base64 string"))
            .expect("valid base64");
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            decoded,
            vector(&f["embedding"]),
            "base64 and float disagree"
        );
    }

    let infer =
        json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]});
    let r = w.client.post_json("/v2/models/minilm/infer", &infer);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = &r.json()["outputs"][0];
    assert_eq!(out["name"], "embedding");
    assert_eq!(out["shape"], json!([3, 384]));
    let flat = vector(&out["data"]);
    assert!(flat[..384]
        .iter()
        .zip(&v0)
        .all(|(a, b)| (a - b).abs() < 1e-5));
    // Token ids in place of texts (OpenAI's input may be ids; LangChain
    // sends them): a text's ids, without special tokens, embed as the
    // text does. The ids come from the model's tokenizer.json (without its
    // fixed padding to 128).
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(registry_model("all-MiniLM-L6-v2").join("tokenizer.json"))
            .expect("tokenizer");
    tokenizer.with_padding(None);
    let ids: Vec<Vec<u32>> = texts[..2]
        .iter()
        .map(|t| {
            tokenizer
                .encode(*t, false)
                .expect("encodes")
                .get_ids()
                .to_vec()
        })
        .collect();
    let by_ids = embed(&w.client, json!({"model": "minilm", "input": ids}));
    let one_by_ids = embed(&w.client, json!({"model": "minilm", "input": ids[0]}));
    // Each with its [CLS] and [SEP].
    let counted: usize = ids.iter().map(|i| i.len() + 2).sum();
    assert_eq!(by_ids["usage"]["prompt_tokens"], counted);
    for (i, d) in by_ids["data"].as_array().expect("data").iter().enumerate() {
        let close = vector(&d["embedding"])
            .iter()
            .zip(vector(&data[i]["embedding"]))
            .all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close, "input {i}: its ids embed unlike its text");
    }
    assert_eq!(one_by_ids["data"][0], by_ids["data"][0]);
    let r = w.client.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": [101, 40000]}),
    );
    openai_error(&r, 400, "invalid_request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("40000") && m.contains("vocabulary")));

    let meta = w.client.get("/v2/models/minilm").json();
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));
}

#[test]
fn minilm_refuses_bad_input_and_keeps_serving() {
    let w = minilm(&["--max-inputs", "3"]);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("no model", json!({"input": "x"}), 400, "invalid_request"),
        (
            "unknown model",
            json!({"model": "gpt-9", "input": "x"}),
            404,
            "model_not_found",
        ),
        (
            "no input",
            json!({"model": "minilm"}),
            400,
            "invalid_request",
        ),
        (
            "empty string",
            json!({"model": "minilm", "input": ""}),
            400,
            "invalid_request",
        ),
        (
            "empty array",
            json!({"model": "minilm", "input": []}),
            400,
            "invalid_request",
        ),
        (
            "a number",
            json!({"model": "minilm", "input": 5}),
            400,
            "invalid_request",
        ),
        (
            "mixed array",
            json!({"model": "minilm", "input": ["a", null]}),
            400,
            "invalid_request",
        ),
        (
            "too many inputs",
            json!({"model": "minilm", "input": ["a", "b", "c", "d"]}),
            400,
            "invalid_request",
        ),
        (
            "bad encoding",
            json!({"model": "minilm", "input": "a", "encoding_format": "hex"}),
            400,
            "invalid_request",
        ),
        (
            "bad dimensions",
            json!({"model": "minilm", "input": "a", "dimensions": 128}),
            400,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = w.client.post_json("/v1/embeddings", &body);
        assert_eq!(r.status, status, "{what}");
        openai_error(&r, status, code);
    }
    openai_error(
        &w.client
            .request("POST", "/v1/embeddings", Some(b"{not json")),
        400,
        "invalid_request",
    );
    openai_error(
        &w.client
            .request("POST", "/v1/embeddings", Some(&vec![b' '; 3 << 20])),
        413,
        "request_too_large",
    );
    openai_error(&w.client.get("/v1/nothing"), 404, "not_found");
    let infer = "/v2/models/minilm/infer";
    let texts = |dt: &str, shape: Value, data: Value| json!({"inputs": [{"name": "text", "datatype": dt, "shape": shape, "data": data}]});
    v2_error(
        &w.client
            .post_json(infer, &texts("FP32", json!([1]), json!([1.0]))),
        400,
    );
    v2_error(
        &w.client
            .post_json(infer, &texts("BYTES", json!([2]), json!(["a"]))),
        400,
    );
    // An empty text is no error on KServe (see
    // minilm_kserve_binary_texts_and_empty_ones); a number is.
    v2_error(
        &w.client
            .post_json(infer, &texts("BYTES", json!([1]), json!([3]))),
        400,
    );
    v2_error(
        &w.client.post_json(
            infer,
            &texts("BYTES", json!([4]), json!(["a", "b", "c", "d"])),
        ),
        400,
    );

    // Still serving.
    embed(&w.client, json!({"model": "minilm", "input": "still here"}));
}

#[test]
fn minilm_concurrent_requests_each_get_their_own_vector() {
    let w = minilm(&["--max-batch-size", "16"]);
    let texts: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "request number {i} about {}",
                ["cats", "loans", "GPUs"][i % 3]
            )
        })
        .collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            vector(
                &embed(&w.client, json!({"model": "minilm", "input": t}))["data"][0]["embedding"],
            )
        })
        .collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let c = w.client.clone();
                s.spawn(move || {
                    vector(
                        &embed(&c, json!({"model": "minilm", "input": t}))["data"][0]["embedding"],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let close = a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(
            close,
            "request {i} got another request's vector or a wrong one"
        );
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    // A long batching wait keeps the request in flight while the signal lands.
    let mut w = minilm(&["--max-wait-ms", "1500"]);
    let client = w.client.clone();
    let in_flight = std::thread::spawn(move || {
        client.post_json(
            "/v1/embeddings",
            &json!({"model": "minilm", "input": "in flight"}),
        )
    });
    w.proc.wait_stderr("queued", START);
    w.proc.signal("TERM");
    let r = in_flight.join().expect("request thread");
    assert_eq!(r.status, 200, "the in-flight request was dropped");
    w.proc.wait_event("stopped", START);
    let status = w.proc.wait_exit(START);
    assert!(status.success(), "exit status {status:?}");
}

/// A KServe request in the binary tensor data extension's form: the JSON,
/// then each binary input's bytes; returns the body and the JSON's length
/// (the `Inference-Header-Content-Length`).
fn binary_request(json: &Value, binary: &[u8]) -> (Vec<u8>, String) {
    let mut body = json.to_string().into_bytes();
    let header = body.len().to_string();
    body.extend_from_slice(binary);
    (body, header)
}

fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Splits a binary response into its JSON and the bytes after it, as a
/// Triton client does by `Inference-Header-Content-Length`.
fn binary_response(r: &thaw_tests::Response) -> (Value, Vec<u8>) {
    let length: usize = r
        .header("inference-header-content-length")
        .expect("a binary response names its JSON's length")
        .parse()
        .expect("a byte count");
    let json = serde_json::from_slice(&r.body[..length]).expect("the JSON part");
    (json, r.body[length..].to_vec())
}

#[test]
fn kserve_binary_tensor_data_and_compressed_bodies() {
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;

    let w = credit_score(&[]);
    let infer = "/v2/models/credit-score/infer";
    let (inputs, expected) = reference();
    let by_json = w.client.post_json(infer, &features_request(&inputs)).json();
    let json_scores = vector(&by_json["outputs"][0]["data"]);
    let v2 = w.client.get("/v2").json();
    assert_eq!(v2["extensions"], json!(["binary_tensor_data"]));

    // Binary in, binary out (what tritonclient sends by default: no
    // outputs named, `binary_data_output`).
    let floats: Vec<u8> = inputs
        .iter()
        .flatten()
        .flat_map(|x| (*x as f32).to_le_bytes())
        .collect();
    let header = json!({"id": "b1", "parameters": {"binary_data_output": true}, "inputs": [{
        "name": "features", "datatype": "FP32", "shape": [inputs.len(), 10],
        "parameters": {"binary_data_size": floats.len()},
    }]});
    let (body, length) = binary_request(&header, &floats);
    let hl = [("inference-header-content-length", length.as_str())];
    let r = w.client.request_with("POST", infer, &hl, Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let (meta, data) = binary_response(&r);
    assert_eq!(meta["id"], "b1");
    let out = &meta["outputs"][0];
    assert_eq!(out["name"], "probability");
    assert_eq!(out["shape"], json!([inputs.len(), 1]));
    assert!(out.get("data").is_none(), "{out}");
    assert_eq!(out["parameters"]["binary_data_size"], data.len());
    let scores = le_f32s(&data);
    assert_eq!(scores, json_scores, "binary and JSON scores differ");
    for (i, (g, e)) in scores.iter().zip(&expected).enumerate() {
        assert!((f64::from(*g) - e).abs() < 1e-5, "row {i}: {g} vs {e}");
    }

    // An output asked for as JSON overrides `binary_data_output`; asked
    // for by name as binary, it is binary.
    for (binary, is_binary) in [(false, false), (true, true)] {
        let mut h = header.clone();
        h["outputs"] = json!([{"name": "probability", "parameters": {"binary_data": binary}}]);
        let (body, length) = binary_request(&h, &floats);
        let hl = [("inference-header-content-length", length.as_str())];
        let r = w.client.request_with("POST", infer, &hl, Some(&body));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.header("inference-header-content-length").is_some(),
            is_binary
        );
        if !is_binary {
            assert_eq!(vector(&r.json()["outputs"][0]["data"]), json_scores);
        }
    }
    // All JSON, with the header saying so (Triton takes this too).
    let plain = features_request(&inputs).to_string();
    let whole = plain.len().to_string();
    let hl = [("inference-header-content-length", whole.as_str())];
    let r = w
        .client
        .request_with("POST", infer, &hl, Some(plain.as_bytes()));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(vector(&r.json()["outputs"][0]["data"]), json_scores);

    // The extension's mistakes, each a 400 that says what is wrong.
    let one_row = &floats[..40];
    let with_size = |size: usize| {
        json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10],
            "parameters": {"binary_data_size": size}}]})
    };
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        {
            let (b, l) = binary_request(&with_size(80), one_row);
            ("size past the end", b, Some(l), "only 40 bytes")
        },
        {
            let (b, l) = binary_request(&with_size(20), one_row);
            ("bytes left over", b, Some(l), "20 bytes follow")
        },
        {
            let (b, l) = binary_request(&with_size(38), &one_row[..38]);
            ("not whole FP32s", b, Some(l), "not a whole number")
        },
        {
            let (b, l) = binary_request(&with_size(36), &one_row[..36]);
            ("too few elements", b, Some(l), "9 data elements")
        },
        {
            let (b, _) = binary_request(&with_size(40), one_row);
            (
                "no header",
                b,
                None,
                "needs the Inference-Header-Content-Length",
            )
        },
        {
            let (b, _) = binary_request(&with_size(40), one_row);
            (
                "header past the body",
                b,
                Some("100000".into()),
                "but the body has",
            )
        },
        {
            let mut h = with_size(40);
            h["inputs"][0]["data"] = json!(vec![0; 10]);
            let (b, l) = binary_request(&h, one_row);
            ("data and binary", b, Some(l), "both 'data' and")
        },
        {
            let nan = [f32::NAN.to_le_bytes(); 10].concat();
            let (b, l) = binary_request(&with_size(40), &nan);
            ("NaN", b, Some(l), "finite FP32")
        },
    ];
    for (what, body, length, says) in cases {
        let headers: Vec<(&str, &str)> = length
            .iter()
            .map(|l| ("inference-header-content-length", l.as_str()))
            .collect();
        let r = w.client.request_with("POST", infer, &headers, Some(&body));
        v2_error(&r, 400);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{what}: {error}");
    }

    // Compressed bodies (tritonclient's request_compression_algorithm).
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let mut zlib = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(plain.as_bytes()).expect("zlib");
    let zlib = zlib.finish().expect("zlib");
    for (encoding, body) in [("gzip", &gz), ("deflate", &zlib)] {
        let r = w
            .client
            .request_with("POST", infer, &[("content-encoding", encoding)], Some(body));
        assert_eq!(
            r.status,
            200,
            "{encoding}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(vector(&r.json()["outputs"][0]["data"]), json_scores);
    }
    let r = w
        .client
        .request_with("POST", infer, &[("content-encoding", "br")], Some(&gz));
    v2_error(&r, 415);
    let r = w.client.request_with(
        "POST",
        infer,
        &[("content-encoding", "gzip")],
        Some(plain.as_bytes()),
    );
    v2_error(&r, 400);

    // A row whose values overflow inside the model is refused by its
    // index, not scored as if its features were zero.
    let huge = vec![3e38; 10];
    let r = w
        .client
        .post_json(infer, &features_request(&[inputs[0].clone(), huge]));
    v2_error(&r, 400);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("row 1") && error.contains("overflow"),
        "{error}"
    );

    // Two inputs: the one the model does not take is named.
    let mut two = features_request(&inputs[..1]);
    let extra = json!({"name": "extra", "datatype": "FP32", "shape": [1, 10], "data": vec![0; 10]});
    two["inputs"].as_array_mut().expect("inputs").push(extra);
    let r = w.client.post_json(infer, &two);
    v2_error(&r, 400);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("\"extra\"")));
}

#[test]
fn minilm_kserve_binary_texts_and_empty_ones() {
    let w = minilm(&[]);
    let texts = ["A man is eating food.", "", "Zürich café 🚀"];
    let json_request =
        json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]});
    let r = w.client.post_json("/v2/models/minilm/infer", &json_request);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let by_json = vector(&r.json()["outputs"][0]["data"]);
    // The empty text is embedded (as sentence-transformers does): a unit vector.
    let norm: f32 = by_json[384..768].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");

    let mut bytes = Vec::new();
    for t in texts {
        bytes.extend_from_slice(&(t.len() as u32).to_le_bytes());
        bytes.extend_from_slice(t.as_bytes());
    }
    let header = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
        "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": true}}]});
    let (body, length) = binary_request(&header, &bytes);
    let hl = [("inference-header-content-length", length.as_str())];
    let r = w
        .client
        .request_with("POST", "/v2/models/minilm/infer", &hl, Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (meta, data) = binary_response(&r);
    assert_eq!(meta["outputs"][0]["shape"], json!([3, 384]));
    assert_eq!(
        le_f32s(&data),
        by_json,
        "binary and JSON texts embed differently"
    );

    // A length prefix that runs past the end, and bytes that are not UTF-8.
    for (what, bad, says) in [
        (
            "cut",
            [&9u32.to_le_bytes()[..], b"abc"].concat(),
            "ends inside element 0",
        ),
        (
            "not UTF-8",
            [&2u32.to_le_bytes()[..], b"\xff\xfe"].concat(),
            "not UTF-8",
        ),
    ] {
        let header = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": bad.len()}}]});
        let (body, length) = binary_request(&header, &bad);
        let hl = [("inference-header-content-length", length.as_str())];
        let r = w
            .client
            .request_with("POST", "/v2/models/minilm/infer", &hl, Some(&body));
        v2_error(&r, 400);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{what}: {error}");
    }
}
