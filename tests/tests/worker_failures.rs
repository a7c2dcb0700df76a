//! A worker that fails under a request, reproduced on cue by
//! `thaw-fake-worker`: the gateway sends a request again only when the
//! worker cannot have acted on it (it did not take the whole request), and
//! answers 502 when it may have; either way each request gets one answer
//! and reaches a worker whole at most once. A worker that never answers a
//! request gets it back as a 504 after the model's `response_timeout`; a
//! stream that stalls for as long ends.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thaw_tests::registry_model;
use thaw_tests::served::{config, credit_score, serve_with_worker, Served};

/// Requests sent one after another: each but the first can find the
/// connection the one before it left in the gateway's pool.
const REQUESTS: usize = 8;

/// A gateway whose one model is served by the fake worker in `mode`, one
/// instance ready; and the worker's log.
fn serve_fake(dir: &Path, mode: &str) -> (Served, PathBuf) {
    serve_fake_with(dir, mode, "", &[])
}

/// As `serve_fake`, with `settings` (more TOML) in `[gateway]` and more
/// of the fake's environment.
fn serve_fake_with(
    dir: &Path,
    mode: &str,
    settings: &str,
    env: &[(&str, &str)],
) -> (Served, PathBuf) {
    let model = "[models.scaling]\nmin_instances = 1\n[models.queue]\nresponse_timeout = \"300ms\"";
    // MiniLM's files make the model an embedding model, so the large
    // request below (an OpenAI embeddings body) is one its kind serves.
    let minilm = registry_model("all-MiniLM-L6-v2");
    let text = config(dir, settings, &credit_score("fake", Some(&minilm), model));
    let config_file = dir.join("thaw.toml");
    std::fs::write(&config_file, text).expect("config written");
    let log = dir.join("worker.log");
    let mut cmd = serve_with_worker(&config_file, "thaw-fake-worker", &[]);
    cmd.env("THAW_FAKE_WORKER", mode).env("THAW_FAKE_LOG", &log);
    cmd.envs(env.iter().copied());
    let g = Served::spawn(cmd, config_file);
    g.wait("the fake worker ready", |s| {
        s["models"][0]["ready_instances"] == 1
    });
    (g, log)
}

/// A model request: small (the proxy path, which replays the body from
/// pingora's buffer) or larger than that buffer (the gateway forwards the
/// body it read to find the model).
fn send(g: &Served, large: bool) -> thaw_tests::Response {
    if !large {
        return g.score("fake");
    }
    let input = "x".repeat(REPLAYABLE_BODY + 1);
    g.public.post_json(
        "/v1/embeddings",
        &serde_json::json!({"model": "fake", "input": input}),
    )
}

/// pingora's retry buffer (`thaw_gateway::proxy::REPLAYABLE_BODY`).
const REPLAYABLE_BODY: usize = 64 * 1024;

/// An error body's message: KServe's shape, or OpenAI's on /v1.
fn error_message(body: &Value) -> Option<&str> {
    let error = &body["error"];
    error["message"].as_str().or(error.as_str())
}

/// How many lines of the worker's log say `what`.
fn logged(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == what)
        .count()
}

