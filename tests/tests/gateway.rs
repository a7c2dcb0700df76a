//! The gateway end to end: the real `thaw` binary on ephemeral ports with
//! real `thaw-worker` processes, short timers, plain HTTP.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::served::{serve_command, sockets_dir, Slow};
use thaw_tests::{registry_model, repo_root, Client, Proc};

const START: Duration = Duration::from_secs(60);

struct Gateway {
    proc: Proc,
    public: Client,
    admin: Client,
    _dir: tempfile::TempDir,
}

/// Starts `thaw serve` on `models` (TOML `[[models]]` tables) with short
/// timers; `scaling` is more TOML for `[defaults.scaling]`.
fn gateway(models: &str, scaling: &str) -> Gateway {
    gateway_with("", models, scaling)
}

/// As `gateway`, with `settings` (more TOML) in `[gateway]`.
fn gateway_with(settings: &str, models: &str, scaling: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut proc = Proc::spawn(serve(&dir, settings, models, scaling)).expect("thaw starts");
    let ready = proc.wait_event("ready", START);
    let address = |key: &str| {
        let a = ready[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {ready}"));
        assert!(!a.ends_with(":0"), "{key} {a} is not the bound port");
        Client::new(a)
    };
    Gateway {
        public: address("address"),
        admin: address("admin"),
        proc,
        _dir: dir,
    }
}

/// `thaw serve` on a config written into `dir`, both listeners on port 0.
fn serve(dir: &tempfile::TempDir, settings: &str, models: &str, scaling: &str) -> Command {
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
{settings}

[defaults.scaling]
stable_window = "4s"
panic_window = "1s"
scale_down_delay = "1s"
scale_to_zero_after = "2s"
{scaling}

{models}
"#,
        state = dir.path().join("state").display(),
    );
    let path = dir.path().join("thaw.toml");
    std::fs::write(&path, config).expect("config written");
    serve_command(&path, &[])
}

fn credit_score(extra: &str) -> String {
    let source = repo_root().join("configs/models/credit-score");
    format!(
        "[[models]]\nname = \"credit-score\"\nsource = \"{}\"\n{extra}\n",
        source.display()
    )
}

fn minilm(extra: &str) -> String {
    let source = registry_model("all-MiniLM-L6-v2");
    format!(
        "[[models]]\nname = \"minilm\"\nsource = \"{}\"\n{extra}\n",
        source.display()
    )
}

fn score_request() -> Value {
    json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10],
                       "data": [60, 0.3, 10, 8, 0, 0.3, 20, 48, 6, 1]}]})
}

