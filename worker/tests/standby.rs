//! Standby processes end to end: the real `thaw-worker --standby` on the
//! CPU (the GPU path is the same protocol with a CUDA context; the GPU
//! suite in `bench/gpu/` times it on a device). A standby process announces
//! itself, is activated with one line on stdin, serves the model it was
//! given, and stops when its lifeline closes; bad activations and a
//! supervisor that goes away before activating end it with a reason.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::{repo_root, Client};

const START: Duration = Duration::from_secs(60);

/// A standby process under test; stdin is its activation channel and then
/// its lifeline.
struct Standby {
    child: Child,
    stdin: Option<ChildStdin>,
    messages: mpsc::Receiver<Value>,
    dir: tempfile::TempDir,
}

impl Standby {
    fn start() -> (Standby, Value) {
        Standby::start_with(&[])
    }

    fn start_with(args: &[&str]) -> (Standby, Value) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thaw-worker"))
            .args(["--standby", "--device", "cpu", "--lifeline"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("thaw-worker starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut standby = Standby {
            child,
            stdin,
            messages,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let announced = standby.next_event("standby");
        (standby, announced)
    }

    /// The next message with this event, skipping others.
    fn next_event(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + START;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if m["event"] == event => return m,
                Ok(_) => continue,
                Err(e) => panic!("no {event:?} message: {e}"),
            }
        }
    }

    /// Activates it with the credit-score model as `scorer`; its socket.
    fn activate_scorer(&mut self) -> String {
        let socket = self.socket();
        let activation = json!({
            "model": repo_root().join("configs/models/credit-score"),
            "name": "scorer",
            "kind": "tabular",
            "listen": socket,
        });
        self.send(&activation.to_string());
        socket
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("the activation is written");
        stdin.flush().expect("flushed");
    }

    fn socket(&self) -> String {
        format!("unix:{}", self.dir.path().join("w.sock").display())
    }

    /// Waits for the process to exit (its stdout closes first).
    fn exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                return (status, err);
            }
            // Everything the process prints has been read: the channel
            // disconnects when its stdout closes, which is at exit.
            if let Err(mpsc::RecvTimeoutError::Disconnected) =
                self.messages.recv_timeout(Duration::from_millis(50))
            {
                let status = self.child.wait().expect("wait");
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                return (status, err);
            }
            assert!(
                Instant::now() < deadline,
                "the standby process did not exit"
            );
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn credit_score_request() -> Value {
    json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10],
        "data": [60, 0.3, 10, 8, 0, 0.3, 20, 48, 6, 1]}]})
}

#[test]
fn an_activated_standby_process_serves_its_model_and_stops_with_its_lifeline() {
    let (mut standby, announced) = Standby::start();
    assert_eq!(announced["device"], "cpu");
    assert!(announced["context_ms"].as_f64().is_some(), "{announced}");
    let pid = announced["pid"].as_u64().expect("pid");
    assert_eq!(pid, u64::from(standby.child.id()));

    let socket = standby.activate_scorer();
    let ready = standby.next_event("ready");
    assert_eq!(ready["model"], "scorer");
    assert_eq!(ready["tier"], "standby");
    assert_eq!(ready["address"], socket);
    assert_eq!(ready["pid"], pid, "the standby process itself serves");
    for field in ["load_ms", "context_ms", "standby_ms"] {
        assert!(ready[field].as_f64().is_some(), "{field} missing: {ready}");
    }

    let client = Client::new(&socket);
    let response = client.post_json("/v2/models/scorer/infer", &credit_score_request());
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let p = response.json()["outputs"][0]["data"][0]
        .as_f64()
        .expect("a probability");
    assert!((0.0..=1.0).contains(&p), "{p}");

    // The lifeline: closing stdin stops the worker cleanly.
    drop(standby.stdin.take());
    standby.next_event("stopped");
    let (status, _) = standby.exit();
    assert!(status.success(), "{status}");
}

/// `--preregister` and `{"preregister": FILE}` lines: each file is
/// reported; on the CPU nothing is registered and the report says why (a
/// missing file too), and the process is activated as usual.
#[test]
fn files_to_preregister_are_reported_and_do_not_stop_a_standby_process() {
    let weights = repo_root().join("configs/models/credit-score/model.safetensors");
    let missing = "/nonexistent/model.safetensors";
    let (mut standby, announced) = Standby::start_with(&[
        "--preregister",
        weights.to_str().expect("utf-8 path"),
        "--preregister",
        missing,
    ]);
    let reports = announced["preregistered"].as_array().expect("a list");
    assert_eq!(reports.len(), 2, "{announced}");
    let size = std::fs::metadata(&weights).expect("weights").len();
    assert_eq!(reports[0]["bytes"], size, "{announced}");
    assert_eq!(reports[0]["registered"], false, "{announced}");
    assert!(
        reports[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CUDA")),
        "{announced}"
    );
    assert_eq!(reports[1]["registered"], false, "{announced}");
    assert!(
        reports[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be read")),
        "{announced}"
    );

    // A file named on stdin before the activation: reported the same way.
    standby.send(&json!({ "preregister": weights }).to_string());
    let more = standby.next_event("preregistered");
    assert_eq!(more["path"], weights.to_str().expect("utf-8"), "{more}");
    assert_eq!(more["bytes"], size, "{more}");
    assert_eq!(more["registered"], false, "{more}");

    let socket = standby.activate_scorer();
    assert_eq!(standby.next_event("ready")["tier"], "standby");
    let response =
        Client::new(&socket).post_json("/v2/models/scorer/infer", &credit_score_request());
    assert_eq!(response.status, 200);
    drop(standby.stdin.take());
    let (status, _) = standby.exit();
    assert!(status.success(), "{status}");
}

#[test]
fn a_standby_process_whose_supervisor_goes_exits_quietly() {
    let (mut standby, _) = Standby::start();
    drop(standby.stdin.take());
    let (status, _) = standby.exit();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_activations_end_the_process_with_the_reason() {
    let missing = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("not json".to_string(), "activation"),
        (
            json!({"model": "/m", "name": "x", "listen": "nowhere"}).to_string(),
            "listen",
        ),
        (
            json!({"model": missing.path().join("absent"), "name": "x", "kind": "tabular",
                   "listen": "unix:/tmp/thaw-standby-never.sock"})
            .to_string(),
            "absent",
        ),
    ];
    for (line, reason) in cases {
        let (mut standby, _) = Standby::start();
        standby.send(&line);
        let (status, stderr) = standby.exit();
        assert!(!status.success(), "{line}: exited {status}");
        assert!(
            stderr.contains(reason),
            "{line}: the error does not say {reason:?}: {stderr}"
        );
    }
}