/// The value of the gateway's metric line that starts with `series`.
fn metric(g: &Served, series: &str) -> u64 {
    let text = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_request_its_worker_did_not_take_is_sent_again() {
    // `stale`: the pooled connection cannot be written to (a worker that
    // has gone); `reset`: the worker closes it with the request unread.
    for (mode, large) in [
        ("stale", false),
        ("reset", false),
        ("stale", true),
        ("reset", true),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (g, log) = serve_fake(dir.path(), mode);
        for i in 0..REQUESTS {
            let r = send(&g, large);
            assert_eq!(
                r.status,
                200,
                "{mode}, large {large}: request {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        assert_eq!(
            logged(&log, "answered"),
            REQUESTS,
            "{mode}, large {large}: each request reached the worker whole once"
        );
        let replayed = metric(&g, "thaw_requests_replayed_total{model=\"fake\"}");
        assert!(
            replayed >= 1,
            "{mode}, large {large}: no request met a broken pooled connection, so this tested nothing"
        );
    }
}

#[test]
fn a_request_its_worker_read_whole_is_not_sent_again() {
    for large in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (g, log) = serve_fake(dir.path(), "drop");
        let mut failed = 0;
        for i in 0..REQUESTS {
            let r = send(&g, large);
            match r.status {
                200 => {}
                502 => {
                    failed += 1;
                    let body = r.json();
                    assert!(
                        error_message(&body).is_some_and(|e| e.contains("the worker failed")),
                        "request {i}: {body}"
                    );
                }
                other => panic!("request {i}: {other} {}", String::from_utf8_lossy(&r.body)),
            }
        }
        assert!(
            failed >= 1,
            "no request met a worker that dropped it, so this tested nothing"
        );
        assert_eq!(logged(&log, "dropped"), failed, "each drop is one 502");
        assert_eq!(
            logged(&log, "answered") + logged(&log, "dropped"),
            REQUESTS,
            "a request the worker read was sent to it again"
        );
        assert_eq!(
            metric(&g, "thaw_requests_replayed_total{model=\"fake\"}"),
            0
        );
    }
}

#[test]
fn a_request_its_worker_never_answers_gets_a_504() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (g, log) = serve_fake(dir.path(), "silent");
    for large in [false, true] {
        let r = send(&g, large);
        assert_eq!(
            r.status,
            504,
            "large {large}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert!(
            error_message(&body)
                .is_some_and(|e| e.contains("0.3s") && e.contains("response_timeout")),
            "large {large}: {body}"
        );
        if large {
            assert_eq!(body["error"]["code"], "worker_timeout", "{body}");
        }
    }
    assert_eq!(
        logged(&log, "silent"),
        2,
        "a request the worker read was sent again"
    );
    // The slots are given back.
    g.wait("no request in flight", |s| s["models"][0]["in_flight"] == 0);
    assert_eq!(
        metric(&g, "thaw_requests_total{model=\"fake\",status=\"504\"}"),
        2
    );
}

#[test]
fn a_stream_its_worker_stalls_ends() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let (g, log) = serve_fake(dir.path(), "stall");
    let body = thaw_tests::served::score_request().to_string();
    let mut stream = std::net::TcpStream::connect(g.public.address()).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "POST /v2/models/fake/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    // The connection ends (the read would time out at 60 s otherwise).
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("the stream ends");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains(r#"data: {"first":true}"#), "{got}");
    assert!(!got.ends_with("0\r\n\r\n"), "ended as if complete: {got}");
    assert_eq!(logged(&log, "stalled"), 1);
    g.wait("no request in flight", |s| s["models"][0]["in_flight"] == 0);
}

#[test]
fn a_request_sent_on_from_a_lost_worker_gets_the_reason_no_other_starts() {
    for large in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        // Health checks far apart: only the failed connection can tell the
        // gateway that its worker is lost.
        let (g, log) = serve_fake_with(dir.path(), "deaf", "health_interval = \"1h\"", &[]);
        assert_eq!(send(&g, large).status, 200, "large {large}");
        // The worker's socket is gone: the request waits for another,
        // which the gateway starts at once and which fails to start.
        let r = send(&g, large);
        assert_eq!(
            r.status,
            503,
            "large {large}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert!(
            error_message(&body).is_some_and(|e| e.contains("model \"fake\" cannot start")
                && e.contains("a deaf fake worker starts only once")),
            "large {large}: {body}"
        );
        assert_eq!(logged(&log, "answered"), 1, "large {large}");
        assert_eq!(
            metric(&g, "thaw_worker_crashes_total{model=\"fake\"}"),
            1,
            "large {large}"
        );
    }
}

#[test]
fn a_child_ready_before_its_template_says_forked_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let quick = [("THAW_FAKE_TEMPLATE", "ready-first")];
    let (g, log) = serve_fake_with(dir.path(), "stale", "", &quick);
    let s = g.status();
    let model = &s["models"][0];
    assert_ne!(model["instances"][0]["started_from"], "exec", "{model}");
    assert_eq!(logged(&log, "forked ready first"), 1);
    assert_eq!(send(&g, false).status, 200);
}

#[test]
fn a_template_that_refuses_to_fork_is_kept_and_the_worker_started_by_exec() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refuse = [("THAW_FAKE_TEMPLATE", "refuse")];
    let (g, log) = serve_fake_with(dir.path(), "stale", "", &refuse);
    let s = g.status();
    let model = &s["models"][0];
    assert_eq!(model["instances"][0]["started_from"], "exec", "{model}");
    let template = model["template"]["pid"]
        .as_u64()
        .expect("the template runs");
    assert_eq!(logged(&log, "fork refused"), 1);
    assert_eq!(send(&g, false).status, 200);
    // It answered: it is not replaced.
    assert_eq!(
        g.status()["models"][0]["template"]["pid"].as_u64(),
        Some(template)
    );
}