fn status(g: &Gateway, model: &str) -> Value {
    let s = g.admin.get("/admin/status").json();
    s["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == model)
        .cloned()
        .unwrap_or_else(|| panic!("{model} not in status: {s}"))
}

/// Waits until `pred` holds on the model's status. Scaling happens on the
/// gateway's timers, so the status API is the message to wait on.
fn wait_status(g: &Gateway, model: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + START;
    loop {
        let s = status(g, model);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{model}: {what} never happened: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn worker_pids(g: &Gateway, model: &str) -> Vec<u32> {
    status(g, model)["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["pid"].as_u64().expect("pid") as u32)
        .collect()
}

/// Sends `signal` (e.g. `"STOP"`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn listing_and_errors_do_not_wake_models() {
    let smollm2 = format!(
        "[[models]]\nname = \"smollm2\"\nsource = \"{}\"\n",
        registry_model("smollm2").display()
    );
    let g = gateway(&(credit_score("") + &minilm("") + &smollm2), "");
    let models = g.public.get("/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["credit-score", "minilm", "smollm2"]);
    assert!(models["data"][0]["created"].is_u64(), "{models}");
    // OpenAI's retrieve-model route gives the list's entry.
    assert_eq!(g.public.get("/v1/models/minilm").json(), models["data"][1]);
    let r = g.public.get("/v1/models/nope");
    assert_eq!(
        (r.status, &r.json()["error"]["code"]),
        (404, &json!("model_not_found"))
    );
    let meta = g.public.get("/v2/models/credit-score").json();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 10]));
    // KServe's versioned paths: the one version is the model, another
    // is a 404 that names it.
    assert_eq!(
        g.public.get("/v2/models/credit-score/versions/1").json(),
        meta
    );
    assert_eq!(
        g.public
            .get("/v2/models/credit-score/versions/1/ready")
            .status,
        200
    );
    let r = g
        .public
        .post_json("/v2/models/credit-score/versions/2/infer", &score_request());
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("version \"2\"")),
        "{}",
        r.json()
    );
    let r = g.public.get("/v2/models/nope/versions/2");
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{}",
        r.json()
    );
    // The body of an OpenAI request must be an object.
    let r = g.public.request("POST", "/v1/embeddings", Some(b"[1]"));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|e| e.contains("JSON object")));
    assert_eq!(
        g.public.get("/v2/models/minilm").json()["outputs"][0]["shape"],
        json!([-1, 384])
    );
    let r = g
        .public
        .post_json("/v1/embeddings", &json!({"model": "nope", "input": "x"}));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = g
        .public
        .post_json("/v2/models/nope/infer", &score_request());
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = g.public.request("POST", "/v1/embeddings", Some(b"{broken"));
    assert_eq!(r.status, 400);
    let r = g
        .public
        .request("POST", "/v1/embeddings", Some(&vec![b' '; 3 << 20]));
    assert_eq!(r.status, 413);
    assert_eq!(g.public.get("/v1/nothing").status, 404);
    // A Triton client's extension call says what it is.
    let r = g.public.get("/v2/models/credit-score/config");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("model configuration extension")));
    // Also the statistics of all models, whose path reads as the metadata
    // of a model named "stats".
    let r = g.public.get("/v2/models/stats");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("statistics extension")),
        "{}",
        r.json()
    );
    assert_eq!(
        g.public.get("/v2").json()["extensions"],
        json!(["binary_tensor_data"])
    );
    // A request the model's kind cannot serve is refused here, in the
    // worker's words, without waking the model to refuse it.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    for (path, body, says) in [
        (
            "/v1/embeddings",
            json!({"model": "credit-score", "input": "x"}),
            "does not produce embeddings: its kind is tabular",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "minilm", "messages": chat["messages"]}),
            "does not generate text: its kind is embedding",
        ),
        (
            "/v1/completions",
            json!({"model": "credit-score", "prompt": "x"}),
            "does not generate text",
        ),
        (
            "/v2/models/smollm2/infer",
            score_request(),
            "generates text: use POST /v1/chat/completions",
        ),
    ] {
        let r = g.public.post_json(path, &body);
        // OpenAI's (and vLLM's) 404 for a model that does not serve the
        // endpoint; KServe's a bad request.
        let want = if path.starts_with("/v1") { 404 } else { 400 };
        assert_eq!(r.status, want, "{path}");
        let message = if path.starts_with("/v1") {
            assert_eq!(r.json()["error"]["code"], "unsupported_model_kind");
            r.json()["error"]["message"].clone()
        } else {
            r.json()["error"].clone()
        };
        assert!(
            message.as_str().is_some_and(|m| m.contains(says)),
            "{path}: {message}"
        );
        assert_eq!(r.header("x-thaw-worker"), Some("gateway"), "{path}");
    }
    // An OpenAI body is read here to find its model: a compressed one is
    // a 415 that says so, not "invalid JSON"; every Content-Encoding line
    // counts.
    for lines in [&["gzip"][..], &["identity", "gzip"]] {
        let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("content-encoding", *l)).collect();
        let r = g
            .public
            .request_with("POST", "/v1/embeddings", &headers, Some(b"\x1f\x8b"));
        assert_eq!(r.status, 415, "{lines:?}");
        assert_eq!(r.json()["error"]["code"], "unsupported_content_encoding");
    }
    // Refusals whose body nobody reads (an unknown model or route, a
    // wrong kind on KServe) keep the connection for the next request.
    let score = score_request().to_string();
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{score}",
            score.len()
        )
        .into_bytes()
    };
    let responses = g
        .public
        .pipelined(&[
            post("/v2/models/nope/infer"),
            post("/v2/nothing"),
            post("/v2/models/smollm2/infer"),
            b"GET /v2/models/credit-score HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
                .to_vec(),
        ])
        .expect("pipelined");
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 404, 400, 200]);
    for m in ["credit-score", "minilm", "smollm2"] {
        assert_eq!(status(&g, m)["ready_instances"], 0, "{m} was woken");
    }
    // Failure counters have their series before the first failure, so an
    // alert on their rate works from the start.
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    for line in [
        r#"thaw_worker_crashes_total{model="minilm"} 0"#,
        r#"thaw_worker_start_failures_total{model="credit-score"} 0"#,
        r#"thaw_shed_total{model="minilm",reason="queue_full"} 0"#,
        r#"thaw_config_reloads_total{result="refused"} 0"#,
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
}

