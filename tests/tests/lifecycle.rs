//! How a gateway ends and is replaced: SIGTERM and SIGINT let a request in
//! flight finish (200) before the process exits 0 with nothing left
//! behind; `thaw serve --upgrade` with SIGQUIT to the old process moves
//! the listening sockets to a new binary while a stream of requests sees
//! no failure.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thaw_tests::served::{
    config, credit_score, pids, score_request, serve_command, wait_gone, with_second, Served, Slow,
    START,
};
use thaw_tests::Proc;

#[test]
fn a_request_in_flight_at_sigterm_or_sigint_completes_and_the_gateway_exits_0() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config(
            dir.path(),
            "",
            &credit_score("credit-score", None, "[models.scaling]\nmin_instances = 1"),
        );
        let mut g = Served::start(dir.path(), &text);
        let s = g.wait("an instance ready", |s| {
            s["models"][0]["ready_instances"] == 1
        });
        let processes = pids(&s["models"][0]);
        let body = score_request().to_string();
        let slow = Slow::start(
            g.public.address(),
            "/v2/models/credit-score/infer",
            body.as_bytes(),
        );
        g.wait("the request in flight", |s| {
            s["models"][0]["in_flight"] == 1
        });

        g.proc.signal(signal);
        let draining = g.proc.wait_event("draining", START);
        assert_eq!(draining["connections"], 1, "{draining}");
        // It stops accepting (the listener closes as its accept loop ends).
        let deadline = Instant::now() + START;
        while std::net::TcpStream::connect(g.public.address()).is_ok() {
            assert!(Instant::now() < deadline, "SIG{signal}: still accepting");
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = slow.finish().expect("the request in flight is answered");
        assert_eq!(
            r.status,
            200,
            "SIG{signal}: {}",
            String::from_utf8_lossy(&r.body)
        );
        g.proc.wait_event("stopped", START);
        let status = g.proc.wait_exit(START);
        assert!(status.success(), "SIG{signal}: exit status {status:?}");
        wait_gone(&processes, "workers and template after the gateway exited");
    }
}

/// Requests still queued when the gateway stops waiting get a 503 with
/// Retry-After, not a closed connection: when the grace period ends, and
/// when a second SIGTERM cuts it short.
#[test]
fn requests_still_queued_when_the_grace_period_ends_get_a_503() {
    for (grace, signals) in [("1s", 1), ("1h", 2)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config(
            dir.path(),
            &format!("shutdown_grace = \"{grace}\""),
            &credit_score(
                "credit-score",
                None,
                "[models.scaling]\nmin_instances = 1\nmax_instances = 1\ntarget_concurrency = 1\nmax_concurrency = 1",
            ),
        );
        let mut g = Served::start(dir.path(), &text);
        g.wait("an instance ready", |s| {
            s["models"][0]["ready_instances"] == 1
        });
        // The only slot is held by a request that never completes; the
        // next one queues behind it.
        let body = score_request().to_string();
        let _stuck = Slow::start(
            g.public.address(),
            "/v2/models/credit-score/infer",
            body.as_bytes(),
        );
        g.wait("the request in flight", |s| {
            s["models"][0]["in_flight"] == 1
        });
        let client = g.public.clone();
        let queued = std::thread::spawn(move || {
            client.post_json("/v2/models/credit-score/infer", &score_request())
        });
        g.wait("the request queued", |s| s["models"][0]["queue_depth"] == 1);

        g.proc.signal("TERM");
        if signals == 2 {
            g.proc.wait_event("draining", START);
            g.proc.signal("TERM");
        }
        let r = queued.join().expect("client");
        assert_eq!(
            r.status,
            503,
            "{grace}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutting down")));
        let status = g.proc.wait_exit(START);
        assert!(status.success(), "{grace}: exit status {status:?}");
    }
}

