//! The standby pool with the real `thaw-worker --standby` on the CPU (the
//! GPU path is the same protocol; a CUDA context is what it makes ready
//! there): filled ahead of demand, a process taken and activated with a
//! model serves it, the pool refills with a new process, and a pool whose
//! processes cannot start reports it instead of looping.

use std::path::PathBuf;
use std::time::Duration;

use thaw_gateway::supervisor::standby::StandbyPool;
use thaw_gateway::supervisor::WorkerSpec;
use thaw_tests::{bin, repo_root, Client};

const START: Duration = Duration::from_secs(60);

fn credit_score() -> WorkerSpec {
    WorkerSpec {
        model: "scorer".into(),
        source: repo_root().join("configs/models/credit-score"),
        kind: Some(thaw_snapshot::ModelKind::Tabular),
        device: "cpu".into(),
        memory_limit: None,
    }
}

#[tokio::test]
async fn a_standby_process_is_activated_and_replaced() {
    let pool = StandbyPool::new(bin("thaw-worker"), 1, START);
    pool.fill("cpu");
    assert!(
        pool.wait_ready("cpu", 1).await,
        "no standby process started"
    );
    assert_eq!(pool.counts("cpu"), (1, 0));

    let standby = pool.take("cpu").expect("one is ready");
    let first = standby.pid;
    assert!(standby.context_ms >= 0.0);
    // Taking one starts its replacement at once.
    assert_eq!(pool.counts("cpu"), (0, 1));

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("w.sock");
    let worker = standby
        .activate(&credit_score(), &socket, START)
        .await
        .expect("activated");
    assert_eq!(worker.pid, first, "the standby process itself serves");
    assert_eq!(worker.ready["tier"], "standby");
    assert_eq!(worker.ready["model"], "scorer");

    let client = Client::new(&format!("unix:{}", socket.display()));
    let body = serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32",
        "shape": [1, 10], "data": [60, 0.3, 10, 8, 0, 0.3, 20, 48, 6, 1]}]});
    let response =
        tokio::task::spawn_blocking(move || client.post_json("/v2/models/scorer/infer", &body))
            .await
            .expect("request thread");
    assert_eq!(response.status, 200);

    assert!(pool.wait_ready("cpu", 1).await, "no replacement started");
    let replacement = pool.take("cpu").expect("the replacement");
    assert_ne!(replacement.pid, first);

    // The worker stops with its handle, as any other.
    let handle = worker.handle();
    handle.stop(Duration::from_secs(10)).await;
    assert!(handle.has_exited());
}

#[tokio::test]
async fn a_pool_that_cannot_start_reports_it() {
    let pool = StandbyPool::new(PathBuf::from("/nonexistent/thaw-worker"), 2, START);
    pool.fill("cpu");
    assert!(!pool.wait_ready("cpu", 1).await);
    assert_eq!(pool.counts("cpu"), (0, 0));
    // A failed device is not retried at once: nothing starts.
    assert!(pool.take("cpu").is_none());
    assert_eq!(pool.counts("cpu"), (0, 0));
}

#[tokio::test]
async fn an_activation_the_process_refuses_is_an_error() {
    let pool = StandbyPool::new(bin("thaw-worker"), 1, START);
    pool.fill("cpu");
    assert!(pool.wait_ready("cpu", 1).await);
    let standby = pool.take("cpu").expect("ready");
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = WorkerSpec {
        source: dir.path().join("absent"),
        ..credit_score()
    };
    let e = standby
        .activate(&spec, &dir.path().join("w.sock"), START)
        .await
        .expect_err("no such model");
    assert!(e.to_string().contains("scorer"), "{e}");
}