#[test]
fn a_burst_at_zero_is_served_marked_cold_and_the_model_returns_to_zero() {
    let g = gateway(&credit_score(""), "");
    assert_eq!(status(&g, "credit-score")["ready_instances"], 0);
    let responses: Vec<thaw_tests::Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                let c = g.public.clone();
                s.spawn(move || c.post_json("/v2/models/credit-score/infer", &score_request()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    for r in &responses {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r
            .header("x-thaw-worker")
            .is_some_and(|w| w.starts_with("credit-score/")));
    }
    let cold = responses
        .iter()
        .filter(|r| r.header("x-thaw-cold-start-ms").is_some())
        .count();
    assert!(cold >= 1, "no response was marked as a cold start");
    // No requests: back to zero after scale_to_zero_after.
    wait_status(&g, "credit-score", "scale to zero", |s| {
        s["ready_instances"] == 0 && s["instances"].as_array().is_some_and(Vec::is_empty)
    });
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_requests_total{model=\"credit-score\",status=\"200\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("thaw_cold_starts_total{model=\"credit-score\""),
        "{metrics}"
    );
}

#[test]
fn overload_on_a_capped_model_gets_only_200s_and_429s() {
    let capped = "[models.scaling]\nmax_instances = 1\nmax_concurrency = 1\ntarget_concurrency = 1\nmin_instances = 1\n[models.queue]\nmax_depth = 2\n";
    let g = gateway(&minilm(capped), "");
    wait_status(&g, "minilm", "the floor instance", |s| {
        s["ready_instances"] == 1
    });
    let texts: Vec<String> = (0..64)
        .map(|i| format!("a fairly long sentence number {i} to keep the worker busy for a while"))
        .collect();
    let body = json!({"model": "minilm", "input": texts});
    let responses: Vec<thaw_tests::Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..30)
            .map(|_| {
                let c = g.public.clone();
                let b = body.clone();
                s.spawn(move || c.post_json("/v1/embeddings", &b))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let shed: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + shed.len(),
        30,
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        ok >= 1 && !shed.is_empty(),
        "{ok} served, {} shed",
        shed.len()
    );
    for r in shed {
        let secs: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!(secs >= 1);
        assert_eq!(r.json()["error"]["code"], "overloaded");
    }
}

#[test]
fn min_instances_are_held_also_after_a_worker_is_killed() {
    let g = gateway(&credit_score("[models.scaling]\nmin_instances = 2\n"), "");
    wait_status(&g, "credit-score", "two ready instances", |s| {
        s["ready_instances"] == 2
    });
    let before = worker_pids(&g, "credit-score");
    let victim = before[0];
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let s = wait_status(&g, "credit-score", "a replacement", |s| {
        s["ready_instances"] == 2
            && !s["instances"]
                .to_string()
                .contains(&format!("\"pid\":{victim},"))
    });
    assert_eq!(s["instances"].as_array().map(Vec::len), Some(2));
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_worker_crashes_total{model=\"credit-score\"} 1"),
        "{metrics}"
    );
    // Still held after the idle timers.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&g, "credit-score")["ready_instances"], 2);
}

#[test]
fn a_worker_killed_mid_request_yields_a_502_and_a_replacement() {
    let g = gateway(
        &minilm("[models.scaling]\nmin_instances = 1\nmax_instances = 1\n"),
        "",
    );
    wait_status(&g, "minilm", "the floor instance", |s| {
        s["ready_instances"] == 1
    });
    let victim = worker_pids(&g, "minilm")[0];
    // Under the 64 KiB body the gateway replays, and seconds of work.
    let texts: Vec<String> = (0..1000)
        .map(|i| format!("sentence {i} keeps a worker busy a while"))
        .collect();
    let client = g.public.clone();
    let request = std::thread::spawn(move || {
        // On a connection the client would keep.
        let body = json!({"model": "minilm", "input": texts}).to_string();
        let raw = format!(
            "POST /v1/embeddings HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.raw(raw.as_bytes()).expect("a response")
    });
    wait_status(&g, "minilm", "the request in flight", |s| {
        s["in_flight"] == 1
    });
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let r = request.join().expect("client");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "worker_failed");
    // The gateway ends the connection after it, and says so.
    assert_eq!(r.header("connection"), Some("close"));
    wait_status(&g, "minilm", "a replacement", |s| {
        s["ready_instances"] == 1
            && !s["instances"]
                .to_string()
                .contains(&format!("\"pid\":{victim},"))
    });
    let ok = g.public.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "again"}),
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn a_request_that_cannot_connect_to_its_worker_goes_to_another() {
    // Health checks far apart: only the failed connection can tell the
    // gateway that an instance is lost.
    let g = gateway_with(
        "health_interval = \"1h\"",
        &minilm("[models.scaling]\nmin_instances = 3\nmax_instances = 3\n"),
        "",
    );
    wait_status(&g, "minilm", "three instances", |s| {
        s["ready_instances"] == 3
    });
    // A request in flight on each instance, in the order new requests pick
    // them on a tie (the earliest ready first).
    let body = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                  "data": ["held"]}]})
    .to_string();
    let path = "/v2/models/minilm/infer";
    let mut held = Vec::new();
    let mut order: Vec<u64> = Vec::new();
    for n in 1..=3 {
        held.push(Slow::start(g.public.address(), path, body.as_bytes()));
        let s = wait_status(&g, "minilm", "the request in flight", |s| {
            s["in_flight"] == n
        });
        let next = s["instances"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(|i| (i["in_flight"] == 1).then(|| i["id"].as_u64()).flatten())
                    .find(|id| !order.contains(id))
            })
            .expect("the instance holding the request");
        order.push(next);
    }
    let run = sockets_dir(&g._dir.path().join("state"));
    // The next request's instance loses its socket's listener, as a worker
    // that died an instant ago (before the supervisor saw it exit) has; its
    // one connection is busy, so the request must connect anew. It is sent
    // to another instance instead: served, not a 502. Once through the
    // proxy, once with a body past pingora's replay buffer (forwarded
    // whole by the gateway).
    let mut padded = br#"{"input": ["padded request"]"#.to_vec();
    padded.extend(std::iter::repeat_n(b' ', 100 * 1024));
    padded.extend_from_slice(br#", "model": "minilm"}"#);
    let small = json!({"model": "minilm", "input": "after the failure"}).to_string();
    let mut lost = Vec::new();
    for (i, body) in [small.as_bytes(), &padded].into_iter().enumerate() {
        // The lost instance is replaced at once (the health checks are an
        // hour apart), and its replacement, free, is the next pick.
        let s = wait_status(&g, "minilm", "three ready", |s| {
            s["ready_instances"] == 3 && s["starting_instances"] == 0
        });
        let free = s["instances"].as_array().and_then(|a| {
            a.iter()
                .find(|i| i["state"] == "ready" && i["in_flight"] == 0)
                .and_then(|i| i["id"].as_u64())
        });
        let next = free.unwrap_or(order[i]);
        std::fs::remove_file(run.join(format!("minilm-{next}.sock"))).expect("removed");
        let r = g.public.request("POST", "/v1/embeddings", Some(body));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let worker = r.header("x-thaw-worker").expect("a worker served it");
        assert_ne!(worker, format!("minilm/{next}"));
        lost.push(next);
    }
    // The requests the lost instances held still finish: they drain.
    for slow in held {
        assert_eq!(slow.finish().expect("answered").status, 200);
    }
    let s = wait_status(&g, "minilm", "both replaced, the lost ones gone", |s| {
        s["ready_instances"] == 3 && s["instances"].as_array().is_some_and(|a| a.len() == 3)
    });
    for id in &lost {
        assert!(
            !s["instances"]
                .to_string()
                .contains(&format!("\"id\":{id},")),
            "{s}"
        );
    }
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(r#"thaw_worker_crashes_total{model="minilm"} 2"#),
        "{metrics}"
    );
}

