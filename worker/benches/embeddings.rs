//! The embedding forward pass on its own: `EmbeddingModel::encode` on texts
//! tokenized beforehand, so tokenization is not in the measured time (it is
//! measured apart, as `tokenize/32`). One short sentence measures latency;
//! batches of 8 and 32 measure throughput in sentences per second.
//! `encode/batchN` runs the model directory's f32 weights and
//! `encode/q8_0_batchN`, right after it, a q8_0 snapshot built from it into
//! a temp dir, so the two alternate within one run.
//!
//! The sentences are `bench/baselines/short_sentences.txt`, shared with the
//! sentence-transformers baseline (`bench/baselines/st_embeddings.py`);
//! `bench/embeddings.sh` runs both and compares. Needs the MiniLM model in
//! `$THAW_MODELS` or `~/.cache/thaw/models`; skips with a message without it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use criterion::{criterion_main, Criterion, Throughput};
use thaw_snapshot::{BuildOptions, SnapshotDtype};
use thaw_worker::models::embedding::{tokenize, EmbeddingModel, Tokens};

const SENTENCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../bench/baselines/short_sentences.txt"
);

fn model_dir() -> Option<PathBuf> {
    let models = match std::env::var_os("THAW_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/thaw/models"),
    };
    Some(models.join("all-MiniLM-L6-v2"))
}

fn sentences() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(SENTENCES).with_context(|| SENTENCES.to_string())?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Builds a q8_0 snapshot of `source` in `dir` and loads it.
fn q8_0_snapshot(source: &Path, dir: &Path) -> anyhow::Result<EmbeddingModel> {
    let out = dir.join("q8_0");
    thaw_snapshot::build(&BuildOptions {
        source: source.to_path_buf(),
        out: out.clone(),
        dtype: SnapshotDtype::Q8_0,
        progress: None,
    })?;
    Ok(EmbeddingModel::load(&out, &Device::Cpu)?)
}

/// Each batch size on every model in turn: `(prefix, model)`.
fn bench_encode(c: &mut Criterion, models: &[(&str, &EmbeddingModel)], tokens: &[Tokens]) {
    let mut group = c.benchmark_group("encode");
    for n in [1usize, 8, 32] {
        let batch = &tokens[..n.min(tokens.len())];
        group.throughput(Throughput::Elements(batch.len() as u64));
        for (prefix, model) in models {
            group.bench_function(format!("{prefix}batch{n}"), |b| {
                b.iter(|| model.encode(batch).expect("the bench batch encodes"))
            });
        }
    }
    group.finish();
}

fn bench_tokenize(c: &mut Criterion, model: &EmbeddingModel, texts: &[String]) {
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function(format!("batch{}", texts.len()), |b| {
        b.iter(|| tokenize(model.tokenizer(), texts).expect("the bench texts tokenize"))
    });
    group.finish();
}

fn embeddings(c: &mut Criterion) {
    let Some(dir) = model_dir().filter(|d| d.join("model.safetensors").is_file()) else {
        println!(
            "skipping the embedding bench: all-MiniLM-L6-v2 is not in $THAW_MODELS or \
             ~/.cache/thaw/models (run scripts/fetch-models.sh minilm)"
        );
        return;
    };
    let texts = match sentences() {
        Ok(texts) if texts.len() >= 32 => texts,
        Ok(texts) => panic!(
            "{SENTENCES} has {} sentences, the bench needs 32",
            texts.len()
        ),
        Err(e) => panic!("reading the bench sentences: {e:#}"),
    };
    let model = EmbeddingModel::load(&dir, &Device::Cpu).expect("MiniLM loads");
    let snapshots = tempfile::tempdir().expect("a temp dir for the q8_0 snapshot");
    let q8 = match q8_0_snapshot(&dir, snapshots.path()) {
        Ok(model) => model,
        Err(e) => panic!("the q8_0 snapshot of MiniLM: {e:#}"),
    };
    let tokens = tokenize(model.tokenizer(), &texts).expect("the bench texts tokenize");
    bench_encode(c, &[("", &model), ("q8_0_", &q8)], &tokens);
    bench_tokenize(c, &model, &texts[..32]);
}

/// Criterion's group, written out so it can carry a doc comment.
fn benches() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(2))
        .measurement_time(std::time::Duration::from_secs(5))
        .configure_from_args();
    embeddings(&mut c);
}

criterion_main!(benches);
