//! Snapshots of the credit-score model: build, open, verify, and every way a
//! snapshot is refused; q8_0 builds of a small synthetic BERT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

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
    assert_aligned(&out.join("model.safetensors"));
    // Same source, same weights: the build is reproducible.
    let (_d2, out2, m2) = built(SnapshotDtype::F32);
    assert_eq!(m.files, m2.files);
    assert!(out2.exists());
}

/// Every tensor starts on an aligned offset from the file's start.
fn assert_aligned(weights: &Path) {
    let bytes = std::fs::read(weights).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + header_len]).expect("json");
    for (name, t) in header.as_object().expect("object") {
        if name.starts_with("__pad_") || name == "__metadata__" {
            continue;
        }
        let start = t["data_offsets"][0].as_u64().expect("offset") as usize;
        assert_eq!(
            (8 + header_len + start) % manifest::ALIGNMENT,
            0,
            "{name} unaligned"
        );
    }
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
fn q8_0_is_refused_for_tabular_models_with_a_reason() {
    assert_eq!(
        "q8_0".parse::<SnapshotDtype>().ok(),
        Some(SnapshotDtype::Q8_0)
    );
    let e = "q4_0"
        .parse::<SnapshotDtype>()
        .expect_err("not a snapshot dtype");
    assert!(
        e.to_string().contains("q8_0"),
        "the choices are listed: {e}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let e = build(&BuildOptions {
        source: credit_score(),
        out: dir.path().join("snap"),
        dtype: SnapshotDtype::Q8_0,
        progress: None,
    })
    .expect_err("the MLP backend runs f32 only");
    let text = e.to_string();
    assert!(text.contains("q8_0 for a tabular model"), "{text}");
    assert!(text.contains("f32"), "{text}");
    assert!(!dir.path().join("snap").exists(), "nothing is left behind");
}

/// A one-layer BERT directory with random weights: the tensors a q8_0
/// build quantizes and those it keeps.
fn tiny_bert(dir: &Path) -> BTreeMap<String, Tensor> {
    let random =
        |dims: &[usize]| Tensor::randn(0f32, 0.5, dims, &Device::Cpu).expect("random tensor");
    let mut tensors = BTreeMap::new();
    for (name, dims) in [
        ("embeddings.word_embeddings.weight", &[16, 64][..]),
        ("embeddings.LayerNorm.weight", &[64]),
        ("encoder.layer.0.attention.self.query.weight", &[64, 64]),
        ("encoder.layer.0.attention.self.query.bias", &[64]),
        ("encoder.layer.0.intermediate.dense.weight", &[96, 64]),
        ("encoder.layer.0.output.dense.weight", &[64, 96]),
        ("odd.dense.weight", &[3, 40]),
    ] {
        tensors.insert(name.to_string(), random(dims));
    }
    let ids = Tensor::arange(0i64, 8, &Device::Cpu).expect("ids");
    tensors.insert("embeddings.position_ids".into(), ids);
    std::fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).expect("config");
    std::fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
    build::write_aligned(
        &dir.join("model.safetensors"),
        &tensors,
        &BTreeMap::new(),
        None,
    )
    .expect("weights");
    tensors
}

#[test]
fn q8_0_builds_an_embedding_snapshot() {
    let source = tempfile::tempdir().expect("temp dir");
    let tensors = tiny_bert(source.path());
    let dir = tempfile::tempdir().expect("temp dir");
    let options = |dtype, name: &str| BuildOptions {
        source: source.path().to_path_buf(),
        out: dir.path().join(name),
        dtype,
        progress: None,
    };
    let f32m = build(&options(SnapshotDtype::F32, "f32")).expect("f32 builds");
    let m = build(&options(SnapshotDtype::Q8_0, "q8")).expect("q8_0 builds");
    let out = dir.path().join("q8");
    assert_eq!((m.kind, m.dtype.as_str()), (ModelKind::Embedding, "q8_0"));
    assert_eq!(m.sizes.parameters, f32m.sizes.parameters, "logical sizes");
    assert!(m.sizes.weight_bytes < f32m.sizes.weight_bytes);
    assert_eq!(verify(&out).expect("verifies"), m);
    let weights = out.join("model.safetensors");
    assert_aligned(&weights);

    let quantized = mmap::QuantizedWeights::open(&weights).expect("maps");
    let stored = candle_core::safetensors::load(&weights, &Device::Cpu).expect("loads");
    for (name, source) in &tensors {
        let view = quantized.get(name).expect("readable");
        let expect_quantized = quantize::is_quantized_linear(name, source.dims());
        assert_eq!(view.is_some(), expect_quantized, "{name}");
        match view {
            Some(view) => {
                assert_eq!((view.dtype, &view.shape[..]), ("q8_0", source.dims()));
                let values = source.flatten_all().and_then(|t| t.to_vec1::<f32>());
                assert_dequantizes_to(view.bytes, &values.expect("values"));
            }
            None if source.dtype().is_float() => {
                assert_eq!(stored[name].dtype(), DType::F32, "{name} stays f32");
            }
            None => assert_eq!(stored[name].dtype(), DType::I64, "{name} is kept"),
        }
    }
    assert!(
        mmap::QuantizedWeights::open(&dir.path().join("f32/model.safetensors"))
            .expect("maps")
            .is_empty()
    );
}