#[test]
fn no_worker_outlives_the_gateway() {
    for signal in ["TERM", "INT", "KILL"] {
        let mut g = gateway(&credit_score("[models.scaling]\nmin_instances = 2\n"), "");
        wait_status(&g, "credit-score", "two ready instances", |s| {
            s["ready_instances"] == 2
        });
        let pids = worker_pids(&g, "credit-score");
        g.proc.signal(signal);
        g.proc.wait_exit(START);
        let deadline = Instant::now() + Duration::from_secs(20);
        while pids.iter().any(|p| alive(*p)) {
            assert!(
                Instant::now() < deadline,
                "workers {pids:?} outlived a gateway killed with SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_body_larger_than_pingoras_replay_buffer_is_forwarded_whole() {
    let g = gateway(&minilm(""), "");
    // Valid JSON padded past 64 KiB, the model named last, as OpenAI's
    // Python client writes it.
    let mut body = br#"{"input": ["padded request"]"#.to_vec();
    body.extend(std::iter::repeat_n(b' ', 100 * 1024));
    body.extend_from_slice(br#", "model": "minilm"}"#);
    let r = g.public.request("POST", "/v1/embeddings", Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("x-thaw-worker")
        .is_some_and(|w| w.starts_with("minilm/")));
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    let v = r.json();
    assert_eq!(
        v["data"][0]["embedding"].as_array().map(Vec::len),
        Some(384)
    );
    // And again, on a pooled connection to the worker.
    let again = g.public.request("POST", "/v1/embeddings", Some(&body));
    assert_eq!(again.status, 200);
}

#[test]
fn a_body_the_gateway_admits_is_not_refused_by_the_worker() {
    // Over the workers' own 2 MiB default, under the gateway's limit.
    let g = gateway_with(
        "max_body_bytes = \"4MiB\"",
        &credit_score("[models.scaling]\nmin_instances = 1"),
        "",
    );
    let mut body = score_request().to_string().into_bytes();
    body.splice(1..1, std::iter::repeat_n(b' ', 3 << 20));
    let r = g
        .public
        .request("POST", "/v2/models/credit-score/infer", Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Streamed without a declared length past the gateway's limit: its 413,
    // in KServe's shape (the worker would take it).
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, " ".repeat(1 << 20));
    let mut raw = b"POST /v2/models/credit-score/infer HTTP/1.1\r\nhost: t\r\n\
                    transfer-encoding: chunked\r\n\r\n1\r\n[\r\n"
        .to_vec();
    for _ in 0..5 {
        raw.extend_from_slice(chunk.as_bytes());
    }
    raw.extend_from_slice(b"1\r\n]\r\n0\r\n\r\n");
    let r = g.public.raw(&raw).expect("a response");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("4194304")),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn protocol_edges_each_get_one_proper_response() {
    let g = gateway(
        &(credit_score("[models.scaling]\nmin_instances = 1") + &minilm("")),
        "",
    );
    let score = score_request().to_string();
    let warm = g
        .public
        .post_json("/v2/models/credit-score/infer", &score_request());
    assert_eq!(warm.status, 200, "{}", String::from_utf8_lossy(&warm.body));
    // KServe's versioned path reaches the same worker route.
    let versioned = g
        .public
        .post_json("/v2/models/credit-score/versions/1/infer", &score_request());
    assert_eq!(
        versioned.status,
        200,
        "{}",
        String::from_utf8_lossy(&versioned.body)
    );
    assert_eq!(versioned.json()["outputs"], warm.json()["outputs"]);

    // A 405 names the methods the path takes.
    let r = g.public.get("/v1/embeddings");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    let r = g.public.request("DELETE", "/v2/models/credit-score", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // A client that waits for a go-ahead before its body (curl does above
    // 1 MiB): the gateway gives it, reads the body to find the model, and
    // forwards it whole (past pingora's replay buffer) without passing the
    // expectation on; the worker's answer is the only final response.
    let mut body = br#"{"input": ["padded request"]"#.to_vec();
    body.extend(std::iter::repeat_n(b' ', 100 * 1024));
    body.extend_from_slice(br#", "model": "minilm"}"#);
    for body in [&body[..], br#"{"input": "short", "model": "minilm"}"#] {
        let (interim, r) = g
            .public
            .post_expecting_continue("/v1/embeddings", body)
            .expect("answered");
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["data"][0]["embedding"].as_array().map(Vec::len),
            Some(384)
        );
    }
    // A go-ahead does not end the connection (pingora used to close every
    // connection whose request asked for one, its 200 too): a request sent
    // after the body on the same connection is answered, whether the
    // gateway (OpenAI) or the worker (KServe, streamed) gave the go-ahead.
    for (path, body) in [
        (
            "/v1/embeddings",
            r#"{"input": "short", "model": "minilm"}"#.to_string(),
        ),
        ("/v2/models/credit-score/infer", score.clone()),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\
             expect: 100-continue\r\n\r\n",
            body.len()
        );
        let next = "GET /v1/models HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";
        let (interim, r) = g
            .public
            .after_continue(head.as_bytes(), format!("{body}{next}").as_bytes())
            .expect("answered");
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{path}");
        let rest = String::from_utf8_lossy(&r.body);
        assert!(
            rest.contains("HTTP/1.1 200"),
            "{path}: no answer to the next request"
        );
    }
    // An HTTP/1.0 client's expectation is ignored (it may take a 100 for
    // the answer): its one response is the final one, whether the gateway
    // reads the body or a worker does.
    for (path, body) in [
        (
            "/v1/embeddings",
            r#"{"input": "short", "model": "minilm"}"#.to_string(),
        ),
        ("/v2/models/credit-score/infer", score.clone()),
    ] {
        let raw = format!(
            "POST {path} HTTP/1.0\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n{body}",
            body.len()
        );
        let r = g.public.raw(raw.as_bytes()).expect("answered");
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Over the size limit: refused before the go-ahead, without waiting for
    // a body the client holds back.
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        3 << 20
    );
    let r = g.public.raw(head.as_bytes()).expect("a response");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // Streamed to a worker with a free slot, the worker gives the go-ahead.
    let (interim, r) = g
        .public
        .post_expecting_continue("/v2/models/credit-score/infer", score.as_bytes())
        .expect("answered");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A malformed chunk in a body streaming to a worker: a 400 in KServe's
    // shape, not a closed connection.
    let raw = b"POST /v2/models/credit-score/infer HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
                transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let r = g.public.raw(raw).expect("a response");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].is_string());
    // The same in a body the gateway reads (OpenAI): the connection ends
    // with the 400, since where the next request starts is lost (it kept
    // the connection, and took the rest of the body for a request).
    let raw = b"POST /v1/embeddings HTTP/1.1\r\nhost: t\r\n\
                transfer-encoding: chunked\r\n\r\nzz\r\n";
    let r = g.public.raw(raw).expect("a response");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));

    // Requests pipelined on one connection are each answered, in order:
    // streamed to the worker (KServe) and read by the gateway (OpenAI).
    let request = |path: &str, body: &str, close: bool| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\n{}content-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            if close { "connection: close\r\n" } else { "" },
            body.len()
        )
        .into_bytes()
    };
    let embed = json!({"input": "pipelined", "model": "minilm"}).to_string();
    // A refusal of a request whose body the gateway read whole keeps the
    // connection for the next one.
    let unknown = json!({"input": "pipelined", "model": "nope"}).to_string();
    let responses = g
        .public
        .pipelined(&[
            request("/v2/models/credit-score/infer", &score, false),
            request("/v1/embeddings", &embed, false),
            request("/v1/embeddings", &unknown, false),
            request("/v2/models/credit-score/infer", &score, true),
        ])
        .expect("answered");
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
    assert_eq!(responses[0].json()["outputs"], warm.json()["outputs"]);
    assert!(responses[1].json()["data"][0]["embedding"].is_array());
    assert_eq!(responses[2].json()["error"]["code"], "model_not_found");
    assert_eq!(responses[3].json()["outputs"], warm.json()["outputs"]);
}

