//! GPU placement end to end on a machine without a GPU: the gateway is
//! given a fake inventory of two GPUs (`THAW_FAKE_GPUS`, its test hook) and
//! places each instance of a `cuda` model on one, spreading them out,
//! keeps the memory promised while they run and gives it back when they
//! stop, answers 503 with Retry-After for a model no GPU has room for, and
//! refuses (at start and at reload) a GPU model that can never be placed.
//! The workers themselves run on the CPU under a fake inventory.

use serde_json::{json, Value};
use thaw_tests::served::{config, credit_score, serve_command, wait_gone, Served, START};
use thaw_tests::Proc;

const GIB: u64 = 1 << 30;

/// Two GPUs of 16 GiB with 6 GiB free each, as `thaw-worker --gpu-info`
/// would print them.
fn two_fake_gpus() -> String {
    let gpu = |i: u32| {
        json!({"index": i, "name": "Fake H200", "uuid": format!("GPU-fake-{i}"),
               "total_bytes": 16 * GIB, "free_bytes": 6 * GIB})
    };
    json!({"cuda": true, "driver_version": "13.0", "gpus": [gpu(0), gpu(1)]}).to_string()
}

fn start(dir: &std::path::Path, text: &str) -> Served {
    let path = dir.join("thaw.toml");
    std::fs::write(&path, text).expect("config written");
    let mut cmd = serve_command(&path, &[]);
    cmd.env("THAW_FAKE_GPUS", two_fake_gpus());
    Served::spawn(cmd, path)
}

fn model<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no model {name}: {s}"))
}

fn gpus_of(s: &Value, name: &str) -> Vec<u64> {
    let mut gpus: Vec<u64> = model(s, name)["instances"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["gpu"].as_u64()).collect())
        .unwrap_or_default();
    gpus.sort_unstable();
    gpus
}

fn promised(s: &Value, gpu: usize) -> u64 {
    s["gpus"]["gpus"][gpu]["promised_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no GPU {gpu}: {s}"))
}

#[test]
fn instances_spread_across_fake_gpus_and_a_model_without_room_gets_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = [
        credit_score(
            "spread",
            None,
            "device = \"cuda\"\n[models.scaling]\nmin_instances = 2\nmax_instances = 2",
        ),
        credit_score("pinned", None, "device = \"cuda:1\""),
        // Fits a GPU's 16 GiB (so the config is valid) but not its 6 free.
        credit_score("big", None, "device = \"cuda\"\nmemory_limit = \"8GiB\""),
    ]
    .concat();
    // No standby processes here: their contexts' leases have their own test.
    let text = config(
        dir.path(),
        "gpu_placement = \"spread\"\ngpu_standby = 0",
        &models,
    );
    let g = start(dir.path(), &text);

    // Two instances, one on each GPU, their memory promised there.
    let s = g.wait("two instances of spread", |s| {
        model(s, "spread")["ready_instances"] == 2
    });
    assert_eq!(gpus_of(&s, "spread"), [0, 1], "{s}");
    assert_eq!(s["gpus"]["fake"], true);
    assert_eq!(s["gpus"]["policy"], "spread");
    // The fake inventory says nothing of hibernation: reported unsupported.
    assert_eq!(s["gpus"]["hibernation"]["supported"], false, "{s}");
    let each = promised(&s, 0);
    assert!(each > 0 && each < GIB, "a tabular instance's need: {each}");
    assert_eq!(promised(&s, 1), each);
    assert_eq!(model(&s, "spread")["device"], "cuda");
    // The workers serve (on the CPU: the GPUs are fake).
    assert_eq!(g.score("spread").status, 200);

    // Pinned: on GPU 1 whatever the policy says.
    assert_eq!(g.score("pinned").status, 200);
    let s = g.status();
    assert_eq!(gpus_of(&s, "pinned"), [1], "{s}");
    assert_eq!(promised(&s, 1), 2 * each);

    // No GPU has 8 GiB free: 503 with Retry-After, saying why.
    let r = g.score("big");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(secs >= 1);
    let message = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("no GPU"), "{message}");
    let s = g.status();
    assert!(
        model(&s, "big")["failure"]
            .as_str()
            .is_some_and(|f| f.contains("no GPU")),
        "{s}"
    );
    assert_eq!(promised(&s, 0), each, "a failed placement promises nothing");

    // `thaw ctl status` shows the GPUs.
    let out = g.ctl(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("gpus (fake inventory): placement spread"),
        "{table}"
    );
    assert!(table.contains("GPU-fake-1"), "{table}");

    // Drained to zero: GPU 0's memory comes back; GPU 1 keeps pinned's.
    let out = g.ctl(&["drain", "spread"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = g.wait("spread's instances gone and their memory back", |s| {
        model(s, "spread")["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && promised(s, 0) == 0
    });
    assert_eq!(promised(&s, 1), each, "{s}");

    // A reload naming a GPU that does not exist is refused, and says so.
    let bad = format!(
        "{models}{}",
        credit_score("nowhere", None, "device = \"cuda:5\"")
    );
    g.rewrite(&config(dir.path(), "", &bad));
    let report = g.reload().json();
    assert_eq!(report["result"], "refused", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("model \"nowhere\"") && error.contains("cuda:5 does not exist"),
        "{error}"
    );
    assert!(g.model("nowhere").is_none());
}

#[test]
fn a_gpu_model_without_gpus_stops_the_start_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        "",
        &credit_score("needs-gpu", None, "device = \"cuda\""),
    );
    let path = dir.path().join("thaw.toml");
    std::fs::write(&path, text).expect("config written");
    // The real inventory: this test's worker is built without CUDA.
    let mut cmd = serve_command(&path, &[]);
    cmd.env_remove("THAW_FAKE_GPUS");
    let mut proc = Proc::spawn(cmd).expect("thaw runs");
    let line = proc.wait_stderr("needs-gpu", START);
    assert!(line.contains("models[0].device"), "{line}");
    assert!(line.contains("no GPU"), "{line}");
    assert!(line.contains("cuda feature"), "{line}");
    assert!(!proc.wait_exit(START).success());
}

