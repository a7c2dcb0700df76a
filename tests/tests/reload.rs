//! Live reload end to end: the real `thaw` gateway and workers, its config
//! rewritten under load. Reloads drop nothing; a bad file or a restart-only
//! change is refused whole with file, line and field; SIGHUP and a change
//! of the file reload like the admin API; a removed model finishes what it
//! accepted, then answers 404 and its processes are gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use thaw_tests::served::{
    config, copy_credit_score, credit_score, pids, score_request, serve_command, wait_gone,
    with_second, Served, Slow,
};

/// Requests answered, and the failures among them, of one load thread.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Posts to `model` on `address` until `stop`; `accept` says which
/// statuses are fine.
fn load(
    address: String,
    model: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    accept: fn(u16) -> bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client = thaw_tests::Client::new(&address);
        let body = score_request().to_string();
        let head = format!(
            "POST /v2/models/{model}/infer HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        while !stop.load(Ordering::Relaxed) {
            match client.raw(head.as_bytes()) {
                Ok(r) if accept(r.status) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => tally.failures.lock().expect("tally").push(format!(
                    "{model}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) => tally
                    .failures
                    .lock()
                    .expect("tally")
                    .push(format!("{model}: {e}")),
            }
        }
    })
}

#[test]
fn reloads_under_load_drop_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = copy_credit_score(&dir.path().join("copy"));
    // `stays` is configured throughout: its source moves between two
    // directories (a rolling replacement) and its knobs change; `flaps` is
    // added and removed; `tuned` only has its knobs changed.
    let text = |i: usize| {
        let source = (i % 2 == 1).then_some(copy.as_path());
        let stays = credit_score(
            "stays",
            source,
            &format!(
                "[models.scaling]\nmin_instances = 1\nmax_concurrency = {}\n",
                8 + i % 3
            ),
        );
        let tuned = credit_score(
            "tuned",
            None,
            &format!("[models.queue]\nmax_depth = {}\n", 100 + i),
        );
        let flaps = if i % 2 == 1 {
            credit_score("flaps", None, "")
        } else {
            String::new()
        };
        config(dir.path(), "", &format!("{stays}\n{tuned}\n{flaps}"))
    };
    let g = Served::start(dir.path(), &text(0));
    g.wait("stays ready", |s| {
        s["models"][0]["name"] == "stays" && s["models"][0]["ready_instances"] == 1
    });

    let stop = Arc::new(AtomicBool::new(false));
    let stays = Arc::new(Tally::default());
    let tuned = Arc::new(Tally::default());
    let flaps = Arc::new(Tally::default());
    let address = g.public.address().to_string();
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(load(
            address.clone(),
            "stays",
            stop.clone(),
            stays.clone(),
            |s| s == 200,
        ));
    }
    threads.push(load(
        address.clone(),
        "tuned",
        stop.clone(),
        tuned.clone(),
        |s| s == 200,
    ));
    // Configured or not, a model answers 200 or 404, never an error.
    threads.push(load(address, "flaps", stop.clone(), flaps.clone(), |s| {
        s == 200 || s == 404
    }));

    // All three triggers in turn; the file watcher sees every rewrite too,
    // so a reload may run twice (the second changes nothing): wait for the
    // new config to be in force rather than count reloads.
    let repo = thaw_tests::repo_root().join("configs/models/credit-score");
    for i in 1..=20 {
        let before = stays.ok.load(Ordering::Relaxed);
        let version = g.status()["config"]["version"].as_u64().expect("version");
        g.rewrite(&text(i));
        match i % 3 {
            0 => {}
            1 => g.proc.signal("HUP"),
            _ => assert_eq!(g.reload().status, 200),
        }
        let source = if i % 2 == 1 { &copy } else { &repo };
        let s = g.wait(&format!("reload {i} in force"), |s| {
            let models = s["models"].as_array().expect("models");
            let has = |name: &str| models.iter().any(|m| m["name"] == name);
            s["config"]["version"].as_u64() > Some(version)
                && models.iter().any(|m| {
                    m["name"] == "stays" && m["source"] == source.display().to_string().as_str()
                })
                && has("flaps") == (i % 2 == 1)
        });
        assert_eq!(s["last_reload"]["error"], Value::Null, "{s}");
        // Load goes on between reloads: wait for some of it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stays.ok.load(Ordering::Relaxed) < before + 5 {
            assert!(Instant::now() < deadline, "no progress after reload {i}");
            // Progress of other threads: poll it.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    for (name, tally) in [("stays", &stays), ("tuned", &tuned), ("flaps", &flaps)] {
        let failures = tally.failures.lock().expect("tally");
        assert!(
            failures.is_empty(),
            "{name}: {} failed of {}: {:?}",
            failures.len(),
            failures.len() + tally.ok.load(Ordering::Relaxed),
            &failures[..failures.len().min(5)]
        );
    }
    eprintln!(
        "served across 20 reloads: stays {}, tuned {}, flaps {}",
        stays.ok.load(Ordering::Relaxed),
        tuned.ok.load(Ordering::Relaxed),
        flaps.ok.load(Ordering::Relaxed)
    );
    assert!(stays.ok.load(Ordering::Relaxed) >= 100);
    let s = g.status();
    // `stays` was replaced on each reload: a new version, a cold start.
    assert_eq!(s["models"][0]["name"], "stays");
    assert!(s["models"][0]["cold_starts"].as_u64() >= Some(21), "{s}");
    let names: Vec<&str> = s["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["stays", "tuned"]);
    assert_eq!(s["models"][1]["name"], "tuned");
}