/// A body over the limit, or one that stops arriving, gets its 413 or 408
/// in the API's shape on every path: read by the gateway (OpenAI),
/// streamed to a worker (KServe), and streamed after a go-ahead the worker
/// gave (the `100 Continue` is not the answer: the final one follows it).
#[test]
fn a_body_too_large_or_stalled_gets_413_or_408_on_every_path() {
    let g = gateway_with(
        "max_body_bytes = \"64KiB\"\nbody_timeout = \"1s\"",
        &credit_score("[models.scaling]\nmin_instances = 1"),
        "",
    );
    let warm = g
        .public
        .post_json("/v2/models/credit-score/infer", &score_request());
    assert_eq!(warm.status, 200, "{}", String::from_utf8_lossy(&warm.body));
    let kserve = "/v2/models/credit-score/infer";
    let chunked = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\
             expect: 100-continue\r\n\r\n"
        )
    };
    // 128 KiB in chunks of 16 KiB, after the worker's go-ahead.
    let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
    let big = chunk.repeat(8) + "0\r\n\r\n";
    let (interim, r) = g
        .public
        .after_continue(chunked(kserve).as_bytes(), big.as_bytes())
        .expect("answered");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].is_string(), "{}", r.json());

    // A body that stops: after the go-ahead, streamed, and read here.
    let (interim, r) = g
        .public
        .after_continue(chunked(kserve).as_bytes(), b"5\r\n{\"inp\r\n")
        .expect("answered");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].is_string(), "{}", r.json());
    let stalled = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n{{\"model\":"
        )
    };
    let r = g.public.raw(stalled(kserve).as_bytes()).expect("answered");
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].is_string(), "{}", r.json());
    let sent = Instant::now();
    let r = g
        .public
        .raw(stalled("/v1/embeddings").as_bytes())
        .expect("answered");
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    // After one body_timeout (1 s), not two: the refusal used to wait for
    // the stalled body a second time before it answered.
    assert!(
        sent.elapsed() < Duration::from_millis(1800),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.json()
    );

    // What was answered is counted by its final status.
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(!metrics.contains("status=\"100\""), "{metrics}");
    assert!(metrics.contains("status=\"408\""), "{metrics}");
}

