//! The tensor encoder (what a GPU runs: padded batches, a mask, candle's
//! operations) against the packed CPU encoder on the same MiniLM weights
//! (fetched by `scripts/fetch-models.sh`), both on the CPU: one batch of
//! sentences of very different lengths, so padding and its mask matter,
//! and each sentence alone. Tolerance: 1e-4 per component of the unit
//! sentence vectors (f32 sums in another order).

use candle_core::Device;
use thaw_tests::registry_model;
use thaw_worker::models::embedding::{tokenize, EmbeddingModel};

const TOLERANCE: f32 = 1e-4;

fn texts() -> Vec<String> {
    vec![
        "a".to_string(),
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn.".to_string(),
        "Serverless inference: scale from zero, never feel a cold start.".repeat(6),
        "日本語の文も一つ。".to_string(),
    ]
}

fn largest_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn the_tensor_encoder_matches_the_packed_one() {
    let dir = registry_model("all-MiniLM-L6-v2");
    let packed = EmbeddingModel::load_with(&dir, &Device::Cpu, true).expect("packed loads");
    let tensors = EmbeddingModel::load_with(&dir, &Device::Cpu, false).expect("tensors load");
    let tokens = tokenize(packed.tokenizer(), &texts()).expect("tokenizes");
    let lengths: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
    assert!(
        lengths.iter().max() > Some(&(4 * lengths[0])),
        "the batch needs padding: {lengths:?}"
    );

    let want = packed.encode(&tokens).expect("packed encodes");
    let got = tensors.encode(&tokens).expect("tensors encode");
    let d = largest_difference(&want, &got);
    assert!(d < TOLERANCE, "batched: largest difference {d}");

    // Alone, each sentence gives what it gave in the padded batch.
    for (i, t) in tokens.iter().enumerate() {
        let alone = tensors.encode(std::slice::from_ref(t)).expect("alone");
        let d = largest_difference(&alone, &got[i..=i]);
        assert!(d < TOLERANCE, "sentence {i} alone vs batched: {d}");
    }

    // Both refuse the same bad input.
    let bad = vec![thaw_worker::models::embedding::Tokens {
        ids: vec![u32::MAX],
    }];
    assert!(packed.encode(&bad).is_err());
    assert!(tensors.encode(&bad).is_err());
}