#[test]
fn a_bad_file_is_refused_whole_with_file_line_and_field_and_the_old_config_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = config(dir.path(), "", &credit_score("credit-score", None, ""));
    let g = Served::start(dir.path(), &good);
    assert_eq!(g.score("credit-score").status, 200);
    let hash = g.status()["config"]["hash"].clone();

    // A second model added, and a range error on the first: nothing of it
    // may apply.
    let bad = config(
        dir.path(),
        "",
        &format!(
            "{}{}",
            credit_score(
                "credit-score",
                None,
                "[models.scaling]\nmin_instances = 3\nmax_instances = 2"
            ),
            credit_score("second", None, "")
        ),
    );
    let line = 1 + bad
        .lines()
        .position(|l| l.starts_with("min_instances = 3"))
        .expect("the bad line");
    g.rewrite(&bad);
    let r = g.reload();
    let body = r.json();
    assert_eq!(r.status, 422, "{body}");
    assert_eq!(body["result"], "refused");
    let error = body["error"].as_str().expect("error");
    let want = format!(
        "{}:{line}: models[0].scaling.min_instances: ",
        g.config.display()
    );
    assert!(
        error.starts_with(&want),
        "{error} does not start with {want}"
    );

    let out = g.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&want), "{stderr}");

    let s = g.status();
    assert_eq!(s["config"]["version"], 1, "{s}");
    assert_eq!(s["config"]["hash"], hash);
    assert_eq!(s["last_reload"]["result"], "refused", "{s}");
    assert!(s["last_reload"]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with(&want)));
    assert!(
        g.model("second").is_none(),
        "half of a refused file applied"
    );
    assert_eq!(g.model("credit-score").expect("served")["max_instances"], 4);
    assert_eq!(g.score("credit-score").status, 200);
    assert_eq!(g.score("second").status, 404);
    let metrics = String::from_utf8(g.admin.get("/metrics").body).expect("text");
    // Counted (the series is there from the start, at 0).
    assert!(
        metrics.contains("thaw_config_reloads_total{result=\"refused\"}")
            && !metrics.contains("thaw_config_reloads_total{result=\"refused\"} 0"),
        "{metrics}"
    );

    // A syntax error names its line too.
    g.rewrite(&good.replace("[gateway]", "[gateway]\nlisen = \"typo\""));
    let body = g.reload().json();
    let error = body["error"].as_str().expect("error");
    assert!(error.contains(":2: gateway.lisen: "), "{error}");
}