#[test]
fn a_client_that_hangs_up_while_queued_leaves_the_queue() {
    let capped = "[models.scaling]\nmin_instances = 1\nmax_instances = 1\nmax_concurrency = 1\ntarget_concurrency = 1\n";
    let g = gateway(&minilm(capped), "");
    wait_status(&g, "minilm", "the floor instance", |s| {
        s["ready_instances"] == 1
    });
    // Keep the one slot busy for seconds.
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("busy sentence {i} for the only slot"))
        .collect();
    let client = g.public.clone();
    let busy = std::thread::spawn(move || {
        client.post_json(
            "/v1/embeddings",
            &json!({"model": "minilm", "input": texts}),
        )
    });
    wait_status(&g, "minilm", "the busy request in flight", |s| {
        s["in_flight"] == 1
    });
    // A second request queues behind it; its client then hangs up.
    let address = g.public.address().to_string();
    let body = json!({"model": "minilm", "input": "queued"}).to_string();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
    wait_status(&g, "minilm", "the second request queued", |s| {
        s["queue_depth"] == 1
    });
    drop(stream);
    let s = wait_status(&g, "minilm", "the hung-up request leaving the queue", |s| {
        s["queue_depth"] == 0
    });
    assert_eq!(
        s["in_flight"], 1,
        "the queue emptied only because the slot freed: {s}"
    );
    assert_eq!(busy.join().expect("client").status, 200);
    // Counted as nginx counts a client that left before its answer.
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(r#"thaw_requests_total{model="minilm",status="499"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_model_that_cannot_start_gets_a_prompt_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("thaw-model.json"), "{}").expect("manifest");
    let models = format!(
        "[[models]]\nname = \"broken\"\nsource = \"{}\"\n",
        broken.display()
    );
    let g = gateway(&models, "");
    let started = Instant::now();
    let r = g
        .public
        .post_json("/v2/models/broken/infer", &score_request());
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not prompt: {:?}",
        started.elapsed()
    );
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(secs >= 1);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|m| m.contains("cannot start")));
    // KServe's model readiness says why too.
    let ready = g.public.get("/v2/models/broken/ready");
    assert_eq!((ready.status, &ready.json()["ready"]), (503, &json!(false)));
    assert!(ready.json()["error"]
        .as_str()
        .is_some_and(|m| m.contains("cannot start")));
}