/// The standby processes ready on `device`: their pids.
fn standby_pids(s: &Value, device: &str) -> Vec<u64> {
    s["gpus"]["standby"]["devices"][device]["ready"]
        .as_array()
        .map(|r| r.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default()
}

/// The scale-from-zero GPU model the standby tests use.
fn one_gpu_model() -> String {
    credit_score(
        "gpu",
        None,
        "device = \"cuda\"\n[models.scaling]\nmin_instances = 0\nmax_instances = 1",
    )
}

/// A gateway under two fake GPUs serving [`one_gpu_model`] with
/// `settings`, once `standby` standby processes are ready.
fn with_standby(dir: &std::path::Path, settings: &str, standby: usize) -> (Served, Value) {
    let g = start(dir, &config(dir, settings, &one_gpu_model()));
    let s = g.wait("the standby processes ready", |s| {
        standby_pids(s, "cpu").len() == standby
    });
    (g, s)
}

#[test]
fn gpu_instances_start_from_standby_processes_and_the_pool_refills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = credit_score(
        "gpu",
        None,
        "device = \"cuda\"\n[models.scaling]\nmin_instances = 0\nmax_instances = 1",
    );
    let g = start(dir.path(), &config(dir.path(), "gpu_standby = 1", &models));

    // Under the fake inventory both GPUs' workers run on the CPU: one
    // device, "cpu", with its one standby process, made before any demand.
    let s = g.wait("a standby process ready", |s| {
        standby_pids(s, "cpu").len() == 1
    });
    assert_eq!(s["gpus"]["standby"]["per_device"], 1, "{s}");
    let standby = standby_pids(&s, "cpu")[0];
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).to_string();
    let line = "thaw_standby_processes{device=\"cpu\",state=\"ready\"} 1";
    assert!(metrics.contains(line), "no {line:?} in /metrics");
    // A waiting standby process's context is promised on its GPU.
    let context = 512 * (1 << 20);
    assert_eq!(promised(&s, 0) + promised(&s, 1), context, "{s}");
    assert!(model(&s, "gpu")["instances"]
        .as_array()
        .is_some_and(Vec::is_empty));

    // A request at zero: the standby process is activated with the model
    // and becomes the instance.
    let r = g.score("gpu");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    let s = g.status();
    let instance = &model(&s, "gpu")["instances"][0];
    assert_eq!(instance["started_from"], "standby", "{s}");
    assert_eq!(
        instance["pid"], standby,
        "the standby process itself serves"
    );

    // Its replacement is started at once, and registers the model's
    // snapshot weights ahead (on the CPU the worker reports why it cannot;
    // the gateway's side is what this checks).
    let s = g.wait("the standby pool refilled", |s| {
        standby_pids(s, "cpu").len() == 1
    });
    assert_ne!(standby_pids(&s, "cpu")[0], standby);
    let files = &s["gpus"]["standby"]["devices"]["cpu"]["ready"][0]["preregistered"];
    assert!(
        files.as_array().is_some_and(|f| f.len() == 1
            && f[0]
                .as_str()
                .is_some_and(|p| p.ends_with("/model.safetensors")
                    && p.starts_with(&dir.path().display().to_string()))),
        "the snapshot's weights are not registered ahead: {s}"
    );
    // The instance's lease covers its own context; the new standby process
    // holds one more.
    let instance = model(&s, "gpu")["instances"][0]["gpu_memory_bytes"]
        .as_u64()
        .expect("the instance's promised memory");
    assert_eq!(promised(&s, 0) + promised(&s, 1), instance + context, "{s}");

    // A reload to no standby stops the one waiting.
    g.rewrite(&config(dir.path(), "gpu_standby = 0", &models));
    assert_eq!(g.reload().json()["result"], "ok");
    let s = g.wait("no standby process", |s| standby_pids(s, "cpu").is_empty());
    assert_eq!(s["gpus"]["standby"]["per_device"], 0, "{s}");
}

