//! `thaw-bench run cold --quick` end to end (the CI smoke test of the
//! harness): the real binaries, MiniLM (fetched by scripts/fetch-models.sh),
//! and a report with every figure, its tables and its plots.

use std::process::Command;

use serde_json::Value;
use thaw_tests::{bin, repo_root};

#[test]
fn a_quick_cold_run_writes_its_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(env!("CARGO_BIN_EXE_thaw-bench"))
        .args(["run", "cold", "--quick", "--model", "minilm"])
        .arg("--config")
        .arg(repo_root().join("configs/default.toml"))
        .arg("--bin-dir")
        .arg(bin("thaw").parent().expect("bin dir"))
        .arg("--out")
        .arg(out.path())
        .env_remove("THAW_ST_PYTHON")
        .status()
        .expect("thaw-bench runs");
    assert!(status.success(), "{status}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    assert_eq!(report["scenario"], "cold");
    assert!(report["machine"]["cores"].as_u64().is_some_and(|n| n > 0));
    let gateway = &report["figures"]["gateway"];
    let median = |v: &Value| v["median_ms"].as_f64().expect("a median");
    let (warm, template, snapshot) = (
        median(&gateway["warm"]),
        median(&gateway["template_tier"]),
        median(&gateway["snapshot_tier"]),
    );
    // A cold start costs more than a warm request, a snapshot more than a template.
    assert!(
        warm > 0.0 && template > warm && snapshot > template,
        "{warm} {template} {snapshot}"
    );
    // Without a Python given, the baseline says it was skipped, and why.
    let python = &report["figures"]["python_sentence_transformers"];
    assert!(
        python["skipped"].as_str().is_some_and(|s| !s.is_empty()),
        "{python}"
    );

    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(
        md.contains("| template tier |") && md.contains("skipped"),
        "{md}"
    );
    for plot in report["plots"].as_array().expect("plots") {
        let svg =
            std::fs::read_to_string(out.path().join(plot.as_str().expect("name"))).expect("plot");
        assert!(
            svg.starts_with("<svg") && svg.contains("<rect"),
            "{plot} is not a bar chart"
        );
    }
}

/// The GPU suite on a machine without a GPU (and a worker without CUDA):
/// a report whose every GPU figure says why it is missing, standby
/// activation and SmolLM2 (synthetic weights under its real header, as a
/// GPU machine gets it) measured on the CPU instead, and the synthetic
/// snapshot written and removed.
#[test]
fn the_gpu_suite_says_why_without_a_gpu() {
    let out = tempfile::tempdir().expect("temp dir");
    let header = out.path().join("smollm2.header");
    let gguf = thaw_tests::registry_model("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let status = Command::new("python3")
        .arg(repo_root().join("bench/gpu/synthetic_gguf.py"))
        .arg("header")
        .arg(&gguf)
        .arg(&header)
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "the header of {}: {status}",
        gguf.display()
    );
    let status = Command::new(repo_root().join("bench/gpu/run.sh"))
        .arg(bin("thaw-worker"))
        .arg(out.path())
        .arg("0.07")
        .env("THAW_GPU_CHAT", &header)
        .status()
        .expect("the suite runs");
    assert!(status.success(), "{status}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("gpu.json")).expect("gpu.json"),
    )
    .expect("gpu.json is JSON");
    assert_eq!(report["inventory"]["gpus"], serde_json::json!([]));
    assert!(report["inventory"]["reason"].is_string(), "{report}");
    let upload = &report["uploads"]["0.07gb"];
    assert_eq!(upload["bytes"], 64 << 20);
    assert!(upload["thaw_upload"]["skipped"].is_string(), "{upload}");
    // Standby activation runs on the CPU instead, with a synthetic
    // MiniLM-shaped model: the process, its activation, its first output.
    let standby = &report["standby_activation"];
    assert_eq!(standby["device"], "cpu", "{standby}");
    let minilm = &standby["minilm"];
    assert_eq!(minilm["parameters"], 22_565_376, "{standby}");
    for figure in [
        "activation_to_first_output_ms",
        "plain_start_to_first_output_ms",
        "standby_context_ms",
    ] {
        let ms = minilm[figure].as_f64().unwrap_or(-1.0);
        assert!(ms > 0.0, "{figure}: {standby}");
    }
    // The same with the weights registered ahead: on the CPU nothing is
    // registered, and the report says why.
    assert!(
        minilm["preregistered_activation_to_first_output_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{standby}"
    );
    assert_eq!(minilm["preregistered"]["registered"], false, "{standby}");
    assert!(minilm["preregistered"]["reason"].is_string(), "{standby}");
    // The gateway's hibernation tier needs the thaw binary given.
    assert!(
        report["gateway_hibernation"]["skipped"].is_string(),
        "{report}"
    );
    // Hibernation needs a CUDA build on a GPU: the reason is the build's.
    assert!(
        report["hibernate_resume"]["skipped"]
            .as_str()
            .is_some_and(|r| r.contains("cuda feature")),
        "{report}"
    );
    // SmolLM2 on the CPU alone, from weights synthesized under its header.
    let chat = &report["smollm2"]["cpu"];
    assert!(
        chat["weights"]
            .as_str()
            .is_some_and(|w| w.starts_with("synthetic")),
        "{report}"
    );
    // Up to 128 (random weights could end the turn early).
    assert!(
        chat["tokens"]
            .as_u64()
            .is_some_and(|n| (2..=128).contains(&n)),
        "{chat}"
    );
    for figure in [
        "decode_tokens_per_s",
        "four_streams_tokens_per_s",
        "ttft_ms",
    ] {
        assert!(
            chat[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {chat}"
        );
    }
    assert!(report["smollm2"].get("cuda:0").is_none(), "{report}");
    let left: Vec<_> = std::fs::read_dir(out.path())
        .expect("out dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .collect();
    assert!(left.is_empty(), "the synthetic snapshot was left behind");
}