/// Resumes a worker frozen by a test that fails before the gateway kills
/// it, so that it can exit with the gateway instead of staying stopped.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        if std::thread::panicking() {
            signal(self.0, "CONT");
        }
    }
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let mut g = gateway_with(
        "health_interval = \"1s\"\nhealth_failures = 2\n",
        &credit_score("[models.scaling]\nmin_instances = 1\nmax_instances = 1\n"),
        "",
    );
    wait_status(&g, "credit-score", "the floor instance", |s| {
        s["ready_instances"] == 1
    });
    let victim = worker_pids(&g, "credit-score")[0];
    // Hung, not dead: the process lives on and its socket takes connections,
    // but nothing answers them.
    assert!(signal(victim, "STOP"), "kill -STOP {victim} failed");
    let _frozen = Frozen(victim);
    g.proc.wait_stderr("worker unresponsive", START);
    let s = wait_status(&g, "credit-score", "a replacement", |s| {
        s["ready_instances"] == 1
            && s["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 1 && i[0]["pid"] != victim)
    });
    let deadline = Instant::now() + START;
    while alive(victim) {
        assert!(
            Instant::now() < deadline,
            "the hung worker {victim} was not killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = g
        .public
        .post_json("/v2/models/credit-score/infer", &score_request());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let replacement = format!("credit-score/{}", s["instances"][0]["id"]);
    assert_eq!(r.header("x-thaw-worker"), Some(replacement.as_str()));
}

#[test]
fn a_listen_address_in_use_fails_the_start_and_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = serve(&dir, "", "", "");
    cmd.arg("--listen").arg(&address);
    let mut proc = Proc::spawn(cmd).expect("thaw starts");
    proc.wait_stderr(&format!("cannot listen on {address}"), START);
    assert!(!proc.wait_exit(START).success());
}

#[test]
fn listen_flags_take_what_the_config_takes() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, says) in [
        (
            &["--listen", "localhost:8080"][..],
            "--listen \"localhost:8080\" is not an IP:PORT address",
        ),
        (&["--admin-listen", "9090"][..], "--admin-listen \"9090\""),
        (
            &[
                "--listen",
                "127.0.0.1:18081",
                "--admin-listen",
                "127.0.0.1:18081",
            ][..],
            "would both be 127.0.0.1:18081",
        ),
    ] {
        let mut cmd = serve(&dir, "", "", "");
        cmd.args(args);
        let mut proc = Proc::spawn(cmd).expect("thaw starts");
        proc.wait_stderr(says, START);
        assert!(!proc.wait_exit(START).success(), "{args:?}");
    }
}

#[test]
fn kserve_binary_and_compressed_bodies_pass_through_and_decode_within_the_limit() {
    use flate2::write::GzEncoder;
    use std::io::Write;

    let g = gateway_with("max_body_bytes = \"64KiB\"", &credit_score(""), "");
    let infer = "/v2/models/credit-score/infer";
    let by_json = g.public.post_json(infer, &score_request());
    assert_eq!(
        by_json.status,
        200,
        "{}",
        String::from_utf8_lossy(&by_json.body)
    );
    let expected = by_json.json()["outputs"][0]["data"][0]
        .as_f64()
        .expect("a score") as f32;

    // tritonclient's default: binary input, binary output.
    let features: [f32; 10] = [60.0, 0.3, 10.0, 8.0, 0.0, 0.3, 20.0, 48.0, 6.0, 1.0];
    let bytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({"parameters": {"binary_data_output": true}, "inputs": [{
        "name": "features", "datatype": "FP32", "shape": [1, 10],
        "parameters": {"binary_data_size": bytes.len()}}]})
    .to_string();
    let length = header.len().to_string();
    let body = [header.as_bytes(), &bytes].concat();
    let r = g.public.request_with(
        "POST",
        infer,
        &[("inference-header-content-length", &length)],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json_length: usize = r
        .header("inference-header-content-length")
        .expect("a binary answer")
        .parse()
        .expect("a length");
    let score = &r.body[json_length..];
    assert_eq!(
        f32::from_le_bytes([score[0], score[1], score[2], score[3]]),
        expected
    );

    // A gzip body is decoded by the worker, and what it decodes to is held
    // to the gateway's limit (64 KiB here), however small it came.
    let gzip = |text: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(text).expect("gzip");
        e.finish().expect("gzip")
    };
    let plain = score_request().to_string();
    let r = g.public.request_with(
        "POST",
        infer,
        &[("content-encoding", "gzip")],
        Some(&gzip(plain.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["outputs"][0]["data"][0].as_f64(),
        Some(f64::from(expected))
    );
    let padded = format!("{plain}{}", " ".repeat(100 << 10));
    let small = gzip(padded.as_bytes());
    assert!(small.len() < 1 << 10, "{} bytes", small.len());
    let r = g
        .public
        .request_with("POST", infer, &[("content-encoding", "gzip")], Some(&small));
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("65536")));
}