/// Decodes q8_0 blocks by hand (f16 scale, then 32 i8) and checks every
/// value within half a quantization step of `values`.
fn assert_dequantizes_to(bytes: &[u8], values: &[f32]) {
    assert_eq!(bytes.len(), values.len() / 32 * 34);
    for (block, values) in bytes.chunks_exact(34).zip(values.chunks_exact(32)) {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            (d * 127.0 - max).abs() <= max * 1e-3,
            "scale {d} for max {max}"
        );
        for (&q, &v) in block[2..].iter().zip(values) {
            let error = (q as i8 as f32 * d - v).abs();
            assert!(error <= d * 0.5 + 1e-7, "{v} stored as {q} × {d}");
        }
    }
}

#[test]
fn q8_0_blocks_are_ggml_layout() {
    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 8.0).collect();
    let bytes = quantize::quantize_q8_0(&values);
    assert_dequantizes_to(&bytes, &values);
    // The first block's largest magnitude, -2.5, is -127 steps.
    assert_eq!(bytes[2] as i8, -127);
    let zeros = quantize::quantize_q8_0(&[0.0; 32]);
    assert!(
        zeros.iter().all(|&b| b == 0),
        "a zero block is all zero bytes"
    );
}

#[test]
fn quantized_linears_are_the_large_matrices() {
    for (name, dims, quantized) in [
        (
            "encoder.layer.0.attention.self.query.weight",
            &[384, 384][..],
            true,
        ),
        ("encoder.layer.0.output.dense.weight", &[384, 1536], true),
        ("embeddings.word_embeddings.weight", &[30522, 384], false),
        ("encoder.layer.0.output.dense.bias", &[384], false),
        ("encoder.layer.0.output.LayerNorm.weight", &[384], false),
        ("classifier.weight", &[2, 100], false),
        ("encoder.layer.0.output.dense.weight", &[0, 384], false),
    ] {
        assert_eq!(
            quantize::is_quantized_linear(name, dims),
            quantized,
            "{name}"
        );
    }
}

#[test]
fn an_output_that_is_holds_or_lies_in_the_source_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("par/src");
    std::fs::create_dir_all(&source).expect("mkdir");
    for entry in std::fs::read_dir(credit_score()).expect("credit-score") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), source.join(entry.file_name())).expect("copy");
    }
    for out in [source.clone(), dir.path().join("par"), source.join("snap")] {
        let e = build(&BuildOptions {
            source: source.clone(),
            out: out.clone(),
            dtype: SnapshotDtype::F32,
            progress: None,
        })
        .expect_err("refused");
        assert!(
            e.to_string().contains("the source"),
            "{}: {e}",
            out.display()
        );
        assert!(
            source.join("model.safetensors").is_file(),
            "the source is intact"
        );
    }
}

#[test]
fn a_snapshot_rebuilds_from_a_snapshot() {
    let (dir, first, _) = built(SnapshotDtype::F32);
    let again = dir.path().join("again");
    let m = build(&BuildOptions {
        source: first.clone(),
        out: again.clone(),
        dtype: SnapshotDtype::F32,
        progress: None,
    })
    .expect("rebuilds");
    assert_eq!(verify(&again).expect("verifies"), m);
    // The same tensors, without the first build's padding among them.
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = crate::mmap::load_all(&dir.join("model.safetensors"))
            .expect("loads")
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with("__pad_"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&again), names(&first));

    // A damaged snapshot is no source: its weights are not given new
    // hashes that would vouch for them.
    let weights = first.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("read");
    let at = bytes.len() - 8;
    bytes[at] ^= 0x55;
    std::fs::write(&weights, bytes).expect("write");
    let e = build(&BuildOptions {
        source: first,
        out: dir.path().join("from-damaged"),
        dtype: SnapshotDtype::F32,
        progress: None,
    })
    .expect_err("refused");
    assert!(e.to_string().contains("corrupted"), "{e}");
}

