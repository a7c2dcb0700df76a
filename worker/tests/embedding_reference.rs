//! The embedding path against sentence-transformers: vectors computed once
//! by the library users compare against (bench/baselines/make_embedding_fixture.py)
//! must be matched with cosine ≥ 0.999 per sentence, in any batch.
//! Needs the MiniLM model: `scripts/fetch-models.sh minilm` (the test
//! command runs it).

use std::path::PathBuf;

use candle_core::Device;
use thaw_worker::models::embedding::{tokenize, EmbeddingModel};

const MIN_COSINE: f32 = 0.999;

struct Case {
    name: String,
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn models_dir() -> PathBuf {
    match std::env::var_os("THAW_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/thaw/models")
        }
    }
}

fn load() -> EmbeddingModel {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "MiniLM is missing from {}: run scripts/fetch-models.sh minilm",
        dir.display()
    );
    EmbeddingModel::load(&dir, &Device::Cpu).expect("MiniLM loads")
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
            tokens: c["tokens"].as_u64().expect("tokens") as usize,
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

fn check(model: &EmbeddingModel, cases: &[&Case]) {
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let tokens = tokenize(model.tokenizer(), &texts).expect("tokenizes");
    for (case, t) in cases.iter().zip(&tokens) {
        assert_eq!(
            t.ids.len(),
            case.tokens,
            "{}: token count (truncation)",
            case.name
        );
    }
    let vectors = model.encode(&tokens).expect("encodes");
    for (case, v) in cases.iter().zip(&vectors) {
        assert_eq!(v.len(), case.embedding.len(), "{}: dimensions", case.name);
        let c = cosine(v, &case.embedding);
        assert!(c >= MIN_COSINE, "{}: cosine {c} < {MIN_COSINE}", case.name);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{}: not normalized ({norm})",
            case.name
        );
    }
}

#[test]
fn matches_sentence_transformers_alone_and_batched() {
    let model = load();
    let cases = cases();
    assert_eq!(
        model.max_seq_length(),
        256,
        "sentence_bert_config.json's limit"
    );
    // One at a time: no padding at all.
    for case in &cases {
        check(&model, &[case]);
    }
    // All together: short inputs padded to the long one.
    let all: Vec<&Case> = cases.iter().collect();
    check(&model, &all);
    // Reversed, so padding sits after different inputs.
    let reversed: Vec<&Case> = cases.iter().rev().collect();
    check(&model, &reversed);
}