#[test]
fn a_replacement_that_cannot_start_changes_nothing_even_at_zero_instances() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = copy_credit_score(&dir.path().join("cs"));
    let tabular = |source: &std::path::Path| {
        config(
            dir.path(),
            "",
            &credit_score("cs", Some(source), "kind = \"tabular\""),
        )
    };
    let g = Served::start(dir.path(), &tabular(&source));
    let first = g.score("cs");
    assert_eq!(first.status, 200);

    // A new version whose weights are damaged: the config is valid, but
    // no snapshot builds from it and no worker starts. The model's floor
    // is zero, so only a start proves the new version.
    let broken = copy_credit_score(&dir.path().join("broken"));
    std::fs::write(broken.join("model.safetensors"), b"not safetensors").expect("damaged");
    g.rewrite(&tabular(&broken));
    let r = g.reload();
    let body = r.json();
    assert_eq!(body["result"], "failed", "{body}");
    // With the start's own reason.
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot start") && e.contains("model.safetensors")),
        "{body}"
    );
    assert_eq!(g.status()["config"]["version"], 1);
    assert_eq!(g.score("cs").json(), first.json());

    // The running version still starts from its own snapshot: with its
    // worker and template gone, the next request is served cold.
    let running = pids(&g.model("cs").expect("cs"));
    assert!(!running.is_empty());
    for pid in &running {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
    }
    wait_gone(&running, "cs's processes");
    let again = g.score("cs");
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.json(), first.json());

    // A replacement that starts takes over, and only its snapshot is kept.
    let copy = copy_credit_score(&dir.path().join("copy"));
    g.rewrite(&tabular(&copy));
    let body = g.reload().json();
    assert_eq!(body["result"], "ok", "{body}");
    assert_eq!(g.score("cs").json(), first.json());
    let snapshots = dir.path().join("state/snapshots");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = std::fs::read_dir(&snapshots)
            .expect("snapshots")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("cs"))
            .collect();
        if left.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "old snapshots left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restart_only_change_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path(), "", &credit_score("credit-score", None, ""));
    let g = Served::start(dir.path(), &text);
    g.rewrite(&text.replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:1\"",
    ));
    let r = g.reload();
    let body = r.json();
    assert_eq!(r.status, 422, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.starts_with(&format!("{}:3: gateway.admin_listen: ", g.config.display())),
        "{error}"
    );
    assert!(error.contains("restart"), "{error}");
    assert_eq!(g.status()["config"]["version"], 1);
    assert_eq!(g.score("credit-score").status, 200);
}

#[test]
fn a_file_change_and_sighup_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let one = config(dir.path(), "", &credit_score("credit-score", None, ""));
    let g = Served::start(dir.path(), &one);
    let two = with_second(dir.path());
    // An editor's save: a new file renamed over the old one.
    g.rewrite(&two);
    let s = g.wait("the file-triggered reload", |s| s["config"]["version"] == 2);
    assert_eq!(s["last_reload"]["trigger"], "file", "{s}");
    assert_eq!(s["last_reload"]["changes"]["added"][0], "second", "{s}");
    assert_eq!(g.score("second").status, 200);

    // Written in place.
    std::fs::write(&g.config, &one).expect("written in place");
    let s = g.wait("the second file-triggered reload", |s| {
        s["config"]["version"] == 3
    });
    assert_eq!(s["last_reload"]["changes"]["removed"][0], "second", "{s}");

    // SIGHUP reloads the file as it is.
    g.proc.signal("HUP");
    let s = g.wait("the SIGHUP reload", |s| s["config"]["version"] == 4);
    assert_eq!(s["last_reload"]["trigger"], "signal", "{s}");
    assert_eq!(g.score("credit-score").status, 200);
}