#[test]
fn an_upgrade_hands_the_sockets_over_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        "",
        &credit_score("credit-score", None, "[models.scaling]\nmin_instances = 1"),
    );
    let mut old = Served::start(dir.path(), &text);
    old.wait("an instance ready", |s| {
        s["models"][0]["ready_instances"] == 1
    });
    let old_pids = pids(&old.model("credit-score").expect("model"));
    let address = old.public.address().to_string();
    let admin = old.admin.address().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            let client = thaw_tests::Client::new(&address);
            std::thread::spawn(move || {
                let body = score_request().to_string();
                let request = format!(
                    "POST /v2/models/credit-score/infer HTTP/1.1\r\nhost: t\r\n\
                     connection: close\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                while !stop.load(Ordering::Relaxed) {
                    match client.raw(request.as_bytes()) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().expect("failures").push(format!(
                            "{} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => failures.lock().expect("failures").push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let wait_for_load = |n: usize| {
        let deadline = Instant::now() + START;
        let start = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "the load stalled");
            // Progress of other threads: poll it.
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_load(50);

    // The new binary takes the sockets over; the old one is told to hand
    // them over with SIGQUIT.
    let new_proc = Proc::spawn(serve_command(
        &old.config,
        &["--upgrade", "--listen", &address, "--admin-listen", &admin],
    ))
    .expect("the new thaw starts");
    old.proc.signal("QUIT");
    old.proc.wait_event("upgraded", START);
    old.proc.wait_event("draining", START);
    old.proc.wait_event("stopped", START);
    let status = old.proc.wait_exit(START);
    assert!(status.success(), "the old process exited with {status:?}");
    wait_gone(&old_pids, "the old process's workers and template");

    let new = {
        let mut proc = new_proc;
        let ready = proc.wait_event("ready", START);
        assert_eq!(ready["address"], address.as_str(), "{ready}");
        Served {
            public: thaw_tests::Client::new(&address),
            admin: thaw_tests::Client::new(&admin),
            proc,
            config: old.config.clone(),
        }
    };
    // Only the new process serves now.
    wait_for_load(50);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    let failures = failures.lock().expect("failures");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the upgrade: {:?}",
        failures.len(),
        failures.len() + ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    let served = new.model("credit-score").expect("model");
    assert!(served["ready_instances"].as_u64() >= Some(1), "{served}");
    let metrics = String::from_utf8(new.admin.get("/metrics").body).expect("text");
    assert!(
        metrics.contains("thaw_requests_total{model=\"credit-score\",status=\"200\"}"),
        "the new process served nothing: {metrics}"
    );
    drop(old);
}

/// A gateway killed with SIGKILL cleans nothing up; the next one on the
/// same state directory removes what it left (its sockets directory) and
/// the snapshots of models no longer configured, and keeps the others'.
#[test]
fn a_restart_removes_what_a_killed_gateway_and_removed_models_left() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = Served::start(dir.path(), &with_second(dir.path()));
    for model in ["credit-score", "second"] {
        assert_eq!(g.score(model).status, 200);
    }
    let state = dir.path().join("state");
    // The names in a directory of the state, sorted.
    let listing = |what: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(state.join(what))
            .expect("listed")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    };
    let runs = || -> Vec<String> {
        let mut names = listing("");
        names.retain(|n| n.starts_with("run-"));
        names
    };
    let snapshots = listing("snapshots");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    g.proc.signal("KILL");
    g.proc.wait_exit(START);
    let left = runs();
    assert_eq!(
        left.len(),
        1,
        "the killed gateway's sockets directory: {left:?}"
    );

    let one = config(dir.path(), "", &credit_score("credit-score", None, ""));
    let g = Served::start(dir.path(), &one);
    let now = runs();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(
        now, left,
        "the dead gateway's directory is gone, the new one's there"
    );
    assert_eq!(
        listing("snapshots"),
        snapshots
            .into_iter()
            .filter(|s| s.starts_with("credit-score-"))
            .collect::<Vec<_>>()
    );
    assert_eq!(g.score("credit-score").status, 200);
}
