//! GPU tests: what only a GPU can check, each skipping with a printed reason
//! where there is none (a build without the `cuda` feature, or no device).
//! On a GPU machine, which has no Rust toolchain, they run from a test
//! binary built here: `scripts/build-cuda.sh` builds the worker; for these,
//! `cargo test --release --features cuda -p thaw-worker --test gpu --no-run`
//! with the same environment, and carry the binary it names (stripped).
//! There, `THAW_WORKER_BIN` names the carried worker and
//! `THAW_GPU_TEST_MODEL` a BERT model directory (MiniLM is not there:
//! `bench/gpu/synthetic_bert.py DIR` makes one of its shape).
//!
//! - the tensor encoder on the GPU gives MiniLM's vectors (fetched by
//!   `scripts/fetch-models.sh`) within 1e-3 of the packed CPU encoder;
//! - a standby process on the GPU registers MiniLM's weights ahead and,
//!   activated with MiniLM, serves it;
//! - a GPU worker hibernated and resumed answers as before, and its GPU
//!   memory was released meanwhile;
//! - every upload method of `--upload-bench` verifies what it copied;
//! - SmolLM2 on the GPU (the tensor decoder) gives llama.cpp's logits and
//!   greedy tokens within the tolerance of its CPU test (`THAW_GPU_TEST_CHAT`
//!   names the GGUF's directory there; else the fetch step's).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::Device;
use serde_json::{json, Value};
use thaw_tests::{registry_model, Client};
use thaw_worker::models::embedding::{tokenize, EmbeddingModel};

/// GPU 0, or why not (printed, and the test returns).
fn gpu(test: &str) -> Option<Device> {
    if !cfg!(feature = "cuda") {
        eprintln!("{test}: skipped: this build has no CUDA (scripts/build-cuda.sh builds one)");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("{test}: skipped: no GPU here ({e})");
            None
        }
    }
}

/// The worker binary: `THAW_WORKER_BIN`, else this build's.
fn worker_bin() -> PathBuf {
    std::env::var_os("THAW_WORKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_thaw-worker")))
}