/// A config mounted the way Kubernetes mounts a ConfigMap: `thaw.toml` is
/// a link through `..data`, a link to a timestamped directory; an update
/// writes a new directory and swaps `..data` to it, so the file's own entry
/// never changes. Each swap is seen as a change of the file; so is an edit
/// where a link outside the directory leads.
#[test]
fn a_config_map_update_and_an_edit_behind_a_symlink_reload() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("temp dir");
    let mounted = dir.path().join("mounted");
    let one = config(dir.path(), "", &credit_score("credit-score", None, ""));
    let version = |n: u32, text: &str| {
        let d = mounted.join(format!("..v{n}"));
        std::fs::create_dir_all(&d).expect("version dir");
        std::fs::write(d.join("thaw.toml"), text).expect("config written");
        let tmp = mounted.join("..data_tmp");
        symlink(format!("..v{n}"), &tmp).expect("link");
        std::fs::rename(&tmp, mounted.join("..data")).expect("link swapped");
        if n > 1 {
            std::fs::remove_dir_all(mounted.join(format!("..v{}", n - 1))).expect("old version");
        }
    };
    version(1, &one);
    let path = mounted.join("thaw.toml");
    symlink("..data/thaw.toml", &path).expect("link");
    let g = Served::spawn(serve_command(&path, &[]), path.clone());
    let two = with_second(dir.path());
    version(2, &two);
    let s = g.wait("the ConfigMap's update", |s| s["config"]["version"] == 2);
    assert_eq!(s["last_reload"]["trigger"], "file", "{s}");
    assert_eq!(s["last_reload"]["changes"]["added"][0], "second", "{s}");
    version(3, &one);
    let s = g.wait("its next update", |s| s["config"]["version"] == 3);
    assert_eq!(s["last_reload"]["changes"]["removed"][0], "second", "{s}");
    drop(g);

    // A config that is a link to a file elsewhere, edited there in place.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    std::fs::write(elsewhere.join("real.toml"), &one).expect("config written");
    let link = dir.path().join("linked.toml");
    symlink(elsewhere.join("real.toml"), &link).expect("link");
    let g = Served::spawn(serve_command(&link, &[]), link.clone());
    std::fs::write(elsewhere.join("real.toml"), &two).expect("edited");
    let s = g.wait("the edit behind the link", |s| s["config"]["version"] == 2);
    assert_eq!(s["last_reload"]["changes"]["added"][0], "second", "{s}");
}

#[test]
fn a_removed_model_finishes_its_requests_then_answers_404_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let both = config(
        dir.path(),
        "",
        &format!(
            "{}{}",
            credit_score("keep", None, ""),
            credit_score(
                "gone",
                None,
                "[models.scaling]\nmin_instances = 1\nmax_instances = 1\nmax_concurrency = 1\n\
                 target_concurrency = 1"
            )
        ),
    );
    let g = Served::start(dir.path(), &both);
    let s = g.wait("gone ready", |_| {
        g.model("gone").is_some_and(|m| m["ready_instances"] == 1)
    });
    drop(s);
    let body = score_request().to_string();
    // One request in flight (its body not all sent) holds the only slot;
    // a second one queues behind it.
    let slow = Slow::start(g.public.address(), "/v2/models/gone/infer", body.as_bytes());
    g.wait("the slow request in flight", |_| {
        g.model("gone").is_some_and(|m| m["in_flight"] == 1)
    });
    let address = g.public.address().to_string();
    let queued = std::thread::spawn(move || {
        thaw_tests::Client::new(&address).post_json("/v2/models/gone/infer", &score_request())
    });
    let before = g.wait("the second request queued", |_| {
        g.model("gone").is_some_and(|m| m["queue_depth"] == 1)
    });
    let gone = before["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "gone").cloned())
        .expect("gone");
    let gone_pids = pids(&gone);
    assert!(!gone_pids.is_empty());

    g.rewrite(&config(dir.path(), "", &credit_score("keep", None, "")));
    g.wait("the reload that removes `gone`", |s| {
        s["config"]["version"] == 2
    });
    // Out of the map at once: new requests get 404.
    let r = g.score("gone");
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        g.public
            .post_json(
                "/v1/embeddings",
                &serde_json::json!({"model": "gone", "input": "x"})
            )
            .status,
        404
    );
    // What it accepted finishes on it.
    let first = slow.finish().expect("the in-flight request is answered");
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let second = queued.join().expect("queued request");
    assert_eq!(
        second.status,
        200,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    wait_gone(&gone_pids, "the removed model's workers and template");
    assert_eq!(g.score("keep").status, 200);
    // Its gauges are gone from the metrics; the kept model's are there.
    let metrics = String::from_utf8(g.admin.get("/metrics").body).expect("text");
    assert!(
        !metrics.contains("thaw_instances{model=\"gone\""),
        "{metrics}"
    );
    assert!(metrics.contains("thaw_instances{model=\"keep\",state=\"ready\"}"));
}