#[test]
fn a_manifest_listing_what_no_build_writes_is_refused() {
    let (_d, out, _) = built(SnapshotDtype::F32);
    let path = out.join(manifest::MANIFEST);
    let text = std::fs::read_to_string(&path).expect("manifest");
    let original: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 7] = [
        ("lists no model.safetensors", |m| {
            m["files"] = serde_json::json!([])
        }),
        ("is not inside the snapshot", |m| {
            m["files"][0]["path"] = "../outside".into()
        }),
        ("is not inside the snapshot", |m| {
            m["files"][0]["path"] = "/etc/hostname".into()
        }),
        ("listed twice", |m| {
            let first = m["files"][0].clone();
            m["files"].as_array_mut().expect("files").push(first);
        }),
        ("lists no config.json", |m| m["kind"] = "embedding".into()),
        ("architecture", |m| m["architecture"] = "bert".into()),
        ("dtype", |m| m["dtype"] = "q8_0".into()),
    ];
    for (want, edit) in edits {
        let mut m = original.clone();
        edit(&mut m);
        std::fs::write(&path, m.to_string()).expect("write");
        let e = verify(&out).expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    std::fs::write(&path, text).expect("restore");
    verify(&out).expect("whole again");
}

#[test]
fn sources_no_worker_could_load_are_refused_at_build() {
    let dir = tempfile::tempdir().expect("temp dir");
    let try_build = |source: &Path| {
        build(&BuildOptions {
            source: source.to_path_buf(),
            out: dir.path().join("out"),
            dtype: SnapshotDtype::F32,
            progress: None,
        })
        .expect_err("refused")
        .to_string()
    };
    // GGUFs: garbage, truncated after the header, two in one directory.
    let chat = dir.path().join("chat");
    std::fs::create_dir_all(&chat).expect("mkdir");
    std::fs::write(chat.join("x.gguf"), [7u8; 1000]).expect("write");
    assert!(try_build(&chat).contains("not a GGUF"));
    std::fs::write(chat.join("y.gguf"), [7u8; 10]).expect("write");
    assert!(try_build(&chat).contains("2 .gguf files"));
    // A tabular manifest whose MLP the weights do not hold.
    let tab = dir.path().join("tab");
    std::fs::create_dir_all(&tab).expect("mkdir");
    for f in ["model.safetensors", kind::TABULAR_MANIFEST] {
        std::fs::copy(credit_score().join(f), tab.join(f)).expect("copy");
    }
    let manifest = tab.join(kind::TABULAR_MANIFEST);
    let text = std::fs::read_to_string(&manifest).expect("read");
    let mut m: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    m["hidden"] = serde_json::json!([32, 8]);
    std::fs::write(&manifest, m.to_string()).expect("write");
    let e = try_build(&tab);
    assert!(e.contains("layers.0.weight is [16, 10]"), "{e}");
    // An embedding model without its tokenizer.
    let bert = dir.path().join("bert");
    std::fs::create_dir_all(&bert).expect("mkdir");
    tiny_bert(&bert);
    std::fs::remove_file(bert.join("tokenizer.json")).expect("remove");
    assert!(try_build(&bert).contains("tokenizer.json"));
}

/// A tabular source's weights are the file its manifest names, as for a
/// worker serving the source itself; a name out of the directory is
/// refused.
#[test]
fn a_tabular_build_reads_the_weights_its_manifest_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("src");
    std::fs::create_dir(&source).expect("mkdir");
    let manifest_with = |weights: &str| {
        let text =
            std::fs::read_to_string(credit_score().join(kind::TABULAR_MANIFEST)).expect("manifest");
        let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
        m["weights"] = serde_json::json!(weights);
        std::fs::write(source.join(kind::TABULAR_MANIFEST), m.to_string()).expect("write");
    };
    std::fs::copy(
        credit_score().join("model.safetensors"),
        source.join("scorer.safetensors"),
    )
    .expect("copy");
    manifest_with("scorer.safetensors");
    let out = dir.path().join("snap");
    let options = |source: &Path| BuildOptions {
        source: source.to_path_buf(),
        out: out.clone(),
        dtype: SnapshotDtype::F32,
        progress: None,
    };
    let m = build(&options(&source)).expect("builds from scorer.safetensors");
    let (_d, _, reference) = built(SnapshotDtype::F32);
    let weights = |m: &Manifest| {
        m.files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .map(|f| f.sha256.clone())
    };
    assert_eq!(weights(&m), weights(&reference), "the same weights");

    // Another file by the default name is not what the manifest says.
    std::fs::write(source.join("model.safetensors"), b"not these").expect("write");
    manifest_with("missing.safetensors");
    let e = build(&options(&source)).expect_err("the named file is missing");
    assert!(e.to_string().contains("missing.safetensors"), "{e}");
    for outside in ["../x.safetensors", "/etc/hostname", ""] {
        manifest_with(outside);
        let e = build(&options(&source)).expect_err("outside the directory");
        assert!(
            e.to_string()
                .contains("must be a file in the model's directory"),
            "{e}"
        );
    }
}
