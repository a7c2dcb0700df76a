//! Templates end to end: the real `thaw-worker --template` on a MiniLM
//! snapshot (MiniLM fetched by `scripts/fetch-models.sh`) and on the
//! credit-score model in the repository. Children are forked over the
//! control protocol, as the gateway does it, and must each run multi-threaded
//! inference: a child that inherited a thread pool without its threads would
//! hang, and the deadlines here turn a hang into a failure.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_snapshot::{BuildOptions, SnapshotDtype};
use thaw_tests::{registry_model, repo_root, Client};

const START: Duration = Duration::from_secs(120);

/// A template under test; stdin is its lifeline.
struct Template {
    child: Child,
    lifeline: Option<ChildStdin>,
    control: PathBuf,
    ready: Value,
    dir: tempfile::TempDir,
}

impl Template {
    fn start(model: &Path, name: &str) -> Template {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = dir.path().join("template.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_thaw-worker"))
            .arg("--model")
            .arg(model)
            .args(["--name", name, "--lifeline"])
            .arg("--template")
            .arg(format!("unix:{}", control.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("thaw-worker starts");
        let lifeline = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let ready = loop {
            match rx.recv_timeout(START) {
                Ok(m) if m["event"] == "template_ready" => break m,
                Ok(_) => continue,
                Err(e) => panic!("no template_ready message: {e}"),
            }
        };
        Template {
            child,
            lifeline,
            control,
            ready,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Forks a worker; returns its ready message.
    fn fork(&self, id: u64) -> Value {
        let socket = self.dir.path().join(format!("w{id}.sock"));
        let mut conn = UnixStream::connect(&self.control).expect("control socket");
        conn.set_read_timeout(Some(START)).expect("timeout");
        let request = json!({"op": "fork", "id": id, "socket": socket});
        writeln!(conn, "{request}").expect("request sent");
        let mut lines = BufReader::new(conn.try_clone().expect("clone")).lines();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("the control connection closed before ready"))
                .expect("a line within the deadline");
            let message: Value = serde_json::from_str(&line).expect("json");
            match message["event"].as_str() {
                Some("ready") => {
                    // The connection stays open for the child's lifetime.
                    std::mem::forget(conn);
                    return message;
                }
                Some("error") => panic!("fork refused: {message}"),
                _ => continue,
            }
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether `pid` is gone (or a zombie waiting for a reaper that is not us).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        // Process exit of a non-child has no message to wait on.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `work` on a thread and fails the test if it does not finish in time.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?} (a hang)"))
}

fn minilm_snapshot(dir: &Path) -> PathBuf {
    let out = dir.join("minilm-snapshot");
    thaw_snapshot::build(&BuildOptions {
        source: registry_model("all-MiniLM-L6-v2"),
        out: out.clone(),
        dtype: SnapshotDtype::F32,
        progress: None,
    })
    .expect("snapshot builds");
    out
}

/// Long enough inputs (hundreds of tokens) that the encoder splits its
/// layers across threads and the matrix products run on gemm's pool.
fn long_inputs() -> Vec<String> {
    (0..16)
        .map(|i| {
            format!(
                "sentence {i}: {}",
                "the quick brown fox jumps over the lazy dog ".repeat(6)
            )
        })
        .collect()
}

#[test]
fn many_children_forked_from_a_warm_template_each_run_multithreaded_inference() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let template = Template::start(&minilm_snapshot(scratch.path()), "minilm");
    assert_eq!(template.ready["kind"], "embedding");
    assert_eq!(
        threads(template.pid()),
        1,
        "the template must be single-threaded"
    );

    const CHILDREN: u64 = 8;
    let forked: Vec<Value> = std::thread::scope(|s| {
        let forks: Vec<_> = (0..CHILDREN)
            .map(|id| {
                s.spawn({
                    let t = &template;
                    move || t.fork(id)
                })
            })
            .collect();
        forks
            .into_iter()
            .map(|f| f.join().expect("fork thread"))
            .collect()
    });
    for ready in &forked {
        assert_eq!(ready["tier"], "template", "{ready}");
        assert!(ready["fork_ms"].as_f64().is_some(), "{ready}");
    }

    let addresses: Vec<String> = forked
        .iter()
        .map(|r| r["address"].as_str().expect("address").to_string())
        .collect();
    let results = within(
        "inference in every child",
        Duration::from_secs(120),
        move || {
            let handles: Vec<_> = addresses
                .into_iter()
                .map(|address| {
                    std::thread::spawn(move || {
                        let client = Client::new(&address);
                        (0..3)
                            .map(|_| {
                                let r = client.post_json(
                                    "/v1/embeddings",
                                    &json!({"model": "minilm", "input": long_inputs()}),
                                );
                                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                                r.json()["data"][0]["embedding"].clone()
                            })
                            .collect::<Vec<Value>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect::<Vec<_>>()
        },
    );
    let first = &results[0][0];
    assert_eq!(first.as_array().map(Vec::len), Some(384));
    for per_child in &results {
        for embedding in per_child {
            assert_eq!(embedding, first, "children of one template disagree");
        }
    }
    for ready in &forked {
        let pid = ready["pid"].as_u64().expect("pid") as u32;
        assert!(threads(pid) > 2, "child {pid} runs no threads of its own");
    }
    assert_eq!(threads(template.pid()), 1, "the template started a thread");

    // A child's crash leaves the template serving.
    let victim = forked[0]["pid"].as_u64().expect("pid") as u32;
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    wait_until(
        "the killed child is reaped",
        Duration::from_secs(10),
        || gone(victim),
    );
    let again = template.fork(100);
    let client = Client::new(again["address"].as_str().expect("address"));
    let r = client.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "after a crash"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The lifeline closes: the template and every child stop.
    let mut template = template;
    let pids: Vec<u32> = forked[1..]
        .iter()
        .chain([&again])
        .map(|r| r["pid"].as_u64().expect("pid") as u32)
        .collect();
    drop(template.lifeline.take());
    let status = within("the template exits", Duration::from_secs(30), {
        let mut child = std::mem::replace(
            &mut template.child,
            Command::new("true").spawn().expect("true runs"),
        );
        move || child.wait().expect("waits")
    });
    assert!(status.success(), "template exit: {status}");
    for pid in pids {
        wait_until(
            "a child stops when the lifeline closes",
            Duration::from_secs(30),
            || gone(pid),
        );
    }
}

#[test]
fn a_tabular_template_forks_workers_that_score() {
    let template = Template::start(
        &repo_root().join("configs/models/credit-score"),
        "credit-score",
    );
    assert_eq!(template.ready["kind"], "tabular");
    let ready = template.fork(1);
    let client = Client::new(ready["address"].as_str().expect("address"));
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("configs/models/credit-score/reference.json"))
            .expect("reference"),
    )
    .expect("json");
    let rows = reference["inputs"].clone();
    let n = rows.as_array().map_or(0, Vec::len);
    let r = client.post_json(
        "/v2/models/credit-score/infer",
        &json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [n, 10], "data": rows}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = r.json()["outputs"][0]["data"].clone();
    let want = reference["outputs"].as_array().cloned().unwrap_or_default();
    assert_eq!(got.as_array().map(Vec::len), Some(want.len()));
    for (g, w) in got.as_array().into_iter().flatten().zip(&want) {
        let (g, w) = (g.as_f64().unwrap_or(f64::NAN), w.as_f64().unwrap_or(0.0));
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}
