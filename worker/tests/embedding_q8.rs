//! What q8_0 costs in accuracy: MiniLM built into a q8_0 snapshot (its
//! dense matrices as GGML q8_0 blocks, run by candle's quantized matmul),
//! loaded, and compared per sentence with sentence-transformers' vectors
//! (bench/baselines/make_embedding_fixture.py) and with an f32 snapshot of
//! the same model. The f32 path is held to cosine ≥ 0.999
//! (embedding_reference.rs); q8_0 to [`MIN_COSINE`]. The measured minimum
//! and mean are printed (`cargo test --test embedding_q8 -- --nocapture`).
//! Needs the MiniLM model: `scripts/fetch-models.sh minilm` (the test
//! command runs it).

use std::path::{Path, PathBuf};

use candle_core::Device;
use thaw_snapshot::mmap::QuantizedWeights;
use thaw_snapshot::{BuildOptions, SnapshotDtype};
use thaw_worker::models::embedding::{tokenize, EmbeddingModel};

/// Per sentence, against sentence-transformers and against f32. Measured
/// on the fixture: minimum 0.9976 (`empty_like`), mean 0.9994.
const MIN_COSINE: f32 = 0.995;

struct Case {
    name: String,
    text: String,
    embedding: Vec<f32>,
}

fn minilm() -> PathBuf {
    let models = match std::env::var_os("THAW_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/thaw/models")
        }
    };
    let dir = models.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "MiniLM is missing from {}: run scripts/fetch-models.sh minilm",
        dir.display()
    );
    dir
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture readable");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            text: c["text"].as_str().expect("text").to_string(),
            embedding: c["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Builds a snapshot of `source` in `dtype` under `dir` and loads it.
fn snapshot(source: &Path, dir: &Path, dtype: SnapshotDtype) -> EmbeddingModel {
    let out = dir.join(dtype.as_str());
    let manifest = thaw_snapshot::build(&BuildOptions {
        source: source.to_path_buf(),
        out: out.clone(),
        dtype,
        progress: None,
    })
    .expect("the snapshot builds");
    assert_eq!(manifest.dtype, dtype.as_str());
    println!(
        "{} snapshot: {:.1} MB of weights",
        dtype.as_str(),
        manifest.sizes.weight_bytes as f64 / 1e6
    );
    EmbeddingModel::load(&out, &Device::Cpu).expect("the snapshot loads")
}

/// Each case's vector from `model`: one at a time, and all in one batch.
fn vectors(model: &EmbeddingModel, cases: &[Case]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let tokens = tokenize(model.tokenizer(), &texts).expect("tokenizes");
    let alone = tokens
        .iter()
        .map(|t| {
            let mut v = model.encode(std::slice::from_ref(t)).expect("encodes");
            v.pop().expect("one vector")
        })
        .collect();
    (alone, model.encode(&tokens).expect("encodes the batch"))
}

fn summary(what: &str, cosines: &[f32]) -> f32 {
    let min = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    println!(
        "q8_0 vs {what}: min cosine {min:.5}, mean {mean:.5} over {} vectors",
        cosines.len()
    );
    min
}

#[test]
fn q8_0_snapshot_stays_close_to_sentence_transformers() {
    let source = minilm();
    let dir = tempfile::tempdir().expect("temp dir");
    let q8 = snapshot(&source, dir.path(), SnapshotDtype::Q8_0);
    let f32 = snapshot(&source, dir.path(), SnapshotDtype::F32);
    let quantized = QuantizedWeights::open(&dir.path().join("q8_0/model.safetensors"))
        .expect("the q8_0 weights map");
    assert!(!quantized.is_empty(), "the q8_0 snapshot has q8_0 tensors");

    let cases = cases();
    let (q8_alone, q8_batch) = vectors(&q8, &cases);
    let (f32_alone, _) = vectors(&f32, &cases);
    let mut vs_reference = Vec::new();
    let mut vs_f32 = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (how, v) in [("alone", &q8_alone[i]), ("batched", &q8_batch[i])] {
            let c = cosine(v, &case.embedding);
            println!("  {} ({how}): cosine {c:.5}", case.name);
            assert!(
                c >= MIN_COSINE,
                "{} ({how}): cosine {c} < {MIN_COSINE} against sentence-transformers",
                case.name
            );
            vs_reference.push(c);
            vs_f32.push(cosine(v, &f32_alone[i]));
        }
    }
    summary("sentence-transformers", &vs_reference);
    let f32_min = summary("the f32 snapshot", &vs_f32);
    assert!(f32_min >= MIN_COSINE, "q8_0 vs f32: {f32_min}");
}
