//! `thaw snapshot build` and `verify` from the command line, and a worker
//! serving from a snapshot or refusing a damaged one.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use thaw_tests::{bin, registry_model, repo_root, Client, Proc};

fn thaw(args: &[&str]) -> std::process::Output {
    Command::new(bin("thaw"))
        .args(args)
        .output()
        .expect("thaw runs")
}

#[test]
fn build_verify_serve_and_refuse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("minilm");
    let out_s = out.to_string_lossy().into_owned();
    let source = registry_model("all-MiniLM-L6-v2");
    let built = thaw(&[
        "snapshot",
        "build",
        &source.to_string_lossy(),
        "--out",
        &out_s,
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let verified = thaw(&["snapshot", "verify", &out_s]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("embedding bert (f32)"));

    // A worker serves the snapshot like the source.
    let mut cmd = Command::new(bin("thaw-worker"));
    cmd.args([
        "--model",
        &out_s,
        "--name",
        "minilm",
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut worker = Proc::spawn(cmd).expect("worker starts");
    let ready = worker.wait_event("ready", Duration::from_secs(60));
    let client = Client::new(ready["address"].as_str().expect("address"));
    let r = client.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "from a snapshot"}),
    );
    assert_eq!(r.status, 200);
    drop(worker);

    // Truncated: verify fails and a worker refuses to start, saying why.
    let weights = out.join("model.safetensors");
    let len = std::fs::metadata(&weights).expect("weights").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    let verified = thaw(&["snapshot", "verify", &out_s]);
    assert!(!verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stderr).contains("truncated"));
    let worker = Command::new(bin("thaw-worker"))
        .args(["--model", &out_s, "--listen", "127.0.0.1:0"])
        .output()
        .expect("worker runs");
    assert!(!worker.status.success());
    assert!(String::from_utf8_lossy(&worker.stderr).contains("truncated"));

    // A tabular snapshot opened as an embedding model is refused by kind.
    let cs = dir.path().join("cs");
    let cs_s = cs.to_string_lossy().into_owned();
    let source = repo_root().join("configs/models/credit-score");
    assert!(thaw(&[
        "snapshot",
        "build",
        &source.to_string_lossy(),
        "--out",
        &cs_s
    ])
    .status
    .success());
    let worker = Command::new(bin("thaw-worker"))
        .args([
            "--model",
            &cs_s,
            "--kind",
            "embedding",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("worker runs");
    assert!(!worker.status.success());
    assert!(String::from_utf8_lossy(&worker.stderr).contains("expected embedding"));
    let bad_dtype = thaw(&[
        "snapshot",
        "build",
        &source.to_string_lossy(),
        "--out",
        &cs_s,
        "--dtype",
        "q8_0",
    ]);
    assert!(!bad_dtype.status.success());
}

/// A failure is one line on stderr, the whole chain of reasons in it, even
/// where RUST_BACKTRACE is set: for `thaw` and for `thaw-worker`.
#[test]
fn errors_are_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("src");
    std::fs::create_dir(&source).expect("mkdir");
    // A tabular model whose weights are cut short.
    let credit = repo_root().join("configs/models/credit-score");
    std::fs::copy(
        credit.join("thaw-model.json"),
        source.join("thaw-model.json"),
    )
    .expect("copy");
    let weights = std::fs::read(credit.join("model.safetensors")).expect("read");
    std::fs::write(source.join("model.safetensors"), &weights[..100]).expect("write");
    let source = source.to_string_lossy().into_owned();
    let out = dir.path().join("out").to_string_lossy().into_owned();
    for mut cmd in [Command::new(bin("thaw")), Command::new(bin("thaw-worker"))] {
        match cmd.get_program().to_string_lossy().ends_with("thaw") {
            true => cmd.args(["snapshot", "build", &source, "--out", &out]),
            false => cmd.args(["--model", &source, "--listen", "127.0.0.1:0"]),
        };
        let run = cmd
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "off")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{cmd:?}: {stderr}");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains("truncated"),
            "{cmd:?}: {stderr}"
        );
    }
}