#[test]
fn every_response_names_its_request() {
    let g = gateway(&credit_score(""), "");
    let id = |r: &thaw_tests::Response| r.header("x-request-id").map(str::to_string);
    // Made here when the client sent none: unique, on the gateway's own
    // answers and on a worker's.
    let listed = id(&g.public.get("/v1/models")).expect("an id on a listing");
    let missing = id(&g.public.get("/v1/nothing")).expect("an id on a 404");
    let scored = g
        .public
        .post_json("/v2/models/credit-score/infer", &score_request());
    assert_eq!(scored.status, 200);
    let scored = id(&scored).expect("an id on a worker's answer");
    for generated in [&listed, &missing, &scored] {
        assert_eq!(generated.len(), 32, "{generated}");
        assert!(
            generated.bytes().all(|b| b.is_ascii_hexdigit()),
            "{generated}"
        );
    }
    assert!(listed != missing && missing != scored && listed != scored);
    // The client's own is kept, on both; an unusable one is replaced.
    for (path, body) in [
        (
            "/v2/models/credit-score/infer",
            Some(score_request().to_string()),
        ),
        ("/v2/models/nope/infer", Some(score_request().to_string())),
        ("/v1/models", None),
    ] {
        let method = if body.is_some() { "POST" } else { "GET" };
        let r = g.public.request_with(
            method,
            path,
            &[("x-request-id", "trace-42")],
            body.as_deref().map(str::as_bytes),
        );
        assert_eq!(r.header("x-request-id"), Some("trace-42"), "{path}");
    }
    let long = "x".repeat(200);
    let r = g
        .public
        .request_with("GET", "/v1/models", &[("x-request-id", &long)], None);
    assert_eq!(id(&r).map(|i| i.len()), Some(32));
}

#[test]
fn browsers_of_allowed_origins_may_call_the_api() {
    let g = gateway_with(
        "cors_allow_origins = [\"http://localhost:3000\"]",
        &credit_score(""),
        "",
    );
    let preflight = g.public.request_with(
        "OPTIONS",
        "/v2/models/credit-score/infer",
        &[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, x-request-id",
            ),
        ],
        None,
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type, x-request-id")
    );
    // The answers, a worker's and the gateway's own, let the page read them.
    let body = score_request().to_string();
    let headers = [("origin", "http://localhost:3000")];
    for (method, path, status) in [
        ("POST", "/v2/models/credit-score/infer", 200),
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", "/v1/models", 200),
    ] {
        let b = (method == "POST").then_some(body.as_bytes());
        let r = g.public.request_with(method, path, &headers, b);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://localhost:3000"),
            "{path}"
        );
        assert!(
            r.header("access-control-expose-headers")
                .is_some_and(|h| h.contains("x-request-id")),
            "{path}"
        );
        assert_eq!(r.header("vary"), Some("Origin"), "{path}");
    }
    // Another origin gets no such headers (its browser keeps the answer
    // from the page), and its preflight is not answered as one.
    // It still says Vary: Origin, so that a cache keeps the answers apart.
    let r = g.public.request_with(
        "POST",
        "/v2/models/credit-score/infer",
        &[("origin", "https://elsewhere.example")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = g.public.request_with(
        "OPTIONS",
        "/v1/embeddings",
        &[
            ("origin", "https://elsewhere.example"),
            ("access-control-request-method", "POST"),
        ],
        None,
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn a_body_refused_for_its_headers_is_answered_and_the_connection_kept() {
    let g = gateway(&credit_score(""), "");
    let infer = "/v2/models/credit-score/infer";
    // The worker refuses these from their headers (an encoding it does not
    // decode, a malformed Inference-Header-Content-Length) but reads the
    // body first: a body that queued at the gateway (the model at zero)
    // and is forwarded whole used to be cut off by the worker's early
    // answer, sent again three times and answered 502; one streamed to a
    // warm worker used to lose the connection, and the request after it.
    let big = vec![b'a'; 1 << 20];
    let plain = score_request().to_string();
    for (name, value, status) in [
        ("content-encoding", "br", 415),
        ("inference-header-content-length", "abc", 400),
    ] {
        wait_status(&g, "credit-score", "a scale to zero", |s| {
            s["ready_instances"] == 0 && s["starting_instances"] == 0
        });
        let r = g
            .public
            .request_with("POST", infer, &[(name, value)], Some(&big));
        assert_eq!(
            r.status,
            status,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let head = format!(
            "POST {infer} HTTP/1.1\r\nhost: t\r\n{name}: {value}\r\ncontent-length: {}\r\n\r\n",
            big.len()
        );
        let last = format!(
            "POST {infer} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{plain}",
            plain.len()
        );
        let responses = g
            .public
            .pipelined(&[[head.into_bytes(), big.clone()].concat(), last.into_bytes()])
            .expect("pipelined");
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [status, 200], "{name}");
    }
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(r#"thaw_requests_replayed_total{model="credit-score"} 0"#),
        "{metrics}"
    );
}
