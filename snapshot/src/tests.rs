//! Snapshots of the credit-score model: build, open, verify, and every way a
//! snapshot is refused.

use std::path::{Path, PathBuf};

use super::*;

fn credit_score() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score")
}

fn built(dtype: SnapshotDtype) -> (tempfile::TempDir, PathBuf, Manifest) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("snap");
    let manifest = build(&BuildOptions {
        source: credit_score(),
        out: out.clone(),
        dtype,
        progress: None,
    })
    .expect("builds");
    (dir, out, manifest)
}

#[test]
fn builds_an_aligned_verified_snapshot() {
    let (_d, out, m) = built(SnapshotDtype::F32);
    assert_eq!(m.kind, ModelKind::Tabular);
    assert_eq!(m.dtype, "f32");
    assert_eq!(
        m.sizes.parameters,
        10 + 10 + 10 * 16 + 16 + 16 * 8 + 8 + 8 + 1
    );
    assert!(m.files.iter().any(|f| f.path == "model.safetensors"));
    assert_eq!(verify(&out).expect("verifies"), m);
    assert_eq!(detect_kind(&out).ok(), Some(ModelKind::Tabular));
    // Every tensor starts on an aligned offset from the file's start.
    let bytes = std::fs::read(out.join("model.safetensors")).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + header_len]).expect("json");
    for (name, t) in header.as_object().expect("object") {
        if name.starts_with("__pad_") {
            continue;
        }
        let start = t["data_offsets"][0].as_u64().expect("offset") as usize;
        assert_eq!(
            (8 + header_len + start) % manifest::ALIGNMENT,
            0,
            "{name} unaligned"
        );
    }
    // Same source, same weights: the build is reproducible.
    let (_d2, out2, m2) = built(SnapshotDtype::F32);
    assert_eq!(m.files, m2.files);
    assert!(out2.exists());
}

#[test]
fn half_precision_builds_halve_the_weights() {
    let (_d, _, f32m) = built(SnapshotDtype::F32);
    let (_d2, out, f16m) = built(SnapshotDtype::F16);
    assert_eq!(f16m.dtype, "f16");
    assert!(f16m.sizes.weight_bytes < f32m.sizes.weight_bytes);
    verify(&out).expect("verifies");
}

#[test]
fn refuses_truncated_corrupted_and_mismatched_snapshots() {
    let (_d, out, _) = built(SnapshotDtype::F32);
    let weights = out.join("model.safetensors");
    let original = std::fs::read(&weights).expect("read");

    std::fs::write(&weights, &original[..original.len() - 10]).expect("truncate");
    let e = open(&out, None).expect_err("truncated");
    assert!(e.to_string().contains("truncated"), "{e}");

    let mut flipped = original.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    std::fs::write(&weights, &flipped).expect("corrupt");
    open(&out, None).expect("sizes still match");
    let e = verify(&out).expect_err("corrupted");
    assert!(e.to_string().contains("corrupted"), "{e}");

    std::fs::write(&weights, &original).expect("restore");
    verify(&out).expect("whole again");
    let e = open(&out, Some(ModelKind::Embedding)).expect_err("wrong kind");
    assert!(e.to_string().contains("expected embedding"), "{e}");

    let path = out.join(manifest::MANIFEST);
    let text = std::fs::read_to_string(&path).expect("manifest");
    std::fs::write(
        &path,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .expect("write");
    let e = open(&out, None).expect_err("wrong version");
    assert!(e.to_string().contains("rebuild"), "{e}");

    std::fs::remove_file(&path).expect("remove manifest");
    let e = verify(&out).expect_err("no manifest");
    assert!(e.to_string().contains("manifest"), "{e}");
}

#[test]
fn q8_0_is_refused_with_a_reason() {
    let e = "q8_0".parse::<SnapshotDtype>().expect_err("not built yet");
    assert!(e.to_string().contains("q8_0"), "{e}");
}