/// The model: `THAW_GPU_TEST_MODEL`, else MiniLM from the fetch step.
fn model_dir() -> PathBuf {
    std::env::var_os("THAW_GPU_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| registry_model("all-MiniLM-L6-v2"))
}

const TEXTS: [&str; 3] = [
    "a",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Serverless inference on a GPU: contexts made ahead, weights at PCIe speed.",
];

fn largest_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn the_encoder_on_the_gpu_matches_the_cpu() {
    let Some(device) = gpu("the_encoder_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let dir = model_dir();
    let cpu = EmbeddingModel::load(&dir, &Device::Cpu).expect("loads on the CPU");
    let on_gpu = EmbeddingModel::load(&dir, &device).expect("loads on the GPU");
    let texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let tokens = tokenize(cpu.tokenizer(), &texts).expect("tokenizes");
    let want = cpu.encode(&tokens).expect("CPU encodes");
    let got = on_gpu.encode(&tokens).expect("GPU encodes");
    let d = largest_difference(&want, &got);
    assert!(d < 1e-3, "largest difference {d}");
}

/// A worker process's JSON lines, read on a thread.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Worker {
    fn start(args: &[&str]) -> Worker {
        let mut child = Command::new(worker_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("thaw-worker starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Worker { child, lines }
    }

    fn wait(&self, event: &str) -> Value {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(300)) {
                Ok(m) if m["event"] == event => return m,
                Ok(_) => continue,
                Err(e) => panic!("no {event:?} message: {e}"),
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn embedding(client: &Client) -> Vec<f64> {
    let r = client.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": [TEXTS[1]]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"][0]["embedding"]
        .as_array()
        .expect("a vector")
        .iter()
        .filter_map(Value::as_f64)
        .collect()
}

#[test]
fn a_standby_process_on_the_gpu_serves_what_it_is_given() {
    if gpu("a_standby_process_on_the_gpu_serves_what_it_is_given").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = format!("unix:{}", dir.path().join("w.sock").display());
    // Its weights registered ahead, as the gateway asks of standby
    // processes for the GPU models' snapshots.
    let weights = model_dir().join("model.safetensors");
    let mut w = Worker::start(&[
        "--standby",
        "--device",
        "cuda:0",
        "--lifeline",
        "--preregister",
        weights.to_str().expect("utf-8 path"),
    ]);
    let standby = w.wait("standby");
    assert_eq!(standby["device"], "cuda:0");
    assert_eq!(standby["preregistered"][0]["registered"], true, "{standby}");
    let activation = json!({"model": model_dir(), "name": "minilm",
                            "kind": "embedding", "listen": socket});
    let stdin = w.child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "{activation}").expect("activation sent");
    let ready = w.wait("ready");
    assert_eq!(ready["tier"], "standby");
    let v = embedding(&Client::new(&socket));
    assert!(!v.is_empty() && v.iter().all(|x| x.is_finite()), "{v:?}");
}

#[test]
fn a_hibernated_gpu_worker_answers_as_before() {
    if gpu("a_hibernated_gpu_worker_answers_as_before").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = format!("unix:{}", dir.path().join("w.sock").display());
    let model = model_dir();
    let model = model.to_string_lossy();
    let w = Worker::start(&[
        "--model", &model, "--name", "minilm", "--device", "cuda:0", "--listen", &socket,
    ]);
    w.wait("ready");
    let client = Client::new(&socket);
    let before = embedding(&client);
    let run = |flag: &str| -> Value {
        let out = Command::new(worker_bin())
            .args([flag, &w.child.id().to_string()])
            .output()
            .expect("runs");
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let hibernated = run("--hibernate");
    if hibernated["error"]
        .as_str()
        .is_some_and(|e| e.contains("cuCheckpoint"))
    {
        eprintln!("skipped: the driver cannot hibernate: {hibernated}");
        return;
    }
    assert_eq!(hibernated["state"], "checkpointed", "{hibernated}");
    let resumed = run("--resume");
    assert_eq!(resumed["state"], "running", "{resumed}");
    let after = embedding(&client);
    let d = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-6, "the output changed across hibernation by {d}");
}

/// SmolLM2's directory: `THAW_GPU_TEST_CHAT`, else the fetch step's.
fn chat_dir() -> PathBuf {
    std::env::var_os("THAW_GPU_TEST_CHAT")
        .map(PathBuf::from)
        .unwrap_or_else(|| registry_model("smollm2"))
}

#[derive(serde::Deserialize)]
struct ChatCase {
    ids: Vec<u32>,
    top_logits: Vec<(u32, f32)>,
    greedy: Vec<u32>,
}

/// The most likely token and its logit.
fn argmax(logits: &[f32]) -> (usize, f32) {
    logits.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
    )
}

#[test]
fn smollm2_on_the_gpu_matches_llama_cpp() {
    use thaw_worker::models::chat::llama::{Logits, Step};
    use thaw_worker::models::chat::{ChatModel, Decoder};

    let Some(device) = gpu("smollm2_on_the_gpu_matches_llama_cpp") else {
        return;
    };
    let dir = chat_dir();
    if !dir.is_dir() {
        eprintln!(
            "smollm2_on_the_gpu_matches_llama_cpp: skipped: no {} (THAW_GPU_TEST_CHAT)",
            dir.display()
        );
        return;
    }
    let model = ChatModel::load(&dir, &device).expect("SmolLM2 loads on the GPU");
    assert!(matches!(model.decoder, Decoder::Device(_)));
    // The same fixture and tolerance as the tensor decoder's CPU test
    // (tests/chat_model.rs): compiled in, as the GPU machine runs this
    // binary away from the source tree.
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<ChatCase>,
    }
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/smollm2_greedy.json")).expect("fixture");
    let run = |cache: &mut _, tokens: &[u32]| {
        let mut steps = [Step {
            cache,
            tokens,
            logits: Logits::Last,
        }];
        model
            .decoder
            .forward(&mut steps, false)
            .expect("forward")
            .remove(0)
    };
    for case in &fixture.cases {
        let mut cache = model.decoder.new_cache();
        let mut logits = run(&mut cache, &case.ids);
        for &(id, want) in &case.top_logits {
            let got = logits[id as usize];
            assert!(
                (got - want).abs() <= 1.5,
                "logit of {id}: {got}, llama.cpp {want}"
            );
        }
        for (i, &want) in case.greedy.iter().enumerate() {
            let (top, max) = argmax(&logits);
            let got = logits[want as usize];
            assert!(
                top as u32 == want || max - got <= 1.5,
                "step {i}: llama.cpp's {want} has {got}, our top {top} has {max}"
            );
            logits = run(&mut cache, &[want]);
        }
    }
    // Decode speed, one sequence: printed for the note (not asserted).
    let mut cache = model.decoder.new_cache();
    run(&mut cache, &fixture.cases[0].ids);
    let started = std::time::Instant::now();
    let mut token = fixture.cases[0].greedy[0];
    for _ in 0..64 {
        let logits = run(&mut cache, &[token]);
        token = argmax(&logits).0 as u32;
    }
    eprintln!(
        "smollm2 on the GPU: {:.1} tokens/s decoding one sequence",
        64.0 / started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_upload_method_verifies_what_it_copied() {
    if gpu("every_upload_method_verifies_what_it_copied").is_none() {
        return;
    }
    // 96 MiB of non-zero bytes as one safetensors tensor.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.safetensors");
    let n = 96usize << 20;
    let header = json!({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).to_string();
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = Vec::with_capacity(8 + header.len() + n);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend((0..n).map(|i| (i % 251) as u8 + 1));
    std::fs::write(&path, file).expect("written");
    let report = thaw_worker::gpu::upload_bench(&path, 0);
    for method in ["pinned", "pinned_read"] {
        let runs = report["methods"][method].as_array().expect("staged runs");
        assert!(!runs.is_empty(), "{method}: {report}");
        for run in runs {
            assert_eq!(run["verified"], true, "{method}: {run}");
        }
    }
    assert!(report["gb_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
}