/// The files each standby process ready on `device` was asked to register
/// ahead, by pid.
fn standby_files(s: &Value, device: &str) -> Vec<(u64, Vec<String>)> {
    s["gpus"]["standby"]["devices"][device]["ready"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|p| {
                    let files = p["preregistered"]
                        .as_array()
                        .map(|f| {
                            f.iter()
                                .filter_map(|f| f.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    (p["pid"].as_u64().unwrap_or_default(), files)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn standby_processes_waiting_and_new_register_a_prepared_snapshot_ahead() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (g, s) = with_standby(dir.path(), "gpu_standby = 2", 2);
    // Before any snapshot: nothing to register.
    let before = standby_files(&s, "cpu");
    assert!(before.iter().all(|(_, f)| f.is_empty()), "{s}");

    // The first instance prepares the snapshot: both waiting processes are
    // asked for it (a line on stdin), one is activated, and the one left
    // waiting, and the replacement started with --preregister, list it.
    assert_eq!(g.score("gpu").status, 200);
    let s = g.wait("the pool refilled", |s| standby_pids(s, "cpu").len() == 2);
    let after = standby_files(&s, "cpu");
    let weights: Vec<&String> = after.iter().flat_map(|(_, f)| f).collect();
    assert_eq!(weights.len(), 2, "one file each: {s}");
    assert!(
        weights[0].ends_with("/model.safetensors") && weights[0] == weights[1],
        "{s}"
    );
    let waited: Vec<u64> = before.iter().map(|(pid, _)| *pid).collect();
    assert!(
        after.iter().any(|(pid, _)| waited.contains(pid)),
        "the process that waited through the snapshot is not there: {s}"
    );
    assert!(
        after.iter().any(|(pid, _)| !waited.contains(pid)),
        "no replacement: {s}"
    );
}

#[test]
fn with_registering_ahead_off_no_standby_process_is_asked_for_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (g, _) = with_standby(dir.path(), "gpu_standby = 1\ngpu_preregister = false", 1);
    assert_eq!(g.score("gpu").status, 200);
    let s = g.wait("the pool refilled", |s| standby_pids(s, "cpu").len() == 1);
    let files = standby_files(&s, "cpu");
    assert!(files.iter().all(|(_, f)| f.is_empty()), "{s}");
}

/// Whether process `pid` is stopped (state `T`), as the fake hibernation
/// leaves it.
fn stopped(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// A gateway serving the credit-score model as `gpu` (`device = "cuda"`,
/// zero to one instance, `scaling` added to its scaling table) on two fake
/// GPUs whose driver can hibernate, with the worker's test hook standing in
/// for the driver (SIGSTOP / SIGCONT); no standby processes.
fn hibernating(dir: &std::path::Path, scaling: &str) -> Served {
    let models = credit_score(
        "gpu",
        None,
        &format!(
            "device = \"cuda\"\n[models.scaling]\nmin_instances = 0\nmax_instances = 1\n{scaling}"
        ),
    );
    let path = dir.join("thaw.toml");
    std::fs::write(&path, config(dir, "gpu_standby = 0", &models)).expect("config");
    let mut cmd = serve_command(&path, &[]);
    let mut inventory: Value = serde_json::from_str(&two_fake_gpus()).expect("json");
    inventory["hibernation"] = json!({"supported": true});
    cmd.env("THAW_FAKE_GPUS", inventory.to_string());
    cmd.env("THAW_FAKE_HIBERNATE", "1");
    Served::spawn(cmd, path)
}

/// Waits for the model's one worker to hibernate: the status then, and the
/// worker's pid.
fn wait_hibernated(g: &Served) -> (Value, u64) {
    let s = g.wait("the worker hibernated", |s| {
        model(s, "gpu")["instances"][0]["state"] == "hibernated"
    });
    let pid = model(&s, "gpu")["instances"][0]["pid"]
        .as_u64()
        .expect("a pid");
    (s, pid)
}

#[test]
fn a_gpu_worker_hibernates_on_scale_down_and_resumes_on_demand() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = hibernating(
        dir.path(),
        "keep_template = \"1h\"\nscale_to_zero_after = \"3s\"",
    );

    let s = g.status();
    assert_eq!(s["gpus"]["hibernation"]["supported"], true, "{s}");
    let r = g.score("gpu");
    assert_eq!(r.status, 200);
    let first = r
        .header("x-thaw-worker")
        .expect("x-thaw-worker")
        .to_string();

    // Idle: the autoscaler scales to zero, and the worker hibernates
    // instead of stopping; its GPU memory is no longer promised.
    let (s, pid) = wait_hibernated(&g);
    assert_eq!(model(&s, "gpu")["tier"], "hibernated", "{s}");
    assert_eq!(promised(&s, 0) + promised(&s, 1), 0, "{s}");
    assert!(stopped(pid), "the fake hibernation stops the process");
    let metrics = String::from_utf8_lossy(&g.admin.get("/metrics").body).to_string();
    for line in [
        "thaw_instances{model=\"gpu\",state=\"hibernated\"} 1",
        "thaw_instances{model=\"gpu\",state=\"ready\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in /metrics");
    }

    // A request: the same process is resumed and answers.
    let r = g.score("gpu");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-thaw-cold-start-ms").is_some());
    assert_eq!(
        r.header("x-thaw-worker"),
        Some(first.as_str()),
        "the same instance"
    );
    let s = g.status();
    let instance = &model(&s, "gpu")["instances"][0];
    assert_eq!(instance["pid"], pid, "{s}");
    assert_eq!(instance["started_from"], "hibernated");
    assert_eq!(instance["state"], "ready");
    assert!(!stopped(pid));
    // Its memory is promised on its GPU again.
    let bytes = instance["gpu_memory_bytes"].as_u64().expect("promised");
    assert_eq!(promised(&s, 0) + promised(&s, 1), bytes, "{s}");
}

#[test]
fn a_hibernated_worker_goes_after_keep_template() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = hibernating(dir.path(), "keep_template = \"1s\"");
    assert_eq!(g.score("gpu").status, 200);
    let (_, pid) = wait_hibernated(&g);
    g.wait("the hibernated worker gone", |s| {
        model(s, "gpu")["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    // Killed (SIGKILL reaches a stopped process): gone, or a zombie.
    assert!(!stopped(pid), "the hibernated process {pid} is still there");
}

#[test]
fn a_hibernated_worker_dies_with_its_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = hibernating(
        dir.path(),
        "keep_template = \"1h\"\nscale_to_zero_after = \"3s\"",
    );
    assert_eq!(g.score("gpu").status, 200);
    let (_, pid) = wait_hibernated(&g);
    assert!(stopped(pid), "the fake hibernation stops the process");
    // The gateway dies without a word: no graceful stop kills the stopped
    // worker, only the kernel's parent-death signal can (SIGTERM would wait,
    // pending, for a SIGCONT that never comes).
    g.proc.signal("KILL");
    wait_gone(&[pid as u32], "the hibernated worker of a killed gateway");
}

#[test]
fn a_chat_model_on_a_gpu_is_placed_and_served_from_a_standby_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = format!(
        "[[models]]\nname = \"chat\"\nsource = \"{}\"\nkind = \"chat\"\ndevice = \"cuda\"\n\
         [models.scaling]\nmin_instances = 0\nmax_instances = 1\n",
        thaw_tests::registry_model("smollm2").display()
    );
    let g = start(dir.path(), &config(dir.path(), "gpu_standby = 1", &models));
    g.wait("a standby process ready", |s| {
        standby_pids(s, "cpu").len() == 1
    });
    let r = g.public.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "One, two,", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    let s = g.status();
    let instance = &model(&s, "chat")["instances"][0];
    assert_eq!(instance["started_from"], "standby", "{s}");
    assert!(instance["gpu"].as_u64().is_some(), "placed on a GPU: {s}");
    // Its promise covers the GGUF, the chat margin and the context.
    let promised_bytes = instance["gpu_memory_bytes"].as_u64().expect("promised");
    assert!(promised_bytes > (1 << 30) + (94 << 20), "{s}");
    // The replacement registers the snapshot's GGUF ahead.
    let s = g.wait("the pool refilled", |s| standby_pids(s, "cpu").len() == 1);
    let files = standby_files(&s, "cpu");
    assert!(
        files.len() == 1 && files[0].1.len() == 1 && files[0].1[0].ends_with(".gguf"),
        "{s}"
    );
}
