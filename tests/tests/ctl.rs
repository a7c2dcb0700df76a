//! `thaw ctl` and the admin API end to end: the status table, scale and
//! drain overrides until the next reload, exit codes scripts can trust,
//! and the admin API's bearer token.

use serde_json::Value;
use thaw_tests::served::{
    config, credit_score, ctl, pids, score_request, serve_command, wait_gone, Served, Slow, START,
};
use thaw_tests::Proc;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn model(s: &Value) -> &Value {
    &s["models"][0]
}

#[test]
fn status_scale_drain_and_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        "",
        &credit_score("credit-score", None, "[models.scaling]\nmin_instances = 1"),
    );
    let g = Served::start(dir.path(), &text);
    g.wait("one ready", |s| model(s)["ready_instances"] == 1);

    let out = g.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    assert!(table.contains("MODEL"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("credit-score"))
        .unwrap_or_else(|| panic!("no row: {table}"));
    assert!(row.contains("hot") && row.contains("1/4"), "{row}");
    assert!(table.contains("STARTED-FROM"), "{table}");
    let out = g.ctl(&["status", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(model(&json)["name"], "credit-score");

    // scale: a floor of 2 until the next reload.
    let out = g.ctl(&["scale", "credit-score", "--min", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = g.wait("two ready", |s| model(s)["ready_instances"] == 2);
    assert_eq!(model(&s)["min_instances"], 2);
    assert_eq!(model(&s)["override"]["kind"], "scale", "{s}");
    let table = stdout(&g.ctl(&["status"]));
    assert!(table.contains("scale 2/4"), "{table}");

    // drain: the request in flight finishes, new ones get 503, the workers stop.
    let workers: Vec<u32> = pids(model(&s))
        .into_iter()
        .filter(|p| Some(*p as u64) != model(&s)["template"]["pid"].as_u64())
        .collect();
    let body = score_request().to_string();
    let slow = Slow::start(
        g.public.address(),
        "/v2/models/credit-score/infer",
        body.as_bytes(),
    );
    g.wait("the request in flight", |s| model(s)["in_flight"] == 1);
    let out = g.ctl(&["drain", "credit-score"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = g.score("credit-score");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert!(String::from_utf8_lossy(&r.body).contains("drained"));
    // KServe's model readiness says so too (it takes no request now).
    let ready = g.public.get("/v2/models/credit-score/ready");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["ready"], false);
    assert!(ready.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("drained")));
    let done = slow.finish().expect("answered");
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let s = g.wait("drained to zero", |s| {
        model(s)["ready_instances"] == 0 && model(s)["instances"] == serde_json::json!([])
    });
    assert_eq!(model(&s)["override"]["kind"], "drained", "{s}");
    assert_eq!(model(&s)["max_instances"], 0);
    wait_gone(&workers, "the drained workers");

    // A reload ends every override.
    let out = g.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).starts_with("reloaded: config version 2"),
        "{out:?}"
    );
    let s = g.wait("back to the config", |s| model(s)["ready_instances"] == 1);
    assert_eq!(model(&s)["override"], Value::Null, "{s}");
    assert_eq!(model(&s)["min_instances"], 1);
    assert_eq!(g.score("credit-score").status, 200);
    assert_eq!(g.public.get("/v2/models/credit-score/ready").status, 200);
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = Served::start(
        dir.path(),
        &config(dir.path(), "", &credit_score("credit-score", None, "")),
    );
    let code = |out: std::process::Output| out.status.code();
    assert_eq!(code(g.ctl(&["scale", "nope", "--min", "1"])), Some(1));
    assert_eq!(code(g.ctl(&["drain", "nope"])), Some(1));
    assert_eq!(
        code(g.ctl(&["scale", "credit-score", "--min", "3", "--max", "2"])),
        Some(1)
    );
    assert_eq!(code(g.ctl(&["scale", "credit-score"])), Some(2), "usage");
    assert_eq!(code(g.ctl(&["frobnicate"])), Some(2), "usage");
    assert_eq!(code(g.ctl(&["drain", ""])), Some(2), "no model name");
    assert_eq!(
        code(g.ctl(&["scale", "a/b", "--min", "1"])),
        Some(2),
        "not a model name"
    );
    // The public listener is not the admin API, whatever it answers.
    let public = format!("http://{}", g.public.address());
    let out = ctl(&public, &["status"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not thaw's admin API"),
        "{out:?}"
    );
    // Nothing listens on a port just freed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("address").port();
    drop(free);
    let out = ctl(&format!("http://127.0.0.1:{port}"), &["status"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = ctl("127.0.0.1:9", &["status"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(code(g.ctl(&["status"])), Some(0));
}

#[test]
fn the_admin_token_guards_every_admin_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = Served::start(
        dir.path(),
        &config(
            dir.path(),
            // A secret written with its file's newline: compared trimmed.
            "admin_token = \"s3cret\\n\"",
            &credit_score("credit-score", None, ""),
        ),
    );
    for path in ["/admin/status", "/metrics", "/healthz"] {
        let r = g.admin.get(path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let with = |token: &str| {
        let raw = format!(
            "GET /admin/status HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
             authorization: Bearer {token}\r\n\r\n"
        );
        g.admin.raw(raw.as_bytes()).expect("answered").status
    };
    assert_eq!(with("s3cret"), 200);
    assert_eq!(with("s3cre"), 401);
    let admin = format!("http://{}", g.admin.address());
    let out = ctl(&admin, &["status"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("THAW_ADMIN_TOKEN"));
    let out = ctl(&admin, &["status"], Some("s3cret"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The public listener knows nothing of it.
    assert_eq!(g.score("credit-score").status, 200);
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path(), "", &credit_score("credit-score", None, "")).replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"0.0.0.0:0\"",
    );
    let path = dir.path().join("thaw.toml");
    std::fs::write(&path, &text).expect("config written");
    let mut refused = Proc::spawn(serve_command(&path, &[])).expect("thaw runs");
    let line = refused.wait_stderr("admin_token", START);
    assert!(line.contains("0.0.0.0"), "{line}");
    let status = refused.wait_exit(START);
    assert!(!status.success());

    let mut with_token = serve_command(&path, &[]);
    with_token.env("THAW_ADMIN_TOKEN", "s3cret");
    let mut started = Proc::spawn(with_token).expect("thaw runs");
    let ready = started.wait_event("ready", START);
    assert!(
        ready["admin"]
            .as_str()
            .is_some_and(|a| a.starts_with("0.0.0.0:")),
        "{ready}"
    );
}
