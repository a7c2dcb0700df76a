//! Warmth tiers end to end: the real `thaw` gateway forking workers from a
//! per-model template. A cold start comes from the warmest tier there is
//! (template, else snapshot, else source); the template outlives the last
//! worker by `keep_template`; a template that dies is restarted without
//! taking its workers along; nothing outlives the gateway.

use std::ops::{Deref, DerefMut};
use std::process::Command;

use serde_json::Value;
use thaw_tests::served::{self, alive, Served, START};

/// A gateway and the directory of its config and state.
struct Gateway {
    served: Served,
    _dir: tempfile::TempDir,
}

impl Deref for Gateway {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Served {
        &mut self.served
    }
}

/// `thaw serve` on the credit-score model with short timers; `scaling` is
/// more TOML for the model's `[models.scaling]`.
fn gateway(scaling: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let timers = "[models.scaling]\nstable_window = \"2s\"\nscale_to_zero_after = \"1s\"\n";
    let model = served::credit_score("credit-score", None, &format!("{timers}{scaling}"));
    let served = Served::start(dir.path(), &served::config(dir.path(), "", &model));
    Gateway { served, _dir: dir }
}

fn score(g: &Gateway) -> thaw_tests::Response {
    let r = g.score("credit-score");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r
}

fn status(g: &Gateway) -> Value {
    g.status()["models"][0].clone()
}

/// Waits until `pred` holds on the model's status.
fn wait_status(g: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    g.wait(what, |s| pred(&s["models"][0]))["models"][0].clone()
}

fn pid(v: &Value) -> u32 {
    v["pid"].as_u64().expect("pid") as u32
}

fn wait_gone(pid: u32) {
    served::wait_gone(&[pid], "a process that should have exited");
}

fn started_from(s: &Value) -> String {
    s["instances"][0]["started_from"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn idle(s: &Value) -> bool {
    s["instances"].as_array().is_some_and(Vec::is_empty) && s["starting_instances"] == 0
}

#[test]
fn cold_starts_come_from_the_warmest_tier_and_the_template_is_demoted_after_keep_template() {
    let g = gateway("keep_template = \"4s\"");
    assert_eq!(
        status(&g)["tier"],
        "source",
        "nothing is built before the first request"
    );

    // From the source: the snapshot is built, a template started, a worker forked.
    let r = score(&g);
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    let s = status(&g);
    assert_eq!(started_from(&s), "source", "{s}");
    assert_eq!(s["tier"], "hot");
    let template = pid(&s["template"]);

    // Workers go after scale_to_zero_after; the template stays.
    let s = wait_status(&g, "scale to zero", idle);
    assert_eq!(s["tier"], "template", "{s}");
    assert_eq!(pid(&s["template"]), template);

    // From the template: forked, the template itself untouched.
    let r = score(&g);
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    let s = status(&g);
    assert_eq!(started_from(&s), "template", "{s}");
    assert_eq!(pid(&s["template"]), template);

    // keep_template after the last worker, the template goes too.
    let s = wait_status(&g, "template demotion", |s| {
        idle(s) && s["template"].is_null()
    });
    assert_eq!(s["tier"], "snapshot", "{s}");
    wait_gone(template);

    // From the snapshot: a new template, then a fork.
    score(&g);
    let s = status(&g);
    assert_eq!(started_from(&s), "snapshot", "{s}");
    assert_ne!(pid(&s["template"]), template);

    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    for line in [
        r#"thaw_cold_starts_total{model="credit-score",tier="source"} 1"#,
        r#"thaw_cold_starts_total{model="credit-score",tier="template"} 1"#,
        r#"thaw_cold_starts_total{model="credit-score",tier="snapshot"} 1"#,
        r#"thaw_template_events_total{event="demoted",model="credit-score"} 1"#,
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    for phase in [
        "snapshot_build",
        "snapshot_open",
        "model_build",
        "warm_up",
        "fork",
        "child_init",
        "first_response",
    ] {
        let count = format!(
            "thaw_cold_start_duration_seconds_count{{model=\"credit-score\",phase=\"{phase}\"}}"
        );
        assert!(metrics.contains(&count), "no {phase} phase in:\n{metrics}");
    }
    // `spawn_to_ready` is each start as the gateway saw it, so it holds
    // what the starts spent building the snapshot and templates, not only
    // the forks.
    let sum = |phase: &str| -> f64 {
        let key = format!(
            "thaw_cold_start_duration_seconds_sum{{model=\"credit-score\",phase=\"{phase}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{metrics}"))
    };
    let parts: f64 = [
        "snapshot_build",
        "snapshot_open",
        "model_build",
        "warm_up",
        "child_init",
    ]
    .iter()
    .map(|p| sum(p))
    .sum();
    assert!(
        sum("spawn_to_ready") >= parts,
        "spawn_to_ready {} < its parts {parts}",
        sum("spawn_to_ready")
    );
}

#[test]
fn a_template_that_dies_is_restarted_and_its_workers_keep_serving() {
    let g = gateway("min_instances = 1");
    let s = wait_status(&g, "a ready worker", |s| {
        s["ready_instances"] == 1 && !s["template"].is_null()
    });
    let (worker, template) = (pid(&s["instances"][0]), pid(&s["template"]));
    let _ = Command::new("kill")
        .args(["-KILL", &template.to_string()])
        .status();

    // The worker was the template's child, not its hostage.
    let s = wait_status(&g, "a new template", |s| {
        !s["template"].is_null() && pid(&s["template"]) != template
    });
    wait_gone(template);
    assert_eq!(pid(&s["instances"][0]), worker);
    assert!(alive(worker));
    let r = score(&g);
    assert_eq!(
        r.header("x-thaw-worker"),
        Some(format!("credit-score/{}", s["instances"][0]["id"]).as_str())
    );

    // A worker that dies now is replaced from the new template.
    let _ = Command::new("kill")
        .args(["-KILL", &worker.to_string()])
        .status();
    let s = wait_status(&g, "a replacement worker", |s| {
        s["ready_instances"] == 1 && pid(&s["instances"][0]) != worker
    });
    assert_eq!(started_from(&s), "template", "{s}");
    score(&g);
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(r#"thaw_template_events_total{event="crashed",model="credit-score"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_template_that_dies_at_zero_within_keep_template_comes_back() {
    let g = gateway("keep_template = \"1h\"");
    score(&g);
    let s = wait_status(&g, "scale to zero", idle);
    let template = pid(&s["template"]);
    let _ = Command::new("kill")
        .args(["-KILL", &template.to_string()])
        .status();
    let s = wait_status(&g, "a new template at zero", |s| {
        idle(s) && !s["template"].is_null() && pid(&s["template"]) != template
    });
    assert_eq!(s["tier"], "template", "{s}");
    score(&g);
    assert_eq!(started_from(&status(&g)), "template");
}

#[test]
fn a_template_that_cannot_fork_is_replaced_and_the_worker_started_by_exec() {
    let g = gateway("keep_template = \"1h\"");
    score(&g);
    let s = wait_status(&g, "scale to zero", idle);
    let template = pid(&s["template"]);
    // With its control socket gone the template runs on and no fork
    // reaches it, as with one killed and not yet reaped.
    let controls: Vec<_> = std::fs::read_dir(served::sockets_dir(&g._dir.path().join("state")))
        .expect("sockets dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.to_string_lossy().ends_with(".template.sock"))
        .collect();
    assert_eq!(controls.len(), 1, "{controls:?}");
    std::fs::remove_file(&controls[0]).expect("control socket removed");
    served_by_exec_and_replaced(&g, template);
}

/// The cold request is served all the same, by a worker exec'd, and a new
/// template replaces `template`.
fn served_by_exec_and_replaced(g: &Gateway, template: u32) {
    let r = score(g);
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    assert_eq!(started_from(&status(g)), "exec");
    wait_status(g, "a new template", |s| {
        !s["template"].is_null() && pid(&s["template"]) != template
    });
    wait_gone(template);
}

#[test]
fn a_stopped_template_is_replaced_and_the_worker_started_by_exec() {
    let g = gateway("keep_template = \"1h\"");
    score(&g);
    let s = wait_status(&g, "scale to zero", idle);
    let template = pid(&s["template"]);
    // Stopped, it accepts a fork request and never answers it.
    let _ = Command::new("kill")
        .args(["-STOP", &template.to_string()])
        .status();

    // Once it has not answered for a few seconds (not after the start's
    // whole timeout, longer than the queue's).
    served_by_exec_and_replaced(&g, template);
}

#[test]
fn no_template_or_worker_outlives_the_gateway() {
    for signal in ["TERM", "KILL"] {
        let mut g = gateway("min_instances = 2");
        let s = wait_status(&g, "two ready workers", |s| s["ready_instances"] == 2);
        let pids = served::pids(&s);
        g.proc.signal(signal);
        g.proc.wait_exit(START);
        served::wait_gone(
            &pids,
            &format!("outlived a gateway killed with SIG{signal}"),
        );
    }
}
